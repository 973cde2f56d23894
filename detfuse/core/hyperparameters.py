"""Project hyperparameter names, their types and ranges: the vocabulary adapters and search spaces share.

Each architecture adapter declares the `Hyperparameter`s it supports in a `HyperparameterSet`. Validation
happens once, at the boundary: an unknown name, a wrong type or a value out of range is a `UserError` that
names where the value came from and lists what is valid.
"""

from dataclasses import dataclass
from typing import Any

from detfuse.core.errors import UserError


@dataclass(frozen=True)
class Hyperparameter:
    name: str
    kind: type  # float, int, str, bool or list
    default: Any
    help: str
    choices: tuple = ()
    low: float | None = None  # inclusive bounds for numbers
    high: float | None = None

    def describe(self):
        if self.choices:
            return f"{self.name} (one of {', '.join(map(str, self.choices))})"
        bounds = ""
        if self.low is not None or self.high is not None:
            bounds = f" in [{'' if self.low is None else self.low}, {'' if self.high is None else self.high}]"
        return f"{self.name} ({self.kind.__name__}{bounds})"

    def check(self, value, where):
        """Return `value` converted to this hyperparameter's type, or raise a UserError saying why not."""
        problem = f"{where}: hyperparameter '{self.name}' = {value!r}"
        if self.kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            value = float(value)
        elif self.kind is int and isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, self.kind) or (self.kind is int and isinstance(value, bool)):
            raise UserError(f"{problem} must be of type {self.kind.__name__} ({self.help})")
        if self.choices and value not in self.choices:
            raise UserError(f"{problem} must be one of: {', '.join(map(str, self.choices))}")
        if self.low is not None and value < self.low or self.high is not None and value > self.high:
            raise UserError(f"{problem} is out of range; {self.describe()}")
        return value


class HyperparameterSet:
    """The hyperparameters one architecture supports, by project name."""

    def __init__(self, architecture, hyperparameters):
        self.architecture = architecture
        self.by_name = {h.name: h for h in hyperparameters}

    def __contains__(self, name):
        return name in self.by_name

    def __getitem__(self, name):
        return self.by_name[name]

    def names(self):
        return sorted(self.by_name)

    def unknown_error(self, name, where):
        valid = "\n  ".join(self.by_name[n].describe() for n in self.names())
        return UserError(
            f"{where}: '{name}' is not a hyperparameter of {self.architecture}. Valid names:\n  {valid}"
        )

    def validate(self, values, where):
        """Check `values` (name -> value) and return them with defaults filled in for the missing names."""
        for name in values:
            if name not in self.by_name:
                raise self.unknown_error(name, where)
        resolved = {name: h.default for name, h in self.by_name.items()}
        for name, value in values.items():
            resolved[name] = self.by_name[name].check(value, where)
        return resolved
