"""Fixes for detectron2 v0.6 (the PyPI fallback build) on today's Pillow and torch, applied only when needed.

Import detectron2 through `import_detectron2()` so the fixes are in place before its modules load.
"""

import PIL.Image


def _pillow_linear_alias():
    # detectron2 v0.6 transforms default to Image.LINEAR, removed in Pillow 10 (it was an alias of BILINEAR)
    if not hasattr(PIL.Image, "LINEAR"):
        PIL.Image.LINEAR = PIL.Image.BILINEAR


def import_detectron2():
    """Apply the compatibility fixes, then import and return the detectron2 package."""
    _pillow_linear_alias()
    import detectron2

    return detectron2
