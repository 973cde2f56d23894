"""`key=value` command-line overrides of YAML configs: dotted keys address nested mappings, values parse as YAML."""

import copy

import yaml

from detfuse.core.errors import UserError
from detfuse.core.yaml_files import Loader


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
