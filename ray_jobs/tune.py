"""The Tune job: ASHA search over both detector families on the Ray cluster it runs in.

    detfuse tune CONFIG [key=value ...] [--resume]
    ray submit cluster.yaml ray_jobs/tune.py -- CONFIG [key=value ...] [--resume]

Writes Tune's state, trial checkpoints, TensorBoard/CSV logs and `leaderboard.json` under
`<storage>/<name>/`. `--resume` continues a killed run from that storage without repeating finished trials.
"""

import json
import sys

from ray import tune

import trainables
from detfuse import experiment_storage
from detfuse.errors import UserError
from detfuse.experiment_config import load_experiment
from detfuse.leaderboard import build_leaderboard, top_per_family, write_leaderboard
from detfuse.scheduling import PerFamilyASHA
from detfuse.search import MultiSpaceSearcher
from detfuse.status_table import StatusTable
from ray_jobs.cluster import connect, node_capacities


def trial_resources(config):
    """The resources Tune reserves for one trial, from its `resources` setting.

    A DDP trial (several whole GPUs) reserves only its own process: its Ray Train workers ask the cluster for
    their GPUs themselves, and a Tune reservation of the same GPUs would leave them waiting forever.
    """
    cpu, gpu = config["resources"]["cpu"], config["resources"]["gpu"]
    if gpu > 1:
        return tune.PlacementGroupFactory([{"CPU": 1}])
    return tune.PlacementGroupFactory([{"CPU": cpu, "GPU": gpu}] if gpu else [{"CPU": cpu}])


def check_resources_fit(experiment):
    """Every trial must fit on the cluster (DDP workers: each on some node, all of them in total), or Tune
    would wait for it forever."""
    capacities = node_capacities()
    for entry in experiment.entries:
        cpu, gpu = entry.settings["resources"]["cpu"], entry.settings["resources"]["gpu"]
        workers = int(gpu) if gpu > 1 else 1
        per_worker = (cpu / workers, gpu / workers)
        fits_a_node = any(per_worker[0] <= node_cpu and per_worker[1] <= node_gpu for node_cpu, node_gpu in capacities)
        if not fits_a_node or sum(node_gpu for _, node_gpu in capacities) < gpu:
            largest = max(capacities, default=(0, 0))
            raise UserError(
                f"{experiment.path}: space '{entry.space.name}' asks for {cpu:g} CPU and {gpu:g} GPU per trial, "
                f"more than this cluster offers (largest node: {largest[0]:g} CPU, {largest[1]:g} GPU; "
                f"{sum(g for _, g in capacities):g} GPUs in all); lower its resources or add larger nodes")


def trial_name(trial):
    """Short, readable trial names and directories (Tune's default packs every hyperparameter into them)."""
    return f"{trial.config['architecture']}_{trial.trial_id}"


def trainable():
    return tune.with_resources(trainables.run_trial, trial_resources)


def build_tuner(experiment, resume, verbose):
    run_config = tune.RunConfig(
        name=experiment.name,
        storage_path=experiment.storage,
        checkpoint_config=tune.CheckpointConfig(num_to_keep=experiment.checkpoints_per_trial,
                                                checkpoint_score_attribute="mAP50",
                                                checkpoint_score_order="max"),
        failure_config=tune.FailureConfig(max_failures=experiment.max_failures),
        callbacks=[StatusTable(interval=10.0 if verbose else 30.0), *wandb_callbacks(experiment)],
        verbose=2 if verbose else 0,
    )
    can_restore = tune.Tuner.can_restore(experiment.uri)
    if resume:
        if not can_restore:
            raise UserError(f"--resume: no experiment to resume at {experiment.uri} (run without --resume)")
        return tune.Tuner.restore(experiment.uri, trainable=trainable(), resume_unfinished=True,
                                  resume_errored=True)
    if can_restore:
        raise UserError(f"an experiment named '{experiment.name}' already exists at {experiment.uri}: "
                        f"pass --resume to continue it, or set another name (name=...)")
    tune_config = tune.TuneConfig(
        search_alg=MultiSpaceSearcher(experiment.entries, searcher=experiment.searcher, seed=experiment.seed),
        scheduler=PerFamilyASHA(experiment.budgets(), reduction_factor=experiment.reduction_factor),
        num_samples=sum(entry.num_samples for entry in experiment.entries),
        max_concurrent_trials=experiment.max_concurrent_trials,
        reuse_actors=False,
        trial_name_creator=trial_name,
        trial_dirname_creator=trial_name,
    )
    return tune.Tuner(trainable(), tune_config=tune_config, run_config=run_config)


def wandb_callbacks(experiment):
    """Ray's W&B callback logs every trial of both families from the driver: no wiring inside trainables."""
    if experiment.wandb is None:
        return []
    try:
        from ray.air.integrations.wandb import WandbLoggerCallback
    except ImportError:
        raise UserError("wandb is enabled but not installed: pip install 'detfuse[wandb]' on the head node") from None
    settings = experiment.wandb
    return [WandbLoggerCallback(project=settings["project"], entity=settings["entity"],
                                group=settings["group"] or experiment.name, mode=settings["mode"],
                                dir=settings["dir"], excludes=["hparams"], log_config=True)]


def print_summary(rows, leaderboard_uri, stream=None):
    from tabulate import tabulate

    stream = stream or sys.stdout
    print(f"\nleaderboard: {leaderboard_uri}", file=stream)
    for family, best in sorted(top_per_family(rows, 3).items()):
        table = [[r["architecture"], r["trial_id"], f"{r['best_mAP50']:.4f}", f"{r['best_epoch']:.2f}",
                  "yes" if r["stopped_early"] else "no"] for r in best]
        print(f"\ntop {family} trials:\n" + tabulate(
            table, headers=["architecture", "trial", "best mAP50", "at epoch", "stopped early"]), file=stream)
    failed = [r for r in rows if r["error"]]
    if failed:
        print(f"\n{len(failed)} trial(s) failed: " + "; ".join(f"{r['trial_id']}: {r['error']}" for r in failed),
              file=stream)


def run_tune(config_path, overrides=(), resume=False, verbose=False):
    from detfuse.data import load_dataset

    experiment = load_experiment(config_path, overrides)
    load_dataset(experiment.dataset)  # every dataset problem is reported before any trial starts
    # later stages (ensemble, export) learn the experiment's dataset from here
    experiment_storage.write_text(experiment_storage.join(experiment.uri, "experiment.json"), json.dumps({
        "name": experiment.name, "dataset": experiment.dataset, "storage": experiment.storage,
        "config_path": str(experiment.path)}, indent=2))
    connect(verbose)
    check_resources_fit(experiment)
    results = build_tuner(experiment, resume, verbose).fit()
    rows = build_leaderboard(results, experiment.storage)
    print_summary(rows, write_leaderboard(rows, experiment.uri))
    return 0 if any(r["checkpoint"] for r in rows) else 1


def check_experiment(config_path, overrides=(), verbose=False):
    """`detfuse check`: everything `tune` validates before training, and nothing more. Exit 0 when all is well."""
    from detfuse.data import load_dataset
    from detfuse.experiment_storage import check_writable

    experiment = load_experiment(config_path, overrides)
    dataset = load_dataset(experiment.dataset)
    check_writable(experiment.storage, f"{config_path}: storage")
    connect(verbose)
    check_resources_fit(experiment)
    print(f"{config_path}: OK. dataset {dataset.name}: {len(dataset.class_names)} classes, "
          + ", ".join(f"{len(s.coco['images'])} {n} images" for n, s in dataset.splits.items()))
    for entry in experiment.entries:
        space = entry.space
        print(f"  {space.name}: {space.family}/{space.architecture}, {entry.num_samples} trial(s), "
              f"{space.grace_epochs:g}-{space.max_epochs:g} epochs, tuning {', '.join(space.space) or 'nothing'}, "
              f"{entry.settings['resources']['cpu']:g} CPU + {entry.settings['resources']['gpu']:g} GPU per trial")
    print(f"  results go to {experiment.uri}")
    return 0


def main(argv=None):
    """`python ray_jobs/tune.py`: the same as `detfuse tune` (for `ray submit`)."""
    from detfuse.cli import main as detfuse_main

    return detfuse_main(["tune", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
