#!/usr/bin/env bash
# Throughput of one trial of each family inside Ray Tune, and the whole pipeline, on one GPU machine.
#
#   DATA=path/to/coco-dataset OUT=results-dir bash benchmarks/gpu_pipeline.sh
#
# Expects detfuse's dependencies importable (PYTHONPATH may point at a staged site directory) and detectron2
# installed. Writes the pipeline's output, the trials' metrics and timings.txt under OUT.
set -euo pipefail
: "${DATA:?set DATA to a COCO dataset directory}" "${OUT:?set OUT to a results directory}"
mkdir -p "$OUT"
here=$(cd "$(dirname "$0")/.." && pwd)
timings="$OUT/timings.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$timings"
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)' | tee -a "$timings"

python3 -m detfuse data check "$DATA" | tail -n 25 | tee -a "$timings"

# One experiment: Faster R-CNN R50-FPN trials on a whole GPU each, YOLOv5s trials on a quarter of one.
cat > "$OUT/experiment.yaml" <<YAML
name: gpu-bench
dataset: $DATA
storage: $OUT/runs
spaces:
  - space: $here/benchmarks/spaces/bench_faster_rcnn.yaml
    num_samples: 2
    resources: {cpu: 6, gpu: 1}
  - space: $here/benchmarks/spaces/bench_yolov5s.yaml
    num_samples: 4
    resources: {cpu: 2, gpu: 0.25}
scheduler: {reduction_factor: 2}
ensemble: {top: 2}
YAML
start=$(date +%s)
python3 -m detfuse pipeline "$OUT/experiment.yaml" 2>&1 | tee "$OUT/pipeline.log" | grep -v '^\s*$' | tail -n 60 || true
echo "pipeline wall time: $(( $(date +%s) - start )) s" | tee -a "$timings"
python3 - "$OUT/runs/gpu-bench" <<'PY' | tee -a "$timings"
import json, pathlib, statistics, sys
experiment = pathlib.Path(sys.argv[1])
for trial in sorted(p for p in experiment.iterdir() if (p / "result.json").exists()):
    rows = [json.loads(line) for line in (trial / "result.json").read_text().splitlines()]
    speeds = [r["images_per_sec"] for r in rows if "images_per_sec" in r]
    print(f"{trial.name}: epochs {rows[-1]['epoch']:.1f}, best mAP50 {max(r['mAP50'] for r in rows):.4f}, "
          f"images/s median {statistics.median(speeds) if speeds else float('nan'):.1f}")
summary = experiment / "ensemble" / "summary.json"
if summary.exists():
    summary = json.loads(summary.read_text())
    print("ensemble gains:", json.dumps(summary["gains"]), "timing:", json.dumps(summary["timing"]))
PY
