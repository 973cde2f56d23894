"""One adapter per Detectron2 architecture: project hyperparameter names -> that architecture's config keys.

Detectron2's model-zoo configs keep the same idea under different keys (RetinaNet's class count and test
thresholds live under MODEL.RETINANET, the R-CNNs' under MODEL.ROI_HEADS), so each adapter declares the names
it supports, with defaults equal to its base config, and writes them through `merge_from_list`, which refuses
keys the config does not have. A name an architecture does not support is an error listing the ones it does.

This module imports detectron2 only when a config is built, so listing architectures stays cheap.
"""

import abc
import contextlib
import logging
import math
from dataclasses import dataclass

from detfuse.core.errors import UserError
from detfuse.core.hyperparameters import Hyperparameter, HyperparameterSet

NORMS = ("FrozenBN", "GN", "BN", "SyncBN")
DEPTHS = (18, 34, 50, 101)
FPN_LEVELS = 5  # anchor_sizes holds one base size per FPN level (P2-P6 for R-CNNs, P3-P7 for RetinaNet)
MAX_SIZE_RATIO = 1333 / 800  # detectron2's long-side cap relative to the short side


def _shared_hyperparameters():
    """Names every architecture supports: optimisation, data, backbone and test-time settings."""
    H = Hyperparameter
    return [
        H("lr", float, 0.01, "base learning rate (total batch)", low=1e-7, high=1.0),
        H("optimizer", str, "sgd", "sgd (detectron2's) or adamw", choices=("sgd", "adamw")),
        H("momentum", float, 0.9, "SGD momentum; AdamW's beta1", low=0.0, high=0.999),
        H("nesterov", bool, False, "Nesterov momentum (sgd only)"),
        H("weight_decay", float, 1e-4, "weight decay; never applied to norm and bias parameters", low=0.0,
          high=1.0),
        H("batch_size", int, 8, "images per iteration across all workers", low=1, high=1024),
        H("warmup_epochs", float, 1.0, "linear learning-rate warmup length", low=0.0, high=1000.0),
        H("lr_schedule", str, "step", "learning-rate decay after warmup", choices=("step", "cosine")),
        H("lr_steps", list, [0.667, 0.889], "step schedule: fractions of training where lr drops"),
        H("lr_gamma", float, 0.1, "step schedule: factor applied to lr at each step", low=1e-6, high=1.0),
        H("grad_clip", float, 0.0, "clip each parameter's gradient to this L2 norm; 0 = off", low=0.0),
        H("repeat_threshold", float, 0.0,
          "RepeatFactorTrainingSampler: repeat images holding classes rarer than this image fraction; 0 = off",
          low=0.0, high=1.0),
        H("image_size", int, 640, "short image side in pixels for training and testing", low=32, high=4096),
        H("anchor_sizes", list, [32, 64, 128, 256, 512], f"anchor base size per FPN level ({FPN_LEVELS} values)"),
        H("anchor_ratios", list, [0.5, 1.0, 2.0], "anchor aspect ratios (height / width)"),
        H("depth", int, 50, "ResNet depth", choices=DEPTHS),
        H("fpn_channels", int, 256, "channels of the FPN levels and the heads' convolutions", low=8, high=1024),
        H("norm", str, "GN", "normalisation: FrozenBN for pretrained weights; GN, BN or SyncBN from scratch",
          choices=NORMS),
        H("freeze_at", int, 0, "freeze the stem (1) and the first res stages (2-5) of pretrained weights; 0 = none",
          low=0, high=5),
        H("amp", bool, True, "mixed precision on GPU (CPU always trains in float32)"),
        H("score_thresh", float, 0.05, "minimum score of a kept detection at test time", low=0.0, high=1.0),
        H("nms_thresh", float, 0.5, "IoU of the test-time non-maximum suppression", low=0.0, high=1.0),
        H("detections_per_image", int, 100, "detections kept per image at test time", low=1, high=10000),
        H("box_reg_loss", str, "smooth_l1", "box regression loss", choices=("smooth_l1", "giou", "diou", "ciou")),
    ]


def _rcnn_hyperparameters(post_nms_topk_train):
    """Names of the two-stage models (RPN + ROI heads)."""
    H = Hyperparameter
    return [
        H("box_head_dim", int, 1024, "width of the box head's two fully connected layers", low=8, high=8192),
        H("roi_batch_size", int, 512, "sampled ROIs per image for the box head", low=1, high=8192),
        H("roi_positive_fraction", float, 0.25, "target fraction of foreground ROIs", low=0.0, high=1.0),
        H("rpn_batch_size", int, 256, "sampled anchors per image for the RPN", low=1, high=8192),
        H("rpn_nms_thresh", float, 0.7, "IoU of the RPN's non-maximum suppression", low=0.0, high=1.0),
        H("rpn_post_nms_topk_train", int, post_nms_topk_train, "proposals kept per image in training", low=1,
          high=100000),
        H("rpn_post_nms_topk_test", int, 1000, "proposals kept per image at test time", low=1, high=100000),
    ]


@dataclass(frozen=True)
class Schedule:
    """Training length in iterations, derived from epochs (epoch = images seen / train images)."""

    max_iter: int
    eval_period: int
    warmup_iters: int
    steps: tuple

    @classmethod
    def from_epochs(cls, hparams, num_train_images, max_epochs, eval_every):
        def iterations(epochs):
            return max(1, math.ceil(epochs * num_train_images / hparams["batch_size"]))

        max_iter = iterations(max_epochs)
        warmup = 0 if hparams["warmup_epochs"] == 0 else min(iterations(hparams["warmup_epochs"]), max_iter)
        # fvcore's step scheduler wants strictly increasing milestones inside (0, max_iter)
        steps = sorted({round(fraction * max_iter) for fraction in hparams["lr_steps"]} - {0, max_iter})
        return cls(max_iter, min(iterations(eval_every), max_iter), warmup, tuple(steps))


class Adapter(abc.ABC):
    """Maps one architecture's hyperparameters onto a detectron2 config built from its model-zoo file."""

    name: str
    base_config: str  # model-zoo file relative to detectron2/model_zoo/configs
    num_classes_key: str
    test_keys: dict  # project name -> config key of the test-time thresholds

    def __init__(self):
        self.hyperparameters = HyperparameterSet(self.name, self.declare())

    def declare(self):
        return _shared_hyperparameters()

    def resolve(self, hparams, where, has_weights=None):
        """Validate `hparams` (project names) and return them complete with defaults.

        `has_weights` (None = unknown) lets FrozenBN without pretrained weights fail here, before any trial.
        """
        if "num_classes" in hparams:
            raise UserError(f"{where}: 'num_classes' is not a hyperparameter: {self.name} takes it from the "
                            "dataset's categories. Remove it.")
        resolved = self.hyperparameters.validate(hparams, where)
        self._check_lists(resolved, where)
        if resolved["norm"] == "GN" and resolved["fpn_channels"] % 32:
            raise UserError(f"{where}: norm GN splits channels into 32 groups: 'fpn_channels' must be a multiple "
                            f"of 32, got {resolved['fpn_channels']}")
        if resolved["optimizer"] == "adamw" and resolved["nesterov"]:
            raise UserError(f"{where}: 'nesterov' applies to optimizer sgd only; set it to false for adamw")
        if has_weights is False and resolved["norm"] == "FrozenBN":
            raise UserError(f"{where}: norm FrozenBN keeps random batch-norm statistics frozen without pretrained "
                            "weights and diverges: set 'weights' to a checkpoint, or norm to GN, BN or SyncBN")
        return resolved

    def _check_lists(self, hparams, where):
        def numbers(name, count=None, kind=(int, float), increasing=False):
            values = hparams[name]
            if (count is not None and len(values) != count) or not values or not all(
                    isinstance(v, kind) and not isinstance(v, bool) and v > 0 for v in values):
                size = f"{count} " if count else ""
                raise UserError(f"{where}: hyperparameter '{name}' must be a list of {size}positive numbers, "
                                f"got {values!r}")
            if increasing and list(values) != sorted(set(values)):
                raise UserError(f"{where}: hyperparameter '{name}' must be strictly increasing, got {values!r}")

        numbers("anchor_sizes", FPN_LEVELS, increasing=True)
        numbers("anchor_ratios")
        numbers("lr_steps", increasing=True)
        if not all(0 < step < 1 for step in hparams["lr_steps"]):
            raise UserError(f"{where}: hyperparameter 'lr_steps' holds fractions of training in (0, 1), "
                            f"got {hparams['lr_steps']!r}")

    def build_config(self, hparams, num_classes, schedule=None, seed=0):
        """A frozen detectron2 CfgNode for resolved `hparams`; `schedule` (a Schedule) sets the solver length."""
        from detectron2 import model_zoo
        from detectron2.config import get_cfg

        cfg = get_cfg()
        cfg.SOLVER.OPTIMIZER = "SGD"  # detfuse's own key: detectron2 v0.6 only builds SGD
        with _trusted_model_zoo_yaml():
            cfg.merge_from_file(model_zoo.get_config_file(self.base_config))
        cfg.merge_from_list(_flatten(self.config_values(hparams, num_classes, schedule, seed)))
        cfg.freeze()
        return cfg

    def config_values(self, hparams, num_classes, schedule, seed):
        """Config key -> value for everything the project controls."""
        h = hparams
        norm = h["norm"]
        max_size = math.ceil(h["image_size"] * MAX_SIZE_RATIO)
        values = {
            "MODEL.WEIGHTS": "",  # detfuse loads the trial's `weights` itself (trainer.py), never detectron2
            "MODEL.MASK_ON": False,
            self.num_classes_key: num_classes,
            "MODEL.RESNETS.DEPTH": h["depth"],
            "MODEL.RESNETS.RES2_OUT_CHANNELS": 64 if h["depth"] in (18, 34) else 256,
            "MODEL.RESNETS.NORM": norm,
            "MODEL.BACKBONE.FREEZE_AT": h["freeze_at"],
            "MODEL.FPN.NORM": "" if norm == "FrozenBN" else norm,
            "MODEL.FPN.OUT_CHANNELS": h["fpn_channels"],
            "MODEL.ANCHOR_GENERATOR.SIZES": self.anchor_generator_sizes(h["anchor_sizes"]),
            "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS": [list(map(float, h["anchor_ratios"]))],
            "INPUT.MIN_SIZE_TRAIN": (h["image_size"],),
            "INPUT.MAX_SIZE_TRAIN": max_size,
            "INPUT.MIN_SIZE_TEST": h["image_size"],
            "INPUT.MAX_SIZE_TEST": max_size,
            "TEST.DETECTIONS_PER_IMAGE": h["detections_per_image"],
            "SOLVER.OPTIMIZER": h["optimizer"].upper(),
            "SOLVER.BASE_LR": h["lr"],
            "SOLVER.MOMENTUM": h["momentum"],
            "SOLVER.NESTEROV": h["nesterov"],
            "SOLVER.WEIGHT_DECAY": h["weight_decay"],
            "SOLVER.WEIGHT_DECAY_NORM": 0.0,
            "SOLVER.WEIGHT_DECAY_BIAS": 0.0,
            "SOLVER.IMS_PER_BATCH": h["batch_size"],
            "SOLVER.LR_SCHEDULER_NAME": {"step": "WarmupMultiStepLR", "cosine": "WarmupCosineLR"}[h["lr_schedule"]],
            "SOLVER.GAMMA": h["lr_gamma"],
            "SOLVER.CLIP_GRADIENTS.ENABLED": h["grad_clip"] > 0,
            "SOLVER.CLIP_GRADIENTS.CLIP_TYPE": "norm",
            "SOLVER.CLIP_GRADIENTS.CLIP_VALUE": h["grad_clip"] if h["grad_clip"] > 0 else 1.0,
            "SOLVER.AMP.ENABLED": h["amp"],
            "DATALOADER.SAMPLER_TRAIN": "RepeatFactorTrainingSampler" if h["repeat_threshold"] > 0
            else "TrainingSampler",
            "DATALOADER.REPEAT_THRESHOLD": h["repeat_threshold"],
            "SEED": seed,
        }
        values.update({key: h[name] for name, key in self.test_keys.items()})
        values.update(self.head_values(h))
        if schedule is not None:
            values.update({
                "SOLVER.MAX_ITER": schedule.max_iter,
                "SOLVER.STEPS": schedule.steps,
                "SOLVER.WARMUP_ITERS": schedule.warmup_iters,
                "SOLVER.CHECKPOINT_PERIOD": schedule.eval_period,
                "TEST.EVAL_PERIOD": schedule.eval_period,
            })
        return values

    def anchor_generator_sizes(self, sizes):
        return [[size] for size in sizes]

    @abc.abstractmethod
    def head_values(self, hparams):
        """Config key -> value for the architecture's own head (R-CNN ROI heads, RetinaNet head)."""


class _RCNNAdapter(Adapter):
    num_classes_key = "MODEL.ROI_HEADS.NUM_CLASSES"
    test_keys = {"score_thresh": "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "nms_thresh": "MODEL.ROI_HEADS.NMS_THRESH_TEST"}
    post_nms_topk_train = 1000

    def declare(self):
        return super().declare() + _rcnn_hyperparameters(self.post_nms_topk_train)

    def head_values(self, h):
        return {
            "MODEL.ROI_BOX_HEAD.FC_DIM": h["box_head_dim"],
            "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE": h["roi_batch_size"],
            "MODEL.ROI_HEADS.POSITIVE_FRACTION": h["roi_positive_fraction"],
            "MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE": h["box_reg_loss"],
            "MODEL.RPN.BATCH_SIZE_PER_IMAGE": h["rpn_batch_size"],
            "MODEL.RPN.NMS_THRESH": h["rpn_nms_thresh"],
            "MODEL.RPN.POST_NMS_TOPK_TRAIN": h["rpn_post_nms_topk_train"],
            "MODEL.RPN.POST_NMS_TOPK_TEST": h["rpn_post_nms_topk_test"],
        }


class FasterRCNN(_RCNNAdapter):
    name = "faster_rcnn"
    base_config = "COCO-Detection/faster_rcnn_R_50_FPN_3x.yaml"

    def declare(self):
        return super().declare() + [
            Hyperparameter("roi_iou_thresh", float, 0.5, "IoU at which a proposal counts as foreground",
                           low=0.0, high=1.0),
        ]

    def head_values(self, h):
        return {**super().head_values(h), "MODEL.ROI_HEADS.IOU_THRESHOLDS": [h["roi_iou_thresh"]]}


class CascadeRCNN(_RCNNAdapter):
    name = "cascade_rcnn"
    # detectron2 ships Cascade R-CNN only with masks; MODEL.MASK_ON is switched off in config_values
    base_config = "Misc/cascade_mask_rcnn_R_50_FPN_3x.yaml"
    post_nms_topk_train = 2000

    def declare(self):
        return super().declare() + [
            Hyperparameter("cascade_ious", list, [0.5, 0.6, 0.7], "foreground IoU of each of the 3 cascade stages"),
        ]

    def resolve(self, hparams, where, has_weights=None):
        resolved = super().resolve(hparams, where, has_weights)
        ious = resolved["cascade_ious"]
        if len(ious) != 3 or not all(isinstance(v, (int, float)) and 0 < v < 1 for v in ious):
            raise UserError(f"{where}: hyperparameter 'cascade_ious' must be 3 IoUs in (0, 1), got {ious!r}")
        return resolved

    def head_values(self, h):
        return {**super().head_values(h), "MODEL.ROI_BOX_CASCADE_HEAD.IOUS": [float(v) for v in h["cascade_ious"]]}


class RetinaNet(Adapter):
    name = "retinanet"
    base_config = "COCO-Detection/retinanet_R_50_FPN_3x.yaml"
    num_classes_key = "MODEL.RETINANET.NUM_CLASSES"
    test_keys = {"score_thresh": "MODEL.RETINANET.SCORE_THRESH_TEST", "nms_thresh": "MODEL.RETINANET.NMS_THRESH_TEST"}

    def declare(self):
        H = Hyperparameter
        return super().declare() + [
            H("focal_alpha", float, 0.25, "focal loss weight of the positive class", low=0.0, high=1.0),
            H("focal_gamma", float, 2.0, "focal loss focusing exponent", low=0.0, high=10.0),
            H("topk_candidates", int, 1000, "candidates per FPN level before test-time NMS", low=1, high=100000),
            H("head_convs", int, 4, "convolutions in each of the classification and box subnets", low=0, high=16),
            H("head_norm", str, "none", "normalisation in the subnets: none (model zoo), GN (from scratch), BN or "
              "SyncBN", choices=("none", "GN", "BN", "SyncBN")),
        ]

    def resolve(self, hparams, where, has_weights=None):
        resolved = super().resolve(hparams, where, has_weights)
        if resolved["head_norm"] == "GN" and resolved["fpn_channels"] % 32:
            raise UserError(f"{where}: head_norm GN splits channels into 32 groups: 'fpn_channels' must be a "
                            f"multiple of 32, got {resolved['fpn_channels']}")
        return resolved

    def anchor_generator_sizes(self, sizes):
        # RetinaNet's model-zoo anchors: three scales per octave at every level
        return [[size * 2 ** (k / 3) for k in range(3)] for size in sizes]

    def head_values(self, h):
        # From scratch, the unnormalised model-zoo subnets learn slowly: head_norm GN normalises them per level
        return {
            "MODEL.RETINANET.NORM": "" if h["head_norm"] == "none" else h["head_norm"],
            "MODEL.RETINANET.FOCAL_LOSS_ALPHA": h["focal_alpha"],
            "MODEL.RETINANET.FOCAL_LOSS_GAMMA": h["focal_gamma"],
            "MODEL.RETINANET.TOPK_CANDIDATES_TEST": h["topk_candidates"],
            "MODEL.RETINANET.NUM_CONVS": h["head_convs"],
            "MODEL.RETINANET.BBOX_REG_LOSS_TYPE": h["box_reg_loss"],
        }


def _flatten(values):
    return [item for pair in values.items() for item in pair]


@contextlib.contextmanager
def _trusted_model_zoo_yaml():
    """Base-RetinaNet.yaml computes its anchors with a python tag; it ships inside detectron2 and is trusted,
    so fvcore's warning about loading it unsafely is noise here."""
    config_logger = logging.getLogger("fvcore.common.config")
    level = config_logger.level
    config_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        config_logger.setLevel(level)


ARCHITECTURES = {adapter.name: adapter for adapter in (FasterRCNN(), RetinaNet(), CascadeRCNN())}
