"""The dataset contract: spec resolution, validation findings (each fault on its own), policies and `data check`."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from detfuse.stages.cli import main
from detfuse.core.data import load_dataset
from detfuse.core.errors import UserError

WIDTH, HEIGHT = 64, 48
CATEGORIES = [{"id": 3, "name": "can"}, {"id": 1, "name": "bottle"}]  # out of order on purpose


def write_dataset(root: Path, splits=(("train", (1, 2, 3)), ("val", (4, 5))), image_dir="images") -> Path:
    """A valid tiny dataset: PNG images of 64x48 px with two boxes each (a bottle and a can)."""
    images_dir = root / image_dir if image_dir else root
    images_dir.mkdir(parents=True, exist_ok=True)
    for split, image_ids in splits:
        images, annotations = [], []
        for image_id in image_ids:
            file_name = f"{split}_{image_id}.png"
            Image.new("RGB", (WIDTH, HEIGHT), (20 * image_id, 90, 140)).save(images_dir / file_name)
            images.append({"id": image_id, "file_name": file_name, "width": WIDTH, "height": HEIGHT})
            annotations.append({"id": 10 * image_id, "image_id": image_id, "category_id": 1,
                                "bbox": [4, 4, 20, 10], "area": 200, "iscrowd": 0})
            annotations.append({"id": 10 * image_id + 1, "image_id": image_id, "category_id": 3,
                                "bbox": [30.5, 20, 16, 20]})
        coco = {"images": images, "annotations": annotations, "categories": CATEGORIES}
        (root / f"{split}.json").write_text(json.dumps(coco))
    return root


def edit_json(path: Path, change):
    coco = json.loads(path.read_text())
    change(coco)
    path.write_text(json.dumps(coco))


def annotation(coco, annotation_id):
    return next(a for a in coco["annotations"] if a["id"] == annotation_id)


def image(coco, image_id):
    return next(i for i in coco["images"] if i["id"] == image_id)


def check(capsys, *args):
    code = main(["data", "check", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def dataset_dir(tmp_path):
    return write_dataset(tmp_path / "tiny")


def test_valid_dataset_summary(dataset_dir, capsys):
    code, out, err = check(capsys, dataset_dir)
    assert code == 0, err
    lines = out.splitlines()
    assert next(line for line in lines if line.startswith("train")).split()[1:3] == ["3", "6"]  # images, boxes
    assert "2 classes" in out
    assert "bottle (1)" in out and "can (3)" in out
    assert "imbalance ratio (most / least frequent class in train): 1.0" in out
    dataset = load_dataset(dataset_dir)
    assert dataset.name == "tiny" and dataset.root == dataset_dir
    assert dataset.class_names == ["bottle", "can"] and dataset.category_ids == [1, 3]  # sorted by COCO id
    assert set(dataset.splits) == {"train", "val"}
    train = dataset.splits["train"]
    assert train.image_root == dataset_dir / "images" and train.has_annotations
    assert train.image_path(train.coco["images"][0]) == dataset_dir / "images" / "train_1.png"
    assert all(a["area"] == a["bbox"][2] * a["bbox"][3] and a["iscrowd"] == 0 for a in train.coco["annotations"])


# Each fault alone: (edit of the valid dataset, file the message names, id it names, reason it gives)
def _unreadable(root):
    (root / "val.json").unlink()
    (root / "val.json").mkdir()


def _not_json(root):
    (root / "train.json").write_text('{"images": [}')


def _not_utf8(root):
    (root / "train.json").write_bytes(b"\xff\xfe\x00garbage")


def _top_level_list(root):
    (root / "val.json").write_text("[]")


def _missing_json(root):
    (root / "train.json").unlink()


def _missing_image(root):
    (root / "images" / "train_2.png").unlink()


def _corrupt_image(root):
    (root / "images" / "val_5.png").write_bytes(b"this is not a PNG")


def _duplicate_image_id(root):
    def reuse_id_1(coco):
        image(coco, 2).update(id=1)
        for a in coco["annotations"]:
            a["image_id"] = 1 if a["image_id"] == 2 else a["image_id"]
    edit_json(root / "train.json", reuse_id_1)


def _duplicate_annotation_id(root):
    edit_json(root / "val.json", lambda c: annotation(c, 41).update(id=40))


def _duplicate_category_id(root):
    for split in ("train", "val"):
        edit_json(root / f"{split}.json", lambda c: c["categories"].append({"id": 3, "name": "glass"}))


def _duplicate_category_name(root):
    for split in ("train", "val"):
        edit_json(root / f"{split}.json", lambda c: c["categories"].append({"id": 9, "name": "can"}))


def _unknown_image(root):
    edit_json(root / "train.json", lambda c: annotation(c, 21).update(image_id=99))


def _unknown_category(root):
    edit_json(root / "val.json", lambda c: annotation(c, 50).update(category_id=2))


def _zero_width_box(root):
    edit_json(root / "train.json", lambda c: annotation(c, 30).update(bbox=[4, 4, 0, 10]))


def _negative_height_box(root):
    edit_json(root / "train.json", lambda c: annotation(c, 31).update(bbox=[30, 20, 16, -3]))


def _box_outside(root):
    edit_json(root / "val.json", lambda c: annotation(c, 41).update(bbox=[50, 20, 20, 10]))


def _box_negative_corner(root):
    edit_json(root / "train.json", lambda c: annotation(c, 10).update(bbox=[-2, 4, 20, 10]))


def _malformed_box(root):
    edit_json(root / "train.json", lambda c: annotation(c, 11).update(bbox=[1, 2, 3]))


def _size_mismatch(root):
    edit_json(root / "train.json", lambda c: image(c, 3).update(width=80))


def _missing_file_name(root):
    edit_json(root / "val.json", lambda c: image(c, 4).pop("file_name"))


def _width_as_text(root):
    edit_json(root / "val.json", lambda c: image(c, 5).update(width="64"))


def _category_without_id(root):
    edit_json(root / "train.json", lambda c: c["categories"][0].pop("id"))


def _categories_differ(root):
    edit_json(root / "val.json", lambda c: c["categories"][0].update(name="tin"))


def _no_annotations(root):
    edit_json(root / "val.json", lambda c: c.update(annotations=[]))


FAULTS = {
    "unreadable file": (_unreadable, "val.json", "", "cannot read the file"),
    "not JSON": (_not_json, "train.json", "", "not valid JSON"),
    "not UTF-8": (_not_utf8, "train.json", "", "not a JSON text file"),
    "not a COCO object": (_top_level_list, "val.json", "", "top level is a list"),
    "missing split file": (_missing_json, "train.json", "", "file not found"),
    "missing image file": (_missing_image, "train.json", "image id 2", "image file not found"),
    "unreadable image file": (_corrupt_image, "val.json", "image id 5", "cannot read image file"),
    "duplicate image id": (_duplicate_image_id, "train.json", "image id 1", "duplicate id: used by 2 images"),
    "duplicate annotation id": (_duplicate_annotation_id, "val.json", "annotation id 40", "duplicate id"),
    "duplicate category id": (_duplicate_category_id, "train.json", "category id 3",
                              "duplicate id: used by 2 categories", 2),  # made in both splits
    "duplicate class name": (_duplicate_category_name, "train.json", "category id 9", "also used by category id 3",
                             2),
    "unknown image": (_unknown_image, "train.json", "annotation id 21", "refers to unknown image id 99"),
    "unknown category": (_unknown_category, "val.json", "annotation id 50", "refers to unknown category id 2"),
    "zero-width box": (_zero_width_box, "train.json", "annotation id 30", "non-positive width or height"),
    "negative-height box": (_negative_height_box, "train.json", "annotation id 31", "non-positive width or height"),
    "box outside image": (_box_outside, "val.json", "annotation id 41", "extends outside its 64x48 image"),
    "box left of image": (_box_negative_corner, "train.json", "annotation id 10", "extends outside"),
    "malformed box": (_malformed_box, "train.json", "annotation id 11", "'bbox' must be [x, y, width, height]"),
    "image size differs": (_size_mismatch, "train.json", "image id 3",
                           "size in the JSON is 80x48 but the image file is 64x48"),
    "image without file name": (_missing_file_name, "val.json", "image id 4", "'file_name' is missing"),
    "image width not a number": (_width_as_text, "val.json", "image id 5",
                                 "'width' must be a positive whole number of pixels, got '64'"),
    # the can's boxes then point at an unknown category, and val has a category train lacks
    "category without id": (_category_without_id, "train.json", "categories[0]", "'id' is missing", 5),
    "categories differ across splits": (_categories_differ, "val.json", "", "categories differ from the train"),
    "split without boxes": (_no_annotations, "val.json", "", "has no annotations"),
}


@pytest.mark.parametrize("fault", FAULTS)
def test_each_fault_exits_2_naming_file_id_and_reason(fault, dataset_dir, capsys):
    make_fault, file_name, subject, reason, *count = FAULTS[fault]
    make_fault(dataset_dir)
    code, out, err = check(capsys, dataset_dir)
    assert code == 2
    assert out == "" and "Traceback" not in err
    count = count[0] if count else 1
    assert f"has {count} problem{'s' * (count > 1)}:" in err, err
    culprit = next(line for line in err.splitlines() if reason in line)
    expected_prefix = f"{dataset_dir / file_name}: {subject + ': ' if subject else ''}"
    assert culprit.strip().startswith(expected_prefix), culprit


def test_all_findings_are_reported_at_once(dataset_dir, capsys):
    for make_fault in (_missing_image, _duplicate_annotation_id, _unknown_category, _zero_width_box, _size_mismatch):
        make_fault(dataset_dir)
    code, _, err = check(capsys, dataset_dir)
    assert code == 2
    assert "has 5 problems" in err
    for expected in ("train.json: image id 2: image file not found", "val.json: annotation id 40: duplicate id",
                     "val.json: annotation id 50: refers to unknown category id 2",
                     "train.json: annotation id 30: box [4, 4, 0, 10] has non-positive",
                     "train.json: image id 3: size in the JSON is 80x48"):
        assert expected in err


def test_long_lists_are_truncated_with_a_count(dataset_dir, capsys):
    def many_bad_boxes(coco):
        coco["annotations"] += [{"id": 1000 + k, "image_id": 1, "category_id": 1, "bbox": [0, 0, -1, 5]}
                                for k in range(60)]
    edit_json(dataset_dir / "train.json", many_bad_boxes)
    code, _, err = check(capsys, dataset_dir)
    assert code == 2
    assert "has 60 problems" in err and "... and 10 more" in err
    assert sum("non-positive width or height" in line for line in err.splitlines()) == 50


def test_broken_dataset_through_the_real_command_has_no_traceback(dataset_dir):
    _unknown_image(dataset_dir)
    detfuse = Path(sys.executable).parent / "detfuse"
    result = subprocess.run([str(detfuse), "data", "check", str(dataset_dir)], capture_output=True, text=True)
    assert result.returncode == 2
    assert "annotation id 21: refers to unknown image id 99" in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_exif_rotation_counts_in_the_real_size(dataset_dir, capsys):
    """Decoders turn an image with EXIF orientation 6 by 90 degrees, so its 64x48 pixels read as 48x64."""
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (WIDTH, HEIGHT), "gray").save(dataset_dir / "images" / "rotated.jpg", exif=exif)
    edit_json(dataset_dir / "val.json", lambda c: image(c, 5).update(file_name="rotated.jpg"))
    code, _, err = check(capsys, dataset_dir)
    assert code == 2
    assert "image id 5: size in the JSON is 64x48 but the image file is 48x64" in err


def test_clip_policy_clips_boxes_and_drops_empty_ones(dataset_dir, capsys):
    _box_outside(dataset_dir)  # val annotation 41: [50, 20, 20, 10] in a 64 px wide image
    _zero_width_box(dataset_dir)  # train annotation 30
    edit_json(dataset_dir / "train.json", lambda c: annotation(c, 21).update(bbox=[70, 0, 5, 5]))  # all outside
    assert check(capsys, dataset_dir)[0] == 2
    code, out, _ = check(capsys, dataset_dir, "--policy", "clip")
    assert code == 0
    assert "policy 'clip' repaired 3 finding(s)" in out
    dataset = load_dataset(dataset_dir, policy="clip")
    val = dataset.splits["val"].coco
    assert annotation(val, 41)["bbox"] == [50, 20, 14, 10] and annotation(val, 41)["area"] == 140
    train_ids = {a["id"] for a in dataset.splits["train"].coco["annotations"]}
    assert 30 not in train_ids and 21 not in train_ids and 31 in train_ids
    assert len(dataset.repaired) == 3


def test_clip_policy_does_not_repair_other_faults(dataset_dir, capsys):
    _box_outside(dataset_dir)
    _unknown_category(dataset_dir)
    _missing_image(dataset_dir)
    code, _, err = check(capsys, dataset_dir, "--policy", "clip")
    assert code == 2
    assert "has 2 problems" in err and "unknown category" in err and "image file not found" in err
    assert "annotation id 41" not in err  # repaired by clipping, so not a problem


def test_drop_policy_drops_bad_annotations_and_images(dataset_dir):
    _box_outside(dataset_dir)
    _unknown_category(dataset_dir)
    _unknown_image(dataset_dir)
    _missing_image(dataset_dir)
    _size_mismatch(dataset_dir)
    dataset = load_dataset(dataset_dir, policy="drop")
    train, val = dataset.splits["train"].coco, dataset.splits["val"].coco
    assert [i["id"] for i in train["images"]] == [1]  # image 2 (missing file) and 3 (wrong size) dropped
    assert sorted(a["id"] for a in train["annotations"]) == [10, 11]  # theirs and annotation 21 went too
    assert sorted(a["id"] for a in val["annotations"]) == [40, 51]
    assert len(dataset.repaired) == 5


def test_drop_policy_never_repairs_duplicate_ids(dataset_dir):
    _duplicate_image_id(dataset_dir)
    with pytest.raises(UserError, match="image id 1: duplicate id"):
        load_dataset(dataset_dir, policy="drop")


def test_unknown_policy_is_refused(dataset_dir):
    with pytest.raises(UserError, match="valid policies: error, clip, drop"):
        load_dataset(dataset_dir, policy="fix")


def test_images_resolve_against_the_directory_without_images_folder(tmp_path):
    root = write_dataset(tmp_path / "flat", image_dir="")
    dataset = load_dataset(root)
    assert dataset.splits["val"].image_root == root
    assert dataset.splits["val"].image_path(dataset.splits["val"].coco["images"][0]).is_file()


def test_test_split_without_annotations_takes_train_categories(dataset_dir):
    write_dataset(dataset_dir, splits=(("test", (7, 8)),))
    edit_json(dataset_dir / "test.json", lambda c: [c.pop("annotations"), c.pop("categories")])
    dataset = load_dataset(dataset_dir)
    test = dataset.splits["test"]
    assert not test.has_annotations and test.coco["annotations"] == []
    assert test.coco["categories"] == CATEGORIES
    assert len(test.coco["images"]) == 2


def test_dataset_yaml_with_relative_paths_and_per_split_image_roots(tmp_path):
    write_dataset(tmp_path / "a", splits=(("train", (1, 2)),))
    write_dataset(tmp_path / "b", splits=(("val", (3,)),), image_dir="pictures")
    spec = tmp_path / "sets" / "mine.yaml"
    spec.parent.mkdir()
    spec.write_text("name: combo\ntrain: ../a/train.json\nval: ../b/val.json\n"
                    "images: {train: ../a/images, val: ../b/pictures}\n")
    dataset = load_dataset(spec)
    assert dataset.name == "combo" and dataset.root == spec.parent
    assert dataset.splits["val"].image_root == spec.parent / "../b/pictures"
    assert [len(s.coco["images"]) for s in dataset.splits.values()] == [2, 1]


@pytest.mark.parametrize("text, message", [
    ("train: t.json\nval: v.json\nlabels: x\n", "unknown key(s) labels; valid keys: name, train, val, test, images"),
    ("train: t.json\n", "'val' is required"),
    ("train: t.json\nval: v.json\nimages: {train: a, valid: b}\n", "unknown split(s) valid under 'images'"),
    ("train: [t.json]\nval: v.json\n", "'train' must be a non-empty string"),
    ("- train\n", "a dataset YAML is a mapping"),
    ("train: t.json\nval: v.json\ntest: missing.json\n", "missing.json: file not found"),
])
def test_bad_dataset_yaml(tmp_path, text, message):
    write_dataset(tmp_path)
    os.rename(tmp_path / "train.json", tmp_path / "t.json")
    os.rename(tmp_path / "val.json", tmp_path / "v.json")
    spec = tmp_path / "data.yaml"
    spec.write_text(text)
    with pytest.raises(UserError) as error:
        load_dataset(spec)
    assert message in str(error.value)
    assert str(spec) in str(error.value) or "missing.json" in message


def test_unknown_spec_is_a_user_error(tmp_path, capsys):
    code, _, err = check(capsys, tmp_path / "nowhere")
    assert code == 2 and "not found" in err and "s3://" in err


def test_fingerprint_follows_labels_and_image_files_only(dataset_dir, tmp_path):
    first = load_dataset(dataset_dir).fingerprint
    assert load_dataset(dataset_dir).fingerprint == first
    copy = write_dataset(tmp_path / "copy")
    assert load_dataset(copy).fingerprint == first  # same content elsewhere: same fingerprint
    edit_json(copy / "val.json", lambda c: annotation(c, 40).update(bbox=[5, 4, 20, 10]))
    relabelled = load_dataset(copy).fingerprint
    assert relabelled != first
    noise = Image.frombytes("RGB", (WIDTH, HEIGHT), os.urandom(WIDTH * HEIGHT * 3))
    noise.save(copy / "images" / "train_1.png")  # same pixel size, another file size
    assert load_dataset(copy).fingerprint != relabelled


# the real dataset: CI keeps it in `shared/` beside the checkout; DETFUSE_TRASHFILTER names another copy
TRASHFILTER = Path(os.environ.get("DETFUSE_TRASHFILTER")
                   or Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "trashfilter")


@pytest.mark.skipif(not TRASHFILTER.is_dir(),
                    reason=f"the trashfilter dataset is not at {TRASHFILTER} (set DETFUSE_TRASHFILTER to its path)")
def test_trashfilter_checks_clean():
    detfuse = Path(sys.executable).parent / "detfuse"
    result = subprocess.run([str(detfuse), "data", "check", str(TRASHFILTER)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert next(line for line in lines if line.startswith("train")).split()[1:3] == ["794", "1264"]
    assert next(line for line in lines if line.startswith("val")).split()[1:3] == ["199", "293"]
    assert "7 classes" in lines
    assert "plastic (7)" in result.stdout
