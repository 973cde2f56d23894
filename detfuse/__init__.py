"""detfuse: search Detectron2 and YOLOv5 detectors with Ray Tune and fuse the best of both families."""

__version__ = "0.1.0"
