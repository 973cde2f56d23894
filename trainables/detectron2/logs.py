"""Quiet by default: detectron2 and fvcore log warnings only, and notices that say nothing about the user's run
are hidden; `verbose` restores detectron2's own INFO logs, as its tools print them."""

import logging
import warnings

_FRAMEWORK_LOGGERS = ("detectron2", "fvcore")

_NOTICES = (
    # raised by detectron2 v0.6's own code on today's torch and setuptools
    r"`torch\.jit\.script` is deprecated",
    r"torch\.meshgrid: in an upcoming release",
    r"pkg_resources is deprecated as an API",
    # AMP: the gradient scaler skips the optimizer step of an overflowing batch while the schedule moves on
    r"Detected call of `lr_scheduler\.step\(\)` before `optimizer\.step\(\)`",
)


def configure(verbose, rank=0):
    """Call before importing detectron2's modules (the deprecation notices fire at import)."""
    if verbose:
        from detectron2.utils.logger import setup_logger

        for name in _FRAMEWORK_LOGGERS:
            setup_logger(name=name, distributed_rank=rank, abbrev_name={"detectron2": "d2"}.get(name, name))
        return
    for name in _FRAMEWORK_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    hide_notices()


def hide_notices():
    """Warning filters only (logger levels untouched), for processes that just predict."""
    for message in _NOTICES:
        warnings.filterwarnings("ignore", message=message)
