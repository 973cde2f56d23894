"""The Tune job end to end on a real multi-node Ray cluster (ray.cluster_utils.Cluster) with both families.

Trials train real (tiny) models on a small synthetic dataset; nothing is mocked. These are the slowest
tests of the suite: a few minutes each on two cores.
"""

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import ray
import yaml

from detfuse.stages.experiment import load_experiment
from detfuse.stages.tune import pending_trials, pending_trials_limit, reuses_trial_processes, run_tune

ROOT = Path(__file__).resolve().parents[1]


# Two detectron2 spaces in one family: one that learns (found to reach mAP50 ~0.02 after 100 images) and one
# that cannot score (score_thresh 1.0 keeps no detection) and is slower (larger images), so it reaches ASHA's
# rung after the learner and must be stopped there.
LEARNS = {"architecture": "faster_rcnn", "budget": {"max_epochs": 4, "grace_epochs": 2},
          "fixed": {"hparams": {"depth": 18, "norm": "GN", "image_size": 128, "batch_size": 4, "optimizer": "adamw",
                                "lr": 0.001, "weight_decay": 0.05, "warmup_epochs": 0.1, "lr_schedule": "cosine",
                                "anchor_sizes": [16, 32, 64, 128, 256], "fpn_channels": 64, "box_head_dim": 256,
                                "roi_batch_size": 64, "rpn_batch_size": 64, "rpn_post_nms_topk_train": 200,
                                "rpn_post_nms_topk_test": 200}},
          "space": {"repeat_threshold": {"choice": [0.0, 0.1]}}}
SCORES_NOTHING = {**LEARNS, "fixed": {"hparams": {**LEARNS["fixed"]["hparams"], "image_size": 192,
                                                  "score_thresh": 1.0}}}


def write_experiment(directory, dataset, storage, name, samples):
    """An experiment config of three spaces: the two above and the demo's YOLOv5n."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "learns.yaml").write_text(yaml.safe_dump(LEARNS))
    (directory / "scores_nothing.yaml").write_text(yaml.safe_dump(SCORES_NOTHING))
    config = {"name": name, "dataset": str(dataset), "storage": str(storage), "max_failures": 3,
              "scheduler": {"reduction_factor": 2, "max_epochs": 4, "grace_epochs": 2},
              "spaces": [{"space": "learns.yaml", "num_samples": 1},
                         {"space": "scores_nothing.yaml", "num_samples": samples - 1},
                         {"space": "demo_yolov5n", "num_samples": samples}]}
    path = directory / "experiment.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def trial_dirs(experiment_dir):
    return sorted(p for p in Path(experiment_dir).iterdir() if p.is_dir() and (p / "params.json").exists())


def latest_epochs(experiment_dir):
    epochs = {}
    for trial in trial_dirs(experiment_dir):
        lines = (trial / "result.json").read_text().splitlines() if (trial / "result.json").exists() else []
        try:
            epochs[trial.name] = json.loads(lines[-1]).get("epoch", 0) if lines else 0
        except json.JSONDecodeError:  # a line being written
            epochs[trial.name] = 0
    return epochs


def result_counts(experiment_dir):
    return {p.name: len((p / "result.json").read_text().splitlines()) if (p / "result.json").exists() else 0
            for p in trial_dirs(experiment_dir)}


@pytest.mark.slow
def test_both_families_asha_and_a_lost_worker_node(cluster, small_dataset, tmp_path):
    ray_cluster, workers = cluster
    ray.init(address=ray_cluster.address)
    storage = tmp_path / "storage"
    experiment_dir = storage / "nodeloss"

    def kill_a_worker_past_the_rung():
        """Kill a worker node mid-run, once the detectron2 learner is past ASHA's rung (epoch 2): node loss delays
        restarted trials, and before the rung it could make the non-scorers arrive there first."""
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            epochs = latest_epochs(experiment_dir) if experiment_dir.exists() else {}
            if max((e for name, e in epochs.items() if name.startswith("faster_rcnn")), default=0) >= 3:
                ray_cluster.remove_node(workers[0], allow_graceful=False)
                killed.set()
                return
            time.sleep(1)

    killed = threading.Event()
    killer = threading.Thread(target=kill_a_worker_past_the_rung, daemon=True)
    killer.start()
    assert run_tune(write_experiment(tmp_path / "config", small_dataset, storage, "nodeloss", samples=3)) == 0
    killer.join(timeout=1)
    assert killed.is_set(), "the worker node was never killed: the test did not exercise node loss"

    rows = json.loads((experiment_dir / "leaderboard.json").read_text())
    assert len(rows) == 6
    assert {r["family"] for r in rows} == {"detectron2", "yolov5"}
    assert all(r["error"] is None and r["best_mAP50"] is not None for r in rows), rows
    assert any(r["stopped_early"] for r in rows), f"ASHA stopped no trial: {rows}"
    assert any(r["epochs_trained"] >= 4 - 1e-6 for r in rows), "no trial reached the budget"
    for family in ("detectron2", "yolov5"):
        best = max((r for r in rows if r["family"] == family), key=lambda r: r["best_mAP50"])
        assert best["checkpoint"] and (Path(best["checkpoint"]) / "detfuse.json").exists()
    # Tune's own outputs: TensorBoard event files and CSV progress logs per trial
    for trial in trial_dirs(experiment_dir):
        assert (trial / "progress.csv").exists()
        assert list(trial.glob("events.out.tfevents.*"))


@pytest.mark.slow
def test_killed_driver_resumes_without_repeating_finished_trials(cluster, small_dataset, tmp_path):
    ray_cluster, _ = cluster
    storage = tmp_path / "storage"
    experiment_dir = storage / "resumed"
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.address, "TUNE_GLOBAL_CHECKPOINT_S": "1"}
    command = [sys.executable, str(ROOT / "ray_jobs" / "tune.py"),
               str(write_experiment(tmp_path / "config", small_dataset, storage, "resumed", samples=2))]
    driver = subprocess.Popen(command, env=env, start_new_session=True)
    deadline = time.monotonic() + 600
    finished_before = {}
    while time.monotonic() < deadline and driver.poll() is None:
        time.sleep(1)
        state = experiment_state(experiment_dir)
        finished_before = {t: n for t, n in state.items() if n == "TERMINATED"}
        if finished_before:
            break
    assert driver.poll() is None, "the driver finished before it could be killed"
    assert finished_before, "no trial finished in time"
    counts_before = result_counts(experiment_dir)
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()

    resumed = subprocess.run([*command, "--resume"], env=env, capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    rows = json.loads((experiment_dir / "leaderboard.json").read_text())
    assert len(rows) == 4 and all(r["best_mAP50"] is not None for r in rows)
    counts_after = result_counts(experiment_dir)
    for trial_dir, count in counts_before.items():
        if any(trial_dir.endswith(t) for t in finished_before):
            assert counts_after[trial_dir] == count, f"finished trial {trial_dir} was run again"


def experiment_state(experiment_dir):
    """trial id -> status from Tune's experiment state file (what --resume restores from)."""
    states = sorted(Path(experiment_dir).glob("experiment_state-*.json")) if Path(experiment_dir).exists() else []
    if not states:
        return {}
    try:
        data = json.loads(states[-1].read_text())
    except json.JSONDecodeError:
        return {}
    out = {}
    for trial_json, _ in data.get("trial_data", []):
        trial = json.loads(trial_json)
        out[trial["trial_id"]] = trial["status"]
    return out


def test_tune_prints_the_ray_dashboard_url_of_the_cluster_it_runs_on(small_dataset, tmp_path):
    """A local cluster started by the job runs Ray's dashboard; the job says where. (Asking for more CPUs than the
    machine has stops it right after it joined Ray, before any trial.)"""
    env = {**os.environ, "RAY_ADDRESS": "local"}
    done = subprocess.run([sys.executable, "-m", "detfuse", "tune", str(ROOT / "configs" / "demo.yaml"), "name=dash",
                           f"dataset={small_dataset}", f"storage={tmp_path}", "spaces.0.resources.cpu=4096"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stdout[-3000:] + done.stderr[-3000:]
    assert "asks for 4096 CPU and 0 GPU per trial, more than this cluster offers" in done.stderr
    assert re.search(r"^Ray dashboard: http://[\w.]+:\d+ ", done.stdout, re.MULTILINE), done.stdout[-3000:]


# A driver whose search is stopped by Ctrl-C the moment its first trial completes; with one trial at a time, no
# trial is running or waiting then: only the searcher's count shows the search is unfinished.
STOPPED_BETWEEN_TRIALS = """
import os, signal, sys
from ray import tune
from detfuse.stages import tune as tune_job
from detfuse.stages.experiment import load_experiment


class CtrlCAfterFirstTrial(tune.Callback):
    def on_trial_complete(self, iteration, trials, trial, **info):
        os.kill(os.getpid(), signal.SIGINT)


tune_job.wandb_callbacks = lambda experiment: [CtrlCAfterFirstTrial()]
sys.exit(tune_job.tune_experiment(load_experiment(sys.argv[1])))
"""


def test_a_search_stopped_between_trials_exits_stopped_and_says_how_to_continue(small_dataset, tmp_path):
    space = {"architecture": "yolov5n", "budget": {"max_epochs": 1, "grace_epochs": 1},
             "fixed": {"hparams": {"image_size": 64, "batch_size": 8}}, "space": {"lr": {"loguniform": [1e-3, 1e-2]}}}
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    config = {"name": "stopped", "dataset": str(small_dataset), "storage": str(tmp_path / "storage"),
              "max_concurrent_trials": 1, "spaces": [{"space": "space.yaml", "num_samples": 3}]}
    (tmp_path / "experiment.yaml").write_text(yaml.safe_dump(config))
    done = subprocess.run([sys.executable, "-c", STOPPED_BETWEEN_TRIALS, str(tmp_path / "experiment.yaml")],
                          cwd=ROOT, env={**os.environ, "RAY_ADDRESS": "local"}, capture_output=True, text=True,
                          timeout=300)
    rows = json.loads((tmp_path / "storage" / "stopped" / "leaderboard.json").read_text())
    assert len(rows) == 1 and not rows[0]["interrupted"], rows  # every trial created had finished
    assert done.returncode == 130, done.stdout[-3000:] + done.stderr[-3000:]
    assert "the search was stopped before it finished: 2 trial(s) not started" in done.stderr


# A driver that records, in order, when Tune starts and completes each trial, on a one-node Ray of 4 CPUs.
RECORDS_TRIAL_EVENTS = """
import json, sys
import ray
from ray import tune
from detfuse.stages import tune as tune_job
from detfuse.stages.experiment import load_experiment


class Events(tune.Callback):
    def __init__(self):
        self.events = []

    def on_trial_start(self, iteration, trials, trial, **info):
        self.events.append(["start", trial.config["resources"]["cpu"]])

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.events.append(["complete", trial.config["resources"]["cpu"]])

    def on_experiment_end(self, trials, **info):
        print("EVENTS " + json.dumps(self.events))


ray.init(num_cpus=4)
tune_job.wandb_callbacks = lambda experiment: [Events()]
sys.exit(tune_job.tune_experiment(load_experiment(sys.argv[1])))
"""


def test_a_trial_waiting_for_more_resources_does_not_hold_back_smaller_ones(small_dataset, tmp_path):
    """Round-robin over two spaces asks for a 2-CPU trial, a 1-CPU one, a 2-CPU one, a 1-CPU one. Once the first
    two run, one CPU is free: the second 2-CPU trial waits, and the second 1-CPU trial must start beside them
    (Tune's own rule for a custom searcher keeps one trial waiting and would not even create it)."""
    space = {"architecture": "yolov5n", "budget": {"max_epochs": 1, "grace_epochs": 1},
             "fixed": {"hparams": {"image_size": 64, "batch_size": 8}}, "space": {"lr": {"loguniform": [1e-3, 1e-2]}}}
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    config = {"name": "mixed", "dataset": str(small_dataset), "storage": str(tmp_path / "storage"),
              "spaces": [{"space": "space.yaml", "num_samples": 2, "resources": {"cpu": 2}},
                         {"space": "space.yaml", "num_samples": 2, "resources": {"cpu": 1}}]}
    (tmp_path / "experiment.yaml").write_text(yaml.safe_dump(config))
    env = {key: value for key, value in os.environ.items() if key not in ("RAY_ADDRESS", "TUNE_MAX_PENDING_TRIALS_PG")}
    done = subprocess.run([sys.executable, "-c", RECORDS_TRIAL_EVENTS, str(tmp_path / "experiment.yaml")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    events = json.loads(re.search(r"^EVENTS (.*)$", done.stdout, re.MULTILINE).group(1))
    first_completion = events.index(next(event for event in events if event[0] == "complete"))
    assert sorted(cpu for _, cpu in events[:first_completion]) == [1, 1, 2], events
    assert sum(1 for kind, _ in events if kind == "start") == 4, events


def test_as_many_trials_may_wait_as_the_nodes_run_at_once(monkeypatch):
    """Per space, the trials the nodes run at once (a DDP trial needs all its workers placed; a tenth of a GPU is
    ten trials, not nine), whatever the searcher. max_concurrent_trials, or the user's own
    TUNE_MAX_PENDING_TRIALS_PG, leaves Tune's rule alone."""
    experiment = load_experiment(ROOT / "configs" / "demo.yaml", [
        "spaces.0.num_samples=6", "spaces.0.resources={cpu: 8, gpu: 2}",
        "spaces.1.num_samples=40", "spaces.1.resources={cpu: 2, gpu: 0.1}"])
    nodes = [(16.0, 2.0), (16.0, 2.0), (4.0, 0.0)]
    # Faster R-CNN: 2 DDP workers of 4 CPUs and 1 GPU, 2 a GPU node -> 2 trials; YOLO: 8 a GPU node by CPU
    assert pending_trials_limit(experiment, nodes) == 2 + 16
    assert pending_trials_limit(dataclasses.replace(experiment, searcher="hyperopt"), nodes) == 2 + 16
    assert pending_trials_limit(experiment, [(64.0, 1.0)]) == 1 + 10
    assert pending_trials_limit(experiment, [(64.0, 1.0)] * 10) == 5 + 40  # capped by num_samples
    assert pending_trials_limit(dataclasses.replace(experiment, max_concurrent_trials=4), nodes) is None

    monkeypatch.delenv("TUNE_MAX_PENDING_TRIALS_PG", raising=False)
    with pending_trials(46):
        assert os.environ["TUNE_MAX_PENDING_TRIALS_PG"] == "46"
    assert "TUNE_MAX_PENDING_TRIALS_PG" not in os.environ
    monkeypatch.setenv("TUNE_MAX_PENDING_TRIALS_PG", "3")
    with pending_trials(46):
        assert os.environ["TUNE_MAX_PENDING_TRIALS_PG"] == "3"


# A driver on a one-node Ray of one CPU, so trials run one after another; "fresh" gives every trial a new process.
RUNS_TRIALS_IN_ONE_CPU = """
import sys
import ray
from detfuse.stages import tune as tune_job
from detfuse.stages.experiment import load_experiment

if sys.argv[2] == "fresh":
    tune_job.reuses_trial_processes = lambda experiment: False
ray.init(num_cpus=1)
sys.exit(tune_job.tune_experiment(load_experiment(sys.argv[1])))
"""


def test_trials_run_one_after_another_in_one_process_as_they_would_in_fresh_ones(small_dataset, tmp_path):
    """Tune runs each trial in the process of the one before (no imports or CUDA start-up again), and a trial
    learns exactly what it learns in a process of its own: nothing of an earlier trial, of either family, carries
    over. A DDP search never reuses processes (its stopped workers would outlive the trial)."""
    yolo = {"architecture": "yolov5n", "budget": {"max_epochs": 1, "grace_epochs": 1},
            "fixed": {"hparams": {"image_size": 64, "batch_size": 8}}, "space": {"lr": {"loguniform": [1e-3, 1e-2]}}}
    detectron2 = {**LEARNS, "budget": {"max_epochs": 1, "grace_epochs": 1}}
    (tmp_path / "yolo.yaml").write_text(yaml.safe_dump(yolo))
    (tmp_path / "detectron2.yaml").write_text(yaml.safe_dump(detectron2))
    env = {key: value for key, value in os.environ.items() if key not in ("RAY_ADDRESS", "TUNE_MAX_PENDING_TRIALS_PG")}
    trials = {}
    for mode in ("reused", "fresh"):
        config = {"name": mode, "dataset": str(small_dataset), "storage": str(tmp_path / "storage"),
                  "spaces": [{"space": "yolo.yaml", "num_samples": 2}, {"space": "detectron2.yaml", "num_samples": 1}]}
        (tmp_path / f"{mode}.yaml").write_text(yaml.safe_dump(config))
        done = subprocess.run([sys.executable, "-c", RUNS_TRIALS_IN_ONE_CPU, str(tmp_path / f"{mode}.yaml"), mode],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        rows = {}
        for trial in trial_dirs(tmp_path / "storage" / mode):
            results = [json.loads(line) for line in (trial / "result.json").read_text().splitlines()]
            learnt = [{key: value for key, value in r.items() if key.startswith("mAP") or "loss" in key}
                      for r in results]
            assert all(any("loss" in key for key in row) for row in learnt), learnt
            rows[results[0]["config"]["seed"]] = (results[0]["pid"], learnt)
        trials[mode] = rows
    assert len(trials["reused"]) == 3
    assert len({pid for pid, _ in trials["reused"].values()}) == 1, trials["reused"]
    assert len({pid for pid, _ in trials["fresh"].values()}) == 3, trials["fresh"]
    # training losses and scores to the last bit, for the trials run second and third in one process too
    assert {seed: learnt for seed, (_, learnt) in trials["reused"].items()} == \
        {seed: learnt for seed, (_, learnt) in trials["fresh"].items()}

    ddp = load_experiment(ROOT / "configs" / "demo.yaml", ["spaces.0.resources={cpu: 2, gpu: 2}"])
    assert not reuses_trial_processes(ddp)
    assert reuses_trial_processes(load_experiment(ROOT / "configs" / "demo.yaml"))
