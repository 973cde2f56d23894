#!/usr/bin/env bash
# Ensemble quality on a real dataset: both families tuned side by side on the same GPUs, then the ensemble stage.
# Does the cross-family ensemble beat the best single model and every same-family ensemble, and does every
# member re-score to the mAP50 its trial reported?
#
#   DATA=path/to/coco-dataset OUT=results-dir [STEP_SECONDS=480] [SEED=0] [TOP=2] [TTA=hflip] \
#     bash benchmarks/ensemble_quality.sh
#
# Each run works at most STEP_SECONDS, then stops the pipeline with SIGINT (Tune saves its state); run the same
# command again to go on where it stopped, until it prints the table (OUT/quality.md). Expects detfuse's
# dependencies importable (PYTHONPATH may point at a staged site directory) and detectron2 installed.
#
# The budget: the machine's GPUs are shared out so that the detectron2 trials (2 Faster R-CNN, 2 RetinaNet, a
# quarter of the GPUs each, 10 epochs at most) and the YOLO trials (4 YOLOv5s, an eighth each, 80 epochs at most)
# run side by side; GPU-seconds per family are counted from the trials' own time and printed with the table.
# The ensemble takes the top TOP trials of each family, with TTA=hflip each also on mirrored images.
set -euo pipefail
: "${DATA:?set DATA to a COCO dataset directory}" "${OUT:?set OUT to a results directory}"
STEP_SECONDS=${STEP_SECONDS:-480}
here=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$OUT"
experiment="$OUT/runs/quality"
if [[ ! -e $OUT/experiment.yaml ]]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUT/card.txt" || true
  python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)' >> "$OUT/card.txt"
  gpus=$(nvidia-smi -L | wc -l) cpus=$(nproc)
  d2_cpus=$((cpus * 3 / 16)) yolo_cpus=$((cpus / 8))
  d2="cpu: $((d2_cpus > 0 ? d2_cpus : 1)), gpu: $(python3 -c "print($gpus / 4)")"
  yolo="cpu: $((yolo_cpus > 0 ? yolo_cpus : 1)), gpu: $(python3 -c "print($gpus / 8)")"
  cat > "$OUT/experiment.yaml" <<YAML
name: quality
dataset: $DATA
storage: $OUT/runs
spaces:
  - {space: $here/benchmarks/spaces/quality_faster_rcnn.yaml, num_samples: 2, resources: {$d2}}
  - {space: $here/benchmarks/spaces/quality_retinanet.yaml, num_samples: 2, resources: {$d2}}
  - {space: $here/benchmarks/spaces/quality_yolov5s.yaml, num_samples: 4, resources: {$yolo}}
scheduler: {reduction_factor: 3}
ensemble: {top: ${TOP:-2}, tta: ${TTA:-hflip}}
seed: ${SEED:-0}
YAML
fi
echo "step started $(date -u +%FT%TZ)" >> "$OUT/steps.log"
rc=0
timeout -s INT -k 90 "$STEP_SECONDS" python3 -m detfuse pipeline "$OUT/experiment.yaml" >> "$OUT/pipeline.log" 2>&1 || rc=$?
echo "step ended $(date -u +%FT%TZ) exit $rc" >> "$OUT/steps.log"
if [[ ! -e $experiment/ensemble/summary.json ]]; then
  echo "not finished after this step (exit $rc): run the same command again to resume"
  tail -n 30 "$OUT/pipeline.log"
  exit 0
fi
python3 "$here/benchmarks/ensemble_quality_table.py" "$experiment" "$OUT/card.txt" | tee "$OUT/quality.md"
