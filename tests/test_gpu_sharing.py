"""tools/gpu_sharing.sh, sourced before `ray start` on every node: trials sharing a node's GPU run through MPS.

The first test runs everywhere: a node without NVIDIA's tools is left as it is and `ray start` still follows. The
second needs a machine with one NVIDIA GPU and MPS (run on purpose there:
`pytest --noconftest tests/test_gpu_sharing.py`) and is skipped elsewhere.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "tools" / "gpu_sharing.sh"
PIPE = "/tmp/detfuse-mps/pipe"  # the script's default
RAY = f"{sys.executable} -m ray.scripts.scripts"


def sourced_then(command, env):
    """Run `command` in bash after sourcing the script with `set -e` on, as a start command would."""
    return subprocess.run([shutil.which("bash"), "-c", f"set -euo pipefail; source {SCRIPT}; {command}"], env=env,
                          capture_output=True, text=True, timeout=120)


def test_a_node_without_nvidia_tools_is_left_as_it_is(tmp_path):
    tools = tmp_path / "bin"  # what the script and this command use; no nvidia-smi, no nvidia-cuda-mps-control
    tools.mkdir()
    for tool in ("bash", "env", "grep", "mkdir"):
        (tools / tool).symlink_to(shutil.which(tool))
    env = {"PATH": str(tools), "HOME": str(tmp_path)}
    done = sourced_then("env; echo next-command-ran", env)
    assert done.returncode == 0, done.stderr
    assert "next-command-ran" in done.stdout
    assert "CUDA_MPS" not in done.stdout and "detfuse_" not in done.stdout  # nothing exported, nothing left over


def one_gpu_with_mps():
    if not (shutil.which("nvidia-smi") and shutil.which("nvidia-cuda-mps-control")):
        return False
    listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout
    return listed.count("GPU ") == 1


RAY_TRIAL = """
import json, os, ray, torch
ray.init(address="auto")
@ray.remote(num_gpus=0.5)
def trial():
    torch.ones(1, device="cuda").sum().item()  # a CUDA context: an MPS client from here on
    return os.getpid()
pids = ray.get([trial.remote() for _ in range(2)])
control = "CUDA_MPS_PIPE_DIRECTORY=%s nvidia-cuda-mps-control"
clients = set()
for server in os.popen(f"echo get_server_list | {control}").read().split():
    clients |= set(os.popen(f"echo get_client_list {server} | {control}").read().split())
print(json.dumps({"pids": pids, "clients": sorted(clients)}))
""" % PIPE


@pytest.mark.skipif(not one_gpu_with_mps(), reason="needs one NVIDIA GPU and nvidia-cuda-mps-control")
def test_ray_trials_sharing_the_gpu_run_as_mps_clients():
    """The daemon's pipe directory reaches the processes Ray starts: not being told it, they would run without
    MPS."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("CUDA_MPS_")}
    ray_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # Ray's socket paths must stay short
    started = sourced_then(f"{RAY} start --head --num-cpus 2 --num-gpus 1 --temp-dir {ray_dir}", env)
    try:
        assert started.returncode == 0, started.stderr
        assert f"run through MPS (pipe {PIPE})" in started.stdout
        ran = subprocess.run([sys.executable, "-c", RAY_TRIAL], env=env, capture_output=True, text=True,
                             timeout=300)
        assert ran.returncode == 0, ran.stderr
        found = json.loads(ran.stdout.strip().splitlines()[-1])
        assert found["pids"] and set(map(str, found["pids"])) <= set(found["clients"]), found
        # sourcing it again (a second `ray up`) finds the running daemon instead of failing
        again = sourced_then("echo next-command-ran", env)
        assert again.returncode == 0 and "next-command-ran" in again.stdout, again.stderr
    finally:
        subprocess.run(f"{RAY} stop --force", shell=True, env=env, capture_output=True, timeout=120)
        subprocess.run(["nvidia-cuda-mps-control"], input="quit\n", env={**env, "CUDA_MPS_PIPE_DIRECTORY": PIPE},
                       text=True, timeout=60)
        shutil.rmtree(ray_dir, ignore_errors=True)
