"""Detector families, each a package fulfilling the same trial contract (see docs/architecture.md).

A family package exposes `ARCHITECTURES` (name -> adapter with a `hyperparameters` HyperparameterSet and
`resolve(hparams, where, has_weights)`), `trial_workers(resources, where)` (the processes a trial trains in),
`named_weights(source, where)` (the detfuse.core.weights_source.NamedWeights of a name the family publishes
weights under, e.g. detectron2://... or yolov5su.pt; None for any other source) with `WEIGHTS_NAME_FORM` (how
those names look, for messages),
`train(config)` (a Ray Tune function trainable, given a resolved trial config: trial_config.py),
`load_predictor(checkpoint_dir, device)` and `inference_files()` (the names of the files in a checkpoint directory
that `load_predictor` needs: what an export bundle carries, without the state only resuming needs). Importing a
family package loads only its adapters; `train` and `load_predictor` pull in its framework (detectron2 or
ultralytics) on first call.
"""

import gc
import importlib
import os
import sys

from detfuse.core.errors import UserError

FAMILIES = {
    "detectron2": "trainables.detectron2",
    "yolov5": "trainables.yolov5",
}


def load_family(name, where="config"):
    """Import and return the family package called `name`."""
    if name not in FAMILIES:
        raise UserError(f"{where}: unknown family '{name}'; valid families: {', '.join(sorted(FAMILIES))}")
    return importlib.import_module(FAMILIES[name])


def family_of(architecture, where="config"):
    """The family that provides `architecture` (architecture names are unique across families)."""
    for name in FAMILIES:
        if architecture in load_family(name).ARCHITECTURES:
            return name
    valid = sorted(a for name in FAMILIES for a in load_family(name).ARCHITECTURES)
    raise UserError(f"{where}: unknown architecture '{architecture}'; valid architectures: {', '.join(valid)}")


def run_trial(config):
    """The one Tune trainable for every family: dispatch to the family named in the trial config."""
    reset_trial_process()
    return load_family(config["family"]).train(config)


def reset_trial_process():
    """Undo what trials that ran earlier in this process left behind. Tune may run trials one after another in
    one process (detfuse.stages.tune.reuses_trial_processes), and a trial must train as it would in a fresh one:

    - A stopped trial's trainer sits in reference cycles with its model, optimizer, data loaders (a stopped
      YOLO trial never closes its loader's workers) and CUDA tensors until the garbage collector finds it:
      memory, on a shared GPU, that the next trial or another process needs.
    - Ultralytics sets torch's thread count for the whole process when a YOLO trial trains on CPU; a fresh
      process's torch takes it from OMP_NUM_THREADS (which Ray sets to the trial's CPUs unless the node's
      environment already has it).
    - Tune waits only 2 s (TUNE_FUNCTION_THREAD_TIMEOUT_S, read in this process when it hands the process to the
      next trial) for a stopped trial to unwind, and fails the next trial if it takes longer; closing loaders and
      writers can. Set here, it is in place before the first hand-over.
    """
    os.environ.setdefault("TUNE_FUNCTION_THREAD_TIMEOUT_S", "30")
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is None:
        return
    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()
    threads = os.environ.get("OMP_NUM_THREADS", "")
    if threads.isdigit() and int(threads) > 0:
        torch.set_num_threads(int(threads))


def weights_forms():
    """Every way a `weights` setting may name its file, as messages list them: the core's, then each family's."""
    from detfuse.core.weights_source import SOURCE_FORMS

    forms = [*SOURCE_FORMS, *(load_family(name).WEIGHTS_NAME_FORM for name in FAMILIES)]
    return ", ".join(forms[:-1]) + " or " + forms[-1]


def named_weights(source, where="config"):
    """(family, NamedWeights) when a family publishes weights under the name `source`, else (None, None)."""
    for name in FAMILIES:
        named = load_family(name).named_weights(source, where)
        if named is not None:
            return name, named
    return None, None
