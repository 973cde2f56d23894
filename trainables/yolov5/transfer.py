"""Starting a YOLO trial from pretrained weights: Ultralytics copies every tensor whose name and shape match
(`BaseModel.load` intersects the state dicts) and silently leaves the rest as initialised. `describe_transfer`
says what that kept, so a trial's log shows a re-initialised head, and refuses a file of which nothing fits."""

from dataclasses import dataclass

import torch

from detfuse.core.errors import UserError


@dataclass
class InitialWeights:
    """The model whose matching tensors initialise a trial, and how messages name the trial and its source."""

    model: torch.nn.Module
    label: str


def _class_count(model):
    head = getattr(model, "model", [None])[-1]
    return getattr(head, "nc", None)


def describe_transfer(initial: InitialWeights, target: torch.nn.Module) -> str:
    """One line on what `initial.model` gave `target`; a UserError when none of its tensors fit."""
    source_state, target_state = initial.model.state_dict(), target.state_dict()
    copied = [key for key, value in target_state.items()
              if key in source_state and source_state[key].shape == value.shape]
    if not copied:
        raise UserError(f"{initial.label}: none of its tensors fit this YOLOv5u model (another architecture or "
                        "family): name an Ultralytics YOLOv5u checkpoint, e.g. yolov5su.pt")
    line = f"{initial.label}: loaded {len(copied)} of {len(target_state)} tensors"
    reshaped = [key for key, value in target_state.items()
                if key in source_state and source_state[key].shape != value.shape]
    theirs, ours = _class_count(initial.model), _class_count(target)
    if reshaped and theirs != ours:
        line += (f"; the detection head's classification layers were re-initialised for {ours} classes (the "
                 f"checkpoint's were for {theirs}): {', '.join(reshaped)}")
    elif reshaped:
        line += f"; re-initialised (shape differs): {', '.join(reshaped)}"
    return line
