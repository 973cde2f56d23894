"""One process's share of a detectron2 trial: the whole trial, or one DDP worker (ddp.py), from a resolved config."""

from detfuse.core.errors import UserError
from detfuse.core.weights_source import local_weights
from trainables.detectron2 import logs
from trainables.detectron2.adapters import ARCHITECTURES, Schedule
from trainables.detectron2.model_zoo import named_weights
from trainables.detectron2.resources import trial_workers


def run_worker(config, checkpoint_dir, report, device, progress=False, trial="this trial"):
    """Train in this process (one DDP worker, or the whole trial); `report` gets rank 0's evaluations; `trial`
    names the trial in messages."""
    from detectron2.utils import comm

    logs.configure(config["verbose"], comm.get_rank())  # before the imports that warn
    from detectron2.data.build import filter_images_with_only_crowd_annotations
    from detectron2.utils.env import seed_all_rng

    from detfuse.core.data import load_dataset
    from trainables.detectron2.dataset_dicts import detectron2_dicts
    from trainables.detectron2 import checkpoints, loader
    from trainables.detectron2.trainer import Trainer, TrialData

    adapter, hparams = ARCHITECTURES[config["architecture"]], config["hparams"]
    dataset = load_dataset(config["dataset"])
    num_train_images = len(dataset.splits["train"].coco["images"])
    schedule = Schedule.from_epochs(hparams, num_train_images, config["max_epochs"], config["eval_every"])
    cfg = adapter.build_config(hparams, len(dataset.class_names), schedule, config["seed"])
    train_dicts = detectron2_dicts(dataset, "train")
    val_dicts = detectron2_dicts(dataset, "val")
    cfg.defrost()
    cfg.MODEL.DEVICE = str(device)
    cfg.DATASETS.TRAIN = (loader.register_split(config["dataset"], dataset, "train"),)
    cfg.DATASETS.TEST = (loader.register_split(config["dataset"], dataset, "val"),)
    cfg.DATALOADER.NUM_WORKERS = data_workers(config, device)
    cfg.freeze()
    if cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS:
        train_dicts = filter_images_with_only_crowd_annotations(train_dicts)
    data = TrialData(
        architecture=config["architecture"], hparams=hparams, class_names=list(dataset.class_names),
        category_ids=list(dataset.category_ids), train_dicts=train_dicts, val_dicts=val_dicts,
        val_coco=dataset.splits["val"].coco, num_train_images=num_train_images,
    )

    resume_state, weights = None, None
    if checkpoint_dir is not None:
        _check_same_trial(checkpoints.read_meta(checkpoint_dir), data, checkpoint_dir)
        resume_state = {"model": checkpoints.read_model_state(checkpoint_dir),
                        "training": checkpoints.read_training_state(checkpoint_dir)}
    else:
        seed_all_rng(config["seed"] + comm.get_rank())
        if config["weights"] is not None:
            weights = local_weights(config["weights"], named_weights, trial)
    trainer = Trainer(cfg, data, report, resume_state=resume_state, weights=weights,
                      verbose=config["verbose"], progress=progress)
    trainer.train()


def data_workers(config, device):
    """DataLoader processes: none on CPU (they would compete with training for the same cores)."""
    if device.type != "cuda":
        return 0
    cpus = config["resources"]["cpu"] / trial_workers(config["resources"])
    return max(0, min(4, int(cpus) - 1))


def _check_same_trial(meta, data, checkpoint_dir):
    for key, now in (("architecture", data.architecture), ("hparams", data.hparams),
                     ("class_names", data.class_names)):
        if meta.get(key) != now:
            raise UserError(f"{checkpoint_dir}: cannot resume: the checkpoint's {key} ({meta.get(key)}) differs "
                            f"from this trial's ({now}); start a new run instead")
