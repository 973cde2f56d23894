"""The one storage interface (detfuse/core/storage/store.py) and the experiment-storage URIs built on it behave
the same on a local directory and on S3."""

import pytest

from detfuse.core.errors import UserError
from detfuse.core.storage import experiment_storage
from detfuse.core.storage.store import open_store, sha256_of


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "store")
    return f"s3://{request.getfixturevalue('s3_bucket')}/experiments"


def test_read_write_exists_list_delete_and_put_with_its_sha256(root, tmp_path):
    store = open_store(root)
    assert store.read_bytes("a.json") is None and not store.exists("a.json") and store.names() == []
    store.write_bytes("a.json", b"{}")
    store.write_bytes("a.json", b'{"b": 1}')  # replaced whole
    source = tmp_path / "weights.bin"
    source.write_bytes(b"\0" * 1000)
    store.put(source, "run/weights.bin", sha256_of(source))
    assert store.read_bytes("a.json") == b'{"b": 1}' and store.exists("a.json") and store.exists("run")
    assert store.matches("run/weights.bin", 1000, sha256_of(source))
    assert store.names() == ["a.json", "run"]
    store.delete("a.json")
    assert not store.exists("a.json")


def test_a_folder_exists_whatever_sorts_before_it(root):
    store = open_store(root)
    store.write_bytes("run-old/x.json", b"{}")  # "run-old/..." sorts before "run/..."
    assert not store.exists("run")
    store.write_bytes("run/x.json", b"{}")
    assert store.exists("run") and store.exists("run/x.json") and not store.exists("run/x")


def test_experiment_storage_uris(root):
    uri = experiment_storage.join(root, "demo", "leaderboard.json")
    assert not experiment_storage.exists(uri)
    with pytest.raises(UserError, match="does not exist"):
        experiment_storage.read_json(uri)
    experiment_storage.write_text(uri, '[{"trial_id": "t1"}]')
    assert experiment_storage.read_json(uri) == [{"trial_id": "t1"}]
    experiment_storage.write_text(uri, "not json")
    with pytest.raises(UserError, match="leaderboard.json: not valid JSON"):
        experiment_storage.read_json(uri)
    experiment_storage.check_writable(experiment_storage.join(root, "demo"), "test")
    assert not experiment_storage.exists(experiment_storage.join(root, "demo", ".detfuse-write-probe"))
