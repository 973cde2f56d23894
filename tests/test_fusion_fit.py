"""Fitting an ensemble on synthetic members with known strengths: two specialists that each see half the
classes well, and a member that only guesses. The fit must keep the specialists, drop the guesser and beat both
specialists on images it never saw."""

import numpy as np
import pytest

from detfuse.core.errors import UserError
from detfuse.core.evaluation import Prediction, evaluate
from detfuse.core.fusion import FusionInputs, FusionParams
from detfuse.core.fusion_fit import fit_ensemble, split_image_ids

SIZE = 100
CATEGORIES = [1, 2, 3, 4]


def ground_truth(num_images, rng):
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        images.append({"id": image_id, "file_name": f"{image_id}.jpg", "width": SIZE, "height": SIZE})
        for slot in range(4):  # one object per quadrant, so objects never overlap
            x, y = 50 * (slot % 2) + rng.uniform(2, 10), 50 * (slot // 2) + rng.uniform(2, 10)
            w, h = rng.uniform(20, 35), rng.uniform(20, 35)
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": int(rng.choice(CATEGORIES)), "bbox": [x, y, w, h], "area": w * h,
                                "iscrowd": 0})
    return {"images": images, "annotations": annotations,
            "categories": [{"id": c, "name": f"class{c}"} for c in CATEGORIES]}


def specialist(coco, strong_classes, rng):
    """Finds objects of its strong classes precisely and confidently; the others it mostly misses or
    misplaces, and it adds confident false positives of the weak classes."""
    predictions = []
    for annotation in coco["annotations"]:
        x, y, w, h = annotation["bbox"]
        image_id, category_id = annotation["image_id"], annotation["category_id"]
        if category_id in strong_classes:
            jitter = rng.normal(0, 1.0, 4)
            predictions.append(Prediction(image_id, category_id, (x + jitter[0], y + jitter[1], x + w + jitter[2],
                                                                  y + h + jitter[3]), rng.uniform(0.6, 0.95)))
        elif rng.uniform() < 0.3:
            predictions.append(Prediction(image_id, category_id, (x + 3, y + 3, x + w + 3, y + h + 3),
                                          rng.uniform(0.05, 0.4)))
    weak = [c for c in CATEGORIES if c not in strong_classes]
    for image in coco["images"]:
        x, y = rng.uniform(0, 60, 2)
        predictions.append(Prediction(image["id"], int(rng.choice(weak)), (x, y, x + 30, y + 30),
                                      rng.uniform(0.3, 0.7)))
    return predictions


def guesser(coco, rng):
    predictions = []
    for image in coco["images"]:
        for _ in range(6):
            x, y = rng.uniform(0, 70, 2)
            predictions.append(Prediction(image["id"], int(rng.choice(CATEGORIES)), (x, y, x + 30, y + 30),
                                          rng.uniform(0.5, 1.0)))
    return predictions


@pytest.fixture(scope="module")
def members():
    rng = np.random.default_rng(7)
    coco = ground_truth(80, rng)
    predictions = [specialist(coco, {1, 2}, rng), guesser(coco, rng), specialist(coco, {3, 4}, rng)]
    return coco, predictions


def test_split_is_deterministic_disjoint_and_complete():
    ids = list(range(100, 161))
    fit, report = split_image_ids(ids, seed=3)
    assert (fit, report) == split_image_ids(list(reversed(ids)), seed=3)
    assert set(fit).isdisjoint(report) and sorted(fit + report) == ids
    assert len(fit) == 30 and len(report) == 31
    assert split_image_ids(ids, seed=4) != (fit, report)
    with pytest.raises(UserError, match="needs at least 2"):
        split_image_ids([1], seed=0)


def test_fit_keeps_the_specialists_drops_the_guesser_and_beats_both_on_unseen_images(members):
    coco, predictions = members
    inputs = FusionInputs(predictions, coco["images"], CATEGORIES, ["specialist-12", "guesser", "specialist-34"])
    fit_ids, report_ids = split_image_ids([image["id"] for image in coco["images"]], seed=0)

    fitted = fit_ensemble(inputs, coco, fit_ids)

    assert sorted(fitted.members) == [0, 2]
    singles = [evaluate(coco, p, image_ids=report_ids).mAP50 for p in predictions]
    fused = evaluate(coco, inputs.fuse(fitted.params, fitted.members, report_ids), image_ids=report_ids).mAP50
    assert fused > max(singles) + 0.1, (fused, singles)
    assert fitted.fit_mAP50 == pytest.approx(
        evaluate(coco, inputs.fuse(fitted.params, fitted.members, fit_ids), image_ids=fit_ids).mAP50)
    assert fitted.steps[0]["step"] == "add member" and fitted.evaluations > 10


def overlapping_pairs(num_images, rng):
    """Ground truth of same-class objects in pairs overlapping at IoU 0.6, and two members that find them all."""
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        images.append({"id": image_id, "file_name": f"{image_id}.jpg", "width": SIZE, "height": SIZE})
        for row in range(2):
            category_id, w = int(rng.choice(CATEGORIES)), rng.uniform(24, 40)
            for x in (5.0, 5.0 + w / 4):  # IoU (w - w/4) / (w + w/4) = 0.6
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": category_id,
                                    "bbox": [x, 5.0 + 50 * row, w, 40.0], "area": w * 40.0, "iscrowd": 0})
    coco = {"images": images, "annotations": annotations,
            "categories": [{"id": c, "name": f"class{c}"} for c in CATEGORIES]}
    members = [[Prediction(a["image_id"], a["category_id"],
                           tuple(np.add([a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2],
                                         a["bbox"][1] + a["bbox"][3]], rng.normal(0, 0.5, 4))),
                           rng.uniform(0.3, 0.9)) for a in annotations] for _ in range(2)]
    return coco, members


def test_fit_raises_iou_thr_above_the_overlap_of_neighbouring_objects():
    coco, predictions = overlapping_pairs(40, np.random.default_rng(2))
    inputs = FusionInputs(predictions, coco["images"], CATEGORIES)
    fit_ids, report_ids = split_image_ids([image["id"] for image in coco["images"]], seed=1)

    fitted = fit_ensemble(inputs, coco, fit_ids)

    def report(params):
        return evaluate(coco, inputs.fuse(params, fitted.members, report_ids), image_ids=report_ids).mAP50

    # the default 0.55 merges each pair of neighbours into one box, losing one object of two
    assert fitted.params.iou_thr > 0.6
    assert report(fitted.params) > report(FusionParams()) + 0.2
    assert any(step["step"] == "set iou_thr" for step in fitted.steps)


def test_a_required_group_keeps_a_member_even_when_it_does_not_help(members):
    """The cross-family fit keeps one member of every family: here the guesser stands alone in its 'family'
    and would be dropped otherwise (see the test above)."""
    coco, predictions = members
    inputs = FusionInputs(predictions, coco["images"], CATEGORIES, ["specialist-12", "guesser", "specialist-34"])
    fit_ids, _ = split_image_ids([image["id"] for image in coco["images"]], seed=0)

    fitted = fit_ensemble(inputs, coco, fit_ids, keep_one_of=[[0, 2], [1]])

    assert 1 in fitted.members
    assert {0, 2} & set(fitted.members)
    assert any(step["step"] == "add member (required group)" for step in fitted.steps)
