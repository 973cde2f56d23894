"""The files of a YOLOv5 trial checkpoint directory and how they are written and read.

    detfuse.json       what any family's checkpoint holds: family, architecture, hparams, class names,
                       COCO category ids, epoch, metrics (the ensemble job reads it before loading weights)
    weights.pt         state dict of the EMA model, the one evaluated and used for prediction
    trainer_state.pt   what resuming needs beyond that: the raw model, optimizer, AMP scaler, EMA update
                       count, the last finished Ultralytics epoch and the random number generators' states

Only state dicts and plain values are stored, so both files load with `torch.load(weights_only=True)`:
no pickled Ultralytics classes, and a checkpoint stays readable when Ultralytics renames its modules. The
model is rebuilt from the architecture's yaml and the number of classes.
"""

import shutil
from pathlib import Path

import torch

from detfuse.core import checkpoint_meta
from detfuse.core.errors import UserError

FAMILY = "yolov5"
WEIGHTS_FILE = "weights.pt"
TRAINER_STATE_FILE = "trainer_state.pt"
INFERENCE_FILES = (checkpoint_meta.FILE_NAME, WEIGHTS_FILE)  # what load_predictor reads: an export bundle's share


def write(directory, meta, ema_state, trainer_state):
    """Replace the contents of `directory` with one checkpoint."""
    directory = Path(directory)
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    torch.save(ema_state, directory / WEIGHTS_FILE)
    torch.save(trainer_state, directory / TRAINER_STATE_FILE)
    checkpoint_meta.write_meta(directory, FAMILY, meta)


def read_meta(directory):
    return checkpoint_meta.read_meta(directory, FAMILY)


def read_weights(directory):
    return _load(Path(directory) / WEIGHTS_FILE)


def read_trainer_state(directory):
    return _load(Path(directory) / TRAINER_STATE_FILE)


def _load(path):
    if not path.is_file():
        raise UserError(f"{path}: missing from the checkpoint directory; was it written by detfuse's yolov5 family?")
    return torch.load(path, map_location="cpu", weights_only=True)
