"""Trials of both families fine-tune from served checkpoints in each family's real formats (detectron2 model-zoo
.pkl and .pth, an Ultralytics .pt holding a pickled model), fetched once per node from a loopback server by URL or
published name; a wrong sha256 or another family's file fails before training, naming the trial and the source.
A class count other than the dataset's re-initialises the head, and the trial's log says so."""

import hashlib
import io
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from detectron2_trials import TINY_HPARAMS, d2_cache, tiny_dataset  # noqa: F401  (fixtures)
from local_runs import train_in_local_run
from weights_server import module_weights_server  # noqa: F401  (fixture)
from yolov5_trials import FAST_HPARAMS

from detfuse.core.errors import UserError
from trainables.detectron2 import checkpoints as d2_checkpoints
from trainables.trial_config import resolve_trial_config
from trainables.yolov5 import checkpoint as yolo_checkpoint

# one step at a negligible lr keeps the loaded tensors (YOLOv5's lowest lr is 1e-6)
TINY_LR = {"faster_rcnn": 1e-7, "retinanet": 1e-7, "cascade_rcnn": 1e-7, "yolov5n": 1e-6}


def trial(architecture, dataset, weights, **hparams):
    tiny = TINY_HPARAMS.get(architecture, FAST_HPARAMS)
    return resolve_trial_config({"architecture": architecture, "dataset": str(dataset), "max_epochs": 1 / 3,
                                 "hparams": {**tiny, "lr": TINY_LR[architecture], **hparams}, "weights": weights,
                                 "seed": 7}, "pretrained trial")


def detectron2_state(architecture, num_classes, seed):
    """The state dict of a freshly built tiny detectron2 model (as a zoo checkpoint's would be, at tiny sizes)."""
    from detectron2.modeling import build_model

    from trainables.detectron2.adapters import ARCHITECTURES, Schedule

    hparams = trial(architecture, "builtin", None)["hparams"]
    cfg = ARCHITECTURES[architecture].build_config(hparams, num_classes, Schedule.from_epochs(hparams, 12, 1, 1), seed)
    cfg.defrost()
    cfg.MODEL.DEVICE = "cpu"
    torch.manual_seed(seed)
    return build_model(cfg).state_dict()


def zoo_pkl(state):
    """detectron2's model-zoo format: a pickle of numpy arrays under "model", with "__author__"."""
    return pickle.dumps({"model": {k: v.numpy() for k, v in state.items()}, "__author__": "Detectron2 Model Zoo"})


def torch_bytes(value):
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def ultralytics_pt(num_classes):
    """Ultralytics' release format: the model itself pickled (in half precision) under "model"."""
    from trainables.yolov5 import environment

    environment.configure()
    from trainables.yolov5.predictor import build_model

    torch.manual_seed(3)
    model = build_model("yolov5n", num_classes)
    return model, torch_bytes({"model": model.half(), "train_args": {}, "epoch": -1})


def assert_loaded(trained, served, names):
    for name in names:
        assert (trained[name].float() - served[name].float()).abs().max() < 1e-5, name


def test_model_zoo_name_fine_tunes_faster_rcnn_with_a_new_head_fetched_once(
        module_weights_server, tiny_dataset, d2_cache, tmp_path, monkeypatch, capfd):  # noqa: F811
    served = detectron2_state("faster_rcnn", num_classes=3, seed=1)  # the dataset has 5 classes
    module_weights_server.put("zoo/COCO-Detection/tiny_rcnn/1/model_final_x.pkl", zoo_pkl(served))
    monkeypatch.setenv("DETFUSE_DETECTRON2_ZOO_URL", module_weights_server.url + "/zoo/")
    config = trial("faster_rcnn", tiny_dataset, "detectron2://COCO-Detection/tiny_rcnn/1/model_final_x.pkl")

    for run_name in ("first", "second"):
        run = train_in_local_run(config, tmp_path / run_name)
        trained = d2_checkpoints.read_model_state(run.latest_checkpoint())
        assert_loaded(trained, served, [k for k in served if k.startswith("backbone.")])
        assert trained["roi_heads.box_predictor.cls_score.weight"].shape[0] == 6  # 5 classes + background
    log = capfd.readouterr().err
    assert f"trial in {tmp_path / 'first'}: weights detectron2://COCO-Detection/tiny_rcnn" in log
    assert "the classification head was re-initialised" in log and "cls_score.weight (4, 256) -> (6, 256)" in log
    assert len(module_weights_server.gets("zoo/COCO-Detection/tiny_rcnn/1/model_final_x.pkl")) == 1


@pytest.mark.parametrize("architecture, file, classes", [("retinanet", "retinanet.pth", 5),
                                                         ("cascade_rcnn", "cascade.pkl", 3)])
def test_url_fine_tunes_each_detectron2_architecture(module_weights_server, tiny_dataset, d2_cache, tmp_path,
                                                     capfd, architecture, file, classes):  # noqa: F811
    served = detectron2_state(architecture, num_classes=classes, seed=2)
    data = torch_bytes(served) if file.endswith(".pth") else zoo_pkl(served)
    url = module_weights_server.put(f"files/{file}", data)
    run = train_in_local_run(trial(architecture, tiny_dataset, {"source": url,
                                                                "sha256": hashlib.sha256(data).hexdigest()}),
                             tmp_path)
    trained = d2_checkpoints.read_model_state(run.latest_checkpoint())
    same_shape = [k for k in served if k in trained and trained[k].shape == served[k].shape]
    assert_loaded(trained, served, [k for k in same_shape if "backbone" in k or "anchor" not in k][:40])
    log = capfd.readouterr().err
    if classes == 5:
        assert f"loaded {len(trained)} of {len(trained)} tensors" in log and "re-initialised" not in log
    else:
        assert "the classification head was re-initialised" in log
        assert "roi_heads.box_predictor.2.cls_score.weight" in log


def test_wrong_checksum_or_another_familys_file_fails_before_training(
        module_weights_server, tiny_dataset, d2_cache, tmp_path):  # noqa: F811
    _, yolo_file = ultralytics_pt(5)
    url = module_weights_server.put("files/yolo-for-d2.pt", yolo_file)
    config = trial("retinanet", tiny_dataset, {"source": url, "sha256": "ab" * 32})
    with pytest.raises(UserError, match=f"trial in {tmp_path / 'a'}: weights {url}: .*not the expected abab"):
        train_in_local_run(config, tmp_path / "a")
    assert not list((tmp_path / "a").glob("checkpoint_*"))
    # a downloaded file that is no checkpoint stays in the cache: the message says how to get rid of it
    with pytest.raises(UserError, match=f"(?s)weights {url}: not a detectron2 checkpoint.*downloaded to "
                                        f"{d2_cache}/weights/url/.*remove it on each node"):
        train_in_local_run({**config, "weights": {"source": url, "sha256": None}}, tmp_path / "b")

    d2_file = module_weights_server.put("files/d2-for-yolo.pth", torch_bytes(detectron2_state("retinanet", 5, 0)))
    with pytest.raises(UserError, match=f"(?s)weights {d2_file}: not an Ultralytics checkpoint.*remove it on each node"):
        train_in_local_run(trial("yolov5n", tiny_dataset, d2_file), tmp_path / "c")


def test_release_name_fine_tunes_yolov5_with_a_new_head(module_weights_server, tiny_dataset, d2_cache, tmp_path,
                                                        monkeypatch, capfd):  # noqa: F811
    model, data = ultralytics_pt(3)
    module_weights_server.put("assets/yolov5nu.pt", data)
    monkeypatch.setenv("DETFUSE_ULTRALYTICS_ASSETS_URL", module_weights_server.url + "/assets")
    config = trial("yolov5n", tiny_dataset, {"source": "yolov5n.pt", "sha256": hashlib.sha256(data).hexdigest()})
    run = train_in_local_run({**config, "max_epochs": 1.0}, tmp_path)
    trained = yolo_checkpoint.read_weights(run.latest_checkpoint())
    served = model.float().state_dict()
    assert_loaded(trained, served, ["model.0.conv.weight", "model.4.m.0.cv1.conv.weight", "model.9.cv2.conv.weight"])
    assert trained["model.24.cv3.0.2.weight"].shape[0] == 5
    log = capfd.readouterr().err
    assert "weights yolov5n.pt: loaded" in log
    assert "classification layers were re-initialised for 5 classes (the checkpoint's were for 3)" in log
    assert len(module_weights_server.gets("assets/yolov5nu.pt")) == 1


def test_a_legacy_named_file_on_disk_is_loaded_not_swapped(tiny_dataset, d2_cache, tmp_path, monkeypatch,
                                                         request):  # noqa: F811
    """Ultralytics reads a path ending in yolov5n.pt with no 'u' in it as the legacy name of the yolov5nu.pt release
    and downloads that instead (so the file is put in a directory without a 'u'): the user's file must load."""
    model, data = ultralytics_pt(3)  # imports ultralytics after making it offline
    from ultralytics.utils import downloads

    monkeypatch.setattr(downloads, "safe_download", lambda url, **kwargs: pytest.fail(f"downloaded {url}"))
    local = tmp_path / "yolov5n.pt"
    if "u" in str(local):  # e.g. a user named ubuntu: the swap would not happen, and the test could not fail
        local = Path("/tmp") / f"legacy-{os.getpid()}" / "yolov5n.pt"
        local.parent.mkdir(exist_ok=True)
        request.addfinalizer(lambda: shutil.rmtree(local.parent, ignore_errors=True))
    local.write_bytes(data)
    run = train_in_local_run(trial("yolov5n", tiny_dataset, str(local)), tmp_path / "run")
    assert_loaded(yolo_checkpoint.read_weights(run.latest_checkpoint()), model.float().state_dict(),
                  ["model.0.conv.weight", "model.9.cv2.conv.weight"])
