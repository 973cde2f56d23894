"""`detfuse.json`: what every family's checkpoint directory says about itself (part of the trial contract).

{"family", "architecture", "hparams", "class_names", "category_ids", "epoch", "metrics", ...}: enough for the
ensemble, export and predict stages to load any checkpoint through its family without knowing its files.
"""

import json
from pathlib import Path

from detfuse.core.errors import UserError

FILE_NAME = "detfuse.json"


def write_meta(directory, family, meta):
    (Path(directory) / FILE_NAME).write_text(json.dumps({"family": family, **meta}, indent=2))


def read_meta(directory, family=None):
    """The checkpoint's metadata; a UserError when it is unreadable or (given `family`) of another family."""
    path = Path(directory) / FILE_NAME
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise UserError(f"{path}: not a readable detfuse checkpoint ({error})") from None
    if family is not None and meta.get("family") != family:
        raise UserError(f"{path}: a checkpoint of family '{meta.get('family')}', not {family}")
    return meta
