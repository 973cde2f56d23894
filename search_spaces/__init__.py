"""Search space files: which architecture a search tunes, its epoch budget, fixed settings and Tune distributions.

A file (YAML) looks like::

    architecture: faster_rcnn            # `family:` may be given too; it must match the architecture
    budget: {max_epochs: 12, grace_epochs: 2}
    fixed:                               # trial-config keys held constant (see trainables.trial_config)
      eval_every: 1
      hparams: {depth: 50, norm: GN}
    space:                               # project hyperparameter names -> one Tune distribution each
      lr: {loguniform: [1.0e-4, 1.0e-2]}
      optimizer: {choice: [sgd, adamw]}

Everything is checked against the architecture's adapter when the file is loaded, before any trial starts:
an unknown name, a distribution of the wrong type, an empty or inverted range, or a range outside what the
hyperparameter accepts is a UserError naming the file and the key.
"""

from dataclasses import dataclass, field
from pathlib import Path

from ray import tune

from detfuse.core.errors import UserError
from detfuse.core.numbers import checked_number
from detfuse.core.yaml_files import load_yaml
from trainables.trial_config import resolve_trial_config

HERE = Path(__file__).parent
FILE_KEYS = ("family", "architecture", "budget", "fixed", "space")

# distribution name -> (Tune constructor, number of arguments or None for a list, value type it yields)
DISTRIBUTIONS = {
    "uniform": (tune.uniform, 2, float),
    "loguniform": (tune.loguniform, 2, float),
    "quniform": (tune.quniform, 3, float),
    "qloguniform": (tune.qloguniform, 3, float),
    "randint": (tune.randint, 2, int),  # upper bound exclusive, as in Tune
    "qrandint": (tune.qrandint, 3, int),
    "lograndint": (tune.lograndint, 2, int),
    "choice": (tune.choice, None, None),
}


@dataclass
class SearchSpace:
    name: str
    path: Path
    family: str
    architecture: str
    max_epochs: float
    grace_epochs: float
    fixed: dict = field(default_factory=dict)  # trial config keys, hparams included
    space: dict = field(default_factory=dict)  # hyperparameter name -> Tune Domain

    def trial_config(self, sampled_hparams, **settings):
        """A full trial config: the fixed settings, `settings` (dataset, seed, ...) and the sampled values."""
        hparams = {**self.fixed.get("hparams", {}), **sampled_hparams}
        return {**self.fixed, **settings, "architecture": self.architecture, "family": self.family,
                "max_epochs": self.max_epochs, "hparams": hparams}


def available_spaces():
    """Names of the search spaces shipped with detfuse."""
    return sorted(p.stem for p in HERE.glob("*.yaml"))


def resolve_space_path(name_or_path, where="config"):
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise UserError(f"{where}: search space file {path} does not exist")
        return path
    shipped = HERE / f"{name_or_path}.yaml"
    if not shipped.is_file():
        raise UserError(f"{where}: unknown search space '{name_or_path}'; shipped spaces: "
                        f"{', '.join(available_spaces())} (or give a path to a YAML file)")
    return shipped


def _domain(name, spec, hyperparameter, where):
    """Build the Tune Domain for one `space` entry and check it against the hyperparameter it tunes."""
    entry = f"{where}: space.{name}"
    if not isinstance(spec, dict) or len(spec) != 1:
        raise UserError(f"{entry} must be a mapping with one distribution, e.g. {{loguniform: [1.0e-4, 1.0e-2]}}; "
                        f"distributions: {', '.join(DISTRIBUTIONS)}")
    (kind, args), = spec.items()
    if kind not in DISTRIBUTIONS:
        raise UserError(f"{entry}: unknown distribution '{kind}'; valid: {', '.join(DISTRIBUTIONS)}")
    make, arity, yields = DISTRIBUTIONS[kind]
    if not isinstance(args, list) or not args:
        raise UserError(f"{entry}.{kind} needs a non-empty list of {'values' if arity is None else 'arguments'}")
    if arity is None:  # choice: every option must be a valid value of the hyperparameter
        for option in args:
            hyperparameter.check(option, f"{entry}.choice")
        return make(args)
    if len(args) != arity:
        names = "[low, high]" if arity == 2 else "[low, high, q]"
        raise UserError(f"{entry}.{kind} takes {names}, got {args}")
    if hyperparameter.kind not in (float, int) or (yields is float and hyperparameter.kind is int):
        raise UserError(f"{entry}: {kind} yields {yields.__name__} values but {hyperparameter.describe()} "
                        f"needs {hyperparameter.kind.__name__}; use "
                        f"{'choice' if hyperparameter.kind not in (float, int) else 'randint/qrandint/choice'}")
    if any(isinstance(a, bool) or not isinstance(a, (int, float)) for a in args):
        raise UserError(f"{entry}.{kind} arguments must be numbers, got {args}")
    low, high = args[0], args[1]
    if not low < high:
        raise UserError(f"{entry}.{kind}: empty or inverted range [{low}, {high}]; low must be below high")
    if kind.startswith("log") or kind == "qloguniform":
        if low <= 0:
            raise UserError(f"{entry}.{kind}: a log distribution needs low > 0, got {low}")
    if yields is int and any(not float(a).is_integer() for a in args):
        raise UserError(f"{entry}.{kind} arguments must be integers, got {args}")
    top = high - 1 if kind == "randint" else high  # randint's upper bound is exclusive
    hyperparameter.check(low, f"{entry}.{kind} (low)")
    hyperparameter.check(top, f"{entry}.{kind} (high)")
    return make(*[int(a) for a in args] if yields is int else [float(a) for a in args])


def load_search_space(name_or_path, where="config"):
    """Load, validate and return the SearchSpace named (a shipped name or a YAML path)."""
    import trainables

    path = resolve_space_path(name_or_path, where)
    data = load_yaml(path, "search space")
    where = str(path)
    unknown = sorted(set(data) - set(FILE_KEYS))
    if unknown:
        raise UserError(f"{where}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(FILE_KEYS)}")
    if "architecture" not in data:
        raise UserError(f"{where}: 'architecture' is required")
    family = trainables.family_of(data["architecture"], where)
    if data.get("family", family) != family:
        raise UserError(f"{where}: architecture '{data['architecture']}' belongs to family '{family}', "
                        f"not '{data['family']}'")

    budget = data.get("budget") or {}
    if not isinstance(budget, dict) or set(budget) - {"max_epochs", "grace_epochs"} or "max_epochs" not in budget:
        raise UserError(f"{where}: 'budget' must be a mapping with max_epochs (and optional grace_epochs)")
    max_epochs = budget["max_epochs"]
    grace_epochs = budget.get("grace_epochs", 1)
    for key, value in (("max_epochs", max_epochs), ("grace_epochs", grace_epochs)):
        checked_number(value, f"{where}: budget.{key}", above=0)
    if grace_epochs > max_epochs:
        raise UserError(f"{where}: budget.grace_epochs ({grace_epochs}) exceeds budget.max_epochs ({max_epochs})")

    fixed = data.get("fixed") or {}
    if not isinstance(fixed, dict):
        raise UserError(f"{where}: 'fixed' must be a mapping of trial config keys")
    for key in ("architecture", "family", "max_epochs"):
        if key in fixed:
            raise UserError(f"{where}: fixed.{key} is set by the file's top-level keys/budget, not under 'fixed'")
    space_spec = data.get("space") or {}
    if not isinstance(space_spec, dict):
        raise UserError(f"{where}: 'space' must be a mapping of hyperparameter names to distributions")
    fixed_hparams = fixed.get("hparams") or {}
    both = sorted(set(space_spec) & set(fixed_hparams))
    if both:
        raise UserError(f"{where}: {', '.join(both)} appear both in space and in fixed.hparams; keep one")

    # the fixed part must be a valid trial config by itself (the adapter fills in the tuned names' defaults)
    resolve_trial_config({**fixed, "architecture": data["architecture"], "max_epochs": max_epochs},
                          f"{where}: fixed")
    hyperparameters = trainables.load_family(family).ARCHITECTURES[data["architecture"]].hyperparameters
    space = {}
    for name, spec in space_spec.items():
        if name not in hyperparameters:
            raise hyperparameters.unknown_error(name, f"{where}: space")
        space[name] = _domain(name, spec, hyperparameters[name], where)
    search_space = SearchSpace(name=path.stem, path=path, family=family, architecture=data["architecture"],
                               max_epochs=float(max_epochs), grace_epochs=float(grace_epochs), fixed=fixed,
                               space=space)
    # one sampled point through the adapter's full check catches what single values cannot (e.g. combinations)
    sample = {name: domain.sample() for name, domain in space.items()}
    resolve_trial_config(search_space.trial_config(sample), f"{where} (a sample of its space)")
    return search_space
