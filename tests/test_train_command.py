"""`detfuse train`: one trial outside Tune through the same train(config), resumable from its run directory."""

import json
import subprocess
import sys

import yaml

from detfuse.core.data.synthetic import generate


def run(*args):
    return subprocess.run([sys.executable, "-m", "detfuse", "train", *map(str, args)], capture_output=True, text=True,
                          timeout=600)


def test_train_then_resume_continues_at_the_next_epoch(tmp_path):
    dataset = generate(tmp_path / "data", seed=5, num_train=16, num_val=8, num_test=0)
    config = tmp_path / "trial.yaml"
    config.write_text(yaml.safe_dump({"architecture": "yolov5n", "dataset": str(dataset), "max_epochs": 1,
                                      "hparams": {"image_size": 64, "batch_size": 8, "nominal_batch_size": 8}}))
    out = tmp_path / "run"
    first = run(config, "--out", out)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "best mAP50" in first.stdout
    assert [json.loads(line)["epoch"] for line in (out / "progress.jsonl").read_text().splitlines()] == [1.0]
    assert (out / "checkpoint_000000" / "detfuse.json").exists()

    again = run(config, "--out", out)
    assert again.returncode == 2 and "pass --resume" in again.stderr

    resumed = run(config, "max_epochs=2", "--out", out, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    epochs = [json.loads(line)["epoch"] for line in (out / "progress.jsonl").read_text().splitlines()]
    assert epochs == [1.0, 2.0]


def test_unknown_hyperparameter_exits_2_listing_the_valid_names(tmp_path):
    config = tmp_path / "trial.yaml"
    config.write_text(yaml.safe_dump({"architecture": "retinanet", "hparams": {"roi_batch_size": 64}}))
    result = run(config)
    assert result.returncode == 2
    assert "'roi_batch_size' is not a hyperparameter of retinanet" in result.stderr
    assert "focal_gamma" in result.stderr and "Traceback" not in result.stderr


def test_a_multi_worker_trial_joins_ray_quietly_first(tmp_path, monkeypatch):
    """A DDP trial's workers are Ray actors: `detfuse train` connects as the jobs do (quiet unless -v) before
    the family trains; a one-process trial never starts Ray. (What a quiet connection hides from a real DDP
    trial: tests/test_quiet_ddp.py.)"""
    import trainables.detectron2
    from detfuse.core import trial_link
    from detfuse.stages import cluster
    from detfuse.stages.local_trial import run_train

    events = []

    def train(config):  # stands in for the family's training: records the order, reports one result
        events.append(("train", config["family"]))
        trial_link.report({"mAP50": 0.5, "epoch": 1.0})

    monkeypatch.setattr(cluster, "connect", lambda verbose=False: events.append(("connect", verbose)))
    monkeypatch.setattr(trainables.detectron2, "train", train)
    config = tmp_path / "trial.yaml"
    config.write_text(yaml.safe_dump({"architecture": "faster_rcnn", "dataset": "builtin", "max_epochs": 1,
                                      "resources": {"cpu": 2, "gpu": 2}}))
    assert run_train(config, out_dir=tmp_path / "ddp") == 0
    assert events == [("connect", False), ("train", "detectron2")]
    events.clear()
    config.write_text(yaml.safe_dump({"architecture": "faster_rcnn", "dataset": "builtin", "max_epochs": 1}))
    assert run_train(config, out_dir=tmp_path / "one", verbose=True) == 0
    assert events == [("train", "detectron2")]
