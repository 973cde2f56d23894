"""The Detectron2 adapters: project hyperparameter names, their validation, and the config keys they become."""

import pytest
import torch
from detectron2 import model_zoo
from detectron2.config import get_cfg

from detfuse.core.errors import UserError
from trainables.detectron2 import ARCHITECTURES
from trainables.detectron2.adapters import Schedule


def build(architecture, num_classes=5, schedule=None, **hparams):
    adapter = ARCHITECTURES[architecture]
    return adapter.build_config(adapter.resolve(hparams, "test"), num_classes, schedule)


def model_zoo_config(architecture):
    cfg = get_cfg()
    cfg.merge_from_file(model_zoo.get_config_file(ARCHITECTURES[architecture].base_config))
    return cfg


def test_the_three_architectures():
    assert sorted(ARCHITECTURES) == ["cascade_rcnn", "faster_rcnn", "retinanet"]
    assert build("faster_rcnn").MODEL.META_ARCHITECTURE == "GeneralizedRCNN"
    assert build("retinanet").MODEL.META_ARCHITECTURE == "RetinaNet"
    cascade = build("cascade_rcnn")
    assert cascade.MODEL.ROI_HEADS.NAME == "CascadeROIHeads" and cascade.MODEL.MASK_ON is False


@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
def test_weights_are_never_downloaded(architecture):
    # the model-zoo files name ImageNet weights on detectron2's servers
    assert model_zoo_config(architecture).MODEL.WEIGHTS.startswith("detectron2://")
    assert build(architecture).MODEL.WEIGHTS == ""


def test_class_count_and_test_thresholds_go_where_each_architecture_keeps_them():
    rcnn = build("faster_rcnn", num_classes=7, score_thresh=0.3, nms_thresh=0.6)
    assert rcnn.MODEL.ROI_HEADS.NUM_CLASSES == 7
    assert (rcnn.MODEL.ROI_HEADS.SCORE_THRESH_TEST, rcnn.MODEL.ROI_HEADS.NMS_THRESH_TEST) == (0.3, 0.6)
    retina = build("retinanet", num_classes=7, score_thresh=0.3, nms_thresh=0.6)
    assert retina.MODEL.RETINANET.NUM_CLASSES == 7
    assert (retina.MODEL.RETINANET.SCORE_THRESH_TEST, retina.MODEL.RETINANET.NMS_THRESH_TEST) == (0.3, 0.6)
    # and nothing lands under the other architecture's keys
    untouched = get_cfg()
    assert retina.MODEL.ROI_HEADS.NUM_CLASSES == untouched.MODEL.ROI_HEADS.NUM_CLASSES
    assert retina.MODEL.ROI_HEADS.SCORE_THRESH_TEST == untouched.MODEL.ROI_HEADS.SCORE_THRESH_TEST
    assert rcnn.MODEL.RETINANET.NUM_CLASSES == untouched.MODEL.RETINANET.NUM_CLASSES


# keys an adapter sets from a default that must be the model zoo's own value
ZOO_DEFAULTS = {
    "shared": ["MODEL.RESNETS.DEPTH", "MODEL.FPN.OUT_CHANNELS", "TEST.DETECTIONS_PER_IMAGE",
               "SOLVER.MOMENTUM", "SOLVER.NESTEROV", "SOLVER.WEIGHT_DECAY", "SOLVER.GAMMA"],
    "faster_rcnn": ["MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "MODEL.ROI_HEADS.POSITIVE_FRACTION",
                    "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "MODEL.ROI_HEADS.NMS_THRESH_TEST",
                    "MODEL.ROI_HEADS.IOU_THRESHOLDS", "MODEL.ROI_BOX_HEAD.FC_DIM",
                    "MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE", "MODEL.RPN.BATCH_SIZE_PER_IMAGE",
                    "MODEL.RPN.NMS_THRESH", "MODEL.RPN.POST_NMS_TOPK_TRAIN", "MODEL.RPN.POST_NMS_TOPK_TEST",
                    "MODEL.ANCHOR_GENERATOR.SIZES", "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS"],
    "retinanet": ["MODEL.RETINANET.SCORE_THRESH_TEST", "MODEL.RETINANET.NMS_THRESH_TEST",
                  "MODEL.RETINANET.FOCAL_LOSS_ALPHA", "MODEL.RETINANET.FOCAL_LOSS_GAMMA",
                  "MODEL.RETINANET.TOPK_CANDIDATES_TEST", "MODEL.RETINANET.NUM_CONVS",
                  "MODEL.RETINANET.BBOX_REG_LOSS_TYPE", "MODEL.ANCHOR_GENERATOR.SIZES",
                  "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS"],
    "cascade_rcnn": ["MODEL.ROI_BOX_CASCADE_HEAD.IOUS", "MODEL.RPN.POST_NMS_TOPK_TRAIN",
                     "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "MODEL.ROI_BOX_HEAD.FC_DIM"],
}


@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
def test_defaults_keep_the_model_zoo_values(architecture):
    built, zoo = build(architecture), model_zoo_config(architecture)
    for key in ZOO_DEFAULTS["shared"] + ZOO_DEFAULTS[architecture]:
        ours, theirs = built, zoo
        for part in key.split("."):
            ours, theirs = ours[part], theirs[part]
        if isinstance(theirs, (list, tuple)):
            ours, theirs = torch.tensor(ours, dtype=torch.float64), torch.tensor(theirs, dtype=torch.float64)
            assert torch.allclose(ours, theirs), key
        else:
            assert ours == theirs, key


def test_backbone_depth_and_norm():
    small = build("faster_rcnn", depth=18, norm="GN", fpn_channels=64)
    assert small.MODEL.RESNETS.DEPTH == 18 and small.MODEL.RESNETS.RES2_OUT_CHANNELS == 64
    assert (small.MODEL.RESNETS.NORM, small.MODEL.FPN.NORM, small.MODEL.FPN.OUT_CHANNELS) == ("GN", "GN", 64)
    pretrained = build("retinanet", depth=101, norm="FrozenBN", freeze_at=2)
    assert pretrained.MODEL.RESNETS.RES2_OUT_CHANNELS == 256 and pretrained.MODEL.BACKBONE.FREEZE_AT == 2
    assert (pretrained.MODEL.RESNETS.NORM, pretrained.MODEL.FPN.NORM) == ("FrozenBN", "")


def test_retinanet_keeps_three_anchor_scales_per_level():
    sizes = build("retinanet", anchor_sizes=[16, 32, 64, 128, 256]).MODEL.ANCHOR_GENERATOR.SIZES
    assert len(sizes) == 5 and sizes[0] == pytest.approx([16, 16 * 2 ** (1 / 3), 16 * 2 ** (2 / 3)])
    assert build("faster_rcnn", anchor_sizes=[16, 32, 64, 128, 256]).MODEL.ANCHOR_GENERATOR.SIZES[0] == [16]


def test_retinanet_head_norm_builds_normalised_subnets():
    from detectron2.modeling import build_model

    assert build("retinanet").MODEL.RETINANET.NORM == ""  # the model zoo's
    cfg = build("retinanet", depth=18, fpn_channels=64, head_norm="GN", head_convs=2)
    cfg.defrost()
    cfg.MODEL.DEVICE = "cpu"
    subnet = build_model(cfg).head.cls_subnet
    assert [type(layer).__name__ for layer in subnet] == ["Conv2d", "GroupNorm", "ReLU"] * 2
    with pytest.raises(UserError, match="head_norm GN .* multiple of 32, got 48"):
        build("retinanet", norm="BN", fpn_channels=48, head_norm="GN")


def test_solver_sampler_and_input_keys():
    schedule = Schedule(max_iter=300, eval_period=50, warmup_iters=20, steps=(200, 267))
    cfg = build("cascade_rcnn", schedule=schedule, optimizer="adamw", lr=0.002, grad_clip=5.0,
                repeat_threshold=0.1, image_size=480, lr_schedule="cosine")
    assert (cfg.SOLVER.OPTIMIZER, cfg.SOLVER.BASE_LR, cfg.SOLVER.LR_SCHEDULER_NAME) == ("ADAMW", 0.002,
                                                                                          "WarmupCosineLR")
    assert (cfg.SOLVER.MAX_ITER, cfg.SOLVER.WARMUP_ITERS, tuple(cfg.SOLVER.STEPS)) == (300, 20, (200, 267))
    assert cfg.TEST.EVAL_PERIOD == 50
    assert cfg.SOLVER.CLIP_GRADIENTS.ENABLED and cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE == 5.0
    assert (cfg.DATALOADER.SAMPLER_TRAIN, cfg.DATALOADER.REPEAT_THRESHOLD) == ("RepeatFactorTrainingSampler", 0.1)
    assert (cfg.SOLVER.WEIGHT_DECAY_NORM, cfg.SOLVER.WEIGHT_DECAY_BIAS) == (0.0, 0.0)
    assert (tuple(cfg.INPUT.MIN_SIZE_TRAIN), cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST) == ((480,), 480, 800)
    assert build("faster_rcnn").DATALOADER.SAMPLER_TRAIN == "TrainingSampler"


def test_schedule_converts_epochs_with_the_batch_size():
    hparams = ARCHITECTURES["faster_rcnn"].resolve({"batch_size": 8, "warmup_epochs": 0.5,
                                                    "lr_steps": [0.5, 0.75]}, "test")
    schedule = Schedule.from_epochs(hparams, num_train_images=200, max_epochs=12, eval_every=1.5)
    assert schedule == Schedule(max_iter=300, eval_period=38, warmup_iters=13, steps=(150, 225))


@pytest.mark.parametrize("architecture, foreign, valid", [
    ("faster_rcnn", "focal_gamma", ["roi_batch_size", "roi_iou_thresh", "lr (float", "depth (one of 18, 34, 50"]),
    ("retinanet", "roi_batch_size", ["focal_gamma", "focal_alpha", "topk_candidates", "head_convs", "anchor_sizes"]),
    ("cascade_rcnn", "roi_iou_thresh", ["cascade_ious", "roi_batch_size", "norm (one of FrozenBN, GN, BN"]),
    ("retinanet", "learning_rate", ["lr (float", "optimizer (one of sgd, adamw)"]),
])
def test_unsupported_name_fails_with_the_valid_list(architecture, foreign, valid):
    with pytest.raises(UserError) as error:
        ARCHITECTURES[architecture].resolve({foreign: 1}, "search_spaces/d2.yaml: space")
    message = str(error.value)
    assert f"search_spaces/d2.yaml: space: '{foreign}' is not a hyperparameter of {architecture}" in message
    for name in valid:
        assert name in message


def test_num_classes_comes_from_the_dataset():
    for adapter in ARCHITECTURES.values():
        with pytest.raises(UserError, match="'num_classes' is not a hyperparameter.*dataset's categories"):
            adapter.resolve({"num_classes": 3}, "test")


@pytest.mark.parametrize("values, problem", [
    ({"depth": 152}, "must be one of: 18, 34, 50, 101"),
    ({"norm": "LN"}, "must be one of: FrozenBN, GN, BN, SyncBN"),
    ({"anchor_sizes": [32, 64, 128]}, "'anchor_sizes' must be a list of 5 positive numbers"),
    ({"anchor_sizes": [64, 32, 128, 256, 512]}, "strictly increasing"),
    ({"lr_steps": [0.5, 1.5]}, r"fractions of training in \(0, 1\)"),
    ({"fpn_channels": 48}, "multiple of 32"),
    ({"optimizer": "adamw", "nesterov": True}, "nesterov' applies to optimizer sgd only"),
    ({"lr": 0}, "out of range"),
])
def test_bad_values_fail(values, problem):
    with pytest.raises(UserError, match=problem):
        ARCHITECTURES["faster_rcnn"].resolve(values, "test")


def test_cascade_needs_three_ious():
    with pytest.raises(UserError, match="'cascade_ious' must be 3 IoUs"):
        ARCHITECTURES["cascade_rcnn"].resolve({"cascade_ious": [0.5, 0.6]}, "test")


def test_frozen_batch_norm_needs_pretrained_weights():
    adapter = ARCHITECTURES["retinanet"]
    with pytest.raises(UserError, match="FrozenBN .* without pretrained weights"):
        adapter.resolve({"norm": "FrozenBN"}, "trial config: hparams", has_weights=False)
    assert adapter.resolve({"norm": "FrozenBN"}, "trial config: hparams", has_weights=True)["norm"] == "FrozenBN"


@pytest.mark.parametrize("optimizer, expected", [("sgd", torch.optim.SGD), ("adamw", torch.optim.AdamW)])
def test_optimizer_skips_weight_decay_on_norm_and_bias(optimizer, expected):
    from detectron2.modeling import build_model

    from trainables.detectron2.trainer import Trainer

    cfg = build("faster_rcnn", depth=18, fpn_channels=64, optimizer=optimizer, weight_decay=0.01, grad_clip=1.0)
    cfg.defrost()
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg)
    optimizer = Trainer.build_optimizer(cfg, model)
    assert isinstance(optimizer, expected) and type(optimizer).__name__.endswith("WithGradientClip")
    decay = {id(p): group["weight_decay"] for group in optimizer.param_groups for p in group["params"]}
    for name, parameter in model.named_parameters():
        is_norm = ".norm." in name or name.endswith(".norm.weight")
        assert decay[id(parameter)] == (0.0 if is_norm or name.endswith(".bias") else 0.01), name
    assert any(v == 0.01 for v in decay.values())
