"""`leaderboard.json`: one row per trial of a finished (or interrupted) Tune experiment, best mAP50 first.

The ensemble and export stages read it instead of Tune's internals, so it holds everything they need:
family, architecture, hyperparameters, the best mAP50, its epoch and the URI of that checkpoint.
"""

import json
import math
from pathlib import Path

from detfuse.core.errors import UserError
from detfuse.core.storage import experiment_storage

METRIC = "mAP50"


def _uri(checkpoint, storage):
    return f"s3://{checkpoint.path}" if storage.startswith("s3://") else checkpoint.path


def trial_row(result, storage, status="TERMINATED"):
    """The leaderboard row of one Tune Result; `status`: its trial's status as the experiment state saved it."""
    config = result.config or {}
    frame = result.metrics_dataframe
    row = {
        "trial_id": (result.metrics or {}).get("trial_id") or result.path.rstrip("/").rsplit("/", 1)[-1],
        "family": config.get("family"),
        "architecture": config.get("architecture"),
        "hparams": config.get("hparams", {}),
        "max_epochs": config.get("max_epochs"),
        "best_mAP50": None,
        "best_mAP50_95": None,
        "best_epoch": None,
        "epochs_trained": 0.0,
        "stopped_early": False,
        "interrupted": result.error is None and status not in ("TERMINATED", "ERROR"),
        "error": None if result.error is None else str(result.error).strip().splitlines()[-1][:500],
        "checkpoint": None,
        "path": result.path,
    }
    if frame is not None and METRIC in frame and frame[METRIC].notna().any():
        best = frame.loc[frame[METRIC].idxmax()]
        row["best_mAP50"] = float(best[METRIC])
        row["best_mAP50_95"] = float(best.get("mAP50_95", math.nan))
        row["best_epoch"] = float(best["epoch"])
        row["epochs_trained"] = float(frame["epoch"].max())
        # a trial Tune terminated cleanly before its own budget was stopped by its family's ASHA (the trainable
        # itself runs to its budget); one the search was stopped before it finished was not
        row["stopped_early"] = (result.error is None and status == "TERMINATED"
                                and row["epochs_trained"] < config.get("max_epochs", 0) - 1e-6)
    checkpoint = result.get_best_checkpoint(METRIC, "max") if result.best_checkpoints else None
    if checkpoint is not None:
        row["checkpoint"] = _uri(checkpoint, storage)
    return row


def saved_statuses(experiment_uri):
    """{trial directory name: status} as the experiment state saved them. After Ctrl-C or SIGUSR1 Tune saves the
    state, then stops the running trials and marks them TERMINATED in memory: the ResultGrid's trials would pass
    for finished ones, the saved state still says RUNNING (or PENDING, PAUSED)."""
    from ray import tune

    analysis = tune.ExperimentAnalysis(experiment_uri)
    return {trial.path.rstrip("/").rsplit("/", 1)[-1]: trial.status for trial in analysis.trials}


def build_leaderboard(result_grid, storage, statuses):
    """The rows of `result_grid`'s trials, best first; `statuses`: saved_statuses() of the experiment."""
    rows = [trial_row(result, storage, statuses.get(result.path.rstrip("/").rsplit("/", 1)[-1], "TERMINATED"))
            for result in result_grid]
    return sorted(rows, key=lambda r: -1.0 if r["best_mAP50"] is None else r["best_mAP50"], reverse=True)


def tuned_experiment(experiment_uri):
    """(the experiment's URI, local paths made absolute; its leaderboard.json URI) for a stage that reads a tuned
    experiment; a UserError naming the missing file when `detfuse tune` has not finished there."""
    if not experiment_uri.startswith("s3://"):
        experiment_uri = str(Path(experiment_uri).expanduser().resolve())
    leaderboard_uri = experiment_storage.join(experiment_uri, "leaderboard.json")
    if not experiment_storage.exists(leaderboard_uri):
        raise UserError(f"{leaderboard_uri} does not exist: the experiment is <storage>/<name> of one "
                        f"whose `detfuse tune` (or pipeline tune stage) has finished")
    return experiment_uri, leaderboard_uri


def write_leaderboard(rows, experiment_uri):
    uri = experiment_storage.join(experiment_uri, "leaderboard.json")
    experiment_storage.write_text(uri, json.dumps(rows, indent=2))
    return uri


def read_leaderboard(experiment_uri):
    return experiment_storage.read_json(experiment_storage.join(experiment_uri, "leaderboard.json"))


def top_per_family(rows, k):
    """The best `k` trials with a checkpoint of every family, best first."""
    top = {}
    for row in rows:
        if row["checkpoint"] is not None and row["best_mAP50"] is not None:
            top.setdefault(row["family"], [])
            if len(top[row["family"]]) < k:
                top[row["family"]].append(row)
    return top
