"""`detfuse data check`: validate a dataset and print what a user needs before spending GPU hours on it."""

import sys

import numpy as np
from tabulate import tabulate

from detfuse.core.data.dataset import load_dataset
from detfuse.core.data.validate import MAX_FINDINGS_SHOWN
from detfuse.core.errors import UserError

_SMALL, _LARGE = 32, 96  # COCO's area ranges: small < 32^2 <= medium < 96^2 <= large
_QUANTILES = (0.0, 0.1, 0.5, 0.9, 1.0)


def _box_sides(split):
    """sqrt(w*h) of every box: one number per box that COCO's size ranges compare against."""
    return np.array([np.sqrt(a["bbox"][2] * a["bbox"][3]) for a in split.coco["annotations"]], dtype=float)


def _class_counts(dataset, split):
    counts = dict.fromkeys(dataset.category_ids, 0)
    for annotation in split.coco["annotations"]:
        counts[annotation["category_id"]] += 1
    return counts


def summarize(dataset) -> str:
    """The summary tables: splits, boxes per class, imbalance and box sizes."""
    annotated = [split for split in dataset.splits.values() if split.has_annotations]
    lines = [f"dataset {dataset.name}  ({dataset.root})",
             f"fingerprint {dataset.fingerprint[:16]}  policy {dataset.policy}", ""]

    rows = []
    for split in dataset.splits.values():
        with_boxes = {a["image_id"] for a in split.coco["annotations"]}
        rows.append([split.name, len(split.coco["images"]),
                     len(split.coco["annotations"]) if split.has_annotations else "-",
                     len(split.coco["images"]) - len(with_boxes) if split.has_annotations else "-",
                     str(split.json_path)])
    lines.append(tabulate(rows, ["split", "images", "boxes", "images w/o boxes", "file"]))

    counts = {split.name: _class_counts(dataset, split) for split in annotated}
    train_total = sum(counts["train"].values())
    rows = [[f"{name} ({category_id})", *(counts[split.name][category_id] for split in annotated),
             f"{100 * counts['train'][category_id] / train_total:.1f}%"]
            for name, category_id in zip(dataset.class_names, dataset.category_ids)]
    lines += ["", f"{len(dataset.class_names)} classes",
              tabulate(rows, ["class (id)", *(split.name for split in annotated), "train share"])]
    train_counts = counts["train"].values()
    if min(train_counts) == 0:
        missing = [name for name, category_id in zip(dataset.class_names, dataset.category_ids)
                   if counts["train"][category_id] == 0]
        lines.append(f"imbalance ratio: infinite, no train boxes for {', '.join(missing)}")
    else:
        lines.append(f"imbalance ratio (most / least frequent class in train): "
                     f"{max(train_counts) / min(train_counts):.1f}")

    rows = []
    for split in annotated:
        sides = _box_sides(split)
        if not len(sides):
            continue
        quantiles = np.quantile(sides, _QUANTILES)
        rows.append([split.name, int((sides < _SMALL).sum()), int(((sides >= _SMALL) & (sides < _LARGE)).sum()),
                     int((sides >= _LARGE).sum()), *(f"{q:.1f}" for q in quantiles)])
    lines += ["", "box size: COCO small < 32 px <= medium < 96 px <= large, by sqrt(box area)",
              tabulate(rows, ["split", "small", "medium", "large", "min", "p10", "median", "p90", "max"])]

    if dataset.repaired:
        lines += ["", f"policy '{dataset.policy}' repaired {len(dataset.repaired)} finding(s):"]
        lines += [f"  {finding}" for finding in dataset.repaired[:MAX_FINDINGS_SHOWN]]
        if len(dataset.repaired) > MAX_FINDINGS_SHOWN:
            lines.append(f"  ... and {len(dataset.repaired) - MAX_FINDINGS_SHOWN} more")
    return "\n".join(lines)


def run_check(spec, policy: str = "error") -> int:
    """Print the summary and return 0, or print every problem and return 2 (the UserError exit code)."""
    try:
        dataset = load_dataset(spec, policy=policy)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    print(summarize(dataset))
    return 0
