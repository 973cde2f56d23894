"""The per-member prediction cache on experiment storage, locally and on a real S3 server: it is reused only for
the same checkpoint, dataset and augmentation, and a checkpoint trained on other classes is refused."""

import json
from dataclasses import replace
from types import SimpleNamespace

import pytest

from detfuse.core.storage import experiment_storage
from detfuse.core.errors import UserError
from detfuse.core.evaluation import Prediction
from detfuse.stages.member_predictions import (Member, cache_key, cache_uri, local_checkpoint, read_cached,
                                        read_checkpoint_meta, with_tta, write_cached)

ROWS = [[1, 3, 10.0, 20.0, 30.5, 40.25, 0.75], [2, 7, 0.0, 0.0, 5.0, 5.0, 0.001]]


def member(checkpoint):
    return Member("trial_a", "yolov5", "yolov5n", checkpoint, 0.4)


def write_checkpoint(directory, category_ids):
    directory.mkdir(parents=True)
    (directory / "detfuse.json").write_text(json.dumps({"family": "yolov5", "category_ids": category_ids}))
    return directory


def round_trip(experiment_uri, checkpoint):
    m = member(checkpoint)
    key = cache_key(m, '{"epoch": 1}', "fingerprint-1", "val")
    uri = cache_uri(experiment_uri, m, "val")
    assert uri == f"{experiment_uri}/ensemble/predictions/trial_a-val.json"
    assert read_cached(uri, key) is None
    write_cached(uri, key, m, "val", "fingerprint-1", ROWS, 1.5)
    assert read_cached(uri, key) == [Prediction(1, 3, (10.0, 20.0, 30.5, 40.25), 0.75),
                                     Prediction(2, 7, (0.0, 0.0, 5.0, 5.0), 0.001)]
    # another checkpoint state, dataset, split, checkpoint URI or augmentation: another key, so no reuse
    flipped = replace(m, tta="hflip")
    for other in (cache_key(m, '{"epoch": 2}', "fingerprint-1", "val"),
                  cache_key(m, '{"epoch": 1}', "fingerprint-2", "val"),
                  cache_key(m, '{"epoch": 1}', "fingerprint-1", "test"),
                  cache_key(member(checkpoint + "x"), '{"epoch": 1}', "fingerprint-1", "val"),
                  cache_key(flipped, '{"epoch": 1}', "fingerprint-1", "val")):
        assert other != key and read_cached(uri, other) is None
    # and the flipped predictions have a file of their own: a plain and a flipped run never overwrite each other
    flipped_uri = cache_uri(experiment_uri, flipped, "val")
    assert flipped_uri == f"{experiment_uri}/ensemble/predictions/trial_a+hflip-val.json"
    flipped_key = cache_key(flipped, '{"epoch": 1}', "fingerprint-1", "val")
    write_cached(flipped_uri, flipped_key, flipped, "val", "fingerprint-1", ROWS[:1], 1.5)
    assert read_cached(flipped_uri, flipped_key) == [Prediction(1, 3, (10.0, 20.0, 30.5, 40.25), 0.75)]
    assert len(read_cached(uri, key)) == 2
    assert json.loads(experiment_storage.read_text(flipped_uri))["tta"] == "hflip"


def test_cache_round_trip_on_local_storage(tmp_path):
    round_trip(str(tmp_path / "experiment"), str(tmp_path / "checkpoint"))


def test_cache_round_trip_on_s3(s3_bucket):
    round_trip(f"s3://{s3_bucket}/runs/experiment", f"s3://{s3_bucket}/runs/experiment/trial_a/checkpoint_000001")


def test_a_damaged_cache_file_is_recomputed(tmp_path):
    uri = str(tmp_path / "trial_a-val.json")
    experiment_storage.write_text(uri, '{"key": "abc", "predictions": [[1, 3')
    assert read_cached(uri, "abc") is None


def test_checkpoint_meta_must_match_the_dataset_classes(tmp_path):
    checkpoint = write_checkpoint(tmp_path / "checkpoint_000001", [1, 2, 3])
    assert json.loads(read_checkpoint_meta(member(str(checkpoint)), SimpleNamespace(
        category_ids=[1, 2, 3], name="litter")))["category_ids"] == [1, 2, 3]
    with pytest.raises(UserError, match=r"trial trial_a was trained on category ids \[1, 2, 3\], but dataset "
                                        r"'litter' has \[1, 2\]") as raised:
        read_checkpoint_meta(member(str(checkpoint)), SimpleNamespace(category_ids=[1, 2], name="litter"))
    assert str(checkpoint / "detfuse.json") in str(raised.value)


def test_a_checkpoint_missing_on_this_node_is_explained(tmp_path):
    assert local_checkpoint(str(tmp_path)) == tmp_path
    with pytest.raises(UserError, match="is not a directory on this node.*must be shared"):
        local_checkpoint(str(tmp_path / "gone"))


def test_hflip_adds_a_flipped_member_per_trial_after_the_plain_ones():
    trials = [member("/c/a"), replace(member("/c/b"), trial_id="trial_b", family="detectron2")]
    assert with_tta(trials, "none") == trials
    inputs = with_tta(trials, "hflip")
    assert [m.name for m in inputs] == ["trial_a", "trial_b", "trial_a+hflip", "trial_b+hflip"]
    assert [m.family for m in inputs] == ["yolov5", "detectron2", "yolov5", "detectron2"]
    assert inputs[3].checkpoint == "/c/b" and inputs[3].tta == "hflip"
    with pytest.raises(UserError, match="--tta vflip: valid values are none, hflip"):
        with_tta(trials, "vflip")
