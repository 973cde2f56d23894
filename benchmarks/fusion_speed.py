"""Time fusion alone: K members x N images of detector-like predictions, for every method, plus one fit.

    .venv/bin/python benchmarks/fusion_speed.py [--images 200] [--members 2 4 6] [--boxes 100]

Each member predicts `--boxes` boxes per image, as the predictors do at COCO settings (confidence 0.001, 100 boxes):
a few confident boxes near the objects and many weak ones elsewhere. Prints milliseconds per image.
"""

import argparse
import time

import numpy as np

from detfuse.core.evaluation import Prediction
from detfuse.core.fusion import METHODS, FusionInputs, FusionParams
from detfuse.core.fusion_fit import fit_ensemble, split_image_ids

SIZE = 1024
CLASSES = list(range(1, 11))


def scene(num_images, rng):
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        images.append({"id": image_id, "file_name": f"{image_id}.jpg", "width": SIZE, "height": SIZE})
        for _ in range(rng.integers(2, 12)):
            x, y = rng.uniform(0, SIZE - 200, 2)
            w, h = rng.uniform(30, 200, 2)
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": int(rng.choice(CLASSES)), "bbox": [x, y, w, h], "area": w * h,
                                "iscrowd": 0})
    return {"images": images, "annotations": annotations, "categories": [{"id": c, "name": str(c)} for c in CLASSES]}


def member(coco, boxes_per_image, rng):
    by_image = {}
    for a in coco["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    predictions = []
    for image in coco["images"]:
        found = by_image.get(image["id"], [])
        for a in found:
            x, y, w, h = a["bbox"]
            dx, dy, dw, dh = rng.normal(0, 0.05, 4) * (w, h, w, h)
            predictions.append(Prediction(image["id"], a["category_id"], (x + dx, y + dy, x + w + dw, y + h + dh),
                                          float(rng.uniform(0.4, 0.95))))
        for _ in range(max(0, boxes_per_image - len(found))):
            x, y = rng.uniform(0, SIZE - 100, 2)
            w, h = rng.uniform(10, 150, 2)
            predictions.append(Prediction(image["id"], int(rng.choice(CLASSES)), (x, y, x + w, y + h),
                                          float(rng.uniform(0.001, 0.3))))
    return predictions


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--members", type=int, nargs="+", default=[2, 4, 6])
    parser.add_argument("--boxes", type=int, default=100)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    coco = scene(args.images, rng)
    predictions = [member(coco, args.boxes, rng) for _ in range(max(args.members))]
    inputs = FusionInputs(predictions, coco["images"], CLASSES)
    FusionInputs([predictions[0][:50]], coco["images"], CLASSES).fuse(FusionParams.default("nms"))  # numba compile
    for count in args.members:
        for method in METHODS:
            start = time.perf_counter()
            inputs.fuse(FusionParams.default(method), members=range(count))
            per_image = 1000 * (time.perf_counter() - start) / args.images
            print(f"{method:8s} K={count} N={args.images} boxes/member/image={args.boxes}: {per_image:7.2f} ms/image")
    fit_ids, _ = split_image_ids([image["id"] for image in coco["images"]], seed=0)
    count = min(4, max(args.members))
    start = time.perf_counter()
    fitted = fit_ensemble(inputs, coco, fit_ids, candidates=range(count))
    print(f"fit (wbf) over {count} candidates on {len(fit_ids)} images: {time.perf_counter() - start:.1f} s, "
          f"{fitted.evaluations} fusions scored, kept {len(fitted.members)}")


if __name__ == "__main__":
    main()
