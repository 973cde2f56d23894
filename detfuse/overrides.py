"""`key=value` command-line overrides of YAML configs: dotted keys address nested mappings, values parse as YAML."""

import copy
import re

import yaml

from detfuse.errors import UserError




class Loader(yaml.SafeLoader):
    """Safe YAML that reads 1e-3 as a float, as YAML 1.2 does (YAML 1.1 wants a dot: 1.0e-3)."""


Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(\d+(\.\d*)?|\.\d+)[eE][-+]?\d+$"), list("-+0123456789."))


def apply_overrides(config, overrides, where="command line"):
    """Return a copy of `config` with each "a.b.c=value" in `overrides` applied."""
    config = copy.deepcopy(config)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise UserError(f"{where}: override '{item}' must look like key=value (e.g. hparams.lr=0.01)")
        try:
            value = yaml.load(text, Loader=Loader)
        except yaml.YAMLError as error:
            raise UserError(f"{where}: value of override '{item}' is not valid YAML: {error}") from None
        node = config
        parts = key.split(".")
        for depth, part in enumerate(parts):
            path = ".".join(parts[: depth + 1])
            last = depth == len(parts) - 1
            if isinstance(node, list):  # list items are addressed by index: spaces.0.num_samples=4
                if not part.isdigit() or int(part) >= len(node):
                    raise UserError(f"{where}: override '{item}': '{path}' is not an index of a {len(node)}-item list")
                part = int(part)
            elif not isinstance(node, dict):
                raise UserError(f"{where}: override '{item}': '{'.'.join(parts[:depth])}' is not a mapping or list")
            if last:
                node[part] = value
            else:
                if isinstance(node, dict):
                    node.setdefault(part, {})
                node = node[part]
    return config


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
