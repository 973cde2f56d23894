"""The YOLOv5 adapter: project hyperparameter names, their validation, and the Ultralytics arguments they become."""

import pytest

from detfuse.core.errors import UserError
from trainables.yolov5 import ARCHITECTURES
from trainables.yolov5.adapter import HYPERPARAMETERS, ULTRALYTICS_ARGUMENTS


def test_every_size_is_an_architecture_built_from_its_yaml():
    assert list(ARCHITECTURES) == ["yolov5n", "yolov5s", "yolov5m", "yolov5l", "yolov5x"]
    assert ARCHITECTURES["yolov5m"].model_yaml == "yolov5m.yaml"


def test_defaults_map_to_ultralytics_arguments():
    adapter = ARCHITECTURES["yolov5s"]
    hparams = adapter.hyperparameters.validate({}, "test")
    arguments = adapter.ultralytics_arguments(hparams)
    # every hyperparameter but detfuse's own sampler threshold becomes one Ultralytics argument
    assert set(ULTRALYTICS_ARGUMENTS) == {h.name for h in HYPERPARAMETERS} - {"repeat_threshold"}
    assert arguments == {
        "optimizer": "SGD", "lr0": 0.01, "lrf": 0.01, "momentum": 0.937, "weight_decay": 0.0005,
        "warmup_epochs": 3.0, "box": 7.5, "cls": 0.5, "dfl": 1.5, "imgsz": 640, "batch": 16, "nbs": 64,
        "mosaic": 1.0, "close_mosaic": 10, "mixup": 0.0, "hsv_h": 0.015, "hsv_s": 0.7, "hsv_v": 0.4,
        "scale": 0.5, "translate": 0.1, "fliplr": 0.5,
    }


def test_project_names_are_translated():
    adapter = ARCHITECTURES["yolov5n"]
    hparams = adapter.hyperparameters.validate(
        {"optimizer": "adamw", "lr": 0.002, "final_lr_fraction": 0.1, "image_size": 320, "batch_size": 8,
         "box_gain": 5, "close_mosaic": 0}, "test")
    arguments = adapter.ultralytics_arguments(hparams)
    assert (arguments["optimizer"], arguments["lr0"], arguments["lrf"]) == ("AdamW", 0.002, 0.1)
    assert (arguments["imgsz"], arguments["batch"], arguments["box"], arguments["close_mosaic"]) == (320, 8, 5.0, 0)


def test_unknown_name_fails_with_the_valid_list():
    with pytest.raises(UserError) as error:
        ARCHITECTURES["yolov5n"].hyperparameters.validate({"lr0": 0.01}, "search_spaces/y.yaml: space")
    message = str(error.value)
    assert "search_spaces/y.yaml: space: 'lr0' is not a hyperparameter of yolov5n" in message
    for name in ("lr (float", "final_lr_fraction", "repeat_threshold", "optimizer (one of sgd, adamw)"):
        assert name in message


@pytest.mark.parametrize("values, problem", [
    ({"batch_size": 0}, "out of range"),  # no AutoBatch: a batch size is always explicit
    ({"batch_size": 0.5}, "must be of type int"),
    ({"optimizer": "Adam"}, "must be one of: sgd, adamw"),
    ({"mosaic": 1.5}, "out of range"),
    ({"repeat_threshold": -0.1}, "out of range"),
])
def test_bad_values_fail(values, problem):
    with pytest.raises(UserError, match=problem):
        ARCHITECTURES["yolov5n"].hyperparameters.validate(values, "test")


def test_image_size_must_be_a_multiple_of_the_stride():
    adapter = ARCHITECTURES["yolov5n"]
    with pytest.raises(UserError, match="'image_size' = 500 must be a multiple of 32 .* e.g. 480"):
        adapter.resolve({"image_size": 500}, "trial config: hparams")
