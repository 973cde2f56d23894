"""The Detectron2 family: Faster R-CNN, RetinaNet and Cascade R-CNN (boxes only) on ResNet-FPN backbones.

`ARCHITECTURES` maps each name to its adapter (hyperparameters and config keys); importing this package
does not import detectron2, which `train` and `load_predictor` load on first use.
"""

from trainables.detectron2.adapters import ARCHITECTURES
from trainables.detectron2.resources import trial_workers
from trainables.detectron2.model_zoo import NAME_FORM as WEIGHTS_NAME_FORM
from trainables.detectron2.model_zoo import named_weights


def train(config):
    """Ray Tune function trainable for one trial (see trainable.py)."""
    from trainables.detectron2.trainable import train as train_trial

    return train_trial(config)


def load_predictor(checkpoint_dir, device="cpu"):
    """A predictor for a trial checkpoint: `.predict(image_paths, flip=False)` -> per image, [Detection(category_id,
    box, score)] with COCO category ids and boxes x1, y1, x2, y2 in the original image's pixels (`flip`: predicted
    on the image mirrored left-right, boxes mapped back)."""
    from trainables.detectron2 import logs

    logs.hide_notices()
    from trainables.detectron2.predictor import load_predictor as load

    return load(checkpoint_dir, device)


def inference_files():
    from trainables.detectron2.checkpoints import INFERENCE_FILES

    return INFERENCE_FILES


__all__ = ["ARCHITECTURES", "WEIGHTS_NAME_FORM", "named_weights", "trial_workers", "train", "load_predictor", "inference_files"]
