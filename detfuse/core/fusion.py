"""Fusing the detections of several models on the same images into one set, with ensemble-boxes.

ensemble-boxes wants boxes normalised to [0, 1], contiguous integer labels, equal-length arrays per model and a
conf_type it knows, and on some bad inputs it prints a line and calls exit(), which would end a Ray worker with no
traceback. So every input is checked and converted here first: boxes are divided by their image's width and height
and clipped into it, boxes left without area are dropped, COCO category ids become class indexes (and back
afterwards), and the parameters are validated against the method. Results come back in pixels.
"""

import math
import warnings
from dataclasses import asdict, dataclass
from typing import Iterable, Sequence

import numpy as np

from detfuse.core.errors import UserError
from detfuse.core.evaluation import Prediction

# method -> the conf_type values it accepts; None means the method has no conf_type setting
CONF_TYPES = {
    "wbf": ("avg", "max", "box_and_model_avg", "absent_model_aware_avg"),
    "nms": (None,),
    "soft_nms": (None,),
    "nmw": (None,),
}
METHODS = tuple(CONF_TYPES)


@dataclass(frozen=True)
class FusionParams:
    """How to fuse: `weights` holds one positive weight per member (None: all equal).

    `skip_box_thr` drops member boxes scoring below it before fusion, for every method. `sigma` is Soft-NMS's
    Gaussian width and is ignored by the other methods.
    """

    method: str = "wbf"
    iou_thr: float = 0.55
    skip_box_thr: float = 0.0
    conf_type: str | None = "avg"
    weights: tuple[float, ...] | None = None
    sigma: float = 0.5

    @classmethod
    def default(cls, method):
        check_method(method)
        return cls(method=method, conf_type=CONF_TYPES[method][0])

    def validate(self, num_members):
        """Raise ValueError unless these parameters can fuse `num_members` members."""
        check_method(self.method)
        if num_members < 1:
            raise ValueError("fusion needs at least one member")
        if not (isinstance(self.iou_thr, (int, float)) and 0.0 < self.iou_thr < 1.0):
            raise ValueError(f"iou_thr must be in (0, 1), got {self.iou_thr!r}")
        if not (isinstance(self.skip_box_thr, (int, float)) and 0.0 <= self.skip_box_thr < 1.0):
            raise ValueError(f"skip_box_thr must be in [0, 1), got {self.skip_box_thr!r}")
        if self.conf_type not in CONF_TYPES[self.method]:
            allowed = ", ".join(str(c) for c in CONF_TYPES[self.method])
            raise ValueError(f"conf_type {self.conf_type!r} does not apply to method '{self.method}' "
                             f"(allowed: {allowed})")
        if not (isinstance(self.sigma, (int, float)) and self.sigma > 0):
            raise ValueError(f"sigma must be a positive number, got {self.sigma!r}")
        if self.weights is not None:
            if len(self.weights) != num_members:
                raise ValueError(f"{len(self.weights)} weights for {num_members} members: give one weight per member")
            if not all(isinstance(w, (int, float)) and math.isfinite(w) and w > 0 for w in self.weights):
                raise ValueError(f"weights must be positive finite numbers, got {list(self.weights)}")

    def as_dict(self):
        return asdict(self) | {"weights": None if self.weights is None else list(self.weights)}

    @classmethod
    def from_dict(cls, data, num_members, where):
        """Parameters read from a file (`where`), validated; a UserError names the file and the problem."""
        known = set(cls.__dataclass_fields__)
        if not isinstance(data, dict) or set(data) != known:
            raise UserError(f"{where}: fusion parameters must be a mapping with exactly the keys "
                            f"{', '.join(sorted(known))}, got {data!r}")
        weights = data.get("weights")
        params = cls(**{**data, "weights": None if weights is None else tuple(weights)})
        try:
            params.validate(num_members)
        except ValueError as error:
            raise UserError(f"{where}: {error}") from None
        return params


def check_method(method):
    if method not in CONF_TYPES:
        raise ValueError(f"unknown fusion method {method!r}; valid methods: {', '.join(METHODS)}")


_EMPTY = (np.zeros((0, 4)), np.zeros(0), np.zeros(0, dtype=np.int64))


def normalise(detections, width, height, class_index, where):
    """One member's detections on one image as ensemble-boxes arrays: (boxes in [0, 1], scores, class indexes).

    `detections` are objects with `category_id` (COCO id), `box` (x1, y1, x2, y2 pixels) and `score`. Boxes reaching
    out of the image are clipped to it; boxes with no area inside it are dropped. Anything else malformed (unknown
    category, NaN, x2 < x1, score outside [0, 1]) is a bug upstream and raises ValueError naming `where`.
    """
    if not (width > 0 and height > 0):
        raise ValueError(f"{where}: image size {width}x{height} must be positive")
    if not detections:
        return _EMPTY
    values = np.array([(*d.box, d.score) for d in detections], dtype=np.float64).reshape(len(detections), 5)
    labels = np.array([class_index.get(int(d.category_id), -1) for d in detections], dtype=np.int64)
    if (labels < 0).any():
        unknown = sorted({int(d.category_id) for d in detections if int(d.category_id) not in class_index})
        raise ValueError(f"{where}: category id(s) {unknown} are not among the dataset's {sorted(class_index)}")
    if not np.isfinite(values).all():
        raise ValueError(f"{where}: a box or score is not finite (NaN or infinite)")
    boxes, scores = values[:, :4], values[:, 4]
    if (boxes[:, 2] < boxes[:, 0]).any() or (boxes[:, 3] < boxes[:, 1]).any():
        raise ValueError(f"{where}: a box has x2 < x1 or y2 < y1; boxes must be (x1, y1, x2, y2)")
    if ((scores < 0) | (scores > 1)).any():
        raise ValueError(f"{where}: scores must lie in [0, 1], got range [{scores.min()}, {scores.max()}]")
    boxes = np.clip(boxes / np.array([width, height, width, height]), 0.0, 1.0)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return boxes[keep], scores[keep], labels[keep]


def fuse_normalised(members, params):
    """Fuse per-member (boxes, scores, labels) arrays of one image, as `normalise` makes them. Returns the same
    triple for the fused boxes. `params` must have been validated for len(members)."""
    import ensemble_boxes

    weights = None if params.weights is None else list(params.weights)
    if params.method in ("nms", "soft_nms"):
        # these two have no skip threshold of their own
        members = [(b[s >= params.skip_box_thr], s[s >= params.skip_box_thr], l[s >= params.skip_box_thr])
                   for b, s, l in members]
    if sum(len(scores) for _, scores, _ in members) == 0:
        return _EMPTY  # nms_method cannot concatenate nothing; WBF and NMW would return the same empty arrays
    boxes = [b for b, _, _ in members]
    scores = [s for _, s, _ in members]
    labels = [l for _, _, l in members]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # inputs are clean; the library warns per box otherwise
        if params.method == "wbf":
            fused = ensemble_boxes.weighted_boxes_fusion(boxes, scores, labels, weights=weights,
                                                         iou_thr=params.iou_thr, skip_box_thr=params.skip_box_thr,
                                                         conf_type=params.conf_type)
        elif params.method == "nmw":
            fused = ensemble_boxes.non_maximum_weighted(boxes, scores, labels, weights=weights,
                                                        iou_thr=params.iou_thr, skip_box_thr=params.skip_box_thr)
        elif params.method == "nms":
            fused = ensemble_boxes.nms(boxes, scores, labels, weights=weights, iou_thr=params.iou_thr)
        else:
            fused = ensemble_boxes.soft_nms(boxes, scores, labels, weights=weights, iou_thr=params.iou_thr,
                                            sigma=params.sigma, thresh=params.skip_box_thr)
    fused_boxes, fused_scores, fused_labels = fused
    return np.asarray(fused_boxes, dtype=np.float64).reshape(-1, 4), np.asarray(fused_scores, dtype=np.float64), \
        np.asarray(fused_labels).astype(np.int64)


def _to_pixels(fused, width, height, category_ids, image_id):
    boxes, scores, labels = fused
    boxes = boxes * np.array([width, height, width, height])
    return [Prediction(image_id, category_ids[label], tuple(box), score)
            for box, score, label in zip(boxes.tolist(), scores.tolist(), labels.tolist())]


def fuse_image(members_detections, width, height, category_ids, params, where="image"):
    """Fuse the detections of each member on one image (a list per member, in member order) into one list of
    Prediction with image_id None, in pixels; what `detfuse predict` does image by image."""
    params.validate(len(members_detections))
    class_index = {int(c): k for k, c in enumerate(category_ids)}
    members = [normalise(detections, width, height, class_index, f"{where}, member {m}")
               for m, detections in enumerate(members_detections)]
    return _to_pixels(fuse_normalised(members, params), width, height, list(category_ids), None)


class FusionInputs:
    """Every member's predictions on a set of images, normalised once, so the many fusions of a parameter search
    do no conversion work."""

    def __init__(self, members_predictions: Sequence[Iterable[Prediction]], images: Sequence[dict],
                 category_ids: Sequence[int], member_names: Sequence[str] | None = None):
        self.member_names = list(member_names or (f"member {m}" for m in range(len(members_predictions))))
        if len(self.member_names) != len(members_predictions):
            raise ValueError(f"{len(self.member_names)} member names for {len(members_predictions)} members")
        self.sizes = {int(image["id"]): (float(image["width"]), float(image["height"])) for image in images}
        self.category_ids = [int(c) for c in category_ids]
        class_index = {c: k for k, c in enumerate(self.category_ids)}
        self.arrays = []
        for name, predictions in zip(self.member_names, members_predictions):
            by_image = {image_id: [] for image_id in self.sizes}
            for prediction in predictions:
                if int(prediction.image_id) not in by_image:
                    raise ValueError(f"{name}: prediction for image id {prediction.image_id}, which is not among "
                                     f"the {len(self.sizes)} images being fused")
                by_image[int(prediction.image_id)].append(prediction)
            self.arrays.append({
                image_id: normalise(detections, *self.sizes[image_id], class_index, f"{name}, image {image_id}")
                for image_id, detections in by_image.items()
            })

    def fuse(self, params: FusionParams, members: Sequence[int] | None = None,
             image_ids: Iterable[int] | None = None) -> list[Prediction]:
        """Fused predictions (pixels, COCO ids) of the `members` (indexes; default all, in this order) on
        `image_ids` (default all images); params.weights, when given, follow the order of `members`."""
        members = list(range(len(self.arrays))) if members is None else list(members)
        params.validate(len(members))
        predictions = []
        for image_id in (self.sizes if image_ids is None else image_ids):
            width, height = self.sizes[int(image_id)]
            fused = fuse_normalised([self.arrays[m][int(image_id)] for m in members], params)
            predictions.extend(_to_pixels(fused, width, height, self.category_ids, int(image_id)))
        return predictions


def fuse(members_predictions, images, category_ids, params, member_names=None) -> list[Prediction]:
    """Fuse whole prediction sets: one iterable of Prediction per member over the COCO `images` (dicts with id,
    width, height), in pixels and COCO category ids; the result is one list of Prediction."""
    return FusionInputs(members_predictions, images, category_ids, member_names).fuse(params)
