"""Reading YAML config files: one loader for every config (experiment, search space, trial, dataset)."""

import re

import yaml

from detfuse.core.errors import UserError


class Loader(yaml.SafeLoader):
    """Safe YAML that reads 1e-3 as a float, as YAML 1.2 does (YAML 1.1 wants a dot: 1.0e-3)."""


Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(\d+(\.\d*)?|\.\d+)[eE][-+]?\d+$"), list("-+0123456789."))


def load_yaml(path, what):
    """Read a YAML mapping from `path`, with a UserError naming the file when it is missing or malformed."""
    try:
        with open(path) as f:
            data = yaml.load(f, Loader=Loader)
    except OSError as error:
        raise UserError(f"{path}: cannot read {what}: {error.strerror}") from None
    except yaml.YAMLError as error:
        raise UserError(f"{path}: {what} is not valid YAML: {error}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: {what} must be a YAML mapping, got {type(data).__name__}")
    return data
