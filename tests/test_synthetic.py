"""The built-in synthetic litter set: deterministic, valid COCO, imbalanced, varied in photo shape and crowding
like real data, and safe to create concurrently."""

import collections
import hashlib
import json
import multiprocessing

import pytest
from PIL import Image

from detfuse.core.data.synthetic import BUILTIN_NAME, CLASS_NAMES, builtin_dataset_dir, generate


def file_hashes(root):
    return {path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(root.rglob("*")) if path.is_file()}


@pytest.fixture(scope="module")
def builtin(tmp_path_factory):
    """The default set, made by two processes racing for it in a fresh cache."""
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DETFUSE_CACHE", str(cache))
        with multiprocessing.get_context("spawn").Pool(2) as pool:
            results = [pool.apply_async(builtin_dataset_dir) for _ in range(2)]
            paths = [result.get(timeout=120) for result in results]
        assert paths[0] == paths[1] == cache / "datasets" / BUILTIN_NAME
        assert builtin_dataset_dir() == paths[0]  # now a cache hit in this process
    datasets = sorted(p.name for p in (cache / "datasets").iterdir() if p.is_dir())
    assert datasets == [BUILTIN_NAME]  # no staging folder left behind
    return paths[0]


def load(root, split):
    return json.loads((root / f"{split}.json").read_text())


def test_same_seed_gives_identical_bytes_and_another_seed_does_not(tmp_path):
    first = generate(tmp_path / "a", seed=3, num_train=6, num_val=3, num_test=2)
    second = generate(tmp_path / "b", seed=3, num_train=6, num_val=3, num_test=2)
    other = generate(tmp_path / "c", seed=4, num_train=6, num_val=3, num_test=2)
    assert len(file_hashes(first)) == 3 + 11
    assert file_hashes(first) == file_hashes(second)
    assert len({(i["width"], i["height"]) for i in load(first, "train")["images"]}) > 1  # varied sizes, too
    assert file_hashes(first)["train.json"] != file_hashes(other)["train.json"]
    assert file_hashes(first)["images/val_0000.jpg"] != file_hashes(other)["images/val_0000.jpg"]


def test_split_contents_do_not_depend_on_other_split_sizes(tmp_path):
    small = generate(tmp_path / "small", num_train=2, num_val=3, num_test=0)
    large = generate(tmp_path / "large", num_train=7, num_val=3, num_test=0)
    assert file_hashes(small / "images")["val_0002.jpg"] == file_hashes(large / "images")["val_0002.jpg"]
    assert [a["bbox"] for a in load(small, "val")["annotations"]] == \
        [a["bbox"] for a in load(large, "val")["annotations"]]


def test_tiny_sets_still_hold_every_class_at_the_smallest_size(tmp_path):
    root = generate(tmp_path, num_train=5, num_val=5, num_test=1, image_size=64)
    for split in ("train", "val"):
        coco = load(root, split)
        assert {a["category_id"] for a in coco["annotations"]} == {1, 2, 3, 4, 5}
        firsts = [min((a for a in coco["annotations"] if a["image_id"] == image["id"]), key=lambda a: a["id"])
                  for image in coco["images"]]
        assert [a["category_id"] for a in firsts] == [1, 2, 3, 4, 5]  # image k starts with class k + 1
    with Image.open(root / "images" / "test_0000.jpg") as picture:
        assert max(picture.size) in (48, 64, 80, 96)  # the long side: 0.75 to 1.5 times image_size


def test_builtin_set_is_valid_coco(builtin):
    image_ids = set()
    for split in ("train", "val", "test"):
        coco = load(builtin, split)
        assert coco["categories"] == [{"id": k + 1, "name": name, "supercategory": "litter"}
                                      for k, name in enumerate(CLASS_NAMES)]
        images = {image["id"]: image for image in coco["images"]}
        assert len(images) == len(coco["images"]) and not image_ids & set(images)  # unique, also across splits
        image_ids |= set(images)
        for image in coco["images"]:
            with Image.open(builtin / "images" / image["file_name"]) as picture:
                assert picture.size == (image["width"], image["height"])
        if split == "test":
            assert "annotations" not in coco
            continue
        annotations = coco["annotations"]
        assert len({a["id"] for a in annotations}) == len(annotations)
        assert {a["image_id"] for a in annotations} == set(images)  # every image holds an object
        for a in annotations:
            x, y, w, h = a["bbox"]
            image = images[a["image_id"]]
            assert w > 0 and h > 0 and x >= 0 and y >= 0
            assert x + w <= image["width"] and y + h <= image["height"]
            assert a["area"] == w * h and a["iscrowd"] == 0 and 1 <= a["category_id"] <= len(CLASS_NAMES)
    assert [len(load(builtin, s)["images"]) for s in ("train", "val", "test")] == [200, 60, 20]


def test_builtin_set_is_imbalanced_at_several_scales(builtin):
    train, val = load(builtin, "train")["annotations"], load(builtin, "val")["annotations"]
    shares = collections.Counter(CLASS_NAMES[a["category_id"] - 1] for a in train)
    total = sum(shares.values())
    assert shares.most_common(1)[0][0] == "bag" and shares["bag"] / total > 0.3
    assert min(shares, key=shares.get) == "battery" and shares["battery"] / total < 0.1
    in_val = collections.Counter(CLASS_NAMES[a["category_id"] - 1] for a in val)
    assert in_val["battery"] >= 5 and len(in_val) == len(CLASS_NAMES)
    long_sides = [max(a["bbox"][2:]) for a in train]
    assert min(long_sides) < 20 and max(long_sides) > 60  # photos around 160 px: small and large objects
    per_image = collections.Counter(a["image_id"] for a in train)
    assert max(per_image.values()) >= 5 and min(per_image.values()) == 1


def test_builtin_set_loads_through_the_dataset_contract_without_findings(builtin, monkeypatch):
    from detfuse.core.data import load_dataset

    monkeypatch.setenv("DETFUSE_CACHE", str(builtin.parent.parent))
    dataset = load_dataset("builtin")  # policy 'error': any finding would raise
    assert dataset.root == builtin
    assert dataset.class_names == list(CLASS_NAMES) and dataset.category_ids == [1, 2, 3, 4, 5]
    assert load_dataset("builtin", policy="drop").repaired == []
    assert {name: split.has_annotations for name, split in dataset.splits.items()} == \
        {"train": True, "val": True, "test": False}
    val = dataset.splits["val"]
    assert val.image_path(val.coco["images"][0]).is_file()


def test_builtin_photos_come_in_several_sizes_shapes_and_both_orientations(builtin):
    images = [image for split in ("train", "val", "test") for image in load(builtin, split)["images"]]
    sizes = collections.Counter((image["width"], image["height"]) for image in images)
    assert len(sizes) >= 12 and max(sizes.values()) < len(images) / 5  # no one size dominates
    long_sides = {max(width, height) for width, height in sizes}
    assert long_sides == {120, 160, 200, 240}  # around the default image_size of 160
    ratios = {round(max(size) / min(size), 1) for size in sizes}
    assert ratios == {1.0, 1.3, 1.5, 1.8}  # square, 4:3, 3:2, 16:9
    landscape = sum(count for (width, height), count in sizes.items() if width > height)
    portrait = sum(count for (width, height), count in sizes.items() if width < height)
    assert landscape > portrait > len(images) / 5


def test_builtin_set_has_some_crowded_scenes(builtin):
    for split, least in (("train", 10), ("val", 3)):
        coco = load(builtin, split)
        counts = collections.Counter(a["image_id"] for a in coco["annotations"])
        crowded = {image_id for image_id, count in counts.items() if count > 6}
        assert least <= len(crowded) <= len(coco["images"]) / 5
        assert all(15 <= counts[image_id] <= 30 for image_id in crowded)
        # the objects of a crowded scene are smaller, as seen from further away
        long_sides = {image["id"]: max(image["width"], image["height"]) for image in coco["images"]}
        sizes = {True: [], False: []}
        for a in coco["annotations"]:
            sizes[a["image_id"] in crowded].append(max(a["bbox"][2:]) / long_sides[a["image_id"]])
        assert sum(sizes[True]) / len(sizes[True]) < 0.8 * sum(sizes[False]) / len(sizes[False])
