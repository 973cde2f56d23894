"""`detfuse predict` on bundles exported from a tiny real experiment: one YOLOv5n and one Faster R-CNN trained for an
epoch on a small synthetic set, fused as the ensemble job writes it (also with a member on mirrored images),
exported to a local directory and to a real SeaweedFS S3 server."""

import collections
import json
import pathlib
import shutil
from dataclasses import replace

import PIL.Image
import PIL.ImageFile
import pytest
import torch

import trainables
from detfuse.core import trial_link
from detfuse.stages import predict
from detfuse.stages.cli import main
from detfuse.core.data import load_dataset
from detfuse.core.data.synthetic import generate
from detfuse.stages.ensemble_outputs import fusion_document, read_fusion_spec
from detfuse.core.fusion import FusionInputs, FusionParams, fuse_image
from detfuse.stages.member_predictions import Member, as_predictions, predict_member
from trainables.trial_config import resolve_trial_config
from detfuse.stages.export import export_experiment

TRIALS = {  # trial id -> architecture, hparams: as small as both families allow
    "yolo_0": ("yolov5n", {"image_size": 160, "batch_size": 8, "nominal_batch_size": 8, "close_mosaic": 0,
                           "warmup_epochs": 0.0}),
    "frcnn_0": ("faster_rcnn", {"depth": 18, "norm": "GN", "image_size": 160, "batch_size": 8, "roi_batch_size": 64,
                                "rpn_post_nms_topk_train": 200, "rpn_post_nms_topk_test": 200, "warmup_epochs": 0.0}),
}
PARAMS = FusionParams(method="wbf", iou_thr=0.5, skip_box_thr=0.001, conf_type="avg", weights=(1.0, 2.0))


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DETFUSE_CACHE", str(tmp_path / "cache"))


def write_experiment(experiment, dataset, checkpoints, fused=None, params=PARAMS):
    """An experiment folder as tune + ensemble leave it, for {trial id: (architecture, checkpoint dir, mAP50)};
    `fused`: the fusion's members as (trial id, tta), by default each trial as it is."""
    rows, trials = [], {}
    for trial_id, (architecture, checkpoint, mAP50) in checkpoints.items():
        family = trainables.family_of(architecture)
        rows.append({"trial_id": trial_id, "family": family, "architecture": architecture, "hparams": {},
                     "max_epochs": 1.0, "best_mAP50": mAP50, "best_mAP50_95": mAP50, "best_epoch": 1.0,
                     "epochs_trained": 1.0, "stopped_early": False, "error": None, "checkpoint": str(checkpoint),
                     "path": str(checkpoint.parent)})
        trials[trial_id] = Member(trial_id, family, architecture, str(checkpoint), mAP50)
    members = [replace(trials[trial_id], tta=tta) for trial_id, tta in fused or [(t, "none") for t in trials]]
    (experiment / "ensemble").mkdir(parents=True)
    (experiment / "leaderboard.json").write_text(json.dumps(rows))
    (experiment / "experiment.json").write_text(json.dumps({"name": experiment.name, "dataset": str(dataset.root)}))
    provenance = {"dataset": {"spec": str(dataset.root), "name": dataset.name, "fingerprint": dataset.fingerprint}}
    (experiment / "ensemble" / "fusion.json").write_text(json.dumps(fusion_document(
        members, params, dataset.class_names, dataset.category_ids, **provenance)))
    (experiment / "ensemble" / "summary.json").write_text(json.dumps({"method": params.method}))
    return experiment


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(experiment dir, dataset, test image paths) after training each trial for one epoch."""
    root = tmp_path_factory.mktemp("predict")
    dataset = load_dataset(str(generate(root / "litter", seed=2, num_train=16, num_val=6, num_test=3)))
    checkpoints = {}
    for trial_id, (architecture, hparams) in TRIALS.items():
        config = resolve_trial_config({"architecture": architecture, "dataset": str(dataset.root), "max_epochs": 1,
                                        "eval_every": 1, "hparams": hparams}, trial_id)
        run = trial_link.LocalRun(root / "runs" / trial_id)
        trial_link.use_local_run(run)
        try:
            trainables.load_family(config["family"]).train(config)
        finally:
            trial_link.use_local_run(None)
        mAP50 = json.loads(run.metrics_log.read_text().splitlines()[-1])["mAP50"]
        checkpoints[trial_id] = (architecture, run.latest_checkpoint(), mAP50)
    experiment = write_experiment(root / "storage" / "tiny", dataset, checkpoints)
    images = [dataset.splits["test"].image_path(image) for image in dataset.splits["test"].coco["images"]]
    return experiment, dataset, images


@pytest.fixture(scope="module")
def exported(trained, s3_server, tmp_path_factory):
    """The experiment exported once to a local directory and once to S3: (local destination, S3 URI)."""
    experiment, _, _ = trained
    local = tmp_path_factory.mktemp("exported") / "models"
    bucket = s3_server.create_bucket()
    export_experiment(str(experiment), str(local))
    export_experiment(str(experiment), f"s3://{bucket}/models")
    return local, f"s3://{bucket}/models", bucket


def read_outputs(out):
    """The detections written to `out`, leaving out the bundle id (each export has its own)."""
    coco = json.loads((out / "predictions.json").read_text())
    return [coco[key] for key in ("images", "categories", "annotations")], (out / "predictions.csv").read_text()


def test_local_and_s3_bundles_predict_the_experiments_fused_detections(trained, exported, tmp_path):
    experiment, dataset, images = trained
    local, s3_uri, _ = exported
    paths = [str(p) for p in images]
    assert main(["predict", str(local), *paths, "--out", str(tmp_path / "local"), "--draw-threshold", "0"]) == 0
    assert main(["predict", s3_uri + "/latest.json", *paths, "--out", str(tmp_path / "s3")]) == 0
    assert read_outputs(tmp_path / "local") == read_outputs(tmp_path / "s3")

    # the same numbers as the experiment's own members, fused with its own fitted parameters
    spec = read_fusion_spec(str(experiment / "ensemble" / "fusion.json"))
    outputs = [trainables.load_family(m.family).load_predictor(m.checkpoint, "cpu").predict(images)
               for m in spec.members]
    coco = json.loads((tmp_path / "local" / "predictions.json").read_text())
    sizes = []
    for path in images:
        with PIL.Image.open(path) as opened:
            sizes.append(opened.size)
    assert [(i["file_name"], i["width"], i["height"]) for i in coco["images"]] == [
        (p.name, *size) for p, size in zip(images, sizes)]
    assert [c["name"] for c in coco["categories"]] == dataset.class_names
    for index, image in enumerate(coco["images"]):
        expected = fuse_image([member[index] for member in outputs], image["width"], image["height"],
                              spec.category_ids, spec.weighted_params)
        written = [a for a in coco["annotations"] if a["image_id"] == image["id"]]
        assert len(written) == len(expected)
        for annotation, prediction in zip(written, expected):
            x1, y1, x2, y2 = prediction.box
            assert annotation["category_id"] == prediction.category_id
            assert annotation["bbox"] == pytest.approx([x1, y1, x2 - x1, y2 - y1], abs=1e-4)
            assert annotation["score"] == pytest.approx(prediction.score)
    assert coco["annotations"], "the fused ensemble found nothing: the comparison above proved little"

    rows = (tmp_path / "local" / "predictions.csv").read_text().splitlines()
    assert rows[0] == "PredictionString,image_id" and [r.rsplit(",", 1)[1] for r in rows[1:]] == [p.name for p in
                                                                                               images]
    from PIL import Image, ImageChops

    for path in images:
        drawn = Image.open(tmp_path / "local" / "images" / path.name)
        original = Image.open(path).convert("RGB")
        assert drawn.size == original.size
    with_boxes = {a["image_id"] for a in coco["annotations"]}
    first = next(i for i in coco["images"] if i["id"] in with_boxes)
    difference = ImageChops.difference(Image.open(tmp_path / "local" / "images" / first["file_name"]).convert("RGB"),
                                       Image.open(images[first["id"] - 1]).convert("RGB"))
    assert difference.getbbox() is not None, "threshold 0 draws every detection, yet the image is unchanged"


def ensemble_job_fusion(spec, dataset):
    """What the ensemble job fuses for `spec`'s members on the test split (its fused_test.json): each member's
    predictions as its inference task makes them (detfuse.stages.member_predictions), fused with spec's parameters."""
    test = dataset.splits["test"]
    predictions = []
    for m in spec.members:
        member = Member(m.trial_id, m.family, m.architecture, m.checkpoint, 0.0, m.tta)
        runs = predict_member(member, str(dataset.root), dataset.fingerprint, [("test", member.tta)], "cpu")
        rows, _ = runs[("test", member.tta)]
        predictions.append(as_predictions(rows))
    return FusionInputs(predictions, test.coco["images"], dataset.category_ids).fuse(spec.weighted_params)


def same_detections(annotations, predictions):
    """Whether COCO annotations are the predictions, in order (image ids aside), up to the cache's rounding."""
    return len(annotations) == len(predictions) and all(
        a["category_id"] == p.category_id and a["score"] == pytest.approx(p.score, abs=1e-5)
        and a["bbox"] == pytest.approx([p.box[0], p.box[1], p.box[2] - p.box[0], p.box[3] - p.box[1]], abs=1e-2)
        for a, p in zip(annotations, predictions))


def test_a_member_on_mirrored_images_is_exported_once_and_predicted_as_the_ensemble_job_fused_it(trained, tmp_path):
    experiment, dataset, images = trained
    plain = read_fusion_spec(str(experiment / "ensemble" / "fusion.json"))
    checkpoints = {m.trial_id: (m.architecture, pathlib.Path(m.checkpoint), 0.1) for m in plain.members}
    fused = [("yolo_0", "none"), ("frcnn_0", "none"), ("frcnn_0", "hflip")]
    params = FusionParams(method="wbf", iou_thr=0.5, skip_box_thr=0.001, conf_type="avg", weights=(1.0, 2.0, 1.0))
    flipped = write_experiment(tmp_path / "storage" / "flipped", dataset, checkpoints, fused, params)

    exported = export_experiment(str(flipped), str(tmp_path / "models"))
    bundle_dir = tmp_path / "models" / exported.bundle_id
    assert sorted(p.name for p in (bundle_dir / "checkpoints").iterdir()) == ["frcnn_0", "yolo_0"]  # one per trial
    assert [(m.trial_id, m.tta, m.checkpoint) for m in read_fusion_spec(str(bundle_dir / "fusion.json"))
            .members] == [("yolo_0", "none", "checkpoints/yolo_0"), ("frcnn_0", "none", "checkpoints/frcnn_0"),
                          ("frcnn_0", "hflip", "checkpoints/frcnn_0")]
    assert json.loads((bundle_dir / "bundle.json").read_text())["ensemble"]["members"] == [
        "yolo_0", "frcnn_0", "frcnn_0+hflip"]
    assert main(["predict", str(tmp_path / "models"), *map(str, images), "--out", str(tmp_path / "out")]) == 0

    written = json.loads((tmp_path / "out" / "predictions.json").read_text())["annotations"]
    spec = read_fusion_spec(str(flipped / "ensemble" / "fusion.json"))
    expected = ensemble_job_fusion(spec, dataset)
    test_ids = [image["id"] for image in dataset.splits["test"].coco["images"]]
    assert written, "the fused ensemble found nothing: the comparison below proves little"
    for index, image_id in enumerate(test_ids):  # predict numbers the images it is given from 1
        assert same_detections([a for a in written if a["image_id"] == index + 1],
                               [p for p in expected if p.image_id == image_id])
    # and the mirrored pass mattered: with frcnn_0 as it is in its place, the fused detections differ
    spec.members[2] = replace(spec.members[2], tta="none")
    unflipped = ensemble_job_fusion(spec, dataset)
    assert not all(same_detections([a for a in written if a["image_id"] == index + 1],
                                   [p for p in unflipped if p.image_id == image_id])
                   for index, image_id in enumerate(test_ids))


def flip_byte(path, offset):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_flipped_byte_or_a_truncated_file_is_refused_naming_the_file(trained, exported, s3_server, tmp_path,
                                                                       capsys):
    _, _, images = trained
    local, s3_uri, bucket = exported
    copy = tmp_path / "models"
    shutil.copytree(local, copy)
    bundle_id = json.loads((copy / "latest.json").read_text())["bundle"]
    weights = copy / bundle_id / "checkpoints" / "yolo_0" / "weights.pt"
    out = tmp_path / "out"

    flip_byte(weights, weights.stat().st_size // 2)
    assert main(["predict", str(copy), str(images[0]), "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert f"{copy / bundle_id}/checkpoints/yolo_0/weights.pt: sha256" in error and "refusing to load it" in error
    assert not out.exists()

    shutil.copyfile(local / bundle_id / "checkpoints" / "yolo_0" / "weights.pt", weights)
    model = copy / bundle_id / "checkpoints" / "frcnn_0" / "model.pth"
    with open(model, "r+b") as stream:
        stream.truncate(model.stat().st_size - 1)
    assert main(["predict", str(copy / "latest.json"), str(images[0]), "--out", str(out)]) == 2
    assert f"checkpoints/frcnn_0/model.pth: {model.stat().st_size} bytes, but the manifest says " \
           f"{model.stat().st_size + 1}" in capsys.readouterr().err

    # the same on S3: one flipped byte in the stored object
    client = s3_server.client()
    s3_bundle_id = json.loads(client.get_object(Bucket=bucket, Key="models/latest.json")["Body"].read())["bundle"]
    key = f"models/{s3_bundle_id}/checkpoints/frcnn_0/detfuse.json"
    original = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    tampered = bytearray(original)
    tampered[10] ^= 0x01
    client.put_object(Bucket=bucket, Key=key, Body=bytes(tampered))
    try:
        assert main(["predict", s3_uri, str(images[0]), "--out", str(out)]) == 2
        assert f"{s3_uri}/{s3_bundle_id}/checkpoints/frcnn_0/detfuse.json: sha256" in capsys.readouterr().err
    finally:
        client.put_object(Bucket=bucket, Key=key, Body=original)
    assert not out.exists()


class _RunsCode:
    """Unpickling this touches a file: what a malicious checkpoint would do instead."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


def test_a_checkpoint_that_would_run_code_is_refused(trained, tmp_path, capsys):
    experiment, dataset, images = trained
    spec = read_fusion_spec(str(experiment / "ensemble" / "fusion.json"))
    checkpoints = {}
    for member in spec.members:
        checkpoint = tmp_path / "checkpoints" / member.trial_id
        shutil.copytree(member.checkpoint, checkpoint)
        checkpoints[member.trial_id] = (member.architecture, checkpoint, 0.1)
    marker = tmp_path / "code-ran"
    torch.save({"model.0.conv.weight": _RunsCode(marker)}, checkpoints["yolo_0"][1] / "weights.pt")
    evil = write_experiment(tmp_path / "storage" / "evil", dataset, checkpoints)
    export_experiment(str(evil), str(tmp_path / "models"))  # the checksums match: the exporter was fooled too

    assert main(["predict", str(tmp_path / "models"), str(images[0]), "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert "member yolo_0: refusing to load checkpoints/yolo_0: it holds pickled objects beyond weights" in error
    assert not marker.exists()


def test_predict_input_errors(exported, tmp_path, capsys):
    local, _, _ = exported
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for folder in ("a", "b"):
        (tmp_path / folder / "same.png").write_bytes(b"not an image")
    for arguments, expected in [
        ([str(local), str(tmp_path / "missing.jpg")], "missing.jpg: no such image file or directory"),
        ([str(local), str(tmp_path / "a" / "same.png"), str(tmp_path / "b" / "same.png")],
         "share the file name 'same.png'"),
        ([str(local), str(tmp_path / "a" / "same.png")], "same.png: cannot read this image file"),
        ([str(tmp_path), str(tmp_path / "a" / "same.png")], "no bundle here: name a bundle"),
    ]:
        assert main(["predict", *arguments, "--out", str(tmp_path / "out")]) == 2
        assert expected in capsys.readouterr().err


def test_each_image_is_decoded_once(trained, exported, tmp_path, monkeypatch):
    _, _, images = trained
    local, _, _ = exported

    class NoDetections:  # the members read images their own way: only predict's own decoding is counted
        def predict(self, paths, flip=False):
            return [[] for _ in paths]

    monkeypatch.setattr(predict, "load_members", lambda verified, spec, device: [NoDetections()] * len(spec.members))
    decoded = collections.Counter()
    load = PIL.ImageFile.ImageFile.load

    def counting_load(image):
        if image.tile:  # the pixel data is not read yet: this call decodes it
            decoded[pathlib.Path(image.filename).name] += 1
        return load(image)

    monkeypatch.setattr(PIL.ImageFile.ImageFile, "load", counting_load)
    assert main(["predict", str(local), *map(str, images), "--out", str(tmp_path / "out")]) == 0
    assert decoded == {path.name: 1 for path in images}
    assert sorted(p.name for p in (tmp_path / "out" / "images").iterdir()) == sorted(p.name for p in images)
