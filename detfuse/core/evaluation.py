"""The one COCO-style evaluator shared by both detector families and the ensemble, so their numbers compare.

It runs pycocotools' own COCOeval (the reference implementation) on indexes built straight from the
dicts in memory: no JSON round trip, no console output, and only the 'all' area range, because mAP50,
mAP50:95 and per-class AP50 need nothing else. That cuts the per-image work to a quarter.
"""

import contextlib
import io
import math
from dataclasses import dataclass
from typing import Iterable, NamedTuple

import numpy as np

from detfuse.core.errors import UserError

# COCO's 'all' area range; the other three (small/medium/large) are never reported here.
_ALL_AREAS = [0.0, 1e5**2]


class Prediction(NamedTuple):
    image_id: int
    category_id: int  # COCO category id as in the ground truth, not a contiguous class index
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels
    score: float


class Detection(NamedTuple):
    """One detection of a predictor on one image (what every family's `load_predictor(...).predict` returns)."""

    category_id: int  # COCO category id
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in the original image's pixels
    score: float


@dataclass(frozen=True)
class Evaluation:
    mAP50: float
    mAP50_95: float
    per_class_ap50: dict[str, float]  # only classes with ground truth in the evaluated images
    num_images: int
    num_predictions: int  # predictions on the evaluated images

    def as_metrics(self) -> dict[str, float]:
        metrics = {"mAP50": self.mAP50, "mAP50_95": self.mAP50_95}
        metrics.update({f"AP50/{name}": ap for name, ap in self.per_class_ap50.items()})
        return metrics


def evaluate(coco_gt: dict, predictions: Iterable[Prediction], image_ids: Iterable[int] | None = None,
             max_detections: int = 100) -> Evaluation:
    """Score `predictions` (Prediction or equal 4-tuples) against the COCO ground truth dict `coco_gt`.

    `image_ids` restricts the evaluation to those images (default: every image in `coco_gt`); predictions
    on other images of `coco_gt` are ignored. Images without annotations count: detections there are false
    positives. `max_detections` is COCO's maxDets, applied per image and category (COCO default 100).
    Follows COCO semantics exactly: AP uses 101-point interpolation and the mean runs over the categories
    that have ground truth in the evaluated images; crowd annotations are ignored regions.
    """
    from pycocotools.cocoeval import COCOeval

    if max_detections < 1:
        raise ValueError(f"max_detections must be >= 1, got {max_detections}")
    known_images = {int(image["id"]) for image in coco_gt["images"]}
    if image_ids is None:
        evaluated = known_images
    else:
        evaluated = {int(image_id) for image_id in image_ids}
        unknown = sorted(evaluated - known_images)
        if unknown:
            raise ValueError(f"image_ids not in the ground truth: {_preview(unknown)}")
    categories = [{"id": int(c["id"]), "name": c["name"]} for c in coco_gt["categories"]]
    names = {c["id"]: c["name"] for c in categories}
    if len(set(names.values())) != len(categories):
        raise ValueError("category names in the ground truth are not unique; per-class AP needs unique names")

    # Fresh annotation dicts: COCOeval writes into them, and it treats id 0 as "unmatched", so ids are
    # renumbered from 1 whatever the file uses.
    gt_annotations = []
    for annotation in coco_gt.get("annotations", []):
        if int(annotation["image_id"]) not in evaluated:
            continue
        if int(annotation["category_id"]) not in names:
            raise ValueError(f"ground-truth annotation {annotation.get('id')} has category id "
                             f"{annotation['category_id']}, which is not in the categories {sorted(names)}")
        x, y, w, h = (float(v) for v in annotation["bbox"])
        gt_annotations.append({
            "id": len(gt_annotations) + 1, "image_id": int(annotation["image_id"]),
            "category_id": int(annotation["category_id"]), "bbox": [x, y, w, h], "area": w * h,
            "iscrowd": int(annotation.get("iscrowd", 0)),
        })
    if not any(a["iscrowd"] == 0 for a in gt_annotations):
        raise UserError(
            f"nothing to evaluate: the ground truth has no (non-crowd) annotations on the {len(evaluated)} "
            "evaluated images. Evaluate on a split with annotations (train or val, not an unlabeled test split).")

    detections = []
    for image_id, category_id, (x1, y1, x2, y2), score in predictions:
        image_id, category_id = int(image_id), int(category_id)
        if category_id not in names:
            raise ValueError(f"prediction with category id {category_id}, which is not in the ground truth "
                             f"(known COCO category ids: {sorted(names)}); pass COCO ids, not class indexes")
        if image_id not in evaluated:
            if image_id not in known_images:
                raise ValueError(f"prediction for image id {image_id}, which is not in the ground truth")
            continue
        x1, y1, x2, y2, score = float(x1), float(y1), float(x2), float(y2), float(score)
        # NaN fails every comparison; the sum is not finite when any term is infinite
        if not (x1 <= x2 and y1 <= y2 and math.isfinite(x1 + y1 + x2 + y2 + score)):
            raise ValueError(f"invalid prediction on image {image_id}: box {(x1, y1, x2, y2)} "
                             f"(want finite x1 <= x2, y1 <= y2), score {score}")
        detections.append({
            "id": len(detections) + 1, "image_id": image_id, "category_id": category_id,
            "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "score": score, "iscrowd": 0,
        })

    images = [{"id": image_id} for image_id in sorted(evaluated)]
    with contextlib.redirect_stdout(io.StringIO()):
        coco_eval = COCOeval(_index(images, gt_annotations, categories), _index(images, detections, categories),
                             iouType="bbox")
        coco_eval.params.imgIds = sorted(evaluated)
        coco_eval.params.areaRng = [_ALL_AREAS]
        coco_eval.params.areaRngLbl = ["all"]
        coco_eval.params.maxDets = [max_detections]
        coco_eval.evaluate()
        coco_eval.accumulate()

    # precision: [IoU thresholds, recall thresholds, categories, area ranges, maxDets]; -1 marks a category
    # without ground truth, for every recall threshold at once.
    precision = coco_eval.eval["precision"][:, :, :, 0, -1]
    at_50 = precision[_iou_index(coco_eval.params.iouThrs, 0.5)]
    per_class_ap50 = {
        names[category_id]: float(np.mean(at_50[:, k]))
        for k, category_id in enumerate(coco_eval.params.catIds) if at_50[0, k] > -1
    }
    return Evaluation(
        mAP50=_mean_present(at_50), mAP50_95=_mean_present(precision), per_class_ap50=per_class_ap50,
        num_images=len(evaluated), num_predictions=len(detections),
    )


def _index(images, annotations, categories):
    """A pycocotools COCO object over in-memory lists (its constructor only knows files)."""
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = {"images": images, "annotations": annotations, "categories": categories}
    coco.createIndex()
    return coco


def _iou_index(thresholds, iou):
    return int(np.argmin(np.abs(np.asarray(thresholds) - iou)))


def _mean_present(precision):
    """Mean over entries of categories with ground truth: COCOeval.summarize's own reduction."""
    return float(np.mean(precision[precision > -1]))


def _preview(values, limit=10):
    shown = ", ".join(str(v) for v in values[:limit])
    return shown + (f" ... ({len(values)} in all)" if len(values) > limit else "")
