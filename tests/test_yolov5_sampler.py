"""The repeat-factor sampler: detectron2's repeat factors, and rare-class images drawn more often by the real
Ultralytics training loader."""

import math

import numpy as np
import pytest
from yolov5_trials import trial_config, yolo_cache  # noqa: F401  (fixture)

from trainables.yolov5.sampler import RepeatFactorSampler, repeat_factors


def test_repeat_factors_follow_detectron2():
    # class 0 in 9 of 10 images, class 1 in 1, class 2 in 4; the last image holds no objects
    image_classes = [{0, 1}, {0, 2}, {0, 2}, {0, 2}, {0, 2}, {0}, {0}, {0}, {0}, set()]
    factors = repeat_factors(image_classes, threshold=0.8)
    r1, r2 = math.sqrt(0.8 / 0.1), math.sqrt(0.8 / 0.4)  # class 0: sqrt(0.8 / 0.9) < 1, so 1
    assert factors.tolist() == pytest.approx([r1, r2, r2, r2, r2, 1, 1, 1, 1, 1])  # an image: its rarest class
    assert repeat_factors(image_classes, threshold=0.0).tolist() == [1.0] * 10


def test_stochastic_rounding_draws_in_proportion_and_replays_by_epoch():
    factors = np.array([1.0, 1.0, 2.5, 1.0, 1.3, 1.0, 1.0, 1.0])
    sampler = RepeatFactorSampler(factors, seed=7)
    epochs = [list(sampler) for _ in range(4000)]
    assert sampler.next_epoch == 4000 and all(len(e) == len(factors) for e in epochs)
    draws = np.bincount(np.concatenate(epochs), minlength=len(factors)) / len(epochs)
    # each epoch keeps len(dataset) of the shuffled copies: image i is drawn r_i * N / sum(r) times on average
    expected = factors * len(factors) / factors.sum()
    assert draws == pytest.approx(expected, rel=0.04)
    assert RepeatFactorSampler(factors, seed=7).epoch_indices(3).tolist() == epochs[3]  # resumable by epoch
    assert epochs[3] != epochs[4]
    # without repeats every epoch is a permutation
    plain = RepeatFactorSampler(np.ones(8), seed=0)
    assert sorted(plain.epoch_indices(5).tolist()) == list(range(8))


def test_rare_class_images_are_drawn_more_often_by_the_training_loader(yolo_cache, tmp_path):  # noqa: F811
    from trainables.yolov5.trainable import build_trainer

    shares = {}
    for threshold in (0.0, 0.5):
        trainer = build_trainer(trial_config(1, repeat_threshold=threshold), tmp_path / str(threshold))
        loader = trainer.get_dataloader(trainer.data["train"], batch_size=16, rank=-1, mode="train")
        dataset = loader.dataset
        assert trainer.data["names"][4] == "battery" and loader.sampler is trainer.sampler
        rare = {file for i, file in enumerate(dataset.im_files) if 4 in dataset.labels[i]["cls"].ravel()}
        # one real epoch through Ultralytics' loader: the images it yields are the sampler's order for epoch 0
        files = [file for batch in loader for file in batch["im_file"]]
        assert files == [dataset.im_files[i] for i in trainer.sampler.epoch_indices(0)]
        assert len(files) == len(dataset)  # an epoch is one training set's worth of images either way
        drawn = [dataset.im_files[i] for epoch in range(1, 41) for i in trainer.sampler.epoch_indices(epoch)]
        shares[threshold] = sum(file in rare for file in drawn) / len(drawn)
        base_share = len(rare) / len(dataset)
    assert shares[0.0] == pytest.approx(base_share)
    # measured here: 0.225 -> 0.298 (crowded scenes hold a battery more often than not, so they are less rare)
    assert shares[0.5] > 1.25 * shares[0.0], shares
