"""Starting a YOLO trial from pretrained weights: Ultralytics copies every tensor whose name and shape match
(`BaseModel.load` intersects the state dicts) and silently leaves the rest as initialised. `describe_transfer`
says what that kept, so a trial's log shows a re-initialised head, and refuses a file of which less than half the
model's weights fit (another scale or family): that would be training from scratch under a pretrained name."""

from dataclasses import dataclass

import torch

from detfuse.core.errors import UserError

LISTED_KEYS = 10  # a log line names this many re-initialised tensors, then counts the rest


@dataclass
class InitialWeights:
    """The model whose matching tensors initialise a trial, and how messages name the trial and its source."""

    model: torch.nn.Module
    label: str


def _class_count(model):
    head = getattr(model, "model", [None])[-1]
    return getattr(head, "nc", None)


def _listed(keys):
    more = len(keys) - LISTED_KEYS
    return ", ".join(keys[:LISTED_KEYS]) + (f" and {more} more" if more > 0 else "")


def describe_transfer(initial: InitialWeights, target: torch.nn.Module) -> str:
    """One line on what `initial.model` gave `target`; a UserError when under half of its weights fit. BatchNorm's
    step counters (`num_batches_tracked`, shape ()) fit any model, so they are not counted."""
    source_state = initial.model.state_dict()
    target_state = {key: value for key, value in target.state_dict().items()
                    if not key.endswith("num_batches_tracked")}
    copied = [key for key, value in target_state.items()
              if key in source_state and source_state[key].shape == value.shape]
    reshaped = [key for key, value in target_state.items()
                if key in source_state and source_state[key].shape != value.shape]
    loaded = sum(target_state[key].numel() for key in copied)
    total = sum(value.numel() for value in target_state.values())
    if loaded * 2 < total:
        raise UserError(f"{initial.label}: only {loaded} of this model's {total} weights fit it ({len(copied)} of "
                        f"{len(target_state)} tensors): it holds another architecture (another YOLOv5 scale, or "
                        "another family): name the Ultralytics YOLOv5u checkpoint of this architecture, e.g. "
                        "yolov5su.pt for yolov5s")
    line = f"{initial.label}: loaded {len(copied)} of {len(target_state)} tensors"
    theirs, ours = _class_count(initial.model), _class_count(target)
    if reshaped and theirs != ours:
        line += (f"; the detection head's classification layers were re-initialised for {ours} classes (the "
                 f"checkpoint's were for {theirs}): {_listed(reshaped)}")
    elif reshaped:
        line += f"; re-initialised (shape differs): {_listed(reshaped)}"
    return line
