"""Image-level repeat-factor sampling for YOLO training, with the meaning of detectron2's RepeatFactorTrainingSampler.

For each class c, f_c is the fraction of training images that contain c; its repeat factor is
r_c = max(1, sqrt(t / f_c)) for the threshold t, and an image's factor is the largest over its classes (1 for
an image without objects). Each epoch rounds every factor stochastically (r = 2.3 becomes 2 or 3 copies, 3 with
probability 0.3) and shuffles the copies, exactly as detectron2 does.

Unlike detectron2, which counts iterations, Ultralytics counts epochs and schedules its learning rate,
warmup and close_mosaic in them. So one epoch here draws exactly as many images as the training set holds, the
first len(dataset) of the shuffled copies: rare-class images come more often and common ones less, while an
epoch stays one training set's worth of images for both families (epoch = images seen / training images).
Each epoch's order depends only on (seed, epoch), so a resumed trial continues the same sequence.
"""

import math

import numpy as np
import torch.utils.data


def repeat_factors(image_classes, threshold):
    """One repeat factor per image; `image_classes` holds the set of class indexes present in each image."""
    num_images = len(image_classes)
    counts = {}
    for classes in image_classes:
        for c in classes:
            counts[c] = counts.get(c, 0) + 1
    class_factor = {c: max(1.0, math.sqrt(threshold / (n / num_images))) for c, n in counts.items()}
    return np.array([max((class_factor[c] for c in classes), default=1.0) for classes in image_classes])


class RepeatFactorSampler(torch.utils.data.Sampler):
    """Yields one epoch of dataset indexes per iteration, drawn by repeat factor (all 1: a plain shuffle).

    Epochs are numbered by `next_epoch`, which each `iter()` advances: Ultralytics' loader asks for the next
    epoch's order ahead of time when its workers prefetch, so the sampler counts epochs itself. Whoever restarts
    the loader mid-run (resume, closing mosaic) sets `next_epoch` to the epoch about to start.
    """

    def __init__(self, factors, seed, next_epoch=0):
        self.factors = np.asarray(factors, dtype=np.float64)
        self.seed = seed
        self.next_epoch = next_epoch

    def __len__(self):
        return len(self.factors)

    def epoch_indices(self, epoch):
        rng = np.random.default_rng([self.seed, epoch])
        whole = np.floor(self.factors)
        copies = (whole + (rng.random(len(self.factors)) < self.factors - whole)).astype(np.int64)
        drawn = rng.permutation(np.repeat(np.arange(len(self.factors)), copies))
        return drawn[: len(self.factors)]  # every image has at least one copy, so there are enough

    def __iter__(self):
        indices = self.epoch_indices(self.next_epoch)
        self.next_epoch += 1
        return iter(indices.tolist())
