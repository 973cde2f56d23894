"""Training a trial of either family the way `detfuse train` does, for tests that need real checkpoints."""

import json

import trainables
from detfuse.core import trial_link


def train_reporting_to(run, config):
    """Train `config` (a trial config) reporting to `run` (a LocalRun); returns every report the run holds."""
    trial_link.use_local_run(run)
    try:
        trainables.load_family(config["family"], "test").train(config)
    finally:
        trial_link.use_local_run(None)
    return [json.loads(line) for line in run.metrics_log.read_text().splitlines()]


def train_in_local_run(config, run_dir, keep=1):
    """Train `config` reporting to a new LocalRun in `run_dir`; returns the run."""
    run = trial_link.LocalRun(run_dir, keep=keep)
    train_reporting_to(run, config)
    return run
