"""`detfuse report` on an experiment's records, checked in a real browser (headless Chromium): what ASHA saved,
which charts a partial experiment gets, that a rerun rewrites the same files, and that bad input is explained.
The report of a real tiny run of both families: tests/test_ensemble_job.py."""

import html
import json
import os
import re
from types import SimpleNamespace

import pytest
from headless_browser import render, screenshot
from matplotlib.text import Text

from detfuse.stages import report_charts
from detfuse.stages.cli import main
from detfuse.stages.pipeline import report_stage
from detfuse.stages.report import read_records, run_report, write_report
from detfuse.stages.report_charts import draw_charts
from detfuse.stages.report_page import render_page

LR = {"range": [0.001, 0.1], "log": True}
SPACES = [{"space": "faster_rcnn", "architecture": "faster_rcnn", "searched": {"lr": LR}},
          {"space": "yolov5n", "architecture": "yolov5n",
           "searched": {"lr": LR, "optimizer": {"choice": ["sgd", "adamw", "adam"]}}}]


def trial(storage, name, family, architecture, hparams, curve, seconds_per_epoch, resources, startup=0.0,
          interrupted=False):
    """A trial's records as Tune and `detfuse tune` leave them (`startup` seconds before its first epoch); returns
    its leaderboard row."""
    directory = storage / name
    directory.mkdir(parents=True)
    lines = ["mAP50,epoch,time_total_s"] + [f"{value},{epoch},{startup + epoch * seconds_per_epoch}"
                                           for epoch, value in curve]
    (directory / "progress.csv").write_text("\n".join(lines) + "\n")
    (directory / "params.json").write_text(json.dumps({"resources": resources, "hparams": hparams}))
    best_epoch, best = max(curve, key=lambda point: point[1])
    trained = curve[-1][0]
    return {"trial_id": name.rsplit("_", 1)[1], "family": family, "architecture": architecture, "hparams": hparams,
            "max_epochs": 4.0, "best_mAP50": best, "best_mAP50_95": best / 2, "best_epoch": best_epoch,
            "epochs_trained": trained, "stopped_early": trained < 4.0 and not interrupted, "interrupted": interrupted,
            "error": None,
            "checkpoint": str(directory / "checkpoint_000000"),
            "path": f"/where/the/trials/ran/{name}"}  # another mount of the storage: found under the experiment


@pytest.fixture
def tuned(tmp_path):
    """A tuned experiment without an ensemble: a detectron2 trial that ran its 4 epochs in 400 s on 1 GPU, and two
    YOLO trials on half a GPU, one stopped by ASHA after 1 of its 4 epochs (100 s, one report: its 3 epochs left at
    the other yolov5n trial's 50 s each, 150 s on 0.5 GPU, saved)."""
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
    assert [t.seconds_saved for t in records.trials] == [0.0, 0.0, 150.0]
    spent, saved = records.hours()
    assert spent == pytest.approx((400 * 1 + 200 * 0.5 + 100 * 0.5) / 3600)
    assert saved == pytest.approx(150 * 0.5 / 3600)
    assert records.searched == {"faster_rcnn": {"lr": LR},
                                "yolov5n": {"lr": LR, "optimizer": {"choice": ["sgd", "adamw", "adam"]}}}
    assert records.trials[2].curve == [(1.0, 0.01)]


def test_a_tuned_experiment_without_ensemble_gets_its_charts_and_says_what_is_missing(tuned, chromium, tmp_path):
    page = write_report(str(tuned))
    assert page == str(tuned / "report" / "report.html")

    shown = render(chromium, tuned / "report" / "report.html", tmp_path / "profile")
    assert shown.console == []
    assert 'data-charts-rendered="3/3"' in shown.dom
    assert "No ensemble yet: run <code>detfuse ensemble EXPERIMENT_URI</code>" in shown.dom
    assert "<td class=\"num\">1 / 4</td><td>stopped by ASHA (saved 2.5 min" in shown.dom  # in the leaderboard
    assert "ASHA: <b>1</b>" in shown.dom and "0.153 spent, 0.0208 saved by ASHA" in shown.dom


def test_the_report_writes_its_page_and_charts_and_a_rerun_rewrites_the_same_files(tuned):
    """Without a browser: the files a report consists of, shareable (the mode a plain write gives, not a temporary
    file's 0600), and the same bytes on a rerun."""
    assert main(["report", str(tuned)]) == 0
    written = {path.name: path.read_bytes() for path in (tuned / "report").iterdir()}
    assert set(written) == {"report.html", "report_learning_curves.png", "report_hyperparameters.png",
                            "report_compute.png"}
    umask = os.umask(0o022)
    os.umask(umask)
    assert {path.stat().st_mode & 0o777 for path in (tuned / "report").iterdir()} == {0o666 & ~umask}
    assert main(["report", str(tuned)]) == 0
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



def test_a_trials_pace_excludes_its_startup_and_a_one_report_trial_takes_its_architectures_median(tmp_path):
    """Time saved = the rest of the budget at seconds per epoch between the trial's reports; with one report, the
    median pace of the same architecture's trials; with none to learn from, its whole time (and the page says so)."""
    experiment = tmp_path / "exp"
    curve = [(1.0, 0.1), (2.0, 0.2), (3.0, 0.3), (4.0, 0.4)]
    rows = [trial(experiment, "yolov5n_aaaa0001", "yolov5", "yolov5n", {}, curve, 50.0, {"cpu": 2, "gpu": 1},
                  startup=200.0),
            trial(experiment, "yolov5n_bbbb0002", "yolov5", "yolov5n", {}, curve[:2], 70.0, {"cpu": 2, "gpu": 1},
                  startup=200.0),
            trial(experiment, "yolov5n_cccc0003", "yolov5", "yolov5n", {}, curve[:1], 90.0, {"cpu": 2, "gpu": 1},
                  startup=200.0),
            trial(experiment, "faster_rcnn_dddd0004", "detectron2", "faster_rcnn", {}, curve[:1], 90.0,
                  {"cpu": 2, "gpu": 1}, startup=30.0)]
    (experiment / "leaderboard.json").write_text(json.dumps(rows))
    trials = {t.trial_id: t for t in read_records(str(experiment)).trials}

    assert trials["aaaa0001"].seconds_saved == 0.0  # ran its budget
    assert trials["bbbb0002"].epoch_seconds == pytest.approx(70.0)  # (340 - 270) / (2 - 1), not 340 / 2
    assert trials["bbbb0002"].seconds_saved == pytest.approx(70.0 * 2)
    assert trials["cccc0003"].epoch_seconds == pytest.approx(60.0)  # median of 50 and 70
    assert trials["cccc0003"].seconds_saved == pytest.approx(60.0 * 3)
    assert trials["cccc0003"].pace == "median of 2 yolov5n trial(s)"
    assert trials["dddd0004"].seconds_saved == pytest.approx(120.0 * 3)  # no other faster_rcnn: 120 s over 1 epoch
    assert trials["dddd0004"].pace == "its whole time over its epochs, startup included"


def test_an_interrupted_trial_is_neither_an_asha_stop_nor_a_saving(tmp_path, chromium):
    experiment = tmp_path / "exp"
    curve = [(1.0, 0.1), (2.0, 0.2), (3.0, 0.3), (4.0, 0.4)]
    rows = [trial(experiment, "yolov5n_aaaa0001", "yolov5", "yolov5n", {}, curve[:2], 50.0, {"cpu": 2, "gpu": 1}),
            trial(experiment, "yolov5n_bbbb0002", "yolov5", "yolov5n", {}, curve[:2], 50.0, {"cpu": 2, "gpu": 1},
                  interrupted=True)]
    (experiment / "leaderboard.json").write_text(json.dumps(rows))
    records = read_records(str(experiment))
    assert [(t.stopped_early, t.interrupted, t.seconds_saved) for t in records.trials] == [
        (True, False, 100.0), (False, True, 0.0)]
    assert records.hours() == pytest.approx((200 / 3600, 100 / 3600))

    write_report(str(experiment))
    shown = render(chromium, experiment / "report" / "report.html", tmp_path / "profile")
    assert "<td>interrupted (the search was stopped)</td>" in shown.dom
    assert "stopped early by ASHA: <b>1</b>" in shown.dom
    assert "interrupted before they finished (no savings counted): <b>1</b>" in shown.dom


def summary_json(classes):
    """ensemble/summary.json of a cross-fitted ensemble of the `tuned` fixture's trials, with per-class AP50 of
    `classes`; the two folds chose different best YOLO trials."""
    label = "val/cross-fitted"

    def per_class(offset):
        return {label: {name: round(0.05 + offset + index / (2 * len(classes)), 4)
                        for index, name in enumerate(classes)}}

    def best(trial_id, folds, offset):
        return {"trial_id": trial_id, "family": "yolov5" if trial_id != "aaaa0001" else "detectron2",
                "mAP50": {"val": 0.3, label: 0.25 + offset}, "per_class_AP50": per_class(offset),
                "folds": [{"fit": fit, "report": report, "trial_id": chosen, "mAP50": {fit: 0.3, report: 0.2}}
                          for (fit, report), chosen in zip((("val/A", "val/B"), ("val/B", "val/A")), folds)]}

    ensemble = {"members": ["aaaa0001", "bbbb0002"], "candidates": ["aaaa0001", "bbbb0002", "cccc0003"],
                "mAP50": {"val": 0.4, label: 0.33}, "per_class_AP50": per_class(0.1), "folds": []}
    return {"splits": {"mode": "cross", "report": {"split": label, "images": 24}, "note": "cross-fitted halves",
                       "folds": [], "final_fit": {"split": "val", "images": 24}},
            "best_single": best("aaaa0001", ["aaaa0001", "aaaa0001"], 0.0),
            "best_per_family": {"detectron2": best("aaaa0001", ["aaaa0001", "aaaa0001"], 0.0),
                                "yolov5": best("bbbb0002", ["bbbb0002", "cccc0003"], 0.02)},
            "family_ensembles": {}, "cross_family": ensemble, "final": {"ensemble": "cross_family"},
            "gains": {"split": label, "cross_family_over_best_single": 0.08}}


def test_user_text_with_dollar_signs_is_drawn_as_written_and_per_class_ap50_is_a_table(tuned, chromium, tmp_path):
    """Class names, trial text and hyperparameter values are the user's: a "$" in them is not matplotlib math."""
    classes = [r"$\frac$", "cost $5 or $10"] + [f"class {index}" for index in range(40)]
    (tuned / "ensemble").mkdir()
    (tuned / "ensemble" / "summary.json").write_text(json.dumps(summary_json(classes)))
    rows = json.loads((tuned / "leaderboard.json").read_text())
    rows[1]["hparams"]["optimizer"] = "cost $5 or $10"
    (tuned / "leaderboard.json").write_text(json.dumps(rows))

    assert main(["report", str(tuned)]) == 0
    shown = render(chromium, tuned / "report" / "report.html", tmp_path / "profile")
    assert 'data-charts-rendered="5/5"' in shown.dom
    table = re.search(r'<table id="per-class-ap50">(.*?)</table>', shown.dom).group(1)
    header = re.findall(r"<th>(.*?)</th>", table)
    assert header == ["class", "best detectron2 (aaaa0001)",
                      "best yolov5 (chosen per fold: bbbb0002 on val/B, cccc0003 on val/A)", "cross-family ensemble"]
    cells = re.findall(r"<tr><td>(.*?)</td>" + r'<td class="num">([\d.]+)</td>' * 3, table)
    summary = summary_json(classes)
    assert [(html.unescape(c), *map(float, values)) for c, *values in cells] == [
        (c, summary["best_per_family"]["detectron2"]["per_class_AP50"]["val/cross-fitted"][c],
         summary["best_per_family"]["yolov5"]["per_class_AP50"]["val/cross-fitted"][c],
         summary["cross_family"]["per_class_AP50"]["val/cross-fitted"][c]) for c in classes]


def test_a_failed_report_stage_warns_with_the_command_and_leaves_the_pipeline_resumable(tuned, capsys):
    """The report is the pipeline's last stage, a view of results already complete: its failure is a warning
    naming `detfuse report`, and no marker is written, so running the pipeline again retries the report."""
    experiment = SimpleNamespace(uri=str(tuned))

    def broken_report(uri):
        raise ValueError("Unknown symbol: \\frac")

    warning = report_stage(experiment, broken_report)
    assert f"Write the report with `detfuse report {tuned}`" in warning
    assert "ValueError: Unknown symbol" in warning and warning in capsys.readouterr().err
    assert not (tuned / "pipeline" / "report.json").exists()
    assert report_stage(experiment, run_report) is None
    assert (tuned / "pipeline" / "report.json").exists() and (tuned / "report" / "report.html").exists()


def test_every_text_on_the_charts_is_plain_text(tuned, monkeypatch):
    """Math text is off so that user text is drawn as written; an axis that still relied on it (matplotlib labels
    log axes in math text) would show "$\\mathdefault{10^{-3}}$" literally."""
    texts = []
    write_png = report_charts._png

    def recording(figure):
        figure.canvas.draw()
        texts.extend(text.get_text() for text in figure.findobj(Text) if text.get_visible())
        return write_png(figure)

    monkeypatch.setattr(report_charts, "_png", recording)
    assert main(["report", str(tuned)]) == 0
    assert "0.01" in texts  # the log-scaled lr range is labelled: its ends and middle
    assert [text for text in texts if "$" in text or "mathdefault" in text] == []
