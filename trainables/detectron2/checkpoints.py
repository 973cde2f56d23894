"""The files of a Detectron2 trial checkpoint directory.

    detfuse.json        family, architecture, hparams, class names, COCO category ids, epoch, metrics:
                        what the ensemble job reads before it loads any weights
    model.pth           the model's state dict (all a predictor needs)
    training_state.pth  what resuming needs beyond the weights: iteration, optimizer, LR scheduler, AMP
                        scaler, and per worker its data-stream position and random number generator states
    config.yaml         the full detectron2 config, for people; the model is rebuilt from hparams instead

Only tensors and plain values are stored (RNG states as tensors: detfuse/core/rng_state.py), so both .pth files load with
`torch.load(weights_only=True)`: reading a checkpoint from shared storage never runs pickled code.
"""

from pathlib import Path

import torch

from detfuse.core import checkpoint_meta
from detfuse.core.errors import UserError

FAMILY = "detectron2"
MODEL_FILE = "model.pth"
TRAINING_STATE_FILE = "training_state.pth"
CONFIG_FILE = "config.yaml"
INFERENCE_FILES = (checkpoint_meta.FILE_NAME, MODEL_FILE, CONFIG_FILE)  # what an export bundle carries


def write(directory, meta, model_state, training_state, config_text):
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(model_state, directory / MODEL_FILE)
    torch.save(training_state, directory / TRAINING_STATE_FILE)
    (directory / CONFIG_FILE).write_text(config_text)
    checkpoint_meta.write_meta(directory, FAMILY, meta)


def read_meta(directory):
    return checkpoint_meta.read_meta(directory, FAMILY)


def read_model_state(directory):
    return _load(Path(directory) / MODEL_FILE)


def read_training_state(directory):
    return _load(Path(directory) / TRAINING_STATE_FILE)


def _load(path):
    if not path.is_file():
        raise UserError(f"{path}: missing from the checkpoint directory (not written by detfuse's detectron2 "
                        "family?)")
    return torch.load(path, map_location="cpu", weights_only=True)
