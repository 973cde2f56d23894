"""Ensemble members and their predictions: each member's checkpoint run once per split through its family's
predictor, and cached on experiment storage so that refitting or re-running the fusion repeats no inference.

Test-time augmentation (`detfuse ensemble --tta`) makes members cheaply: with `hflip`, every selected trial is
also fused as a second member, "<trial_id>+hflip", its predictions on the images mirrored left-right (boxes mapped
back). Both come from one model load, in the same Ray task.

A cache file is valid only for the exact checkpoint (its URI and its detfuse.json), the exact dataset
(fingerprint) and the augmentation it was computed with; anything else is recomputed.

    <experiment>/ensemble/predictions/<member name>-<split>.json   (member name: <trial_id> or <trial_id>+hflip)
        {"key", "trial_id", "tta", "checkpoint", "split", "dataset_fingerprint", "inference_s",
         "predictions": [[image_id, category_id, x1, y1, x2, y2, score], ...]}
"""

import hashlib
import json
import time
from dataclasses import dataclass, replace

from detfuse.core import checkpoint_meta
from detfuse.core.storage import experiment_storage
from detfuse.core.errors import UserError
from detfuse.core.evaluation import Prediction

TTA_MODES = ("none", "hflip")  # a member's augmentation; as --tta, the one each trial is also fused with
# none: on real photos (benchmarks/RESULTS.md) mirrored passes helped same-family ensembles but not the
# cross-family one, and they double inference and fitting time
DEFAULT_TTA = "none"


def member_name(trial_id, tta):
    """How summaries and fusion.json name a member: its trial, "+<tta>" when augmented."""
    return trial_id if tta == "none" else f"{trial_id}+{tta}"


@dataclass(frozen=True)
class Member:
    """One input of the fusion: a trial's checkpoint predicting the images as they are (tta "none") or augmented."""

    trial_id: str
    family: str
    architecture: str
    checkpoint: str  # URI of the checkpoint directory: local path or s3://
    leaderboard_mAP50: float  # the trial's own best val mAP50, as Tune recorded it
    tta: str = "none"  # one of TTA_MODES

    @classmethod
    def from_row(cls, row):
        return cls(trial_id=row["trial_id"], family=row["family"], architecture=row["architecture"],
                   checkpoint=row["checkpoint"], leaderboard_mAP50=row["best_mAP50"])

    @property
    def name(self):
        return member_name(self.trial_id, self.tta)


def with_tta(members, tta):
    """The fusion's inputs for trials `members` under --tta `tta`: each trial as it is, then (unless tta is none)
    each trial augmented. The plain ones come first, so the fit's ties go to them."""
    if tta not in TTA_MODES:
        raise UserError(f"--tta {tta}: valid values are {', '.join(TTA_MODES)}")
    return list(members) + ([replace(member, tta=tta) for member in members] if tta != "none" else [])


def read_checkpoint_meta(member, dataset):
    """The checkpoint's detfuse.json text, after checking that it was trained on the dataset's classes."""
    uri = experiment_storage.join(member.checkpoint, checkpoint_meta.FILE_NAME)
    text = experiment_storage.read_text(uri)
    try:
        meta = json.loads(text)
    except ValueError as error:
        raise UserError(f"{uri}: not valid JSON ({error}); is trial {member.trial_id}'s checkpoint complete?") from None
    if list(meta.get("category_ids", [])) != list(dataset.category_ids):
        raise UserError(f"{uri}: trial {member.trial_id} was trained on category ids {meta.get('category_ids')}, "
                        f"but dataset '{dataset.name}' has {dataset.category_ids}; ensemble it with the dataset it "
                        f"was trained on (--dataset)")
    return text


def cache_uri(experiment_uri, member, split_name):
    return experiment_storage.join(experiment_uri, "ensemble", "predictions", f"{member.name}-{split_name}.json")


def cache_key(member, checkpoint_meta, dataset_fingerprint, split_name):
    identity = [member.checkpoint, checkpoint_meta, dataset_fingerprint, split_name, member.tta]
    return hashlib.sha256(json.dumps(identity).encode()).hexdigest()


def read_cached(uri, key):
    """The cached predictions at `uri` if they were computed for `key`, else None."""
    if not experiment_storage.exists(uri):
        return None
    try:
        cached = json.loads(experiment_storage.read_text(uri))
    except ValueError:
        return None  # a damaged cache file is recomputed and overwritten
    if cached.get("key") != key:
        return None
    return as_predictions(cached["predictions"])


def write_cached(uri, key, member, split_name, dataset_fingerprint, rows, inference_s):
    experiment_storage.write_text(uri, json.dumps({
        "key": key, "trial_id": member.trial_id, "tta": member.tta, "checkpoint": member.checkpoint,
        "split": split_name, "dataset_fingerprint": dataset_fingerprint, "inference_s": inference_s,
        "predictions": rows,
    }))


def as_predictions(rows):
    return [Prediction(int(i), int(c), (x1, y1, x2, y2), s) for i, c, x1, y1, x2, y2, s in rows]


def local_checkpoint(uri):
    """A local directory holding the checkpoint at `uri` (S3 checkpoints are fetched once per node)."""
    from detfuse.core.storage.s3 import is_s3_uri, local_path

    path = local_path(uri.rstrip("/") + "/" if is_s3_uri(uri) else uri)
    if not path.is_dir():
        raise UserError(f"checkpoint {uri} is not a directory on this node; on a multi-node cluster the "
                        f"experiment storage must be shared (s3:// or a shared file system)")
    return path


def predict_member(member, dataset_spec, dataset_fingerprint, runs, device):
    """Run the checkpoint of `member`, loaded once, for each (split name, tta) of `runs` on every image of the
    split. Returns {(split name, tta): (rows, seconds)}, rows being [image_id, category_id, x1, y1, x2, y2, score]
    lists (compact to ship between Ray processes)."""
    import trainables
    from detfuse.core.data import load_dataset

    dataset = load_dataset(dataset_spec)
    if dataset.fingerprint != dataset_fingerprint:
        raise UserError(f"dataset {dataset_spec} differs on this node from the one the ensemble job loaded "
                        f"(fingerprint {dataset.fingerprint[:12]} vs {dataset_fingerprint[:12]})")
    predictor = trainables.load_family(member.family, f"trial {member.trial_id}").load_predictor(
        local_checkpoint(member.checkpoint), device)
    results = {}
    for split_name, tta in runs:
        split = dataset.splits[split_name]
        images = split.coco["images"]
        start = time.perf_counter()
        outputs = predictor.predict([split.image_path(image) for image in images], flip=tta == "hflip")
        if len(outputs) != len(images):
            raise RuntimeError(f"trial {member.trial_id}: the {member.family} predictor returned {len(outputs)} "
                               f"results for {len(images)} images")
        rows = [[int(image["id"]), int(d.category_id), *(round(float(v), 3) for v in d.box), round(float(d.score), 6)]
                for image, detections in zip(images, outputs) for d in detections]
        results[(split_name, tta)] = (rows, time.perf_counter() - start)
    return results
