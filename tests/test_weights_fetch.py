"""`detfuse weights fetch` stages weights for clusters without internet access: to a directory and to S3
(SeaweedFS), printing the `weights:` lines to paste; a staged directory pre-seeds a node's cache, and the printed
S3 line works as a trial's weights."""

import hashlib
import random

import pytest
import yaml
from weights_server import weights_server  # noqa: F401  (fixture)

import trainables
from detfuse.core.errors import UserError
from detfuse.core.weights_source import WeightsSpec, fetch_weights
from detfuse.stages.cli import main

ZOO_NAME = "COCO-Detection/tiny/1/model_final_a.pkl"
ZOO_BYTES = random.Random(1).randbytes(50_000)
RELEASE_BYTES = random.Random(2).randbytes(40_000)


@pytest.fixture
def served(weights_server, tmp_path, monkeypatch):  # noqa: F811
    """A zoo file and a release file on the loopback server, named as on the internet (through the mirror
    variables); a fresh cache."""
    monkeypatch.setenv("DETFUSE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("DETFUSE_DETECTRON2_ZOO_URL", weights_server.url + "/zoo")
    monkeypatch.setenv("DETFUSE_ULTRALYTICS_ASSETS_URL", weights_server.url + "/assets")
    weights_server.put(f"zoo/{ZOO_NAME}", ZOO_BYTES)
    weights_server.put("assets/yolov5su.pt", RELEASE_BYTES)
    return weights_server


def printed_weights(output):
    return [yaml.safe_load(line)["weights"] for line in output.splitlines() if line.startswith("weights:")]


def test_fetch_to_a_directory_prints_weights_lines_and_pre_seeds_a_cache(served, tmp_path, capsys, monkeypatch):
    staged = tmp_path / "staged"
    assert main(["weights", "fetch", f"detectron2://{ZOO_NAME}", "yolov5su.pt", "--to", str(staged),
                 "--sha256", hashlib.sha256(ZOO_BYTES).hexdigest(), "--sha256",
                 hashlib.sha256(RELEASE_BYTES).hexdigest()]) == 0
    lines = printed_weights(capsys.readouterr().out)
    assert lines == [
        {"source": str(staged / "detectron2" / ZOO_NAME), "sha256": hashlib.sha256(ZOO_BYTES).hexdigest()},
        {"source": str(staged / "ultralytics/yolov5su.pt"), "sha256": hashlib.sha256(RELEASE_BYTES).hexdigest()},
    ]
    assert (staged / "detectron2" / ZOO_NAME).read_bytes() == ZOO_BYTES

    # on an air-gapped node: the staged directory as the cache, and the names work without any download
    monkeypatch.setenv("DETFUSE_CACHE", str(tmp_path / "node-cache"))
    (tmp_path / "node-cache").mkdir()
    staged.rename(tmp_path / "node-cache" / "weights")
    requests = len(served.requests)
    for name, data in ((f"detectron2://{ZOO_NAME}", ZOO_BYTES), ("yolov5su.pt", RELEASE_BYTES)):
        _, named = trainables.named_weights(name)
        spec = WeightsSpec(name, hashlib.sha256(data).hexdigest())
        assert fetch_weights(spec, named, "node").read_bytes() == data
    assert len(served.requests) == requests


def test_fetch_to_s3_downloads_once_and_the_line_works_as_weights(served, s3_bucket, capsys, tmp_path,
                                                              monkeypatch):
    url = served.put("files/custom.pth", ZOO_BYTES)
    destination = f"s3://{s3_bucket}/weights"
    assert main(["weights", "fetch", url, "--to", destination]) == 0
    [line] = printed_weights(capsys.readouterr().out)
    host = url.removeprefix("http://").split("/")[0]
    assert line == {"source": f"{destination}/url/{host}/files/custom.pth",
                    "sha256": hashlib.sha256(ZOO_BYTES).hexdigest()}
    assert main(["weights", "fetch", url, "--to", destination]) == 0  # already cached: no second download
    assert len(served.gets("files/custom.pth")) == 1

    # another node (another cache) reads the staged copy from S3, verified by the printed checksum
    monkeypatch.setenv("DETFUSE_CACHE", str(tmp_path / "other-node"))
    assert fetch_weights(WeightsSpec(**line), None, "trial").read_bytes() == ZOO_BYTES
    assert len(served.gets("files/custom.pth")) == 1
    with pytest.raises(UserError, match="not the expected 0000.*: correct weights.sha256 or the S3 object$"):
        fetch_weights(WeightsSpec(line["source"], "0" * 64), None, "trial")


def test_fetch_failures_exit_2_naming_the_file(served, tmp_path, capsys):
    assert main(["weights", "fetch", f"{served.url}/nothing.pt", "--to", str(tmp_path / "d")]) == 2
    error = capsys.readouterr().err
    assert "detfuse weights fetch http" in error and "HTTP 404" in error
    assert main(["weights", "fetch", "yolov5su.pt", "--to", str(tmp_path / "d"), "--sha256", "f" * 64]) == 2
    error = capsys.readouterr().err
    assert "yolov5su.pt" in error and "not the expected " + "f" * 64 in error
    assert main(["weights", "fetch", "yolov5su.pt", "yolov5su.pt", "--to", str(tmp_path / "d"),
                 "--sha256", "f" * 64]) == 2
    assert "--sha256 was given 1 times for 2 names" in capsys.readouterr().err


def test_two_local_files_of_one_name_are_not_staged_over_each_other(tmp_path, capsys):
    for run in ("run1", "run2"):
        (tmp_path / run).mkdir()
        (tmp_path / run / "model_final.pth").write_bytes(run.encode())
    assert main(["weights", "fetch", str(tmp_path / "run1/model_final.pth"), str(tmp_path / "run2/model_final.pth"),
                 "--to", str(tmp_path / "staged")]) == 2
    error = capsys.readouterr().err
    assert f"detfuse weights fetch {tmp_path / 'run2/model_final.pth'}: it would be staged as model_final.pth" in error
    assert "rename one" in error
    assert (tmp_path / "staged/model_final.pth").read_bytes() == b"run1"
