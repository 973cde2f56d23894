# Sourced before `ray start` on a node, in the same command (cluster.yaml, cluster-onprem.yaml):
#
#   source ~/detfuse/tools/gpu_sharing.sh; ray start ...
#
# Trials that share a GPU (YOLO trials at a fraction of one, detectron2 trials at `gpu: 0.5`) are separate
# processes, and without NVIDIA's Multi-Process Service the GPU runs one process's kernels at a time; with it,
# their kernels run side by side (benchmarks/RESULTS.md measures both). This starts MPS's control daemon, unless
# one already answers, and exports its pipe directory, so that the raylet and the processes it starts use it.
#
# DETFUSE_MPS=auto (default): on a node with one NVIDIA GPU; 1: also on nodes with several (DDP trials use whole
# GPUs, and NCCL between MPS clients has not been tested with detfuse); 0: never. A node without nvidia-smi or
# nvidia-cuda-mps-control is left as it is, and whatever fails here, the command goes on to `ray start`. MPS
# runs the kernels of its clients side by side: a GPU fault in one trial can end the others on that GPU, which
# then resume from their checkpoints like any failed trial.
detfuse_mps=${DETFUSE_MPS:-auto}
case $detfuse_mps in
  0|1|auto) ;;
  *) echo "detfuse: DETFUSE_MPS must be 0, 1 or auto, got '$detfuse_mps'; MPS is not started" >&2; detfuse_mps=0 ;;
esac
if [[ $detfuse_mps != 0 ]] && command -v nvidia-smi >/dev/null && command -v nvidia-cuda-mps-control >/dev/null; then
  detfuse_gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true)
  if [[ $detfuse_gpus -eq 1 || ($detfuse_gpus -gt 1 && $detfuse_mps == 1) ]]; then
    # a client call fails when no daemon answers on the pipe directory it is given
    detfuse_pipe=/tmp/detfuse-mps-$(id -u)  # one daemon per user: an MPS server serves one user at a time
    if echo get_server_list | nvidia-cuda-mps-control >/dev/null 2>&1; then
      echo "detfuse: trials sharing a GPU on this node run through the MPS daemon already running" \
        "(pipe ${CUDA_MPS_PIPE_DIRECTORY:-/tmp/nvidia-mps})"
    elif mkdir -p "$detfuse_pipe/pipe" "$detfuse_pipe/log" 2>/dev/null && {
        echo get_server_list | CUDA_MPS_PIPE_DIRECTORY=$detfuse_pipe/pipe nvidia-cuda-mps-control >/dev/null 2>&1 ||
        CUDA_MPS_PIPE_DIRECTORY=$detfuse_pipe/pipe CUDA_MPS_LOG_DIRECTORY=$detfuse_pipe/log nvidia-cuda-mps-control -d
      }; then
      export CUDA_MPS_PIPE_DIRECTORY=$detfuse_pipe/pipe CUDA_MPS_LOG_DIRECTORY=$detfuse_pipe/log
      echo "detfuse: trials sharing a GPU on this node run through MPS (pipe $CUDA_MPS_PIPE_DIRECTORY)"
    else
      echo "detfuse: could not start MPS in $detfuse_pipe; trials share GPUs without it" >&2
    fi
    unset detfuse_pipe
  fi
  unset detfuse_gpus
fi
unset detfuse_mps
true  # whatever happened above, `ray start` comes next
