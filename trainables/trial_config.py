"""The configuration of one trial: what a trainable's `train(config)` receives, from Tune or `detfuse train`.

Resolved once here, at the boundary (search-space load, the searcher, `detfuse train`): every key present, defaults
filled in, `hparams` checked and completed by the architecture's adapter (knowing whether `weights` are set), the
resources checked against what the family can run. Trainables trust a resolved config and check nothing again.
"""

from pathlib import Path

from detfuse.core.errors import UserError
from detfuse.core.numbers import checked_number
from detfuse.core.weights_source import is_remote, is_url, parse_weights, pinned_local_source, url_cache_key

DEFAULTS = {
    "family": None,  # derived from the architecture when absent
    "architecture": None,
    "dataset": "builtin",
    "max_epochs": 10.0,
    "eval_every": 1.0,
    "hparams": {},
    "weights": None,  # resolved: None or {source, sha256} (detfuse.core.weights_source)
    "seed": 0,
    "wandb": None,
    "verbose": False,
    "resources": {"cpu": 1, "gpu": 0},  # per trial; gpu > 1 (whole GPUs) means a DDP trial
}


def resolve_trial_config(config, where):
    """Return `config` resolved (defaults, family, complete hparams); raise UserError naming `where` and the key."""
    import trainables

    unknown = sorted(set(config) - set(DEFAULTS))
    if unknown:
        raise UserError(f"{where}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(DEFAULTS)}")
    config = {**DEFAULTS, **config}
    if not isinstance(config["architecture"], str):
        raise UserError(f"{where}: 'architecture' is required (e.g. faster_rcnn, retinanet, cascade_rcnn, yolov5n)")
    family = trainables.family_of(config["architecture"], where)
    if config["family"] not in (None, family):
        raise UserError(f"{where}: architecture '{config['architecture']}' belongs to family '{family}', "
                        f"not '{config['family']}'")
    config["family"] = family
    for key in ("max_epochs", "eval_every"):
        config[key] = float(checked_number(config[key], f"{where}: '{key}'", above=0))
    checked_number(config["seed"], f"{where}: 'seed'", integer=True)
    if not isinstance(config["dataset"], str):
        raise UserError(f"{where}: 'dataset' must be a path, s3:// URI or 'builtin', got {config['dataset']!r}")
    weights = resolve_weights(config["weights"], family, config["architecture"], where)
    config["weights"] = None if weights is None else weights.as_config()
    if not isinstance(config["hparams"], dict):
        raise UserError(f"{where}: 'hparams' must be a mapping of hyperparameter names to values")
    package = trainables.load_family(family)
    adapter = package.ARCHITECTURES[config["architecture"]]
    config["hparams"] = adapter.resolve(config["hparams"], f"{where}: hparams", has_weights=weights is not None)
    config["wandb"] = validate_wandb(config["wandb"], where)
    config["resources"] = validate_resources(config["resources"], where)
    package.trial_workers(config["resources"], where)
    return config


def resolve_weights(value, family, architecture, where):
    """The `weights` setting checked without fetching anything: its shape, that a URL can be downloaded from, that a
    family's published name belongs to this trial's family and architecture, and that a local path exists (made
    absolute: the trial runs elsewhere)."""
    import trainables

    spec = parse_weights(value, where, trainables.weights_forms())
    if spec is None:
        return None
    spec = pinned_local_source(spec)
    if is_url(spec.source):
        url_cache_key(spec.source, f"{where}: weights")
    owner, named = trainables.named_weights(spec.source, where)
    if owner not in (None, family):
        raise UserError(f"{where}: weights {spec.source} is a {owner} checkpoint, but {architecture} is a {family} "
                        f"model: name a {family} checkpoint, or train a {owner} architecture")
    if named is not None and named.architecture not in (None, architecture):
        raise UserError(f"{where}: weights {spec.source} holds a {named.architecture} model, but the architecture is "
                        f"{architecture}, of other layer sizes (next to nothing would load): name the "
                        f"{architecture} file, or train {named.architecture}")
    if named is None and not is_remote(spec.source) and not Path(spec.source).exists():
        raise UserError(f"{where}: weights {spec.source} does not exist; weights are {trainables.weights_forms()}")
    return spec


def validate_resources(value, where):
    """Per-trial resources {cpu, gpu}: a fraction of one GPU shares a card; several whole GPUs mean DDP."""
    if not isinstance(value, dict) or set(value) - {"cpu", "gpu"}:
        raise UserError(f"{where}: 'resources' must be a mapping with keys cpu and gpu, got {value!r}")
    resources = {"cpu": 1, "gpu": 0, **value}
    checked_number(resources["cpu"], f"{where}: resources.cpu (the trial's own process needs a CPU)", above=0)
    checked_number(resources["gpu"], f"{where}: resources.gpu", at_least=0)
    if resources["gpu"] > 1 and not float(resources["gpu"]).is_integer():
        raise UserError(f"{where}: resources.gpu = {resources['gpu']}: above 1 it must be a whole number of GPUs "
                        f"(one DDP worker per GPU); below 1 it is a fraction of one shared GPU")
    return resources


WANDB_KEYS = {"project": "detfuse", "entity": None, "group": None, "mode": "offline", "dir": None}


def validate_wandb(value, where):
    """W&B settings: None/false = off, true = offline into project 'detfuse', or a mapping of WANDB_KEYS."""
    if value in (None, False):
        return None
    if value is True:
        value = {}
    if not isinstance(value, dict):
        raise UserError(f"{where}: 'wandb' must be true/false or a mapping with keys {', '.join(WANDB_KEYS)}")
    unknown = sorted(set(value) - set(WANDB_KEYS))
    if unknown:
        raise UserError(f"{where}: unknown wandb key(s) {', '.join(unknown)}; valid: {', '.join(WANDB_KEYS)}")
    settings = {**WANDB_KEYS, **value}
    if settings["mode"] not in ("offline", "online", "disabled"):
        raise UserError(f"{where}: wandb.mode must be offline, online or disabled, got {settings['mode']!r}")
    return settings
