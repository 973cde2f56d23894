"""Where the ensemble's numbers come from, without Ray: the fit modes and their parts, cross-fitting (each fold
fitted on one half of val and scored on the other, the mean of both reported), the best single model chosen the
same way, and the check that a member re-scores to what its trial reported."""

import json

import numpy as np
import pytest

from detfuse.stages.ensemble_evaluation import (CROSS_FIT_BELOW, CROSS_FIT_LABEL, Evaluation, plan_evaluation,
                                         reported_mAP50, rescore_check)
from detfuse.core.errors import UserError
from detfuse.core.evaluation import evaluate
from detfuse.core.fusion import FusionInputs
from detfuse.core.fusion_fit import fit_ensemble
from detfuse.stages.member_predictions import Member
from test_fusion_fit import CATEGORIES, ground_truth, guesser, specialist


def test_auto_cross_fits_small_val_sets_and_reports_on_labelled_test():
    assert plan_evaluation("auto", range(CROSS_FIT_BELOW - 1), None, seed=0).mode == "cross"
    assert plan_evaluation("auto", range(CROSS_FIT_BELOW), None, seed=0).mode == "split"
    assert plan_evaluation("auto", range(10), [100, 101], seed=0).mode == "test"
    explicit = plan_evaluation("cross", range(10), [100, 101], seed=0)
    assert explicit.mode == "cross" and "test labels unused (--fit-mode cross)" in explicit.note
    with pytest.raises(UserError, match="--fit-mode both: valid fit modes are auto, cross, split"):
        plan_evaluation("both", range(10), None, seed=0)


def test_cross_fitting_folds_swap_two_disjoint_halves_covering_val():
    val_ids = list(range(200, 272))
    plan = plan_evaluation("cross", val_ids, None, seed=3)
    (first, second) = plan.folds
    assert (first.fit.label, first.report.label, second.fit.label, second.report.label) == (
        "val/A", "val/B", "val/B", "val/A")
    assert first.fit == second.report and first.report == second.fit
    assert set(first.fit.image_ids).isdisjoint(first.report.image_ids)
    assert sorted(first.fit.image_ids + first.report.image_ids) == val_ids
    assert plan.final.label == "val" and list(plan.final.image_ids) == val_ids
    assert plan.report_label == CROSS_FIT_LABEL and plan.report_images == len(val_ids)
    assert [part.label for part in plan.fit_parts()] == ["val/A", "val/B", "val"]


def test_split_and_test_modes_have_one_fold_and_write_what_they_report():
    split = plan_evaluation("split", range(10), None, seed=0)
    assert [(f.fit.label, f.report.label) for f in split.folds] == [("val/fit", "val/report")]
    assert split.final == split.folds[0].fit and split.report_label == "val/report"
    test = plan_evaluation("auto", range(10), [20, 21, 22], seed=0)
    assert [(f.fit.label, f.report.label) for f in test.folds] == [("val", "test")]
    assert test.final.label == "val" and test.report_images == 3
    assert split.fit_parts() == [split.final] and test.fit_parts() == [test.final]


@pytest.fixture(scope="module")
def cross_fitted():
    """Two specialists and a guesser on 60 images, every ensemble of the three fitted on each part of a
    cross-fitting plan."""
    rng = np.random.default_rng(11)
    coco = ground_truth(60, rng)
    predictions = [specialist(coco, {1, 2}, rng), guesser(coco, rng), specialist(coco, {3, 4}, rng)]
    names, families = ["s12", "guess", "s34"], ["one", "two", "one"]
    inputs = FusionInputs(predictions, coco["images"], CATEGORIES, names)
    plan = plan_evaluation("auto", [image["id"] for image in coco["images"]], None, seed=0)
    evaluation = Evaluation(plan, {"val": coco}, {"val": inputs})
    fitted = {part.label: fit_ensemble(inputs, coco, part.image_ids) for part in plan.fit_parts()}
    return coco, predictions, inputs, evaluation, fitted, names, families


def test_each_fold_is_scored_on_the_half_it_was_not_fitted_on(cross_fitted):
    coco, predictions, inputs, evaluation, fitted, names, families = cross_fitted
    entry = evaluation.ensemble_entry(fitted, names, families)

    for fold, reported in zip(evaluation.plan.folds, entry["folds"]):
        ensemble = fitted[fold.fit.label]
        assert (reported["fit"], reported["report"]) == (fold.fit.label, fold.report.label)
        assert reported["members"] == [names[m] for m in ensemble.members]
        assert reported["mAP50"][fold.fit.label] == ensemble.fit_mAP50
        assert reported["mAP50"][fold.report.label] == pytest.approx(evaluate(
            coco, inputs.fuse(ensemble.params, ensemble.members, fold.report.image_ids),
            image_ids=fold.report.image_ids).mAP50)
    reports = [fold["mAP50"][fold["report"]] for fold in entry["folds"]]
    assert entry["mAP50"][CROSS_FIT_LABEL] == pytest.approx(np.mean(reports))
    # per-class AP50 as mAP50 is: each fold's ensemble on its report half, averaged over the folds
    per_fold = [evaluate(coco, inputs.fuse(fitted[f.fit.label].params, fitted[f.fit.label].members,
                                           f.report.image_ids), image_ids=f.report.image_ids).per_class_ap50
                for f in evaluation.plan.folds]
    assert entry["per_class_AP50"][CROSS_FIT_LABEL] == pytest.approx(
        {name: np.mean([fold[name] for fold in per_fold]) for name in per_fold[0]})
    # the ensemble written is the one fitted on all of val; its own val number is in-sample
    assert entry["members"] == [names[m] for m in fitted["val"].members]
    assert entry["mAP50"]["val"] == fitted["val"].fit_mAP50
    assert sorted(entry["members"]) == ["s12", "s34"] and entry["families"] == ["one"]

    member = evaluation.member_mAP50({"val": predictions[0]})
    assert set(member) == {"val", "val/A", "val/B"}
    assert member["val"] == pytest.approx(evaluate(coco, predictions[0]).mAP50)


def test_best_single_is_chosen_on_each_fit_half_and_scored_on_the_other(cross_fitted):
    coco, predictions, evaluation = cross_fitted[0], cross_fitted[1], cross_fitted[3]
    # a wins val/A and b wins val/B, each by luck: chosen on one half, each scores badly on the other
    members = [{"trial_id": "a", "family": "x", "mAP50": {"val": 0.5, "val/A": 0.9, "val/B": 0.1}},
               {"trial_id": "b", "family": "y", "mAP50": {"val": 0.6, "val/A": 0.2, "val/B": 0.8}}]
    # a knows classes 1 and 2, b classes 3 and 4
    by_trial = {("a", "val"): predictions[0], ("b", "val"): predictions[2]}

    best = evaluation.best_single(members, by_trial)

    assert [(f["fit"], f["trial_id"], f["mAP50"][f["report"]]) for f in best["folds"]] == [
        ("val/A", "a", 0.1), ("val/B", "b", 0.2)]
    assert best["mAP50"][CROSS_FIT_LABEL] == pytest.approx(0.15)
    assert (best["trial_id"], best["chosen_on"], best["mAP50"]["val"]) == ("b", "val", 0.6)
    # per class, each fold's choice on its report half: a on val/B, b on val/A, averaged
    folds = evaluation.plan.folds
    on_b = evaluate(coco, predictions[0], image_ids=folds[0].report.image_ids).per_class_ap50
    on_a = evaluate(coco, predictions[2], image_ids=folds[1].report.image_ids).per_class_ap50
    assert best["per_class_AP50"][CROSS_FIT_LABEL] == pytest.approx(
        {name: (on_b[name] + on_a[name]) / 2 for name in on_b})
    # each family's best alone is its only member, scored on both halves
    per_family = evaluation.best_per_family(members, by_trial)
    assert {family: entry["trial_id"] for family, entry in per_family.items()} == {"x": "a", "y": "b"}
    assert [f["trial_id"] for f in per_family["x"]["folds"]] == ["a", "a"]


def test_gains_compare_numbers_of_the_same_folds(cross_fitted):
    evaluation = cross_fitted[3]

    def entry(on_b, on_a):  # report numbers of fold 1 (fit A, report B) and fold 2 (fit B, report A)
        return {"mAP50": {CROSS_FIT_LABEL: (on_b + on_a) / 2},
                "folds": [{"mAP50": {"val/B": on_b}}, {"mAP50": {"val/A": on_a}}]}

    gains = evaluation.gains(entry(0.5, 0.3), {"one": entry(0.6, 0.2)}, entry(0.7, 0.5))

    assert gains["split"] == CROSS_FIT_LABEL
    assert gains["cross_family_over_best_single"] == pytest.approx(0.2)
    assert gains["one_ensemble_over_best_single"] == pytest.approx(0.0)
    assert gains["cross_family_over_one_ensemble"] == pytest.approx(0.2)
    assert gains["cross_family_over_best_family_ensemble"] == pytest.approx(0.2)
    assert [(f["fit"], f["report"]) for f in gains["folds"]] == [("val/A", "val/B"), ("val/B", "val/A")]
    assert [f["one_ensemble_over_best_single"] for f in gains["folds"]] == pytest.approx([0.1, -0.1])
    assert [f["cross_family_over_best_single"] for f in gains["folds"]] == pytest.approx([0.2, 0.2])


def member(leaderboard_mAP50):
    return Member("t1", "yolov5", "yolov5n", "/runs/t1/checkpoint_000001", leaderboard_mAP50)


def test_the_reported_number_is_the_checkpoints_own_else_the_leaderboards():
    assert reported_mAP50(json.dumps({"metrics": {"mAP50": 0.42}}), 0.40) == (0.42, "checkpoint detfuse.json metrics")
    assert reported_mAP50(json.dumps({"epoch": 3}), 0.40) == (0.40, "leaderboard best_mAP50")


def test_a_member_re_scored_away_from_its_report_is_a_warning():
    meta = json.dumps({"metrics": {"mAP50": 0.5}})
    check, warnings = rescore_check(member(0.5), meta, 0.505)
    assert check == {"reported": 0.5, "source": "checkpoint detfuse.json metrics", "rescored": 0.505,
                     "difference": pytest.approx(0.005)}
    assert warnings == []

    check, warnings = rescore_check(member(0.5), meta, 0.43)
    assert check["difference"] == pytest.approx(-0.07)
    assert len(warnings) == 1 and warnings[0].startswith("WARNING: member t1 (yolov5 yolov5n)")
    assert "reported val mAP50 0.5000" in warnings[0] and "re-scores 0.4300" in warnings[0]
    assert "its inference differs from its trial's evaluation" in warnings[0]

    # the leaderboard's number is not its checkpoint's: the checkpoint is not the one of the best report
    _, warnings = rescore_check(member(0.6), meta, 0.5)
    assert len(warnings) == 1 and "leaderboard best_mAP50 0.6000" in warnings[0]
    assert "not the one of the trial's best report" in warnings[0]
