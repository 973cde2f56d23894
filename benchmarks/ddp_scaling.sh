#!/usr/bin/env bash
# DDP scaling of the detectron2 family: the same trial on 1, 2 (, 4) GPUs of one machine, steady training speed.
#
#   DATA=path/to/coco-dataset OUT=results-dir [GPUS="1 2"] [ARCHITECTURES="faster_rcnn retinanet"] \
#     [EPOCHS=4] [BATCH_PER_GPU=16] [IMAGE_SIZE=640] bash benchmarks/ddp_scaling.sh
#
# Each run is `detfuse train` of an R50-FPN from scratch (GN, AMP) with BATCH_PER_GPU images per GPU per
# iteration (the global batch grows with the GPUs: weak scaling, as DDP users run it) and the machine's CPUs
# shared out in proportion to the GPUs it takes. A trial on more than one GPU trains in Ray Train DDP workers
# (NCCL). Steady speed is the median images/s of the evaluations after the first (evaluation time excluded).
# Scaling efficiency at N GPUs = speed(N) / (N x speed(1)). Writes OUT/scaling.md.
set -euo pipefail
: "${DATA:?set DATA to a COCO dataset directory}" "${OUT:?set OUT to an empty results directory}"
GPUS=${GPUS:-"1 2"} ARCHITECTURES=${ARCHITECTURES:-"faster_rcnn retinanet"} EPOCHS=${EPOCHS:-4}
BATCH_PER_GPU=${BATCH_PER_GPU:-16} IMAGE_SIZE=${IMAGE_SIZE:-640}
source "$(dirname "$0")/common.sh"
machine_gpus=$(nvidia-smi -L | wc -l)
echo "card: $machine_gpus x $(card_name), $(nproc) CPUs; $BATCH_PER_GPU images per GPU, $IMAGE_SIZE px, $EPOCHS epochs" \
  > "$OUT/scaling.md"

for architecture in $ARCHITECTURES; do
  for gpus in $GPUS; do
    if (( gpus > machine_gpus )); then echo "skipping $gpus GPUs: this machine has $machine_gpus"; continue; fi
    name="$architecture-${gpus}gpu"
    cat > "$OUT/$name.yaml" <<YAML
architecture: $architecture
dataset: $DATA
max_epochs: $EPOCHS
eval_every: 1
hparams: {depth: 50, norm: GN, image_size: $IMAGE_SIZE, batch_size: $((BATCH_PER_GPU * gpus)), optimizer: adamw,
          lr: 2.0e-4, lr_schedule: cosine, anchor_sizes: [16, 32, 64, 128, 256]}
resources: {cpu: $(( $(nproc) * gpus / machine_gpus )), gpu: $gpus}
YAML
    echo "$name: $(date -u +%FT%TZ)"
    RAY_ADDRESS=local python3 -m detfuse train "$OUT/$name.yaml" --out "$OUT/$name" > "$OUT/$name.log" 2>&1
  done
done

python3 - "$OUT" $ARCHITECTURES <<'PY' | tee -a "$OUT/scaling.md"
import json, pathlib, statistics, sys
out, architectures = pathlib.Path(sys.argv[1]), sys.argv[2:]
print("\n| architecture | GPUs | global batch | steady img/s | scaling efficiency | last mAP50 | img/s per evaluation |")
print("|---|---|---|---|---|---|---|")
for architecture in architectures:
    single = None
    for run in sorted(out.glob(f"{architecture}-*gpu"), key=lambda p: int(p.name.rsplit("-", 1)[1][:-3])):
        gpus = int(run.name.rsplit("-", 1)[1][:-3])
        rows = [json.loads(line) for line in (run / "progress.jsonl").read_text().splitlines()]
        steady = statistics.median(r["images_per_sec"] for r in rows[1:]) if len(rows) > 1 else float("nan")
        single = steady if gpus == 1 else single
        efficiency = f"{steady / (gpus * single):.2f}" if single else "-"
        batch = json.loads((run / "trial_config.json").read_text())["hparams"]["batch_size"]
        speeds = ", ".join(f"{r['images_per_sec']:.1f}" for r in rows)
        print(f"| {architecture} | {gpus} | {batch} | {steady:.1f} | {efficiency} | {rows[-1]['mAP50']:.3f} | {speeds} |")
PY
