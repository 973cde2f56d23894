"""Ultralytics' offline switches, which it reads once at import: `configure()` sets them before the first import.

Every module of this package calls `configure()` before it imports anything from ultralytics. Without it,
ultralytics probes the network at import (DNS check), may pip-install missing packages, keeps its settings in
the user's home and, through the settings file, turns on integrations (Ray Tune, MLflow, Comet...) that report
on their own or reach the internet. Here it gets a project-owned config directory under the detfuse cache,
offline mode, no auto-install, and every integration off: W&B and Tune reporting are done by detfuse itself.
"""

import logging
import os
import sys

from filelock import FileLock

from detfuse.core.node_cache import cache_root

# every integration ultralytics knows, off: detfuse reports to Tune and W&B itself
_SETTINGS = {
    "sync": False, "clearml": False, "comet": False, "dvc": False, "mlflow": False, "raytune": False,
    "tensorboard": False, "wandb": False, "vscode_msg": False, "openvino_msg": False,
}
_configured = False


def ultralytics_config_dir():
    return cache_root() / "ultralytics"


def configure():
    """Make ultralytics offline, importing it if needed; quiet until `set_verbosity` says otherwise. Idempotent."""
    global _configured
    if not _configured:
        if "ultralytics" in sys.modules:  # imported by someone else: accept it only if it came up offline
            import ultralytics.utils

            if ultralytics.utils.ONLINE or ultralytics.utils.AUTOINSTALL:
                raise RuntimeError(
                    "ultralytics was imported online or with auto-install on, before "
                    "trainables.yolov5.environment.configure(): call configure() before importing ultralytics"
                )
            _turn_integrations_off()
        else:
            config_dir = ultralytics_config_dir()
            config_dir.mkdir(parents=True, exist_ok=True)
            os.environ["YOLO_OFFLINE"] = "true"
            os.environ["YOLO_AUTOINSTALL"] = "false"
            os.environ["YOLO_CONFIG_DIR"] = str(config_dir)
            os.environ["YOLO_VERBOSE"] = "false"  # quiet import; set_verbosity() decides afterwards
            # never stream a run to Ultralytics Platform, whatever the user's shell holds
            os.environ.pop("ULTRALYTICS_API_KEY", None)
            # trials starting together share the settings file: one creates and updates it, the others wait
            with FileLock(str(config_dir / "settings.lock")):
                _turn_integrations_off()
        set_verbosity(False)
        _configured = True


def _turn_integrations_off():
    from ultralytics.utils import SETTINGS

    changed = {key: value for key, value in _SETTINGS.items() if SETTINGS.get(key) != value}
    if changed:
        SETTINGS.update(changed)


def set_verbosity(verbose):
    """Ultralytics' logger at INFO with its own progress bars when verbose, else at WARNING with none."""
    import ultralytics.utils

    ultralytics.utils.VERBOSE = verbose  # its progress bars read this flag each time they are created
    level = logging.INFO if verbose else logging.WARNING
    ultralytics.utils.LOGGER.setLevel(level)
    for handler in ultralytics.utils.LOGGER.handlers:
        handler.setLevel(level)
