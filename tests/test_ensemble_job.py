"""The ensemble job end to end: a tiny real Tune experiment of both families on a small synthetic dataset, then
`detfuse ensemble` on its leaderboard: real checkpoints, real inference as Ray tasks, the real evaluator.
The tune run alone takes one to three minutes on two cores, hence the slow marks."""

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import ray

from detfuse.core.storage import experiment_storage
from detfuse.stages.cli import build_parser, main
from detfuse.core.data import load_dataset
from detfuse.core.data.synthetic import generate
from detfuse.stages.ensemble_evaluation import plan_evaluation
from detfuse.stages.ensemble_outputs import read_fusion_spec
from detfuse.core.errors import UserError
from detfuse.core.evaluation import Prediction, evaluate
from detfuse.stages.experiment import load_experiment
from detfuse.core.fusion import FusionInputs, FusionParams
from detfuse.stages.member_predictions import DEFAULT_TTA, as_predictions
from headless_browser import render, screenshot
from s3_uploads import upload_directory
from detfuse.stages.cli import parse_top
from detfuse.stages.ensemble import run_ensemble, select_members

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = {"detectron2", "yolov5"}


@pytest.fixture(scope="module")
def experiment(tmp_path_factory, s3_server):
    """(experiment URI, dataset dir) of a finished tune run with two 1-epoch trials of each family. The S3 server
    starts first so that Ray's workers inherit its settings."""
    root = tmp_path_factory.mktemp("ensemble")
    dataset = generate(root / "litter", seed=5, num_train=32, num_val=24, num_test=6)
    ray.init(num_cpus=2, include_dashboard=False)  # a private cluster: never another process's
    try:
        overrides = ["name=tiny", f"dataset={dataset}", f"storage={root / 'storage'}", "spaces.0.num_samples=2",
                     "spaces.1.num_samples=2", "scheduler.max_epochs=1", "scheduler.grace_epochs=1"]
        tuned = subprocess.run([sys.executable, "-m", "detfuse", "tune", str(ROOT / "configs" / "demo.yaml"),
                                *overrides], cwd=ROOT, env=on_this_cluster(), capture_output=True, text=True,
                               timeout=900)
        assert tuned.returncode == 0, tuned.stdout[-3000:] + tuned.stderr[-3000:]
        yield str(root / "storage" / "tiny"), dataset
    finally:
        ray.shutdown()


def on_this_cluster():
    """The environment for a subprocess whose Ray driver joins this test's cluster."""
    return {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}


def row(trial_id, family, mAP50, checkpoint=True):
    return {"trial_id": trial_id, "family": family, "architecture": "arch", "best_mAP50": mAP50,
            "checkpoint": f"/runs/{trial_id}/checkpoint_000001" if checkpoint else None}


def test_top_k_per_family():
    assert parse_top(None) == (3, {})
    assert parse_top(["2", "yolov5=1", "detectron2=0"]) == (2, {"yolov5": 1, "detectron2": 0})
    for bad in ("two", "=2", "yolov5=-1", "yolov5="):
        with pytest.raises(UserError, match=f"--top {bad}: write K"):
            parse_top([bad])
    rows = [row("y1", "yolov5", 0.6), row("d1", "detectron2", 0.5), row("y2", "yolov5", 0.4),
            row("y3", "yolov5", None, checkpoint=False), row("d2", "detectron2", 0.3), row("y4", "yolov5", 0.2)]
    assert [m.trial_id for m in select_members(rows, 2, {}, "lb")] == ["d1", "d2", "y1", "y2"]
    assert [m.trial_id for m in select_members(rows, 3, {"detectron2": 1}, "lb")] == ["d1", "y1", "y2", "y4"]
    assert [m.trial_id for m in select_members(rows, 0, {"yolov5": 1}, "lb")] == ["y1"]
    with pytest.raises(UserError, match="--top mmdet: no trial of that family.*families with checkpoints: "
                                        "detectron2, yolov5"):
        select_members(rows, 2, {"mmdet": 1}, "lb")
    with pytest.raises(UserError, match="no trial with a checkpoint was selected"):
        select_members(rows, 0, {}, "lb")


def test_an_experiment_without_leaderboard_is_explained(tmp_path):
    with pytest.raises(UserError, match="leaderboard.json does not exist: the experiment is <storage>/<name>"):
        run_ensemble(str(tmp_path))


def test_fit_mode_is_an_option_of_the_command_and_of_the_experiment():
    assert build_parser().parse_args(["ensemble", "exp"]).fit_mode == "auto"
    assert build_parser().parse_args(["ensemble", "exp", "--fit-mode", "cross"]).fit_mode == "cross"
    demo = ROOT / "configs" / "demo.yaml"
    assert load_experiment(demo).ensemble_fit_mode == "auto"
    assert load_experiment(demo, ["ensemble.fit_mode=split"]).ensemble_fit_mode == "split"
    with pytest.raises(UserError, match="ensemble.fit_mode must be one of auto, cross, split .*got 'both'"):
        load_experiment(demo, ["ensemble.fit_mode=both"])


def test_tta_is_an_option_of_the_command_and_of_the_experiment():
    assert build_parser().parse_args(["ensemble", "exp"]).tta == DEFAULT_TTA
    assert build_parser().parse_args(["ensemble", "exp", "--tta", "hflip"]).tta == "hflip"
    demo = ROOT / "configs" / "demo.yaml"
    assert load_experiment(demo).ensemble_tta == DEFAULT_TTA
    assert load_experiment(demo, ["ensemble.tta=hflip"]).ensemble_tta == "hflip"
    with pytest.raises(UserError, match="ensemble.tta must be one of none, hflip .*got 'vflip'"):
        load_experiment(demo, ["ensemble.tta=vflip"])


def read_json(path):
    return json.loads(Path(path).read_text())


def cache_files(experiment_uri):
    return {p.name: p.stat().st_mtime_ns for p in (Path(experiment_uri) / "ensemble" / "predictions").iterdir()}


def cached_val_predictions(experiment_uri, trial_id):
    return as_predictions(read_json(Path(experiment_uri) / "ensemble" / "predictions" / f"{trial_id}-val.json")
                          ["predictions"])


def fold_report(experiment_uri, dataset, fold_entry, fold):
    """mAP50 on the fold's report half of the fold's ensemble, re-fused from the members' cached predictions."""
    val = dataset.splits["val"]
    inputs = FusionInputs([cached_val_predictions(experiment_uri, trial_id) for trial_id in fold_entry["members"]],
                          val.coco["images"], dataset.category_ids)
    weights = fold_entry["weights"]
    params = FusionParams(**{**fold_entry["params"], "weights": None if len(set(weights)) <= 1 else tuple(weights)})
    return evaluate(val.coco, inputs.fuse(params, image_ids=fold.report.image_ids),
                    image_ids=fold.report.image_ids).mAP50


@pytest.mark.slow
def test_ensemble_of_both_families(experiment, capsys):
    experiment_uri, dataset_dir = experiment
    leaderboard = {row["trial_id"]: row for row in read_json(Path(experiment_uri) / "leaderboard.json")}
    assert run_ensemble(experiment_uri, top=2) == 0
    captured = capsys.readouterr()
    printed = captured.out
    summary = read_json(Path(experiment_uri) / "ensemble" / "summary.json")
    dataset = load_dataset(str(dataset_dir))
    val, test = dataset.splits["val"], dataset.splits["test"]
    val_ids = [image["id"] for image in val.coco["images"]]

    # 24 val images and no test labels: cross-fitted on two halves of val, the written ensemble fitted on all of it
    splits = summary["splits"]
    assert (splits["mode"], splits["requested"]) == ("cross", "auto")
    assert [(f["fit"]["split"], f["report"]["split"]) for f in splits["folds"]] == [("val/A", "val/B"),
                                                                                      ("val/B", "val/A")]
    assert splits["folds"][0]["fit"]["images"] + splits["folds"][0]["report"]["images"] == len(val_ids)
    assert splits["report"] == {"split": "val/cross-fitted", "images": len(val_ids)}
    assert splits["final_fit"] == {"split": "val", "images": len(val_ids)}
    plan = plan_evaluation("cross", val_ids, None, splits["seed"])

    # members: two of each family, each scored on all of val and on both halves; the number its trial reported
    # (its checkpoint's own) is reproduced from the checkpoint, so the ensemble compares like with like
    assert {m["family"] for m in summary["members"]} == FAMILIES and len(summary["members"]) == 4
    for member in summary["members"]:
        assert set(member["mAP50"]) == {"val", "val/A", "val/B"}
        check = member["reported_vs_rescored"]
        assert check["source"] == "checkpoint detfuse.json metrics"
        assert check["reported"] == pytest.approx(leaderboard[member["trial_id"]]["best_mAP50"])
        assert check["rescored"] == member["mAP50"]["val"]
        assert abs(check["difference"]) < 1e-4
    assert summary["warnings"] == [] and "WARNING" not in captured.err + printed

    # the best single model is chosen on each fit half and scored on the other
    best = summary["best_single"]
    for fold, chosen in zip(splits["folds"], best["folds"]):
        fit, report = fold["fit"]["split"], fold["report"]["split"]
        top = max(summary["members"], key=lambda m: m["mAP50"][fit])
        assert chosen["trial_id"] == top["trial_id"] and chosen["mAP50"][report] == top["mAP50"][report]
    assert best["mAP50"]["val/cross-fitted"] == pytest.approx(
        sum(f["mAP50"][f["report"]] for f in best["folds"]) / 2)

    # what each family brings alone, and per class (the rare classes decide), as the ensembles are scored
    assert set(summary["best_per_family"]) == FAMILIES
    for family, entry in summary["best_per_family"].items():
        assert {m["trial_id"]: m["family"] for m in summary["members"]}[entry["trial_id"]] == family
        assert set(entry["per_class_AP50"]["val/cross-fitted"]) <= set(dataset.class_names)
    assert set(best["per_class_AP50"]["val/cross-fitted"]) <= set(dataset.class_names)

    assert set(summary["family_ensembles"]) == FAMILIES
    for family, ensemble in summary["family_ensembles"].items():
        assert ensemble["families"] == [family] and set(ensemble["mAP50"]) == {"val", "val/cross-fitted"}
        assert len(ensemble["folds"]) == 2
    cross = summary["cross_family"]
    assert cross is not None and summary["final"]["ensemble"] == "cross_family"
    # each fold's report number is its ensemble re-fused from the cached predictions and scored on the other half
    for fold, fold_entry in zip(plan.folds, cross["folds"]):
        assert fold_entry["mAP50"][fold.report.label] == pytest.approx(
            fold_report(experiment_uri, dataset, fold_entry, fold), abs=1e-4)
    assert cross["mAP50"]["val/cross-fitted"] == pytest.approx(
        sum(f["mAP50"][f["report"]] for f in cross["folds"]) / 2)
    gains = summary["gains"]
    assert gains["split"] == "val/cross-fitted" and len(gains["folds"]) == 2
    assert set(gains) >= {"cross_family_over_best_single", "detectron2_ensemble_over_best_single",
                          "yolov5_ensemble_over_best_single", "cross_family_over_yolov5_ensemble",
                          "cross_family_over_detectron2_ensemble", "cross_family_over_best_family_ensemble"}
    assert gains["cross_family_over_best_single"] == pytest.approx(
        cross["mAP50"]["val/cross-fitted"] - best["mAP50"]["val/cross-fitted"])
    for index, fold_gains in enumerate(gains["folds"]):
        report = fold_gains["report"]
        assert fold_gains["cross_family_over_best_single"] == pytest.approx(
            cross["folds"][index]["mAP50"][report] - best["folds"][index]["mAP50"][report])
    assert "cross-family ensemble" in printed and "mAP50 val/cross-fitted" in printed
    assert "mAP50 val/B (fitted on val/A)" in printed
    assert summary["final"]["fitted_on"] == {"split": "val", "images": len(val_ids)}
    assert summary["final"]["note"].startswith("fitted on all of val (24 images) after the cross-fitted estimate")
    assert ("written ensemble (cross_family): fitted on all of val (24 images) after the cross-fitted estimate"
            in printed)

    # fusion.json describes the cross-family ensemble fitted on all of val; fused_val.json is its output, and
    # re-scoring that file on val gives the (in-sample) number the summary gives it
    spec = read_fusion_spec(str(Path(experiment_uri) / "ensemble" / "fusion.json"))
    fusion = read_json(Path(experiment_uri) / "ensemble" / "fusion.json")
    assert [m.trial_id for m in spec.members] == cross["members"]
    assert fusion["fitted_on"] == {"split": "val", "images": len(val_ids), "seed": 0, "fit_mode": "cross"}
    assert fusion["reported"] == {"split": "val/cross-fitted", "images": len(val_ids),
                                  "mAP50": cross["mAP50"]["val/cross-fitted"]}
    assert spec.category_ids == dataset.category_ids and spec.class_names == dataset.class_names
    fused = read_json(Path(experiment_uri) / "ensemble" / "fused_val.json")
    assert fused and {r["image_id"] for r in fused} <= set(val_ids)
    predictions = [Prediction(r["image_id"], r["category_id"], (x, y, x + w, y + h), r["score"])
                   for r in fused for x, y, w, h in [r["bbox"]]]
    assert evaluate(val.coco, predictions).mAP50 == pytest.approx(cross["mAP50"]["val"], abs=1e-4)

    # each CSV lists every image of its split once, in order; each PredictionString is whole "label score x1 y1
    # x2 y2" groups with a valid label and score and a box inside its image, one group per fused prediction
    for split in (val, test):
        with open(Path(experiment_uri) / "ensemble" / f"fused_{split.name}.csv", newline="") as handle:
            rows = list(csv.DictReader(handle))
        images = split.coco["images"]
        assert [row["image_id"] for row in rows] == [image["file_name"] for image in images]
        assert len({row["image_id"] for row in rows}) == len(images)
        for row, image in zip(rows, images):
            values = row["PredictionString"].split()
            assert len(values) % 6 == 0
            for label, score, x1, y1, x2, y2 in zip(*[iter(values)] * 6):
                assert 0 <= int(label) < len(dataset.class_names) and 0 <= float(score) <= 1
                assert 0 <= float(x1) <= float(x2) <= image["width"] + 1e-3
                assert 0 <= float(y1) <= float(y2) <= image["height"] + 1e-3
        groups = sum(len(row["PredictionString"].split()) // 6 for row in rows)
        assert groups == summary["outputs"][split.name]["predictions"] > 0
    assert len(cache_files(experiment_uri)) == 8  # 4 members x (val, test)


@pytest.mark.slow
def test_a_member_whose_inference_differs_from_its_trial_is_a_loud_warning(experiment, tmp_path, capsys):
    """An experiment of one YOLO member whose trial claims 0.05 more val mAP50 than its checkpoint scores: the job
    must name it with both numbers on stderr and in the printed summary, and record them in summary.json."""
    experiment_uri, _ = experiment
    row = next(row for row in read_json(Path(experiment_uri) / "leaderboard.json")
               if row["family"] == "yolov5" and row["checkpoint"])
    checkpoint = Path(shutil.copytree(row["checkpoint"], tmp_path / "checkpoint"))
    meta = read_json(checkpoint / "detfuse.json")
    claimed = meta["metrics"]["mAP50"] + 0.05
    meta["metrics"]["mAP50"] = claimed
    (checkpoint / "detfuse.json").write_text(json.dumps(meta))
    copy = tmp_path / "claims"
    copy.mkdir()
    (copy / "leaderboard.json").write_text(json.dumps([{**row, "best_mAP50": claimed, "checkpoint": str(checkpoint)}]))
    shutil.copy(Path(experiment_uri) / "experiment.json", copy / "experiment.json")

    assert run_ensemble(str(copy)) == 0

    captured = capsys.readouterr()
    summary = read_json(copy / "ensemble" / "summary.json")
    (member,) = summary["members"]
    check = member["reported_vs_rescored"]
    assert check["reported"] == claimed and check["source"] == "checkpoint detfuse.json metrics"
    assert check["rescored"] == member["mAP50"]["val"] and check["difference"] == pytest.approx(-0.05, abs=1e-4)
    (warning,) = summary["warnings"]
    assert warning.startswith(f"WARNING: member {row['trial_id']} (yolov5 ")
    assert f"{claimed:.4f}" in warning and f"{check['rescored']:.4f}" in warning
    assert "its inference differs from its trial's evaluation" in warning
    assert warning in captured.err and warning in captured.out


@pytest.mark.slow
def test_rerun_through_the_script_reuses_cached_predictions(experiment):
    experiment_uri, _ = experiment
    if not (Path(experiment_uri) / "ensemble" / "predictions").is_dir():
        assert run_ensemble(experiment_uri, top=2) == 0
    before = cache_files(experiment_uri)
    finished = subprocess.run(
        [sys.executable, str(ROOT / "ray_jobs" / "ensemble.py"), experiment_uri, "--top", "yolov5=1",
         "--top", "detectron2=1", "--method", "nms", "--fit-mode", "split"],
        cwd=ROOT, env=on_this_cluster(), capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert "inference of" not in finished.stdout  # nothing was predicted again
    assert cache_files(experiment_uri) == before
    summary = read_json(Path(experiment_uri) / "ensemble" / "summary.json")
    assert summary["method"] == "nms" and len(summary["members"]) == 2
    assert summary["family_ensembles"] == {} and summary["cross_family"]["params"]["method"] == "nms"
    # split: fitted on one half of val, reported on the other; the ensemble written is the one reported
    assert summary["splits"]["mode"] == "split" and summary["splits"]["report"]["split"] == "val/report"
    assert summary["final"]["fitted_on"] == summary["splits"]["folds"][0]["fit"]
    assert set(summary["cross_family"]["mAP50"]) == {"val/fit", "val/report"}
    assert summary["cross_family"]["folds"][0]["members"] == summary["cross_family"]["members"]


@pytest.mark.slow
def test_hflip_fuses_each_trial_also_on_mirrored_images_as_a_member_of_its_family(experiment, tmp_path, capsys):
    experiment_uri, dataset_dir = experiment
    copy = tmp_path / "flipped"  # the same trials with an empty prediction cache
    copy.mkdir()
    for name in ("leaderboard.json", "experiment.json"):
        shutil.copy(Path(experiment_uri) / name, copy / name)

    assert run_ensemble(str(copy), top=1, tta="hflip") == 0
    printed = capsys.readouterr().out
    assert "inference of 2 trial(s)" in printed  # a trial's two passes share one task
    assert "mAP50 val (+hflip)" in printed
    summary = read_json(copy / "ensemble" / "summary.json")
    assert summary["tta"] == "hflip"
    trials = [m["trial_id"] for m in summary["members"]]  # still one entry per trial
    assert len(trials) == 2 and {m["family"] for m in summary["members"]} == FAMILIES
    names = trials + [f"{trial_id}+hflip" for trial_id in trials]

    # distinct cache files of distinct predictions; the summary's flipped mAP50 is that of the flipped file
    cache = copy / "ensemble" / "predictions"
    assert sorted(cache_files(copy)) == sorted(f"{name}-{split}.json" for name in names for split in ("val", "test"))
    val = load_dataset(str(dataset_dir)).splits["val"]
    differ = {}
    for member in summary["members"]:
        trial_id = member["trial_id"]
        plain, flipped = read_json(cache / f"{trial_id}-val.json"), read_json(cache / f"{trial_id}+hflip-val.json")
        assert (plain["tta"], flipped["tta"]) == ("none", "hflip") and plain["key"] != flipped["key"]
        differ[member["family"]] = plain["predictions"] != flipped["predictions"]
        assert set(member["mAP50_hflip"]) == set(member["mAP50"]) == {"val", "val/A", "val/B"}
        assert member["mAP50_hflip"]["val"] == pytest.approx(
            evaluate(val.coco, as_predictions(flipped["predictions"])).mAP50)
        assert member["reported_vs_rescored"]["rescored"] == member["mAP50"]["val"]
    # Detectron2's boxes follow the image after one epoch; YOLO's still cover all of it, the same either way
    assert differ["detectron2"]
    assert set(summary["timing"]["inference_s"]) == {f"{name}/{split}" for name in names for split in ("val", "test")}

    # the flipped members are candidates like any other, each of its trial's family
    cross = summary["cross_family"]
    assert cross["candidates"] == names and summary["final"]["ensemble"] == "cross_family"
    assert set(summary["family_ensembles"]) == FAMILIES  # a trial and its flip: two members of one family
    for member in summary["members"]:
        assert summary["family_ensembles"][member["family"]]["candidates"] == [member["trial_id"],
                                                                                f"{member['trial_id']}+hflip"]
    # fusion.json records each member's augmentation; the written outputs are the cross-family ensemble's
    spec = read_fusion_spec(str(copy / "ensemble" / "fusion.json"))
    assert [m.name for m in spec.members] == cross["members"]
    fused = read_json(copy / "ensemble" / "fused_val.json")
    assert fused and len(fused) == summary["outputs"]["val"]["predictions"]
    predictions = [Prediction(r["image_id"], r["category_id"], (x, y, x + w, y + h), r["score"])
                   for r in fused for x, y, w, h in [r["bbox"]]]
    assert evaluate(val.coco, predictions).mAP50 == pytest.approx(cross["mAP50"]["val"], abs=1e-4)

    # run again, with and without hflip: every prediction comes from the cache, and none is overwritten
    before = cache_files(copy)
    assert run_ensemble(str(copy), top=1, tta="hflip") == 0
    assert run_ensemble(str(copy), top=1) == 0
    assert "inference of" not in capsys.readouterr().out and cache_files(copy) == before
    summary = read_json(copy / "ensemble" / "summary.json")
    assert summary["tta"] == "none" and "mAP50_hflip" not in summary["members"][0]
    assert "+hflip" not in " ".join(summary["cross_family"]["candidates"])


@pytest.mark.slow
def test_labelled_test_split_reports_on_test(experiment, tmp_path):
    """With labels on test, everything is fitted on all of val and reported on test. Here test holds val's own
    images and labels, so each member's test number must equal its val number."""
    experiment_uri, dataset_dir = experiment
    labelled = Path(shutil.copytree(dataset_dir, tmp_path / "labelled"))
    shutil.copy(labelled / "val.json", labelled / "test.json")
    assert run_ensemble(experiment_uri, top=1, dataset=str(labelled)) == 0
    summary = read_json(Path(experiment_uri) / "ensemble" / "summary.json")
    assert summary["splits"]["mode"] == "test"
    assert summary["splits"]["folds"] == [{"fit": {"split": "val", "images": 24},
                                           "report": {"split": "test", "images": 24}}]
    assert summary["splits"]["report"] == {"split": "test", "images": 24}
    assert summary["final"]["fitted_on"] == {"split": "val", "images": 24}
    for member in summary["members"]:
        assert set(member["mAP50"]) == {"val", "test"}
        assert member["mAP50"]["test"] == pytest.approx(member["mAP50"]["val"])
    assert set(summary["cross_family"]["mAP50"]) == {"val", "test"}
    assert summary["dataset"]["spec"] == str(labelled)


@pytest.mark.slow
def test_experiment_on_s3(experiment, s3_bucket):
    """Leaderboard, checkpoints, prediction cache and outputs all on S3, as after `detfuse tune` with s3:// storage."""
    local_uri, _ = experiment
    experiment_uri = f"s3://{s3_bucket}/runs/tiny"
    rows = read_json(Path(local_uri) / "leaderboard.json")
    for row in rows:
        if row["checkpoint"] is not None:
            uri = f"{experiment_uri}/{row['trial_id']}/{Path(row['checkpoint']).name}"
            upload_directory(row["checkpoint"], uri)
            row["checkpoint"] = uri
    experiment_storage.write_text(f"{experiment_uri}/leaderboard.json", json.dumps(rows))
    experiment_storage.write_text(f"{experiment_uri}/experiment.json",
                                  (Path(local_uri) / "experiment.json").read_text())

    assert run_ensemble(experiment_uri, top=1) == 0

    summary = json.loads(experiment_storage.read_text(f"{experiment_uri}/ensemble/summary.json"))
    assert {m["family"] for m in summary["members"]} == FAMILIES
    for member in summary["members"]:
        assert member["checkpoint"].startswith(experiment_uri)
        for split in ("val", "test"):
            assert experiment_storage.exists(f"{experiment_uri}/ensemble/predictions/{member['trial_id']}-{split}.json")
    rows = list(csv.DictReader(experiment_storage.read_text(f"{experiment_uri}/ensemble/fused_val.csv").splitlines()))
    assert len(rows) == 24
    spec = read_fusion_spec(f"{experiment_uri}/ensemble/fusion.json")
    assert all(m.checkpoint.startswith("s3://") for m in spec.members)


@pytest.mark.slow
def test_report_of_the_tiny_run_renders_every_chart_in_a_browser(experiment, chromium, tmp_path):
    experiment_uri, _ = experiment
    assert run_ensemble(experiment_uri, top=2) == 0  # the summary this report shows, whatever ran before
    page = tmp_path / "report" / "tiny.html"

    assert main(["report", experiment_uri, "--out", str(page)]) == 0

    charts = ("learning_curves", "hyperparameters", "per_class_ap50", "ensemble_gain", "compute")
    assert sorted(p.name for p in page.parent.iterdir()) == sorted(["tiny.html", *(f"tiny_{c}.png" for c in charts)])
    shown = render(chromium, page, tmp_path / "profile")
    assert shown.console == []
    assert 'data-charts-rendered="5/5"' in shown.dom
    rendered = re.findall(r'<img class="chart" id="chart-(\w+)"[^>]*data-rendered="yes"', shown.dom)
    assert rendered == list(charts)
    # the run's own numbers: every trial of both families, the best single model and the ensemble's gain
    summary = read_json(Path(experiment_uri) / "ensemble" / "summary.json")
    label = summary["splits"]["report"]["split"]
    for row in read_json(Path(experiment_uri) / "leaderboard.json"):
        assert f"<td>{row['trial_id']}</td><td>{row['family']}</td>" in shown.dom
    assert f"best single model, {label}: <b>{summary['best_single']['mAP50'][label]:.4f}</b>" in shown.dom
    assert f"cross-family ensemble gain: <b>{summary['gains']['cross_family_over_best_single']:+.4f}</b>" in shown.dom
    # per-class AP50 as a table: summary.json's numbers of each family's best model and of the ensemble
    table = re.search(r'<table id="per-class-ap50">(.*?)</table>', shown.dom).group(1)
    columns = [entry["per_class_AP50"][label] for _, entry in sorted(summary["best_per_family"].items())]
    columns.append(summary["cross_family"]["per_class_AP50"][label])
    cells = re.findall(r"<tr><td>([^<]*)</td>((?:<td class=\"num\">[^<]*</td>)+)</tr>", table)
    assert [name for name, _ in cells] == list(dict.fromkeys(c for column in columns for c in column))
    for name, numbers in cells:
        shown_numbers = re.findall(r'<td class="num">([^<]*)</td>', numbers)
        assert shown_numbers == [f"{column[name]:.4f}" if name in column else "-" for column in columns]
    # the hyperparameters each space searched, as experiment.json records them (the demo's spaces)
    assert ", optimizer=" in shown.dom and ", weight_decay=" in shown.dom
    shot = screenshot(chromium, page, tmp_path / "profile", tmp_path / "report.png")
    print(f"screenshot of the report: {shot}")
