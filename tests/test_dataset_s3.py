"""Datasets and files on S3, against a real SeaweedFS server: URIs, the once-per-node cached fetch, and errors."""

import multiprocessing
import os
import socket

import pytest
from test_dataset_validation import write_dataset

from detfuse.stages.cli import main
from detfuse.core.data import load_dataset
from detfuse.core.errors import UserError
from detfuse.core.storage import s3
from detfuse.core.storage.s3 import fetch, parse_s3_uri
from s3_uploads import upload_directory, upload_file


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DETFUSE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def uploaded(tmp_path, s3_bucket):
    """A tiny dataset uploaded to s3://<bucket>/sets/tiny/; returns (URI, local copy)."""
    local = write_dataset(tmp_path / "tiny")
    uri = f"s3://{s3_bucket}/sets/tiny"
    upload_directory(local, uri)
    return uri, local


@pytest.mark.parametrize("uri, parsed", [
    ("s3://bucket/a/b.json", ("bucket", "a/b.json")),
    ("s3://bucket/prefix/", ("bucket", "prefix/")),
    ("s3://bucket", ("bucket", "")),
])
def test_parse_s3_uri(uri, parsed):
    assert parse_s3_uri(uri) == parsed


@pytest.mark.parametrize("uri", ["s3:///key", "https://bucket/key", "bucket/key"])
def test_parse_s3_uri_rejects(uri):
    with pytest.raises(UserError, match="s3://BUCKET/KEY"):
        parse_s3_uri(uri)


def test_dataset_from_s3_matches_the_local_one(uploaded, private_cache, capsys):
    uri, local = uploaded
    dataset = load_dataset(uri)
    assert dataset.name == "tiny"
    assert dataset.root.parent == private_cache / "s3"
    assert dataset.fingerprint == load_dataset(local).fingerprint  # same bytes, same sizes
    assert (dataset.root / "images" / "train_1.png").read_bytes() == (local / "images" / "train_1.png").read_bytes()
    assert main(["data", "check", uri + "/"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert next(line for line in lines if line.startswith("train")).split()[1:3] == ["3", "6"]


def _fetch_counting_downloads(uri, cache, barrier):
    """Fetch in a fresh process, counting the GetObject requests this process sends."""
    import boto3

    os.environ["DETFUSE_CACHE"] = cache
    downloads = []
    boto3.setup_default_session()
    boto3.DEFAULT_SESSION.events.register("before-call.s3.GetObject", lambda **_: downloads.append(1))
    barrier.wait()
    return str(fetch(uri)), len(downloads)


def test_concurrent_fetches_download_once_per_node(uploaded, private_cache):
    uri, local = uploaded
    files = [p for p in local.rglob("*") if p.is_file()]
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager, context.Pool(3) as pool:
        barrier = manager.Barrier(3)
        results = [pool.apply_async(_fetch_counting_downloads, (uri + "/", str(private_cache), barrier))
                   for _ in range(3)]
        outcomes = [result.get(timeout=120) for result in results]
    assert len({path for path, _ in outcomes}) == 1
    assert sum(count for _, count in outcomes) == len(files)  # every object fetched once, by one process
    assert sorted(p.name for p in (private_cache / "s3").iterdir() if p.suffix != ".lock") == \
        [os.path.basename(outcomes[0][0])]  # and no half-downloaded folder left behind


def test_changed_objects_are_fetched_again(uploaded):
    uri, local = uploaded
    first = fetch(uri)
    assert fetch(uri) == first
    (local / "val.json").write_text((local / "val.json").read_text().replace('"width": 64', '"width": 64 '))
    upload_file(local / "val.json", f"{uri}/val.json")
    second = fetch(uri)
    assert second != first and (second / "val.json").read_bytes() == (local / "val.json").read_bytes()


def test_fetch_single_object(s3_bucket, tmp_path):
    weights = tmp_path / "model.pth"
    weights.write_bytes(os.urandom(2048))
    upload_file(weights, f"s3://{s3_bucket}/runs/best/model.pth")
    local = fetch(f"s3://{s3_bucket}/runs/best/model.pth")
    assert local.name == "model.pth" and local.read_bytes() == weights.read_bytes()


def test_missing_bucket(s3_server):
    with pytest.raises(UserError, match=r"bucket 'no-such-bucket-here' does not exist at http://127\.0\.0\.1"):
        fetch("s3://no-such-bucket-here/sets/tiny/")


def test_missing_prefix(uploaded):
    uri, _ = uploaded
    with pytest.raises(UserError, match="no objects at this URI"):
        load_dataset(uri.replace("/tiny", "/tiny-typo"))
    with pytest.raises(UserError, match="no objects at this URI"):
        fetch(uri.replace("/tiny", "/ti"))  # a key prefix of a folder name is not that folder


def test_unreachable_server(s3_server, monkeypatch):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{closed_port}")
    with pytest.raises(UserError, match=f"cannot reach S3 at http://127.0.0.1:{closed_port}.*AWS_ENDPOINT_URL"):
        load_dataset("s3://bucket/sets/tiny")


def forget_cached_credentials(monkeypatch):
    """boto3's default session keeps the credentials it found first; a new one reads the changed environment."""
    import boto3

    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)


def test_wrong_credentials(uploaded, monkeypatch):
    uri, _ = uploaded
    forget_cached_credentials(monkeypatch)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(UserError, match="access denied .*SignatureDoesNotMatch"):
        fetch(uri)


def test_no_credentials(s3_server, monkeypatch):
    forget_cached_credentials(monkeypatch)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(UserError, match="no AWS credentials found"):
        fetch("s3://bucket/sets/tiny")


def test_the_package_holds_no_test_only_upload_code():
    """Uploads of test data live in tests/s3_uploads.py; the package's S3 module downloads (exports go through
    detfuse.core.storage.store, with settings, checksums and encryption)."""
    assert not hasattr(s3, "upload_file") and not hasattr(s3, "upload_directory")
