"""Checks of one COCO split against its JSON schema, its images on disk and the train split's categories.

Every problem becomes a Finding naming the file, the id and the reason, and all of them are collected before
anything is decided, so the user fixes a broken dataset in one round. `apply_policy` then either refuses the
dataset (listing the findings) or repairs the ones the policy covers: 'clip' clips boxes into their image and
drops boxes left empty, 'drop' drops offending annotations and images whose files are bad. Unreadable files,
broken structure and duplicate ids are never repaired: no policy can guess what was meant.
"""

import collections
import concurrent.futures
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from detfuse.core.errors import UserError

POLICIES = ("error", "clip", "drop")
MAX_FINDINGS_SHOWN = 50
_BOX_TOLERANCE = 1e-3  # pixels: float round-off from format conversions is not a finding
_HEADER_THREADS = 16  # image headers are read in parallel: the work is mostly waiting on the file system
_EXIF_ORIENTATION = 0x0112
_TRANSPOSED_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that turn the image by 90 degrees
_EXIF_FORMATS = ("JPEG", "MPO", "TIFF", "WEBP")  # formats whose EXIF block is read with the header
_LIST_KEYS = {"image": "images", "category": "categories", "annotation": "annotations"}  # kind -> its COCO list


@dataclass(frozen=True)
class Finding:
    file: Path
    subject: str  # "image id 12", "annotation id 7", "category id 3", "images[4]", or "" for the whole file
    reason: str
    repairs: frozenset = frozenset()  # policies that repair it; empty: always an error
    target: tuple | None = None  # ("image", id) or ("annotation", id): what a repair changes

    def __str__(self):
        return f"{self.file}: {self.subject}: {self.reason}" if self.subject else f"{self.file}: {self.reason}"


@dataclass
class CheckedSplit:
    """One split after checking: its parsed JSON (None when unreadable), its raw bytes, and what was found."""

    name: str
    json_path: Path
    image_root: Path
    raw: bytes | None = None
    coco: dict | None = None
    categories: list = field(default_factory=list)  # the well-formed ones: what the other splits must match
    image_file_sizes: dict = field(default_factory=dict)  # image id -> bytes on disk, -1 when unreadable
    findings: list = field(default_factory=list)


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _is_positive_integral(value):
    return (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            and value > 0 and float(value).is_integer())


def _is_box(value):
    return (isinstance(value, (list, tuple)) and len(value) == 4
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value))


def _read_json(checked: CheckedSplit, required: bool):
    path = checked.json_path
    try:
        checked.raw = path.read_bytes()
    except FileNotFoundError:
        if required:
            checked.findings.append(Finding(path, "", "file not found"))
        return None
    except OSError as error:
        checked.findings.append(Finding(path, "", f"cannot read the file: {error.strerror or error}"))
        return None
    try:
        coco = json.loads(checked.raw.decode("utf-8-sig"))  # JSON files are UTF-8 (RFC 8259); tolerate a BOM
    except UnicodeDecodeError as error:
        checked.findings.append(Finding(path, "", f"not a JSON text file (not UTF-8: {error.reason})"))
        return None
    except json.JSONDecodeError as error:
        checked.findings.append(
            Finding(path, "", f"not valid JSON: {error.msg} at line {error.lineno} column {error.colno}"))
        return None
    if not isinstance(coco, dict):
        checked.findings.append(Finding(path, "", f"top level is a {type(coco).__name__}, expected a COCO object "
                                                  "with 'images', 'annotations' and 'categories'"))
        return None
    return coco


def _entries(coco, key, checked, required):
    """The list under `key`, or [] with a finding when it is missing or not a list."""
    if key not in coco:
        if required:
            checked.findings.append(Finding(checked.json_path, "", f"missing the '{key}' list"))
        return []
    if not isinstance(coco[key], list):
        checked.findings.append(Finding(checked.json_path, "", f"'{key}' must be a list, "
                                                               f"got {type(coco[key]).__name__}"))
        return []
    return coco[key]


def _well_formed(entries, kind, checks, checked):
    """Entries whose fields pass `checks` ({field: (test, description)}); the others become findings."""
    good = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            checked.findings.append(Finding(checked.json_path, f"{_LIST_KEYS[kind]}[{index}]", "is not an object"))
            continue
        entry_id = entry.get("id")
        subject = f"{kind} id {entry_id}" if _is_int(entry_id) else f"{_LIST_KEYS[kind]}[{index}]"
        problems = [f"'{name}' is missing" if name not in entry else f"'{name}' {description}, got {entry[name]!r}"
                    for name, (test, description) in checks.items() if not test(entry.get(name))]
        if problems:
            checked.findings.append(Finding(checked.json_path, subject, "; ".join(problems)))
        else:
            good.append(entry)
    return good


def _ids(entries) -> set:
    """The integer ids in a possibly malformed list of entries."""
    if not isinstance(entries, list):
        return set()
    return {entry["id"] for entry in entries if isinstance(entry, dict) and _is_int(entry.get("id"))}


def _unique(entries, kind, checked):
    counts = collections.Counter(entry["id"] for entry in entries)
    for entry_id, count in counts.items():
        if count > 1:
            checked.findings.append(
                Finding(checked.json_path, f"{kind} id {entry_id}",
                        f"duplicate id: used by {count} {_LIST_KEYS[kind]}"))


_IMAGE_FIELDS = {
    "id": (_is_int, "must be an integer"),
    "file_name": (lambda v: isinstance(v, str) and v.strip() != "", "must be a non-empty string"),
    "width": (_is_positive_integral, "must be a positive whole number of pixels"),
    "height": (_is_positive_integral, "must be a positive whole number of pixels"),
}
_CATEGORY_FIELDS = {
    "id": (_is_int, "must be an integer"),
    "name": (lambda v: isinstance(v, str) and v.strip() != "", "must be a non-empty string"),
}
_ANNOTATION_FIELDS = {
    "id": (_is_int, "must be an integer"),
    "image_id": (_is_int, "must be an integer"),
    "category_id": (_is_int, "must be an integer"),
}


def _check_categories(categories, checked, train_categories):
    names = collections.defaultdict(list)
    for category in categories:
        names[category["name"]].append(category["id"])
    for name, ids in names.items():
        if len(set(ids)) > 1:
            checked.findings.append(Finding(checked.json_path, f"category id {ids[1]}",
                                            f"name '{name}' is also used by category id {ids[0]}; "
                                            "class names must be unique"))
    if train_categories is None:
        return
    ours = {category["id"]: category["name"] for category in categories}
    theirs = {category["id"]: category["name"] for category in train_categories}
    differences = [f"category id {i} '{theirs[i]}' is missing" for i in sorted(set(theirs) - set(ours))]
    differences += [f"category id {i} '{ours[i]}' is not in train" for i in sorted(set(ours) - set(theirs))]
    differences += [f"category id {i} is named '{ours[i]}' here but '{theirs[i]}' in train"
                    for i in sorted(set(ours) & set(theirs)) if ours[i] != theirs[i]]
    if differences:
        checked.findings.append(Finding(checked.json_path, "", "categories differ from the train split's: "
                                        + "; ".join(differences) + ". Every split must use train's categories"))


def _check_annotation(annotation, images, category_ids, checked):
    path, annotation_id = checked.json_path, annotation["id"]
    subject, target = f"annotation id {annotation_id}", ("annotation", annotation_id)
    drop_only = frozenset({"drop"})
    if annotation["image_id"] not in images:
        checked.findings.append(Finding(path, subject, f"refers to unknown image id {annotation['image_id']}",
                                        drop_only, target))
        return
    if annotation["category_id"] not in category_ids:
        known = ", ".join(str(i) for i in sorted(category_ids))
        checked.findings.append(Finding(path, subject, f"refers to unknown category id "
                                        f"{annotation['category_id']} (categories: {known})", drop_only, target))
    box = annotation.get("bbox")
    if not _is_box(box):
        checked.findings.append(Finding(path, subject, f"'bbox' must be [x, y, width, height] in pixels, got {box!r}",
                                        drop_only, target))
        return
    x, y, w, h = box
    image = images[annotation["image_id"]]
    if w <= 0 or h <= 0:
        checked.findings.append(Finding(path, subject, f"box {box} has non-positive width or height",
                                        frozenset({"clip", "drop"}), target))
    elif (x < -_BOX_TOLERANCE or y < -_BOX_TOLERANCE or x + w > image["width"] + _BOX_TOLERANCE
          or y + h > image["height"] + _BOX_TOLERANCE):
        checked.findings.append(Finding(path, subject, f"box {box} extends outside its "
                                        f"{image['width']}x{image['height']} image (image id {image['id']})",
                                        frozenset({"clip", "drop"}), target))


def _real_size(path: Path):
    """(width, height, file size) as decoders will see the image: EXIF rotations by 90 degrees swap the sides."""
    with Image.open(path) as image:
        width, height = image.size
        if image.format in _EXIF_FORMATS and image.getexif().get(_EXIF_ORIENTATION) in _TRANSPOSED_ORIENTATIONS:
            width, height = height, width
    return width, height, path.stat().st_size


def _check_image_files(images, checked):
    def inspect(image):
        path = checked.image_root / image["file_name"]
        try:
            return image, path, _real_size(path), None
        except FileNotFoundError:
            return image, path, None, "image file not found"
        except (OSError, SyntaxError, ValueError) as error:  # PIL raises these for corrupt or unknown files
            return image, path, None, f"cannot read image file ({error})"

    with concurrent.futures.ThreadPoolExecutor(_HEADER_THREADS) as pool:
        for image, path, size, problem in pool.map(inspect, images):
            subject, target = f"image id {image['id']}", ("image", image["id"])
            if problem:
                checked.image_file_sizes[image["id"]] = -1
                checked.findings.append(Finding(checked.json_path, subject, f"{problem}: {path}",
                                                frozenset({"drop"}), target))
                continue
            width, height, checked.image_file_sizes[image["id"]] = size
            if (width, height) != (image["width"], image["height"]):
                checked.findings.append(Finding(
                    checked.json_path, subject, f"size in the JSON is {image['width']}x{image['height']} but the "
                    f"image file is {width}x{height}: {path}", frozenset({"drop"}), target))


def check_split(name, json_path: Path, image_root: Path, train_categories=None, required=True) -> CheckedSplit:
    """Read and check one split. `train_categories` (the train split's, when readable) are what the other
    splits must match; the test split may lack annotations and categories."""
    checked = CheckedSplit(name, json_path, image_root)
    coco = _read_json(checked, required)
    if coco is None:
        return checked
    checked.coco = coco
    is_test = name == "test"
    images = _well_formed(_entries(coco, "images", checked, True), "image", _IMAGE_FIELDS, checked)
    categories = checked.categories = _well_formed(_entries(coco, "categories", checked, not is_test), "category",
                                                   _CATEGORY_FIELDS, checked)
    annotations = _well_formed(_entries(coco, "annotations", checked, not is_test), "annotation",
                               _ANNOTATION_FIELDS, checked)
    if not coco.get("images") and isinstance(coco.get("images"), list):
        checked.findings.append(Finding(json_path, "", "has no images"))
    if not is_test and isinstance(coco.get("annotations"), list) and not coco["annotations"]:
        checked.findings.append(Finding(json_path, "", f"has no annotations: the {name} split needs boxes"))
    for entries, kind in ((images, "image"), (categories, "category"), (annotations, "annotation")):
        _unique(entries, kind, checked)
    if "categories" in coco or not is_test:
        _check_categories(categories, checked, train_categories)
    # ids of entries already reported as malformed: annotations pointing at them are not "unknown" too
    broken_image_ids = _ids(coco.get("images")) - {image["id"] for image in images}
    category_ids = _ids(coco["categories"] if "categories" in coco else train_categories)
    images_by_id = {image["id"]: image for image in images}
    for annotation in annotations:
        if annotation["image_id"] not in broken_image_ids:
            _check_annotation(annotation, images_by_id, category_ids, checked)
    _check_image_files(images, checked)
    return checked


def _clip(annotation, image):
    x, y, w, h = annotation["bbox"]
    x1, y1 = min(max(x, 0), image["width"]), min(max(y, 0), image["height"])
    x2, y2 = min(max(x + w, 0), image["width"]), min(max(y + h, 0), image["height"])
    if x2 - x1 <= 0 or y2 - y1 <= 0:
        return None
    return {**annotation, "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1)}


def _repaired_coco(coco, findings, policy):
    """A copy of `coco` with the policy's repairs applied and 'area'/'iscrowd' filled in where absent, so every
    consumer (views, the evaluator) reads the same cleaned data."""
    dropped_images = {f.target[1] for f in findings if f.target and f.target[0] == "image"}
    touched = {f.target[1] for f in findings if f.target and f.target[0] == "annotation"}
    images = [dict(image, width=int(image["width"]), height=int(image["height"]))
              for image in coco["images"] if image["id"] not in dropped_images]
    images_by_id = {image["id"]: image for image in images}
    annotations = []
    for annotation in coco.get("annotations", []):
        if annotation["image_id"] in dropped_images:
            continue
        if annotation["id"] in touched:
            if policy == "drop":
                continue
            annotation = _clip(annotation, images_by_id[annotation["image_id"]])
            if annotation is None:
                continue
        x, y, w, h = annotation["bbox"]
        annotations.append({"area": w * h, "iscrowd": 0, **annotation})
    return {**coco, "images": images, "annotations": annotations}


def _describe(findings, spec):
    shown = "\n".join(f"  {finding}" for finding in findings[:MAX_FINDINGS_SHOWN])
    more = len(findings) - MAX_FINDINGS_SHOWN
    if more > 0:
        shown += f"\n  ... and {more} more"
    message = f"dataset {spec} has {len(findings)} problem{'s' * (len(findings) != 1)}:\n{shown}"
    repairable = sorted({policy for finding in findings for policy in finding.repairs})
    if repairable:
        message += ("\nFix the files, or choose a policy: 'clip' clips boxes into their image and drops empty "
                    "ones; 'drop' drops bad annotations and images whose files are missing, unreadable or of "
                    "the wrong size.")
    return message


def apply_policy(checked_splits, policy, spec):
    """Return ({split: repaired coco}, repaired findings), or raise UserError listing every finding the policy
    does not repair."""
    if policy not in POLICIES:
        raise UserError(f"unknown dataset policy {policy!r}; valid policies: {', '.join(POLICIES)}")
    findings = [finding for checked in checked_splits for finding in checked.findings]
    unrepaired = [finding for finding in findings if policy not in finding.repairs]
    if unrepaired:
        raise UserError(_describe(unrepaired, spec))
    cocos = {checked.name: _repaired_coco(checked.coco, checked.findings, policy)
             for checked in checked_splits if checked.coco is not None}
    return cocos, findings
