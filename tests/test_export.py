"""The export job against a local directory and a real SeaweedFS S3 server: bundle layout, manifest, latest.json,
multipart uploads, server-side encryption, idempotent re-runs and an S3 server stopped in the middle of an export.

Export copies files and never loads a model, so the experiments here hold checkpoint folders of real bytes written
by the test, under each family's file names (detfuse.json, weights, training state); predicting from real checkpoints
is tested in test_predict.py.
"""

import hashlib
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
from s3_server import ACCESS_KEY, SECRET_KEY, S3Server

from detfuse.stages.bundle import open_bundle, parse_latest
from detfuse.stages.cli import main
from detfuse.stages.ensemble_outputs import fusion_document, read_fusion_spec
from detfuse.core.errors import UserError
from detfuse.core.fusion import FusionParams
from detfuse.stages.member_predictions import Member
from detfuse.core.storage.s3 import S3Settings
from detfuse.stages.export import export_experiment

ROOT = Path(__file__).resolve().parents[1]
CLASS_NAMES = ["bottle", "can", "bag"]
CATEGORY_IDS = [1, 2, 5]
FINGERPRINT = "f" * 64
TRIALS = {  # trial id -> family, best mAP50, ensemble member?
    "yolo_1": ("yolov5", 0.50, True),
    "yolo_2": ("yolov5", 0.30, False),
    "d2_1": ("detectron2", 0.40, True),
    "d2_2": ("detectron2", 0.45, False),
}
MiB = 1024 * 1024


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DETFUSE_CACHE", str(tmp_path / "cache"))


# per family: the weights file its predictor reads, and the files only resuming a trial reads
WEIGHTS = {"yolov5": "weights.pt", "detectron2": "model.pth"}
TRAINING_ONLY = {"yolov5": ["trainer_state.pt"], "detectron2": ["training_state.pth"]}


def write_checkpoint(directory, family, seed, weights_bytes=2048):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "detfuse.json").write_text(json.dumps({
        "family": family, "architecture": "yolov5n" if family == "yolov5" else "faster_rcnn", "hparams": {},
        "class_names": CLASS_NAMES, "category_ids": CATEGORY_IDS, "epoch": 1.0, "metrics": {}}))
    (directory / WEIGHTS[family]).write_bytes(random.Random(seed).randbytes(weights_bytes))
    if family == "detectron2":
        (directory / "config.yaml").write_text("MODEL:\n  META_ARCHITECTURE: GeneralizedRCNN\n")
    for name in TRAINING_ONLY[family]:
        (directory / name).write_bytes(random.Random(seed + 1).randbytes(2 * weights_bytes))


def make_experiment(root, name="tiny"):
    """<root>/storage/<name> as `detfuse tune` and `detfuse ensemble` leave it; returns its path."""
    experiment = root / "storage" / name
    rows, members = [], []
    for seed, (trial_id, (family, mAP50, member)) in enumerate(TRIALS.items()):
        checkpoint = root / "trials" / trial_id / "checkpoint_000001"
        write_checkpoint(checkpoint, family, seed)
        architecture = "yolov5n" if family == "yolov5" else "faster_rcnn"
        rows.append({"trial_id": trial_id, "family": family, "architecture": architecture, "hparams": {"lr": 0.01},
                     "max_epochs": 2.0, "best_mAP50": mAP50, "best_mAP50_95": mAP50 / 2, "best_epoch": 1.0,
                     "epochs_trained": 2.0, "stopped_early": False, "error": None, "checkpoint": str(checkpoint),
                     "path": str(checkpoint.parent)})
        if member:
            members.append(Member(trial_id, family, architecture, str(checkpoint), mAP50))
    rows.sort(key=lambda row: -row["best_mAP50"])
    (experiment / "ensemble").mkdir(parents=True)
    (experiment / "leaderboard.json").write_text(json.dumps(rows))
    (experiment / "experiment.json").write_text(json.dumps({"name": name, "dataset": "builtin"}))
    params = FusionParams(method="wbf", iou_thr=0.6, skip_box_thr=0.01, conf_type="avg", weights=(2.0, 1.0))
    dataset = {"spec": "builtin", "name": "litter", "fingerprint": FINGERPRINT}
    (experiment / "ensemble" / "fusion.json").write_text(json.dumps(fusion_document(
        members, params, CLASS_NAMES, CATEGORY_IDS, dataset=dataset, experiment=str(experiment))))
    (experiment / "ensemble" / "summary.json").write_text(json.dumps({"method": "wbf", "final": {"members": 2}}))
    return experiment


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def test_local_export_writes_a_verifiable_bundle_and_a_rerun_sends_nothing(tmp_path):
    experiment = make_experiment(tmp_path)
    destination = tmp_path / "models"
    result = export_experiment(str(experiment), str(destination))

    bundle_dir = destination / result.bundle_id
    assert result.bundle_id.startswith("tiny-") and {p.name for p in destination.iterdir()} == {
        result.bundle_id, "latest.json"}
    # the manifest lists every other file of the bundle, with its true size and sha256
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    on_disk = {p.relative_to(bundle_dir).as_posix(): p for p in bundle_dir.rglob("*") if p.is_file()}
    assert sorted(entry["path"] for entry in manifest["files"]) == sorted(set(on_disk) - {"manifest.json"})
    for entry in manifest["files"]:
        data = on_disk[entry["path"]].read_bytes()
        assert (entry["size"], entry["sha256"]) == (len(data), sha256(data))
    assert manifest["bundle"] == result.bundle_id and result.bundle_id.endswith(manifest["content_sha256"][:12])

    # both members plus the best of each family (d2_2 is detectron2's best without being a member); not yolo_2
    assert sorted(p.name for p in (bundle_dir / "checkpoints").iterdir()) == ["d2_1", "d2_2", "yolo_1"]
    source = tmp_path / "trials" / "d2_2" / "checkpoint_000001" / "model.pth"
    assert (bundle_dir / "checkpoints" / "d2_2" / "model.pth").read_bytes() == source.read_bytes()
    # what predicting needs, not the state only resuming needs (two thirds of a real checkpoint)
    assert sorted(p.name for p in (bundle_dir / "checkpoints" / "d2_2").iterdir()) == [
        "config.yaml", "detfuse.json", "model.pth"]
    assert sorted(p.name for p in (bundle_dir / "checkpoints" / "yolo_1").iterdir()) == ["detfuse.json", "weights.pt"]
    description = json.loads((bundle_dir / "bundle.json").read_text())
    assert description["dataset"]["fingerprint"] == FINGERPRINT
    assert description["class_names"] == CLASS_NAMES and description["category_ids"] == CATEGORY_IDS
    assert {f: b["trial_id"] for f, b in description["best_per_family"].items()} == {"yolov5": "yolo_1",
                                                                                       "detectron2": "d2_2"}
    assert description["ensemble"]["members"] == ["yolo_1", "d2_1"]
    assert description["versions"]["python"] and description["versions"]["torch"]
    spec = read_fusion_spec(str(bundle_dir / "fusion.json"))
    assert [m.checkpoint for m in spec.members] == [f"checkpoints/{m.trial_id}" for m in spec.members]
    assert [m.weight for m in spec.members] == [2.0, 1.0] and spec.params.iou_thr == 0.6
    metrics = json.loads((bundle_dir / "metrics.json").read_text())
    assert metrics["leaderboard"] == json.loads((experiment / "leaderboard.json").read_text())
    assert metrics["ensemble"] == json.loads((experiment / "ensemble" / "summary.json").read_text())

    latest_bytes = (destination / "latest.json").read_bytes()
    assert parse_latest(latest_bytes, "latest.json") == (result.bundle_id,
                                                         sha256((bundle_dir / "manifest.json").read_bytes()))
    assert open_bundle(str(destination)).bundle_id == result.bundle_id
    assert open_bundle(str(bundle_dir)).directory == bundle_dir  # a bundle named directly, without latest.json

    again = export_experiment(str(experiment), str(destination))
    assert again.bundle_id == result.bundle_id and again.sent == []
    assert len(again.skipped) == again.files == len(manifest["files"]) + 1
    assert (destination / "latest.json").read_bytes() == latest_bytes


def test_a_changed_experiment_becomes_a_new_bundle_and_a_damaged_file_is_sent_again(tmp_path):
    experiment = make_experiment(tmp_path)
    destination = tmp_path / "models"
    first = export_experiment(str(experiment), str(destination))
    write_checkpoint(tmp_path / "trials" / "yolo_1" / "checkpoint_000001", "yolov5", seed=99)
    second = export_experiment(str(experiment), str(destination))
    assert second.bundle_id != first.bundle_id and (destination / first.bundle_id / "manifest.json").is_file()
    assert parse_latest((destination / "latest.json").read_bytes(), "latest.json")[0] == second.bundle_id

    damaged = destination / second.bundle_id / "checkpoints" / "d2_1" / "model.pth"
    damaged.write_bytes(damaged.read_bytes()[:100])
    with pytest.raises(UserError, match=r"checkpoints/d2_1/model.pth: 100 bytes, but the manifest says 2048"):
        open_bundle(str(destination / "latest.json"))
    repaired = export_experiment(str(experiment), str(destination))
    assert repaired.bundle_id == second.bundle_id and repaired.sent == ["checkpoints/d2_1/model.pth"]
    assert open_bundle(str(destination)).bundle_id == second.bundle_id

    # the manifest itself is checked against latest.json; a bundle without one is an unfinished export
    manifest = destination / second.bundle_id / "manifest.json"
    manifest.write_text(manifest.read_text() + "\n")
    with pytest.raises(UserError, match="manifest.json: its sha256 does not match the one latest.json recorded"):
        open_bundle(str(destination))
    manifest.unlink()
    with pytest.raises(UserError, match=f"{second.bundle_id}/manifest.json: missing; the export that wrote"):
        open_bundle(str(destination))


def test_s3_export_is_multipart_idempotent_and_holds_no_credentials(s3_server, s3_bucket, tmp_path, capsys):
    experiment = make_experiment(tmp_path)
    write_checkpoint(tmp_path / "trials" / "yolo_1" / "checkpoint_000001", "yolov5", seed=7, weights_bytes=12 * MiB)
    uri = f"s3://{s3_bucket}/models"
    assert main(["export", str(experiment), "--to", uri, "--part-size-mb", "5"]) == 0
    first = capsys.readouterr()
    bundle_id, _ = parse_latest(s3_server.client().get_object(Bucket=s3_bucket, Key="models/latest.json")["Body"]
                                .read(), "latest.json")
    head = s3_server.client().head_object(Bucket=s3_bucket, Key=f"models/{bundle_id}/checkpoints/yolo_1/weights.pt")
    weights = (tmp_path / "trials" / "yolo_1" / "checkpoint_000001" / "weights.pt").read_bytes()
    assert head["ContentLength"] == len(weights) and head["Metadata"]["sha256"] == sha256(weights)
    assert head["ETag"].strip('"').endswith("-3")  # three 5 MiB parts

    assert main(["export", str(experiment), "--to", uri, "--part-size-mb", "5"]) == 0
    second = capsys.readouterr()
    assert f"bundle {bundle_id}: 0 file(s) sent" in second.out

    verified = open_bundle(uri + "/latest.json")
    assert verified.bundle_id == bundle_id and open_bundle(f"{uri}/{bundle_id}").bundle_id == bundle_id
    for text in (first.out, first.err, second.out, second.err):
        assert ACCESS_KEY not in text and SECRET_KEY not in text
    for path in verified.directory.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert ACCESS_KEY.encode() not in data and SECRET_KEY.encode() not in data, path


@pytest.fixture
def own_server(s3_server, tmp_path):
    """A SeaweedFS server of this test's own, with SSE-S3 enabled (a key in its security.toml), that the test may
    stop and start again on the same data and ports. Credentials still come from the session server's env."""
    directory = tmp_path / "seaweedfs"
    directory.mkdir()
    (directory / "security.toml").write_text('[s3.sse]\nkey = "detfuse-test-sse-key"\n')
    server = S3Server(directory)
    server.start()
    try:
        yield server
    finally:
        if server.process is not None:
            server.process.kill()  # its data is thrown away: no need for SeaweedFS's slow graceful stop
        server.stop()


def restart(server):
    """Start `server` again with its last command: the same data directory and ports."""
    command = list(server.process.args) + ["-master.electionTimeout=1s"]  # a restarted lone master otherwise
    # waits a full 10 s election timeout before it leads
    server.process.wait()
    with open(server.directory / "weed.log", "ab") as log:
        server.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    assert server._wait_until_ready(), server.log_tail()


def test_s3_server_stopped_mid_export_leaves_latest_alone_and_a_rerun_completes(own_server, tmp_path):
    server = own_server
    bucket = server.create_bucket()
    uri = f"s3://{bucket}/exports"
    settings = S3Settings(endpoint_url=server.endpoint, sse="AES256", max_attempts=2, part_size_mb=5)
    experiment = make_experiment(tmp_path)
    first = export_experiment(str(experiment), uri, settings)
    client = server.client()

    def latest_bundle():
        return parse_latest(client.get_object(Bucket=bucket, Key="exports/latest.json")["Body"].read(), "latest")[0]

    assert latest_bundle() == first.bundle_id
    assert client.head_object(Bucket=bucket, Key=f"exports/{first.bundle_id}/bundle.json")[
        "ServerSideEncryption"] == "AES256"

    # d2_2's weights grown to 30 MB: sent after bundle.json and d2_1's files, in 5 MiB parts
    big = tmp_path / "trials" / "d2_2" / "checkpoint_000001" / "model.pth"
    big.write_bytes(random.Random(1).randbytes(30 * MiB))
    killed = []

    def stop_server_once_the_big_file_is_sending(path, count):
        if path == "checkpoints/d2_2/model.pth" and not killed:
            killed.append(count)
            server.process.kill()

    with pytest.raises(UserError) as failure:
        export_experiment(str(experiment), uri, settings, progress=stop_server_once_the_big_file_is_sending)
    message = str(failure.value)
    assert killed, "the server was never stopped: the export did not reach the big file"
    assert f"export of {experiment} to {uri} failed" in message and server.endpoint in message
    assert f"latest.json still names {first.bundle_id}" in message and "Run the same export again" in message
    new_id = message.split("to finish bundle ")[1].split(":")[0]

    restart(server)
    assert latest_bundle() == first.bundle_id  # the failed export never became latest
    rerun = export_experiment(str(experiment), uri, settings)
    assert rerun.bundle_id == new_id and latest_bundle() == new_id
    assert "bundle.json" in rerun.skipped and "checkpoints/d2_1/model.pth" in rerun.skipped
    assert "checkpoints/d2_2/model.pth" in rerun.sent
    head = client.head_object(Bucket=bucket, Key=f"exports/{new_id}/checkpoints/d2_2/model.pth")
    assert head["ServerSideEncryption"] == "AES256" and head["ETag"].strip('"').endswith("-6")
    verified = open_bundle(uri, settings)
    assert verified.bundle_id == new_id
    assert (verified.directory / "checkpoints" / "d2_2" / "model.pth").read_bytes() == big.read_bytes()


def test_export_job_script(tmp_path):
    experiment = make_experiment(tmp_path, name="scripted")
    done = subprocess.run([sys.executable, str(ROOT / "ray_jobs" / "export.py"), str(experiment), "--to",
                           str(tmp_path / "out")], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    bundle_id, _ = parse_latest((tmp_path / "out" / "latest.json").read_bytes(), "latest.json")
    assert bundle_id.startswith("scripted-") and f"bundle: {tmp_path / 'out' / bundle_id}" in done.stdout


def test_export_errors_name_the_file_or_flag(tmp_path, capsys):
    experiment = make_experiment(tmp_path)
    (experiment / "ensemble" / "fusion.json").unlink()
    assert main(["export", str(experiment), "--to", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert f"{experiment}/ensemble/fusion.json does not exist: run `detfuse ensemble EXPERIMENT` first" in error
    assert not (tmp_path / "out").exists()

    (tmp_path / "file").write_text("x")
    for arguments, expected in [
        (["--to", str(tmp_path / "file")], "is a file; export to a directory"),
        (["--to", "s3://AKIAEXAMPLE:pa55word@bucket/models"], "must not carry credentials"),
        (["--to", "s3://b/m", "--part-size-mb", "4"], "--part-size-mb 4: S3 needs parts of at least 5 MiB"),
        (["--to", "s3://b/m", "--sse-kms-key-id", "k"], "--sse-kms-key-id applies only with --sse aws:kms"),
        (["--to", "s3://b/m", "--endpoint-url", "localhost:9000"], "--endpoint-url localhost:9000: write it as"),
        (["--to", "s3://b/m", "--max-attempts", "0"], "--max-attempts 0: give a whole number >= 1"),
    ]:
        assert main(["export", str(experiment), *arguments]) == 2
        error = capsys.readouterr().err
        assert expected in error and "pa55word" not in error


def test_a_checkpoint_without_the_files_prediction_needs_is_named(tmp_path, capsys):
    experiment = make_experiment(tmp_path)
    checkpoint = tmp_path / "trials" / "yolo_1" / "checkpoint_000001"
    (checkpoint / "weights.pt").unlink()
    assert main(["export", str(experiment), "--to", str(tmp_path / "out")]) == 2
    assert (f"{checkpoint}: no weights.pt, so trial yolo_1's checkpoint cannot be loaded by `detfuse predict`"
            in capsys.readouterr().err)
