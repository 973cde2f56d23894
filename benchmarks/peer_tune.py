"""The two halves of benchmarks/peer_tune.sh that need Python: running the peer, and the side-by-side table.

    python3 benchmarks/peer_tune.py yolo-data DATA
    python3 benchmarks/peer_tune.py peer DATA_YAML OUT TRIALS EPOCHS IMAGE_SIZE BATCH GPU_PER_TRIAL
    python3 benchmarks/peer_tune.py table OUT TRIALS EPOCHS GPU_PER_TRIAL

`yolo-data` converts DATA to YOLO format (detfuse's YOLO view: symlinks and label files) and prints its data.yaml.
`peer` is Ultralytics' own Ray tuner as its documentation shows it (`YOLO(...).tune(use_ray=True)`, default search
space, ASHA grace 3), on that data.yaml. `table` reads both Tune
experiments and scores every peer trial's saved weights with detfuse's evaluator on the same val split, so the two
best mAP50 are the same measure.
"""

import json
import os
import sys
from pathlib import Path


def yolo_data(data):
    from detfuse.core.data import load_dataset
    from trainables.yolov5.dataset_view import yolo_view

    print(yolo_view(load_dataset(data)))


def run_peer(data_yaml, out, trials, epochs, image_size, batch, gpu_per_trial):
    # the peer's own integrations stay as a new user has them (Ray Tune reporting on); offline, no pip installs
    os.environ.update(YOLO_OFFLINE="true", YOLO_AUTOINSTALL="false", YOLO_CONFIG_DIR=str(out / "ultralytics-config"))
    from ultralytics import YOLO

    YOLO("yolov5n.yaml").tune(
        data=str(data_yaml), use_ray=True, search_alg=None, iterations=trials, epochs=epochs, grace_period=3,
        gpu_per_trial=gpu_per_trial, imgsz=image_size, batch=batch, project=str(out / "peer"), name="tune",
        plots=False,
    )


def tune_trials(experiment_dir):
    """Each trial of a Tune experiment directory: its result rows (result.json), in trial-name order."""
    trials = {}
    for result in sorted(Path(experiment_dir).glob("*/result.json")):
        rows = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        if rows:
            trials[result.parent] = rows
    return trials


def run_summary(trials, started, finished, epochs, gpu_per_trial, epoch_key):
    """Wall time, time to the first trial's start, GPU-seconds and early stops, from the trials' own clocks."""
    spans = [(rows[0]["timestamp"] - rows[0]["time_total_s"], rows[-1]["timestamp"]) for rows in trials.values()]
    return {
        "wall_s": finished - started,
        "first_trial_s": min(start for start, _ in spans) - started,
        "most_at_once": max(sum(start <= t < end for start, end in spans) for t, _ in spans),
        "gpu_s": sum(rows[-1]["time_total_s"] for rows in trials.values()) * gpu_per_trial,
        "trials": len(trials),
        "stopped_early": sum(rows[-1][epoch_key] < epochs for rows in trials.values()),
    }


def score_peer_weights(trial_dirs, data):
    """detfuse's mAP50 of each peer trial's saved weights (best.pt, else last.pt) on the val split."""
    import torch

    from detfuse.core.data import load_dataset
    from detfuse.core.evaluation import Prediction, evaluate
    from trainables.yolov5.predictor import YoloPredictor

    dataset = load_dataset(data)
    split = dataset.splits["val"]
    images = split.coco["images"]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    scores = {}
    for trial_dir in trial_dirs:
        weights = trial_dir / "weights" / "best.pt"
        weights = weights if weights.exists() else trial_dir / "weights" / "last.pt"
        if not weights.exists():
            continue
        saved = torch.load(weights, map_location="cpu", weights_only=False)
        model = (saved.get("ema") or saved["model"]).float().eval().to(device)
        image_size = saved["train_args"]["imgsz"]
        detections = YoloPredictor(model, image_size, dataset.category_ids, device).predict(
            [split.image_path(image) for image in images])
        predictions = [Prediction(image["id"], *found) for image, boxes in zip(images, detections) for found in boxes]
        scores[trial_dir.name] = evaluate(split.coco, predictions).mAP50
    return scores


def _median(values):
    values = sorted(values)
    return values[len(values) // 2] if values else float("nan")


def table(out, trials, epochs, gpu_per_trial):
    from detfuse.core.data import load_dataset

    settings = json.loads((out / "settings.json").read_text())
    peer_timing = json.loads((out / "peer_timing.json").read_text())
    detfuse_timing = json.loads((out / "detfuse_timing.json").read_text())
    peer_trials = tune_trials(out / "peer" / "tune")
    detfuse_trials = tune_trials(out / "runs" / "peer")
    peer = run_summary(peer_trials, peer_timing["started"], peer_timing["finished"], epochs, gpu_per_trial, "epoch")
    ours = run_summary(detfuse_trials, detfuse_timing["started"], detfuse_timing["finished"], epochs, gpu_per_trial,
                       "epoch")
    peer_runs = sorted(p for p in (out / "peer").iterdir() if p.is_dir() and p.name.startswith("tune_"))
    peer_scores = score_peer_weights(peer_runs, settings["data"])
    peer["best_mAP50"] = max(peer_scores.values(), default=float("nan"))
    peer["own_best_mAP50"] = max(row.get("metrics/mAP50(B)", float("nan"))
                                 for rows in peer_trials.values() for row in rows)
    peer["checkpoints"] = sum(1 for _ in (out / "peer" / "tune").glob("*/checkpoint_*"))
    ours["best_mAP50"] = max(row["mAP50"] for rows in detfuse_trials.values() for row in rows)
    ours["own_best_mAP50"] = ours["best_mAP50"]
    ours["checkpoints"] = sum(1 for _ in (out / "runs" / "peer").glob("*/checkpoint_*"))
    ours["median_img_s"] = _median([row["images_per_sec"] for rows in detfuse_trials.values() for row in rows[1:]])
    epoch_rows = [row for rows in detfuse_trials.values() for row in rows[1:]]
    ours["epoch_s"] = _median([row["time_this_iter_s"] for row in epoch_rows])
    train_images = len(load_dataset(settings["data"]).splits["train"].coco["images"])  # one epoch draws as many
    ours["train_s"] = _median([train_images / row["images_per_sec"] for row in epoch_rows])
    ours["eval_s"] = _median([row["evaluation_seconds"] for row in epoch_rows])
    peer["epoch_s"] = _median([row["time_this_iter_s"] for rows in peer_trials.values() for row in rows[1:]])

    lines = [f"card: {settings['card']}", f"{trials} YOLOv5n trials x {epochs} epochs, {settings['image_size']} px, "
             f"batch {settings['batch']}, {gpu_per_trial} GPU a trial, ASHA grace 3 / reduction 3", "",
             "| | Ultralytics tune(use_ray=True) | detfuse tune |", "|---|---|---|"]
    rows = [("wall time (s)", "wall_s", "{:.1f}"), ("time to first trial start (s)", "first_trial_s", "{:.1f}"),
            ("GPU-seconds (trial time x GPU share)", "gpu_s", "{:.1f}"), ("trials", "trials", "{}"),
            ("most trials running at once", "most_at_once", "{}"),
            ("trials stopped early", "stopped_early", "{}"),
            ("best mAP50, detfuse's evaluator", "best_mAP50", "{:.4f}"),
            ("best mAP50, as each reported it", "own_best_mAP50", "{:.4f}"),
            ("checkpoints kept in Tune's storage", "checkpoints", "{}")]
    for label, key, form in rows:
        lines.append(f"| {label} | {form.format(peer[key])} | {form.format(ours[key])} |")
    lines += ["", f"wall time ratio detfuse / peer: {ours['wall_s'] / peer['wall_s']:.2f}",
              f"median epoch after the first (s): peer {peer['epoch_s']:.2f}, detfuse {ours['epoch_s']:.2f} = "
              f"training {ours['train_s']:.2f} + evaluation {ours['eval_s']:.2f} + the rest (checkpoint, report) "
              f"{ours['epoch_s'] - ours['train_s'] - ours['eval_s']:.2f}; detfuse median training speed "
              f"{ours['median_img_s']:.0f} img/s a trial",
              "peer mAP50 per trial (detfuse's evaluator): "
              + ", ".join(f"{name} {score:.4f}" for name, score in sorted(peer_scores.items()))]
    (out / "summary.json").write_text(json.dumps({"peer": peer, "detfuse": ours, "peer_scores": peer_scores},
                                                 indent=2))
    print("\n".join(lines))


if __name__ == "__main__":
    command, arguments = sys.argv[1], sys.argv[2:]
    if command == "yolo-data":
        yolo_data(*arguments)
    elif command == "peer":
        data, out, trials, epochs, image_size, batch, gpu = arguments
        run_peer(data, Path(out), int(trials), int(epochs), int(image_size), int(batch), float(gpu))
    elif command == "table":
        out, trials, epochs, gpu = arguments
        table(Path(out), int(trials), int(epochs), float(gpu))
    else:
        sys.exit(f"unknown command {command}: peer or table")
