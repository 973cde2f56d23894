"""Experiment configs: the demo loads; overrides apply; bad configs fail at the boundary with file and key."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from detfuse.core.errors import UserError
from detfuse.stages.experiment import load_experiment

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
    ({"spaces": [{"space": "demo_faster_rcnn", "num_samples": 0}]}, ["spaces[0]", "'num_samples' must be a whole number >= 1"]),
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


def test_a_grace_period_lowered_to_a_smaller_budget_is_announced():
    experiment = load_experiment(DEMO, ["scheduler.max_epochs=1"])
    yolo = next(e.space for e in experiment.entries if e.space.name == "demo_yolov5n")
    assert yolo.grace_epochs == 1.0
    [notice] = [n for n in experiment.notices if "demo_yolov5n" in n]
    assert "grace_epochs 2 above scheduler.max_epochs 1" in notice and "scheduler.grace_epochs" in notice
    assert load_experiment(DEMO).notices == []


def test_detfuse_check_fails_on_frozen_batch_norm_without_weights(tmp_path):
    """Resolved once at load time, knowing `weights` is unset: not in every trial, max_failures times."""
    space = tmp_path / "frozen_bn.yaml"
    space.write_text(yaml.safe_dump({"architecture": "faster_rcnn", "budget": {"max_epochs": 1},
                                     "fixed": {"hparams": {"norm": "FrozenBN"}}}))
    path = write(tmp_path, {"spaces": [{"space": str(space)}]})
    run = subprocess.run([sys.executable, "-m", "detfuse", "check", str(path)], capture_output=True, text=True)
    assert run.returncode == 2, run.stderr
    assert str(space) in run.stderr and "norm FrozenBN" in run.stderr and "set 'weights'" in run.stderr
    assert "Traceback" not in run.stderr


def test_ensemble_top_stays_a_mapping_of_family_to_members():
    experiment = load_experiment(DEMO, ["ensemble.top={yolov5: 1}"])
    assert (experiment.ensemble_top, experiment.ensemble_top_per_family) == (3, {"yolov5": 1})
    experiment = load_experiment(DEMO, ["ensemble.top=2"])
    assert (experiment.ensemble_top, experiment.ensemble_top_per_family) == (2, {})


def test_resume_refuses_a_changed_wandb_setting_it_could_not_apply(tmp_path):
    """Tuner.restore brings back the run's own callbacks and takes no new RunConfig: a W&B setting changed since
    the run started would be silently ignored, so --resume refuses it, naming both settings."""
    from detfuse.core.storage import experiment_storage
    from detfuse.stages.tune import run_tune

    overrides = [f"storage={tmp_path / 'runs'}", "name=resumed"]
    experiment = load_experiment(DEMO, overrides)
    experiment_storage.write_text(experiment_storage.join(experiment.uri, "experiment.json"), json.dumps({
        "name": "resumed", "dataset": "builtin", "run_settings": {"verbose": False, "wandb": None}}))
    with pytest.raises(UserError) as error:
        run_tune(DEMO, [*overrides, "wandb=true"], resume=True)
    message = str(error.value)
    assert "wandb" in message and "differs from None" in message and "name=" in message
