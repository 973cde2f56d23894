"""`detfuse train`: one trial of either family outside Tune, through the same `train(config)` Tune calls."""

import json
import time
from pathlib import Path

from detfuse.core import trial_link
from detfuse.core.errors import UserError
from detfuse.core.yaml_files import load_yaml
from detfuse.stages.overrides import apply_overrides
from trainables.trial_config import resolve_trial_config


def start_wandb(settings, config, name):
    """A W&B run for `config` (offline unless the settings say otherwise); None when W&B is off."""
    if settings is None:
        return None
    try:
        import wandb
    except ImportError:
        raise UserError("wandb is enabled in the config but not installed: pip install 'detfuse[wandb]'") from None
    return wandb.init(project=settings["project"], entity=settings["entity"], group=settings["group"],
                      mode=settings["mode"], dir=settings["dir"], name=name, config=config, reinit=True)


class WandbLocalRun(trial_link.LocalRun):
    """A LocalRun that also logs every report to a W&B run."""

    def __init__(self, run_dir, wandb_run, keep=2):
        super().__init__(run_dir, keep)
        self.wandb_run = wandb_run

    def report(self, metrics, checkpoint_dir):
        super().report(metrics, checkpoint_dir)
        self.wandb_run.log({k: v for k, v in metrics.items() if isinstance(v, (int, float))})


def run_train(config_path, overrides=(), out_dir=None, resume=False, verbose=False):
    config = apply_overrides(load_yaml(config_path, "trial config"), overrides)
    config = resolve_trial_config(config, where=str(config_path))
    config["verbose"] = verbose or config["verbose"]
    out = Path(out_dir or f"runs/train/{config['architecture']}-{time.strftime('%Y%m%d-%H%M%S')}")
    if not resume and any(out.glob("checkpoint_*")):
        raise UserError(f"{out} already holds checkpoints: pass --resume to continue that run, or another --out")
    out.mkdir(parents=True, exist_ok=True)
    (out / "trial_config.json").write_text(json.dumps(config, indent=2))
    wandb_run = start_wandb(config["wandb"], config, out.name)
    run = trial_link.LocalRun(out) if wandb_run is None else WandbLocalRun(out, wandb_run)
    if resume and run.latest_checkpoint() is None:
        raise UserError(f"--resume: {out} holds no checkpoint to resume from")
    import trainables

    family = trainables.load_family(config["family"])
    if family.trial_workers(config["resources"]) > 1:
        from detfuse.stages.cluster import connect

        connect(verbose)  # its DDP workers are Ray actors: joined as the jobs join, their logs follow -v
    trial_link.use_local_run(run)
    try:
        family.train(config)
    finally:
        trial_link.use_local_run(None)
        if wandb_run is not None:
            wandb_run.finish()
    results = [json.loads(line) for line in run.metrics_log.read_text().splitlines()]
    if results:
        best = max(results, key=lambda r: r.get("mAP50", float("-inf")))
        print(f"best mAP50 {best['mAP50']:.4f} at epoch {best['epoch']:.2f}; "
              f"last checkpoint {run.latest_checkpoint()}; metrics in {run.metrics_log}")
    return 0
