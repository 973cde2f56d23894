#!/usr/bin/env bash
# Placement and GPU utilisation of a mixed search on every GPU of one machine: detectron2 DDP trials on all of
# its GPUs next to fractional YOLO trials, with the GPUs sampled every second.
#
#   DATA=path/to/coco-dataset OUT=results-dir [D2_TRIALS=2] [YOLO_TRIALS=8] [D2_GPU=0.5] bash benchmarks/placement.sh
#
# The search: D2_TRIALS Faster R-CNN R50-FPN trials (benchmarks/spaces/bench_faster_rcnn.yaml) asking for every
# GPU (Ray Train DDP, one worker a GPU; on a one-GPU machine the trial trains in its own process) and half the
# CPUs (or, with D2_GPU set, that share of a GPU and a quarter of the CPUs: two trials sharing a large card),
# and YOLO_TRIALS YOLOv5s trials (benchmarks/spaces/bench_yolov5s.yaml) at a quarter of a GPU and 2 CPUs each,
# ASHA reduction 2. Beside it, nvidia-smi records each GPU's utilisation and which processes hold memory on it.
# Writes OUT/placement.md: mean utilisation per GPU while trials were waiting to start (target >= 80 %),
# seconds a GPU sat idle while trials waited, and for every training process the GPUs it used (a YOLO trial one,
# a DDP worker one).
set -euo pipefail
: "${DATA:?set DATA to a COCO dataset directory}" "${OUT:?set OUT to an empty results directory}"
D2_TRIALS=${D2_TRIALS:-2} YOLO_TRIALS=${YOLO_TRIALS:-8}
source "$(dirname "$0")/common.sh"
gpus=$(nvidia-smi -L | wc -l)
if [[ -n ${D2_GPU:-} ]]; then d2_gpu=$D2_GPU d2_cpu=$(( $(nproc) > 7 ? $(nproc) / 4 : 1 )); else d2_gpu=$gpus d2_cpu=$(( $(nproc) > 3 ? $(nproc) / 2 : 1 )); fi
nvidia-smi --query-gpu=index,uuid,name --format=csv,noheader > "$OUT/gpus.csv"
cat > "$OUT/experiment.yaml" <<YAML
name: placement
dataset: $DATA
storage: $OUT/runs
spaces:
  - {space: $here/benchmarks/spaces/bench_faster_rcnn.yaml, num_samples: $D2_TRIALS, resources: {cpu: $d2_cpu, gpu: $d2_gpu}}
  - {space: $here/benchmarks/spaces/bench_yolov5s.yaml, num_samples: $YOLO_TRIALS, resources: {cpu: 2, gpu: 0.25}}
scheduler: {reduction_factor: 2}
YAML

# utilisation every second, and which process holds memory on which GPU (with its command line: a Ray Train
# worker or a trial's own process)
nvidia-smi --query-gpu=timestamp,index,utilization.gpu,memory.used --format=csv,noheader,nounits -lms 1000 \
  > "$OUT/utilisation.csv" &
utilisation=$!
(
  while true; do
    now=$(date +%s.%N)
    nvidia-smi --query-compute-apps=gpu_uuid,pid,used_memory --format=csv,noheader,nounits 2>/dev/null |
      while IFS=', ' read -r uuid pid memory; do
        echo "$now,$uuid,$pid,$memory,$(ps -o args= -p "$pid" 2>/dev/null | cut -c1-80 | tr ',' ' ')"
      done
    sleep 1
  done
) > "$OUT/processes.csv" &
processes=$!
trap 'kill $utilisation $processes 2>/dev/null || true' EXIT

echo "{\"started\": $(date +%s.%N)}" > "$OUT/started.json"
RAY_ADDRESS=local python3 -m detfuse tune "$OUT/experiment.yaml" > "$OUT/tune.log" 2>&1 || echo "tune exited $?"
kill $utilisation $processes 2>/dev/null || true
python3 "$here/benchmarks/placement_table.py" "$OUT" | tee "$OUT/placement.md"
