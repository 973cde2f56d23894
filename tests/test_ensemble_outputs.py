"""The ensemble's output files: COCO results, the competition CSV and fusion.json, written and read back."""

import csv
import io
import json
from dataclasses import replace

import pytest

from detfuse.stages.ensemble_outputs import coco_results, fusion_document, read_fusion_spec, submission_csv
from detfuse.core.errors import UserError
from detfuse.core.evaluation import Prediction
from detfuse.core.fusion import FusionParams, fuse
from detfuse.stages.member_predictions import Member

IMAGES = [{"id": 4, "file_name": "test/0000.jpg", "width": 200, "height": 100},
          {"id": 9, "file_name": "test/0001.jpg", "width": 200, "height": 100}]
CATEGORY_IDS = [3, 7]
MEMBERS = [Member("t1", "yolov5", "yolov5n", "s3://bucket/exp/t1/checkpoint_000002", 0.5),
           Member("t2", "detectron2", "faster_rcnn", "/runs/exp/t2/checkpoint_000001", 0.6)]


def test_coco_results_are_xywh_in_pixels():
    results = coco_results([Prediction(4, 7, (10.0, 20.0, 50.0, 30.0), 0.5)])
    assert results == [{"image_id": 4, "category_id": 7, "bbox": [10.0, 20.0, 40.0, 10.0], "score": 0.5}]


def test_csv_has_a_row_per_image_with_class_indexes_and_corners():
    text = submission_csv([Prediction(9, 7, (10.0, 20.0, 50.0, 30.0), 0.25), Prediction(9, 3, (1, 2, 3, 4), 0.75)],
                          IMAGES, CATEGORY_IDS)
    rows = list(csv.DictReader(io.StringIO(text)))
    assert list(rows[0]) == ["PredictionString", "image_id"]
    assert [row["image_id"] for row in rows] == ["test/0000.jpg", "test/0001.jpg"]
    assert rows[0]["PredictionString"] == ""
    # best first; label = class index (COCO id 7 is the second class)
    values = rows[1]["PredictionString"].split()
    assert len(values) == 12
    assert [float(v) for v in values] == [0, 0.75, 1, 2, 3, 4, 1, 0.25, 10, 20, 50, 30]


def test_fusion_json_round_trips_and_reproduces_the_fusion(tmp_path):
    params = FusionParams(iou_thr=0.6, conf_type="max", weights=(2.0, 1.0))
    path = tmp_path / "fusion.json"
    path.write_text(json.dumps(fusion_document(MEMBERS, params, ["can", "bag"], CATEGORY_IDS,
                                               fitted_on={"split": "val/fit"})))
    spec = read_fusion_spec(str(path))
    assert [(m.trial_id, m.family, m.checkpoint, m.weight) for m in spec.members] == [
        ("t1", "yolov5", MEMBERS[0].checkpoint, 2.0), ("t2", "detectron2", MEMBERS[1].checkpoint, 1.0)]
    assert spec.weighted_params == params
    assert (spec.class_names, spec.category_ids) == (["can", "bag"], CATEGORY_IDS)
    members = [[Prediction(4, 3, (10, 10, 50, 50), 0.9)], [Prediction(4, 3, (14, 14, 54, 54), 0.5)]]
    assert fuse(members, IMAGES, spec.category_ids, spec.weighted_params) == fuse(members, IMAGES, CATEGORY_IDS,
                                                                                  params)


def test_a_members_tta_is_recorded_and_a_fusion_json_without_it_means_none(tmp_path):
    members = [*MEMBERS, replace(MEMBERS[1], tta="hflip")]  # t2 fused as it is and on mirrored images
    document = fusion_document(members, FusionParams(), ["can", "bag"], CATEGORY_IDS)
    path = tmp_path / "fusion.json"
    path.write_text(json.dumps(document))
    assert [(m.trial_id, m.checkpoint, m.tta) for m in read_fusion_spec(str(path)).members] == [
        ("t1", MEMBERS[0].checkpoint, "none"), ("t2", MEMBERS[1].checkpoint, "none"),
        ("t2", MEMBERS[1].checkpoint, "hflip")]
    for member in document["members"]:  # as written before test-time augmentation existed
        del member["tta"]
    path.write_text(json.dumps(document))
    assert [m.tta for m in read_fusion_spec(str(path)).members] == ["none", "none", "none"]


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(format="other"), "not a detfuse fusion file"),
    (lambda d: d["members"][0].pop("checkpoint"), "'members' must be a non-empty list"),
    (lambda d: d["members"][1].update(weight=-1), "member weights: weights must be positive"),
    (lambda d: d["params"].update(conf_type="median"), "conf_type 'median' does not apply"),
    (lambda d: d.update(class_names=["can"]), "'class_names' and 'category_ids' must be"),
    (lambda d: d["members"][0].update(tta="vflip"), "member t1: tta 'vflip'; valid values are none, hflip"),
])
def test_a_damaged_fusion_json_is_a_user_error_naming_the_file(tmp_path, change, message):
    document = fusion_document(MEMBERS, FusionParams(), ["can", "bag"], CATEGORY_IDS)
    change(document)
    path = tmp_path / "fusion.json"
    path.write_text(json.dumps(document))
    with pytest.raises(UserError, match=message) as raised:
        read_fusion_spec(str(path))
    assert str(path) in str(raised.value)
