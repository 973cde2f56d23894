"""Datasets: the COCO contract every part of detfuse reads (see dataset.py), its checks and derived views."""

from detfuse.data.dataset import Dataset, Split, load_dataset

__all__ = ["Dataset", "Split", "load_dataset"]
