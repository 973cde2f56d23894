"""The ensemble job: fuse the top checkpoints of every family of a finished Tune experiment.

    detfuse ensemble EXPERIMENT [--top K] [--top FAMILY=K ...] [--method wbf|nms|soft_nms|nmw]
                                [--fit-mode auto|cross|split] [--tta none|hflip]
    ray submit cluster.yaml ray_jobs/ensemble.py -- EXPERIMENT [...]

EXPERIMENT is the experiment's URI, <storage>/<name> (local path or s3://). The job reads leaderboard.json and
experiment.json there, runs each member's inference as a Ray task (a fraction of a GPU each when the cluster has
GPUs), checks that each member's val mAP50 re-scored from its checkpoint is the one its trial reported (a WARNING
on stderr otherwise), fits the fusion on labelled images and reports it on others (the fit modes:
detfuse/stages/ensemble_evaluation.py), and writes under <experiment>/ensemble/: predictions/ (the per-member cache),
summary.json, fusion.json, and fused_<split>.json (COCO results) plus fused_<split>.csv (submission format) for
val and, when the dataset has one, test.

--tta hflip fuses every selected trial twice: as it is, and as "<trial_id>+hflip", its predictions on the images
mirrored left-right (detfuse/stages/member_predictions.py), a member of the same family like any other: it can enter the
family's ensemble and fill the cross-family ensemble's place for its family, and the fit keeps it only where it
helps. Both passes of a trial run in one Ray task on one model load.

summary.json names sets of images by label: "val" (all of val), the parts of the fit mode ("val/A" and "val/B"
for cross, "val/fit" and "val/report" for split, "test"), and "val/cross-fitted" (the mean over cross-fitting's
two folds). Every "mAP50" is {label: mAP50}.

    splits: {mode (cross|split|test), requested (the --fit-mode), seed, note,
             folds: [{fit: {split: label, images}, report: {split: label, images}}],  (two for cross, else one)
             report: {split, images}: the label of the numbers to believe, on this many images,
             final_fit: {split, images}: where the written ensemble was fitted}
    tta: the --tta mode
    members: [{trial_id, family, architecture, checkpoint, leaderboard_mAP50,
               mAP50: on "val" and on every part,
               mAP50_hflip: the same for the trial's +hflip member (with --tta hflip only),
               reported_vs_rescored: {reported, source, rescored, difference}}]: one entry per trial; val mAP50
               from the trial's report (source: the checkpoint's detfuse.json metrics, else the leaderboard) against
               the one re-scored here from its plain (not augmented) predictions
    warnings: the WARNING lines printed, else []: members re-scored more than 0.01 from their report, or whose
              checkpoint's report is more than 0.01 from their leaderboard best_mAP50
    best_single: {trial_id, family, chosen_on (final_fit's label), mAP50: {final_fit label, report label},
                  per_class_AP50: {report label: {class: AP50}},
                  folds: [{fit, report, trial_id (the best on fit), mAP50: {fit label, report label}}]}: among the
                 trials' plain predictions, the baseline every ensemble (augmented members included) is measured by
    best_per_family: {family: the same, among that family's trials}: what each family brings alone
    family_ensembles: {family: ENSEMBLE} (families with 2+ members)
    cross_family: ENSEMBLE or null (needs 2+ families)
        ENSEMBLE: {members, weights, params, candidates, families, search: the ensemble fitted on final_fit
                   (members and candidates by name: <trial_id>, or <trial_id>+hflip for an augmented one),
                   mAP50: {final_fit label: in-sample, report label: the number to believe},
                   per_class_AP50: {report label: {class: AP50}} (per class as mAP50 is: the mean over folds),
                   folds: [{fit, report, members, weights, params, mAP50: {fit label, report label}}]}
    final: {ensemble (cross_family, a family, or "single member"), fitted_on: {split, images}, note, fusion}
    gains: {split: the report label, <family>_ensemble_over_best_single, cross_family_over_best_single,
            cross_family_over_<family>_ensemble, cross_family_over_best_family_ensemble,
            folds: [{fit, report, the same gains on that fold}]}
    outputs: {split: {coco_results, csv, images, predictions}}
    timing: {startup_s, inference_wall_s, inference_s: {<member name>/<split>: seconds}, fit_s,
             fusion_ms_per_image, fused_members, total_s}

A report number is the mean over folds of numbers scored on images the fold's choices never saw, the best single
model included (chosen on each fold's fit part), so the gains compare like with like.
"""

import json
import sys
import time
from dataclasses import replace

import ray

from detfuse.core.storage import experiment_storage
from detfuse.stages.ensemble_evaluation import Evaluation, plan_evaluation, rescore_check
from detfuse.stages.ensemble_outputs import coco_results, fusion_document, submission_csv
from detfuse.core.errors import UserError
from detfuse.core.fusion import METHODS, FusionInputs
from detfuse.core.fusion_fit import fit_ensemble
from detfuse.stages.leaderboard import read_leaderboard, top_per_family, tuned_experiment
from detfuse.stages.member_predictions import (DEFAULT_TTA, Member, as_predictions, cache_key, cache_uri, predict_member,
                                        read_cached, read_checkpoint_meta, with_tta, write_cached)
from detfuse.stages.cluster import connect

DEFAULT_TOP = 3
DEFAULT_GPUS_PER_MEMBER = 0.25  # small detectors at inference: four share a GPU comfortably


def select_members(rows, default_k, per_family, leaderboard_uri):
    """The top-K trials with a checkpoint of each family, best first within a family."""
    available = top_per_family(rows, max([1, default_k, *per_family.values()]))
    unknown = sorted(set(per_family) - set(available))
    if unknown:
        raise UserError(f"--top {', '.join(unknown)}: no trial of that family has a checkpoint in {leaderboard_uri}; "
                        f"families with checkpoints: {', '.join(sorted(available)) or 'none'}")
    members = [Member.from_row(row) for family in sorted(available)
               for row in available[family][:per_family.get(family, default_k)]]
    if not members:
        raise UserError(f"{leaderboard_uri}: no trial with a checkpoint was selected (each family's --top is 0, or "
                        f"every trial failed before its first checkpoint)")
    return members


def experiment_dataset(experiment_uri, override):
    if override is not None:
        return override
    uri = experiment_storage.join(experiment_uri, "experiment.json")
    if not experiment_storage.exists(uri):
        raise UserError(f"{uri} does not exist, so the experiment's dataset is unknown: pass --dataset SPEC "
                        f"(the dataset the experiment was tuned on)")
    return experiment_storage.read_json(uri)["dataset"]


@ray.remote(max_calls=1)  # a fresh worker per trial: a finished trial's model leaves no GPU memory behind
def _predict_member_task(member, dataset_spec, dataset_fingerprint, runs):
    device = "cuda" if ray.get_gpu_ids() else "cpu"
    return predict_member(member, dataset_spec, dataset_fingerprint, runs, device)


def task_resources(gpus_per_member, cpus_per_member):
    cluster_gpus = ray.cluster_resources().get("GPU", 0.0)
    if gpus_per_member is None:
        gpus_per_member = DEFAULT_GPUS_PER_MEMBER if cluster_gpus else 0.0
    if gpus_per_member > 0 and not cluster_gpus:
        raise UserError(f"--gpus-per-member {gpus_per_member:g}: this Ray cluster has no GPUs; pass 0")
    if not (0 <= gpus_per_member <= 1) or cpus_per_member <= 0:
        raise UserError("--gpus-per-member must be in [0, 1] (a fraction of one GPU) and --cpus-per-member > 0")
    return {"num_cpus": cpus_per_member, "num_gpus": gpus_per_member, "scheduling_strategy": "SPREAD"}


def _get(refs, context=""):
    """ray.get, with a UserError raised inside a task surfacing as itself (the CLI prints it without traceback)."""
    try:
        return ray.get(refs)
    except ray.exceptions.RayTaskError as error:
        if isinstance(error.cause, UserError):
            raise UserError(f"{context}{error.cause}") from None
        raise


def member_predictions(experiment_uri, members, tta, dataset, dataset_spec, split_names, resources):
    """{(member name, split): [Prediction]} for every trial of `members` under --tta `tta` (with_tta) and every
    split: read from the cache, else run as Ray tasks, one per trial for all its missing (split, tta) runs (all
    at once, spread over the cluster), each result cached as soon as it arrives. Also returns the inference
    seconds and each trial's checkpoint detfuse.json text."""
    predictions, inference_s, pending, metas = {}, {}, {}, {}
    for trial in members:
        meta = read_checkpoint_meta(trial, dataset)
        metas[trial.trial_id] = meta
        missing = {}  # (split, tta) -> (member, cache key)
        for member in with_tta([trial], tta):
            for split_name in split_names:
                key = cache_key(member, meta, dataset.fingerprint, split_name)
                cached = read_cached(cache_uri(experiment_uri, member, split_name), key)
                if cached is None:
                    missing[(split_name, member.tta)] = (member, key)
                else:
                    predictions[(member.name, split_name)] = cached
        if missing:
            task = _predict_member_task.options(**resources).remote(trial, dataset_spec, dataset.fingerprint,
                                                                    list(missing))
            pending[task] = (trial, missing)
    if pending:
        print(f"inference of {len(pending)} trial(s) on {', '.join(split_names)} (tta {tta}; "
              f"{len(members) - len(pending)} cached)", flush=True)
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        trial, missing = pending.pop(done[0])
        results = _get(done[0], f"trial {trial.trial_id}: ")
        for (split_name, member_tta), (rows, seconds) in results.items():
            member, key = missing[(split_name, member_tta)]
            write_cached(cache_uri(experiment_uri, member, split_name), key, member, split_name,
                         dataset.fingerprint, rows, seconds)
            predictions[(member.name, split_name)] = as_predictions(rows)
            inference_s[f"{member.name}/{split_name}"] = seconds
    return predictions, inference_s, metas


def member_entries(evaluation, members, tta, predictions, metas, split_names):
    """summary.json's member entries, one per trial of `members`, and the WARNING lines of trials whose re-scored
    val mAP50 is not the one they reported (printed to stderr as soon as they are known)."""
    def mAP50(member):
        return evaluation.member_mAP50({split: predictions[(member.name, split)] for split in split_names})

    entries, warnings = [], []
    for trial in members:
        numbers = mAP50(trial)
        check, lines = rescore_check(trial, metas[trial.trial_id], numbers["val"])
        for line in lines:
            print(line, file=sys.stderr, flush=True)
        warnings += lines
        entry = {"trial_id": trial.trial_id, "family": trial.family, "architecture": trial.architecture,
                 "checkpoint": trial.checkpoint, "leaderboard_mAP50": trial.leaderboard_mAP50, "mAP50": numbers}
        if tta != "none":  # the trial's augmented member is scored beside it
            entry[f"mAP50_{tta}"] = mAP50(replace(trial, tta=tta))
        entries.append({**entry, "reported_vs_rescored": check})
    return entries, warnings


@ray.remote
def _fit_task(inputs, coco, image_ids, method, candidates, keep_one_of):
    return fit_ensemble(inputs, coco, image_ids, method, candidates, keep_one_of)


def fit_all(evaluation, members, method):
    """Same-family ensembles (families with 2+ members, augmented ones included), the cross-family one (2+
    families), and the final ensemble whose outputs are written: the cross-family one, else the one family's,
    else the lone member fused.
    Each is fitted on every fit part of the plan, as {part label: FittedEnsemble}; returns ({family: those},
    the cross-family's or None, the final one's). The fits are independent Ray tasks, so they run side by side on
    the cluster's CPUs."""
    by_family = {}
    for index, member in enumerate(members):
        by_family.setdefault(member.family, []).append(index)
    searches = {family: indexes for family, indexes in by_family.items() if len(indexes) >= 2}
    if len(by_family) >= 2 or not searches:
        searches[None] = list(range(len(members)))  # None: every member
    parts = evaluation.plan.fit_parts()
    data = {split: (ray.put(evaluation.inputs[split]), ray.put(evaluation.coco[split]))
            for split in {part.split for part in parts}}
    # the cross-family search must keep a member of every family: that mix is what the ensemble is for
    required = {None: list(by_family.values())}
    tasks = {(name, part.label): _fit_task.remote(*data[part.split], part.image_ids, method, candidates,
                                                  required.get(name, ()))
             for name, candidates in searches.items() for part in parts}
    results = dict(zip(tasks, _get(list(tasks.values()))))
    fitted = {name: {part.label: results[(name, part.label)] for part in parts} for name in searches}
    family_fits = {name: fits for name, fits in fitted.items() if name is not None}
    cross = fitted.get(None) if len(by_family) >= 2 else None
    final = fitted.get(None) or next(iter(family_fits.values()))
    return family_fits, cross, final


def write_outputs(ensemble_uri, data, inputs, final):
    """fused_<split>.json and .csv for val and (when present) test; returns their URIs and fusion ms/image."""
    outputs, timings = {}, {}
    for split_name, split_inputs in inputs.items():
        images = data.splits[split_name].coco["images"]
        start = time.perf_counter()
        fused = split_inputs.fuse(final.params, final.members)
        timings[split_name] = 1000 * (time.perf_counter() - start) / max(1, len(images))
        json_uri = experiment_storage.join(ensemble_uri, f"fused_{split_name}.json")
        csv_uri = experiment_storage.join(ensemble_uri, f"fused_{split_name}.csv")
        experiment_storage.write_text(json_uri, json.dumps(coco_results(fused)))
        experiment_storage.write_text(csv_uri, submission_csv(fused, images, data.category_ids))
        outputs[split_name] = {"coco_results": json_uri, "csv": csv_uri, "images": len(images),
                               "predictions": len(fused)}
    return outputs, timings


def run_ensemble(experiment_uri, top=DEFAULT_TOP, top_per_family=None, method="wbf", dataset=None,
                 gpus_per_member=None, cpus_per_member=1.0, seed=0, fit_mode="auto", tta=DEFAULT_TTA, verbose=False):
    """`detfuse ensemble`: see the module docstring. `top` members of every family, except those in
    `top_per_family` ({family: K}); returns the exit code."""
    from detfuse.core.data import load_dataset

    started = time.perf_counter()
    if method not in METHODS:
        raise UserError(f"--method {method}: valid methods are {', '.join(METHODS)}")
    experiment_uri, leaderboard_uri = tuned_experiment(experiment_uri)
    members = select_members(read_leaderboard(experiment_uri), top, top_per_family or {}, leaderboard_uri)
    fusion_members = with_tta(members, tta)  # what is fused: each trial, then each trial augmented
    dataset_spec = experiment_dataset(experiment_uri, dataset)
    data = load_dataset(dataset_spec)
    val, test = data.splits["val"], data.splits.get("test")
    if not val.has_annotations:
        raise UserError(f"{val.json_path}: the val split has no annotations; the ensemble is fitted on it")
    plan = plan_evaluation(fit_mode, [image["id"] for image in val.coco["images"]],
                           [image["id"] for image in test.coco["images"]] if test and test.has_annotations else None,
                           seed)
    split_names = [name for name in ("val", "test") if name in data.splits]

    connect(verbose)
    resources = task_resources(gpus_per_member, cpus_per_member)
    connected = time.perf_counter()
    predictions, inference_s, metas = member_predictions(experiment_uri, members, tta, data, dataset_spec,
                                                         split_names, resources)
    inference_done = time.perf_counter()

    names, families = [m.name for m in fusion_members], [m.family for m in fusion_members]
    inputs = {split: FusionInputs([predictions[(name, split)] for name in names], data.splits[split].coco["images"],
                                  data.category_ids, names) for split in split_names}
    evaluation = Evaluation(plan, {split: data.splits[split].coco for split in split_names}, inputs)
    members_summary, warnings = member_entries(evaluation, members, tta, predictions, metas, split_names)
    family_fits, cross, final_fits = fit_all(evaluation, fusion_members, method)
    fitted_done = time.perf_counter()

    family_entries = {family: evaluation.ensemble_entry(fits, names, families) for family, fits in family_fits.items()}
    cross_entry = None if cross is None else evaluation.ensemble_entry(cross, names, families)
    final_name = "cross_family" if cross_entry else next(iter(family_entries), None) or "single member"
    final_entry = cross_entry or next(iter(family_entries.values()), None) or evaluation.ensemble_entry(
        final_fits, names, families)
    final = final_fits[plan.final.label]
    best = evaluation.best_single(members_summary, predictions)
    ensemble_uri = experiment_storage.join(experiment_uri, "ensemble")
    outputs, fusion_ms = write_outputs(ensemble_uri, data, inputs, final)
    provenance = {"dataset": {"spec": dataset_spec, "name": data.name, "fingerprint": data.fingerprint},
                  "fitted_on": {**plan.final.as_dict(), "seed": seed, "fit_mode": plan.mode},
                  "reported": {"split": plan.report_label, "images": plan.report_images,
                               "mAP50": final_entry["mAP50"][plan.report_label]},
                  "experiment": experiment_uri}
    fusion_uri = experiment_storage.join(ensemble_uri, "fusion.json")
    experiment_storage.write_text(fusion_uri, json.dumps(fusion_document(
        [fusion_members[m] for m in final.members], final.params, data.class_names, data.category_ids, **provenance),
        indent=2))
    summary = {
        "experiment": experiment_uri, "method": method, "dataset": provenance["dataset"],
        "splits": plan.as_dict(),
        "tta": tta,
        "members": members_summary,
        "warnings": warnings,
        "best_single": best,
        "best_per_family": evaluation.best_per_family(members_summary, predictions),
        "family_ensembles": family_entries,
        "cross_family": cross_entry,
        "final": {"ensemble": final_name, "fitted_on": plan.final.as_dict(), "note": plan.final_note,
                  "fusion": fusion_uri},
        "gains": evaluation.gains(best, family_entries, cross_entry),
        "outputs": outputs,
        "timing": {"startup_s": connected - started, "inference_wall_s": inference_done - connected,
                   "inference_s": inference_s, "fit_s": fitted_done - inference_done,
                   "fusion_ms_per_image": fusion_ms, "fused_members": len(final.members),
                   "total_s": time.perf_counter() - started},
    }
    summary_uri = experiment_storage.join(ensemble_uri, "summary.json")
    experiment_storage.write_text(summary_uri, json.dumps(summary, indent=2))
    print_summary(summary, summary_uri)
    return 0


def ensemble_experiment(experiment, verbose=False):
    """The pipeline's ensemble stage: the Experiment's own settings and dataset, not read back from storage."""
    return run_ensemble(experiment.uri, experiment.ensemble_top, experiment.ensemble_top_per_family,
                        method=experiment.ensemble_method, dataset=experiment.dataset, seed=experiment.seed,
                        fit_mode=experiment.ensemble_fit_mode, tta=experiment.ensemble_tta, verbose=verbose)


def print_summary(summary, summary_uri, stream=None):
    from tabulate import tabulate

    stream = stream or sys.stdout  # looked up now: whoever redirected it since import (pytest, a caller) gets it

    splits = summary["splits"]
    final_label, report_label, folds = splits["final_fit"]["split"], splits["report"]["split"], splits["folds"]
    parts = list(dict.fromkeys(label for fold in folds for label in (fold["fit"]["split"], fold["report"]["split"])))
    print(f"\nensemble of {summary['experiment']} ({splits['note']})", file=stream)
    tta = summary["tta"]
    headers = ["member", "family", "architecture", "mAP50 reported", "mAP50 val (re-scored)", "difference",
               *(f"mAP50 {label}" for label in parts if label != "val")]
    if tta != "none":
        headers.append(f"mAP50 val (+{tta})")
    rows = []
    for m in summary["members"]:
        check = m["reported_vs_rescored"]
        row = [m["trial_id"], m["family"], m["architecture"], f"{check['reported']:.4f}", f"{check['rescored']:.4f}",
               f"{check['difference']:+.4f}", *(f"{m['mAP50'][label]:.4f}" for label in parts if label != "val")]
        if tta != "none":
            row.append(f"{m[f'mAP50_{tta}']['val']:.4f}")
        rows.append(row)
    print(tabulate(rows, headers=headers, disable_numparse=True), file=stream)

    several = len(folds) > 1  # a column per fold; with one fold, its report column is the number to believe

    def numbers(entry):
        per_fold = [f"{fold['mAP50'][fold['report']]:.4f}" for fold in entry["folds"]] if several else []
        return [f"{entry['mAP50'][final_label]:.4f}", *per_fold, f"{entry['mAP50'][report_label]:.4f}"]

    best = summary["best_single"]
    chosen = ", ".join(dict.fromkeys([fold["trial_id"] for fold in best["folds"]] + [best["trial_id"]]))
    table = [[f"best single ({chosen})", f"1 of {len(summary['members'])}", "-", *numbers(best), "-"]]
    named = [(f"{family} ensemble", e) for family, e in sorted(summary["family_ensembles"].items())]
    if summary["cross_family"] is not None:
        named.append(("cross-family ensemble", summary["cross_family"]))
    for name, e in named:
        table.append([name, f"{len(e['members'])} of {len(e['candidates'])}", e["params"]["method"], *numbers(e),
                      f"{e['mAP50'][report_label] - best['mAP50'][report_label]:+.4f}"])
    fold_headers = [f"mAP50 {fold['report']['split']} (fitted on {fold['fit']['split']})" for fold in folds]
    headers = ["", "members", "method", f"mAP50 {final_label} (fitted)", *(fold_headers if several else []),
               f"mAP50 {report_label}", "gain over best single"]
    print("\n" + tabulate(table, headers=headers, disable_numparse=True), file=stream)
    print(file=stream)
    for name, gain in summary["gains"].items():
        if name not in ("split", "folds"):
            per_fold = ", ".join(f"{fold[name]:+.4f} on {fold['report']}" for fold in summary["gains"]["folds"])
            print(f"{name}: {gain:+.4f} on {report_label}" + (f" ({per_fold})" if several else ""), file=stream)
    final = summary["final"]
    print(f"\nwritten ensemble ({final['ensemble']}): {final['note']}", file=stream)
    for line in summary["warnings"]:
        print(line, file=stream)
    timing = summary["timing"]
    per_image = ", ".join(f"{split} {ms:.1f} ms" for split, ms in timing["fusion_ms_per_image"].items())
    print(f"\nfused {timing['fused_members']} member(s): {per_image} per image; job {timing['total_s']:.1f} s "
          f"(start-up {timing['startup_s']:.1f} s, inference {timing['inference_wall_s']:.1f} s, fitting "
          f"{timing['fit_s']:.1f} s)\n"
          f"summary: {summary_uri}\nfusion:  {final['fusion']}", file=stream)
