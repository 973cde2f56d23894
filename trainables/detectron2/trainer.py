"""detectron2's SimpleTrainer with what a Tune trial needs: AMP through torch.amp, AdamW, a resumable data
stream, and a hook that evaluates with the project evaluator, writes a checkpoint and reports both.

The build_* classmethods mirror DefaultTrainer's, so a subclass can swap the model, optimizer, scheduler or
data loader the same way. One Trainer runs in each DDP worker; only rank 0 writes checkpoints and reports.
"""

import math
import sys
import tempfile
import time
from dataclasses import dataclass

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetMapper
from detectron2.engine import SimpleTrainer, hooks
from detectron2.modeling import build_model
from detectron2.solver import build_lr_scheduler, get_default_optimizer_params
from detectron2.solver.build import maybe_add_gradient_clipping
from detectron2.utils import comm
from detectron2.utils.events import CommonMetricPrinter
from torch.nn.parallel import DistributedDataParallel

from detfuse.core.errors import UserError
from detfuse.core.evaluation import Prediction, evaluate
from detfuse.core.rng_state import restore_rng_state, rng_state
from trainables.detectron2 import checkpoints, loader
from trainables.detectron2.predictor import Detectron2Predictor


@dataclass
class TrialData:
    """What a trial trains and is scored on, and what its checkpoints must say about it."""

    architecture: str
    hparams: dict
    class_names: list
    category_ids: list
    train_dicts: list
    val_dicts: list
    val_coco: dict
    num_train_images: int  # the epoch's denominator, as for every family


class Trainer(SimpleTrainer):
    """Trains one model; `report(metrics, checkpoint_dir)` receives every evaluation (on rank 0)."""

    def __init__(self, cfg, data, report, *, resume_state=None, weights=None, verbose=False, progress=False):
        self.cfg = cfg
        self.data = data
        self.device = torch.device(cfg.MODEL.DEVICE)
        self.amp = cfg.SOLVER.AMP.ENABLED and self.device.type == "cuda"
        self.verbose = verbose

        model = self.build_model(cfg)
        if resume_state is not None:
            model.load_state_dict(resume_state["model"])
        elif weights is not None:
            _load_weights(model, weights)
        optimizer = self.build_optimizer(cfg, model)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.grad_scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp)
        worker = None
        if resume_state is not None:
            training = resume_state["training"]
            optimizer.load_state_dict(training["optimizer"])
            self.scheduler.load_state_dict(training["scheduler"])
            self.grad_scaler.load_state_dict(training["grad_scaler"])
            worker = _this_workers_state(training)
        self.stream_state = None if worker is None else worker["stream"]
        self._rng_to_restore = None if worker is None else worker["rng"]

        self.predictor = Detectron2Predictor(model, cfg, data.category_ids, self.device,
                                             batch_size=max(1, cfg.SOLVER.IMS_PER_BATCH // comm.get_world_size()),
                                             workers=cfg.DATALOADER.NUM_WORKERS, amp=self.amp)
        data_loader = self.build_train_loader(cfg, data.train_dicts, self.stream_state)
        if comm.get_world_size() > 1:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            model = DistributedDataParallel(model, device_ids=device_ids, broadcast_buffers=False)
        super().__init__(model, data_loader, optimizer)
        self.start_iter = 0 if worker is None else resume_state["training"]["iteration"]
        self.max_iter = cfg.SOLVER.MAX_ITER
        self._loss_sum = torch.zeros((), device=self.device)
        self._loss_count = 0
        self.register_hooks(self.build_hooks(report, progress))

    # -- builders, overridable like DefaultTrainer's ------------------------------------------------------

    @classmethod
    def build_model(cls, cfg):
        return build_model(cfg)

    @classmethod
    def build_optimizer(cls, cfg, model):
        """SGD or AdamW over detectron2's parameter groups: no weight decay on norm layers and biases."""
        params = get_default_optimizer_params(
            model, base_lr=cfg.SOLVER.BASE_LR, weight_decay=cfg.SOLVER.WEIGHT_DECAY,
            weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM, weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS,
        )
        if cfg.SOLVER.OPTIMIZER == "ADAMW":
            optimizer_class, options = torch.optim.AdamW, {"betas": (cfg.SOLVER.MOMENTUM, 0.999)}
        else:
            optimizer_class, options = torch.optim.SGD, {"momentum": cfg.SOLVER.MOMENTUM,
                                                         "nesterov": cfg.SOLVER.NESTEROV}
        return maybe_add_gradient_clipping(cfg, optimizer_class)(params, lr=cfg.SOLVER.BASE_LR, **options)

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        return build_lr_scheduler(cfg, optimizer)

    @classmethod
    def build_train_loader(cls, cfg, dicts, stream_state=None):
        """Batches of model inputs, each paired with the stream state reached after it."""
        stream = loader.BatchStream(loader.build_sampler(cfg, dicts), dicts,
                                    cfg.SOLVER.IMS_PER_BATCH // comm.get_world_size(), stream_state)
        dataset = loader.MappedBatches(dicts, DatasetMapper(cfg, is_train=True), cfg.SEED)
        return loader.build_batch_loader(stream, dataset, cfg.DATALOADER.NUM_WORKERS)

    def build_hooks(self, report, progress):
        built = [hooks.LRScheduler(), EvaluateAndReport(self.cfg.TEST.EVAL_PERIOD, report)]
        if progress and comm.is_main_process():
            built.append(ProgressBar(self.data.architecture))
        if self.verbose:
            built.insert(0, hooks.IterationTimer())
            if comm.is_main_process():
                built.append(hooks.PeriodicWriter([CommonMetricPrinter(self.cfg.SOLVER.MAX_ITER)], period=20))
        return built

    # -- training --------------------------------------------------------------------------------------------

    def train(self):
        super().train(self.start_iter, self.max_iter)

    def before_train(self):
        super().before_train()
        if self._rng_to_restore is not None:
            # last, after everything that builds or starts draws random numbers
            restore_rng_state(self._rng_to_restore, self.device)

    def run_step(self):
        start = time.perf_counter()
        data, self.stream_state = next(self._data_loader_iter)
        data_time = time.perf_counter() - start
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
            loss_dict = self.model(data)
            losses = sum(loss_dict.values())
        self.optimizer.zero_grad(set_to_none=True)
        self.grad_scaler.scale(losses).backward()
        if self.verbose:
            self._write_metrics(loss_dict, data_time)
        # GradScaler.step unscales first, so detectron2's clipping wrapper sees true gradients
        self.grad_scaler.step(self.optimizer)
        self.grad_scaler.update()
        self._loss_sum += losses.detach().float()
        self._loss_count += 1

    def mean_loss(self):
        """Mean total loss since the last call, averaged over all workers."""
        values = torch.stack([self._loss_sum, torch.tensor(float(self._loss_count), device=self.device)])
        if comm.get_world_size() > 1:
            torch.distributed.all_reduce(values)
        self._loss_sum.zero_()
        self._loss_count = 0
        return (values[0] / values[1].clamp(min=1)).item()

    @property
    def unwrapped_model(self):
        return self.model.module if isinstance(self.model, DistributedDataParallel) else self.model

    def evaluate(self):
        """The project evaluator's scores on the validation split (each worker predicts a shard)."""
        shard = self.data.val_dicts[comm.get_rank()::comm.get_world_size()]
        detections = self.predictor.predict([d["file_name"] for d in shard])
        predictions = [Prediction(record["image_id"], *detection)
                       for record, found in zip(shard, detections) for detection in found]
        gathered = comm.gather(predictions, dst=0)
        if not comm.is_main_process():
            return None
        return evaluate(self.data.val_coco, [p for part in gathered for p in part],
                        max_detections=self.cfg.TEST.DETECTIONS_PER_IMAGE)

    def training_state(self, iteration):
        """Everything resuming at `iteration` needs besides the weights; worker states gathered on rank 0."""
        worker = {"rank": comm.get_rank(), "local_rank": comm.get_local_rank(), "local_size": comm.get_local_size(),
                  "rng": rng_state(self.device), "stream": self.stream_state}
        workers = comm.gather(worker, dst=0)
        return {
            "iteration": iteration,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "grad_scaler": self.grad_scaler.state_dict(),
            "world_size": comm.get_world_size(),
            "workers": workers,
        }


class EvaluateAndReport(hooks.HookBase):
    """Every `period` iterations and at the end: evaluate, checkpoint, report {"mAP50", "epoch", ...}.

    Runs after the LR scheduler hook, so the checkpoint holds the state in which the next iteration starts.
    """

    def __init__(self, period, report):
        self.period = period
        self.report = report

    def before_train(self):
        self._since = time.perf_counter()
        self._since_iter = self.trainer.iter

    def after_step(self):
        done = self.trainer.iter + 1
        if done % self.period == 0 or done == self.trainer.max_iter:
            self._evaluate_and_report(done)

    def _evaluate_and_report(self, done):
        trainer = self.trainer
        if trainer.device.type == "cuda":
            torch.cuda.synchronize(trainer.device)
        seconds = time.perf_counter() - self._since
        images = (done - self._since_iter) * trainer.cfg.SOLVER.IMS_PER_BATCH
        loss = trainer.mean_loss()
        if not math.isfinite(loss):
            raise FloatingPointError(f"training diverged: mean loss {loss} before iteration {done} "
                                     "(try a lower lr, longer warmup_epochs or grad_clip)")
        evaluation = trainer.evaluate()
        state = trainer.training_state(done)  # collective: every worker takes part
        if comm.is_main_process():
            epoch = done * trainer.cfg.SOLVER.IMS_PER_BATCH / trainer.data.num_train_images
            metrics = {**evaluation.as_metrics(), "epoch": epoch, "iteration": done,
                       "images_per_sec": images / seconds, "loss": loss, "workers": comm.get_world_size(),
                       "lr": trainer.optimizer.param_groups[0]["lr"]}
            meta = {"architecture": trainer.data.architecture, "hparams": trainer.data.hparams,
                    "class_names": trainer.data.class_names, "category_ids": trainer.data.category_ids,
                    "epoch": epoch, "iteration": done, "seed": trainer.cfg.SEED, "metrics": metrics}
            with tempfile.TemporaryDirectory(prefix="detfuse-d2-checkpoint-") as directory:
                checkpoints.write(directory, meta, trainer.unwrapped_model.state_dict(), state,
                                  trainer.cfg.dump())
                self.report(metrics, directory)
        comm.synchronize()
        self._since = time.perf_counter()
        self._since_iter = done


class ProgressBar(hooks.HookBase):
    """A tqdm bar over iterations, for a terminal; the loss shown is refreshed every `refresh` iterations."""

    def __init__(self, description, refresh=20):
        self.description = description
        self.refresh = refresh

    def before_train(self):
        from tqdm import tqdm

        self.bar = tqdm(total=self.trainer.max_iter, initial=self.trainer.iter, desc=self.description,
                        unit="it", dynamic_ncols=True, file=sys.stderr)

    def after_step(self):
        self.bar.update(1)
        if (self.trainer.iter + 1) % self.refresh == 0 and self.trainer._loss_count:
            self.bar.set_postfix(loss=f"{self.trainer._loss_sum.item() / self.trainer._loss_count:.3f}")

    def after_train(self):
        self.bar.close()


def _this_workers_state(training):
    if training["world_size"] != comm.get_world_size():
        raise UserError(f"this checkpoint was written by {training['world_size']} DDP workers; resume it with "
                        f"the same number (now {comm.get_world_size()})")
    return training["workers"][comm.get_rank()]


def _load_weights(model, weights):
    """Initialise `model` from `weights` (detfuse.core.weights_source.LocalWeights): a detectron2 model-zoo .pkl,
    a Caffe2/ImageNet backbone .pkl or a .pth state dict, through detectron2's checkpointer, which skips tensors
    whose shape differs (another class count). Says on stderr, naming the trial, what did not load."""
    checkpointer = DetectionCheckpointer(model)
    try:
        checkpoint = checkpointer._load_file(str(weights.path))  # the format-aware halves of checkpointer.load()
        incompatible = checkpointer._load_model(checkpoint)
    except Exception as error:  # a corrupt or foreign file: say which one, not where in torch it broke
        raise weights.unloadable(f"not a detectron2 checkpoint ({type(error).__name__}: {error}); use a detectron2 "
                                 "model-zoo .pkl, a detectron2 .pth or an ImageNet backbone .pkl") from None
    print(describe_load(weights.label, model.state_dict(), incompatible), file=sys.stderr, flush=True)


def describe_load(label, model_state, incompatible):
    """What loading into `model_state` kept (fvcore's _IncompatibleKeys); a UserError when nothing matched."""
    missing = set(incompatible.missing_keys)
    loaded = len([key for key in model_state if key not in missing])
    if loaded == 0:
        raise UserError(f"{label}: none of its tensors fit this detectron2 model (another family's checkpoint, or "
                        "another architecture): name a checkpoint of this architecture or its backbone")
    lines = [f"{label}: loaded {loaded} of {len(model_state)} tensors"]
    reshaped = incompatible.incorrect_shapes
    if any("cls_score" in key for key, _, _ in reshaped):
        lines.append("the classification head was re-initialised: the checkpoint was trained for another number "
                     "of classes")
    if reshaped:
        lines.append("re-initialised (shape differs): " + ", ".join(
            f"{key} {tuple(theirs)} -> {tuple(ours)}" for key, theirs, ours in reshaped))
    fresh = sorted(missing - {key for key, _, _ in reshaped})
    if fresh:
        lines.append(f"not in the checkpoint, trained from scratch: {len(fresh)} tensors (e.g. {', '.join(fresh[:3])})")
    return "; ".join(lines)
