"""Where a lone detectron2 trial's time goes on a GPU, which it keeps only about half busy (RESULTS.md, placement):
the data stream alone, training steps on one batch (no loading), and the two together as a trial runs them, each
with the GPU's utilisation as nvidia-smi samples it.

    python3 benchmarks/detectron2_step.py DATA [--iterations 60] [--workers 4 8] [--processes 2 3] [--parts ...]

The model is benchmarks/tune_overhead.sh's Faster R-CNN: R50-FPN with GN from scratch, AMP, 416 px, batch 16,
AdamW. A step on one batch that keeps the GPU half busy is bound by the CPU launching its kernels; a stream
slower than the steps is bound by loading. Variants: cuDNN's autotuner (torch.backends.cudnn.benchmark, off in
detectron2 and torch by default), batch 32, BN instead of GN; and several such trials sharing the GPU, each in its
own process, as trials at `gpu: 0.5` do (their images/s summed, each over its own iterations after a common
start). Prints a Markdown table.
"""

import argparse
import itertools
import multiprocessing
import statistics
import subprocess
import threading
import time

import torch
from detectron2.utils.events import EventStorage

from detfuse.core.data import load_dataset
from trainables.detectron2.adapters import ARCHITECTURES
from trainables.detectron2.dataset_dicts import detectron2_dicts
from trainables.detectron2.trainer import Trainer

HPARAMS = {"depth": 50, "norm": "GN", "image_size": 416, "batch_size": 16, "optimizer": "adamw", "lr": 2.0e-4,
           "lr_schedule": "cosine", "anchor_sizes": [16, 32, 64, 128, 256]}
WARMUP = 10
PARTS = ["stream", "steps", "trial", "shared"]


class UtilisationSampler:
    """nvidia-smi's utilisation of GPU 0, sampled in a thread about four times a second."""

    def __init__(self):
        self.samples = []  # (time, percent)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            out = subprocess.run(["nvidia-smi", "-i", "0", "--query-gpu=utilization.gpu",
                                  "--format=csv,noheader,nounits"], capture_output=True, text=True).stdout
            self.samples.append((time.perf_counter(), float(out.strip())))
            self._stop.wait(0.25)

    def mean(self, start, end):
        inside = [percent for at, percent in self.samples if start <= at <= end]
        return statistics.mean(inside) if inside else float("nan")

    def stop(self):
        self._stop.set()
        self._thread.join()


def config(num_classes, workers, **overrides):
    adapter = ARCHITECTURES["faster_rcnn"]
    cfg = adapter.build_config(adapter.resolve({**HPARAMS, **overrides}, "benchmark"), num_classes)
    cfg.defrost()
    cfg.MODEL.DEVICE = "cuda"
    cfg.DATALOADER.NUM_WORKERS = workers
    cfg.freeze()
    return cfg


def model_and_optimizer(cfg):
    model = Trainer.build_model(cfg)
    return model, Trainer.build_optimizer(cfg, model)


def step(model, optimizer, scaler, inputs):
    """What Trainer.run_step does once a batch is loaded."""
    with torch.autocast("cuda", dtype=torch.float16):
        losses = sum(model(inputs).values())
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(losses).backward()
    scaler.step(optimizer)
    scaler.update()


def timed(batches, iterations, batch_size, work, barrier=None):
    """(images/s, start, end) over `iterations` batches after WARMUP (and after the `barrier`, if any)."""
    batches = iter(batches)
    for inputs in itertools.islice(batches, WARMUP):
        work(inputs)
    torch.cuda.synchronize()
    if barrier is not None:
        barrier.wait()
    start = time.perf_counter()
    for inputs in itertools.islice(batches, iterations):
        work(inputs)
    torch.cuda.synchronize()
    end = time.perf_counter()
    return iterations * batch_size / (end - start), start, end


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", help="a COCO dataset directory")
    parser.add_argument("--iterations", type=int, default=60)
    parser.add_argument("--workers", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--processes", type=int, nargs="+", default=[2, 3],
                        help="also train this many trials at once on the GPU, each in its own process")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=PARTS, help="what to measure")
    args = parser.parse_args()
    dataset = load_dataset(args.data)
    dicts = detectron2_dicts(dataset, "train")
    num_classes = len(dataset.class_names)
    sampler = UtilisationSampler()
    rows = []
    with EventStorage(0):  # where detectron2's models log their losses' parts
        measure(args, dicts, num_classes, sampler, rows)
    sampler.stop()

    print(f"card: {torch.cuda.get_device_name(0)}; {len(dicts)} training images; {args.iterations} iterations "
          f"after {WARMUP}\n")
    print("| what runs | images/s | mean GPU utilisation |")
    print("|---|---|---|")
    for name, speed, busy in rows:
        print(f"| {name} | {speed:.1f} | {'' if busy is None else f'{busy:.0f} %'} |")


def measure(args, dicts, num_classes, sampler, rows):
    """Append (what runs, images/s, GPU utilisation or None) to `rows` for every variant."""
    for workers in args.workers if "stream" in args.parts else []:
        cfg = config(num_classes, workers)
        speed, _, _ = timed(stream(dicts, cfg), args.iterations, 16, lambda inputs: None)
        rows.append((f"data stream alone, {workers} loader processes", speed, None))

    variants = [("batch 16", {}, False), ("batch 16, cuDNN autotuner", {}, True),
                ("batch 32, cuDNN autotuner", {"batch_size": 32}, True),
                ("batch 16, BN, cuDNN autotuner", {"norm": "BN"}, True)]
    for name, overrides, autotune in variants if "steps" in args.parts else []:
        torch.backends.cudnn.benchmark = autotune
        cfg = config(num_classes, 0, **overrides)
        model, optimizer = model_and_optimizer(cfg)
        scaler = torch.amp.GradScaler("cuda")
        one_batch = next(stream(dicts, cfg))
        speed, start, end = timed(itertools.repeat(one_batch), args.iterations, cfg.SOLVER.IMS_PER_BATCH,
                                  lambda inputs: step(model, optimizer, scaler, inputs))
        rows.append((f"steps on one batch: {name}", speed, sampler.mean(start, end)))
        del model, optimizer

    for workers, autotune in [(args.workers[0], False), *((w, True) for w in args.workers)] \
            if "trial" in args.parts else []:
        speed, start, end = train_as_a_trial(dicts, num_classes, workers, autotune, args.iterations)
        rows.append((f"training as a trial does, {workers} loader processes"
                     + (", cuDNN autotuner" if autotune else ""), speed, sampler.mean(start, end)))

    context = multiprocessing.get_context("spawn")
    for processes in args.processes if "shared" in args.parts else []:
        barrier, results = context.Barrier(processes), context.Queue()
        trials = [context.Process(target=train_in_own_process,
                                  args=(results, dicts, num_classes, args.workers[0], args.iterations, barrier))
                  for _ in range(processes)]
        for trial in trials:
            trial.start()
        windows = [results.get() for _ in trials]
        for trial in trials:
            trial.join()
        start, end = max(w[1] for w in windows), min(w[2] for w in windows)  # all of them training
        rows.append((f"{processes} trials training at once, {args.workers[0]} loader processes each",
                     sum(w[0] for w in windows), sampler.mean(start, end)))


def stream(dicts, cfg):
    return (inputs for inputs, _ in Trainer.build_train_loader(cfg, dicts))


def train_as_a_trial(dicts, num_classes, workers, autotune, iterations, barrier=None):
    """(images/s, start, end) of Trainer.run_step's work on the trial's data stream, in this process; with a
    `barrier`, measuring starts when every process sharing it has warmed up."""
    torch.backends.cudnn.benchmark = autotune
    cfg = config(num_classes, workers)
    model, optimizer = model_and_optimizer(cfg)
    scaler = torch.amp.GradScaler("cuda")
    with EventStorage(0):
        return timed(stream(dicts, cfg), iterations, cfg.SOLVER.IMS_PER_BATCH,
                     lambda inputs: step(model, optimizer, scaler, inputs), barrier)


def train_in_own_process(results, dicts, num_classes, workers, iterations, barrier):
    results.put(train_as_a_trial(dicts, num_classes, workers, False, iterations, barrier))


if __name__ == "__main__":
    main()
