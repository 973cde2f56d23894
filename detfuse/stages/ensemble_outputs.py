"""The files the ensemble job hands on: fused predictions in two formats, and fusion.json, the fitted ensemble.

- COCO results JSON: [{"image_id", "category_id", "bbox": [x, y, w, h], "score"}], pixels, COCO category ids.
- Submission CSV, the origin competition's format: columns `PredictionString,image_id`, one row per image (empty
  PredictionString when nothing was found), PredictionString = "label score xmin ymin xmax ymax ..." with label the
  contiguous class index (the order of `class_names` in fusion.json) and pixel corners; image_id is the image's
  file_name as listed in the split's COCO JSON.
- fusion.json: everything `detfuse predict` and the export need to rebuild the ensemble: members (trial, family,
  architecture, checkpoint URI, tta, weight), method and parameters, class names and COCO category ids. A member's
  tta is "none" (the images as they are) or "hflip" (the trial's predictions on the mirrored images: member
  <trial_id>+hflip, whose trial may also be a member as it is); files written before tta existed mean none.
"""

import csv
import io
from dataclasses import asdict, dataclass

from detfuse.core.storage import experiment_storage
from detfuse.core.errors import UserError
from detfuse.core.fusion import FusionParams
from detfuse.stages.member_predictions import TTA_MODES, member_name

FUSION_FORMAT = "detfuse-fusion/1"
MEMBER_KEYS = ("trial_id", "family", "architecture", "checkpoint", "weight")  # and "tta", "none" when absent


def coco_results(predictions):
    return [{"image_id": int(p.image_id), "category_id": int(p.category_id),
             "bbox": [p.box[0], p.box[1], p.box[2] - p.box[0], p.box[3] - p.box[1]], "score": float(p.score)}
            for p in predictions]


def submission_csv(predictions, images, category_ids):
    """The CSV text for `predictions` over the COCO `images` (every image gets a row, in the images' order)."""
    class_index = {int(c): k for k, c in enumerate(category_ids)}
    by_image = {int(image["id"]): [] for image in images}
    for p in sorted(predictions, key=lambda p: -p.score):
        by_image[int(p.image_id)].append(
            f"{class_index[int(p.category_id)]} {p.score:.6f} {p.box[0]:.3f} {p.box[1]:.3f} {p.box[2]:.3f} "
            f"{p.box[3]:.3f}")
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["PredictionString", "image_id"])
    for image in images:
        writer.writerow([" ".join(by_image[int(image["id"])]), image["file_name"]])
    return text.getvalue()


@dataclass(frozen=True)
class FusedMember:
    """A member as fusion.json records it: the checkpoint that predicts, how (tta), and its weight in the fusion."""

    trial_id: str
    family: str
    architecture: str
    checkpoint: str  # URI of the checkpoint directory, or its folder inside an export bundle
    tta: str
    weight: float

    @property
    def name(self):
        return member_name(self.trial_id, self.tta)

    def as_dict(self):
        return asdict(self)


@dataclass
class FusionSpec:
    members: list  # FusedMember, in fusion order
    params: FusionParams  # params.weights is None: each member's weight is in `members`
    class_names: list
    category_ids: list

    @property
    def weighted_params(self):
        """The parameters with the members' weights, ready for detfuse.core.fusion."""
        weights = tuple(m.weight for m in self.members)
        return FusionParams(**{**self.params.as_dict(), "weights": None if len(set(weights)) <= 1 else weights})


def fusion_document(members, params, class_names, category_ids, **provenance):
    """The fusion.json content: `members` are detfuse.stages.member_predictions.Member, `params.weights` follows them;
    `provenance` (dataset, fitted_on, reported, ...) is recorded as is."""
    weights = params.weights or (1.0,) * len(members)
    return {
        "format": FUSION_FORMAT,
        "members": [{"trial_id": m.trial_id, "family": m.family, "architecture": m.architecture,
                     "checkpoint": m.checkpoint, "tta": m.tta, "weight": float(w)} for m, w in zip(members, weights)],
        "params": {**params.as_dict(), "weights": None},
        "class_names": list(class_names),
        "category_ids": [int(c) for c in category_ids],
        **provenance,
    }


def read_fusion_spec(uri):
    """Read and validate a fusion.json (local path or s3://)."""
    document = experiment_storage.read_json(uri)
    if not isinstance(document, dict) or document.get("format") != FUSION_FORMAT:
        raise UserError(f"{uri}: not a detfuse fusion file (expected \"format\": \"{FUSION_FORMAT}\"); "
                        f"it is written by `detfuse ensemble`")
    members = document.get("members")
    if not isinstance(members, list) or not members or not all(
            isinstance(m, dict) and set(MEMBER_KEYS) <= set(m) for m in members):
        raise UserError(f"{uri}: 'members' must be a non-empty list of objects with {', '.join(MEMBER_KEYS)}")
    for member in members:
        if member.get("tta", "none") not in TTA_MODES:
            raise UserError(f"{uri}: member {member['trial_id']}: tta {member['tta']!r}; valid values are "
                            f"{', '.join(TTA_MODES)}")
    members = [FusedMember(member["trial_id"], member["family"], member["architecture"], member["checkpoint"],
                           member.get("tta", "none"), float(member["weight"])) for member in members]
    class_names, category_ids = document.get("class_names"), document.get("category_ids")
    if not (isinstance(class_names, list) and isinstance(category_ids, list) and class_names
            and len(class_names) == len(category_ids)):
        raise UserError(f"{uri}: 'class_names' and 'category_ids' must be non-empty lists of equal length")
    params = FusionParams.from_dict(document.get("params"), len(members), f"{uri}: params")
    spec = FusionSpec(members, params, class_names, category_ids)
    try:
        spec.weighted_params.validate(len(members))
    except (ValueError, TypeError) as error:
        raise UserError(f"{uri}: member weights: {error}") from None
    return spec
