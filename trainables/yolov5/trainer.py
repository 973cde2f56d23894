"""Ultralytics' DetectionTrainer held to the detfuse trial contract.

What changes against a plain Ultralytics run, and why:
- Each epoch the EMA model is scored by the project's evaluator (detfuse.core.evaluation) on the val split, in
  original pixels and COCO ids, and the result is reported with a checkpoint (detfuse.trial_link.report): Tune's
  schedulers compare both families on the same numbers, and any report can be resumed.
- Resuming loads detfuse's own checkpoint (raw model, EMA, optimizer, AMP scaler, epoch, RNG states) and
  continues with the next epoch; Ultralytics' own resume restarts the model from its EMA and re-reads its
  arguments from the checkpoint instead.
- The training loader draws images through the repeat-factor sampler (sampler.py).
- The dataset description is read directly: Ultralytics' check_det_dataset would look for a font online.
- Integrations (Ultralytics Platform, analytics, its Ray Tune callback), plots, best.pt and the final re-validation
  are off; Tune and W&B reporting belong to detfuse.
"""

import math
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from trainables.yolov5 import environment

environment.configure()

import ultralytics  # noqa: E402  (after configure)
from ultralytics.data.build import InfiniteDataLoader, seed_worker  # noqa: E402
from ultralytics.models.yolo.detect import DetectionTrainer  # noqa: E402
from ultralytics.utils import callbacks  # noqa: E402
from ultralytics.utils.torch_utils import unwrap_model  # noqa: E402

from detfuse.core import trial_link  # noqa: E402
from detfuse.core.evaluation import Prediction, evaluate  # noqa: E402
from detfuse.core.rng_state import restore_rng_state, rng_state  # noqa: E402
from trainables.yolov5 import checkpoint  # noqa: E402
from trainables.yolov5.predictor import YoloPredictor  # noqa: E402
from trainables.yolov5.sampler import RepeatFactorSampler, repeat_factors  # noqa: E402
from trainables.yolov5.transfer import InitialWeights, describe_transfer  # noqa: E402


VAL_CACHE_BYTES = 1 << 30  # letterboxed val images a trial keeps in memory between evaluations, at most


@dataclass
class TrialPlan:
    """What one trial trains and how it reports; decided by `trainable.train()` from the trial config."""

    architecture: str
    hparams: dict  # project hyperparameter names, validated, defaults filled in
    dataset: object  # detfuse.core.data Dataset: class names, COCO ids, the val split the evaluator scores
    eval_interval: int  # evaluate and report every this many epochs, and after the last
    checkpoint_dir: Path  # where a checkpoint is written before it is reported
    initial_weights: InitialWeights | None = None  # a model whose matching weights initialise training
    resume_state: dict | None = None  # trainer_state.pt contents plus "ema" (weights.pt) to continue from
    progress_bar: bool = True  # one bar over the whole trial (when Ultralytics' own bars are off)


class YoloTrialTrainer(DetectionTrainer):
    """Trains `overrides` (Ultralytics arguments) and reports as `plan` says; see the module docstring."""

    def __init__(self, overrides, plan):
        self.plan = plan
        super().__init__(overrides=overrides)
        # __init__ attached Ultralytics' integrations (Platform, analytics, ...): keep only its own defaults
        self.callbacks = callbacks.get_default_callbacks()
        self.add_callback("on_model_save", YoloTrialTrainer._report_checkpoint)
        self.add_callback("on_train_epoch_start", YoloTrialTrainer._start_epoch_clock)
        self.add_callback("on_train_epoch_end", YoloTrialTrainer._stop_epoch_clock)
        if plan.progress_bar:
            self.add_callback("on_train_start", YoloTrialTrainer._open_progress_bar)
            self.add_callback("on_train_batch_end", YoloTrialTrainer._advance_progress_bar)
            self.add_callback("teardown", YoloTrialTrainer._close_progress_bar)
        self.progress = None
        initial = plan.initial_weights
        self.model = self.get_model(cfg=self.args.model, weights=None if initial is None else initial.model,
                                    verbose=False)
        if initial is not None:
            print(describe_transfer(initial, self.model), file=sys.stderr, flush=True)
        self.sampler = None
        self.evaluated = False  # whether this epoch was evaluated (and so gets a checkpoint)
        self.report_metrics = None
        self.epoch_started = self.epoch_seconds = None
        self.val_batches = None  # the val split letterboxed once, when it fits VAL_CACHE_BYTES

    def get_dataset(self):
        """The YOLO view's data.yaml, read as is (Ultralytics' check_det_dataset also fetches a font)."""
        data_yaml = Path(self.args.data)
        view = yaml.safe_load(data_yaml.read_text())
        root = Path(view.get("path") or data_yaml.parent)
        names = view["names"]
        names = dict(enumerate(names)) if isinstance(names, list) else {int(k): v for k, v in names.items()}
        if list(names.values()) != list(self.plan.dataset.class_names):
            raise RuntimeError(f"{data_yaml}: class names {list(names.values())} differ from the dataset's "
                               f"{self.plan.dataset.class_names}")
        return {
            "yaml_file": str(data_yaml), "path": str(root), "train": str(root / view["train"]),
            "val": str(root / view["val"]), "names": names, "nc": len(names), "channels": 3,
        }

    def get_dataloader(self, dataset_path, batch_size=16, rank=0, mode="train"):
        """Ultralytics' loaders, except that training draws through the repeat-factor sampler."""
        if mode != "train":
            return super().get_dataloader(dataset_path, batch_size, rank, mode)
        dataset = self.build_dataset(dataset_path, mode, batch_size)
        image_classes = [set(label["cls"].flatten().astype(int).tolist()) for label in dataset.labels]
        factors = repeat_factors(image_classes, self.plan.hparams["repeat_threshold"])
        # built again only within the first epoch of a run (Ultralytics' out-of-memory retry): start there
        self.sampler = RepeatFactorSampler(factors, seed=self.args.seed, next_epoch=self.start_epoch)
        batch_size = min(batch_size, len(dataset))
        batches = math.ceil(len(dataset) / batch_size)
        workers = min(self.args.workers, batches) if batches > 1 else 0
        generator = torch.Generator()
        generator.manual_seed(self.args.seed)
        return InfiniteDataLoader(
            dataset=dataset, batch_size=batch_size, sampler=self.sampler, num_workers=workers,
            prefetch_factor=4 if workers else None, pin_memory=self.device.type == "cuda",
            collate_fn=dataset.collate_fn, worker_init_fn=seed_worker, generator=generator,
        )

    def _close_dataloader_mosaic(self):
        super()._close_dataloader_mosaic()
        self.sampler.next_epoch = self.epoch  # the loader restarts: it draws this epoch's order afresh

    def resume_training(self, ckpt):
        """Continue from `plan.resume_state` (Ultralytics' own resume checkpoint `ckpt` is never used)."""
        state = self.plan.resume_state
        if state is None:
            return
        unwrap_model(self.model).load_state_dict(state["model"])
        self.ema.ema.load_state_dict(state["ema"])
        self.ema.updates = state["ema_updates"]
        for saved, group in zip(state["optimizer"]["param_groups"], self.optimizer.param_groups):
            saved["fused"] = group.get("fused")  # the device this run uses picks the kernel, not the checkpoint's
        self.optimizer.load_state_dict(state["optimizer"])
        if state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        self.start_epoch = state["epoch"] + 1
        self.sampler.next_epoch = self.start_epoch
        restore_rng_state(state["rng"], self.device)

    def validate(self):
        """Score the EMA model with the project's evaluator, on every `eval_interval`-th epoch and the last."""
        finished = self.epoch + 1
        self.evaluated = finished % self.plan.eval_interval == 0 or finished >= self.epochs
        if not self.evaluated:
            return self.metrics, self.fitness
        started = time.perf_counter()
        evaluation = self.evaluate(self.ema.ema)
        self.report_metrics = {
            **evaluation.as_metrics(),
            "epoch": float(finished),  # one epoch draws as many images as the training set holds
            **self.label_loss_items(self.tloss, prefix="train"),
            "lr": self.optimizer.param_groups[0]["lr"],
            "images_per_sec": len(self.train_loader.dataset) / self.epoch_seconds,
            "evaluation_seconds": time.perf_counter() - started,
        }
        return evaluation.as_metrics(), evaluation.mAP50_95

    def evaluate(self, model):
        """`detfuse.core.evaluation` of `model`'s predictions on the dataset's val split. The split is decoded and
        letterboxed once and kept in memory when it fits VAL_CACHE_BYTES: the same tensors `predict` would build,
        so a checkpoint still re-scores to the number reported here."""
        split = self.plan.dataset.splits["val"]
        images = split.coco["images"]
        predictor = YoloPredictor(model, self.args.imgsz, self.plan.dataset.category_ids, self.device,
                                  batch_size=self.batch_size * 2, workers=self.args.workers)
        batches = self.val_batches
        if batches is None:
            batches = predictor.letterboxed_batches([split.image_path(image) for image in images])
            if len(images) * 3 * self.args.imgsz ** 2 <= VAL_CACHE_BYTES:
                batches = self.val_batches = list(batches)
        detections = predictor.predict_batches(batches)
        predictions = [Prediction(image["id"], *detection)
                       for image, found in zip(images, detections) for detection in found]
        return evaluate(split.coco, predictions)

    def save_model(self):
        """Write the checkpoint of an evaluated epoch (reported by the on_model_save callback)."""
        if not self.evaluated:
            return False
        dataset = self.plan.dataset
        meta = {
            "architecture": self.plan.architecture, "hparams": self.plan.hparams,
            "class_names": list(dataset.class_names), "category_ids": list(dataset.category_ids),
            "epoch": self.report_metrics["epoch"], "metrics": self.report_metrics,
            "dataset_fingerprint": dataset.fingerprint, "ultralytics_version": ultralytics.__version__,
        }
        trainer_state = {
            "model": unwrap_model(self.model).state_dict(), "ema_updates": self.ema.updates,
            "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
            "epoch": self.epoch, "rng": rng_state(self.device),
        }
        checkpoint.write(self.plan.checkpoint_dir, meta, self.ema.ema.state_dict(), trainer_state)
        return True

    def _report_checkpoint(self):
        trial_link.report(self.report_metrics, self.plan.checkpoint_dir)
        shutil.rmtree(self.plan.checkpoint_dir)  # reporting copied it (to Tune's storage or the run directory)
        if self.progress is not None:
            self.progress.set_description(self._progress_description(f"mAP50 {self.report_metrics['mAP50']:.3f}"))

    def final_eval(self):
        """Nothing to do: every epoch that needed it was evaluated and reported already."""

    def _start_epoch_clock(self):
        self.epoch_started = time.perf_counter()

    def _stop_epoch_clock(self):
        self.epoch_seconds = time.perf_counter() - self.epoch_started

    def _open_progress_bar(self):
        if trial_link.in_tune_trial():
            from ray.experimental.tqdm_ray import tqdm  # one line per trial in the driver's console
        else:
            from tqdm import tqdm
        batches = len(self.train_loader)
        self.progress = tqdm(total=self.epochs * batches, desc=self._progress_description(), unit="batch")
        self.progress.update(self.start_epoch * batches)

    def _progress_description(self, last_result=""):
        return f"{self.plan.architecture} {self.epochs} epochs {last_result}".rstrip()

    def _advance_progress_bar(self):
        self.progress.update(1)

    def _close_progress_bar(self):
        if self.progress is not None:
            self.progress.close()
            self.progress = None
