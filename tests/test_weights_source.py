"""Pretrained weights by URL or published name: fetched once per node into the cache (also by concurrent
processes), resumed after an interruption, verified by sha256, pre-seedable, resolved as detectron2 and
Ultralytics resolve their own names; bad settings fail at the trial-config boundary. All over a loopback server."""

import hashlib
import multiprocessing
import os
import random

import pytest
from weights_server import weights_server  # noqa: F401  (fixture)

import trainables
from detfuse.core.errors import UserError
from detfuse.core.weights_source import WeightsSpec, fetch_weights, weights_cache_dir
from trainables.trial_config import resolve_trial_config

PAYLOAD = random.Random(16).randbytes(300_000)  # the same in the spawned processes
SHA = hashlib.sha256(PAYLOAD).hexdigest()


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DETFUSE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def fetch(source, sha256=None):
    family, named = trainables.named_weights(source, "test")
    return fetch_weights(WeightsSpec(source, sha256), named, "trial T: weights " + source)


def test_url_is_fetched_once_into_a_readable_cache_path(weights_server):  # noqa: F811
    url = weights_server.put("models/detector.pth", PAYLOAD)
    first = fetch(url, SHA)
    assert first == weights_cache_dir() / "url" / url.removeprefix("http://")  # url/127.0.0.1:PORT/models/...
    assert first.read_bytes() == PAYLOAD
    assert fetch(url, SHA) == first and fetch(url) == first
    assert len(weights_server.gets("models/detector.pth")) == 1
    assert not list(first.parent.glob("*.part"))


def _fetch_in_process(args):
    cache, url = args
    os.environ["DETFUSE_CACHE"] = cache
    return str(fetch(url, SHA))


def test_concurrent_processes_on_one_node_download_once(weights_server, cache):  # noqa: F811
    url = weights_server.put("shared.pt", PAYLOAD)
    weights_server.delay_s = 0.5  # the first request is still in flight when the others ask
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        paths = pool.map(_fetch_in_process, [(str(cache), url)] * 4)
    assert len(set(paths)) == 1 and open(paths[0], "rb").read() == PAYLOAD
    assert len(weights_server.gets("shared.pt")) == 1


def test_wrong_checksum_fails_and_caches_nothing(weights_server):  # noqa: F811
    url = weights_server.put("model.pkl", PAYLOAD)
    with pytest.raises(UserError) as error:
        fetch(url, "0" * 64)
    message = str(error.value)
    assert "trial T: weights " + url in message and SHA in message and "0" * 64 in message
    assert not [p for p in weights_cache_dir().rglob("*") if p.is_file() and not p.name.endswith(".lock")]
    assert fetch(url, SHA).read_bytes() == PAYLOAD  # the right checksum then downloads it afresh


def test_missing_file_and_unreachable_host_say_what_failed(weights_server):  # noqa: F811
    with pytest.raises(UserError, match=r"trial T: weights .*missing\.pth: downloading .* HTTP 404"):
        fetch(f"{weights_server.url}/missing.pth")
    closed = weights_server.url.rsplit(":", 1)[0] + ":9"  # the discard port: nothing listens on loopback
    with pytest.raises(UserError, match="cannot reach .*detfuse weights fetch"):
        fetch(f"{closed}/model.pth")


def test_interrupted_download_resumes_where_it_stopped(weights_server):  # noqa: F811
    url = weights_server.put("big.pth", PAYLOAD)
    weights_server.cut_after["/big.pth"] = 100_000
    with pytest.raises(UserError, match="stopped after 100000 of 300000 bytes"):
        fetch(url, SHA)
    entry = weights_cache_dir() / "url" / url.removeprefix("http://")
    assert not entry.exists() and entry.with_name("big.pth.part").stat().st_size == 100_000
    assert fetch(url, SHA).read_bytes() == PAYLOAD
    assert weights_server.gets("big.pth") == [("/big.pth", None), ("/big.pth", "bytes=100000-")]


def test_pre_seeded_cache_is_used_and_verified(weights_server, monkeypatch):  # noqa: F811
    monkeypatch.setenv("DETFUSE_DETECTRON2_ZOO_URL", weights_server.url)  # serves nothing: any download 404s
    seeded = weights_cache_dir() / "detectron2/COCO-Detection/x/1/model_final.pkl"
    seeded.parent.mkdir(parents=True)
    seeded.write_bytes(PAYLOAD)
    assert fetch("detectron2://COCO-Detection/x/1/model_final.pkl", SHA) == seeded
    assert weights_server.requests == []
    with pytest.raises(UserError, match=f"{seeded}.*not the expected {'1' * 64}.*remove"):
        fetch("detectron2://COCO-Detection/x/1/model_final.pkl", "1" * 64)


def test_published_names_resolve_like_the_frameworks_own(weights_server, monkeypatch):  # noqa: F811
    from detectron2.utils.file_io import Detectron2Handler

    name = "COCO-Detection/faster_rcnn_R_50_FPN_3x/137849458/model_final_280758.pkl"
    family, named = trainables.named_weights(f"detectron2://{name}")
    assert family == "detectron2" and named.url == Detectron2Handler.S3_DETECTRON2_PREFIX + name

    from trainables.yolov5 import environment

    environment.configure()
    from ultralytics.utils import downloads

    asked = []
    monkeypatch.setattr(downloads, "safe_download", lambda url, **kwargs: asked.append(url))
    monkeypatch.chdir(weights_server.root.parent)
    for legacy in ("yolov5su.pt", "yolov5s.pt"):
        downloads.attempt_download_asset(legacy)
        assert trainables.named_weights(legacy) == ("yolov5", trainables.named_weights("yolov5su.pt")[1])
        assert trainables.named_weights(legacy)[1].url == asked[-1]

    # a mirror: the names keep their cache paths
    monkeypatch.setenv("DETFUSE_ULTRALYTICS_ASSETS_URL", weights_server.url + "/assets")
    weights_server.put("assets/yolov5nu.pt", PAYLOAD)
    assert fetch("yolov5n.pt", SHA) == weights_cache_dir() / "ultralytics/yolov5nu.pt"


@pytest.mark.parametrize("weights, expected", [
    ({"source": "yolov5su.pt", "sha": "x"}, "unknown key(s) sha in 'weights'; valid keys: source, sha256"),
    ({"source": "https://h/m.pt", "sha256": "abc"}, "weights.sha256 must be 64 hexadecimal digits"),
    ({"sha256": SHA}, "'source' is missing"),
    (["a.pt"], "'weights' must be a local path, an s3:// URI, an http(s):// URL"),
    ("missing/model.pth", "weights missing/model.pth does not exist"),
    ("yolov5su.pt", "weights yolov5su.pt is a yolov5 checkpoint, but faster_rcnn is a detectron2 model"),
    ("detectron2://a/../../etc/passwd", "is not a file path"),
    ("https:///model.pth", None),  # no host: refused when fetched (below), the boundary fetches nothing
])
def test_bad_weights_settings_fail_at_the_boundary(weights, expected):
    config = {"architecture": "faster_rcnn", "weights": weights}
    if expected is None:
        resolve_trial_config(config, "trial.yaml")
        with pytest.raises(UserError, match="names no host"):
            fetch(weights)
        return
    with pytest.raises(UserError) as error:
        resolve_trial_config(config, "trial.yaml")
    assert str(error.value).startswith("trial.yaml: ") and expected in str(error.value)


def test_resolved_weights_keep_source_and_checksum():
    config = resolve_trial_config({"architecture": "yolov5s", "weights": {"source": "yolov5s.pt",
                                                                          "sha256": SHA.upper()}}, "t")
    assert config["weights"] == {"source": "yolov5s.pt", "sha256": SHA}
    assert resolve_trial_config({"architecture": "retinanet", "weights": "detectron2://R-50.pkl",
                                 "hparams": {"norm": "FrozenBN"}}, "t")["weights"]["sha256"] is None
