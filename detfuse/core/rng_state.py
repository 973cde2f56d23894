"""The random number generators a training run draws from, saved in a checkpoint and restored on resume.

Stored as tensors and plain values only, so a checkpoint holding them loads with `torch.load(weights_only=True)`:
reading a checkpoint from shared storage never runs pickled code. Shared by every family.
"""

import random

import numpy as np
import torch


def rng_state(device):
    """Python's, NumPy's and torch's generator states, and the CUDA one of `device` when it is a GPU."""
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
    """Set every generator `rng_state` saved; the CUDA one only when training resumes on a GPU."""
    python = state["python"]
    random.setstate((python["version"], tuple(python["words"].tolist()), python["gauss"]))
    numpy = state["numpy"]
    np.random.set_state((numpy["kind"], numpy["keys"].numpy().astype(np.uint32), numpy["position"],
                         numpy["has_gauss"], numpy["gauss"]))
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
