"""ASHA per detector family, so the ensemble always has the best trials of EACH family to pick from.

With one ASHA over all trials, a family that learns slower early on (the one-stage YOLO models against
R-CNNs, or the reverse on small data) would lose every rung and be stopped wholesale, although the
cross-family ensemble needs its best members. Each family gets its own AsyncHyperBandScheduler (its own
rungs, grace period and budget); trials only compete with trials of their own family.
"""

import pickle

from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler


class PerFamilyASHA(FIFOScheduler):
    def __init__(self, budgets, reduction_factor=3.0, metric="mAP50", mode="max", time_attr="epoch"):
        """`budgets`: family -> (grace_epochs, max_epochs)."""
        super().__init__()
        self._metric, self.mode, self.time_attr = metric, mode, time_attr
        self.schedulers = {
            family: AsyncHyperBandScheduler(time_attr=time_attr, metric=metric, mode=mode, max_t=max_epochs,
                                            grace_period=grace_epochs, reduction_factor=reduction_factor)
            for family, (grace_epochs, max_epochs) in budgets.items()
        }
        # trial id -> family, for the trials a family's scheduler holds: added, and neither completed with a
        # result nor removed (what ASHA itself forgets then; tracked here rather than read from its private state)
        self.held = {}

    def set_search_properties(self, metric, mode, **spec):
        return metric in (None, self.metric) and mode in (None, self.mode)

    def _scheduler(self, trial):
        return self.schedulers[trial.config["family"]]

    def on_trial_add(self, tune_controller, trial):
        self._scheduler(trial).on_trial_add(tune_controller, trial)
        self.held[trial.trial_id] = trial.config["family"]

    def on_trial_error(self, tune_controller, trial):
        self._scheduler(trial).on_trial_error(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result):
        return self._scheduler(trial).on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller, trial, result):
        self._scheduler(trial).on_trial_complete(tune_controller, trial, result)
        if self.time_attr in result and self.metric in result:  # ASHA records the result and forgets the trial
            self.held.pop(trial.trial_id, None)

    def on_trial_remove(self, tune_controller, trial):
        if self.held.pop(trial.trial_id, None) is not None:
            self._scheduler(trial).on_trial_remove(tune_controller, trial)

    def debug_string(self):
        return "\n".join(f"[{family}] {s.debug_string()}" for family, s in self.schedulers.items())

    def save(self, checkpoint_path):
        with open(checkpoint_path, "wb") as f:
            pickle.dump({"schedulers": self.schedulers, "held": self.held}, f)

    def restore(self, checkpoint_path):
        with open(checkpoint_path, "rb") as f:
            state = pickle.load(f)
        self.schedulers, self.held = state["schedulers"], state["held"]
