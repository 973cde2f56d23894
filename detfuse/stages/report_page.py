"""The report as one self-contained HTML page: styles, the charts (PNG data URIs) and a few lines of script
inline, nothing fetched when it is opened, so it can be mailed, archived or opened offline.

The script marks each chart once the browser has decoded and drawn all of it (`data-rendered="yes"` on the image,
"no" when it failed or was cut short, and `data-charts-rendered="N/M"` on the body): a headless browser's DOM then
proves every chart rendered.
"""

import base64
import html

STYLE = """
body { font-family: sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 1.6em; }
.meta { color: #555; } img.chart { max-width: 100%; border: 1px solid #eee; }
table { border-collapse: collapse; font-size: 0.85em; }
td, th { border: 1px solid #ddd; padding: 3px 6px; vertical-align: top; }
th { background: #f4f4f4; } td.num { text-align: right; } .note { color: #a15c00; }
.stat { display: inline-block; margin: 0.3em 1.5em 0.3em 0; } .stat b { font-size: 1.2em; }
code { background: #f4f4f4; padding: 1px 4px; }
"""

SCRIPT = """
(function () {
  var charts = document.querySelectorAll("img.chart");
  function update() {
    var rendered = 0;
    charts.forEach(function (img) { if (img.dataset.rendered === "yes") rendered += 1; });
    document.body.dataset.chartsRendered = rendered + "/" + charts.length;
  }
  // A chart counts as rendered when its last row of pixels was drawn: the browser knows an image's size from the
  // PNG header alone, and the rows a cut-short file never reached stay transparent. The charts are opaque PNGs.
  function lastRowDrawn(img) {
    if (img.naturalWidth === 0) return false;
    var canvas = document.createElement("canvas");
    canvas.width = img.naturalWidth;
    canvas.height = img.naturalHeight;
    var context = canvas.getContext("2d");
    context.drawImage(img, 0, 0);
    var row = context.getImageData(0, img.naturalHeight - 1, img.naturalWidth, 1).data;
    for (var alpha = 3; alpha < row.length; alpha += 4) { if (row[alpha] === 0) return false; }
    return true;
  }
  charts.forEach(function (img) {
    // drawImage decodes a loaded image at once (img.decode() would finish after a headless browser's dump)
    function mark() { img.dataset.rendered = lastRowDrawn(img) ? "yes" : "no"; update(); }
    function failed() { img.dataset.rendered = "no"; update(); }
    if (img.complete) { if (img.naturalWidth > 0) { mark(); } else { failed(); } }
    else { img.addEventListener("load", mark); img.addEventListener("error", failed); }
  });
  update();
})();
"""

CHART_SECTIONS = {
    "learning_curves": ("Learning curves", "Every trial's val mAP50 at each evaluation; an X marks where its "
                        "family's ASHA stopped it, a hollow circle a trial the search was stopped before it "
                        "finished, a dotted line each family's full budget."),
    "hyperparameters": ("Hyperparameters against mAP50", "One scatter per searched hyperparameter of each "
                        "architecture: each trial's best val mAP50 at the value it tried."),
    "per_class_ap50": ("Per-class AP50", "Each family's best model and the ensemble, class by class, on the "
                       "ensemble's report split: rare classes decide a competition. A family's best model is the "
                       "trial each fold chose on its fit part; its numbers average the folds."),
    "ensemble_gain": ("What the ensemble adds", "mAP50 on the report split, on images none of the choices were "
                      "fitted on."),
    "compute": ("Time and compute", "Hours each trial trained, and what ASHA saved by stopping it early (the rest "
                "of its budget at its own pace)."),
}
MISSING = {
    "hyperparameters": "No search space of this experiment searched any hyperparameter.",
    "per_class_ap50": "No per-class AP50 recorded: run <code>detfuse ensemble EXPERIMENT_URI</code> (this "
                      "detfuse records it in ensemble/summary.json), then this report again.",
    "ensemble_gain": "No ensemble yet: run <code>detfuse ensemble EXPERIMENT_URI</code>, then this report again.",
}


def _e(value):
    return html.escape(str(value))


def _number(value, digits=4):
    return "-" if value is None else f"{value:.{digits}f}"


def _hparam_value(value):
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _all_hparams(hparams):
    """Every hyperparameter of a trial, folded: the searched ones have their own column."""
    listed = "<br>".join(f"{_e(name)}={_e(_hparam_value(value))}" for name, value in sorted(hparams.items()))
    return f"<details><summary>{len(hparams)}</summary>{listed}</details>"


def _stats(records):
    trials = records.trials
    per_family = ", ".join(f"{sum(t.family == f for t in trials)} {f}" for f in records.families)
    unit = records.unit
    spent, saved = records.hours()
    stats = [("trials", f"{len(trials)} ({per_family})"),
             ("stopped early by ASHA", f"{sum(t.stopped_early for t in trials)}"),
             ("failed", f"{sum(bool(t.error) for t in trials)}")]
    interrupted = sum(t.interrupted for t in trials)
    if interrupted:
        stats.append(("interrupted before they finished (no savings counted)", f"{interrupted}"))
    stats.append((f"{unit}-hours", f"{spent:.3g} spent, {saved:.3g} saved by ASHA"))
    if spent + saved:
        stats.append(("ASHA saved", f"{saved / (spent + saved):.0%} of the {unit}-hours of running every trial "
                                    f"to its budget"))
    for stage, seconds in records.stage_seconds.items():
        stats.append((f"{stage} stage", f"{seconds / 60:.1f} min wall"))
    if records.summary:
        label = records.summary["splits"]["report"]["split"]
        best = records.summary["best_single"]["mAP50"][label]
        stats.append((f"best single model, {label}", f"{best:.4f}"))
        gain = records.summary["gains"].get("cross_family_over_best_single")
        if gain is not None:
            stats.append(("cross-family ensemble gain", f"{gain:+.4f}"))
    return "".join(f'<span class="stat">{_e(name)}: <b>{_e(value)}</b></span>' for name, value in stats)


def _leaderboard(records):
    header = ("<tr><th>#</th><th>trial</th><th>family</th><th>architecture</th><th>best mAP50</th><th>at epoch</th>"
              "<th>epochs / budget</th><th>ended</th><th>minutes</th><th>searched hyperparameters</th>"
              "<th>all hyperparameters</th><th>error</th></tr>")
    rows = []
    for rank, t in enumerate(records.trials, 1):
        searched = ", ".join(f"{name}={_hparam_value(t.hparams.get(name))}"
                             for name in records.searched.get(t.architecture, {}))
        rows.append(
            f"<tr><td class=num>{rank}</td><td>{_e(t.trial_id)}</td><td>{_e(t.family)}</td>"
            f"<td>{_e(t.architecture)}</td><td class=num>{_number(t.best_mAP50)}</td>"
            f"<td class=num>{_number(t.best_epoch, 2)}</td>"
            f"<td class=num>{t.epochs_trained:g} / {t.max_epochs:g}</td><td>{_ended(t)}</td>"
            f"<td class=num>{t.seconds / 60:.1f}</td><td>{_e(searched)}</td><td>{_all_hparams(t.hparams)}</td>"
            f"<td>{_e(t.error or '')}</td></tr>")
    return f"<table>{header}{''.join(rows)}</table>"


def _ended(trial):
    """How a trial ended; for one ASHA stopped, the time it saved and how the trial's pace was found."""
    if trial.error:
        return "failed"
    if trial.interrupted:
        return "interrupted (the search was stopped)"
    if trial.stopped_early:
        return f"stopped by ASHA (saved {trial.seconds_saved / 60:.1f} min: {_e(trial.pace)})"
    return "ran its budget"


def _per_class_table(records):
    """The per-class AP50 chart's numbers, every class, as a table (copyable, and readable for many classes)."""
    per_class = records.per_class()
    if per_class is None:
        return ""
    label, columns = per_class
    classes = list(dict.fromkeys(c for _, _, values in columns for c in values))
    header = "<tr><th>class</th>" + "".join(f"<th>{_e(name)}</th>" for name, _, _ in columns) + "</tr>"
    rows = "".join(f"<tr><td>{_e(c)}</td>" + "".join(f"<td class=num>{_number(values.get(c))}</td>"
                                                      for _, _, values in columns) + "</tr>" for c in classes)
    return f'<p>AP50 on {_e(label)}, every class:</p><table id="per-class-ap50">{header}{rows}</table>'


def _gains(summary):
    label = summary["splits"]["report"]["split"]
    items = "".join(f"<li>{_e(name.replace('_', ' '))}: <b>{value:+.4f}</b></li>"
                    for name, value in summary["gains"].items() if name not in ("split", "folds"))
    return (f"<p>On {_e(label)} ({summary['splits']['report']['images']} images; "
            f"{_e(summary['splits']['note'])}):</p><ul>{items}</ul>")


def _chart(name, charts):
    if name not in charts:
        return f'<p class="note">{MISSING[name]}</p>'
    data = base64.b64encode(charts[name]).decode()
    title = CHART_SECTIONS[name][0]
    return f'<img class="chart" id="chart-{name}" alt="{_e(title)}" src="data:image/png;base64,{data}">'


def render_page(records, charts):
    """The page of `records` (ExperimentRecords) with `charts` ({name: PNG bytes}, draw_charts' output)."""
    sections = []
    for name, (title, caption) in CHART_SECTIONS.items():
        body = f"<p>{_e(caption)}</p>{_chart(name, charts)}"
        if name == "learning_curves":
            body += f"<h2>Leaderboard</h2>{_leaderboard(records)}"
        if name == "per_class_ap50":
            body += _per_class_table(records)
        if name == "ensemble_gain" and records.summary:
            body += _gains(records.summary)
        sections.append(f'<section id="{name}"><h2>{_e(title)}</h2>{body}</section>')
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>detfuse report: {_e(records.name)}</title>
<style>{STYLE}</style></head>
<body>
<h1>detfuse report: {_e(records.name)}</h1>
<p class="meta">Experiment <code>{_e(records.uri)}</code>. Per-trial TensorBoard logs:
<code>tensorboard --logdir {_e(records.uri)}</code></p>
<div>{_stats(records)}</div>
{''.join(sections)}
<script>{SCRIPT}</script>
</body></html>
"""
