"""Search space files: shipped spaces load; every malformed file fails naming the file, the key and the fix."""

import pytest
import yaml

from detfuse.core.errors import UserError
from search_spaces import available_spaces, load_search_space


@pytest.mark.parametrize("name", available_spaces())
def test_shipped_spaces_load_and_sample_valid_trial_configs(name):
    space = load_search_space(name)
    assert space.space, f"{name} tunes nothing"
    assert 0 < space.grace_epochs <= space.max_epochs
    config = space.trial_config({n: d.sample() for n, d in space.space.items()}, dataset="builtin")
    assert config["architecture"] == space.architecture and config["family"] == space.family


def test_both_families_and_all_architectures_have_default_spaces():
    architectures = {load_search_space(n).architecture for n in available_spaces()}
    assert {"faster_rcnn", "retinanet", "cascade_rcnn", "yolov5n", "yolov5s"} <= architectures
    for name in ("faster_rcnn", "retinanet", "cascade_rcnn", "yolov5n", "yolov5s"):
        space = load_search_space(name)
        assert "repeat_threshold" in space.space  # class imbalance is a searched setting in every space
        assert "optimizer" in space.space or "optimizer" in space.fixed["hparams"]  # chosen, never left implicit


def write(tmp_path, data):
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


GOOD = {"architecture": "faster_rcnn", "budget": {"max_epochs": 4, "grace_epochs": 1},
        "space": {"lr": {"loguniform": [1.0e-4, 1.0e-2]}}}


@pytest.mark.parametrize("change, expected", [
    ({"space": {"learning_rate": {"uniform": [0.1, 0.2]}}}, ["'learning_rate' is not a hyperparameter of faster_rcnn",
                                                               "Valid names", "roi_batch_size"]),
    ({"space": {"focal_gamma": {"uniform": [1.0, 2.0]}}}, ["'focal_gamma' is not a hyperparameter of faster_rcnn"]),
    ({"space": {"lr": {"uniform": [0.1, 0.01]}}}, ["space.lr", "inverted range"]),
    ({"space": {"lr": {"loguniform": [0.0, 0.01]}}}, ["space.lr", "low > 0"]),
    ({"space": {"lr": {"gaussian": [0.0, 0.01]}}}, ["space.lr", "unknown distribution 'gaussian'", "loguniform"]),
    ({"space": {"lr": {"uniform": []}}}, ["space.lr", "non-empty list"]),
    ({"space": {"optimizer": {"uniform": [0.1, 0.2]}}}, ["space.optimizer", "use choice"]),
    ({"space": {"optimizer": {"choice": ["sgd", "lion"]}}}, ["space.optimizer.choice", "sgd, adamw"]),
    ({"space": {"batch_size": {"uniform": [2, 8]}}}, ["space.batch_size", "needs int"]),
    ({"space": {"lr": {"uniform": [0.5, 2.0]}}}, ["space.lr", "out of range"]),
    ({"budget": {"max_epochs": 2, "grace_epochs": 3}}, ["grace_epochs (3) exceeds budget.max_epochs (2)"]),
    ({"budget": {"grace_epochs": 3}}, ["'budget' must be a mapping with max_epochs"]),
    ({"budget": None}, ["'budget' must be a mapping with max_epochs"]),
    ({"architecture": "mask_rcnn"}, ["unknown architecture 'mask_rcnn'", "faster_rcnn", "yolov5n"]),
    ({"family": "yolov5"}, ["belongs to family 'detectron2', not 'yolov5'"]),
    ({"spaces": {}}, ["unknown key(s) spaces", "valid keys"]),
    ({"fixed": {"hparams": {"lr": 0.01}}}, ["lr appear both in space and in fixed.hparams"]),
    ({"fixed": {"hparams": {"num_classes": 3}}}, ["num_classes", "from the dataset"]),
    ({"fixed": {"epochs": 3}}, ["fixed: unknown key(s) epochs"]),
])
def test_malformed_space_names_file_and_key(tmp_path, change, expected):
    data = {k: v for k, v in {**GOOD, **change}.items() if v is not None}  # a key changed to None is left out
    path = write(tmp_path, data)
    with pytest.raises(UserError) as error:
        load_search_space(str(path))
    message = str(error.value)
    assert str(path) in message
    for part in expected:
        assert part in message


def test_yolo_space_rejects_detectron2_names(tmp_path):
    path = write(tmp_path, {"architecture": "yolov5n", "budget": {"max_epochs": 3},
                            "space": {"roi_batch_size": {"choice": [128, 256]}}})
    with pytest.raises(UserError, match="'roi_batch_size' is not a hyperparameter of yolov5n"):
        load_search_space(str(path))


def test_unknown_space_name_lists_shipped_spaces():
    with pytest.raises(UserError, match="unknown search space 'fast_rcnn'.*faster_rcnn"):
        load_search_space("fast_rcnn")
