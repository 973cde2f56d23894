"""What the YOLOv5 tests share: a small, fast trial config on the built-in dataset and a private cache."""

import pytest

from trainables.trial_config import resolve_trial_config

# From scratch at 160 px, AdamW with one optimizer step per batch learns the built-in set within a few epochs;
# mosaic stays off so an epoch's images are the ones the sampler drew.
FAST_HPARAMS = {
    "image_size": 160, "batch_size": 16, "nominal_batch_size": 16, "optimizer": "adamw", "lr": 0.005,
    "warmup_epochs": 0.0, "mosaic": 0.0, "close_mosaic": 0,
}


def trial_config(max_epochs, **hparams):
    """A resolved trial config (trainables trust what trainables.trial_config resolved)."""
    return resolve_trial_config({
        "architecture": "yolov5n", "dataset": "builtin", "max_epochs": max_epochs, "eval_every": 1.0,
        "hparams": {**FAST_HPARAMS, **hparams},
    }, "tests/yolov5_trials.py")


@pytest.fixture(scope="module")
def yolo_cache(tmp_path_factory):
    """One detfuse cache (built-in dataset, YOLO view, Ultralytics settings) for a test module."""
    cache = tmp_path_factory.mktemp("detfuse-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DETFUSE_CACHE", str(cache))
        yield cache
