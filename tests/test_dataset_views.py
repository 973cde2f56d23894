"""Derived views: detectron2 dicts, the cached Ultralytics YOLO view (read back by Ultralytics itself), and the
build-once cache under concurrent builders."""

import json
import multiprocessing
import os
import time

import pytest
import yaml
from test_dataset_validation import edit_json, write_dataset

from detfuse.core.data import load_dataset
from detfuse.core.node_cache import build_once, cache_root
from trainables.detectron2.dataset_dicts import detectron2_dicts
from trainables.yolov5.dataset_view import yolo_view
from detfuse.core.errors import UserError


def entries(folder):
    """What a folder holds, lock files aside."""
    return sorted(p.name for p in folder.iterdir() if p.suffix != ".lock")


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DETFUSE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def dataset_dir(tmp_path):
    root = write_dataset(tmp_path / "tiny")
    edit_json(root / "train.json", lambda c: c["annotations"][0].update(iscrowd=1))  # annotation 10 of image 1
    return root


def test_cache_root_follows_the_environment(private_cache):
    assert cache_root() == private_cache and private_cache.is_dir()


def test_detectron2_dicts(dataset_dir):
    dataset = load_dataset(dataset_dir)
    records = detectron2_dicts(dataset, "train")
    assert [r["image_id"] for r in records] == [1, 2, 3]
    first = records[0]
    assert first["file_name"] == str(dataset_dir / "images" / "train_1.png")
    assert (first["width"], first["height"]) == (64, 48)
    assert first["annotations"] == [
        {"bbox": [4, 4, 24, 14], "bbox_mode": 0, "category_id": 0, "iscrowd": 1},  # bottle: COCO id 1 -> class 0
        {"bbox": [30.5, 20, 46.5, 40], "bbox_mode": 0, "category_id": 1, "iscrowd": 0},  # can: COCO id 3 -> 1
    ]
    with pytest.raises(UserError, match="has no 'test' split; it has train, val"):
        detectron2_dicts(dataset, "test")


def test_yolo_view_layout_and_labels(dataset_dir, private_cache):
    write_dataset(dataset_dir, splits=(("test", (7,)),))
    edit_json(dataset_dir / "test.json", lambda c: c.pop("annotations"))
    data_yaml = yolo_view(load_dataset(dataset_dir))
    view = data_yaml.parent
    assert view.parent == private_cache / "yolo"
    data = yaml.safe_load(data_yaml.read_text())
    assert data == {"path": str(view), "train": "images/train", "val": "images/val", "test": "images/test",
                    "names": {0: "bottle", 1: "can"}}
    link = view / "images" / "train" / "1_train_1.png"
    assert link.is_symlink() and link.resolve() == (dataset_dir / "images" / "train_1.png").resolve()
    # the crowd box of image 1 is left out; the can is x 30.5..46.5 of 64, y 20..40 of 48
    assert (view / "labels" / "train" / "1_train_1.txt").read_text() == "1 0.601562 0.625000 0.250000 0.416667\n"
    assert (view / "labels" / "val" / "4_val_4.txt").read_text().splitlines()[0] == \
        "0 0.218750 0.187500 0.312500 0.208333"
    assert sorted(p.name for p in (view / "images" / "test").iterdir()) == ["7_test_7.png"]
    assert not (view / "labels" / "test").exists()  # unlabelled test images are not claimed to be background
    assert entries(private_cache / "yolo") == [view.name]


def test_yolo_view_is_reused_for_the_same_content_and_rebuilt_for_new_labels(dataset_dir, tmp_path):
    first = yolo_view(load_dataset(dataset_dir))
    label = first.parent / "labels" / "train" / "2_train_2.txt"
    built = label.stat().st_mtime_ns
    assert yolo_view(load_dataset(dataset_dir)) == first and label.stat().st_mtime_ns == built
    elsewhere = write_dataset(tmp_path / "copy")
    assert yolo_view(load_dataset(elsewhere)) != first  # links must point at the files they were made for
    edit_json(dataset_dir / "train.json", lambda c: c["annotations"][2].update(bbox=[1, 1, 8, 8]))
    relabelled = yolo_view(load_dataset(dataset_dir))
    assert relabelled != first
    assert (relabelled.parent / "labels" / "train" / "2_train_2.txt").read_text().startswith(
        "0 0.078125 0.104167 0.125000 0.166667\n")


def test_colliding_file_names_get_distinct_links(tmp_path):
    root = write_dataset(tmp_path / "nested")
    for folder, image_id in (("a", 1), ("b", 2)):
        (root / "images" / folder).mkdir()
        os.rename(root / "images" / f"train_{image_id}.png", root / "images" / folder / "same.png")

    def nest(coco):
        coco["images"][0]["file_name"], coco["images"][1]["file_name"] = "a/same.png", "b/same.png"
    edit_json(root / "train.json", nest)
    view = yolo_view(load_dataset(root)).parent
    links = sorted(p.name for p in (view / "images" / "train").iterdir())
    assert links == ["1_same.png", "2_same.png", "3_train_3.png"]
    assert (view / "images" / "train" / "2_same.png").resolve() == (root / "images" / "b" / "same.png").resolve()


def test_ultralytics_reads_the_view_as_we_wrote_it(dataset_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("YOLO_OFFLINE", "true")
    monkeypatch.setenv("YOLO_AUTOINSTALL", "false")
    monkeypatch.setenv("YOLO_CONFIG_DIR", str(tmp_path / "ultralytics"))
    from ultralytics.data.dataset import YOLODataset
    from ultralytics.data.utils import check_det_dataset

    dataset = load_dataset(dataset_dir)
    data = check_det_dataset(str(yolo_view(dataset)))
    assert data["nc"] == 2 and data["names"] == {0: "bottle", 1: "can"}
    loaded = YOLODataset(img_path=data["train"], data=data, task="detect", imgsz=64, augment=False)
    by_image = {os.path.basename(label["im_file"]).split("_", 1)[0]: label for label in loaded.labels}
    assert set(by_image) == {"1", "2", "3"}
    for record in detectron2_dicts(dataset, "train"):
        label = by_image[str(record["image_id"])]
        boxes = [a for a in record["annotations"] if not a["iscrowd"]]
        assert label["cls"].ravel().tolist() == [a["category_id"] for a in boxes]
        for (cx, cy, w, h), box in zip(label["bboxes"].tolist(), boxes):
            x1, y1, x2, y2 = box["bbox"]
            assert cx * 64 == pytest.approx((x1 + x2) / 2, abs=1e-3) and w * 64 == pytest.approx(x2 - x1, abs=1e-3)
            assert cy * 48 == pytest.approx((y1 + y2) / 2, abs=1e-3) and h * 48 == pytest.approx(y2 - y1, abs=1e-3)


def _build_yolo_view_at_once(dataset_dir, cache, barrier):
    os.environ["DETFUSE_CACHE"] = cache
    dataset = load_dataset(dataset_dir)
    barrier.wait()
    return str(yolo_view(dataset))


def test_concurrent_builders_share_one_yolo_view(dataset_dir, private_cache):
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager, context.Pool(3) as pool:
        barrier = manager.Barrier(3)
        results = [pool.apply_async(_build_yolo_view_at_once, (dataset_dir, str(private_cache), barrier))
                   for _ in range(3)]
        paths = {result.get(timeout=120) for result in results}
    assert len(paths) == 1
    view = os.path.basename(os.path.dirname(paths.pop()))
    assert entries(private_cache / "yolo") == [view]  # one view, no half-built folder left behind
    assert len(list((private_cache / "yolo" / view / "labels" / "val").iterdir())) == 2


def _slow_build(log, target):
    with open(log, "a") as handle:
        handle.write(f"{os.getpid()}\n")
    time.sleep(0.5)  # long enough that every other process arrives while this one builds
    (target / "payload.json").write_text(json.dumps({"built_by": os.getpid()}))


def _race_build_once(entry, log, barrier):
    barrier.wait()
    return (build_once(entry, lambda target: _slow_build(log, target)) / "payload.json").read_text()


def test_build_once_builds_once_under_concurrency(tmp_path):
    entry, log = tmp_path / "entry", tmp_path / "builders.log"
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager, context.Pool(4) as pool:
        barrier = manager.Barrier(4)
        results = [pool.apply_async(_race_build_once, (entry, log, barrier)) for _ in range(4)]
        payloads = {result.get(timeout=60) for result in results}
    assert len(log.read_text().splitlines()) == 1
    assert len(payloads) == 1
    assert entries(tmp_path) == ["builders.log", "entry"]


def test_failed_build_leaves_nothing_behind(tmp_path):
    def broken(target):
        (target / "half.txt").write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        build_once(tmp_path / "entry", broken)
    assert entries(tmp_path) == []


def test_builtin_spec(private_cache):
    dataset = load_dataset("builtin")
    assert dataset.name == "builtin" and dataset.root.parent == private_cache / "datasets"
    assert set(dataset.splits) == {"train", "val", "test"} and not dataset.splits["test"].has_annotations
    assert dataset.class_names == ["bottle", "can", "bag", "paper", "battery"]
    assert len(detectron2_dicts(dataset, "val")) == len(dataset.splits["val"].coco["images"])
