"""A validated Dataset in Ultralytics' YOLO format: a folder with images/<split>/ (symlinks to the original files,
never copies), labels/<split>/*.txt and data.yaml, cached under the detfuse node cache by a hash of its content,
so concurrent trials on a node build it once and share it.
"""

import hashlib
import json
import os
from pathlib import Path

import yaml

from detfuse.core.node_cache import build_once, cache_root

_YOLO_VIEW_VERSION = 1  # bump when the view's layout or label format changes


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
        annotations = split.annotations_by_image()
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
