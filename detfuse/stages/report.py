"""`detfuse report`: one self-contained HTML page (and its charts as PNG files) on what a search did.

    detfuse report EXPERIMENT_URI [--out FILE]

The report only reads the experiment's records, never Tune's internals or a model: leaderboard.json (trials,
hyperparameters, ASHA stops), each trial's progress.csv and params.json (learning curve, time, resources),
experiment.json (which hyperparameters each space searched, on what budget), ensemble/summary.json (per-class
AP50, the ensemble's gains) and the pipeline's stage markers (wall time). Charts: detfuse/stages/report_charts.py;
the page: detfuse/stages/report_page.py. Without --out it is written to <experiment>/report/report.html, each chart
beside it as report_<chart>.png; the same records give the same files, so running it again changes nothing.
"""

import csv
import io
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from detfuse.core.errors import UserError
from detfuse.core.storage import experiment_storage
from detfuse.stages.leaderboard import tuned_experiment
from detfuse.stages.stage_markers import STAGES, stage_seconds



@dataclass
class TrialRecord:
    """One trial as the report shows it."""

    trial_id: str
    family: str
    architecture: str
    hparams: dict
    max_epochs: float  # the trial's budget
    epochs_trained: float
    best_mAP50: float | None
    best_epoch: float | None
    stopped_early: bool  # its family's ASHA stopped it before its budget
    error: str | None
    interrupted: bool = False  # the search was stopped (Ctrl-C, SIGUSR1) before this trial finished
    curve: list = field(default_factory=list)  # [(epoch, mAP50)] of every report
    seconds: float = 0.0  # training time (Tune's time_total_s at its last report)
    cpus: float = 0.0
    gpus: float = 0.0  # what the trial asked for (a DDP trial: all its workers' GPUs)
    epoch_seconds: float | None = None  # seconds per epoch, see _paces
    pace: str = ""  # how epoch_seconds was found, shown beside what ASHA saved

    @property
    def seconds_saved(self):
        """Time ASHA saved: the rest of the budget at the trial's pace, for a trial it stopped."""
        if not self.stopped_early or self.interrupted or not self.epoch_seconds:
            return 0.0
        return self.epoch_seconds * max(0.0, self.max_epochs - self.epochs_trained)


@dataclass
class ExperimentRecords:
    """Everything the report shows, read from one experiment's storage."""

    uri: str
    name: str
    trials: list  # TrialRecord, best mAP50 first (leaderboard order)
    searched: dict  # architecture -> {hyperparameter searched: its domain record or None} (see _searched)
    summary: dict | None  # ensemble/summary.json, None before the ensemble stage
    stage_seconds: dict  # pipeline stage -> wall seconds, for the stages that recorded them

    @property
    def families(self):
        return sorted({trial.family for trial in self.trials})

    @property
    def unit(self):
        """What compute is counted in: "GPU" when any trial asked for GPUs, else "CPU"."""
        return "GPU" if any(t.gpus for t in self.trials) else "CPU"

    def trial_hours(self, trial):
        """(spent, saved by ASHA) of one trial in unit-hours: what it asked for times its time."""
        per = trial.gpus if self.unit == "GPU" else trial.cpus
        return trial.seconds * per / 3600, trial.seconds_saved * per / 3600

    def hours(self):
        """(spent, saved by ASHA) of all trials in unit-hours."""
        each = [self.trial_hours(t) for t in self.trials]
        return sum(spent for spent, _ in each), sum(saved for _, saved in each)

    def per_class(self):
        """(report label, [(column, family or None for the ensemble, {class: AP50})]) from summary.json: each
        family's best model and the ensemble; None before the ensemble stage or when it predates per-class AP50."""
        summary = self.summary
        if not summary or "best_per_family" not in summary:
            return None
        label = summary["splits"]["report"]["split"]
        columns = [(f"best {family} ({chosen_trials(entry)})", family, entry["per_class_AP50"][label])
                   for family, entry in sorted(summary["best_per_family"].items())]
        name, ensemble = ensemble_of(summary)
        if ensemble is not None:
            columns.append((name, None, ensemble["per_class_AP50"][label]))
        return label, columns


def chosen_trials(entry):
    """Which trial a best-model entry of summary.json stands for: its numbers on the report split average the
    trial each fold chose on its fit part, so one id when the folds agree, else each fold's."""
    folds = entry.get("folds") or []
    picks = list(dict.fromkeys(fold["trial_id"] for fold in folds))
    if len(picks) <= 1:
        return picks[0] if picks else entry["trial_id"]
    return "chosen per fold: " + ", ".join(f"{fold['trial_id']} on {fold['report']}" for fold in folds)


def ensemble_of(summary):
    """(label, entry) of the ensemble the report compares: the cross-family one, else the written one's family."""
    if summary.get("cross_family") is not None:
        return "cross-family ensemble", summary["cross_family"]
    final = summary.get("final", {}).get("ensemble")
    if final in summary.get("family_ensembles", {}):
        return f"{final} ensemble", summary["family_ensembles"][final]
    return None, None


def _trial_dir(experiment_uri, row):
    """The trial's directory under the experiment (its leaderboard path may name another mount of the storage)."""
    return experiment_storage.join(experiment_uri, row["path"].rstrip("/").rsplit("/", 1)[-1])


def _progress(trial_dir):
    """[(epoch, mAP50)] and [(epoch, time_total_s)] of every report, from Tune's progress.csv."""
    uri = experiment_storage.join(trial_dir, "progress.csv")
    if not experiment_storage.exists(uri):
        return [], []
    rows = list(csv.DictReader(io.StringIO(experiment_storage.read_text(uri))))
    curve = [(float(r["epoch"]), float(r["mAP50"])) for r in rows if r.get("epoch") and r.get("mAP50")]
    times = [(float(r["epoch"]), float(r["time_total_s"])) for r in rows if r.get("epoch") and r.get("time_total_s")]
    return curve, times


def _measured_pace(times):
    """Seconds per epoch between a trial's first and last report (its startup before the first excluded), or None
    with fewer than two reports."""
    if len(times) < 2 or times[-1][0] <= times[0][0]:
        return None
    return (times[-1][1] - times[0][1]) / (times[-1][0] - times[0][0])


def _paces(trials, times):
    """Each trial's seconds per epoch: measured between its reports; else (one report) the median of its
    architecture's measured trials; else its whole time over its epochs, startup included (an overestimate)."""
    measured = {t.trial_id: _measured_pace(times[t.trial_id]) for t in trials}
    for trial in trials:
        if measured[trial.trial_id] is not None:
            trial.epoch_seconds, trial.pace = measured[trial.trial_id], "measured between its reports"
            continue
        others = [measured[t.trial_id] for t in trials
                  if t.architecture == trial.architecture and measured[t.trial_id] is not None]
        if others:
            trial.epoch_seconds = statistics.median(others)
            trial.pace = f"median of {len(others)} {trial.architecture} trial(s)"
        elif trial.epochs_trained > 0:
            trial.epoch_seconds = trial.seconds / trial.epochs_trained
            trial.pace = "its whole time over its epochs, startup included"


def _resources(trial_dir):
    uri = experiment_storage.join(trial_dir, "params.json")
    if not experiment_storage.exists(uri):
        return 0.0, 0.0
    resources = experiment_storage.read_json(uri).get("resources") or {}
    return float(resources.get("cpu", 0)), float(resources.get("gpu", 0))


def _searched(experiment_json, trials):
    """Architecture -> {hyperparameter its space searched: what it was searched over ({"choice": [...]} or
    {"range": [low, high], "log": bool}), or None when unknown}: as experiment.json records them, else (older
    experiments) the hyperparameters whose values differ between the architecture's trials."""
    spaces = (experiment_json or {}).get("spaces")
    if spaces:
        searched = {}
        for space in spaces:  # two spaces of one architecture: the first's record of a name is kept
            domains = searched.setdefault(space["architecture"], {})
            for name, domain in sorted(space["searched"].items()):
                domains.setdefault(name, domain)
        return searched
    searched = {}
    for architecture in dict.fromkeys(t.architecture for t in trials):
        rows = [t.hparams for t in trials if t.architecture == architecture]
        searched[architecture] = {name: None for name in sorted(rows[0])
                                  if len({repr(r.get(name)) for r in rows}) > 1}
    return searched


def read_records(experiment_uri):
    """The ExperimentRecords of the experiment at `experiment_uri` (<storage>/<name>, local or s3://)."""
    experiment_uri, leaderboard_uri = tuned_experiment(experiment_uri)
    rows = experiment_storage.read_json(leaderboard_uri, "it is written by `detfuse tune`")
    if not isinstance(rows, list) or not all(isinstance(r, dict) and {"trial_id", "path"} <= set(r) for r in rows):
        raise UserError(f"{leaderboard_uri}: expected a list of trial rows with trial_id and path, as "
                        f"`detfuse tune` writes it; run `detfuse tune CONFIG --resume` to write it again")
    trials, times = [], {}
    for row in rows:
        trial_dir = _trial_dir(experiment_uri, row)
        curve, times[row["trial_id"]] = _progress(trial_dir)
        cpus, gpus = _resources(trial_dir)
        trials.append(TrialRecord(
            trial_id=row["trial_id"], family=row["family"], architecture=row["architecture"],
            hparams=row.get("hparams") or {}, max_epochs=float(row.get("max_epochs") or 0.0),
            epochs_trained=float(row.get("epochs_trained") or 0.0), best_mAP50=row.get("best_mAP50"),
            best_epoch=row.get("best_epoch"), stopped_early=bool(row.get("stopped_early")), error=row.get("error"),
            interrupted=bool(row.get("interrupted")), curve=curve,
            seconds=max((seconds for _, seconds in times[row["trial_id"]]), default=0.0), cpus=cpus, gpus=gpus))
    _paces(trials, times)
    experiment_json_uri = experiment_storage.join(experiment_uri, "experiment.json")
    experiment_json = (experiment_storage.read_json(experiment_json_uri)
                       if experiment_storage.exists(experiment_json_uri) else None)
    summary_uri = experiment_storage.join(experiment_uri, "ensemble", "summary.json")
    summary = experiment_storage.read_json(summary_uri) if experiment_storage.exists(summary_uri) else None
    return ExperimentRecords(
        uri=experiment_uri, name=(experiment_json or {}).get("name") or experiment_uri.rstrip("/").rsplit("/", 1)[-1],
        trials=trials, searched=_searched(experiment_json, trials), summary=summary,
        # the report's own time is not known while it runs (a previous run's would make a rerun's page differ)
        stage_seconds=stage_seconds(experiment_uri, STAGES[:STAGES.index("report")]))


def default_report_uri(experiment_uri):
    return experiment_storage.join(experiment_uri, "report", "report.html")


def chart_uri(report_uri, chart):
    """Where a chart's PNG goes: beside the page, named after it (report.html -> report_<chart>.png)."""
    parent, _, page = report_uri.rpartition("/")
    stem = page.rsplit(".", 1)[0]
    return f"{parent}/{stem}_{chart}.png" if parent else f"{stem}_{chart}.png"


def write_report(experiment_uri, out=None):
    """Write the report of the experiment at `experiment_uri` to `out` (default: in the experiment); returns its
    URI."""
    from detfuse.stages.report_charts import draw_charts
    from detfuse.stages.report_page import render_page

    started = time.perf_counter()
    records = read_records(experiment_uri)
    report_uri = default_report_uri(records.uri) if out is None else (
        out if out.startswith("s3://") else str(Path(out).expanduser().resolve()))
    charts = draw_charts(records)
    for chart, png in charts.items():
        experiment_storage.write_bytes(chart_uri(report_uri, chart), png)
    experiment_storage.write_text(report_uri, render_page(records, charts))
    print(f"report: {report_uri} ({len(charts)} charts, {time.perf_counter() - started:.1f} s)", flush=True)
    return report_uri


def run_report(experiment_uri, out=None):
    """`detfuse report`; returns the exit code."""
    write_report(experiment_uri, out)
    return 0
