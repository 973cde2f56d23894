"""DDP trials: a TorchTrainer inside the Tune trial runs N Ray Train workers, each training like a one-process
trial, with detectron2's process-group state set up as its `launch()` would.

The Tune trial keeps owning the results: rank 0 sends each evaluation with its checkpoint through a Ray queue
to the trial's own process, which reports them to Tune. ASHA stopping and Tune's restore therefore work as for
one-process trials. On the trial's own node the checkpoint changes hands as a directory of hard links, since
every rank waits while rank 0 reports (a Faster R-CNN checkpoint with AdamW state is about 500 MB, which the
queue would copy four times); from another node it travels as file contents, as the checkpoint to resume from
travels to the workers. Ray Train schedules the workers itself, so the Tune trial must not hold their GPUs.
"""

import contextlib
import os
import shutil
import tempfile
import threading
import uuid
from pathlib import Path

from detfuse.core import trial_link
from detfuse.core.errors import UserError


def train_distributed(config, num_workers, use_gpu, checkpoint_dir=None, trial="this trial"):
    """Train `config` with DDP over `num_workers` workers (one GPU each when `use_gpu`, gloo on CPUs); `trial`
    names the trial in the workers' messages."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.util.queue import Empty, Queue

    reports = Queue(maxsize=1, actor_options={"num_cpus": 0})
    resume = None if checkpoint_dir is None else ray.put(_read_files(checkpoint_dir))
    cpus_per_worker = max(1.0, config.get("resources", {}).get("cpu", 1) / num_workers)
    with tempfile.TemporaryDirectory(prefix="detfuse-ddp-") as storage:
        # rank 0 hands checkpoints over in here when it runs on this node; what a stop leaves goes with it
        handover = {"node": ray.get_runtime_context().get_node_id(), "root": str(Path(storage) / "handover")}
        Path(handover["root"]).mkdir()
        trainer = TorchTrainer(
            _train_worker,
            # the checkpoint ref sits in a list so Ray hands it over unresolved; workers fetch it themselves
            train_loop_config={"config": config, "reports": reports, "resume": [resume], "trial": trial,
                               "handover": handover},
            scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu,
                                         resources_per_worker={"CPU": cpus_per_worker, "GPU": 1 if use_gpu else 0}),
            torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
            run_config=RunConfig(name=f"detfuse-ddp-{uuid.uuid4().hex[:8]}", storage_path=storage),
        )
        outcome = {}
        fitting = threading.Thread(target=_fit, args=(trainer, outcome), daemon=True)
        fitting.start()
        try:
            while fitting.is_alive() or not reports.empty():
                try:
                    metrics, checkpoint = reports.get(timeout=1.0)
                except Empty:
                    continue
                with _received_checkpoint(checkpoint) as directory:
                    trial_link.report(metrics, directory)
            fitting.join()
        finally:
            _retire(handover["root"])
    if "error" in outcome:
        raise _user_error_of(outcome["error"]) or outcome["error"]


def _fit(trainer, outcome):
    try:
        outcome["result"] = trainer.fit()
    except Exception as error:  # handed to the trial's thread, which raises it
        outcome["error"] = error


def _user_error_of(error):
    """The UserError a worker raised (bad input), so the trial fails with its message and not a traceback."""
    for _, failure in sorted(getattr(error, "worker_failures", {}).items()):
        cause = getattr(failure, "cause", failure)
        if isinstance(cause, UserError):
            return UserError(str(cause))
    return None


def _train_worker(loop_config):
    """One Ray Train worker: set up detectron2's process groups and train; rank 0 reports through the queue."""
    import ray
    import ray.train.torch
    import torch

    from trainables.detectron2 import worker

    device = ray.train.torch.get_device()
    if device.type == "cuda":
        torch.cuda.set_device(device)
    set_up_local_process_group(ray.train.get_context().get_node_rank())
    resume = loop_config["resume"][0]
    with _checkpoint_copy(None if resume is None else ray.get(resume)) as checkpoint_dir:
        report = QueueReport(loop_config["reports"], **loop_config["handover"])
        worker.run_worker(loop_config["config"], checkpoint_dir, report, device, trial=loop_config["trial"])


def set_up_local_process_group(node_rank):
    """Create detectron2's per-machine process group, as `detectron2.engine.launch` does after
    `init_process_group`: `comm.get_local_rank/get_local_size` and everything built on them need it."""
    import torch.distributed as dist
    from detectron2.utils import comm

    if comm._LOCAL_PROCESS_GROUP is not None:
        raise RuntimeError("detectron2's local process group is already set up in this process")
    node_of_rank = [None] * dist.get_world_size()
    dist.all_gather_object(node_of_rank, node_rank)
    for node in sorted(set(node_of_rank)):  # every rank creates every group, in the same order
        group = dist.new_group([rank for rank, owner in enumerate(node_of_rank) if owner == node])
        if node == node_rank:
            comm._LOCAL_PROCESS_GROUP = group
    comm.synchronize()


class QueueReport:
    """Stands in for `detfuse.trial_link.report` in rank 0: ships metrics and the checkpoint to the trial process.
    That process runs on the Ray node `node`: from there the checkpoint goes as a directory under its `root`,
    from another node as file contents."""

    def __init__(self, queue, node, root):
        self.queue = queue
        self.node = node
        self.root = root

    def __call__(self, metrics, checkpoint_dir):
        import ray

        checkpoint = None
        if ray.get_runtime_context().get_node_id() == self.node:
            checkpoint = _handover_copy(checkpoint_dir, self.root)
        if checkpoint is None:  # another node, or one whose file system this worker does not share
            checkpoint = {"files": _read_files(checkpoint_dir)}
        self.queue.put((metrics, checkpoint))


def _handover_copy(directory, root):
    """{"directory": a copy of `directory` under `root`} for the trial process to report and remove: hard links
    where the file system allows them (the checkpoint's files are not written again), file copies where it does
    not. None when `root` cannot be reached from here (a worker in its own container; the trial has ended)."""
    try:
        handover = tempfile.mkdtemp(prefix="checkpoint-", dir=root)
    except OSError:
        return None
    try:
        shutil.copytree(directory, handover, copy_function=_link_or_copy, dirs_exist_ok=True)
    except OSError:
        shutil.rmtree(handover, ignore_errors=True)
        return None
    return {"directory": handover}


def _link_or_copy(source, target):
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _retire(root):
    """Remove the hand-over root for good: renamed first, so that a rank 0 still running cannot add to it while it
    is being removed (its copy then fails and it falls back to file contents nobody reads)."""
    retired = f"{root}.retired"
    try:
        os.rename(root, retired)
    except OSError:
        return
    shutil.rmtree(retired, ignore_errors=True)


@contextlib.contextmanager
def _received_checkpoint(checkpoint):
    """The directory of a checkpoint rank 0 sent (see QueueReport), removed once the caller is done with it."""
    if "directory" in checkpoint:
        try:
            yield checkpoint["directory"]
        finally:
            shutil.rmtree(checkpoint["directory"], ignore_errors=True)
        return
    with tempfile.TemporaryDirectory(prefix="detfuse-d2-checkpoint-") as directory:
        _write_files(directory, checkpoint["files"])
        yield directory


def _read_files(directory):
    directory = Path(directory)
    return {str(path.relative_to(directory)): path.read_bytes() for path in directory.rglob("*") if path.is_file()}


def _write_files(directory, files):
    for name, content in files.items():
        path = Path(directory) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)


@contextlib.contextmanager
def _checkpoint_copy(files):
    if files is None:
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="detfuse-d2-resume-") as directory:
        _write_files(directory, files)
        yield Path(directory)
