"""W&B for both families, offline: Tune trials of detectron2 (one process, and DDP over two gloo workers) and YOLO
under the experiment's W&B callback (detfuse.stages.tune.wandb_callbacks) leave exactly one W&B run per trial,
grouped by experiment, holding the trial's config and its per-epoch metrics. The runs are read back from W&B's own
offline files (`run-*.wandb`: its record log of protobuf `Record`s); Ultralytics' own W&B callback stays off, so
no YOLO trial logs twice."""

import json
import struct
import sys
from pathlib import Path

import pytest
import ray
import ray.cloudpickle
from detectron2_trials import d2_cache, tiny_dataset  # noqa: F401  (fixtures)
from detectron2_trials import trial_config as detectron2_config
from ray import tune
from yolov5_trials import trial_config as yolo_config

import trainables
from detfuse.core import trial_link
from detfuse.stages.experiment import load_experiment
from detfuse.stages.tune import wandb_callbacks

ROOT = Path(__file__).resolve().parents[1]
BLOCK = 32768  # W&B's run file is a LevelDB-style log: 32 KiB blocks of checksummed, typed chunks
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_run_file(path):
    """The protobuf records of one offline run file, as W&B wrote them."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    position, pending, records = 7, b"", []  # after the 7-byte header: magic, version
    while position + 7 <= len(data):
        if BLOCK - position % BLOCK < 7:  # a block's tail too short for a chunk header is padding
            position += BLOCK - position % BLOCK
            continue
        length, kind = struct.unpack("<HB", data[position + 4:position + 7])
        chunk = data[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (FULL, FIRST):
            pending = chunk
        elif kind in (MIDDLE, LAST):
            pending += chunk
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def read_run(path):
    """{name, group, config, history: [{metric: value}]} of the offline run in directory `path`."""
    [run_file] = path.glob("run-*.wandb")
    run, config, history = None, {}, []
    for record in read_run_file(run_file):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = record.run
            config.update({item.key: json.loads(item.value_json) for item in record.run.config.update})
        elif kind == "config":
            config.update({item.key: json.loads(item.value_json) for item in record.config.update})
        elif kind == "history":
            history.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                            for item in record.history.item})
    return {"name": run.display_name, "group": run.run_group, "config": config, "history": history}


def ddp_trial(config):
    """A detectron2 trial on two gloo workers (CPU): what a trial asking for two GPUs runs, minus the GPUs."""
    with trial_link.resume_checkpoint() as checkpoint_dir:
        from trainables.detectron2 import ddp

        ddp.train_distributed(config, num_workers=2, use_gpu=False, checkpoint_dir=checkpoint_dir)


@pytest.fixture(scope="module")
def wandb_dir(d2_cache, tmp_path_factory):  # noqa: F811  (Ray's workers inherit the cache and W&B variables)
    """Where every W&B run of this module's processes goes, the trials' own included: a stray run (Ultralytics'
    callback) would land here too."""
    directory = tmp_path_factory.mktemp("wandb")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("WANDB_DIR", str(directory))
        patch.setenv("WANDB_MODE", "offline")
        patch.setenv("WANDB_SILENT", "true")
        ray.init(num_cpus=4, log_to_driver=False, include_dashboard=False)
        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray's workers cannot import tests/
        try:
            yield directory
        finally:
            ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
            ray.shutdown()


def test_one_offline_wandb_run_per_trial_of_both_families_ddp_included(wandb_dir, tiny_dataset, tmp_path):  # noqa: F811
    experiment = load_experiment(ROOT / "configs" / "demo.yaml", ["name=wandb-both", "wandb=true"])
    trials = {  # Tune experiment -> (trainable, trial config): 2 epochs each, evaluated after each
        "detectron2": (trainables.run_trial, detectron2_config("faster_rcnn", tiny_dataset, max_epochs=2.0)),
        "detectron2-ddp": (ddp_trial, detectron2_config("faster_rcnn", tiny_dataset, max_epochs=2.0)),
        "yolov5": (trainables.run_trial, {**yolo_config(2.0), "dataset": str(tiny_dataset)}),
    }
    trial_ids = {}
    for name, (trainable, config) in trials.items():
        tuner = tune.Tuner(tune.with_resources(trainable, {"CPU": 1}), param_space=config,
                           run_config=tune.RunConfig(name=name, storage_path=str(tmp_path), verbose=0,
                                                     callbacks=wandb_callbacks(experiment)))
        [result] = tuner.fit()
        assert result.error is None, result.error
        trial_ids[name] = result.metrics["trial_id"]

    run_dirs = sorted(wandb_dir.glob("**/offline-run-*"))
    # exactly one run per trial: none from DDP's other rank, none from Ultralytics' own callback (seen failing here
    # with that callback on)
    assert len(run_dirs) == 3, [path.name for path in run_dirs]
    runs = [read_run(path) for path in run_dirs]
    assert {run["group"] for run in runs} == {"wandb-both"}
    by_trial = {run["name"].rsplit("_", 2)[-2] + "_" + run["name"].rsplit("_", 1)[-1]: run for run in runs}
    assert set(by_trial) == set(trial_ids.values())  # a run is named after its trial: <trainable>_<trial id>
    for name, (_, config) in trials.items():
        run = by_trial[trial_ids[name]]
        assert run["config"]["family"] == config["family"] and run["config"]["architecture"] == config["architecture"]
        assert run["config"]["hparams"]["lr"] == config["hparams"]["lr"]
        epochs = [(step["epoch"], step["mAP50"]) for step in run["history"] if "mAP50" in step]
        assert [epoch for epoch, _ in epochs] == [1.0, 2.0], name
        assert all(0.0 <= value <= 1.0 for _, value in epochs)
        assert all("mAP50_95" in step for step in run["history"] if "mAP50" in step)
    ddp_steps = [step for step in by_trial[trial_ids["detectron2-ddp"]]["history"] if "mAP50" in step]
    assert {step["workers"] for step in ddp_steps} == {2}  # it did train on two workers
