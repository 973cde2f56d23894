"""The project evaluator against answers worked out by hand and against pycocotools run the standard way."""

import contextlib
import copy
import io

import numpy as np
import pytest

from detfuse.core.errors import UserError
from detfuse.core.evaluation import Evaluation, Prediction, evaluate

# COCO interpolates precision at 101 recall points 0.00, 0.01, ..., 1.00; recall 0.5 reaches 51 of them.
HALF_RECALL = 51 / 101


def ground_truth(boxes_by_image, categories=("bottle", "can", "bag"), extra_images=()):
    """COCO dict from {image_id: [(category_id, (x, y, w, h)), ...]}; no info/licenses/area/iscrowd fields."""
    image_ids = sorted(set(boxes_by_image) | set(extra_images))
    annotations = []
    for image_id in sorted(boxes_by_image):
        for category_id, bbox in boxes_by_image[image_id]:
            annotations.append(
                {"id": len(annotations) + 1, "image_id": image_id, "category_id": category_id, "bbox": list(bbox)})
    return {
        "images": [{"id": i, "file_name": f"{i}.jpg", "width": 100, "height": 100} for i in image_ids],
        "annotations": annotations,
        "categories": [{"id": k + 1, "name": name} for k, name in enumerate(categories)],
    }


def xyxy(bbox):
    x, y, w, h = bbox
    return (x, y, x + w, y + h)


BOX_A = (10, 10, 20, 20)
BOX_B = (50, 50, 30, 10)
FAR_AWAY = (90.0, 90.0, 99.0, 99.0)


def test_perfect_predictions_score_one():
    gt = ground_truth({1: [(1, BOX_A), (1, BOX_B)], 2: [(2, BOX_A)]})
    predictions = [Prediction(a["image_id"], a["category_id"], xyxy(a["bbox"]), 0.9) for a in gt["annotations"]]
    result = evaluate(gt, predictions)
    assert isinstance(result, Evaluation)
    assert result.mAP50 == pytest.approx(1.0)
    assert result.mAP50_95 == pytest.approx(1.0)
    assert result.per_class_ap50 == {"bottle": pytest.approx(1.0), "can": pytest.approx(1.0)}
    assert result.num_images == 2 and result.num_predictions == 3


def test_one_of_two_found_gives_51_of_101_recall_points():
    gt = ground_truth({1: [(1, BOX_A), (1, BOX_B)]})
    result = evaluate(gt, [Prediction(1, 1, xyxy(BOX_A), 0.9)])
    assert result.mAP50 == pytest.approx(HALF_RECALL)
    assert result.mAP50_95 == pytest.approx(HALF_RECALL)


def test_false_positive_ranked_first_halves_precision():
    # ranked: FP (0.95) then TP (0.9): precision 0.5 at recall 0.5, interpolated back to recall 0
    gt = ground_truth({1: [(1, BOX_A), (1, BOX_B)]})
    predictions = [Prediction(1, 1, FAR_AWAY, 0.95), Prediction(1, 1, xyxy(BOX_A), 0.9)]
    assert evaluate(gt, predictions).mAP50 == pytest.approx(0.5 * HALF_RECALL)


def test_iou_0625_counts_for_thresholds_up_to_06_only():
    gt = ground_truth({1: [(1, (0, 0, 10, 10))]})
    result = evaluate(gt, [Prediction(1, 1, (0.0, 0.0, 10.0, 6.25), 0.8)])  # IoU = 62.5 / 100
    assert result.mAP50 == pytest.approx(1.0)
    assert result.mAP50_95 == pytest.approx(3 / 10)  # matched at 0.50, 0.55, 0.60 of the ten thresholds


def test_per_class_ap50_and_mean_over_classes_with_ground_truth():
    gt = ground_truth({1: [(1, BOX_A), (2, BOX_A), (2, BOX_B)]})
    predictions = [
        Prediction(1, 1, xyxy(BOX_A), 0.9),  # bottle: found
        Prediction(1, 2, xyxy(BOX_B), 0.7),  # can: one of two found
        Prediction(1, 3, xyxy(BOX_A), 0.99),  # bag has no ground truth: left out of the mean, as in COCO
    ]
    result = evaluate(gt, predictions)
    assert result.per_class_ap50 == {"bottle": pytest.approx(1.0), "can": pytest.approx(HALF_RECALL)}
    assert result.mAP50 == pytest.approx((1.0 + HALF_RECALL) / 2)
    assert result.as_metrics() == {
        "mAP50": result.mAP50, "mAP50_95": result.mAP50_95,
        "AP50/bottle": result.per_class_ap50["bottle"], "AP50/can": result.per_class_ap50["can"],
    }


def test_subset_of_images_via_image_ids():
    gt = ground_truth({1: [(1, BOX_A)], 2: [(1, BOX_B)]})
    predictions = [Prediction(1, 1, xyxy(BOX_A), 0.9), Prediction(2, 1, FAR_AWAY, 0.8)]
    first = evaluate(gt, predictions, image_ids=[1])
    assert first.mAP50 == pytest.approx(1.0) and first.num_images == 1 and first.num_predictions == 1
    second = evaluate(gt, predictions, image_ids=[2])
    assert second.mAP50 == 0.0 and second.num_predictions == 1
    both = evaluate(gt, predictions)  # recall 0.5 at precision 1
    assert both.mAP50 == pytest.approx(HALF_RECALL)


def test_image_without_annotations_contributes_false_positives():
    gt = ground_truth({1: [(1, BOX_A)]}, extra_images=[2])
    predictions = [Prediction(2, 1, xyxy(BOX_A), 0.9), Prediction(1, 1, xyxy(BOX_A), 0.5)]
    assert evaluate(gt, predictions).mAP50 == pytest.approx(0.5)
    assert evaluate(gt, predictions, image_ids=[1]).mAP50 == pytest.approx(1.0)


def test_no_predictions_give_zeros():
    gt = ground_truth({1: [(1, BOX_A), (3, BOX_B)]})
    result = evaluate(gt, [])
    assert (result.mAP50, result.mAP50_95, result.num_predictions) == (0.0, 0.0, 0)
    assert result.per_class_ap50 == {"bottle": 0.0, "bag": 0.0}


def test_max_detections_is_per_image_and_class():
    gt = ground_truth({1: [(1, BOX_A)]})
    predictions = [Prediction(1, 1, (60.0 + i, 60.0, 70.0 + i, 70.0), 0.9 - 0.1 * i) for i in range(3)]
    predictions.append(Prediction(1, 1, xyxy(BOX_A), 0.1))  # the hit is ranked 4th
    predictions.append(Prediction(1, 2, FAR_AWAY, 0.95))  # another class: does not use up bottle's quota
    assert evaluate(gt, predictions, max_detections=3).mAP50 == 0.0
    assert evaluate(gt, predictions, max_detections=4).mAP50 == pytest.approx(0.25)
    assert evaluate(gt, predictions).mAP50 == pytest.approx(0.25)


def test_annotation_id_zero_still_matches():
    # pycocotools takes id 0 for "unmatched"; the evaluator renumbers so a perfect prediction stays perfect
    gt = ground_truth({1: [(1, BOX_A)]})
    gt["annotations"][0]["id"] = 0
    assert evaluate(gt, [Prediction(1, 1, xyxy(BOX_A), 0.9)]).mAP50 == pytest.approx(1.0)


def test_bad_inputs_are_reported():
    gt = ground_truth({1: [(1, BOX_A)]}, extra_images=[2])
    with pytest.raises(ValueError, match="category id 7"):
        evaluate(gt, [Prediction(1, 7, xyxy(BOX_A), 0.9)])
    with pytest.raises(ValueError, match="image id 99"):
        evaluate(gt, [Prediction(99, 1, xyxy(BOX_A), 0.9)])
    with pytest.raises(ValueError, match="image_ids not in the ground truth: 5"):
        evaluate(gt, [], image_ids=[1, 5])
    with pytest.raises(ValueError, match="invalid prediction"):
        evaluate(gt, [Prediction(1, 1, (10.0, 10.0, 5.0, 20.0), 0.9)])
    with pytest.raises(ValueError, match="invalid prediction"):
        evaluate(gt, [Prediction(1, 1, xyxy(BOX_A), float("nan"))])
    with pytest.raises(UserError, match="nothing to evaluate"):
        evaluate(gt, [], image_ids=[2])
    unlabeled = {"images": gt["images"], "categories": gt["categories"]}  # a test split
    with pytest.raises(UserError, match="nothing to evaluate"):
        evaluate(unlabeled, [])


def test_evaluation_prints_nothing(capsys):
    gt = ground_truth({1: [(1, BOX_A)]})
    evaluate(gt, [Prediction(1, 1, xyxy(BOX_A), 0.9)])
    assert capsys.readouterr().out == ""


def random_fixture(seed, num_images=40, num_categories=4):
    """Boxes with jittered, misclassified, duplicated and spurious predictions; one class never in GT;
    scores rounded so that ties occur; some images without annotations."""
    rng = np.random.default_rng(seed)
    boxes_by_image, predictions = {}, []
    for image_id in range(1, num_images + 1):
        boxes = []
        for _ in range(int(rng.integers(0, 6))):
            x, y = rng.uniform(0, 70, 2)
            w, h = rng.uniform(4, 30, 2)
            boxes.append((int(rng.integers(1, num_categories)), (x, y, w, h)))  # category 4 never
        boxes_by_image[image_id] = boxes
        for category_id, (x, y, w, h) in boxes:
            if rng.uniform() < 0.8:
                jitter = rng.normal(0, 0.15, 4) * [w, h, w, h]
                box = (x + jitter[0], y + jitter[1], x + w + jitter[2], y + h + jitter[3])
                if box[0] < box[2] and box[1] < box[3]:
                    confused = category_id if rng.uniform() < 0.85 else int(rng.integers(1, num_categories + 1))
                    predictions.append(Prediction(image_id, confused, box, round(float(rng.uniform()), 1)))
        for _ in range(int(rng.integers(0, 4))):
            x, y = rng.uniform(0, 80, 2)
            w, h = rng.uniform(2, 20, 2)
            predictions.append(Prediction(image_id, int(rng.integers(1, num_categories + 1)),
                                          (x, y, x + w, y + h), round(float(rng.uniform()), 1)))
    categories = ("bottle", "can", "bag", "battery")[:num_categories]
    return ground_truth(boxes_by_image, categories=categories), predictions


def pycocotools_standard(gt, predictions, image_ids=None):
    """pycocotools the documented way: COCO index, loadRes on a results list, evaluate/accumulate/summarize."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    results = [{"image_id": p.image_id, "category_id": p.category_id,
                "bbox": [p.box[0], p.box[1], p.box[2] - p.box[0], p.box[3] - p.box[1]], "score": p.score}
               for p in predictions]
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        for annotation in coco_gt.dataset["annotations"]:
            annotation.update(area=annotation["bbox"][2] * annotation["bbox"][3], iscrowd=0)
        coco_gt.createIndex()
        coco_eval = COCOeval(coco_gt, coco_gt.loadRes(results), iouType="bbox")
        if image_ids is not None:
            coco_eval.params.imgIds = sorted(image_ids)
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    at_50 = coco_eval.eval["precision"][0, :, :, 0, 2]  # IoU 0.5, area 'all', maxDets 100
    names = {c["id"]: c["name"] for c in gt["categories"]}
    per_class = {names[c]: float(np.mean(at_50[:, k])) for k, c in enumerate(coco_eval.params.catIds)
                 if at_50[0, k] > -1}
    return coco_eval.stats[1], coco_eval.stats[0], per_class


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_agrees_with_pycocotools_on_random_fixture(seed):
    gt, predictions = random_fixture(seed)
    ap50, ap50_95, per_class = pycocotools_standard(gt, predictions)
    result = evaluate(gt, predictions)
    assert 0.2 < result.mAP50 < 0.95  # a fixture where the comparison is not trivial
    assert result.mAP50 == pytest.approx(ap50, abs=1e-12)
    assert result.mAP50_95 == pytest.approx(ap50_95, abs=1e-12)
    assert result.per_class_ap50 == pytest.approx(per_class, abs=1e-12)
    assert set(per_class) == {"bottle", "can", "bag"}


def test_agrees_with_pycocotools_on_a_subset():
    gt, predictions = random_fixture(3)
    half = [image["id"] for image in gt["images"]][::2]
    ap50, ap50_95, per_class = pycocotools_standard(gt, predictions, image_ids=half)
    result = evaluate(gt, predictions, image_ids=half)
    assert result.num_images == len(half)
    assert result.num_predictions == sum(p.image_id in set(half) for p in predictions)
    assert (result.mAP50, result.mAP50_95) == pytest.approx((ap50, ap50_95), abs=1e-12)
    assert result.per_class_ap50 == pytest.approx(per_class, abs=1e-12)
