"""Detectron2 trials on the CPU, as `detfuse train` runs them: Faster R-CNN learning on the built-in set,
RetinaNet and Cascade R-CNN end to end, weights from S3, and a stopped trial resuming exactly."""

import json
import math

import pytest
import torch
from detectron2_trials import d2_cache, tiny_dataset, trial_config  # noqa: F401  (fixtures)
from local_runs import train_reporting_to

from detfuse.core import trial_link
from detfuse.core.data import load_dataset
from detfuse.core.evaluation import Prediction, evaluate
from s3_uploads import upload_file
from trainables.detectron2 import checkpoints, load_predictor


class Interrupted(Exception):
    pass


class InterruptedRun(trial_link.LocalRun):
    """A local run stopped right after reporting `iteration`, as a Tune trial paused or killed there."""

    def __init__(self, run_dir, iteration):
        super().__init__(run_dir, keep=10)
        self.iteration = iteration

    def report(self, metrics, checkpoint_dir):
        super().report(metrics, checkpoint_dir)
        if metrics["iteration"] >= self.iteration:
            raise Interrupted


@pytest.fixture(scope="module")
def learned_run(d2_cache, tmp_path_factory):  # noqa: F811
    run = trial_link.LocalRun(tmp_path_factory.mktemp("faster-rcnn"), keep=4)
    return run, train_reporting_to(run, trial_config("faster_rcnn", max_epochs=2.0, eval_every=0.5))


def test_faster_rcnn_learns_the_builtin_set(learned_run):
    run, reports = learned_run
    assert [r["epoch"] for r in reports] == [0.5, 1.0, 1.5, 2.0]
    assert [r["iteration"] for r in reports] == [25, 50, 75, 100]  # 200 images, batch 4
    mAP50 = [r["mAP50"] for r in reports]
    assert mAP50[-1] > 0.1 and mAP50[-1] > mAP50[0] + 0.05, mAP50  # seen here: 0.018 0.132 0.205 0.226
    assert reports[-1]["loss"] < reports[0]["loss"]
    for report in reports:
        assert set(report) >= {"mAP50", "mAP50_95", "epoch", "iteration", "images_per_sec", "loss", "lr",
                               "AP50/bottle", "AP50/battery"}
        assert report["images_per_sec"] > 0 and report["workers"] == 1
        directory = run.run_dir / report["checkpoint"]
        meta = json.loads((directory / "detfuse.json").read_text())
        assert (meta["family"], meta["architecture"], meta["epoch"]) == ("detectron2", "faster_rcnn", report["epoch"])
        assert meta["class_names"] == ["bottle", "can", "bag", "paper", "battery"]
        assert meta["category_ids"] == [1, 2, 3, 4, 5] and meta["metrics"]["mAP50"] == report["mAP50"]
        assert meta["hparams"]["depth"] == 18 and meta["hparams"]["roi_batch_size"] == 64


def test_checkpoint_loads_without_pickle_and_predicts_what_was_reported(learned_run):
    run, reports = learned_run
    directory = run.latest_checkpoint()
    state = torch.load(directory / checkpoints.TRAINING_STATE_FILE, map_location="cpu", weights_only=True)
    assert state["iteration"] == 100 and state["world_size"] == 1
    assert isinstance(state["workers"][0]["rng"]["torch"], torch.Tensor)
    split = load_dataset("builtin").splits["val"]
    images = split.coco["images"]
    detections = load_predictor(directory).predict([split.image_path(image) for image in images])
    assert len(detections) == len(images)
    predictions = [Prediction(image["id"], *found) for image, per_image in zip(images, detections)
                   for found in per_image]
    assert all(p.category_id in (1, 2, 3, 4, 5) and p.box[0] <= p.box[2] for p in predictions)
    assert evaluate(split.coco, predictions).mAP50 == pytest.approx(reports[-1]["mAP50"], abs=1e-6)


@pytest.mark.parametrize("architecture", ["retinanet", "cascade_rcnn"])
def test_architecture_trains_end_to_end(architecture, tiny_dataset, tmp_path, d2_cache):  # noqa: F811
    # 12 images, batch 4: three iterations, one evaluation
    run = trial_link.LocalRun(tmp_path)
    [report] = train_reporting_to(run, trial_config(architecture, tiny_dataset, max_epochs=1.0))
    assert (report["epoch"], report["iteration"]) == (1.0, 3)
    assert math.isfinite(report["loss"]) and 0.0 <= report["mAP50"] <= 1.0
    meta = checkpoints.read_meta(run.latest_checkpoint())
    assert meta["architecture"] == architecture
    split = load_dataset(tiny_dataset).splits["val"]
    detections = load_predictor(run.latest_checkpoint()).predict(
        [split.image_path(image) for image in split.coco["images"]])
    assert len(detections) == 4


def test_weights_from_s3(tiny_dataset, tmp_path, s3_bucket, d2_cache):  # noqa: F811
    source = trial_link.LocalRun(tmp_path / "source")
    train_reporting_to(source, trial_config("retinanet", tiny_dataset, max_epochs=1.0))
    trained = checkpoints.read_model_state(source.latest_checkpoint())
    upload_file(source.latest_checkpoint() / checkpoints.MODEL_FILE, f"s3://{s3_bucket}/weights/retinanet.pth")

    # another seed starts from other random weights; one step at a negligible lr keeps the loaded ones
    config = {**trial_config("retinanet", tiny_dataset, max_epochs=1 / 3, lr=1e-7),
              "weights": {"source": f"s3://{s3_bucket}/weights/retinanet.pth", "sha256": None}, "seed": 5}
    target = trial_link.LocalRun(tmp_path / "target")
    train_reporting_to(target, config)
    loaded = checkpoints.read_model_state(target.latest_checkpoint())
    differences = [(loaded[k] - trained[k]).abs().max().item() for k in trained]
    assert max(differences) < 1e-5

    fresh = trial_link.LocalRun(tmp_path / "fresh")
    train_reporting_to(fresh, {**config, "weights": None})
    unloaded = checkpoints.read_model_state(fresh.latest_checkpoint())
    assert max((unloaded[k] - trained[k]).abs().max().item() for k in trained) > 1e-2


def test_stopped_trial_resumes_exactly(tiny_dataset, tmp_path, d2_cache):  # noqa: F811
    # batch 2 over 12 images: 6 iterations, a report every 2; rare classes repeated by the sampler
    config = trial_config("faster_rcnn", tiny_dataset, max_epochs=1.0, eval_every=1 / 3, batch_size=2,
                          repeat_threshold=0.5)
    straight = trial_link.LocalRun(tmp_path / "straight", keep=10)
    straight_reports = train_reporting_to(straight, config)

    with pytest.raises(Interrupted):
        train_reporting_to(InterruptedRun(tmp_path / "resumed", iteration=2), config)
    resumed = trial_link.LocalRun(tmp_path / "resumed", keep=10)
    resumed_reports = train_reporting_to(resumed, config)

    assert [r["iteration"] for r in straight_reports] == [2, 4, 6]
    assert [r["iteration"] for r in resumed_reports] == [2, 4, 6]  # one report before the stop, two after
    for before, after in zip(straight_reports, resumed_reports):
        assert after["loss"] == pytest.approx(before["loss"], rel=1e-5)
        assert after["mAP50"] == pytest.approx(before["mAP50"], abs=1e-6)
    expected = checkpoints.read_model_state(straight.latest_checkpoint())
    weights = checkpoints.read_model_state(resumed.latest_checkpoint())
    assert max((weights[k] - expected[k]).abs().max().item() for k in expected) < 1e-5
    expected_state = checkpoints.read_training_state(straight.latest_checkpoint())
    state = checkpoints.read_training_state(resumed.latest_checkpoint())
    assert state["scheduler"] == expected_state["scheduler"]
    assert state["workers"][0]["stream"] == expected_state["workers"][0]["stream"]
    assert torch.equal(state["workers"][0]["rng"]["torch"], expected_state["workers"][0]["rng"]["torch"])
