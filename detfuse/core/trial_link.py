"""A trial's link to whoever runs it: Ray Tune inside a Tune trial, a local run directory under `detfuse train`.

Trainables only call `resume_checkpoint()` and `report()`, so the code path is the same in both cases
(the trial contract: metrics {"mAP50", "mAP50_95", "epoch", ...} plus a checkpoint directory to resume from).
"""

import contextlib
import json
import shutil
import warnings
from pathlib import Path

_local_run = None


class LocalRun:
    """Stands in for Tune's session: keeps the last `keep` checkpoints and a metrics log in `run_dir`."""

    def __init__(self, run_dir, keep=2):
        self.run_dir = Path(run_dir)
        self.keep = keep
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_log = self.run_dir / "progress.jsonl"

    def checkpoints(self):
        return sorted(self.run_dir.glob("checkpoint_*"))

    def latest_checkpoint(self):
        found = self.checkpoints()
        return found[-1] if found else None

    def report(self, metrics, checkpoint_dir):
        index = len(self.metrics_log.read_text().splitlines()) if self.metrics_log.exists() else 0
        if checkpoint_dir is not None:
            target = self.run_dir / f"checkpoint_{index:06d}"
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(checkpoint_dir, target)
            metrics = {**metrics, "checkpoint": str(target)}
            for stale in self.checkpoints()[: -self.keep]:
                shutil.rmtree(stale)
        with self.metrics_log.open("a") as log:
            log.write(json.dumps(metrics) + "\n")


def use_local_run(run):
    """Route reports to `run` (a LocalRun) instead of Ray Tune; `None` restores Tune routing."""
    global _local_run
    _local_run = run


def in_tune_trial():
    import ray.tune

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ray.tune.get_context().get_trial_id() is not None


def trial_label():
    """How messages name this trial: Tune's trial name, or the local run's directory under `detfuse train`."""
    if _local_run is not None:
        return f"trial in {_local_run.run_dir}"
    import ray.tune

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        name = ray.tune.get_context().get_trial_name()
    return "this trial" if name is None else f"trial {name}"


@contextlib.contextmanager
def resume_checkpoint():
    """Yield the directory of the checkpoint this trial should resume from, or None for a fresh start."""
    if _local_run is not None:
        yield _local_run.latest_checkpoint()
        return
    import ray.tune

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        checkpoint = ray.tune.get_checkpoint()
    if checkpoint is None:
        yield None
        return
    with checkpoint.as_directory() as path:
        yield Path(path)


def report(metrics, checkpoint_dir=None):
    """Report one result (and the checkpoint directory it was reached with) to Tune or the local run."""
    if _local_run is not None:
        _local_run.report(metrics, checkpoint_dir)
        return
    import ray.tune

    checkpoint = None if checkpoint_dir is None else ray.tune.Checkpoint.from_directory(str(checkpoint_dir))
    ray.tune.report(metrics, checkpoint=checkpoint)
