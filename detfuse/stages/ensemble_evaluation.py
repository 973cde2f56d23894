"""Where the ensemble job's numbers come from: which images choices are fitted on, which they are reported on, and
whether each member's inference reproduces its trial's own evaluation. No Ray here: the job runs the fits as Ray
tasks and hands the results to these functions (summary.json's layout: detfuse/stages/ensemble.py).

Three fit modes (`detfuse ensemble --fit-mode`, `ensemble.fit_mode` in an experiment config):

- test: the test split has labels: choices (members, weights, fusion parameters, the best single model) are
  fitted on all of val and reported on test.
- split: val is cut in two by the seed: choices are fitted on val/fit and reported on val/report.
- cross: val is cut in two halves by the seed, val/A and val/B: choices fitted on A are reported on B, choices
  fitted on B are reported on A, and the mean of the two reports (val/cross-fitted) is the number to believe:
  every val image is scored once, by choices made without it, so the number rests on all of val, not half.
  The ensemble that is written is then fitted once more on all of val; the cross-fitted number estimates how well
  that fitting does on unseen images.

`auto`, the default, is test when test has labels, else cross below CROSS_FIT_BELOW val images, else split.
"""

import json
from dataclasses import dataclass

from detfuse.core.errors import UserError
from detfuse.core.evaluation import evaluate
from detfuse.core.fusion_fit import split_image_ids

FIT_MODES = ("auto", "cross", "split")
CROSS_FIT_BELOW = 500  # val images: half of fewer is too few to believe one report on, and fitting twice is cheap
CROSS_FIT_LABEL = "val/cross-fitted"
TOLERANCE = 0.01  # mAP50: a member re-scored further than this from its trial's report is a bug, not rounding


@dataclass(frozen=True)
class Part:
    """Labelled images numbers are computed on, named as summary.json names them (val/A, val/report, test...)."""

    label: str
    split: str  # the dataset split the images belong to
    image_ids: tuple

    def as_dict(self):
        return {"split": self.label, "images": len(self.image_ids)}


@dataclass(frozen=True)
class Fold:
    fit: Part  # choices are made on these images
    report: Part  # and scored on these, which they never saw


@dataclass(frozen=True)
class Plan:
    mode: str  # cross, split or test
    requested: str  # the fit mode asked for (auto, cross or split)
    seed: int
    folds: tuple
    final: Part  # where the ensemble written to fusion.json is fitted
    report_label: str  # the numbers to believe: the report part's label, or CROSS_FIT_LABEL (mean over folds)
    note: str
    final_note: str  # how the written ensemble was fitted, and which of its numbers to believe

    @property
    def report_images(self):
        return sum(len(fold.report.image_ids) for fold in self.folds)

    def parts(self):
        """Every distinct part a number is computed on, fit parts first."""
        return list(dict.fromkeys([fold.fit for fold in self.folds] + [self.final] +
                                  [fold.report for fold in self.folds]))

    def fit_parts(self):
        """Every distinct part something is fitted on: each fold's fit part, and the final one."""
        return list(dict.fromkeys([fold.fit for fold in self.folds] + [self.final]))

    def as_dict(self):
        return {"mode": self.mode, "requested": self.requested, "seed": self.seed,
                "folds": [{"fit": fold.fit.as_dict(), "report": fold.report.as_dict()} for fold in self.folds],
                "report": {"split": self.report_label, "images": self.report_images},
                "final_fit": self.final.as_dict(), "note": self.note}


def plan_evaluation(fit_mode, val_ids, labelled_test_ids, seed):
    """The Plan for `fit_mode` (one of FIT_MODES); `labelled_test_ids`: the test split's image ids when it has
    labels, else None. An explicit cross or split works on val even when test has labels."""
    if fit_mode not in FIT_MODES:
        raise UserError(f"--fit-mode {fit_mode}: valid fit modes are {', '.join(FIT_MODES)}")
    val_ids = tuple(sorted(int(i) for i in val_ids))
    mode = fit_mode
    if mode == "auto":
        mode = "test" if labelled_test_ids is not None else "cross" if len(val_ids) < CROSS_FIT_BELOW else "split"
    val = Part("val", "val", val_ids)
    if mode == "test":
        test = Part("test", "test", tuple(sorted(int(i) for i in labelled_test_ids)))
        return Plan(mode, fit_mode, seed, (Fold(val, test),), val, "test",
                    "fitted on all of val, reported on the labelled test split",
                    f"fitted on all of val ({len(val_ids)} images), the ensemble reported on test")
    first, second = (tuple(ids) for ids in split_image_ids(val_ids, seed))
    unused = f"; test labels unused (--fit-mode {fit_mode})" if labelled_test_ids is not None else ""
    if mode == "split":
        fit, report = Part("val/fit", "val", first), Part("val/report", "val", second)
        return Plan(mode, fit_mode, seed, (Fold(fit, report),), fit, "val/report",
                    f"val split in two by seed {seed}: choices fitted on val/fit, numbers to believe on "
                    f"val/report{unused}",
                    f"fitted on val/fit ({len(first)} images), the ensemble reported on val/report")
    a, b = Part("val/A", "val", first), Part("val/B", "val", second)
    return Plan(mode, fit_mode, seed, (Fold(a, b), Fold(b, a)), val, CROSS_FIT_LABEL,
                f"val cross-fitted in halves val/A and val/B by seed {seed}: fitted on A and reported on B, fitted "
                f"on B and reported on A; their mean, {CROSS_FIT_LABEL}, is the number to believe{unused}",
                f"fitted on all of val ({len(val_ids)} images) after the cross-fitted estimate; its own val "
                f"mAP50 is in-sample, {CROSS_FIT_LABEL} is the estimate to believe")


def _mean(values):
    values = list(values)
    return sum(values) / len(values)


def _mean_per_class(folds):
    """{class: AP50} averaged over folds, each class over the folds whose report part has it (as mAP50 is)."""
    classes = dict.fromkeys(name for per_class in folds for name in per_class)
    return {name: _mean(per_class[name] for per_class in folds if name in per_class) for name in classes}


def _describe(fitted, names):
    """A fitted ensemble's members, weights and parameters as summary.json shows them."""
    weights = fitted.params.weights or (1.0,) * len(fitted.members)
    return {"members": [names[m] for m in fitted.members], "weights": [float(w) for w in weights],
            "params": {**fitted.params.as_dict(), "weights": None}}


def _gains(best, families, cross):
    """What each ensemble adds over the best single model, and mixing families over each same-family ensemble
    and the best of them; `families`: {family: mAP50}, `cross`: mAP50 or None."""
    gains = {f"{family}_ensemble_over_best_single": value - best for family, value in families.items()}
    if cross is not None:
        gains["cross_family_over_best_single"] = cross - best
        gains.update({f"cross_family_over_{family}_ensemble": cross - value for family, value in families.items()})
        if families:
            gains["cross_family_over_best_family_ensemble"] = cross - max(families.values())
    return gains


class Evaluation:
    """A Plan with the labelled data its parts are scored on: `coco` {split: COCO dict with annotations},
    `inputs` {split: FusionInputs of every member}."""

    def __init__(self, plan, coco, inputs):
        self.plan, self.coco, self.inputs = plan, coco, inputs

    def mAP50(self, predictions, part):
        return self.score(predictions, part).mAP50

    def score(self, predictions, part):
        """The evaluator's whole result (mAP50 and per-class AP50) of `predictions` on `part`'s images."""
        return evaluate(self.coco[part.split], predictions, image_ids=part.image_ids)

    def member_mAP50(self, predictions):
        """A member's mAP50 on all of val and on every part of the plan; `predictions`: {split: [Prediction]}."""
        numbers = {"val": evaluate(self.coco["val"], predictions["val"]).mAP50}
        for part in self.plan.parts():
            if part.label not in numbers:
                numbers[part.label] = self.mAP50(predictions[part.split], part)
        return numbers

    def ensemble_entry(self, fitted, names, families):
        """summary.json's entry of one kind of ensemble. `fitted`: {part label: FittedEnsemble} for every part of
        plan.fit_parts(); `names`, `families`: the trial id and family of each member index."""
        plan, folds, per_class = self.plan, [], []
        for fold in plan.folds:
            ensemble = fitted[fold.fit.label]
            fused = self.inputs[fold.report.split].fuse(ensemble.params, ensemble.members, fold.report.image_ids)
            scored = self.score(fused, fold.report)
            per_class.append(scored.per_class_ap50)
            folds.append({"fit": fold.fit.label, "report": fold.report.label, **_describe(ensemble, names),
                          "mAP50": {fold.fit.label: ensemble.fit_mAP50, fold.report.label: scored.mAP50}})
        final = fitted[plan.final.label]
        return {**_describe(final, names), "candidates": [names[m] for m in final.candidates],
                "families": sorted({families[m] for m in final.members}),
                "mAP50": {plan.final.label: final.fit_mAP50,
                          plan.report_label: _mean(fold["mAP50"][fold["report"]] for fold in folds)},
                "per_class_AP50": {plan.report_label: _mean_per_class(per_class)},
                "folds": folds, "search": {"fusions_scored": final.evaluations, "steps": final.steps}}

    def best_single(self, members, predictions):
        """The best single model chosen as the ensembles are: on each fold's fit part, scored on its report part.
        `members`: summary.json member entries (trial_id, family, mAP50 from member_mAP50), in leaderboard order
        within each family; ties go to the first. `predictions`: {(trial_id, split): [Prediction]}, for the
        per-class AP50 of each fold's choice on its report part."""
        plan, folds, per_class = self.plan, [], []
        for fold in plan.folds:
            chosen = max(members, key=lambda m: m["mAP50"][fold.fit.label])
            per_class.append(self.score(predictions[(chosen["trial_id"], fold.report.split)],
                                        fold.report).per_class_ap50)
            folds.append({"fit": fold.fit.label, "report": fold.report.label, "trial_id": chosen["trial_id"],
                          "mAP50": {label: chosen["mAP50"][label] for label in (fold.fit.label, fold.report.label)}})
        final = max(members, key=lambda m: m["mAP50"][plan.final.label])
        return {"trial_id": final["trial_id"], "family": final["family"], "chosen_on": plan.final.label,
                "mAP50": {plan.final.label: final["mAP50"][plan.final.label],
                          plan.report_label: _mean(fold["mAP50"][fold["report"]] for fold in folds)},
                "per_class_AP50": {plan.report_label: _mean_per_class(per_class)},
                "folds": folds}

    def best_per_family(self, members, predictions):
        """{family: best_single among that family's members}: what each family brings on its own."""
        families = sorted({m["family"] for m in members})
        return {family: self.best_single([m for m in members if m["family"] == family], predictions)
                for family in families}

    def gains(self, best, families, cross):
        """Gains on the numbers to believe, and per fold; `best`, `families` {family: entry}, `cross` (entry or
        None) as best_single and ensemble_entry make them."""
        def gains_of(number):  # number(entry): the mAP50 of an entry that is compared
            return _gains(number(best), {f: number(e) for f, e in families.items()},
                          None if cross is None else number(cross))

        label = self.plan.report_label
        folds = [{"fit": fold.fit.label, "report": fold.report.label,
                  **gains_of(lambda entry: entry["folds"][index]["mAP50"][fold.report.label])}
                 for index, fold in enumerate(self.plan.folds)]
        return {"split": label, **gains_of(lambda entry: entry["mAP50"][label]), "folds": folds}


def reported_mAP50(checkpoint_meta, leaderboard_mAP50):
    """(mAP50, source): what a member's trial reported for its checkpoint. The checkpoint's own detfuse.json
    `metrics` are exact; older checkpoints without them fall back to the leaderboard's best_mAP50, which is the
    same report (the leaderboard's checkpoint is the trial's best by mAP50; detfuse/stages/leaderboard.py)."""
    value = (json.loads(checkpoint_meta).get("metrics") or {}).get("mAP50")
    if value is None:
        return float(leaderboard_mAP50), "leaderboard best_mAP50"
    return float(value), "checkpoint detfuse.json metrics"


def rescore_check(member, checkpoint_meta, rescored):
    """(summary.json's reported-vs-re-scored entry of `member`, WARNING lines). Its val mAP50 re-scored here must
    reproduce its trial's report, or the ensemble compares numbers of different evaluations."""
    reported, source = reported_mAP50(checkpoint_meta, member.leaderboard_mAP50)
    difference = rescored - reported
    warnings = []
    if abs(difference) > TOLERANCE:
        warnings.append(f"WARNING: member {member.trial_id} ({member.family} {member.architecture}): its trial "
                        f"reported val mAP50 {reported:.4f} ({source}), the ensemble job re-scores {rescored:.4f} "
                        f"from its checkpoint ({difference:+.4f}): its inference differs from its trial's "
                        f"evaluation")
    if source.startswith("checkpoint") and abs(reported - member.leaderboard_mAP50) > TOLERANCE:
        warnings.append(f"WARNING: member {member.trial_id}: leaderboard best_mAP50 {member.leaderboard_mAP50:.4f}, "
                        f"but its checkpoint's detfuse.json says mAP50 {reported:.4f} (re-scored {rescored:.4f}): the "
                        f"leaderboard's checkpoint is not the one of the trial's best report")
    return {"reported": reported, "source": source, "rescored": rescored, "difference": difference}, warnings
