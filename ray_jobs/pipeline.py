"""The pipeline job: tune -> ensemble -> export in one job on the cluster it runs in.

    detfuse pipeline CONFIG [key=value ...]
    ray submit cluster.yaml ray_jobs/pipeline.py -- CONFIG [key=value ...]

Each stage records its completion under <storage>/<name>/pipeline/. Running the same command again after a
failure resumes at the first unfinished stage; an unfinished tune stage resumes its Tune experiment.
"""

import json
import sys
import time

from detfuse import experiment_storage
from detfuse.errors import UserError
from detfuse.experiment_config import load_experiment

STAGES = ("tune", "ensemble", "export")


def stage_marker(experiment, stage):
    return experiment_storage.join(experiment.uri, "pipeline", f"{stage}.json")


def run_stage(experiment, stage, run):
    """Run `run()` unless the stage's marker says it already completed; write the marker when it succeeds."""
    marker = stage_marker(experiment, stage)
    if experiment_storage.exists(marker):
        print(f"[pipeline] {stage}: already complete ({marker}); skipping", flush=True)
        return
    print(f"[pipeline] {stage}: starting", flush=True)
    started = time.time()
    code = run()
    if code != 0:
        raise UserError(f"the {stage} stage failed (exit {code}); fix the cause and run the same command again "
                        f"to resume from this stage")
    experiment_storage.write_text(marker, json.dumps({"stage": stage, "started": started, "finished": time.time()}))


def run_pipeline(config_path, overrides=(), verbose=False):
    from detfuse.storage.s3 import S3Settings
    from ray_jobs.ensemble import run_ensemble
    from ray_jobs.export import run_export
    from ray_jobs.tune import run_tune
    from ray import tune

    experiment = load_experiment(config_path, overrides)
    resume = tune.Tuner.can_restore(experiment.uri)  # an unfinished tune stage continues, never restarts
    run_stage(experiment, "tune", lambda: run_tune(config_path, overrides, resume=resume, verbose=verbose))
    run_stage(experiment, "ensemble", lambda: run_ensemble(experiment.uri, experiment.ensemble_top,
                                                           method=experiment.ensemble_method, seed=experiment.seed,
                                                           fit_mode=experiment.ensemble_fit_mode,
                                                           tta=experiment.ensemble_tta,
                                                           verbose=verbose))
    run_stage(experiment, "export", lambda: run_export(experiment.uri, experiment.export_to,
                                                       S3Settings(sse=experiment.export_sse)))
    print_final_summary(experiment)
    return 0


def print_final_summary(experiment, stream=None):
    from detfuse.leaderboard import read_leaderboard, top_per_family

    stream = stream or sys.stdout
    rows = read_leaderboard(experiment.uri)
    summary = json.loads(experiment_storage.read_text(
        experiment_storage.join(experiment.uri, "ensemble", "summary.json")))
    latest = json.loads(experiment_storage.read_text(experiment_storage.join(experiment.export_to, "latest.json")))
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
    print(f"  predict: detfuse predict {experiment_storage.join(experiment.export_to, 'latest.json')} IMAGES... "
          f"--out predictions", file=stream)


def main(argv=None):
    """`python ray_jobs/pipeline.py`: the same as `detfuse pipeline` (for `ray submit`)."""
    from detfuse.cli import main as detfuse_main

    return detfuse_main(["pipeline", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
