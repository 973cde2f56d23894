"""The training data stream: detectron2's samplers and mapper, arranged so a run can stop and resume exactly.

detectron2's own loader cannot be resumed mid-run: its aspect-ratio buckets live inside an iterator, and its
augmentations draw from whatever global RNG state the (possibly forked) loader worker happens to have.
Here the main process decides every batch, as a list of (stream position, dataset index) pairs, and attaches
the stream state reached after it; each image is then augmented with numpy's RNG seeded from (run seed,
stream position). What a batch contains and how it is augmented depend only on the seed and the position,
whichever process maps it, and the state of the last batch trained on is all a checkpoint needs.
"""

import functools
import itertools

import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.common import DatasetFromList
from detectron2.data.samplers import RepeatFactorTrainingSampler, TrainingSampler
from detectron2.utils import comm

from detfuse.core.data import load_dataset
from trainables.detectron2.dataset_dicts import detectron2_dicts


def register_split(dataset_spec, dataset, split_name):
    """Register a split in detectron2's catalogs (once per process) and return its name there. The catalog's
    loader reads the split again when asked: holding this trial's records would keep them alive for the life of
    a process later trials reuse (detfuse hands its trainer the records directly)."""
    name = f"detfuse_{dataset.fingerprint[:16]}_{dataset.policy}_{split_name}"  # the policy repairs differently
    if name not in DatasetCatalog.list():
        DatasetCatalog.register(name, functools.partial(_read_split, str(dataset_spec), dataset.policy, split_name))
        MetadataCatalog.get(name).set(thing_classes=list(dataset.class_names),
                                      thing_dataset_id_to_contiguous_id={c: k for k, c in
                                                                         enumerate(dataset.category_ids)})
    return name


def _read_split(dataset_spec, policy, split_name):
    return detectron2_dicts(load_dataset(dataset_spec, policy), split_name)


def build_sampler(cfg, dicts):
    """detectron2's training sampler named in the config, seeded with the run seed (shared by all workers)."""
    if cfg.DATALOADER.SAMPLER_TRAIN == "RepeatFactorTrainingSampler":
        factors = RepeatFactorTrainingSampler.repeat_factors_from_category_frequency(
            dicts, cfg.DATALOADER.REPEAT_THRESHOLD)
        return RepeatFactorTrainingSampler(factors, seed=cfg.SEED)
    return TrainingSampler(len(dicts), seed=cfg.SEED)


class BatchStream:
    """This worker's batches, grouped by aspect ratio like detectron2's loader, as (position, index) pairs.

    `state` ({"drawn": indices taken from the sampler, "buckets": pending pairs per aspect group}) resumes
    the stream right after the batch it was attached to.
    """

    def __init__(self, sampler, dicts, batch_size, state=None):
        self.sampler = sampler
        self.groups = [int(d["width"] > d["height"]) for d in dicts]
        self.batch_size = batch_size
        self.rank, self.world_size = comm.get_rank(), comm.get_world_size()
        self.state = state or {"drawn": 0, "buckets": [[], []]}

    def __iter__(self):
        drawn = self.state["drawn"]
        buckets = [[tuple(pair) for pair in bucket] for bucket in self.state["buckets"]]
        for index in itertools.islice(iter(self.sampler), drawn, None):
            # the sampler hands this worker every world_size-th index of one shared stream
            position = drawn * self.world_size + self.rank
            drawn += 1
            bucket = buckets[self.groups[index]]
            bucket.append((position, index))
            if len(bucket) == self.batch_size:
                batch = list(bucket)
                bucket.clear()
                yield batch, {"drawn": drawn, "buckets": [[list(pair) for pair in b] for b in buckets]}


class MappedBatches(torch.utils.data.Dataset):
    """Maps a batch description from BatchStream to model inputs; runs in DataLoader workers or in-process."""

    def __init__(self, dicts, mapper, seed):
        self.dicts = DatasetFromList(dicts, copy=False)
        self.mapper = mapper
        self.seed = seed % 2**32

    def __getitem__(self, item):
        batch, state = item
        return [self.map_one(position, index) for position, index in batch], state

    def map_one(self, position, index):
        saved = np.random.get_state()
        np.random.seed(np.random.SeedSequence([self.seed, position]).generate_state(1)[0])
        try:
            return self.mapper(self.dicts[index])
        finally:
            np.random.set_state(saved)


def _as_is(items):
    return items


def build_batch_loader(stream, dataset, num_workers):
    """A DataLoader yielding (list of model inputs, stream state) in stream order.

    It has a generator of its own, so starting it never draws from the global torch RNG that training uses.
    """
    return torch.utils.data.DataLoader(
        dataset, sampler=stream, batch_size=None, collate_fn=_as_is, num_workers=num_workers,
        generator=torch.Generator(), persistent_workers=num_workers > 0,
    )
