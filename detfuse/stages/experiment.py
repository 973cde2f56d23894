"""The experiment config (configs/*.yaml): what `detfuse tune` searches, where it stores results, how it schedules.

Validated once, here, with every search space loaded through its adapter, so a typo fails in seconds with the
file and key named instead of after hours of training.
"""

from dataclasses import dataclass
from pathlib import Path

import trainables
from detfuse.core.errors import UserError
from detfuse.core.numbers import checked_number
from detfuse.core.yaml_files import load_yaml
from detfuse.stages.overrides import apply_overrides
from trainables.trial_config import validate_resources, validate_wandb

KEYS = {
    "name": "experiment name: a directory under `storage`",
    "dataset": "dataset directory, dataset YAML, s3:// URI or 'builtin'",
    "storage": "experiment storage: local directory or s3://bucket/prefix (shared storage on multi-node clusters)",
    "spaces": "list of {space, num_samples, resources: {cpu, gpu}}",
    "scheduler": "ASHA settings: reduction_factor, and optional max_epochs/grace_epochs overriding every space",
    "searcher": "'random' (default) or a Tune searcher name such as optuna or hyperopt",
    "max_concurrent_trials": "upper bound on trials running at once (default: as many as resources allow)",
    "checkpoints_per_trial": "checkpoints kept per trial (the best by mAP50 are kept)",
    "max_failures": "retries of a failed trial (node lost, worker crash), each from its last checkpoint",
    "eval_every": "epochs between evaluations/checkpoints in every trial (default: each space's own)",
    "wandb": "false, true (offline) or {project, entity, group, mode, dir}",
    "seed": "base random seed",
    "ensemble": "pipeline's ensemble stage: {top: K or {family: K}, method: wbf|nms|soft_nms|nmw, "
                "fit_mode: auto|cross|split, tta: none|hflip}",
    "export": "pipeline's export stage: {to: directory or s3://bucket/prefix (default <storage>/<name>/export),"
              " sse: AES256|aws:kms}",
}
SPACE_KEYS = ("space", "num_samples", "resources")
SCHEDULER_KEYS = ("reduction_factor", "max_epochs", "grace_epochs")


@dataclass
class Experiment:
    path: Path
    name: str
    dataset: str
    storage: str  # absolute local path or s3:// URI
    entries: list  # detfuse.stages.searcher.SpaceEntry
    reduction_factor: float
    searcher: str
    max_concurrent_trials: int | None
    checkpoints_per_trial: int
    max_failures: int
    wandb: dict | None
    seed: int
    ensemble_top: int  # members of every family not in ensemble_top_per_family
    ensemble_top_per_family: dict  # family -> members
    ensemble_method: str
    ensemble_fit_mode: str  # --fit-mode of the ensemble job
    ensemble_tta: str  # --tta of the ensemble job
    export_to: str
    export_sse: str | None
    notices: list  # what loading changed in the config as written, for `check` and `tune` to print

    @property
    def uri(self):
        """Where this experiment's Tune state, checkpoints, leaderboard and later stages live."""
        return f"{self.storage.rstrip('/')}/{self.name}"

    def budgets(self):
        """family -> (grace_epochs, max_epochs) for its ASHA: the loosest budget over the family's spaces."""
        budgets = {}
        for entry in self.entries:
            grace, top = budgets.get(entry.space.family, (float("inf"), 0.0))
            budgets[entry.space.family] = (min(grace, entry.space.grace_epochs), max(top, entry.space.max_epochs))
        return budgets


def _whole_number(data, key, where, default, at_least=1):
    value = data.get(key, default)
    return None if value is None else checked_number(value, f"{where}: '{key}'", integer=True, at_least=at_least)


def load_experiment(path, overrides=()):
    """Read, override, validate and return the Experiment in `path`."""
    from search_spaces import load_search_space
    from detfuse.stages.searcher import SpaceEntry

    where = str(path)
    data = apply_overrides(load_yaml(path, "experiment config"), overrides)
    unknown = sorted(set(data) - set(KEYS))
    if unknown:
        valid = "\n  ".join(f"{k}: {v}" for k, v in KEYS.items())
        raise UserError(f"{where}: unknown key(s) {', '.join(unknown)}. Valid keys:\n  {valid}")
    name = data.get("name")
    if not isinstance(name, str) or not name or "/" in name:
        raise UserError(f"{where}: 'name' is required: a non-empty experiment name without '/'")
    dataset = data.get("dataset", "builtin")
    if not isinstance(dataset, str):
        raise UserError(f"{where}: 'dataset' must be a path, s3:// URI or 'builtin'")
    if dataset != "builtin" and not dataset.startswith("s3://"):
        dataset = str(Path(dataset).expanduser().resolve())  # trials run in other working directories
    storage = data.get("storage", "runs")
    if not isinstance(storage, str) or not storage:
        raise UserError(f"{where}: 'storage' must be a local directory or an s3://bucket/prefix URI")
    if not storage.startswith("s3://"):
        if "://" in storage:
            raise UserError(f"{where}: storage '{storage}': only local paths and s3:// URIs are supported")
        storage = str(Path(storage).expanduser().resolve())

    wandb = validate_wandb(data.get("wandb"), where)
    seed = checked_number(data.get("seed", 0), f"{where}: 'seed'", integer=True)
    eval_every = data.get("eval_every")
    if eval_every is not None:
        checked_number(eval_every, f"{where}: 'eval_every' (epochs)", above=0)

    scheduler = data.get("scheduler") or {}
    if not isinstance(scheduler, dict) or set(scheduler) - set(SCHEDULER_KEYS):
        raise UserError(f"{where}: 'scheduler' must be a mapping with keys {', '.join(SCHEDULER_KEYS)}")
    reduction_factor = checked_number(scheduler.get("reduction_factor", 3), f"{where}: scheduler.reduction_factor",
                                      above=1)
    budget_override = {}
    for key in ("max_epochs", "grace_epochs"):
        value = scheduler.get(key)
        if value is not None:
            budget_override[key] = float(checked_number(value, f"{where}: scheduler.{key}", above=0))
    if budget_override.get("grace_epochs", 0) > budget_override.get("max_epochs", float("inf")):
        raise UserError(f"{where}: scheduler.grace_epochs exceeds scheduler.max_epochs")

    spaces = data.get("spaces")
    if not isinstance(spaces, list) or not spaces:
        raise UserError(f"{where}: 'spaces' must be a non-empty list of {{space, num_samples, resources}}")
    entries, notices = [], []
    for index, item in enumerate(spaces):
        here = f"{where}: spaces[{index}]"
        if not isinstance(item, dict) or "space" not in item or set(item) - set(SPACE_KEYS):
            raise UserError(f"{here} must be a mapping with 'space' and optional num_samples, resources "
                            f"(got {item!r})")
        space_ref = item["space"]
        if isinstance(space_ref, str) and space_ref.endswith((".yaml", ".yml")):
            space_ref = str(Path(path).parent / space_ref)  # relative paths are relative to this config file
        try:
            space = load_search_space(space_ref, here)
        except UserError as error:
            message = str(error)
            raise UserError(message if message.startswith(here) else f"{here}: {message}") from None
        for key, value in budget_override.items():
            setattr(space, key, value)
        if space.grace_epochs > space.max_epochs:
            notices.append(f"{here}: space '{space.name}' has grace_epochs {space.grace_epochs:g} above "
                           f"scheduler.max_epochs {space.max_epochs:g}: its trials now run {space.max_epochs:g} "
                           f"epoch(s) before ASHA may stop them (set scheduler.grace_epochs to choose another)")
            space.grace_epochs = space.max_epochs
        num_samples = _whole_number(item, "num_samples", here, 1)
        resources = validate_resources(item.get("resources", {}), here)
        trainables.load_family(space.family).trial_workers(resources, here)
        settings = {"dataset": dataset, "resources": resources, "wandb": wandb}
        if eval_every is not None:
            settings["eval_every"] = float(eval_every)
        entries.append(SpaceEntry(space, num_samples, settings))

    ensemble_top, ensemble_top_per_family, ensemble_method, ensemble_fit_mode, ensemble_tta = _ensemble_settings(
        data.get("ensemble") or {}, where)
    export = data.get("export") or {}
    if not isinstance(export, dict) or set(export) - {"to", "sse"}:
        raise UserError(f"{where}: 'export' must be a mapping with keys to, sse")
    export_to = export.get("to") or f"{storage.rstrip('/')}/{name}/export"
    if not isinstance(export_to, str):
        raise UserError(f"{where}: export.to must be a directory or an s3://bucket/prefix URI")
    if not export_to.startswith("s3://"):
        export_to = str(Path(export_to).expanduser().resolve())
    if export.get("sse") not in (None, "AES256", "aws:kms"):
        raise UserError(f"{where}: export.sse must be AES256 or aws:kms, got {export['sse']!r}")

    return Experiment(
        path=Path(path), name=name, dataset=dataset, storage=storage, entries=entries,
        ensemble_top=ensemble_top, ensemble_top_per_family=ensemble_top_per_family, ensemble_method=ensemble_method, ensemble_fit_mode=ensemble_fit_mode,
        ensemble_tta=ensemble_tta,
        export_to=export_to, export_sse=export.get("sse"),
        reduction_factor=float(reduction_factor),
        searcher=_searcher(data.get("searcher", "random"), where),
        max_concurrent_trials=_whole_number(data, "max_concurrent_trials", where, None),
        checkpoints_per_trial=_whole_number(data, "checkpoints_per_trial", where, 2),
        max_failures=_whole_number(data, "max_failures", where, 3, at_least=0),
        wandb=wandb, seed=seed, notices=notices,
    )


def _searcher(name, where):
    if name == "random":
        return name
    from ray.tune.search import SEARCH_ALG_IMPORT

    if name not in SEARCH_ALG_IMPORT or name in ("variant_generator", "random"):
        valid = sorted(n for n in SEARCH_ALG_IMPORT if n != "variant_generator")
        raise UserError(f"{where}: unknown searcher '{name}'; use 'random' or one of: {', '.join(valid)}")
    try:
        SEARCH_ALG_IMPORT[name]()
    except ImportError as error:
        raise UserError(f"{where}: searcher '{name}' needs a package that is not installed ({error}); "
                        f"install it on every node or use searcher: random") from None
    return name


def _ensemble_settings(section, where):
    """The ensemble stage's members per family, fusion method, fit mode and test-time augmentation, checked here
    rather than after tuning."""
    from detfuse.stages.ensemble import DEFAULT_TOP
    from detfuse.stages.ensemble_evaluation import FIT_MODES
    from detfuse.core.fusion import METHODS
    from detfuse.stages.member_predictions import DEFAULT_TTA, TTA_MODES
    from trainables import FAMILIES

    if not isinstance(section, dict) or set(section) - {"top", "method", "fit_mode", "tta"}:
        raise UserError(f"{where}: 'ensemble' must be a mapping with keys top, method, fit_mode, tta")
    top = section.get("top", DEFAULT_TOP)
    per_family = top if isinstance(top, dict) else {}
    for family, k in per_family.items():
        if family not in FAMILIES:
            raise UserError(f"{where}: ensemble.top: unknown family '{family}'; valid: {', '.join(FAMILIES)}")
    for family, k in per_family.items() if per_family else [("", top)]:
        checked_number(k, f"{where}: ensemble.top{'.' + family if family else ''} (or a mapping family -> number)",
                       integer=True, at_least=0)
    method = section.get("method", "wbf")
    if method not in METHODS:
        raise UserError(f"{where}: ensemble.method must be one of {', '.join(METHODS)}, got {method!r}")
    fit_mode = section.get("fit_mode", "auto")
    if fit_mode not in FIT_MODES:
        raise UserError(f"{where}: ensemble.fit_mode must be one of {', '.join(FIT_MODES)} (auto: cross-fit on val "
                        f"when it is small and test has no labels), got {fit_mode!r}")
    tta = section.get("tta", DEFAULT_TTA)
    if tta not in TTA_MODES:
        raise UserError(f"{where}: ensemble.tta must be one of {', '.join(TTA_MODES)} (hflip: each trial is also "
                        f"fused on the images mirrored left-right), got {tta!r}")
    return (DEFAULT_TOP if per_family else top), per_family, method, fit_mode, tta
