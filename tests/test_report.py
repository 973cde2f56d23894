"""`detfuse report` on an experiment's records, checked in a real browser (headless Chromium): what ASHA saved,
which charts a partial experiment gets, that a rerun rewrites the same files, and that bad input is explained.
The report of a real tiny run of both families: tests/test_ensemble_job.py."""

import json
import re

import pytest
from headless_browser import render, screenshot

from detfuse.stages.cli import main
from detfuse.stages.report import read_records, write_report
from detfuse.stages.report_charts import draw_charts
from detfuse.stages.report_page import render_page

LR = {"range": [0.001, 0.1], "log": True}
SPACES = [{"space": "faster_rcnn", "family": "detectron2", "architecture": "faster_rcnn", "searched": {"lr": LR},
           "max_epochs": 4.0, "grace_epochs": 1.0, "num_samples": 1, "resources": {"cpu": 4, "gpu": 1}},
          {"space": "yolov5n", "family": "yolov5", "architecture": "yolov5n",
           "searched": {"lr": LR, "optimizer": {"choice": ["sgd", "adamw", "adam"]}},
           "max_epochs": 4.0, "grace_epochs": 1.0, "num_samples": 2, "resources": {"cpu": 2, "gpu": 0.5}}]


def trial(storage, name, family, architecture, hparams, curve, seconds_per_epoch, resources):
    """A trial's records as Tune and `detfuse tune` leave them; returns its leaderboard row."""
    directory = storage / name
    directory.mkdir(parents=True)
    lines = ["mAP50,epoch,time_total_s"] + [f"{value},{epoch},{epoch * seconds_per_epoch}" for epoch, value in curve]
    (directory / "progress.csv").write_text("\n".join(lines) + "\n")
    (directory / "params.json").write_text(json.dumps({"resources": resources, "hparams": hparams}))
    best_epoch, best = max(curve, key=lambda point: point[1])
    trained = curve[-1][0]
    return {"trial_id": name.rsplit("_", 1)[1], "family": family, "architecture": architecture, "hparams": hparams,
            "max_epochs": 4.0, "best_mAP50": best, "best_mAP50_95": best / 2, "best_epoch": best_epoch,
            "epochs_trained": trained, "stopped_early": trained < 4.0, "error": None,
            "checkpoint": str(directory / "checkpoint_000000"),
            "path": f"/where/the/trials/ran/{name}"}  # another mount of the storage: found under the experiment


@pytest.fixture
def tuned(tmp_path):
    """A tuned experiment without an ensemble: a detectron2 trial that ran its 4 epochs in 400 s on 1 GPU, and two
    YOLO trials on half a GPU, one stopped by ASHA after 1 of its 4 epochs (100 s: 300 s and 0.5 GPU saved)."""
    experiment = tmp_path / "storage" / "exp"
    rows = [trial(experiment, "faster_rcnn_aaaa0001", "detectron2", "faster_rcnn", {"lr": 0.01, "depth": 18},
                  [(1.0, 0.1), (2.0, 0.2), (3.0, 0.25), (4.0, 0.3)], 100.0, {"cpu": 4, "gpu": 1}),
            trial(experiment, "yolov5n_bbbb0002", "yolov5", "yolov5n", {"lr": 0.002, "optimizer": "sgd"},
                  [(1.0, 0.05), (2.0, 0.12), (3.0, 0.15), (4.0, 0.2)], 50.0, {"cpu": 2, "gpu": 0.5}),
            trial(experiment, "yolov5n_cccc0003", "yolov5", "yolov5n", {"lr": 0.02, "optimizer": "adamw"},
                  [(1.0, 0.01)], 100.0, {"cpu": 2, "gpu": 0.5})]
    (experiment / "leaderboard.json").write_text(json.dumps(rows))
    (experiment / "experiment.json").write_text(json.dumps({"name": "exp", "spaces": SPACES}))
    return experiment


def test_what_asha_saved_is_the_rest_of_each_stopped_trials_budget_at_its_own_pace(tuned):
    records = read_records(str(tuned))

    assert [t.trial_id for t in records.trials] == ["aaaa0001", "bbbb0002", "cccc0003"]
    assert [t.seconds_saved for t in records.trials] == [0.0, 0.0, 300.0]
    spent, saved = records.hours("gpu")
    assert spent == pytest.approx((400 * 1 + 200 * 0.5 + 100 * 0.5) / 3600)
    assert saved == pytest.approx(300 * 0.5 / 3600)
    assert records.searched == {"faster_rcnn": {"lr": LR},
                                "yolov5n": {"lr": LR, "optimizer": {"choice": ["sgd", "adamw", "adam"]}}}
    assert records.trials[2].curve == [(1.0, 0.01)]


def test_a_tuned_experiment_without_ensemble_gets_its_charts_and_says_what_is_missing(tuned, chromium, tmp_path):
    page = write_report(str(tuned))
    assert page == str(tuned / "report" / "report.html")
    written = {path.name: path.read_bytes() for path in (tuned / "report").iterdir()}
    assert set(written) == {"report.html", "report_learning_curves.png", "report_hyperparameters.png",
                            "report_compute.png"}

    shown = render(chromium, tuned / "report" / "report.html", tmp_path / "profile")
    assert shown.console == []
    assert 'data-charts-rendered="3/3"' in shown.dom
    assert "No ensemble yet: run <code>detfuse ensemble EXPERIMENT_URI</code>" in shown.dom
    assert "<td class=\"num\">1 / 4</td><td>yes</td>" in shown.dom  # the trial ASHA stopped, in the leaderboard
    assert "ASHA: <b>1</b>" in shown.dom and "0.153 spent, 0.0417 saved by ASHA" in shown.dom

    assert main(["report", str(tuned)]) == 0  # again: the same records give the same files
    assert {path.name: path.read_bytes() for path in (tuned / "report").iterdir()} == written


def test_the_browser_check_sees_a_page_whose_script_fails(chromium, tmp_path):
    page = tmp_path / "broken.html"
    page.write_text("<!DOCTYPE html><html><body><img class=chart src='data:image/png;base64,AAAA'>"
                    "<script>document.body.dataset.chartsRendered = missing.count;</script></body></html>")
    shown = render(chromium, page, tmp_path / "profile")
    assert any("Uncaught ReferenceError: missing is not defined" in message for message in shown.console)
    assert "data-charts-rendered" not in shown.dom
    assert screenshot(chromium, page, tmp_path / "profile", tmp_path / "broken.png", size=(300, 200)).exists()


def test_an_experiment_without_leaderboard_is_explained(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nothing")]) == 2
    error = capsys.readouterr().err
    assert "nothing/leaderboard.json does not exist" in error and "<storage>/<name>" in error
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "leaderboard.json").write_text('{"trials": 1}')
    assert main(["report", str(tmp_path / "bad")]) == 2
    assert "expected a list of trial rows with trial_id and path" in capsys.readouterr().err


def test_the_browser_check_reports_a_cut_short_chart_as_not_rendered(tuned, chromium, tmp_path):
    """A browser knows an image's size from the PNG header alone: a chart whose data stops early must still count
    as not rendered, the others as rendered."""
    records = read_records(str(tuned))
    charts = draw_charts(records)
    charts["compute"] = charts["compute"][:len(charts["compute"]) // 2]
    page = tmp_path / "cut.html"
    page.write_text(render_page(records, charts))

    shown = render(chromium, page, tmp_path / "profile")
    assert 'data-charts-rendered="2/3"' in shown.dom
    marks = dict(re.findall(r'<img class="chart" id="chart-(\w+)"[^>]*data-rendered="(\w+)"', shown.dom))
    assert marks == {"learning_curves": "yes", "hyperparameters": "yes", "compute": "no"}
