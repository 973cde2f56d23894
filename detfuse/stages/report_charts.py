"""The report's charts as PNG bytes, drawn with matplotlib's Agg backend: images, so the page needs no script or
font from anywhere to show them, and the same files serve as the PNGs written beside it.

Each chart reads only an ExperimentRecords (detfuse/stages/report.py); a chart whose records are missing (no
ensemble yet, nothing searched) is left out, and the page says why.
"""

import io
import math

import matplotlib

matplotlib.use("Agg")  # no display; chosen before pyplot is imported
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import NullFormatter  # noqa: E402

# families take these in sorted-name order; green is kept for the ensemble
FAMILY_PALETTE = ("#1f77b4", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f")
ENSEMBLE_COLOUR = "#2ca02c"
PER_CLASS_SHOWN = 30  # more classes: the chart shows those the ensemble does worst on, the table all of them


def family_colour(family, families):
    """`family`'s colour among `families` (the experiment's, sorted): the same family keeps its colour in every
    chart of one report."""
    return FAMILY_PALETTE[sorted(families).index(family) % len(FAMILY_PALETTE)]


def _png(figure):
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, metadata={"Software": None})  # no version: same bytes each run
    plt.close(figure)
    return buffer.getvalue()


def learning_curves(records):
    """mAP50 against epoch for every trial, coloured by family, an X where its family's ASHA stopped it."""
    figure, axes = plt.subplots(figsize=(9, 4.8))
    families = records.families
    for trial in records.trials:
        if not trial.curve:
            continue
        epochs, values = zip(*trial.curve)
        colour = family_colour(trial.family, families)
        axes.plot(epochs, values, color=colour, marker="o", markersize=3, linewidth=1.5, alpha=0.85)
        if trial.stopped_early:
            axes.plot(epochs[-1], values[-1], marker="X", markersize=11, color=colour, markeredgecolor="black")
        elif trial.interrupted:
            axes.plot(epochs[-1], values[-1], marker="o", markersize=10, markerfacecolor="none", color=colour)
        axes.annotate(trial.trial_id, (epochs[-1], values[-1]), textcoords="offset points", xytext=(5, 3),
                      fontsize=7, color=colour)
    budgets = sorted({(t.family, t.max_epochs) for t in records.trials if t.max_epochs})
    for family, budget in budgets:
        axes.axvline(budget, color=family_colour(family, families), linestyle=":", linewidth=1)
    handles = [Line2D([], [], color=family_colour(f, families), marker="o", label=f) for f in families]
    handles.append(Line2D([], [], linestyle="", marker="X", markersize=9, color="grey", markeredgecolor="black",
                          label="stopped by ASHA"))
    if any(t.interrupted for t in records.trials):
        handles.append(Line2D([], [], linestyle="", marker="o", markersize=9, markerfacecolor="none", color="grey",
                              label="interrupted (search stopped)"))
    handles.append(Line2D([], [], color="grey", linestyle=":", label="full budget"))
    axes.legend(handles=handles, loc="upper left", fontsize=8)
    axes.set_xlabel("epoch (images seen / training images)")
    axes.set_ylabel("val mAP50")
    stopped = sum(t.stopped_early for t in records.trials)
    interrupted = sum(t.interrupted for t in records.trials)
    axes.set_title(f"Learning curves: {len(records.trials)} trials, {stopped} stopped early by ASHA"
                   + (f", {interrupted} interrupted" if interrupted else ""))
    axes.grid(alpha=0.3)
    figure.tight_layout()
    return _png(figure)


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _label(value):
    return value if isinstance(value, str) else repr(value)


def _place(axes, values, domain):
    """The x positions of `values` of one hyperparameter on `axes`, its axis set up for what it was searched over:
    every choice at an even position (the untried ones too), a range in full (log-scaled when sampled so)."""
    if (domain is not None and "choice" in domain) or not all(_is_number(v) for v in values):
        categories = [_label(v) for v in (domain or {}).get("choice", [])]
        categories += [label for label in dict.fromkeys(map(_label, values)) if label not in categories]
        axes.set_xticks(range(len(categories)), categories, fontsize=8)
        axes.set_xlim(-0.5, len(categories) - 0.5)
        return [categories.index(_label(v)) for v in values]
    if domain is not None:
        low, high = domain["range"]
        if domain["log"]:
            axes.set_xscale("log")
            axes.set_xlim(low / 1.2, high * 1.2)
            # the range's ends and middle, in plain text: log axes label decades in math text, which is off
            # (draw_charts), and a range within a decade would have no decade to label
            _plain_ticks(axes, [low, math.sqrt(low * high), high])
        else:
            margin = (high - low) * 0.05
            axes.set_xlim(low - margin, high + margin)
    elif values and min(values) > 0 and max(values) / min(values) > 20:
        axes.set_xscale("log")
        _plain_ticks(axes, [min(values), math.sqrt(min(values) * max(values)), max(values)])
    return values


def _plain_ticks(axes, ticks):
    axes.set_xticks(ticks, [f"{tick:.2g}" for tick in ticks], fontsize=8)
    axes.xaxis.set_minor_formatter(NullFormatter())


def hyperparameters(records):
    """Best mAP50 of each trial against each hyperparameter its architecture searched: one small scatter per
    (architecture, hyperparameter); hollow markers for trials ASHA stopped. None when nothing was searched."""
    rows = [(architecture, list(domains)) for architecture, domains in records.searched.items() if domains
            and any(t.architecture == architecture for t in records.trials)]
    if not rows:
        return None
    columns = max(len(names) for _, names in rows)
    figure, grid = plt.subplots(len(rows), columns, figsize=(3.2 * columns + 0.5, 2.8 * len(rows)), squeeze=False)
    families = records.families
    for row, (architecture, names) in enumerate(rows):
        trials = [t for t in records.trials if t.architecture == architecture and t.best_mAP50 is not None]
        for column in range(columns):
            axes = grid[row][column]
            if column >= len(names):
                axes.set_visible(False)
                continue
            name = names[column]
            values = [t.hparams.get(name) for t in trials]
            xs = _place(axes, values, records.searched[architecture][name])
            for x, trial in zip(xs, trials):
                colour = family_colour(trial.family, families)
                axes.scatter([x], [trial.best_mAP50], s=40, edgecolors=colour,
                             facecolors="none" if trial.stopped_early else colour, linewidths=1.5)
            axes.set_title(f"{architecture}: {name}", fontsize=9)
            axes.tick_params(labelsize=8)
            axes.grid(alpha=0.3)
            if column == 0:
                axes.set_ylabel("best val mAP50", fontsize=8)
    figure.suptitle("Searched hyperparameters against best mAP50 (hollow: stopped by ASHA)", fontsize=10)
    figure.tight_layout()
    return _png(figure)


def per_class_ap50(records):
    """Per-class AP50 on the report split of each family's best model and of the ensemble, as horizontal bars (class
    names stay readable); with more than PER_CLASS_SHOWN classes, the ones the ensemble (else the first column) does
    worst on. None before the ensemble stage, or when its summary predates per-class numbers."""
    per_class = records.per_class()
    if per_class is None:
        return None
    label, columns = per_class
    classes = list(dict.fromkeys(c for _, _, values in columns for c in values))
    judged = columns[-1][2]
    shown = sorted(classes, key=lambda c: judged.get(c, 0.0))[:PER_CLASS_SHOWN]
    shown = [c for c in classes if c in shown]  # in the dataset's order
    figure, axes = plt.subplots(figsize=(9, 0.2 * len(shown) * len(columns) + 0.4 * len(shown) + 1.6))
    height = 0.8 / len(columns)
    positions = list(range(len(shown)))[::-1]
    for index, (name, family, values) in enumerate(columns):
        ys = [y + ((len(columns) - 1) / 2 - index) * height for y in positions]
        widths = [values.get(c, 0.0) for c in shown]
        colour = ENSEMBLE_COLOUR if family is None else family_colour(family, records.families)
        axes.barh(ys, widths, height, label=name, color=colour)
        for y, width in zip(ys, widths):
            axes.text(width, y, f" {width:.2f}", va="center", fontsize=6)
    axes.set_yticks(positions, shown, fontsize=8)
    axes.set_xlim(0, min(1.15, max([0.1] + [v for _, _, values in columns for v in values.values()]) * 1.2 + 0.02))
    axes.set_xlabel(f"AP50 on {label}")
    axes.legend(fontsize=8, loc="lower right")
    images = records.summary["splits"]["report"]["images"]
    title = f"Per-class AP50 on {label} ({images} images)"
    if len(shown) < len(classes):
        title += f": the {len(shown)} of {len(classes)} classes lowest for {columns[-1][0]} (all in the table)"
    axes.set_title(title, fontsize=10)
    axes.grid(axis="x", alpha=0.3)
    figure.tight_layout()
    return _png(figure)


def ensemble_gain(records):
    """mAP50 on the report split of the best single model, each same-family ensemble and the cross-family one,
    with each ensemble's gain over the best single model. None before the ensemble stage."""
    summary = records.summary
    if not summary:
        return None
    label = summary["splits"]["report"]["split"]
    best = summary["best_single"]
    bars = [(f"best single ({best['trial_id']}, {best['family']})", best["mAP50"][label], "grey")]
    bars += [(f"{family} ensemble ({len(e['members'])} of {len(e['candidates'])})", e["mAP50"][label],
              family_colour(family, records.families)) for family, e in sorted(summary["family_ensembles"].items())]
    if summary.get("cross_family") is not None:
        cross = summary["cross_family"]
        bars.append((f"cross-family ensemble ({len(cross['members'])} of {len(cross['candidates'])})",
                     cross["mAP50"][label], ENSEMBLE_COLOUR))
    figure, axes = plt.subplots(figsize=(9, 0.7 * len(bars) + 1.6))
    names, values, colours = zip(*bars)
    positions = range(len(bars))[::-1]
    axes.barh(list(positions), values, color=colours)
    axes.set_yticks(list(positions), names, fontsize=8)
    baseline = best["mAP50"][label]
    for y, value in zip(positions, values):
        gain = "" if y == len(bars) - 1 else f"  ({value - baseline:+.4f} over best single)"
        axes.text(value, y, f" {value:.4f}{gain}", va="center", fontsize=8)
    axes.set_xlim(0, max(values) * 1.6 + 0.01)
    axes.set_xlabel(f"mAP50 on {label} ({summary['splits']['report']['images']} images)")
    axes.set_title("What the ensembles add")
    figure.tight_layout()
    return _png(figure)


def compute(records):
    """Hours each trial trained, and the hours ASHA saved by stopping it before its budget (hatched): GPU-hours
    when the trials asked for GPUs, else CPU-hours."""
    trials = records.trials
    figure, axes = plt.subplots(figsize=(9, 0.32 * len(trials) + 1.8))
    positions = list(range(len(trials)))[::-1]
    spent, saved = zip(*(records.trial_hours(t) for t in trials)) if trials else ((), ())
    colours = [family_colour(t.family, records.families) for t in trials]
    axes.barh(positions, list(spent), color=colours)
    axes.barh(positions, list(saved), left=list(spent), color="white", edgecolor=colours, hatch="///")
    axes.set_yticks(positions, [f"{t.architecture} {t.trial_id}" for t in trials], fontsize=8)
    unit = records.unit
    axes.set_xlabel(f"{unit}-hours")
    total_spent, total_saved = records.hours()
    saved_share = total_saved / (total_spent + total_saved) if total_spent + total_saved else 0.0
    axes.set_title(f"{unit}-hours: {total_spent:.3g} spent, {total_saved:.3g} saved by ASHA "
                   f"({saved_share:.0%} of running every trial to its budget)", fontsize=10)
    axes.legend(handles=[plt.Rectangle((0, 0), 1, 1, color="grey", label="trained"),
                         plt.Rectangle((0, 0), 1, 1, facecolor="white", edgecolor="grey", hatch="///",
                                       label="saved by ASHA (rest of budget at the trial's pace)")],
                fontsize=8, loc="lower right")
    figure.tight_layout()
    return _png(figure)


CHARTS = {"learning_curves": learning_curves, "hyperparameters": hyperparameters, "per_class_ap50": per_class_ap50,
          "ensemble_gain": ensemble_gain, "compute": compute}


def draw_charts(records):
    """{chart name: PNG bytes} of every chart the records allow, in the page's order. Every text is drawn as
    written: class names, trial ids and hyperparameter values are the user's, and matplotlib would read a "$" in
    them as math (a class named "$\\frac$" fails to parse, "cost $5 or $10" loses its dollars)."""
    with plt.rc_context({"text.parse_math": False}):
        charts = {name: draw(records) for name, draw in CHARTS.items()}
    return {name: png for name, png in charts.items() if png is not None}

