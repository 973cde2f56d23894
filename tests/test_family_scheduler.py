"""PerFamilyASHA: each family's trials go to that family's ASHA, using only the schedulers' public interface."""

from types import SimpleNamespace

from detfuse.stages.family_scheduler import PerFamilyASHA


class PublicOnly:
    """A family scheduler with TrialScheduler's public methods only: no private state to peek at."""

    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        if name.startswith("on_trial_"):
            return lambda controller, trial, *rest: self.calls.append((name, trial.trial_id))
        raise AttributeError(name)


def trial(trial_id, family):
    return SimpleNamespace(trial_id=trial_id, config={"family": family})


def test_a_trial_is_removed_from_its_family_scheduler_only_while_that_holds_it(tmp_path):
    scheduler = PerFamilyASHA({"detectron2": (1, 4), "yolov5": (2, 6)})
    scheduler.schedulers = {"detectron2": PublicOnly(), "yolov5": PublicOnly()}
    done, stopped, added_only = trial("d1", "detectron2"), trial("y1", "yolov5"), trial("d2", "detectron2")
    for t in (done, stopped, added_only):
        scheduler.on_trial_add(None, t)
    scheduler.on_trial_complete(None, done, {"epoch": 4.0, "mAP50": 0.5})  # ASHA forgets a completed trial
    scheduler.on_trial_remove(None, done)
    scheduler.on_trial_remove(None, stopped)
    assert scheduler.schedulers["detectron2"].calls == [("on_trial_add", "d1"), ("on_trial_add", "d2"),
                                                         ("on_trial_complete", "d1")]
    assert scheduler.schedulers["yolov5"].calls == [("on_trial_add", "y1"), ("on_trial_remove", "y1")]
    assert scheduler.held == {"d2": "detectron2"}


def test_save_and_restore_carry_the_family_schedulers_and_their_trials(tmp_path):
    scheduler = PerFamilyASHA({"detectron2": (1, 4), "yolov5": (2, 6)})
    scheduler.set_search_properties("mAP50", "max")
    scheduler.on_trial_add(None, trial("y1", "yolov5"))
    scheduler.save(tmp_path / "scheduler.pkl")
    restored = PerFamilyASHA({"detectron2": (1, 1)})
    restored.restore(tmp_path / "scheduler.pkl")
    assert restored.held == {"y1": "yolov5"} and set(restored.schedulers) == {"detectron2", "yolov5"}
    restored.on_trial_result(None, trial("y1", "yolov5"), {"epoch": 1.0, "mAP50": 0.1})
    restored.on_trial_remove(None, trial("y1", "yolov5"))
    assert restored.held == {}
