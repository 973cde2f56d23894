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


def test_wrong_checksum_fails_without_downloading_again_and_a_corrected_one_uses_the_download(
        weights_server):  # noqa: F811
    url = weights_server.put("model.pkl", PAYLOAD)
    entry = weights_cache_dir() / "url" / url.removeprefix("http://")
    for attempt in range(3):  # every trial start and retry on the node
        with pytest.raises(UserError) as error:
            fetch(url, "0" * 64)
        message = str(error.value)
        assert "trial T: weights " + url in message and SHA in message and "0" * 64 in message
        assert f"{entry}.sha256-{SHA}" in message and "remove" in message
    assert len(weights_server.gets("model.pkl")) == 1
    assert not entry.exists()
    assert fetch(url, SHA).read_bytes() == PAYLOAD  # the corrected checksum: the kept download, verified
    assert len(weights_server.gets("model.pkl")) == 1 and not list(entry.parent.glob("*.sha256-*"))


def test_a_continued_download_of_a_changed_file_starts_over(weights_server):  # noqa: F811
    url = weights_server.put("model.pth", PAYLOAD)
    weights_server.cut_after["/model.pth"] = 100_000
    with pytest.raises(UserError, match="run again to continue it"):
        fetch(url)
    new = PAYLOAD[::-1]
    weights_server.put("model.pth", new)  # the host replaced the file meanwhile: its ETag changed
    assert fetch(url, hashlib.sha256(new).hexdigest()).read_bytes() == new  # not the old start + the new end
    assert [r for _, r in weights_server.gets("model.pth")] == [None, "bytes=100000-"]


def test_a_server_ignoring_ranges_restarts_the_file(weights_server):  # noqa: F811
    url = weights_server.put("model.pth", PAYLOAD)
    weights_server.cut_after["/model.pth"] = 100_000
    with pytest.raises(UserError, match="stopped after 100000"):
        fetch(url)
    weights_server.ignore_range = True  # answers the Range request with the whole file (200)
    assert fetch(url, SHA).read_bytes() == PAYLOAD


def test_a_redirected_download_resumes_at_its_target(weights_server):  # noqa: F811
    weights_server.put("storage/abc123", PAYLOAD)
    weights_server.redirect["/releases/model.pt"] = "/storage/abc123"
    url = f"{weights_server.url}/releases/model.pt"
    weights_server.cut_after["/storage/abc123"] = 100_000
    with pytest.raises(UserError, match="stopped after 100000"):
        fetch(url, SHA)
    assert fetch(url, SHA) == weights_cache_dir() / "url" / url.removeprefix("http://")
    assert weights_server.gets("storage/abc123") == [("/storage/abc123", None), ("/storage/abc123", "bytes=100000-")]


def test_a_part_that_reached_the_end_is_kept(weights_server):  # noqa: F811
    """The last bytes arrived but the process died before the file was published: HTTP 416 says it is whole."""
    url = weights_server.put("model.pth", PAYLOAD)
    weights_server.cut_after["/model.pth"] = 100_000
    with pytest.raises(UserError):
        fetch(url)
    part = weights_cache_dir() / "url" / (url.removeprefix("http://") + ".part")
    with open(part, "ab") as out:
        out.write(PAYLOAD[100_000:])
    assert fetch(url, SHA).read_bytes() == PAYLOAD
    assert weights_server.gets("model.pth")[-1] == ("/model.pth", "bytes=300000-")


def test_a_body_without_length_cut_short_is_not_taken_as_the_file(weights_server):  # noqa: F811
    url = weights_server.put("model.pth", PAYLOAD)
    weights_server.send_length = False  # the body ends when the connection closes, early or not
    weights_server.cut_after["/model.pth"] = 100_000
    with pytest.raises(UserError, match="announced no length"):
        fetch(url)
    assert not (weights_cache_dir() / "url" / url.removeprefix("http://")).exists()


def test_urls_differing_in_their_query_are_cached_apart(weights_server):  # noqa: F811
    weights_server.put("model.pth", PAYLOAD)
    first = fetch(f"{weights_server.url}/model.pth?version=1")
    second = fetch(f"{weights_server.url}/model.pth?version=2")
    assert first != second and first.suffix == second.suffix == ".pth"
    assert first.parent == second.parent == weights_cache_dir() / "url" / weights_server.url.removeprefix("http://")
    assert fetch(f"{weights_server.url}/model.pth?version=1") == first
    assert len(weights_server.gets("model.pth?version=1")) == 1 and len(weights_server.gets("model.pth?version=2")) == 1


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
    ("https:///model.pth", "https:///model.pth is not a download URL"),
    ("http://h:abc/x.pt", "http://h:abc/x.pt is not a download URL"),
])
def test_bad_weights_settings_fail_at_the_boundary(weights, expected):
    config = {"architecture": "faster_rcnn", "weights": weights}
    with pytest.raises(UserError) as error:
        resolve_trial_config(config, "trial.yaml")
    assert str(error.value).startswith("trial.yaml: ") and expected in str(error.value)


def test_resolved_weights_keep_source_and_checksum():
    config = resolve_trial_config({"architecture": "yolov5s", "weights": {"source": "yolov5s.pt",
                                                                          "sha256": SHA.upper()}}, "t")
    assert config["weights"] == {"source": "yolov5s.pt", "sha256": SHA}
    assert resolve_trial_config({"architecture": "retinanet", "weights": "detectron2://R-50.pkl",
                                 "hparams": {"norm": "FrozenBN"}}, "t")["weights"]["sha256"] is None


def test_a_release_of_another_yolo_scale_is_refused_at_the_boundary():
    with pytest.raises(UserError) as error:
        resolve_trial_config({"architecture": "yolov5s", "weights": "yolov5nu.pt"}, "trial.yaml")
    message = str(error.value)
    assert message.startswith("trial.yaml: weights yolov5nu.pt holds a yolov5n model, but the architecture is yolov5s")
    assert "name the yolov5s file" in message


def test_a_local_file_named_like_a_release_is_used_whatever_the_trials_directory(tmp_path, monkeypatch):
    (tmp_path / "yolov5su.pt").write_bytes(PAYLOAD)
    monkeypatch.chdir(tmp_path)
    config = resolve_trial_config({"architecture": "yolov5s", "weights": "yolov5su.pt"}, "t")
    assert config["weights"]["source"] == str(tmp_path / "yolov5su.pt")
    monkeypatch.chdir("/")  # a Tune trial runs in its own directory
    assert fetch(config["weights"]["source"], SHA).read_bytes() == PAYLOAD


@pytest.mark.parametrize("variable, source", [
    ("DETFUSE_DETECTRON2_ZOO_URL", "detectron2://ImageNetPretrained/MSRA/R-50.pkl"),
    ("DETFUSE_ULTRALYTICS_ASSETS_URL", "yolov5su.pt"),
])
def test_a_mirror_that_is_not_a_url_is_refused_at_the_boundary(variable, source, monkeypatch):
    monkeypatch.setenv(variable, "mirror.internal/weights")
    architecture = "faster_rcnn" if source.startswith("detectron2://") else "yolov5s"
    with pytest.raises(UserError, match=rf"\${variable} = 'mirror.internal/weights' is not an http\(s\) URL: set it "
                                        "to the mirror's base URL"):
        resolve_trial_config({"architecture": architecture, "weights": source}, "trial.yaml")
