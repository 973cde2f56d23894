"""A whole YOLOv5 trial, from importing Ultralytics to predicting with its checkpoint, with the network blocked:
nothing is downloaded (weights, fonts, datasets, pip packages) and nothing else is contacted either."""

import json
import os
import subprocess
import sys
import textwrap

from yolov5_trials import trial_config

# Runs in a fresh interpreter so that Ultralytics' import-time checks happen behind the guard too.
TRIAL_BEHIND_A_BLOCKED_NETWORK = textwrap.dedent("""
    import json, socket, sys, traceback

    attempts = []

    def blocked(what):
        def refuse(*args, **kwargs):
            attempts.append({"call": what, "args": repr(args[:2])[:200],
                             "stack": traceback.format_stack(limit=12)[:-1]})
            raise OSError(f"network blocked by the test ({what})")
        return refuse

    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def connect(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            return blocked("socket.connect")(address)
        return real_connect(sock, address)

    def connect_ex(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            return blocked("socket.connect_ex")(address)
        return real_connect_ex(sock, address)

    socket.socket.connect, socket.socket.connect_ex = connect, connect_ex
    socket.create_connection = blocked("socket.create_connection")
    socket.getaddrinfo = blocked("socket.getaddrinfo")
    socket.gethostbyname = blocked("socket.gethostbyname")

    from detfuse.core import trial_link
    from detfuse.core.data import load_dataset
    from trainables.yolov5 import load_predictor, train

    config, run_dir, result_file = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
    run = trial_link.LocalRun(run_dir)
    trial_link.use_local_run(run)
    train(config)
    split = load_dataset(config["dataset"]).splits["val"]
    predictions = load_predictor(run.latest_checkpoint()).predict(
        [split.image_path(image) for image in split.coco["images"][:4]])

    trial_attempts = list(attempts)
    try:  # the guard's own check: a download attempt is caught and recorded
        from ultralytics.utils.checks import check_font
        check_font("NotInstalled.ttf")
    finally:
        control_attempts = attempts[len(trial_attempts):]

    import ultralytics.utils
    with open(result_file, "w") as f:
        json.dump({"attempts": trial_attempts, "control_attempts": len(control_attempts),
                   "reports": run.metrics_log.read_text().splitlines(),
                   "predicted_images": len(predictions), "settings": dict(ultralytics.utils.SETTINGS),
                   "settings_file": str(ultralytics.utils.SETTINGS_FILE)}, f)
""")


def test_trial_downloads_nothing(tmp_path):
    home, cache, result_file = tmp_path / "home", tmp_path / "cache", tmp_path / "result.json"
    home.mkdir()
    environment = {**os.environ, "HOME": str(home), "DETFUSE_CACHE": str(cache)}
    for variable in ("YOLO_OFFLINE", "YOLO_AUTOINSTALL", "YOLO_CONFIG_DIR", "XDG_CONFIG_HOME"):
        environment.pop(variable, None)  # the trainable must set up Ultralytics itself
    completed = subprocess.run(
        [sys.executable, "-c", TRIAL_BEHIND_A_BLOCKED_NETWORK, json.dumps(trial_config(1)), str(tmp_path / "run"),
         str(result_file)],
        env=environment, capture_output=True, text=True, timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(result_file.read_text())
    assert result["attempts"] == [], json.dumps(result["attempts"], indent=1)
    assert result["control_attempts"] > 0  # Ultralytics' font download, tried after the trial, was seen
    assert [json.loads(line)["epoch"] for line in result["reports"]] == [1.0]
    assert result["predicted_images"] == 4
    # Ultralytics' settings live in the project's cache with every integration off, not in the user's home
    assert result["settings_file"] == str(cache / "ultralytics" / "Ultralytics" / "settings.json")
    assert not any(result["settings"][key] for key in ("sync", "raytune", "wandb", "mlflow", "comet", "clearml"))
    assert not (home / ".config" / "Ultralytics").exists()
