#!/usr/bin/env bash
# What running inside Ray Tune costs a trial: steady training speed of the same trial standalone (`detfuse train`)
# and as the only trial of `detfuse tune`, on the same GPU, one after the other.
#
#   DATA=path/to/coco-dataset OUT=results-dir [FAMILIES="yolov5s faster_rcnn"] bash benchmarks/tune_overhead.sh
#
# yolov5s: 416 px, batch 32, 6 epochs; faster_rcnn: R50-FPN GN from scratch, AMP, 416 px, batch 16, 3 epochs.
# Each run gets one whole GPU and the same CPUs (min(nproc, 8): what a standalone trial's loaders use). Steady
# speed is the median images/s of the epochs after the first. Writes OUT/overhead.md.
set -euo pipefail
: "${DATA:?set DATA to a COCO dataset directory}" "${OUT:?set OUT to an empty results directory}"
FAMILIES=${FAMILIES:-"yolov5s faster_rcnn"}
source "$(dirname "$0")/common.sh"
cpus=$(( $(nproc) < 8 ? $(nproc) : 8 ))
gpus=$(python3 -c 'import torch; print(1 if torch.cuda.is_available() else 0)')
echo "card: $(card_name), $(nproc) CPUs, $cpus CPUs a trial" > "$OUT/overhead.md"

for architecture in $FAMILIES; do
  case $architecture in
    yolov5s) epochs=6 hparams="{image_size: 416, batch_size: 32}" ;;
    faster_rcnn) epochs=3 hparams="{depth: 50, norm: GN, image_size: 416, batch_size: 16, optimizer: adamw, lr: 2.0e-4, lr_schedule: cosine, anchor_sizes: [16, 32, 64, 128, 256]}" ;;
    *) echo "unknown architecture $architecture: yolov5s or faster_rcnn" >&2; exit 2 ;;
  esac
  cat > "$OUT/$architecture-trial.yaml" <<YAML
architecture: $architecture
dataset: $DATA
max_epochs: $epochs
eval_every: 1
hparams: $hparams
resources: {cpu: $cpus, gpu: $gpus}
YAML
  cat > "$OUT/$architecture-space.yaml" <<YAML
architecture: $architecture
budget: {max_epochs: $epochs, grace_epochs: $epochs}
fixed:
  eval_every: 1
  hparams: $hparams
YAML
  cat > "$OUT/$architecture-experiment.yaml" <<YAML
name: overhead-$architecture
dataset: $DATA
storage: $OUT/runs
spaces:
  - {space: $OUT/$architecture-space.yaml, num_samples: 1, resources: {cpu: $cpus, gpu: $gpus}}
YAML
  echo "$architecture standalone: $(date -u +%FT%TZ)"
  python3 -m detfuse train "$OUT/$architecture-trial.yaml" --out "$OUT/standalone-$architecture" \
    > "$OUT/standalone-$architecture.log" 2>&1
  echo "$architecture in Tune: $(date -u +%FT%TZ)"
  RAY_ADDRESS=local python3 -m detfuse tune "$OUT/$architecture-experiment.yaml" > "$OUT/tune-$architecture.log" 2>&1
done

python3 - "$OUT" $FAMILIES <<'PY' | tee -a "$OUT/overhead.md"
import json, pathlib, statistics, sys
out, architectures = pathlib.Path(sys.argv[1]), sys.argv[2:]
print("\n| architecture | standalone img/s | in Tune img/s | ratio | epochs | per-epoch speeds standalone / Tune |")
print("|---|---|---|---|---|---|")
for architecture in architectures:
    standalone = [json.loads(l) for l in (out / f"standalone-{architecture}" / "progress.jsonl").read_text().splitlines()]
    in_tune = [json.loads(l) for l in next((out / "runs" / f"overhead-{architecture}").glob("*/result.json")).read_text().splitlines()]
    steady = [statistics.median(r["images_per_sec"] for r in rows[1:]) for rows in (standalone, in_tune)]
    speeds = " / ".join(", ".join(f"{r['images_per_sec']:.0f}" for r in rows) for rows in (standalone, in_tune))
    print(f"| {architecture} | {steady[0]:.1f} | {steady[1]:.1f} | {steady[1] / steady[0]:.3f} | {len(in_tune)} | {speeds} |")
PY
