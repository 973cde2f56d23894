"""Experiment configs: the demo loads; overrides apply; bad configs fail at the boundary with file and key."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from detfuse.errors import UserError
from detfuse.experiment_config import load_experiment

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "configs" / "demo.yaml"


def test_demo_config_has_both_families():
    experiment = load_experiment(DEMO)
    assert {e.space.family for e in experiment.entries} == {"detectron2", "yolov5"}
    assert set(experiment.budgets()) == {"detectron2", "yolov5"}
    assert experiment.uri.endswith("/demo")


def test_overrides_reach_nested_keys_and_list_items():
    experiment = load_experiment(DEMO, ["name=other", "spaces.1.num_samples=5", "scheduler.max_epochs=2",
                                        "spaces.0.resources.gpu=0.5"])
    assert experiment.name == "other"
    assert experiment.entries[1].num_samples == 5
    assert experiment.entries[0].settings["resources"] == {"cpu": 1, "gpu": 0.5}
    assert all(e.space.max_epochs == 2.0 and e.space.grace_epochs <= 2.0 for e in experiment.entries)


def write(tmp_path, change):
    data = yaml.safe_load(DEMO.read_text())
    data.update(change)
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("change, expected", [
    ({"epochs": 3}, ["unknown key(s) epochs", "Valid keys", "spaces:"]),
    ({"name": ""}, ["'name' is required"]),
    ({"spaces": []}, ["'spaces' must be a non-empty list"]),
    ({"spaces": [{"space": "demo_yolov5n", "resources": {"gpu": 2}}]},
     ["spaces[0]", "only detectron2 trials run DDP"]),
    ({"spaces": [{"space": "demo_faster_rcnn", "resources": {"gpu": 1.5}}]},
     ["spaces[0]", "must be a whole number of GPUs"]),
    ({"spaces": [{"space": "demo_faster_rcnn", "resources": {"gpus": 1}}]}, ["spaces[0]", "keys cpu and gpu"]),
    ({"spaces": [{"space": "demo_faster_rcnn", "num_samples": 0}]}, ["spaces[0]", "'num_samples' must be a positive"]),
    ({"spaces": [{"space": "no_such_space"}]}, ["spaces[0]", "unknown search space 'no_such_space'"]),
    ({"scheduler": {"reduction_factor": 1}}, ["scheduler.reduction_factor must be a number > 1"]),
    ({"scheduler": {"grace": 1}}, ["'scheduler' must be a mapping with keys"]),
    ({"searcher": "annealing"}, ["unknown searcher 'annealing'", "optuna"]),
    ({"storage": "gs://bucket/x"}, ["only local paths and s3:// URIs"]),
    ({"wandb": {"projet": "x"}}, ["unknown wandb key(s) projet"]),
])
def test_bad_experiment_config_names_file_and_key(tmp_path, change, expected):
    path = write(tmp_path, change)
    with pytest.raises(UserError) as error:
        load_experiment(path)
    for part in [str(path), *expected]:
        assert part in str(error.value)


def test_detfuse_check_exits_2_with_the_message_and_no_traceback(tmp_path):
    space = tmp_path / "bad_space.yaml"
    space.write_text(yaml.safe_dump({"architecture": "yolov5n", "budget": {"max_epochs": 2},
                                     "space": {"lr": {"loguniform": [0.1, 0.01]}}}))
    path = write(tmp_path, {"spaces": [{"space": str(space)}]})
    run = subprocess.run([sys.executable, "-m", "detfuse", "check", str(path)], capture_output=True, text=True)
    assert run.returncode == 2
    assert str(space) in run.stderr and "space.lr" in run.stderr and "inverted range" in run.stderr
    assert "Traceback" not in run.stderr
