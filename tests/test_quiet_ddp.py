"""A DDP trial at default verbosity prints nothing of its Ray Train workers, Ray Train's controller or pycocotools
when its driver has joined Ray the way `detfuse tune` and `detfuse train` do (detfuse.stages.cluster.connect;
that `detfuse train` does: tests/test_train_command.py)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from detectron2_trials import d2_cache, tiny_dataset, trial_config  # noqa: F401  (fixtures)

ROOT = Path(__file__).resolve().parents[1]

# Two gloo workers train Faster R-CNN for an epoch under a local run, after the jobs' connection to Ray
DRIVER = """
import json, sys
from detfuse.core import trial_link
from detfuse.stages.cluster import connect
from trainables.detectron2 import ddp

config, run_dir, verbose = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3] == "verbose"
connect(verbose)
trial_link.use_local_run(trial_link.LocalRun(run_dir))
ddp.train_distributed(config, num_workers=2, use_gpu=False)
print("trial finished")
"""

NOISE = ("RayTrainWorker", "TrainController", "PlacementGroupCleaner", "creating index", "index created",
         "Running per image evaluation", "Traceback")


def run_ddp_trial(config, run_dir, verbosity):
    env = {**os.environ, "RAY_ADDRESS": "local", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(config), str(run_dir), verbosity], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout + done.stderr


@pytest.mark.slow
def test_a_ddp_trial_is_quiet_by_default_and_shows_its_workers_with_verbose(tiny_dataset, d2_cache, tmp_path):  # noqa: F811
    config = trial_config("faster_rcnn", tiny_dataset, max_epochs=1.0, eval_every=1.0)
    quiet = run_ddp_trial(config, tmp_path / "quiet", "quiet")
    assert "trial finished" in quiet
    assert not [word for word in NOISE if word in quiet], quiet[-3000:]
    [report] = [json.loads(line) for line in (tmp_path / "quiet" / "progress.jsonl").read_text().splitlines()]
    assert report["epoch"] == 1.0 and "mAP50" in report  # it did train, evaluate and report
    loud = run_ddp_trial(config, tmp_path / "loud", "verbose")
    assert "RayTrainWorker" in loud  # -v shows the workers' own output: what the default hides
