"""The Tune job: ASHA search over both detector families on the Ray cluster it runs in.

    detfuse tune CONFIG [key=value ...] [--resume]
    ray submit cluster.yaml ray_jobs/tune.py -- CONFIG [key=value ...] [--resume]

Writes Tune's state, trial checkpoints, TensorBoard/CSV logs and `leaderboard.json` under
`<storage>/<name>/`. `--resume` continues a killed run from that storage without repeating finished trials.
"""

import contextlib
import json
import os
import sys

from ray import tune

import trainables
from detfuse.core.storage import experiment_storage
from detfuse.core.errors import UserError
from detfuse.stages.experiment import load_experiment
from detfuse.stages.leaderboard import build_leaderboard, saved_statuses, top_per_family, write_leaderboard
from detfuse.stages.family_scheduler import PerFamilyASHA
from detfuse.stages.searcher import MultiSpaceSearcher
from detfuse.stages.stage_markers import STOPPED
from detfuse.stages.status_table import StatusTable
from detfuse.stages.cluster import connect, node_capacities


def trial_resources(config):
    """The resources Tune reserves for one trial, from its `resources` setting.

    A trial its family runs in several workers (detectron2's DDP) reserves only its own process: the workers ask
    the cluster for their GPUs themselves, and a Tune reservation of the same GPUs would leave them waiting forever.
    """
    cpu, gpu = config["resources"]["cpu"], config["resources"]["gpu"]
    if trainables.load_family(config["family"]).trial_workers(config["resources"]) > 1:
        return tune.PlacementGroupFactory([{"CPU": 1}])
    return tune.PlacementGroupFactory([{"CPU": cpu, "GPU": gpu}] if gpu else [{"CPU": cpu}])


def worker_resources(entry):
    """(workers, CPUs a worker, GPUs a worker) of one trial of `entry`: its family may train it in several."""
    resources = entry.settings["resources"]
    workers = trainables.load_family(entry.space.family).trial_workers(resources)
    return workers, resources["cpu"] / workers, resources["gpu"] / workers


def reuses_trial_processes(experiment):
    """Whether Tune runs a trial in the process of one that ended (reuse_actors): it skips a new process's
    imports and CUDA start-up, 8-16 s a trial on an H200 machine while the trial's share of the GPU idles. Not when
    a space trains with DDP: a stopped DDP trial's Ray Train workers would outlive it, holding their GPUs."""
    return all(worker_resources(entry)[0] == 1 for entry in experiment.entries)


def check_resources_fit(experiment):
    """Every trial must fit on the cluster (several workers: each on some node, all of them in total), or Tune
    would wait for it forever."""
    capacities = node_capacities()
    for entry in experiment.entries:
        cpu, gpu = entry.settings["resources"]["cpu"], entry.settings["resources"]["gpu"]
        _, worker_cpu, worker_gpu = worker_resources(entry)
        fits_a_node = any(worker_cpu <= node_cpu and worker_gpu <= node_gpu for node_cpu, node_gpu in capacities)
        if not fits_a_node or sum(node_gpu for _, node_gpu in capacities) < gpu:
            largest = max(capacities, default=(0, 0))
            raise UserError(
                f"{experiment.path}: space '{entry.space.name}' asks for {cpu:g} CPU and {gpu:g} GPU per trial, "
                f"more than this cluster offers (largest node: {largest[0]:g} CPU, {largest[1]:g} GPU; "
                f"{sum(g for _, g in capacities):g} GPUs in all); lower its resources or add larger nodes")


def pending_trials_limit(experiment, capacities):
    """How many trials Tune may keep waiting for resources at once, or None where Tune's own rule is right.

    For a searcher of its own Tune keeps one waiting trial, unless max_concurrent_trials is set (then that many).
    One is too few in a mixed search: a trial waiting for a whole GPU keeps every smaller trial from being created,
    though they would fit beside the trials running (on one H200, 2 Faster R-CNN trials of one GPU among 8 YOLO
    trials of a quarter held its mean utilisation to 27 %). The limit here is as many trials of each space as the
    nodes run at once. More would not start sooner; they would let small trials take every freed share of a GPU
    ahead of a waiting large one for as long as small ones remain, and a learning searcher would suggest them
    without the results still to come. With this bound, once the waiting trials are all large, no small one is
    created until a large one has started.
    """
    if experiment.max_concurrent_trials is not None:
        return None
    return sum(min(entry.num_samples, trials_at_once(entry, capacities)) for entry in experiment.entries)


def trials_at_once(entry, capacities):
    """How many trials of `entry` the nodes (CPUs, GPUs) run at once, at least one (a node may join later)."""
    workers, cpu, gpu = worker_resources(entry)
    worker_slots = 0
    for node_cpu, node_gpu in capacities:
        by_gpu = int(node_gpu / gpu + 1e-6) if gpu else None  # Ray counts resources to 1e-4
        by_cpu = int(node_cpu / cpu + 1e-6)
        worker_slots += by_cpu if by_gpu is None else min(by_cpu, by_gpu)
    return max(1, worker_slots // workers)


@contextlib.contextmanager
def pending_trials(limit):
    """Tune reads its pending-trial limit from the environment when a run starts; a value the user set wins."""
    variable = "TUNE_MAX_PENDING_TRIALS_PG"
    if limit is None or variable in os.environ:
        yield
        return
    os.environ[variable] = str(limit)
    try:
        yield
    finally:
        del os.environ[variable]


def trial_name(trial):
    """Short, readable trial names and directories (Tune's default packs every hyperparameter into them)."""
    return f"{trial.config['architecture']}_{trial.trial_id}"


def trainable():
    return tune.with_resources(trainables.run_trial, trial_resources)


def new_tuner(experiment, verbose):
    """A Tuner for a new search of `experiment`, recording in experiment.json what later stages and a resume read."""
    if tune.Tuner.can_restore(experiment.uri):
        raise UserError(f"an experiment named '{experiment.name}' already exists at {experiment.uri}: "
                        f"pass --resume to continue it, or set another name (name=...)")
    # ensemble and export run on their own learn the experiment's dataset and name from here; --resume its settings
    experiment_storage.write_text(experiment_storage.join(experiment.uri, "experiment.json"), json.dumps({
        "name": experiment.name, "dataset": experiment.dataset, "storage": experiment.storage,
        "config_path": str(experiment.path), "run_settings": run_settings(experiment, verbose),
        "spaces": [space_record(entry) for entry in experiment.entries],
        # how many trials the search creates in all: a --resume keeps the searcher's own count, whatever the
        # config says by then, so a stopped search is recognised against this one
        "num_samples": sum(entry.num_samples for entry in experiment.entries)}, indent=2))
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
    tune_config = tune.TuneConfig(
        search_alg=MultiSpaceSearcher(experiment.entries, searcher=experiment.searcher, seed=experiment.seed),
        scheduler=PerFamilyASHA(experiment.budgets(), reduction_factor=experiment.reduction_factor),
        num_samples=sum(entry.num_samples for entry in experiment.entries),
        max_concurrent_trials=experiment.max_concurrent_trials,
        reuse_actors=reuses_trial_processes(experiment),
        trial_name_creator=trial_name,
        trial_dirname_creator=trial_name,
    )
    return tune.Tuner(trainable(), tune_config=tune_config, run_config=run_config)


def space_record(entry):
    """What `detfuse report` needs of a search space: which hyperparameters its architecture searched, over what
    values. Each searched name maps to {"choice": [values]} or {"range": [low, high], "log": bool}."""
    space = entry.space
    return {"space": space.name, "architecture": space.architecture,
            "searched": {name: domain_record(space.space[name]) for name in sorted(space.space)}}


def domain_record(domain):
    """A Tune distribution as JSON: its choices, or its range and whether it is sampled on a log scale."""
    if isinstance(domain, tune.search.sample.Categorical):
        return {"choice": list(domain.categories)}
    sampler = domain.get_sampler()
    sampler = getattr(sampler, "sampler", sampler)  # a quantized distribution wraps the one it rounds
    return {"range": [domain.lower, domain.upper], "log": isinstance(sampler, tune.search.sample.LogUniform)}


def run_settings(experiment, verbose):
    """The settings a Tune run keeps for its whole life: Tune.restore brings back the run's own RunConfig (its
    callbacks: the status table, W&B; its verbosity) and takes no new one."""
    return {"verbose": bool(verbose), "wandb": experiment.wandb}


def check_resume_settings(experiment, verbose):
    """--resume continues with the settings the run started with: a changed W&B setting is refused (its trials
    would log elsewhere than the user asked), a changed -v is announced (display only)."""
    uri = experiment_storage.join(experiment.uri, "experiment.json")
    if not experiment_storage.exists(uri):
        raise UserError(f"--resume: no experiment to resume at {experiment.uri} (run without --resume)")
    recorded = experiment_storage.read_json(uri).get("run_settings")
    if recorded is None:  # written before run settings were recorded
        return
    now = run_settings(experiment, verbose)
    if recorded["wandb"] != now["wandb"]:
        raise UserError(f"{experiment.path}: wandb = {now['wandb']} differs from {recorded['wandb']}, the setting "
                        f"the run at {experiment.uri} started with; --resume continues with the run's own W&B "
                        f"logging (Tune restores it and takes no new one): set wandb back to continue, or start a "
                        f"new experiment with the new setting (name=...)")
    if recorded["verbose"] != now["verbose"]:
        print(f"note: --resume keeps the terminal output the run started with "
              f"({'with' if recorded['verbose'] else 'without'} -v); -v now affects this driver's Ray logs only",
              file=sys.stderr, flush=True)


def wandb_callbacks(experiment):
    """Ray's W&B callback logs every trial of both families from the driver: no wiring inside trainables."""
    if experiment.wandb is None:
        return []
    try:
        from ray.air.integrations.wandb import WandbLoggerCallback, _WandbLoggingActor
    except ImportError:
        raise UserError("wandb is enabled but not installed: pip install 'detfuse[wandb]' on the head node") from None

    class FlushingLoggingActor(_WandbLoggingActor):
        """Ray kills a trial's W&B logging actor as soon as its run() returns, and W&B's service, a child process,
        may not have written the run's records yet: a trial's run was seen without its history. Waiting for the
        service to end (wandb.teardown) writes everything first."""

        def run(self):
            super().run()
            self._wandb.teardown()

    class WandbCallback(WandbLoggerCallback):
        _logger_actor_cls = FlushingLoggingActor

    settings = experiment.wandb
    return [WandbCallback(project=settings["project"], entity=settings["entity"],
                          group=settings["group"] or experiment.name, mode=settings["mode"],
                          dir=settings["dir"], excludes=["hparams"], log_config=True)]


def print_dashboard(url):
    """Where to watch the search live: the Ray dashboard of the cluster the job joined or started."""
    if url:
        print(f"Ray dashboard: {url} (on a cluster launched with cluster.yaml: run `ray dashboard cluster.yaml` "
              f"and open http://localhost:8265)", flush=True)


def print_notices(experiment):
    """What loading changed in the config as written (e.g. a grace period lowered to a smaller budget)."""
    for notice in experiment.notices:
        print(f"note: {notice}", file=sys.stderr, flush=True)


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
    """`detfuse tune`: load the experiment config, then tune it."""
    experiment = load_experiment(config_path, overrides)
    print_notices(experiment)
    return tune_experiment(experiment, resume, verbose)


def tune_experiment(experiment, resume=False, verbose=False):
    """Search `experiment` (an Experiment, loaded once by the caller); returns the exit code."""
    from detfuse.core.data import load_dataset

    load_dataset(experiment.dataset)  # every dataset problem is reported before any trial starts
    if resume:
        check_resume_settings(experiment, verbose)
    print_dashboard(connect(verbose))
    check_resources_fit(experiment)
    if resume:
        if not tune.Tuner.can_restore(experiment.uri):
            raise UserError(f"--resume: no experiment to resume at {experiment.uri} (run without --resume)")
        tuner = tune.Tuner.restore(experiment.uri, trainable=trainable(), resume_unfinished=True,
                                   resume_errored=True)
    else:
        tuner = new_tuner(experiment, verbose)
    with pending_trials(pending_trials_limit(experiment, node_capacities())):
        results = tuner.fit()
    rows = build_leaderboard(results, experiment.storage, saved_statuses(experiment.uri))
    print_summary(rows, write_leaderboard(rows, experiment.uri))
    unfinished = unfinished_search(rows, experiment_storage.read_json(
        experiment_storage.join(experiment.uri, "experiment.json")).get("num_samples"))
    if unfinished:  # fit() returns normally after Ctrl-C or SIGUSR1: the search is not finished
        print(f"\nthe search was stopped before it finished: {unfinished}; continue it: run the same `detfuse tune` "
              f"command with --resume (or the same `detfuse pipeline` command)", file=sys.stderr, flush=True)
        return STOPPED
    return 0 if any(r["checkpoint"] for r in rows) else 1


def unfinished_search(rows, planned):
    """What a search stopped by Ctrl-C or SIGUSR1 left undone ('' when it finished): trials that were running or
    waiting, and trials not created yet: with max_concurrent_trials, a stop as the last running trial ends leaves
    every created trial finished while the searcher still has `planned` - len(rows) to create."""
    interrupted = [r["trial_id"] for r in rows if r["interrupted"]]
    not_created = max(0, planned - len(rows)) if planned else 0  # None: recorded before the count was
    parts = ([f"{len(interrupted)} trial(s) unfinished ({', '.join(interrupted)})"] if interrupted else []) + (
        [f"{not_created} trial(s) not started"] if not_created else [])
    return ", ".join(parts)


def check_experiment(config_path, overrides=(), verbose=False):
    """`detfuse check`: everything `tune` validates before training, and nothing more. Exit 0 when all is well."""
    from detfuse.core.data import load_dataset
    from detfuse.core.storage.experiment_storage import check_writable

    experiment = load_experiment(config_path, overrides)
    print_notices(experiment)
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
