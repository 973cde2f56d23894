"""The ensemble job: fuse the top checkpoints of every family of a finished Tune experiment.

    detfuse ensemble EXPERIMENT [--top K] [--top FAMILY=K ...] [--method wbf|nms|soft_nms|nmw]
    ray submit cluster.yaml ray_jobs/ensemble.py -- EXPERIMENT [...]

EXPERIMENT is the experiment's URI, <storage>/<name> (local path or s3://). The job reads leaderboard.json and
experiment.json there, runs each member's inference as a Ray task (a fraction of a GPU each when the cluster has
GPUs), fits the fusion on one part of the labelled images and reports it on another, and writes under
<experiment>/ensemble/: predictions/ (the per-member cache), summary.json, fusion.json, and fused_<split>.json
(COCO results) plus fused_<split>.csv (submission format) for val and, when the dataset has one, test.
"""

import json
import sys
import time
from pathlib import Path
from typing import NamedTuple

import ray

from detfuse import experiment_storage
from detfuse.ensemble_outputs import coco_results, fusion_document, submission_csv
from detfuse.errors import UserError
from detfuse.evaluation import evaluate
from detfuse.fusion import METHODS, FusionInputs
from detfuse.fusion_fit import fit_ensemble, split_image_ids
from detfuse.leaderboard import read_leaderboard, top_per_family
from detfuse.member_predictions import (Member, as_predictions, cache_key, cache_uri, predict_member,
                                        read_cached, read_checkpoint_meta, write_cached)
from ray_jobs.cluster import connect

DEFAULT_TOP = 3
DEFAULT_GPUS_PER_MEMBER = 0.25  # small detectors at inference: four share a GPU comfortably


def parse_top(values):
    """--top values ("K" for every family, "FAMILY=K" for one) -> (default K, {family: K})."""
    default, per_family = DEFAULT_TOP, {}
    for value in values or ():
        family, _, count = value.rpartition("=")
        try:
            k = int(count)
        except ValueError:
            k = -1
        if k < 0 or (family == "" and "=" in value):
            raise UserError(f"--top {value}: write K (for every family) or FAMILY=K, with K a whole number >= 0")
        if family:
            per_family[family] = k
        else:
            default = k
    return default, per_family


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
    return json.loads(experiment_storage.read_text(uri))["dataset"]


@ray.remote(max_calls=1)  # a fresh worker per member: a finished member's model leaves no GPU memory behind
def _predict_member_task(member, dataset_spec, dataset_fingerprint, split_names):
    device = "cuda" if ray.get_gpu_ids() else "cpu"
    return predict_member(member, dataset_spec, dataset_fingerprint, split_names, device)


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


def member_predictions(experiment_uri, members, dataset, dataset_spec, split_names, resources):
    """{(trial_id, split): [Prediction]} for every member and split: read from the cache, else run as Ray tasks
    (all at once, spread over the cluster), each result cached as soon as it arrives."""
    predictions, inference_s, pending = {}, {}, {}
    for member in members:
        meta = read_checkpoint_meta(member, dataset)
        missing = []
        for split_name in split_names:
            key = cache_key(member, meta, dataset.fingerprint, split_name)
            cached = read_cached(cache_uri(experiment_uri, member, split_name), key)
            if cached is None:
                missing.append((split_name, key))
            else:
                predictions[(member.trial_id, split_name)] = cached
        if missing:
            task = _predict_member_task.options(**resources).remote(
                member, dataset_spec, dataset.fingerprint, [split_name for split_name, _ in missing])
            pending[task] = (member, dict(missing))
    if pending:
        print(f"inference of {len(pending)} member(s) on {', '.join(split_names)} "
              f"({len(members) - len(pending)} cached)", flush=True)
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        member, keys = pending.pop(done[0])
        results = _get(done[0], f"trial {member.trial_id}: ")
        for split_name, (rows, seconds) in results.items():
            write_cached(cache_uri(experiment_uri, member, split_name), keys[split_name], member, split_name,
                         dataset.fingerprint, rows, seconds)
            predictions[(member.trial_id, split_name)] = as_predictions(rows)
            inference_s[f"{member.trial_id}/{split_name}"] = seconds
    return predictions, inference_s


def _mAP50(coco_gt, predictions, image_ids):
    return evaluate(coco_gt, predictions, image_ids=image_ids).mAP50


class Part(NamedTuple):
    """A set of labelled images numbers are computed on, named as the summary names it (val/fit, test...)."""
    label: str
    split: str  # the dataset split the images belong to
    coco: dict
    inputs: FusionInputs
    image_ids: list


class _Evaluation:
    """Where numbers come from: the fit part (choices) and the report part (the numbers to believe)."""

    def __init__(self, dataset, predictions, members, seed):
        self.val = dataset.splits["val"]
        self.test = dataset.splits.get("test")
        names = [member.trial_id for member in members]
        self.val_inputs = FusionInputs([predictions[(name, "val")] for name in names], self.val.coco["images"],
                                       dataset.category_ids, names)
        val_ids = [int(image["id"]) for image in self.val.coco["images"]]
        self.test_inputs = None
        if self.test is not None:
            self.test_inputs = FusionInputs([predictions[(name, "test")] for name in names],
                                            self.test.coco["images"], dataset.category_ids, names)
        if self.test is not None and self.test.has_annotations:
            self.fit = Part("val", "val", self.val.coco, self.val_inputs, val_ids)
            self.report = Part("test", "test", self.test.coco, self.test_inputs,
                               [int(image["id"]) for image in self.test.coco["images"]])
            self.split_note = "fitted on all of val, reported on the labelled test split"
        else:
            fit_ids, report_ids = split_image_ids(val_ids, seed)
            self.fit = Part("val/fit", "val", self.val.coco, self.val_inputs, fit_ids)
            self.report = Part("val/report", "val", self.val.coco, self.val_inputs, report_ids)
            self.split_note = (f"val split in two by seed {seed}: choices fitted on val/fit, numbers to believe on "
                               f"val/report")

    def member_numbers(self, predictions):
        """A member's mAP50 on all of val, the fit part and the report part; `predictions`: {split: [...]}."""
        numbers = {"val": _mAP50(self.val.coco, predictions["val"], None)}
        for part in (self.fit, self.report):
            numbers[part.label] = _mAP50(part.coco, predictions[part.split], part.image_ids)
        return numbers

    def ensemble_numbers(self, fitted):
        report = self.report
        return {self.fit.label: fitted.fit_mAP50,
                report.label: _mAP50(report.coco, report.inputs.fuse(fitted.params, fitted.members,
                                                                      report.image_ids), report.image_ids)}


def _ensemble_entry(fitted, members, numbers):
    weights = fitted.params.weights or (1.0,) * len(fitted.members)
    return {"members": [members[m].trial_id for m in fitted.members],
            "candidates": [members[m].trial_id for m in fitted.candidates],
            "families": sorted({members[m].family for m in fitted.members}),
            "weights": [float(w) for w in weights], "params": {**fitted.params.as_dict(), "weights": None},
            "mAP50": numbers, "search": {"fusions_scored": fitted.evaluations, "steps": fitted.steps}}


@ray.remote
def _fit_task(inputs, coco, image_ids, method, candidates, keep_one_of):
    return fit_ensemble(inputs, coco, image_ids, method, candidates, keep_one_of)


def fit_all(evaluation, members, method):
    """Same-family ensembles (families with 2+ members), the cross-family one (2+ families), and the final
    ensemble whose outputs are written: the cross-family one, else the one family's, else the lone member fused.
    The fits are independent Ray tasks, so they run side by side on the cluster's CPUs."""
    fit = evaluation.fit
    by_family = {}
    for index, member in enumerate(members):
        by_family.setdefault(member.family, []).append(index)
    searches = {family: indexes for family, indexes in by_family.items() if len(indexes) >= 2}
    if len(by_family) >= 2 or not searches:
        searches[None] = list(range(len(members)))  # None: every member
    inputs, coco = ray.put(fit.inputs), ray.put(fit.coco)
    # the cross-family search must keep a member of every family: that mix is what the ensemble is for
    required = {None: list(by_family.values())}
    tasks = {name: _fit_task.remote(inputs, coco, fit.image_ids, method, candidates, required.get(name, ()))
             for name, candidates in searches.items()}
    fitted = dict(zip(tasks, _get(list(tasks.values()))))
    family_fits = {name: result for name, result in fitted.items() if name is not None}
    cross = fitted.get(None) if len(by_family) >= 2 else None
    final = fitted.get(None) or next(iter(family_fits.values()))
    return family_fits, cross, final


def write_outputs(ensemble_uri, evaluation, final, dataset):
    """fused_<split>.json and .csv for val and (when present) test; returns their URIs and fusion ms/image."""
    outputs, timings = {}, {}
    for split_name, split, inputs in (("val", evaluation.val, evaluation.val_inputs),
                                      ("test", evaluation.test, evaluation.test_inputs)):
        if split is None:
            continue
        start = time.perf_counter()
        fused = inputs.fuse(final.params, final.members)
        timings[split_name] = 1000 * (time.perf_counter() - start) / max(1, len(split.coco["images"]))
        json_uri = experiment_storage.join(ensemble_uri, f"fused_{split_name}.json")
        csv_uri = experiment_storage.join(ensemble_uri, f"fused_{split_name}.csv")
        experiment_storage.write_text(json_uri, json.dumps(coco_results(fused)))
        experiment_storage.write_text(csv_uri, submission_csv(fused, split.coco["images"], dataset.category_ids))
        outputs[split_name] = {"coco_results": json_uri, "csv": csv_uri, "images": len(split.coco["images"]),
                               "predictions": len(fused)}
    return outputs, timings


def _gains(best_single, families, cross, label):
    """mAP50 differences on the report split: what each ensemble adds over the best single model, and what mixing
    families adds over the best same-family ensemble."""
    gains = {f"{family}_ensemble_over_best_single": e["mAP50"][label] - best_single for family, e in families.items()}
    if cross is not None:
        gains["cross_family_over_best_single"] = cross["mAP50"][label] - best_single
        if families:
            gains["cross_family_over_best_family_ensemble"] = cross["mAP50"][label] - max(
                e["mAP50"][label] for e in families.values())
    return gains


def run_ensemble(experiment_uri, top=(), method="wbf", dataset=None, gpus_per_member=None, cpus_per_member=1.0,
                 seed=0, verbose=False):
    """`detfuse ensemble`: see the module docstring. `top` holds --top values; returns the exit code."""
    from detfuse.data import load_dataset

    started = time.perf_counter()
    if method not in METHODS:
        raise UserError(f"--method {method}: valid methods are {', '.join(METHODS)}")
    if not experiment_uri.startswith("s3://"):
        experiment_uri = str(Path(experiment_uri).expanduser().resolve())
    leaderboard_uri = experiment_storage.join(experiment_uri, "leaderboard.json")
    if not experiment_storage.exists(leaderboard_uri):
        raise UserError(f"{leaderboard_uri} does not exist: EXPERIMENT is <storage>/<name> of a `detfuse tune` run "
                        f"that has finished")
    default_k, per_family = parse_top(top)
    members = select_members(read_leaderboard(experiment_uri), default_k, per_family, leaderboard_uri)
    dataset_spec = experiment_dataset(experiment_uri, dataset)
    data = load_dataset(dataset_spec)
    if not data.splits["val"].has_annotations:
        raise UserError(f"{data.splits['val'].json_path}: the val split has no annotations; the ensemble is fitted "
                        f"on it")
    split_names = [name for name in ("val", "test") if name in data.splits]

    connect(verbose)
    resources = task_resources(gpus_per_member, cpus_per_member)
    connected = time.perf_counter()
    predictions, inference_s = member_predictions(experiment_uri, members, data, dataset_spec, split_names,
                                                  resources)
    inference_done = time.perf_counter()

    evaluation = _Evaluation(data, predictions, members, seed)
    member_entries = []
    for member in members:
        by_split = {name: predictions[(member.trial_id, name)] for name in split_names}
        member_entries.append({**member.as_dict(), "mAP50": evaluation.member_numbers(by_split)})
    fit_label, report_label = evaluation.fit.label, evaluation.report.label
    best = max(member_entries, key=lambda entry: entry["mAP50"][fit_label])
    family_fits, cross, final = fit_all(evaluation, members, method)
    fitted_done = time.perf_counter()

    def entry(fitted):
        return None if fitted is None else _ensemble_entry(fitted, members, evaluation.ensemble_numbers(fitted))

    families = {family: entry(fitted) for family, fitted in family_fits.items()}
    cross_entry = entry(cross)
    final_entry = cross_entry or next(iter(families.values()), None) or entry(final)
    ensemble_uri = experiment_storage.join(experiment_uri, "ensemble")
    outputs, fusion_ms = write_outputs(ensemble_uri, evaluation, final, data)
    final_members = [members[m] for m in final.members]
    provenance = {"dataset": {"spec": dataset_spec, "name": data.name, "fingerprint": data.fingerprint},
                  "fitted_on": {"split": fit_label, "images": len(evaluation.fit.image_ids), "seed": seed},
                  "reported": {"split": report_label, "images": len(evaluation.report.image_ids),
                               "mAP50": final_entry["mAP50"][report_label]},
                  "experiment": experiment_uri}
    fusion_uri = experiment_storage.join(ensemble_uri, "fusion.json")
    experiment_storage.write_text(fusion_uri, json.dumps(fusion_document(
        final_members, final.params, data.class_names, data.category_ids, **provenance), indent=2))
    summary = {
        "experiment": experiment_uri, "method": method, "dataset": provenance["dataset"],
        "splits": {"fit": provenance["fitted_on"], "report": {"split": report_label,
                                                              "images": len(evaluation.report.image_ids)},
                   "note": evaluation.split_note},
        "members": member_entries,
        "best_single": {"trial_id": best["trial_id"], "family": best["family"], "chosen_on": fit_label,
                        "mAP50": {label: best["mAP50"][label] for label in (fit_label, report_label)}},
        "family_ensembles": families,
        "cross_family": cross_entry,
        "final": {"ensemble": "cross_family" if cross_entry else (next(iter(families), None) or "single member"),
                  "fusion": fusion_uri},
        "gains": {"split": report_label, **_gains(best["mAP50"][report_label], families, cross_entry, report_label)},
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


def print_summary(summary, summary_uri, stream=None):
    from tabulate import tabulate

    stream = stream or sys.stdout  # looked up now: whoever redirected it since import (pytest, a caller) gets it

    fit_label, report_label = summary["splits"]["fit"]["split"], summary["splits"]["report"]["split"]
    labels = ["val"] + [label for label in (fit_label, report_label) if label != "val"]
    print(f"\nensemble of {summary['experiment']} ({summary['splits']['note']})", file=stream)
    rows = [[m["trial_id"], m["family"], m["architecture"], *(f"{m['mAP50'][label]:.4f}" for label in labels)]
            for m in summary["members"]]
    print(tabulate(rows, headers=["member", "family", "architecture", *(f"mAP50 {label}" for label in labels)],
                   disable_numparse=True), file=stream)
    best = summary["best_single"]
    best_report = best["mAP50"][report_label]
    table = [[f"best single ({best['trial_id']})", f"1 of {len(summary['members'])}", "-", f"{best['mAP50'][fit_label]:.4f}",
              f"{best_report:.4f}", "-"]]
    named = [(f"{family} ensemble", e) for family, e in sorted(summary["family_ensembles"].items())]
    if summary["cross_family"] is not None:
        named.append(("cross-family ensemble", summary["cross_family"]))
    for name, e in named:
        table.append([name, f"{len(e['members'])} of {len(e['candidates'])}", e["params"]["method"], f"{e['mAP50'][fit_label]:.4f}",
                      f"{e['mAP50'][report_label]:.4f}", f"{e['mAP50'][report_label] - best_report:+.4f}"])
    print("\n" + tabulate(table, headers=["", "members", "method", f"mAP50 {fit_label} (fitted)",
                                          f"mAP50 {report_label}", "gain over best single"],
                            disable_numparse=True), file=stream)
    timing = summary["timing"]
    per_image = ", ".join(f"{split} {ms:.1f} ms" for split, ms in timing["fusion_ms_per_image"].items())
    print(f"\nfused {timing['fused_members']} member(s): {per_image} per image; job {timing['total_s']:.1f} s "
          f"(start-up {timing['startup_s']:.1f} s, inference {timing['inference_wall_s']:.1f} s, fitting "
          f"{timing['fit_s']:.1f} s)\n"
          f"summary: {summary_uri}\nfusion:  {summary['final']['fusion']}", file=stream)


def main(argv=None):
    """`python ray_jobs/ensemble.py`: the same as `detfuse ensemble` (for `ray submit`)."""
    from detfuse.cli import main as detfuse_main

    return detfuse_main(["ensemble", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
