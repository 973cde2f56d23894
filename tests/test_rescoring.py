"""A checkpoint re-scored the way the ensemble job does it (its family's predictor in a fresh Ray worker) gives
the mAP50 its trial reported, for both families, at 640 px on non-square photos of mixed sizes with crowded
scenes; and a batch predicts what its images predict one at a time, whatever the clock does."""

import itertools
import json
import time

import pytest
import ray
from PIL import Image

import trainables
from detfuse.core.data import load_dataset
from detfuse.core.data.synthetic import generate
from detfuse.core.evaluation import evaluate
from detfuse.stages.member_predictions import Member, as_predictions
from detectron2_trials import trial_config as detectron2_config
from local_runs import train_in_local_run
from detfuse.stages.ensemble import _predict_member_task
from yolov5_trials import trial_config as yolo_config

TOLERANCE = 0.002  # the contract: a re-scored mAP50 within this of the reported one


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """A small synthetic set at photo scale: several sizes and both orientations, some crowded images."""
    return generate(tmp_path_factory.mktemp("photos"), seed=11, num_train=16, num_val=8, num_test=0, image_size=640)


@pytest.fixture(scope="module")
def checkpoints(photos, tmp_path_factory):
    """{family: (checkpoint dir, reported mAP50)} of a short 640 px trial of each family on `photos`."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DETFUSE_CACHE", str(tmp_path_factory.mktemp("cache")))
        configs = {
            "yolov5": {**yolo_config(4, image_size=640, batch_size=4, nominal_batch_size=4, lr=0.01),
                       "dataset": str(photos)},
            "detectron2": detectron2_config("faster_rcnn", dataset=photos, max_epochs=2.0, image_size=640,
                                            anchor_sizes=[32, 64, 128, 256, 512]),
        }
        found = {}
        for family, config in configs.items():
            run = train_in_local_run(config, tmp_path_factory.mktemp(family))
            last = json.loads(run.metrics_log.read_text().splitlines()[-1])
            found[family] = (run.latest_checkpoint(), last["mAP50"])
        yield found


@pytest.fixture(scope="module")
def fresh_workers():
    ray.init(num_cpus=2, include_dashboard=False)  # a private cluster: never another process's
    yield
    ray.shutdown()


def test_the_photos_are_what_real_data_looks_like(photos):
    dataset = load_dataset(str(photos))
    images = dataset.splits["val"].coco["images"] + dataset.splits["train"].coco["images"]
    sizes = {(image["width"], image["height"]) for image in images}
    assert any(w > h for w, h in sizes) and any(w < h for w, h in sizes) and len(sizes) >= 3, sizes
    for image in images:
        with Image.open(dataset.splits["train"].image_path(image)) as opened:
            assert opened.size == (image["width"], image["height"])
    counts = {}
    for split in dataset.splits.values():
        for annotation in split.coco["annotations"]:
            counts[annotation["image_id"]] = counts.get(annotation["image_id"], 0) + 1
    assert max(counts.values()) >= 15, counts


@pytest.mark.slow
@pytest.mark.parametrize("family", ["yolov5", "detectron2"])
def test_a_checkpoint_rescored_in_a_fresh_worker_gives_its_reported_mAP50(family, photos, checkpoints,
                                                                         fresh_workers):
    checkpoint, reported = checkpoints[family]
    dataset = load_dataset(str(photos))
    member = Member("t0", family, "any", str(checkpoint), reported)
    runs = ray.get(_predict_member_task.remote(member, str(photos), dataset.fingerprint, [("val", "none")]))
    rows, _ = runs[("val", "none")]
    val = dataset.splits["val"]
    rescored = evaluate(val.coco, as_predictions(rows)).mAP50
    print(family, reported, rescored)
    assert abs(rescored - reported) <= TOLERANCE, (family, reported, rescored)
    # every image got detections: none was dropped by a time limit or a failed batch
    assert {row[0] for row in rows} == {image["id"] for image in val.coco["images"]}
    # and they are what the predictor gives in this process, where training imported everything it uses
    here = trainables.load_family(family, "test").load_predictor(checkpoint, "cpu").predict(
        [val.image_path(image) for image in val.coco["images"]])
    assert len(rows) == sum(len(found) for found in here)


def _jumping_clock(monkeypatch):
    """Every clock read is 100 s after the last: any wall-clock limit in the prediction path is exceeded."""
    ticks = itertools.count()
    monkeypatch.setattr(time, "time", lambda: 1e9 + 100.0 * next(ticks))
    monkeypatch.setattr(time, "perf_counter", lambda: 100.0 * next(ticks))
    monkeypatch.setattr(time, "monotonic", lambda: 100.0 * next(ticks))


@pytest.mark.parametrize("family", ["yolov5", "detectron2"])
def test_a_batch_predicts_what_its_images_predict_one_at_a_time(family, photos, checkpoints, monkeypatch):
    predictor = trainables.load_family(family, "test").load_predictor(checkpoints[family][0], "cpu")
    val = load_dataset(str(photos)).splits["val"]
    paths = [val.image_path(image) for image in val.coco["images"]]
    predictor.batch_size = 1
    one_at_a_time = predictor.predict(paths)
    predictor.batch_size = len(paths)
    _jumping_clock(monkeypatch)
    batched = predictor.predict(paths)
    monkeypatch.undo()
    assert all(one_at_a_time), "every image has detections, or the comparison says little"
    for single, together in zip(one_at_a_time, batched):
        assert len(single) == len(together)
        for a, b in zip(single, together):
            assert a.category_id == b.category_id
            assert a.score == pytest.approx(b.score, abs=1e-4)
            assert a.box == pytest.approx(b.box, abs=1e-2)
