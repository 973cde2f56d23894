"""The dataset contract: where a dataset's files are, and the validated, cleaned COCO splits every consumer reads.

A dataset is named by a spec:
- a directory holding train.json and val.json (COCO detection; test.json optional and may lack annotations),
  with image file names resolved against its `images/` folder when present, else against the directory itself;
- a dataset YAML naming each path (relative to the YAML): `train`, `val`, optional `test` and `name`, and
  `images` as one root or a {split: root} mapping (default: the rule above, applied to the YAML's folder);
- an `s3://bucket/prefix` URI of such a directory, downloaded once per node into the detfuse cache;
- `builtin`, the synthetic set generated on first use.
"""

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from detfuse.core.data.validate import apply_policy, check_split
from detfuse.core.errors import UserError

SPLITS = ("train", "val", "test")
YAML_KEYS = ("name", "train", "val", "test", "images")
BUILTIN_SPEC = "builtin"


@dataclass
class Split:
    name: str
    json_path: Path
    image_root: Path
    coco: dict  # validated and cleaned: the policy's repairs applied, 'area' and 'iscrowd' always present
    has_annotations: bool

    def image_path(self, image: dict) -> Path:
        return self.image_root / image["file_name"]

    def annotations_by_image(self) -> dict:
        """image id -> its annotations (every image id present, an empty list for an image without any)."""
        grouped = {image["id"]: [] for image in self.coco["images"]}
        for annotation in self.coco["annotations"]:
            grouped[annotation["image_id"]].append(annotation)
        return grouped


@dataclass
class Dataset:
    name: str
    root: Path
    class_names: list  # contiguous class index k -> name; the order of category ids
    category_ids: list  # contiguous class index k -> COCO category id
    splits: dict  # "train", "val" and maybe "test" -> Split
    fingerprint: str  # content hash of the files, see _fingerprint
    policy: str = "error"
    repaired: list = field(default_factory=list)  # Findings the policy repaired (empty under 'error')

    @property
    def class_index(self) -> dict:
        """COCO category id -> contiguous class index."""
        return {category_id: index for index, category_id in enumerate(self.category_ids)}

    def split(self, name) -> Split:
        """The split called `name`, or a UserError naming the splits the dataset has."""
        if name not in self.splits:
            raise UserError(f"dataset {self.name} has no '{name}' split; it has {', '.join(self.splits)}")
        return self.splits[name]


@dataclass(frozen=True)
class _SplitSource:
    name: str
    json_path: Path
    image_root: Path
    required: bool  # a dataset directory's test.json is optional; a split named in a YAML is not


def _default_image_root(folder: Path) -> Path:
    images = folder / "images"
    return images if images.is_dir() else folder


def _sources_from_directory(folder: Path):
    image_root = _default_image_root(folder)
    return [_SplitSource(split, folder / f"{split}.json", image_root, split != "test") for split in SPLITS]


def _sources_from_yaml(path: Path):
    try:
        spec = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"{path}: cannot read the dataset YAML: {error}") from None
    except yaml.YAMLError as error:
        raise UserError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(spec, dict):
        raise UserError(f"{path}: a dataset YAML is a mapping with keys {', '.join(YAML_KEYS)}")
    unknown = sorted(str(key) for key in spec if key not in YAML_KEYS)
    if unknown:
        raise UserError(f"{path}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(YAML_KEYS)}")
    for key in ("train", "val"):
        if key not in spec:
            raise UserError(f"{path}: '{key}' is required: the path of the {key} split's COCO JSON")
    for key in ("name", "train", "val", "test"):
        if key in spec and not (isinstance(spec[key], str) and spec[key]):
            raise UserError(f"{path}: '{key}' must be a non-empty string, got {spec[key]!r}")
    folder = path.parent
    images = spec.get("images")
    if isinstance(images, dict):
        unknown = sorted(str(key) for key in images if key not in SPLITS)
        if unknown:
            raise UserError(f"{path}: unknown split(s) {', '.join(unknown)} under 'images'; "
                            f"valid: {', '.join(SPLITS)}")
        roots = images
    elif images is None or isinstance(images, str):
        roots = {split: images for split in SPLITS}
    else:
        raise UserError(f"{path}: 'images' must be a folder or a mapping of split to folder, got {images!r}")
    for split, root in roots.items():
        if root is not None and not (isinstance(root, str) and root):
            raise UserError(f"{path}: images folder of '{split}' must be a non-empty string, got {root!r}")
    sources = []
    for split in SPLITS:
        if split in spec:
            root = roots.get(split)
            image_root = folder / root if root else _default_image_root(folder)
            sources.append(_SplitSource(split, folder / spec[split], image_root, True))
    return spec.get("name"), sources


def _resolve(spec: str):
    """(name, root folder, split sources) for a dataset spec; S3 and builtin specs become local folders."""
    if spec == BUILTIN_SPEC:
        from detfuse.core.data.synthetic import builtin_dataset_dir

        folder = builtin_dataset_dir()
        return BUILTIN_SPEC, folder, _sources_from_directory(folder)
    if spec.startswith("s3://"):
        from detfuse.core.storage.s3 import fetch

        folder = fetch(spec.rstrip("/") + "/")
        return spec.rstrip("/").rpartition("/")[2], folder, _sources_from_directory(folder)
    path = Path(spec).expanduser().absolute()
    if path.is_dir():
        return path.name, path, _sources_from_directory(path)
    if path.is_file() and path.suffix.lower() in (".yaml", ".yml"):
        name, sources = _sources_from_yaml(path)
        return name or path.stem, path.parent, sources
    what = "a dataset YAML ends in .yaml or .yml" if path.is_file() else "no such file or directory"
    raise UserError(f"dataset {spec!r} not found ({what}); give a directory with train.json and val.json, a "
                    f"dataset YAML, an s3://bucket/prefix URI, or '{BUILTIN_SPEC}'")


def _fingerprint(checked_splits) -> str:
    """sha256 over each split's JSON bytes and its images' file names and sizes.

    Image bytes are left out on purpose: hashing them would read the whole dataset (gigabytes for real sets) on
    every trial start, while relabelling, adding, removing or re-encoding images changes the JSON or the sizes.
    """
    digest = hashlib.sha256()
    for checked in checked_splits:
        digest.update(f"{checked.name}\0{len(checked.raw)}\0".encode())
        digest.update(checked.raw)
        for image in checked.coco["images"]:
            digest.update(f"{image['file_name']}\0{checked.image_file_sizes.get(image['id'], -1)}\0".encode())
    return digest.hexdigest()


def load_dataset(spec, policy: str = "error") -> Dataset:
    """Resolve, read and validate the dataset named by `spec`; raise UserError listing every problem that
    `policy` ('error', 'clip' or 'drop') does not repair."""
    spec = str(spec)
    name, root, sources = _resolve(spec)
    checked_splits = []
    train_categories = None
    for source in sources:
        checked = check_split(source.name, source.json_path, source.image_root, train_categories,
                              required=source.required)
        if source.name == "train":
            train_categories = checked.categories or None  # none readable: nothing to compare the others with
        if checked.raw is not None or checked.findings:
            checked_splits.append(checked)
    cocos, repaired = apply_policy(checked_splits, policy, spec)
    categories = sorted(cocos["train"]["categories"], key=lambda category: category["id"])
    splits = {}
    for checked in checked_splits:
        coco = cocos[checked.name]
        coco.setdefault("categories", cocos["train"]["categories"])
        has_annotations = "annotations" in checked.coco and bool(coco["annotations"])
        splits[checked.name] = Split(checked.name, checked.json_path, checked.image_root, coco, has_annotations)
    return Dataset(
        name=name, root=root, class_names=[category["name"] for category in categories],
        category_ids=[category["id"] for category in categories], splits=splits,
        fingerprint=_fingerprint(checked_splits), policy=policy, repaired=repaired,
    )
