"""A DDP trial: one Ray Tune trial whose TorchTrainer trains Faster R-CNN on two gloo workers (CPU), with
detectron2's per-machine process group set up, reporting to Tune and resuming from its Tune checkpoint."""

import sys
from pathlib import Path

import pytest
import ray
import ray.cloudpickle
import torch
from detectron2_trials import d2_cache, tiny_dataset, trial_config  # noqa: F401  (fixtures)
from ray import tune

from detfuse.core import trial_link
from trainables.detectron2 import checkpoints, ddp, load_predictor


def two_worker_trial(tune_config, settings, reported_from=None):
    """A Tune trial asking for two CPU workers (`settings` is the trial config); with `reported_from`, the
    directories its checkpoints were reported from are appended to that file."""
    if reported_from is not None:
        report = trial_link.report

        def recording_report(metrics, checkpoint_dir=None):
            with open(reported_from, "a") as record:
                record.write(f"{checkpoint_dir}\n")
            report(metrics, checkpoint_dir)

        trial_link.report = recording_report  # in this trial's process only
    with trial_link.resume_checkpoint() as checkpoint_dir:
        ddp.train_distributed(settings, num_workers=2, use_gpu=False, checkpoint_dir=checkpoint_dir)


def two_worker_trial_that_crashes_once(tune_config, settings, marker):
    """Fails right after its first report the first time it runs, as when a node is lost mid-trial."""
    report = trial_link.report

    def report_then_crash(metrics, checkpoint_dir=None):
        report(metrics, checkpoint_dir)
        if not marker.exists():
            marker.touch()
            raise RuntimeError("simulated loss of the trial's node")

    trial_link.report = report_then_crash  # in this trial's process only
    two_worker_trial(tune_config, settings)


@pytest.fixture(scope="module")
def local_ray(d2_cache):  # noqa: F811  (workers inherit the cache variable)
    # 1 CPU for the trial's own process, 1 per worker, and room for a retry to start before Ray Train has
    # freed the crashed attempt's workers; logical CPUs: two cores are enough
    ray.init(num_cpus=6, log_to_driver=False)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray's workers cannot import tests/
    yield
    ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    ray.shutdown()


def fit(trainable, storage, name, max_failures=0):
    tuner = tune.Tuner(tune.with_resources(trainable, {"CPU": 1}),
                       run_config=tune.RunConfig(storage_path=str(storage), name=name,
                                                 failure_config=tune.FailureConfig(max_failures=max_failures)))
    [result] = tuner.fit()
    return result


@pytest.fixture(scope="module")
def straight(local_ray, tiny_dataset, tmp_path_factory):  # noqa: F811
    # 12 images, global batch 4 = 2 per worker: 3 iterations per epoch, a report each epoch
    config = trial_config("faster_rcnn", tiny_dataset, max_epochs=2.0, eval_every=1.0)
    reported_from = tmp_path_factory.mktemp("reports") / "reported_from.txt"
    result = fit(tune.with_parameters(two_worker_trial, settings=config, reported_from=str(reported_from)),
                 tmp_path_factory.mktemp("tune"), "straight")
    return config, result, reported_from.read_text().splitlines()


def test_two_gloo_workers_train_one_tune_trial(straight, tiny_dataset):  # noqa: F811
    _, result, reported_from = straight
    assert result.error is None
    history = result.metrics_dataframe
    assert list(history["epoch"]) == [1.0, 2.0] and list(history["iteration"]) == [3, 6]
    assert set(history["workers"]) == {2}
    with result.checkpoint.as_directory() as directory:
        state = checkpoints.read_training_state(directory)
        assert state["iteration"] == 6 and state["world_size"] == 2
        workers = state["workers"]
        assert [w["rank"] for w in workers] == [0, 1]
        # launch()'s per-machine process group: both workers on this node, local ranks 0 and 1
        assert [(w["local_rank"], w["local_size"]) for w in workers] == [(0, 2), (1, 2)]
        # each worker drew its own half of the shared stream: 6 iterations x 2 images trained on, plus any image
        # still waiting in an aspect-ratio bucket (the built-in set has landscape and portrait photos)
        assert [w["stream"]["drawn"] - sum(map(len, w["stream"]["buckets"])) for w in workers] == [12, 12]
        assert not torch.equal(workers[0]["rng"]["torch"], workers[1]["rng"]["torch"])
        assert len(load_predictor(directory).predict([tiny_dataset / "images" / "val_0000.jpg"])) == 1
    # rank 0 shares this node with the trial: both checkpoints were handed over as folders of links, since removed
    assert len(reported_from) == 2 and all(Path(d).parent.name == "handover" for d in reported_from), reported_from
    assert not any(Path(d).parent.exists() for d in reported_from)


@pytest.mark.slow
def test_failed_ddp_trial_resumes_from_its_tune_checkpoint(straight, tmp_path):
    config, expected_result, _ = straight
    trainable = tune.with_parameters(two_worker_trial_that_crashes_once, settings=config,
                                     marker=tmp_path / "crashed-once")
    result = fit(trainable, tmp_path, "crashing", max_failures=1)
    assert result.error is None and (tmp_path / "crashed-once").exists()
    # the first attempt reported iteration 3 and crashed; the retry resumed from that checkpoint, so its
    # only report is the one at iteration 6 (a fresh start would report iteration 3 again)
    assert result.metrics["iteration"] == 6 and result.metrics["iterations_since_restore"] == 1
    with expected_result.checkpoint.as_directory() as directory:
        expected = checkpoints.read_model_state(directory)
    with result.checkpoint.as_directory() as directory:
        weights = checkpoints.read_model_state(directory)
    assert max((weights[k] - expected[k]).abs().max().item() for k in expected) < 1e-5


def test_rank_zero_hands_its_checkpoint_over_as_links_on_the_trial_node_and_as_contents_from_another(
        local_ray, tmp_path, monkeypatch):
    """On the trial process's node the checkpoint's files are linked, not copied, into the trial's handover folder
    and removed once reported; from another node they arrive as contents. Either way nothing is left behind."""
    from ray.util.queue import Queue

    checkpoint_dir = tmp_path / "checkpoint"
    (checkpoint_dir / "state").mkdir(parents=True)
    (checkpoint_dir / "model.pth").write_bytes(b"weights")
    (checkpoint_dir / "state" / "training.pth").write_bytes(b"optimizer")
    root = tmp_path / "handover"
    root.mkdir()
    queue = Queue(maxsize=1)

    ddp.QueueReport(queue, ray.get_runtime_context().get_node_id(), str(root))({"mAP50": 0.5}, checkpoint_dir)
    metrics, checkpoint = queue.get(timeout=30)
    with ddp._received_checkpoint(checkpoint) as received:
        received = Path(received)
        assert received.parent == root and metrics == {"mAP50": 0.5}
        assert (received / "model.pth").stat().st_ino == (checkpoint_dir / "model.pth").stat().st_ino
        assert (received / "state" / "training.pth").read_bytes() == b"optimizer"
    assert list(root.iterdir()) == []

    def sent_as_contents():
        _, checkpoint = queue.get(timeout=30)
        with ddp._received_checkpoint(checkpoint) as received:
            assert Path(received).parent != root
            assert (Path(received) / "model.pth").read_bytes() == b"weights"
            assert (Path(received) / "state" / "training.pth").read_bytes() == b"optimizer"
        assert not Path(received).exists()

    ddp.QueueReport(queue, "another node", str(root))({"mAP50": 0.5}, checkpoint_dir)
    sent_as_contents()
    assert list(root.iterdir()) == []

    # a file system without hard links between the two: the same folder, of copies
    monkeypatch.setattr(ddp.os, "link", lambda source, target: (_ for _ in ()).throw(OSError(18, "cross-device")))
    ddp.QueueReport(queue, ray.get_runtime_context().get_node_id(), str(root))({"mAP50": 0.5}, checkpoint_dir)
    _, checkpoint = queue.get(timeout=30)
    with ddp._received_checkpoint(checkpoint) as received:
        assert Path(received).parent == root
        assert (Path(received) / "model.pth").stat().st_ino != (checkpoint_dir / "model.pth").stat().st_ino
        assert (Path(received) / "state" / "training.pth").read_bytes() == b"optimizer"
    assert list(root.iterdir()) == []

    # the trial's root out of reach (a worker in its own container, or the trial already gone): contents
    root.rmdir()
    ddp.QueueReport(queue, ray.get_runtime_context().get_node_id(), str(root))({"mAP50": 0.5}, checkpoint_dir)
    sent_as_contents()
