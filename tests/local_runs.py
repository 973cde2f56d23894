"""Training a trial of either family the way `detfuse train` does, for tests that need real checkpoints."""

import trainables
from detfuse.core import trial_link


def train_in_local_run(config, run_dir, keep=1):
    """Train `config` (a trial config) reporting to a LocalRun in `run_dir`; returns the run."""
    run = trial_link.LocalRun(run_dir, keep=keep)
    trial_link.use_local_run(run)
    try:
        trainables.load_family(config["family"], "test").train(config)
    finally:
        trial_link.use_local_run(None)
    return run
