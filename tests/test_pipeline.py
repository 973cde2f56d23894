"""The pipeline job on a real multi-node Ray cluster with experiment storage and export on real S3 (SeaweedFS).

It is killed during its ensemble stage and run again: the second run must skip the finished tune stage and
complete, leaving a verified bundle behind latest.json.
"""

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "configs" / "demo.yaml"


def read_object(s3_server, bucket, key):
    return s3_server.client().get_object(Bucket=bucket, Key=key)["Body"].read().decode()


@pytest.mark.slow
def test_pipeline_on_s3_resumes_after_being_killed_in_its_ensemble_stage(cluster, small_dataset, s3_server,
                                                                        s3_bucket):
    ray_cluster, _ = cluster
    env = {**os.environ, **s3_server.env(), "RAY_ADDRESS": ray_cluster.address}
    command = [sys.executable, str(ROOT / "ray_jobs" / "pipeline.py"), str(DEMO), "name=pipe",
               f"dataset={small_dataset}", f"storage=s3://{s3_bucket}/runs", f"export.to=s3://{s3_bucket}/bundles",
               "spaces.0.num_samples=1", "spaces.1.num_samples=1", "scheduler.max_epochs=1", "ensemble.top=1"]

    first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True)
    output = []
    killed = threading.Event()

    def kill_when_ensemble_starts():
        for line in first.stdout:
            output.append(line)
            if "[pipeline] ensemble: starting" in line:
                os.killpg(first.pid, signal.SIGKILL)
                killed.set()

    reader = threading.Thread(target=kill_when_ensemble_starts, daemon=True)
    reader.start()
    first.wait(timeout=900)
    reader.join(timeout=10)
    assert killed.is_set(), "the pipeline never reached its ensemble stage:\n" + "".join(output)[-4000:]
    tune_marker = read_object(s3_server, s3_bucket, "runs/pipe/pipeline/tune.json")
    listing = s3_server.client().list_objects_v2(Bucket=s3_bucket, Prefix="bundles/")
    assert listing.get("KeyCount", 0) == 0, "nothing may be exported by a pipeline killed before its export stage"

    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stdout[-4000:] + second.stderr[-4000:]
    assert "[pipeline] tune: already complete" in second.stdout
    assert read_object(s3_server, s3_bucket, "runs/pipe/pipeline/tune.json") == tune_marker
    leaderboard = json.loads(read_object(s3_server, s3_bucket, "runs/pipe/leaderboard.json"))
    assert {row["family"] for row in leaderboard} == {"detectron2", "yolov5"}
    summary = json.loads(read_object(s3_server, s3_bucket, "runs/pipe/ensemble/summary.json"))
    assert {m["family"] for m in summary["members"]} == {"detectron2", "yolov5"}
    latest = json.loads(read_object(s3_server, s3_bucket, "bundles/latest.json"))
    manifest = json.loads(read_object(s3_server, s3_bucket, f"bundles/{latest['bundle']}/manifest.json"))
    assert any(f["path"].startswith("checkpoints/") for f in manifest["files"])
    assert "cross-family ensemble" in second.stdout and f"bundle: s3://{s3_bucket}/bundles/" in second.stdout
    # the last stage wrote the report beside the experiment's records, every chart inline and as a PNG
    assert f"report: s3://{s3_bucket}/runs/pipe/report/report.html" in second.stdout
    page = read_object(s3_server, s3_bucket, "runs/pipe/report/report.html")
    charts = ("learning_curves", "hyperparameters", "per_class_ap50", "ensemble_gain", "compute")
    assert all(f'id="chart-{chart}" ' in page for chart in charts)
    pngs = s3_server.client().list_objects_v2(Bucket=s3_bucket, Prefix="runs/pipe/report/report_")
    assert sorted(o["Key"] for o in pngs["Contents"]) == sorted(f"runs/pipe/report/report_{c}.png" for c in charts)


def test_a_stage_stopped_before_it_finished_exits_stopped_and_stays_unmarked(tmp_path):
    """A search stopped by Ctrl-C is not a failure to fix: the pipeline exits as the stage did (130), says the
    same command continues it, and writes no marker, so that command resumes the stage."""
    from types import SimpleNamespace

    from detfuse.stages.pipeline import StageStopped, run_stage
    from detfuse.stages.stage_markers import marker_uri

    experiment = SimpleNamespace(uri=str(tmp_path / "exp"))
    with pytest.raises(StageStopped, match="the tune stage was stopped before it finished; run the same command "
                                           "again to continue it") as stopped:
        run_stage(experiment, "tune", lambda: 130)
    assert stopped.value.exit_code == 130
    assert not os.path.exists(marker_uri(experiment.uri, "tune"))
    with pytest.raises(Exception, match="the tune stage failed \\(exit 1\\)"):
        run_stage(experiment, "tune", lambda: 1)
