"""The stages: the experiment config, Tune plumbing, the tune/ensemble/export/pipeline jobs, predict and the CLI.

They use the families through the registry in `trainables` and the core below it (docs/architecture.md).
"""
