"""The pipeline job: tune -> ensemble -> export -> report in one job on the cluster it runs in.

    detfuse pipeline CONFIG [key=value ...]
    ray submit cluster.yaml ray_jobs/pipeline.py -- CONFIG [key=value ...]

Each stage records its completion under <storage>/<name>/pipeline/. Running the same command again after a
failure resumes at the first unfinished stage; an unfinished tune stage resumes its Tune experiment. A failed
report (the last stage, a view of the others' results) is a warning, not a failed pipeline: see report_stage.
"""

import json
import sys
import time
import traceback

from detfuse.core.storage import experiment_storage
from detfuse.core.errors import UserError
from detfuse.stages.experiment import load_experiment
from detfuse.stages.stage_markers import STOPPED, marker_uri


class StageStopped(UserError):
    """A stage stopped on purpose (Ctrl-C, SIGUSR1) before it finished: the pipeline exits as the stage did."""

    exit_code = STOPPED



def run_stage(experiment, stage, run):
    """Run `run()` unless the stage's marker says it already completed; write the marker when it succeeds."""
    marker = marker_uri(experiment.uri, stage)
    if experiment_storage.exists(marker):
        print(f"[pipeline] {stage}: already complete ({marker}); skipping", flush=True)
        return
    print(f"[pipeline] {stage}: starting", flush=True)
    started = time.time()
    code = run()
    if code == STOPPED:
        raise StageStopped(f"the {stage} stage was stopped before it finished; run the same command again to "
                           f"continue it")
    if code != 0:
        raise UserError(f"the {stage} stage failed (exit {code}); fix the cause and run the same command again "
                        f"to resume from this stage")
    experiment_storage.write_text(marker, json.dumps({"stage": stage, "started": started, "finished": time.time()}))


def run_pipeline(config_path, overrides=(), verbose=False):
    """`detfuse pipeline`: the experiment config is loaded once and the Experiment handed to every stage."""
    from ray import tune

    from detfuse.stages.ensemble import ensemble_experiment
    from detfuse.stages.export import export_for
    from detfuse.stages.report import run_report
    from detfuse.stages.tune import print_notices, tune_experiment

    experiment = load_experiment(config_path, overrides)
    print_notices(experiment)
    resume = tune.Tuner.can_restore(experiment.uri)  # an unfinished tune stage continues, never restarts
    run_stage(experiment, "tune", lambda: tune_experiment(experiment, resume=resume, verbose=verbose))
    run_stage(experiment, "ensemble", lambda: ensemble_experiment(experiment, verbose=verbose))
    run_stage(experiment, "export", lambda: export_for(experiment))
    report_failure = report_stage(experiment, run_report)
    print_final_summary(experiment, report_failure=report_failure)
    return 0


def report_stage(experiment, run_report):
    """The last stage, which only reads what the others wrote: its failure leaves their results (the bundle above
    all) intact, so the pipeline still prints its summary and exits 0, with a warning naming the command that
    writes the report again. Its marker stays unwritten, so the same pipeline command retries only the report.
    Returns None, or the warning."""
    try:
        run_stage(experiment, "report", lambda: run_report(experiment.uri))
        return None
    except Exception as error:  # noqa: BLE001 - any failure of the report, a bug included, is only the report's
        if not isinstance(error, UserError):
            traceback.print_exc(file=sys.stderr)
        warning = (f"WARNING: the report stage failed ({type(error).__name__}: {error}); the tune, ensemble and "
                   f"export results are complete. Write the report with `detfuse report {experiment.uri}` (or run "
                   f"this pipeline command again)")
        print(warning, file=sys.stderr, flush=True)
        return warning


def print_final_summary(experiment, stream=None, report_failure=None):
    from detfuse.stages.leaderboard import read_leaderboard, top_per_family
    from detfuse.stages.report import default_report_uri

    stream = stream or sys.stdout
    rows = read_leaderboard(experiment.uri)
    summary = experiment_storage.read_json(experiment_storage.join(experiment.uri, "ensemble", "summary.json"))
    latest = experiment_storage.read_json(experiment_storage.join(experiment.export_to, "latest.json"))
    report = summary["splits"]["report"]["split"]
    print(f"\n== pipeline {experiment.name} complete", file=stream)
    for family, best in sorted(top_per_family(rows, 1).items()):
        print(f"  best {family}: {best[0]['architecture']} {best[0]['trial_id']} mAP50 {best[0]['best_mAP50']:.4f} "
              f"(val, from tuning)", file=stream)
    best_single = summary["best_single"]
    print(f"  best single model on {report}: mAP50 {best_single['mAP50'][report]:.4f} ({best_single['trial_id']})",
          file=stream)
    cross = summary["cross_family"]
    if cross is not None:
        print(f"  cross-family ensemble on {report}: mAP50 {cross['mAP50'][report]:.4f} "
              f"({cross['mAP50'][report] - best_single['mAP50'][report]:+.4f}) with {len(cross['members'])} members",
              file=stream)
    print(f"  bundle: {experiment_storage.join(experiment.export_to, latest['bundle'])}", file=stream)
    if report_failure is None:
        print(f"  report: {default_report_uri(experiment.uri)} (detfuse report {experiment.uri} writes it again)",
              file=stream)
    else:
        print(f"  report: not written: {report_failure}", file=stream)
    print(f"  predict: detfuse predict {experiment_storage.join(experiment.export_to, 'latest.json')} IMAGES... "
          f"--out predictions", file=stream)
