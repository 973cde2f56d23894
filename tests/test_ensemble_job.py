"""The ensemble job end to end: a tiny real Tune experiment of both families on a small synthetic dataset, then
`detfuse ensemble` on its leaderboard: real checkpoints, real inference as Ray tasks, the real evaluator.
The tune run alone takes one to three minutes on two cores, hence the slow marks."""

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import ray

from detfuse import experiment_storage
from detfuse.data import load_dataset
from detfuse.data.synthetic import generate
from detfuse.ensemble_outputs import read_fusion_spec
from detfuse.errors import UserError
from detfuse.evaluation import Prediction, evaluate
from detfuse.storage.s3 import upload_directory
from ray_jobs.ensemble import parse_top, run_ensemble, select_members

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
    with pytest.raises(UserError, match="leaderboard.json does not exist: EXPERIMENT is <storage>/<name>"):
        run_ensemble(str(tmp_path))


def read_json(path):
    return json.loads(Path(path).read_text())


def cache_files(experiment_uri):
    return {p.name: p.stat().st_mtime_ns for p in (Path(experiment_uri) / "ensemble" / "predictions").iterdir()}


@pytest.mark.slow
def test_ensemble_of_both_families(experiment, capsys):
    experiment_uri, dataset_dir = experiment
    leaderboard = {row["trial_id"]: row for row in read_json(Path(experiment_uri) / "leaderboard.json")}
    assert run_ensemble(experiment_uri, top=["2"]) == 0
    printed = capsys.readouterr().out
    summary = read_json(Path(experiment_uri) / "ensemble" / "summary.json")
    dataset = load_dataset(str(dataset_dir))
    val, test = dataset.splits["val"], dataset.splits["test"]
    val_ids = [image["id"] for image in val.coco["images"]]

    # members: two of each family, each scored on all of val and on both halves; the leaderboard's own val
    # mAP50 is reproduced from the checkpoint, so the ensemble compares like with like
    assert {m["family"] for m in summary["members"]} == FAMILIES and len(summary["members"]) == 4
    assert summary["splits"]["fit"]["split"] == "val/fit" and summary["splits"]["report"]["split"] == "val/report"
    assert summary["splits"]["fit"]["images"] + summary["splits"]["report"]["images"] == len(val_ids)
    for member in summary["members"]:
        assert set(member["mAP50"]) == {"val", "val/fit", "val/report"}
        assert member["mAP50"]["val"] == pytest.approx(leaderboard[member["trial_id"]]["best_mAP50"], abs=1e-4)
    assert set(summary["family_ensembles"]) == FAMILIES
    for family, ensemble in summary["family_ensembles"].items():
        assert ensemble["families"] == [family] and set(ensemble["mAP50"]) == {"val/fit", "val/report"}
    cross = summary["cross_family"]
    assert cross is not None and summary["final"]["ensemble"] == "cross_family"
    assert set(summary["gains"]) >= {"split", "cross_family_over_best_single", "detectron2_ensemble_over_best_single",
                                     "yolov5_ensemble_over_best_single", "cross_family_over_best_family_ensemble"}
    assert summary["gains"]["cross_family_over_best_single"] == pytest.approx(
        cross["mAP50"]["val/report"] - summary["best_single"]["mAP50"]["val/report"])
    assert "cross-family ensemble" in printed and "val/report" in printed

    # fusion.json describes the cross-family ensemble; fused_val.json is its output, and re-scoring that file on
    # the report half gives the number the summary reports
    spec = read_fusion_spec(str(Path(experiment_uri) / "ensemble" / "fusion.json"))
    assert [m["trial_id"] for m in spec.members] == cross["members"]
    assert spec.category_ids == dataset.category_ids and spec.class_names == dataset.class_names
    fused = read_json(Path(experiment_uri) / "ensemble" / "fused_val.json")
    assert fused and {r["image_id"] for r in fused} <= set(val_ids)
    predictions = [Prediction(r["image_id"], r["category_id"], (x, y, x + w, y + h), r["score"])
                   for r in fused for x, y, w, h in [r["bbox"]]]
    report_ids = sorted(set(val_ids) - set(_fit_ids(summary, val_ids)))
    assert evaluate(val.coco, predictions, image_ids=report_ids).mAP50 == pytest.approx(
        cross["mAP50"]["val/report"], abs=1e-4)

    # the CSVs list every image of their split, in order, with whole "label score x1 y1 x2 y2" groups
    for split in (val, test):
        with open(Path(experiment_uri) / "ensemble" / f"fused_{split.name}.csv", newline="") as handle:
            rows = list(csv.DictReader(handle))
        assert [row["image_id"] for row in rows] == [image["file_name"] for image in split.coco["images"]]
        for row in rows:
            values = row["PredictionString"].split()
            assert len(values) % 6 == 0
            assert all(0 <= int(label) < len(dataset.class_names) for label in values[::6])
    assert sum(len(row) > 0 for row in rows) > 0  # the test split's predictions were written too
    assert len(cache_files(experiment_uri)) == 8  # 4 members x (val, test)


def _fit_ids(summary, val_ids):
    from detfuse.fusion_fit import split_image_ids

    return split_image_ids(val_ids, summary["splits"]["fit"]["seed"])[0]


@pytest.mark.slow
def test_rerun_through_the_script_reuses_cached_predictions(experiment):
    experiment_uri, _ = experiment
    if not (Path(experiment_uri) / "ensemble" / "predictions").is_dir():
        assert run_ensemble(experiment_uri, top=["2"]) == 0
    before = cache_files(experiment_uri)
    finished = subprocess.run(
        [sys.executable, str(ROOT / "ray_jobs" / "ensemble.py"), experiment_uri, "--top", "yolov5=1",
         "--top", "detectron2=1", "--method", "nms"],
        cwd=ROOT, env=on_this_cluster(), capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert "inference of" not in finished.stdout  # nothing was predicted again
    assert cache_files(experiment_uri) == before
    summary = read_json(Path(experiment_uri) / "ensemble" / "summary.json")
    assert summary["method"] == "nms" and len(summary["members"]) == 2
    assert summary["family_ensembles"] == {} and summary["cross_family"]["params"]["method"] == "nms"


@pytest.mark.slow
def test_labelled_test_split_reports_on_test(experiment, tmp_path):
    """With labels on test, everything is fitted on all of val and reported on test. Here test holds val's own
    images and labels, so each member's test number must equal its val number."""
    experiment_uri, dataset_dir = experiment
    labelled = Path(shutil.copytree(dataset_dir, tmp_path / "labelled"))
    shutil.copy(labelled / "val.json", labelled / "test.json")
    assert run_ensemble(experiment_uri, top=["1"], dataset=str(labelled)) == 0
    summary = read_json(Path(experiment_uri) / "ensemble" / "summary.json")
    assert summary["splits"]["fit"] == {"split": "val", "images": 24, "seed": 0}
    assert summary["splits"]["report"] == {"split": "test", "images": 24}
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

    assert run_ensemble(experiment_uri, top=["1"]) == 0

    summary = json.loads(experiment_storage.read_text(f"{experiment_uri}/ensemble/summary.json"))
    assert {m["family"] for m in summary["members"]} == FAMILIES
    for member in summary["members"]:
        assert member["checkpoint"].startswith(experiment_uri)
        for split in ("val", "test"):
            assert experiment_storage.exists(f"{experiment_uri}/ensemble/predictions/{member['trial_id']}-{split}.json")
    rows = list(csv.DictReader(experiment_storage.read_text(f"{experiment_uri}/ensemble/fused_val.csv").splitlines()))
    assert len(rows) == 24
    spec = read_fusion_spec(f"{experiment_uri}/ensemble/fusion.json")
    assert all(m["checkpoint"].startswith("s3://") for m in spec.members)
