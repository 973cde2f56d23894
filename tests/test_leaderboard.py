"""leaderboard.json rows from Tune's results: how each trial ended, from its status as the experiment state saved
it. After Ctrl-C or SIGUSR1 `tuner.fit()` returns normally, and a trial still running then is no ASHA stop."""

import pandas as pd
from ray.tune import Result

from detfuse.stages.leaderboard import build_leaderboard

CONFIG = {"family": "yolov5", "architecture": "yolov5n", "hparams": {"lr": 0.01}, "max_epochs": 4.0}


def result(name, epochs, error=None):
    frame = pd.DataFrame({"epoch": [float(e) for e in range(1, epochs + 1)],
                          "mAP50": [0.1 * e for e in range(1, epochs + 1)]})
    return Result(metrics={"trial_id": name.rsplit("_", 1)[1], "epoch": float(epochs), "config": CONFIG}, checkpoint=None, error=error,
                  path=f"/storage/exp/{name}", metrics_dataframe=frame, best_checkpoints=[], _storage_filesystem=None)


def test_only_a_trial_tune_terminated_before_its_budget_was_stopped_by_asha():
    results = [result("yolov5n_done", 4), result("yolov5n_asha", 1), result("yolov5n_running", 2),
               result("yolov5n_pending", 1), result("yolov5n_failed", 2, error=RuntimeError("CUDA out of memory"))]
    statuses = {"yolov5n_done": "TERMINATED", "yolov5n_asha": "TERMINATED", "yolov5n_running": "RUNNING",
                "yolov5n_pending": "PAUSED", "yolov5n_failed": "ERROR"}
    rows = {row["trial_id"]: row for row in build_leaderboard(results, "/storage", statuses)}

    assert {name: (row["stopped_early"], row["interrupted"]) for name, row in rows.items()} == {
        "done": (False, False), "asha": (True, False), "running": (False, True), "pending": (False, True),
        "failed": (False, False)}
    assert rows["failed"]["error"] == "CUDA out of memory"
