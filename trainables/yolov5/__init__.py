"""The YOLOv5 family: Ultralytics YOLOv5u (n/s/m/l/x) under the detfuse trial contract.

Importing the package loads only the adapters (no ultralytics): search spaces validate without the framework.
`train` and `load_predictor` import ultralytics on first call, after making it offline (environment.py).
"""

from trainables.yolov5.adapter import ARCHITECTURES
from trainables.yolov5.resources import trial_workers
from trainables.yolov5.releases import NAME_FORM as WEIGHTS_NAME_FORM
from trainables.yolov5.releases import named_weights


def train(config):
    from trainables.yolov5.trainable import train as train_trial

    return train_trial(config)


def load_predictor(checkpoint_dir, device="cpu"):
    from trainables.yolov5.predictor import load_predictor as load

    return load(checkpoint_dir, device)


def inference_files():
    from trainables.yolov5.checkpoint import INFERENCE_FILES

    return INFERENCE_FILES


__all__ = ["ARCHITECTURES", "WEIGHTS_NAME_FORM", "named_weights", "trial_workers", "train", "load_predictor", "inference_files"]
