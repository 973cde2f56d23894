"""Datasets: the COCO contract every part of detfuse reads (see dataset.py), and its checks (the families derive their own formats from it)."""

from detfuse.core.data.dataset import Dataset, Split, load_dataset

__all__ = ["Dataset", "Split", "load_dataset"]
