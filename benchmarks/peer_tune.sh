#!/usr/bin/env bash
# detfuse tune against the peer users would otherwise pick, Ultralytics' own Ray tuner, on one GPU.
#
#   DATA=path/to/coco-dataset OUT=results-dir [TRIALS=8] [EPOCHS=12] [IMAGE_SIZE=416] [BATCH=32] \
#     [GPU_PER_TRIAL=0.25] bash benchmarks/peer_tune.sh
#
# The same budget for both: TRIALS YOLOv5n trials from scratch, EPOCHS epochs at most, ASHA with grace period 3
# and reduction factor 3, GPU_PER_TRIAL of the GPU a trial. The peer is `YOLO("yolov5n.yaml").tune(use_ray=True)`
# with its default search space and CPU request; detfuse searches optimizer, lr, momentum, weight decay and mosaic
# with nproc/4 CPUs a trial. detfuse runs first (a cold page cache is its handicap). Writes OUT/peer.md: wall
# time, time to the first trial's start, GPU-seconds, best mAP50 of each scored by detfuse's evaluator on the same
# val split, trials stopped early, checkpoints kept. Expects detfuse's dependencies importable.
set -euo pipefail
: "${DATA:?set DATA to a COCO dataset directory}" "${OUT:?set OUT to an empty results directory}"
TRIALS=${TRIALS:-8} EPOCHS=${EPOCHS:-12} IMAGE_SIZE=${IMAGE_SIZE:-416} BATCH=${BATCH:-32}
GPU_PER_TRIAL=${GPU_PER_TRIAL:-0.25}
source "$(dirname "$0")/common.sh"
card="$(card_name), $(nproc) CPUs, $(python3 -c 'import torch, ultralytics, ray; print(f"torch {torch.__version__}, Ultralytics {ultralytics.__version__}, Ray {ray.__version__}")' | tail -n 1)"
python3 - "$OUT/settings.json" "$DATA" "$card" "$IMAGE_SIZE" "$BATCH" <<'PY'
import json, sys
path, data, card, image_size, batch = sys.argv[1:]
json.dump({"data": data, "card": card, "image_size": int(image_size), "batch": int(batch)}, open(path, "w"))
PY

cpus=$(( $(nproc) / 4 > 0 ? $(nproc) / 4 : 1 ))
cat > "$OUT/space.yaml" <<YAML
architecture: yolov5n
budget: {max_epochs: $EPOCHS, grace_epochs: 3}
fixed:
  eval_every: 1
  hparams: {image_size: $IMAGE_SIZE, batch_size: $BATCH}
space:
  optimizer: {choice: [sgd, adamw]}
  lr: {loguniform: [1.0e-3, 2.0e-2]}
  momentum: {uniform: [0.85, 0.97]}
  weight_decay: {loguniform: [1.0e-5, 1.0e-3]}
  mosaic: {uniform: [0.5, 1.0]}
YAML
cat > "$OUT/experiment.yaml" <<YAML
name: peer
dataset: $DATA
storage: $OUT/runs
spaces:
  - {space: $OUT/space.yaml, num_samples: $TRIALS, resources: {cpu: $cpus, gpu: $GPU_PER_TRIAL}}
scheduler: {reduction_factor: 3}
YAML

echo "detfuse tune: $(date -u +%FT%TZ)"
started=$(date +%s.%N)
RAY_ADDRESS=local python3 -m detfuse tune "$OUT/experiment.yaml" > "$OUT/detfuse.log" 2>&1
echo "{\"started\": $started, \"finished\": $(date +%s.%N)}" > "$OUT/detfuse_timing.json"

echo "Ultralytics tune(use_ray=True): $(date -u +%FT%TZ)"
data_yaml=$(python3 "$here/benchmarks/peer_tune.py" yolo-data "$DATA")
started=$(date +%s.%N)
(cd "$OUT" && python3 "$here/benchmarks/peer_tune.py" peer "$data_yaml" "$OUT" "$TRIALS" "$EPOCHS" "$IMAGE_SIZE" \
  "$BATCH" "$GPU_PER_TRIAL") > "$OUT/peer.log" 2>&1
echo "{\"started\": $started, \"finished\": $(date +%s.%N)}" > "$OUT/peer_timing.json"

python3 "$here/benchmarks/peer_tune.py" table "$OUT" "$TRIALS" "$EPOCHS" "$GPU_PER_TRIAL" | tee "$OUT/peer.md"
