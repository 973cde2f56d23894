"""The shipped pretrained search spaces name real model-zoo files and rebuild the architecture those files were
trained with, so that everything but the class-specific outputs loads (a mismatch would silently train most
layers from scratch). Checked offline: the zoo's own configs build models of the checkpoints' shapes."""

import pytest
import torch

from search_spaces import load_search_space
from trainables.detectron2.adapters import ARCHITECTURES as D2_ARCHITECTURES
from trainables.trial_config import resolve_trial_config


def sampled_config(space):
    return resolve_trial_config(space.trial_config({n: d.sample() for n, d in space.space.items()}), "test")


@pytest.mark.parametrize("name", ["faster_rcnn_pretrained", "retinanet_pretrained", "cascade_rcnn_pretrained"])
def test_detectron2_pretrained_spaces_rebuild_their_zoo_checkpoints(name):
    from trainables.detectron2 import logs

    logs.configure(verbose=False)
    from detectron2 import model_zoo
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    space = load_search_space(name)
    source = space.fixed["weights"]
    zoo_path = source.removeprefix("detectron2://")
    zoo_config = zoo_path.rsplit("/", 2)[0] + ".yaml"
    # the name is in the installed detectron2's model-zoo table, as that config's checkpoint
    assert model_zoo.get_checkpoint_url(zoo_config).endswith("/detectron2/" + zoo_path)

    zoo_cfg = get_cfg()
    zoo_cfg.merge_from_file(model_zoo.get_config_file(zoo_config), allow_unsafe=True)
    zoo_cfg.MODEL.DEVICE = "cpu"
    torch.manual_seed(0)
    zoo_state = build_model(zoo_cfg).state_dict()

    config = sampled_config(space)
    ours = D2_ARCHITECTURES[space.architecture].build_config(config["hparams"], num_classes=7)
    ours.defrost()
    ours.MODEL.DEVICE = "cpu"
    incompatible = DetectionCheckpointer(build_model(ours))._load_model({"model": zoo_state})
    reshaped = {key for key, _, _ in incompatible.incorrect_shapes}
    assert reshaped and all("cls_score" in key or "bbox_pred" in key for key in reshaped), reshaped
    assert set(incompatible.missing_keys) == reshaped  # nothing else starts from scratch


def test_yolov5_pretrained_space_loads_all_but_the_class_outputs():
    from trainables.yolov5 import environment

    environment.configure()
    from trainables.yolov5.predictor import build_model
    from trainables.yolov5.transfer import InitialWeights, describe_transfer

    space = load_search_space("yolov5s_pretrained")
    config = sampled_config(space)
    assert config["weights"]["source"] == "yolov5su.pt" and config["hparams"]["image_size"] == 640
    assert load_search_space("yolov5n_pretrained").fixed["weights"] == "yolov5nu.pt"
    coco = build_model(space.architecture, 80)  # what the release holds: YOLOv5su trained on COCO's 80 classes
    line = describe_transfer(InitialWeights(coco, "w"), build_model(space.architecture, 7))
    reshaped = line.split(": ")[-1].split(", ")
    assert "re-initialised for 7 classes (the checkpoint's were for 80)" in line
    assert len(reshaped) == 6 and all(".cv3." in key and key.split(".")[-2] == "2" for key in reshaped), reshaped


def test_a_yolo_file_of_another_scale_is_refused_not_loaded_in_part():
    """yolov5n's layers are narrower than yolov5s's: only BatchNorm counters and a few tensors would fit."""
    from trainables.yolov5 import environment

    environment.configure()
    from detfuse.core.errors import UserError
    from trainables.yolov5.predictor import build_model
    from trainables.yolov5.transfer import InitialWeights, describe_transfer

    with pytest.raises(UserError, match=r"^trial T: weights w: only \d+ of this model's \d+ weights fit it .*yolov5su"):
        describe_transfer(InitialWeights(build_model("yolov5n", 80), "trial T: weights w"), build_model("yolov5s", 80))
