"""The core: the trial, checkpoint and prediction contract, datasets, evaluation, fusion and storage.

It imports no detector family and no stage (checked by `lint-imports`, docs/architecture.md).
"""
