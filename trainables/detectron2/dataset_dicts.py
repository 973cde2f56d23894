"""A validated Dataset as detectron2's standard dataset dicts.

Plain dicts built in memory, so any process (a fresh Ray worker) can rebuild and register them itself; no
detectron2 import here.
"""

_BOX_MODE_XYXY_ABS = 0  # detectron2.structures.BoxMode.XYXY_ABS


def detectron2_dicts(dataset, split_name: str) -> list[dict]:
    """detectron2's standard dataset dicts for one split: boxes XYXY_ABS, category_id = contiguous class index."""
    split = dataset.split(split_name)
    class_index = dataset.class_index
    annotations = split.annotations_by_image()
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
