"""Views of a validated Dataset in the formats the detector families read.

- detectron2 dataset dicts: plain dicts built in memory, so any process (a fresh Ray worker) can rebuild and
  register them itself; no detectron2 import here.
- Ultralytics YOLO format: a folder with images/<split>/ (symlinks to the original files, never copies),
  labels/<split>/*.txt and data.yaml, cached under the detfuse cache by a hash of its content, so concurrent
  trials on a node build it once and share it.
"""

import collections
import hashlib
import json
import os
from pathlib import Path

import yaml

from detfuse.data.cache import build_once, cache_root
from detfuse.errors import UserError

_YOLO_VIEW_VERSION = 1  # bump when the view's layout or label format changes
_BOX_MODE_XYXY_ABS = 0  # detectron2.structures.BoxMode.XYXY_ABS


def _split(dataset, split_name):
    if split_name not in dataset.splits:
        raise UserError(f"dataset {dataset.name} has no '{split_name}' split; it has {', '.join(dataset.splits)}")
    return dataset.splits[split_name]


def _annotations_by_image(coco):
    grouped = collections.defaultdict(list)
    for annotation in coco["annotations"]:
        grouped[annotation["image_id"]].append(annotation)
    return grouped


def detectron2_dicts(dataset, split_name: str) -> list[dict]:
    """detectron2's standard dataset dicts for one split: boxes XYXY_ABS, category_id = contiguous class index."""
    split = _split(dataset, split_name)
    class_index = dataset.class_index
    annotations = _annotations_by_image(split.coco)
    records = []
    for image in split.coco["images"]:
        objects = []
        for annotation in annotations[image["id"]]:
            x, y, w, h = annotation["bbox"]
            objects.append({"bbox": [x, y, x + w, y + h], "bbox_mode": _BOX_MODE_XYXY_ABS,
                            "category_id": class_index[annotation["category_id"]],
                            "iscrowd": annotation["iscrowd"]})
        records.append({"file_name": str(split.image_path(image)), "image_id": image["id"],
                        "height": image["height"], "width": image["width"], "annotations": objects})
    return records


def _yolo_link_name(image) -> str:
    """The image id keeps names unique even when file names repeat across sub-folders."""
    return f"{image['id']}_{Path(image['file_name']).name}"


def _yolo_label_lines(annotations, image, class_index):
    """'class cx cy w h' normalised to the image; crowd regions are left out (YOLO has no notion of them)."""
    width, height = image["width"], image["height"]
    lines = []
    for annotation in annotations:
        if annotation["iscrowd"]:
            continue
        x, y, w, h = annotation["bbox"]
        x1, y1 = min(max(x / width, 0.0), 1.0), min(max(y / height, 0.0), 1.0)
        x2, y2 = min(max((x + w) / width, 0.0), 1.0), min(max((y + h) / height, 0.0), 1.0)
        lines.append(f"{class_index[annotation['category_id']]} {(x1 + x2) / 2:.6f} {(y1 + y2) / 2:.6f} "
                     f"{x2 - x1:.6f} {y2 - y1:.6f}\n")
    return "".join(lines)


def _yolo_view_key(dataset) -> str:
    """Hash of everything the view's files are made of: the cleaned labels, class names and image locations."""
    digest = hashlib.sha256(f"yolo-view-v{_YOLO_VIEW_VERSION}\0".encode())
    digest.update(json.dumps(dataset.class_names).encode())
    for name, split in sorted(dataset.splits.items()):
        content = {"image_root": str(split.image_root.absolute()), "images": split.coco["images"],
                   "annotations": split.coco["annotations"], "categories": split.coco["categories"]}
        digest.update(f"\0{name}\0".encode())
        digest.update(json.dumps(content, sort_keys=True).encode())
    return digest.hexdigest()[:24]


def _write_yolo_view(dataset, target: Path, final: Path):
    class_index = dataset.class_index
    for name, split in dataset.splits.items():
        image_dir, label_dir = target / "images" / name, target / "labels" / name
        image_dir.mkdir(parents=True)
        if split.has_annotations:  # an unlabelled test split gets no labels rather than empty "background" ones
            label_dir.mkdir(parents=True)
        annotations = _annotations_by_image(split.coco)
        for image in split.coco["images"]:
            link = image_dir / _yolo_link_name(image)
            os.symlink(split.image_path(image).absolute(), link)
            if split.has_annotations:
                (label_dir / (link.stem + ".txt")).write_text(
                    _yolo_label_lines(annotations[image["id"]], image, class_index))
    data = {"path": str(final), **{name: f"images/{name}" for name in dataset.splits},
            "names": dict(enumerate(dataset.class_names))}
    (target / "data.yaml").write_text(yaml.safe_dump(data, sort_keys=False))


def yolo_view(dataset) -> Path:
    """data.yaml of the dataset's Ultralytics view, built once per content under <cache>/yolo/<hash>/."""
    entry = cache_root() / "yolo" / _yolo_view_key(dataset)
    build_once(entry, lambda target: _write_yolo_view(dataset, target, entry))
    return entry / "data.yaml"
