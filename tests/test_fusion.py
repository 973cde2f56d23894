"""Fusion on hand-made cases whose answers are worked out by hand: agreeing and disagreeing members, empty
predictions, boxes reaching out of the image, and inputs that would make ensemble-boxes call exit()."""

import pytest

from detfuse.core.errors import UserError
from detfuse.core.evaluation import Prediction
from detfuse.core.fusion import CONF_TYPES, METHODS, FusionInputs, FusionParams, fuse, fuse_image

# a wide image: normalising by width and height separately is what makes these numbers come out
WIDTH, HEIGHT = 200, 100
IMAGES = [{"id": 1, "width": WIDTH, "height": HEIGHT}, {"id": 2, "width": WIDTH, "height": HEIGHT}]
CATEGORY_IDS = [3, 7, 11]  # COCO ids need not be contiguous
# in normalised coordinates A = (0.1, 0.1, 0.5, 0.5) and B = (0.14, 0.14, 0.54, 0.54): IoU 1296/1904 = 0.68
BOX_A = (20.0, 10.0, 100.0, 50.0)
BOX_B = (28.0, 14.0, 108.0, 54.0)


def boxes_equal(actual, expected):
    return actual == pytest.approx(expected, abs=1e-3)


def test_two_agreeing_members_give_one_score_weighted_box():
    fused = fuse([[Prediction(1, 7, BOX_A, 0.9)], [Prediction(1, 7, BOX_B, 0.6)]], IMAGES, CATEGORY_IDS,
                 FusionParams())
    assert len(fused) == 1
    (image_id, category_id, box, score), = fused
    assert (image_id, category_id) == (1, 7)
    # x: (0.9 * 20 + 0.6 * 28) / 1.5 = 23.2, y: (0.9 * 10 + 0.6 * 14) / 1.5 = 11.6
    assert boxes_equal(box, (23.2, 11.6, 103.2, 51.6))
    assert score == pytest.approx((0.9 + 0.6) / 2)


def test_weights_pull_the_box_towards_the_heavier_member():
    fused = fuse([[Prediction(1, 7, BOX_A, 0.9)], [Prediction(1, 7, BOX_B, 0.6)]], IMAGES, CATEGORY_IDS,
                 FusionParams(weights=(1.0, 3.0)))
    (_, _, box, score), = fused
    # weighted scores 0.9 and 1.8: x1 = (0.9 * 20 + 1.8 * 28) / 2.7
    assert boxes_equal(box, ((0.9 * 20 + 1.8 * 28) / 2.7, (0.9 * 10 + 1.8 * 14) / 2.7,
                             (0.9 * 100 + 1.8 * 108) / 2.7, (0.9 * 50 + 1.8 * 54) / 2.7))
    assert score == pytest.approx((0.9 + 1.8) / 2 * 2 / 4)  # mean weighted score * min(2, boxes) / sum(weights)


def test_nms_keeps_the_best_of_agreeing_boxes():
    fused = fuse([[Prediction(1, 7, BOX_A, 0.6)], [Prediction(1, 7, BOX_B, 0.9)]], IMAGES, CATEGORY_IDS,
                 FusionParams.default("nms"))
    assert [(p.category_id, p.score) for p in fused] == [(7, pytest.approx(0.9))]
    assert boxes_equal(fused[0].box, BOX_B)


def test_disagreeing_members_keep_both_boxes_at_lower_confidence():
    far_away = (150.0, 60.0, 190.0, 95.0)
    fused = fuse([[Prediction(1, 7, BOX_A, 0.8)], [Prediction(1, 11, BOX_A, 0.6), Prediction(1, 7, far_away, 0.4)]],
                 IMAGES, CATEGORY_IDS, FusionParams())
    found = sorted((p.category_id, round(p.score, 4), tuple(round(v, 3) for v in p.box)) for p in fused)
    # each box was seen by one of two members: its score is halved; classes never merge
    assert found == [(7, 0.2, far_away), (7, 0.4, BOX_A), (11, 0.3, BOX_A)]


def test_empty_predictions():
    params = FusionParams()
    assert fuse([[], []], IMAGES, CATEGORY_IDS, params) == []
    fused = fuse([[], [Prediction(2, 3, BOX_A, 0.5)]], IMAGES, CATEGORY_IDS, params)
    assert [(p.image_id, p.category_id, p.score) for p in fused] == [(2, 3, pytest.approx(0.25))]
    assert fuse_image([[], []], WIDTH, HEIGHT, CATEGORY_IDS, params) == []


@pytest.mark.parametrize("method", METHODS)
def test_every_method_handles_empty_members_and_images(method):
    params = FusionParams.default(method)
    assert fuse([[], [], []], IMAGES, CATEGORY_IDS, params) == []
    fused = fuse([[], [Prediction(1, 11, BOX_A, 0.7)], []], IMAGES, CATEGORY_IDS, params)
    assert [(p.image_id, p.category_id) for p in fused] == [(1, 11)]
    assert boxes_equal(fused[0].box, BOX_A)


@pytest.mark.parametrize("method", METHODS)
def test_boxes_outside_the_image_are_clipped_or_dropped(method):
    members = [
        [Prediction(1, 3, (-30.0, -10.0, 60.0, 40.0), 0.9),  # reaches out top-left: clipped
         Prediction(1, 3, (210.0, 20.0, 260.0, 60.0), 0.9),  # wholly right of the image: dropped
         Prediction(1, 7, (150.0, 120.0, 180.0, 150.0), 0.9)],  # wholly below: dropped
        [Prediction(1, 7, (180.0, 80.0, 250.0, 130.0), 0.8),  # reaches out bottom-right: clipped
         Prediction(1, 11, (40.0, 40.0, 40.0, 60.0), 0.8)],  # no width: dropped
    ]
    fused = fuse(members, IMAGES, CATEGORY_IDS, FusionParams.default(method))
    found = sorted((p.category_id, tuple(round(v, 3) for v in p.box)) for p in fused)
    assert found == [(3, (0.0, 0.0, 60.0, 40.0)), (7, (180.0, 80.0, 200.0, 100.0))]


@pytest.mark.parametrize("method", METHODS)
def test_skip_box_thr_drops_weak_boxes_before_fusion(method):
    members = [[Prediction(1, 3, BOX_A, 0.9), Prediction(1, 7, BOX_B, 0.05)], [Prediction(2, 11, BOX_A, 0.04)]]
    params = FusionParams(method=method, conf_type=CONF_TYPES[method][0], skip_box_thr=0.1)
    assert [(p.image_id, p.category_id) for p in fuse(members, IMAGES, CATEGORY_IDS, params)] == [(1, 3)]


@pytest.mark.parametrize("conf_type", CONF_TYPES["wbf"])
def test_every_wbf_conf_type_fuses_agreeing_boxes_into_one(conf_type):
    fused = fuse([[Prediction(1, 7, BOX_A, 0.9)], [Prediction(1, 7, BOX_B, 0.6)]], IMAGES, CATEGORY_IDS,
                 FusionParams(conf_type=conf_type))
    assert len(fused) == 1 and 0.6 <= fused[0].score <= 0.9


def test_fusing_a_subset_of_members_on_some_images():
    inputs = FusionInputs([[Prediction(1, 3, BOX_A, 0.9)], [Prediction(2, 7, BOX_B, 0.8)],
                           [Prediction(2, 7, BOX_B, 0.4)]], IMAGES, CATEGORY_IDS, ["a", "b", "c"])
    fused = inputs.fuse(FusionParams(weights=(1.0, 1.0)), members=[1, 2], image_ids=[2])
    assert [(p.image_id, p.category_id, round(p.score, 4)) for p in fused] == [(2, 7, 0.6)]


@pytest.mark.parametrize("params, message", [
    (FusionParams(method="nms", conf_type="avg"), "conf_type 'avg' does not apply to method 'nms'"),
    (FusionParams(conf_type="median"), "conf_type 'median' does not apply to method 'wbf'"),
    (FusionParams(method="wbf_3d"), "unknown fusion method 'wbf_3d'"),
    (FusionParams(weights=(1.0, 2.0, 3.0)), "3 weights for 2 members"),
    (FusionParams(weights=(1.0, 0.0)), "weights must be positive"),
    (FusionParams(iou_thr=1.5), "iou_thr must be in (0, 1)"),
    (FusionParams(skip_box_thr=-0.1), "skip_box_thr must be in [0, 1)"),
])
def test_bad_parameters_raise_instead_of_exiting(params, message):
    # ensemble-boxes itself would print and call exit() for an unknown conf_type or mismatched lengths
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        fuse([[Prediction(1, 3, BOX_A, 0.9)], [Prediction(1, 3, BOX_B, 0.9)]], IMAGES, CATEGORY_IDS, params)


@pytest.mark.parametrize("prediction, message", [
    (Prediction(1, 5, BOX_A, 0.9), r"category id\(s\) \[5\] are not among"),
    (Prediction(1, 3, (20.0, 10.0, float("nan"), 50.0), 0.9), "not finite"),
    (Prediction(1, 3, (100.0, 10.0, 20.0, 50.0), 0.9), "x2 < x1"),
    (Prediction(1, 3, BOX_A, 1.5), r"scores must lie in \[0, 1\]"),
    (Prediction(9, 3, BOX_A, 0.5), "image id 9, which is not among"),
])
def test_malformed_predictions_name_the_member_and_image(prediction, message):
    with pytest.raises(ValueError, match=message) as raised:
        fuse([[], [prediction]], IMAGES, CATEGORY_IDS, FusionParams(), member_names=["good", "broken"])
    assert "broken" in str(raised.value)


def test_parameters_round_trip_through_a_file_and_bad_ones_are_user_errors():
    params = FusionParams(method="soft_nms", iou_thr=0.6, skip_box_thr=0.01, conf_type=None, weights=(1.0, 2.0),
                          sigma=0.3)
    assert FusionParams.from_dict(params.as_dict(), 2, "fusion.json") == params
    with pytest.raises(UserError, match="fusion.json: 2 weights for 3 members"):
        FusionParams.from_dict(params.as_dict(), 3, "fusion.json")
    with pytest.raises(UserError, match="fusion.json: fusion parameters must be a mapping with exactly the keys"):
        FusionParams.from_dict({"method": "wbf"}, 2, "fusion.json")
