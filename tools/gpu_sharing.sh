# Sourced before `ray start` on a node, in the same command (cluster.yaml, cluster-onprem.yaml):
#
#   source ~/detfuse/tools/gpu_sharing.sh; ray start ...
#
# Trials that share a GPU (YOLO trials at a fraction of one, detectron2 trials at `gpu: 0.5`) are separate
# processes, and without NVIDIA's Multi-Process Service the GPU runs one process's kernels at a time: two Faster
# R-CNN trials on one H200 trained 1.2-1.3x as fast together as one alone, 1.7x with MPS, three 2.3x
# (benchmarks/RESULTS.md). This starts MPS's control daemon where it is not running and exports its pipe
# directory, so that the raylet and the worker processes it starts connect to it.
#
# On a node with one NVIDIA GPU by default; DETFUSE_MPS=1 also on nodes with several (DDP trials use whole GPUs,
# and NCCL between MPS clients has not been tested with detfuse); DETFUSE_MPS=0 never. A node without nvidia-smi
# or nvidia-cuda-mps-control is left as it is. MPS runs the kernels of its clients side by side: a GPU fault in
# one trial can end the others on that GPU, which then resume from their checkpoints like any failed trial.
detfuse_mps=${DETFUSE_MPS:-auto}
if [[ $detfuse_mps != 0 ]] && command -v nvidia-smi >/dev/null && command -v nvidia-cuda-mps-control >/dev/null; then
  detfuse_gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true)
  if [[ $detfuse_gpus -eq 1 || ($detfuse_gpus -gt 1 && $detfuse_mps == 1) ]]; then
    export CUDA_MPS_PIPE_DIRECTORY=${CUDA_MPS_PIPE_DIRECTORY:-/tmp/detfuse-mps/pipe}
    export CUDA_MPS_LOG_DIRECTORY=${CUDA_MPS_LOG_DIRECTORY:-/tmp/detfuse-mps/log}
    mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
    # a client call fails when no daemon answers on this pipe directory
    if echo get_server_list | nvidia-cuda-mps-control >/dev/null 2>&1 || nvidia-cuda-mps-control -d; then
      echo "detfuse: trials sharing a GPU on this node run through MPS (pipe $CUDA_MPS_PIPE_DIRECTORY)"
    else
      echo "detfuse: could not start MPS (see $CUDA_MPS_LOG_DIRECTORY); trials share GPUs without it" >&2
      unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
    fi
  fi
  unset detfuse_gpus
fi
unset detfuse_mps
true  # whatever happened above, `ray start` comes next
