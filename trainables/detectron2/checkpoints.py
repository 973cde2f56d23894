"""The files of a Detectron2 trial checkpoint directory.

    detfuse.json        family, architecture, hparams, class names, COCO category ids, epoch, metrics:
                        what the ensemble job reads before it loads any weights
    model.pth           the model's state dict (all a predictor needs)
    training_state.pth  what resuming needs beyond the weights: iteration, optimizer, LR scheduler, AMP
                        scaler, and per worker its data-stream position and random number generator states
    config.yaml         the full detectron2 config, for people; the model is rebuilt from hparams instead

Only tensors and plain values are stored (RNG states as tensors), so both .pth files load with
`torch.load(weights_only=True)`: reading a checkpoint from shared storage never runs pickled code.
"""

import random
from pathlib import Path

import numpy as np
import torch

from detfuse.core import checkpoint_meta
from detfuse.core.errors import UserError

FAMILY = "detectron2"
MODEL_FILE = "model.pth"
TRAINING_STATE_FILE = "training_state.pth"
CONFIG_FILE = "config.yaml"


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


def rng_state(device):
    """Every random number generator training draws from, as tensors and plain values."""
    version, mt_words, gauss_next = random.getstate()
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    state = {
        "python": {"version": version, "words": torch.tensor(mt_words, dtype=torch.int64), "gauss": gauss_next},
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "position": position,
                  "has_gauss": has_gauss, "gauss": cached_gaussian},
        "torch": torch.get_rng_state(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng_state(state, device):
    python = state["python"]
    random.setstate((python["version"], tuple(python["words"].tolist()), python["gauss"]))
    numpy = state["numpy"]
    np.random.set_state((numpy["kind"], numpy["keys"].numpy().astype(np.uint32), numpy["position"],
                         numpy["has_gauss"], numpy["gauss"]))
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
