"""`train(config)`: one YOLOv5 trial, as a Ray Tune function trainable or under `detfuse train`.

One trial uses one GPU, or a fraction of one, or the CPU: Ultralytics trains on several GPUs only through DDP,
which relaunches a generated script as a new process and does not work inside a Ray actor. So the trial
trains on device 0 of whatever CUDA_VISIBLE_DEVICES Ray gave it, never with DDP and never with AutoBatch
(the batch size is always explicit). Several trials with fractional GPUs share a card.
"""

import math
import os
import tempfile
from pathlib import Path

import torch

from detfuse.core import trial_link
from trainables.yolov5 import checkpoint, environment
from detfuse.core.weights_source import local_weights
from trainables.yolov5.adapter import ARCHITECTURES
from trainables.yolov5.releases import named_weights
from trainables.yolov5.transfer import InitialWeights

_MAX_LOADER_WORKERS = 8


def train(config):
    """Train `config["architecture"]` and report each evaluated epoch with a checkpoint (docs/architecture.md)."""
    with trial_link.resume_checkpoint() as directory:
        resume_state = None
        if directory is not None:
            resume_state = {**checkpoint.read_trainer_state(directory), "ema": checkpoint.read_weights(directory)}
    if resume_state is not None and resume_state["epoch"] + 1 >= math.ceil(config["max_epochs"]):
        return  # the checkpoint already holds the last epoch
    with tempfile.TemporaryDirectory(prefix="detfuse-yolov5-") as work_dir:
        build_trainer(config, Path(work_dir), resume_state).train()


def build_trainer(config, work_dir, resume_state=None):
    """The Ultralytics trainer for one trial, writing its files under `work_dir`."""
    environment.configure()
    from detfuse.core.data import load_dataset
    from trainables.yolov5.dataset_view import yolo_view
    from trainables.yolov5.trainer import TrialPlan, YoloTrialTrainer

    environment.set_verbosity(config["verbose"])

    adapter, hparams = ARCHITECTURES[config["architecture"]], config["hparams"]  # resolved: trainables.trial_config
    arguments = adapter.ultralytics_arguments(hparams)
    dataset = load_dataset(config["dataset"])
    plan = TrialPlan(
        architecture=adapter.architecture, hparams=hparams, dataset=dataset,
        eval_interval=max(1, math.ceil(config["eval_every"])), checkpoint_dir=work_dir / "checkpoint",
        initial_weights=None if resume_state is not None else _initial_weights(config["weights"]),
        resume_state=resume_state,
        progress_bar=not config["verbose"],
    )
    cuda = torch.cuda.is_available()
    overrides = {
        **arguments,
        "model": adapter.model_yaml, "data": str(yolo_view(dataset)), "task": "detect", "mode": "train",
        "epochs": math.ceil(config["max_epochs"]),  # Ultralytics trains whole epochs
        "seed": config["seed"], "deterministic": False,
        "device": "0" if cuda else "cpu",  # device 0 of the GPUs Ray made visible to this trial
        # bf16 autocast: fp16 AMP would first run Ultralytics' AMP check, which downloads a model
        "amp": "bf16" if cuda and torch.cuda.is_bf16_supported() else False,
        "workers": _loader_workers(), "save_dir": str(work_dir / "ultralytics"),
        "pretrained": False, "plots": False, "patience": 0, "val": True, "verbose": config["verbose"],
        "cos_lr": False, "rect": False, "cache": False,
    }
    return YoloTrialTrainer(overrides, plan)


def _loader_workers():
    """Data loading processes: as many as the CPUs Ray gave the trial (all CPUs outside Tune), at most 8."""
    cpus = os.cpu_count() or 1
    if trial_link.in_tune_trial():
        import ray

        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
    return max(1, min(_MAX_LOADER_WORKERS, int(cpus)))


def _initial_weights(setting):
    """The model to initialise from (an Ultralytics .pt file or a detfuse yolov5 checkpoint directory), with the
    label naming the trial and the source; None without weights."""
    if setting is None:
        return None
    from trainables.yolov5.predictor import build_model

    weights = local_weights(setting, named_weights, trial_link.trial_label())
    path = weights.path
    if path.is_dir():
        meta = checkpoint.read_meta(path)
        model = build_model(meta["architecture"], len(meta["class_names"]))
        model.load_state_dict(checkpoint.read_weights(path))
        return InitialWeights(model, weights.label)
    saved = _load_release_file(path, weights)
    model = saved["ema"] if saved.get("ema") is not None else saved.get("model")
    if not isinstance(model, torch.nn.Module):
        raise weights.unloadable("not an Ultralytics checkpoint (a dict with a 'model' or 'ema' module) nor a "
                                 "detfuse yolov5 checkpoint directory")
    return InitialWeights(model.float(), weights.label)


def _load_release_file(path, weights):
    """An Ultralytics .pt file read as Ultralytics reads its own (`torch_safe_load`: module paths of older
    releases mapped to today's). Read through a link named weights.pt: torch_safe_load downloads a release in place
    of a path it takes for a legacy YOLOv5 name (.../yolov5s.pt with no 'u' in the path), and accepts only .pt."""
    environment.configure()
    from ultralytics.nn.tasks import torch_safe_load

    with tempfile.TemporaryDirectory(prefix="detfuse-yolov5-weights-") as directory:
        link = Path(directory) / "weights.pt"
        link.symlink_to(path.absolute())
        try:
            saved, _ = torch_safe_load(str(link))
        except Exception as error:  # a corrupt or foreign file: say which one, not where in torch it broke
            raise weights.unloadable(f"not an Ultralytics checkpoint ({type(error).__name__}: {error})") from None
    return saved
