"""The one status table `detfuse tune` prints instead of Tune's own output: family, trial, epoch, mAP50, state."""

import sys
import time

from ray.tune import Callback
from tabulate import tabulate


def trial_rows(trials):
    rows = []
    for trial in trials:
        result = trial.last_result or {}
        config = trial.config or {}
        epoch, map50 = result.get("epoch"), result.get("mAP50")
        rows.append([
            config.get("family", "?"), config.get("architecture", "?"), trial.trial_id,
            "-" if epoch is None else f"{epoch:.2f}/{config.get('max_epochs', 0):g}",
            "-" if map50 is None else f"{map50:.4f}",
            trial.status,
        ])
    rows.sort(key=lambda r: (r[0], r[1], r[2]))
    return rows


class StatusTable(Callback):
    """Prints the table every `interval` seconds while trials change, and once more at the end."""

    def __init__(self, interval=30.0, stream=None):
        self.interval = interval
        self.stream = stream  # None: sys.stdout at print time (the callback is pickled with Tune's state)
        self.last_print = 0.0
        self.last_rows = None

    def _print(self, trials):
        rows = trial_rows(trials)
        if rows == self.last_rows:
            return
        self.last_rows = rows
        counts = {}
        for trial in trials:
            counts[trial.status] = counts.get(trial.status, 0) + 1
        summary = ", ".join(f"{n} {status.lower()}" for status, n in sorted(counts.items()))
        table = tabulate(rows, headers=["family", "architecture", "trial", "epoch", "mAP50", "state"])
        print(f"\n== {time.strftime('%H:%M:%S')} trials: {summary}\n{table}", file=self.stream or sys.stdout,
              flush=True)

    def on_step_end(self, iteration, trials, **info):
        if time.monotonic() - self.last_print >= self.interval:
            self.last_print = time.monotonic()
            self._print(trials)

    def on_experiment_end(self, trials, **info):
        self.last_rows = None
        self._print(trials)
