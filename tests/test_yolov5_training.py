"""YOLOv5 trials on the CPU, as `detfuse train` runs them: learning, a checkpoint per epoch, exact resume, a
checkpoint's predictor scoring what the trial reported, and initial weights."""

import gc
import json
import os
import shutil
import sys
import threading

import pytest
import torch
from yolov5_trials import trial_config, yolo_cache  # noqa: F401  (fixture)
from local_runs import train_reporting_to

import trainables
from detfuse.core import trial_link
from detfuse.core.data import load_dataset
from detfuse.core.evaluation import Prediction, evaluate
from trainables.yolov5 import checkpoint, load_predictor

EPOCHS = 3


@pytest.fixture(scope="module")
def straight_run(yolo_cache, tmp_path_factory):  # noqa: F811
    run = trial_link.LocalRun(tmp_path_factory.mktemp("straight"), keep=EPOCHS)
    return run, train_reporting_to(run, trial_config(EPOCHS))


def test_trial_learns_and_reports_a_checkpoint_every_epoch(straight_run):
    run, reports = straight_run
    assert [r["epoch"] for r in reports] == [1.0, 2.0, 3.0]
    mAP50 = [r["mAP50"] for r in reports]
    # seen: 0.000 0.006 0.033 on one 2-core machine, 0.000 0.000 0.0035 on another (three epochs from scratch)
    assert mAP50[-1] > 0.002 and mAP50[-1] > mAP50[0], mAP50
    box_loss = [r["train/box_loss"] for r in reports]
    assert box_loss[-1] < 0.85 * box_loss[0], box_loss  # seen: 4.43 -> 3.30
    for report in reports:
        assert set(report) >= {"mAP50", "mAP50_95", "epoch", "AP50/battery", "lr", "images_per_sec"}
        meta = json.loads((run.run_dir / report["checkpoint"] / "detfuse.json").read_text())
        assert meta["family"] == "yolov5" and meta["architecture"] == "yolov5n"
        assert meta["epoch"] == report["epoch"] and meta["metrics"]["mAP50"] == report["mAP50"]
        assert meta["class_names"] == ["bottle", "can", "bag", "paper", "battery"]
        assert meta["category_ids"] == [1, 2, 3, 4, 5] and meta["hparams"]["image_size"] == 160


def test_trial_resumes_exactly_from_a_checkpoint(straight_run, tmp_path):
    straight, straight_reports = straight_run
    # a trial stopped after epoch 2 (by Tune, or a killed `detfuse train`) left this checkpoint behind
    stopped_at = straight.checkpoints()[1]
    shutil.copytree(stopped_at, tmp_path / stopped_at.name)
    reported = straight.metrics_log.read_text().splitlines(keepends=True)[:2]
    (tmp_path / straight.metrics_log.name).write_text("".join(reported))
    resumed = trial_link.LocalRun(tmp_path, keep=EPOCHS)
    reports = train_reporting_to(resumed, trial_config(EPOCHS))[2:]
    assert [r["epoch"] for r in reports] == [3.0]  # it went on with epoch 3, not from the start

    # model, EMA, optimizer, scheduler, data order and RNG came back: all match the uninterrupted trial
    state_at_2 = checkpoint.read_trainer_state(stopped_at)
    state_at_3 = checkpoint.read_trainer_state(resumed.latest_checkpoint())
    straight_at_3 = checkpoint.read_trainer_state(straight.latest_checkpoint())
    assert (state_at_2["epoch"], state_at_3["epoch"]) == (1, 2)  # Ultralytics' 0-based index of the last epoch
    batches = 200 // 16 + 1
    assert state_at_3["ema_updates"] == state_at_2["ema_updates"] + batches == straight_at_3["ema_updates"]
    steps = [group["step"] for group in state_at_3["optimizer"]["state"].values()]
    assert all(step == 3 * batches for step in steps)  # AdamW's step counts continued
    for name, weights in checkpoint.read_weights(straight.latest_checkpoint()).items():
        assert torch.equal(weights, checkpoint.read_weights(resumed.latest_checkpoint())[name]), name
    assert reports[0]["mAP50"] == straight_reports[-1]["mAP50"] and reports[0]["lr"] == straight_reports[-1]["lr"]

    # a trial whose checkpoint already holds the last epoch has nothing left to do
    assert train_reporting_to(resumed, trial_config(EPOCHS))[2:] == reports


def test_checkpoint_predictor_scores_what_the_trial_reported(straight_run):
    run, reports = straight_run
    predictor = load_predictor(run.latest_checkpoint(), device="cpu")
    split = load_dataset("builtin").splits["val"]
    images = split.coco["images"]
    detections = predictor.predict([split.image_path(image) for image in images])
    assert len(detections) == len(images)
    assert all(len(found) <= 100 for found in detections)
    first = next(d for found in detections for d in found)
    assert first.category_id in (1, 2, 3, 4, 5) and 0 <= first.box[0] <= first.box[2] <= images[0]["width"]
    evaluation = evaluate(split.coco, [Prediction(image["id"], *d) for image, found in zip(images, detections)
                                       for d in found])
    # the predictor fuses conv and batch norm, so scores may move in the last digits only
    assert evaluation.mAP50 == pytest.approx(reports[-1]["mAP50"], abs=0.005)


def test_training_starts_from_given_weights(straight_run, tmp_path):
    from trainables.yolov5.predictor import build_model
    from trainables.yolov5.trainable import build_trainer

    run, _ = straight_run
    trained = checkpoint.read_weights(run.latest_checkpoint())
    # a detfuse checkpoint directory ...
    config = {**trial_config(1), "weights": {"source": str(run.latest_checkpoint()), "sha256": None}}
    model = build_trainer(config, tmp_path / "from-checkpoint").model
    assert all(torch.equal(model.state_dict()[name], value) for name, value in trained.items())
    # ... or an Ultralytics checkpoint file of another class count: the layers whose shapes match are copied
    other = build_model("yolov5n", num_classes=3)
    torch.save({"model": other, "train_args": {}}, tmp_path / "other.pt")
    model = build_trainer({**config, "weights": {"source": str(tmp_path / "other.pt"), "sha256": None}},
                          tmp_path / "from-pt").model
    backbone = "model.0.conv.weight"
    assert torch.equal(model.state_dict()[backbone], other.state_dict()[backbone])
    assert not torch.equal(model.state_dict()[backbone], trained[backbone])


class StopsAtFirstReport(trial_link.LocalRun):
    def report(self, metrics, checkpoint_dir):
        super().report(metrics, checkpoint_dir)
        sys.exit(0)  # how Tune ends the thread of a trial it stopped, blocked in report()


def run_until_stopped(config):
    try:
        trainables.run_trial(config)
    except SystemExit:
        pass  # Tune's runner thread ends quietly on SystemExit(0)


def test_a_stopped_trial_leaves_nothing_behind_for_the_next_trial_in_its_process(
        yolo_cache, tmp_path, monkeypatch):  # noqa: F811
    """Tune may start the next trial in the process of one it stopped (detfuse.stages.tune.reuses_trial_processes):
    by the time that trial starts, the stopped trial's model and optimizer no longer hold memory, though its
    trainer sits in reference cycles, and torch uses the trial's CPUs again, though Ultralytics set its own thread
    count for the whole process."""
    def live_training_state():  # not e.g. the parameter-free activations Ultralytics creates at import
        return {id(thing) for thing in gc.get_objects()
                if issubclass(type(thing), torch.optim.Optimizer)
                or (issubclass(type(thing), torch.nn.Module) and next(thing.parameters(), None) is not None)}

    def next_trial(config):  # what the next trial finds when its family's train() starts
        seen.update(left=live_training_state() - before, threads=torch.get_num_threads())

    seen, before, threads = {}, live_training_state(), torch.get_num_threads()
    trial_cpus = os.cpu_count() + 1  # never Ultralytics' choice, min(8, cpu_count - 1)
    monkeypatch.setenv("OMP_NUM_THREADS", str(trial_cpus))  # as Ray sets it for a trial
    monkeypatch.delenv("TUNE_FUNCTION_THREAD_TIMEOUT_S", raising=False)  # restored afterwards
    trial_link.use_local_run(StopsAtFirstReport(tmp_path))
    try:
        trial = threading.Thread(target=run_until_stopped, args=(trial_config(3, image_size=64),))
        trial.start()
        trial.join(timeout=300)
        assert not trial.is_alive()
        assert len(trial_link.LocalRun(tmp_path).checkpoints()) == 1  # it ran and was stopped at its first report
        assert torch.get_num_threads() != trial_cpus  # Ultralytics' setting outlives the trial
        monkeypatch.setattr(trainables.load_family("yolov5"), "train", next_trial)
        trainables.run_trial(trial_config(3, image_size=64))
    finally:
        trial_link.use_local_run(None)
        torch.set_num_threads(threads)
    assert not seen["left"]
    assert seen["threads"] == trial_cpus
    assert os.environ["TUNE_FUNCTION_THREAD_TIMEOUT_S"] == "30"  # Tune waits that long for a stopped trial to unwind
