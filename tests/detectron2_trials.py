"""What the Detectron2 tests share: tiny, fast trial configs (R-18, 128 px, slim FPN and heads) and datasets."""

import pytest

from trainables.trial_config import resolve_trial_config

from detfuse.core.data.synthetic import generate

# From scratch on the CPU: GN ResNet-18 at 128 px with 64-channel FPN levels and a 256-wide box head.
# AdamW learns the built-in set within two epochs with these (seen: mAP50 0.02 after half an epoch, 0.23 after 2).
SHARED = {
    "depth": 18, "norm": "GN", "image_size": 128, "batch_size": 4, "optimizer": "adamw", "lr": 0.001,
    "weight_decay": 0.05, "warmup_epochs": 0.1, "lr_schedule": "cosine", "anchor_sizes": [16, 32, 64, 128, 256],
    "fpn_channels": 64,
}
RCNN = {"box_head_dim": 256, "roi_batch_size": 64, "rpn_batch_size": 64, "rpn_post_nms_topk_train": 200,
        "rpn_post_nms_topk_test": 200}
TINY_HPARAMS = {
    "faster_rcnn": {**SHARED, **RCNN},
    "cascade_rcnn": {**SHARED, **RCNN},
    "retinanet": {**SHARED, "head_convs": 1},
}


def trial_config(architecture, dataset="builtin", max_epochs=1.0, eval_every=1.0, **hparams):
    """A resolved trial config (trainables trust what trainables.trial_config resolved)."""
    return resolve_trial_config({
        "architecture": architecture, "dataset": str(dataset), "max_epochs": max_epochs, "eval_every": eval_every,
        "hparams": {**TINY_HPARAMS[architecture], **hparams},
    }, "tests/detectron2_trials.py")


@pytest.fixture(scope="module")
def d2_cache(tmp_path_factory):
    """A private detfuse cache (the built-in dataset is generated into it) for a test module."""
    cache = tmp_path_factory.mktemp("detfuse-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DETFUSE_CACHE", str(cache))
        yield cache


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    """12 train and 4 val images of the synthetic litter set at 128 px: for runs of a few iterations."""
    return generate(tmp_path_factory.mktemp("tiny-litter"), seed=1, num_train=12, num_val=4, num_test=1,
                    image_size=128)
