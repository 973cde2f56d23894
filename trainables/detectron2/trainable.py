"""`train(config)`: one Detectron2 trial, the same code under Ray Tune and under `detfuse train`.

A trial asking for one GPU (or none) trains in this process. A trial asking for N > 1 whole GPUs trains with
DDP across N Ray Train workers (see ddp.py); each worker runs `worker.run_worker` with detectron2's process-group
state set up, and rank 0's reports travel back to this process, which reports them to Tune.
"""

import sys

import torch

from detfuse.core import trial_link
from detfuse.core.errors import UserError
from trainables.detectron2 import logs
from trainables.detectron2.resources import trial_workers


def train(config):
    """Ray Tune function trainable (also run by `detfuse train` under a LocalRun). `config` is a resolved trial
    config (trainables.trial_config): its hparams are complete and checked."""
    logs.configure(config["verbose"])
    workers = trial_workers(config["resources"])
    if config["hparams"]["batch_size"] % workers:
        raise UserError(f"trial config: hparams: batch_size {config['hparams']['batch_size']} must be divisible by "
                        f"the {workers} DDP workers (one per GPU of resources.gpu)")
    with trial_link.resume_checkpoint() as checkpoint_dir:
        if workers > 1:
            from trainables.detectron2 import ddp

            ddp.train_distributed(config, workers, use_gpu=True, checkpoint_dir=checkpoint_dir,
                                  trial=trial_link.trial_label())
        else:
            from trainables.detectron2.worker import run_worker

            device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
            run_worker(config, checkpoint_dir, trial_link.report, device, progress=sys.stderr.isatty(),
                       trial=trial_link.trial_label())
