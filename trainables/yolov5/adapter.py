"""The YOLOv5 architectures and how the project's hyperparameter names map onto Ultralytics' training arguments.

Ultralytics builds YOLOv5u from `yolov5<size>.yaml` (the YOLOv5 backbone and neck with the anchor-free,
DFL-based detection head of YOLOv8), so the loss gains are box/cls/dfl rather than YOLOv5's box/obj/cls.
This module imports nothing from ultralytics: search spaces are validated without loading the framework.
"""

from detfuse.core.errors import UserError
from detfuse.core.hyperparameters import Hyperparameter, HyperparameterSet

SIZES = ("n", "s", "m", "l", "x")
STRIDE = 32  # the largest stride of every YOLOv5 size: image sizes must be multiples of it

HYPERPARAMETERS = (
    Hyperparameter("optimizer", str, "sgd", "sgd (with Nesterov momentum, as Ultralytics does) or adamw",
                   choices=("sgd", "adamw")),
    Hyperparameter("lr", float, 0.01, "initial learning rate (Ultralytics lr0)", low=1e-6, high=1.0),
    Hyperparameter("final_lr_fraction", float, 0.01,
                   "learning rate at the last epoch as a fraction of lr; linear decay (Ultralytics lrf)",
                   low=0.0, high=1.0),
    Hyperparameter("momentum", float, 0.937, "SGD momentum or AdamW beta1", low=0.0, high=0.999),
    Hyperparameter("weight_decay", float, 0.0005,
                   "weight decay per nominal batch (Ultralytics scales it by batch_size * accumulation / 64)",
                   low=0.0, high=0.1),
    Hyperparameter("warmup_epochs", float, 3.0, "epochs of linear learning-rate and momentum warmup", low=0.0),
    Hyperparameter("box_gain", float, 7.5, "box IoU loss gain (Ultralytics box)", low=0.0),
    Hyperparameter("cls_gain", float, 0.5, "classification loss gain (Ultralytics cls)", low=0.0),
    Hyperparameter("dfl_gain", float, 1.5, "distribution focal loss gain (Ultralytics dfl)", low=0.0),
    Hyperparameter("image_size", int, 640, f"square train and eval image size, a multiple of {STRIDE}",
                   low=STRIDE, high=4096),
    Hyperparameter("batch_size", int, 16, "images per batch (always explicit: no AutoBatch)", low=1),
    Hyperparameter("nominal_batch_size", int, 64,
                   "images per optimizer step: gradients accumulate over nominal_batch_size / batch_size "
                   "batches (Ultralytics nbs); set it to batch_size to step every batch", low=1),
    Hyperparameter("mosaic", float, 1.0, "probability of 4-image mosaic augmentation", low=0.0, high=1.0),
    Hyperparameter("close_mosaic", int, 10, "turn mosaic off for this many final epochs", low=0),
    Hyperparameter("mixup", float, 0.0, "probability of MixUp augmentation", low=0.0, high=1.0),
    Hyperparameter("hsv_h", float, 0.015, "hue augmentation (fraction)", low=0.0, high=1.0),
    Hyperparameter("hsv_s", float, 0.7, "saturation augmentation (fraction)", low=0.0, high=1.0),
    Hyperparameter("hsv_v", float, 0.4, "value (brightness) augmentation (fraction)", low=0.0, high=1.0),
    Hyperparameter("scale", float, 0.5, "random scale gain, +/- this fraction", low=0.0, high=0.99),
    Hyperparameter("translate", float, 0.1, "random translation, +/- this fraction of the image", low=0.0,
                   high=0.99),
    Hyperparameter("fliplr", float, 0.5, "probability of a horizontal flip", low=0.0, high=1.0),
    Hyperparameter("repeat_threshold", float, 0.0,
                   "image-level repeat-factor sampling as detectron2's RepeatFactorTrainingSampler: an image is "
                   "drawn max(1, sqrt(t / f)) times as often, f the fraction of training images holding its "
                   "rarest class; 0 turns it off", low=0.0, high=1.0),
)

# project name -> Ultralytics training argument; repeat_threshold is detfuse's own sampler, not an argument
ULTRALYTICS_ARGUMENTS = {
    "optimizer": "optimizer", "lr": "lr0", "final_lr_fraction": "lrf", "momentum": "momentum",
    "weight_decay": "weight_decay", "warmup_epochs": "warmup_epochs", "box_gain": "box", "cls_gain": "cls",
    "dfl_gain": "dfl", "image_size": "imgsz", "batch_size": "batch", "nominal_batch_size": "nbs",
    "mosaic": "mosaic", "close_mosaic": "close_mosaic", "mixup": "mixup", "hsv_h": "hsv_h", "hsv_s": "hsv_s",
    "hsv_v": "hsv_v", "scale": "scale", "translate": "translate", "fliplr": "fliplr",
}
OPTIMIZERS = {"sgd": "SGD", "adamw": "AdamW"}  # the project's names (shared with detectron2) -> Ultralytics'


class YoloV5Adapter:
    """One YOLOv5 size: its Ultralytics model file and the hyperparameters a trial of it accepts."""

    def __init__(self, size):
        self.architecture = f"yolov5{size}"
        self.model_yaml = f"yolov5{size}.yaml"
        self.hyperparameters = HyperparameterSet(self.architecture, HYPERPARAMETERS)

    def resolve(self, hparams, where, has_weights=None):
        """Validate `hparams` (project names) and return them complete with defaults: the boundary check.
        (`has_weights`, part of every adapter's `resolve`, changes nothing for YOLOv5: any norm trains from scratch.)"""
        resolved = self.hyperparameters.validate(hparams, where)
        if resolved["image_size"] % STRIDE:
            raise UserError(
                f"{where}: hyperparameter 'image_size' = {resolved['image_size']} must be a multiple of {STRIDE} "
                f"(YOLOv5's largest stride), e.g. {resolved['image_size'] // STRIDE * STRIDE or STRIDE}"
            )
        return resolved

    def ultralytics_arguments(self, hparams):
        """Ultralytics' training arguments for resolved `hparams` (project names, defaults filled in)."""
        arguments = {ULTRALYTICS_ARGUMENTS[name]: value for name, value in hparams.items()
                     if name in ULTRALYTICS_ARGUMENTS}
        arguments["optimizer"] = OPTIMIZERS[hparams["optimizer"]]
        return arguments


ARCHITECTURES = {adapter.architecture: adapter for adapter in map(YoloV5Adapter, SIZES)}
