"""The export job: a versioned bundle of a finished experiment's best checkpoints and ensemble, to a directory or S3.

    detfuse export EXPERIMENT --to URI [--endpoint-url URL] [--region NAME] [--sse AES256|aws:kms] [...]
    ray submit cluster.yaml ray_jobs/export.py -- EXPERIMENT --to URI [...]

EXPERIMENT is <storage>/<name> of a tuned and ensembled experiment (leaderboard.json, ensemble/fusion.json and
ensemble/summary.json). The bundle (layout in detfuse/stages/bundle.py) holds the best checkpoint of each family and every
ensemble member's checkpoint, once per trial (a trial fused as itself and as <trial_id>+hflip has one checkpoint),
each as the files prediction needs: the optimizer and other training state stay in the experiment.
The order of writes is what makes a failed export harmless: every bundle file, then manifest.json, then a check of
every file at the destination, then latest.json. Running the same export again finds the bundle by its content
hash and sends only what is missing or different.
"""

import json
import platform
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import trainables
from detfuse.core.storage import experiment_storage
from detfuse.stages import bundle
from detfuse.stages.ensemble_outputs import read_fusion_spec
from detfuse.core.errors import UserError
from detfuse.stages.leaderboard import read_leaderboard, top_per_family
from detfuse.stages.member_predictions import local_checkpoint
from detfuse.core.storage.store import open_store
from detfuse.core.storage.s3 import S3Settings

# recorded in bundle.json: what produced the checkpoints and the fusion, to reproduce or debug a prediction later
PACKAGES = ("detfuse", "torch", "torchvision", "detectron2", "ultralytics", "ray", "ensemble-boxes", "pycocotools",
            "numpy", "pillow", "boto3")


def package_versions():
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


@dataclass
class ExportResult:
    bundle_id: str
    bundle_uri: str
    latest_uri: str
    files: int = 0
    sent: list = field(default_factory=list)  # bundle paths written by this run
    skipped: list = field(default_factory=list)  # bundle paths already at the destination, intact
    bytes_sent: int = 0


def _required(experiment_uri, *parts, hint):
    uri = experiment_storage.join(experiment_uri, *parts)
    if not experiment_storage.exists(uri):
        raise UserError(f"{uri} does not exist: {hint}")
    return uri


def _experiment_name(experiment_uri):
    """The name in the experiment's experiment.json (written by `detfuse tune`), else the URI's last part."""
    uri = experiment_storage.join(experiment_uri, "experiment.json")
    if experiment_storage.exists(uri):
        name = experiment_storage.read_json(uri).get("name")
        if isinstance(name, str) and name:
            return name
    return experiment_uri.rstrip("/").rsplit("/", 1)[-1]


def _checkpoint_dir(trial_id, taken):
    """checkpoints/<trial id>, made safe as a path and unique among `taken`."""
    name = bundle.safe_name(trial_id)
    while name in taken:
        name += "_"
    taken.add(name)
    return f"{bundle.CHECKPOINTS}/{name}"


def stage_bundle(experiment_uri, staging_dir, name=None):
    """({bundle path: local file}, experiment name) for everything the bundle holds; the generated JSON files
    are written to `staging_dir`, checkpoints stay where they are (S3 ones are fetched into the node cache)."""
    _required(experiment_uri, "leaderboard.json",
              hint="EXPERIMENT is <storage>/<name> of a finished `detfuse tune` run")
    fusion_uri = _required(experiment_uri, "ensemble", "fusion.json",
                           hint="run `detfuse ensemble EXPERIMENT` first: the bundle carries its fitted ensemble")
    summary_uri = _required(experiment_uri, "ensemble", "summary.json",
                            hint="run `detfuse ensemble EXPERIMENT` first: the bundle carries its summary")
    rows = read_leaderboard(experiment_uri)
    spec = read_fusion_spec(fusion_uri)
    fusion = experiment_storage.read_json(fusion_uri)
    summary = experiment_storage.read_json(summary_uri)
    dataset = fusion.get("dataset") or {}
    if not dataset.get("fingerprint"):
        raise UserError(f"{fusion_uri}: no dataset fingerprint (dataset.fingerprint); re-run `detfuse ensemble` "
                        f"to write a current fusion.json")

    # what goes in: every ensemble member, then the best trial of each family (often already a member)
    trials = {member.trial_id: {key: getattr(member, key) for key in ("trial_id", "family", "architecture",
                                                                    "checkpoint")}
              for member in spec.members}
    best = {family: family_rows[0] for family, family_rows in sorted(top_per_family(rows, 1).items())}
    for row in best.values():
        trials.setdefault(row["trial_id"], {key: row[key] for key in ("trial_id", "family", "architecture",
                                                                       "checkpoint")})
    taken, files, checkpoints = set(), {}, {}
    for trial_id, trial in trials.items():
        directory = _checkpoint_dir(trial_id, taken)
        source = local_checkpoint(trial["checkpoint"])
        # what predicting needs, not the optimizer and the other state only resuming the trial needs (2/3 of it)
        contents = {name: source / name for name in trainables.load_family(trial["family"], trial_id).inference_files()}
        missing = [name for name, path in contents.items() if not path.is_file()]
        if missing:
            raise UserError(f"{trial['checkpoint']}: no {', '.join(missing)}, so trial {trial_id}'s checkpoint cannot "
                            f"be loaded by `detfuse predict`; is the checkpoint complete?")
        files.update({f"{directory}/{relative}": path for relative, path in contents.items()})
        checkpoints[trial_id] = {"family": trial["family"], "architecture": trial["architecture"],
                                 "path": directory, "source": trial["checkpoint"]}

    name = name or _experiment_name(experiment_uri)
    bundled_fusion = {**fusion, "members": [{**member.as_dict(), "checkpoint": checkpoints[member.trial_id]["path"],
                                             "source_checkpoint": member.checkpoint} for member in spec.members]}
    description = {
        "format": bundle.BUNDLE_FORMAT,
        "experiment": {"name": name, "uri": experiment_uri},
        "dataset": dataset,
        "class_names": spec.class_names,
        "category_ids": spec.category_ids,
        "ensemble": {"fusion": bundle.FUSION,
                     "members": [member.name for member in spec.members],
                     "method": spec.params.method, "reported": fusion.get("reported")},
        "best_per_family": {family: {"trial_id": row["trial_id"], "architecture": row["architecture"],
                                     "checkpoint": checkpoints[row["trial_id"]]["path"],
                                     "mAP50": row["best_mAP50"], "mAP50_95": row.get("best_mAP50_95"),
                                     "epoch": row.get("best_epoch")}
                            for family, row in best.items()},
        "checkpoints": checkpoints,
        "metrics": bundle.METRICS,
        "versions": package_versions(),
    }
    generated = {bundle.DESCRIPTION: description, bundle.FUSION: bundled_fusion,
                 bundle.METRICS: {"leaderboard": rows, "ensemble": summary}}
    for path, document in generated.items():
        (Path(staging_dir) / path).write_text(json.dumps(document, indent=2))
        files[path] = Path(staging_dir) / path
    return files, name


def _send(destination, bundle_id, entries, sources, progress, result):
    """Send every entry not already at the destination intact, in order."""
    for entry in entries:
        key = f"{bundle_id}/{entry.path}"
        if destination.matches(key, entry.size, entry.sha256):
            result.skipped.append(entry.path)
            continue
        destination.put(sources[entry.path], key, entry.sha256,
                        None if progress is None else lambda count, path=entry.path: progress(path, count))
        result.sent.append(entry.path)
        result.bytes_sent += entry.size


def _verify(destination, bundle_id, entries, manifest_bytes):
    """Every file at the destination as sent (S3: size and recorded sha256 by HEAD; local: re-hashed), and the
    manifest read back byte for byte."""
    for entry in entries:
        if not destination.matches(f"{bundle_id}/{entry.path}", entry.size, entry.sha256):
            raise UserError(f"{destination.uri_of(bundle_id)}/{entry.path}: does not match what was sent (size or "
                            f"sha256 differs)")
    if destination.read_bytes(f"{bundle_id}/{bundle.MANIFEST}") != manifest_bytes:
        raise UserError(f"{destination.uri_of(bundle_id)}/{bundle.MANIFEST}: reads back different bytes")


def export_experiment(experiment_uri, to, settings=None, progress=None, name=None) -> ExportResult:
    """Write the bundle of `experiment_uri` under `to`, then point `to`/latest.json at it. `name`: the
    experiment's name (default: from its experiment.json).

    `progress(bundle_path, bytes)` is called as bytes of each file are sent (also from transfer threads).
    """
    if not experiment_uri.startswith("s3://"):
        experiment_uri = str(Path(experiment_uri).expanduser().resolve())
    if not to.startswith("s3://") and Path(to).expanduser().is_file():
        raise UserError(f"{to} is a file; export to a directory (created when missing) or an s3:// prefix")
    destination = open_store(to, settings)
    with tempfile.TemporaryDirectory(prefix="detfuse-export-") as staging:
        files, name = stage_bundle(experiment_uri, staging, name)
        entries = bundle.describe_files(files)
        content_sha = bundle.content_hash(entries)
        previous = destination.read_bytes(bundle.LATEST)
        previous_id = bundle.parse_latest(previous, destination.uri_of(bundle.LATEST))[0] if previous else None
        bundle_id = bundle.find_bundle(destination.names(), name, content_sha) \
            or bundle.new_bundle_id(name, datetime.now(timezone.utc), content_sha)
        files[bundle.MANIFEST] = Path(staging) / bundle.MANIFEST
        files[bundle.MANIFEST].write_text(json.dumps(bundle.manifest_document(bundle_id, entries), indent=2))
        manifest_bytes = files[bundle.MANIFEST].read_bytes()
        latest = Path(staging) / bundle.LATEST
        latest.write_text(json.dumps(bundle.latest_document(bundle_id, manifest_bytes), indent=2))
        [latest_entry] = bundle.describe_files({bundle.LATEST: latest})
        # the manifest last: a bundle that has one received every file before it
        to_send = [*entries, *bundle.describe_files({bundle.MANIFEST: files[bundle.MANIFEST]})]
        result = ExportResult(bundle_id, destination.uri_of(bundle_id), destination.uri_of(bundle.LATEST),
                              files=len(to_send))
        latest_sent = False
        try:
            _send(destination, bundle_id, to_send, files, progress, result)
            _verify(destination, bundle_id, to_send, manifest_bytes)
            if not destination.matches(bundle.LATEST, latest_entry.size, latest_entry.sha256):
                latest_sent = True
                destination.put(latest, bundle.LATEST, latest_entry.sha256)
            if destination.read_bytes(bundle.LATEST) != latest.read_bytes():
                raise UserError(f"{result.latest_uri}: reads back different bytes")
        except UserError as error:
            if latest_sent:
                state = f"{bundle.LATEST} may already name {bundle_id}, whose files were all verified"
            elif previous_id:
                state = f"{bundle.LATEST} still names {previous_id}"
            else:
                state = f"no {bundle.LATEST} was written"
            raise UserError(f"export of {experiment_uri} to {destination.uri} failed: {error}\n{state}. Run the "
                            f"same export again to finish bundle {bundle_id}: files that already arrived intact are "
                            f"skipped") from None
    return result


def export_for(experiment):
    """The pipeline's export stage: the Experiment's own destination, encryption and name."""
    return run_export(experiment.uri, experiment.export_to, S3Settings(sse=experiment.export_sse), experiment.name)


def run_export(experiment_uri, to, settings=None, name=None):
    """`detfuse export`; returns the exit code."""
    from tqdm import tqdm

    with tqdm(unit="B", unit_scale=True, unit_divisor=1024, desc="export", disable=None, leave=False) as bar:
        result = export_experiment(experiment_uri, to, settings, progress=lambda path, count: bar.update(count),
                                   name=name)
    print(f"bundle {result.bundle_id}: {len(result.sent)} file(s) sent ({result.bytes_sent / 2**20:.1f} MiB), "
          f"{len(result.skipped)} already there and intact, all {result.files} verified\n"
          f"bundle: {result.bundle_uri}\nlatest: {result.latest_uri}")
    return 0
