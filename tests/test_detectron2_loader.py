"""The resumable training stream: batches and their augmentation depend only on the seed and the stream
position, so loader worker processes (the GPU setting) and a resume mid-run see exactly the same data."""

import itertools

import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2_trials import tiny_dataset  # noqa: F401  (fixture)

from detfuse.core.data import load_dataset
from trainables.detectron2.dataset_dicts import detectron2_dicts
from trainables.detectron2 import ARCHITECTURES, loader
from trainables.detectron2.trainer import Trainer


@pytest.fixture(scope="module")
def stream_parts(tiny_dataset):  # noqa: F811
    adapter = ARCHITECTURES["faster_rcnn"]
    # random flips and a choice of two sizes: augmentation that would differ if it drew from process RNGs
    cfg = adapter.build_config(adapter.resolve({"batch_size": 3, "repeat_threshold": 0.5}, "test"), 5)
    cfg.defrost()
    cfg.INPUT.MIN_SIZE_TRAIN = (96, 128)
    cfg.freeze()
    return cfg, detectron2_dicts(load_dataset(tiny_dataset), "train")


def batches(cfg, dicts, count, workers, state=None):
    cfg = cfg.clone()
    cfg.defrost()
    cfg.DATALOADER.NUM_WORKERS = workers
    return list(itertools.islice(Trainer.build_train_loader(cfg, dicts, state), count))


def same_batches(first, second):
    for (inputs_a, state_a), (inputs_b, state_b) in zip(first, second, strict=True):
        assert state_a == state_b
        for a, b in zip(inputs_a, inputs_b, strict=True):
            assert a["image_id"] == b["image_id"] and torch.equal(a["image"], b["image"])
            assert torch.equal(a["instances"].gt_boxes.tensor, b["instances"].gt_boxes.tensor)


def test_loader_workers_change_nothing(stream_parts):
    cfg, dicts = stream_parts
    in_process = batches(cfg, dicts, 6, workers=0)
    same_batches(in_process, batches(cfg, dicts, 6, workers=2))
    # 6 batches of 3 draw 18 images from 12: the second pass over the data is augmented afresh
    sizes = {tuple(x["image"].shape[1:]) for inputs, _ in in_process for x in inputs}
    assert len(sizes) > 1 and in_process[-1][1]["drawn"] == 18


def test_stream_resumes_after_any_batch(stream_parts):
    cfg, dicts = stream_parts
    straight = batches(cfg, dicts, 5, workers=0)
    for stop in (1, 3):
        same_batches(straight[stop:], batches(cfg, dicts, 5 - stop, workers=0, state=straight[stop - 1][1]))


def test_seed_changes_the_stream(stream_parts):
    cfg, dicts = stream_parts
    other = cfg.clone()
    other.defrost()
    other.SEED = cfg.SEED + 1
    first, second = batches(cfg, dicts, 2, workers=0), batches(other, dicts, 2, workers=0)
    assert [x["image_id"] for x in first[0][0]] != [x["image_id"] for x in second[0][0]]


def test_the_catalog_reads_a_split_again_instead_of_holding_a_trials_records(tiny_dataset):  # noqa: F811
    """detectron2 tools may ask DatasetCatalog for a split by name; the catalog must answer with the records, but
    not keep a trial's records alive in a process that later trials reuse."""
    dataset = load_dataset(tiny_dataset)
    records = detectron2_dicts(dataset, "val")
    name = loader.register_split(tiny_dataset, dataset, "val")
    assert loader.register_split(tiny_dataset, dataset, "val") == name  # registered once per process
    assert DatasetCatalog.get(name) == records
    assert MetadataCatalog.get(name).thing_classes == list(dataset.class_names)
    assert DatasetCatalog.get(name) is not DatasetCatalog.get(name)  # read on request, not held
