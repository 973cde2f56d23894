"""tools/gpu_sharing.sh, sourced before `ray start` on every node: trials sharing a node's GPU run through MPS.

Off a GPU machine the script's choices are checked with stand-ins for nvidia-smi and nvidia-cuda-mps-control that
record how they were called. The last test needs one NVIDIA GPU with MPS and starts and stops a Ray head and an
MPS daemon of its own, so it runs only on purpose:
`DETFUSE_TEST_MPS=1 pytest --noconftest tests/test_gpu_sharing.py`.
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
PIPE = f"/tmp/detfuse-mps-{os.getuid()}/pipe"  # the script's own pipe directory
RAY = f"{sys.executable} -m ray.scripts.scripts"


def sourced_then(command, env):
    """Source the script in bash, then run `command`; with `set -euo pipefail`, so that nothing in the script
    can stop the command after it even in a strict shell."""
    return subprocess.run([shutil.which("bash"), "-c", f"set -euo pipefail; source {SCRIPT}; {command}"],
                          env=env, capture_output=True, text=True, timeout=120)


def node_tools(tmp_path, gpus=None, daemon="absent"):
    """A PATH holding what the script uses; with `gpus`, stand-ins for NVIDIA's tools that log their calls:
    nvidia-smi lists `gpus` GPUs, and the MPS control client finds no daemon and then starts one (`daemon`
    "absent"), fails to start one ("fails"), or finds one running ("running")."""
    tools = tmp_path / "bin"
    tools.mkdir()
    for tool in ("bash", "env", "grep", "mkdir", "id", "cat"):
        (tools / tool).symlink_to(shutil.which(tool))
    if gpus is not None:
        log = tmp_path / "calls"
        gpu_lines = "".join(f"GPU {i}: NVIDIA H200 (UUID: GPU-{i})\\n" for i in range(gpus))
        (tools / "nvidia-smi").write_text(f"#!{shutil.which('bash')}\nprintf '{gpu_lines}'\n")
        answers = {"absent": "exit 1", "fails": "exit 1", "running": "exit 0"}[daemon]
        starts = "exit 1" if daemon == "fails" else "exit 0"
        (tools / "nvidia-cuda-mps-control").write_text(
            f"#!{shutil.which('bash')}\necho \"$* pipe=${{CUDA_MPS_PIPE_DIRECTORY:-default}}\" >> {log}\n"
            f"if [[ $1 == -d ]]; then {starts}; fi\ncat > /dev/null\n{answers}\n")
        for tool in ("nvidia-smi", "nvidia-cuda-mps-control"):
            (tools / tool).chmod(0o755)
    return {"PATH": str(tools), "HOME": str(tmp_path)}


def exported_after(tmp_path, env):
    """(what the script printed, the CUDA_MPS_* variables and detfuse_* leftovers the next command sees, the
    calls to the MPS control client)."""
    done = sourced_then("compgen -v detfuse_ || true; env | grep ^CUDA_MPS_ || true; echo next-command-ran", env)
    assert done.returncode == 0 and done.stdout.endswith("next-command-ran\n"), done
    seen = sorted(line for line in done.stdout.splitlines()[:-1] if not line.startswith("detfuse: "))
    log = tmp_path / "calls"
    calls = [call.strip() for call in log.read_text().splitlines()] if log.exists() else []
    return done.stdout + done.stderr, seen, calls


def test_a_node_without_nvidia_tools_is_left_as_it_is(tmp_path):
    _, seen, calls = exported_after(tmp_path, node_tools(tmp_path))
    assert seen == [] and calls == []


def test_a_node_with_one_gpu_starts_its_own_daemon_and_hands_its_pipe_to_ray(tmp_path):
    said, seen, calls = exported_after(tmp_path, node_tools(tmp_path, gpus=1))
    assert seen == [f"CUDA_MPS_LOG_DIRECTORY={PIPE[:-4]}log", f"CUDA_MPS_PIPE_DIRECTORY={PIPE}"]
    assert calls == ["pipe=default", f"pipe={PIPE}", f"-d pipe={PIPE}"]  # none on either pipe: start one
    assert "run through MPS" in said


@pytest.mark.parametrize("gpus, setting, starts", [(2, None, False), (2, "1", True), (1, "0", False),
                                                   (1, "off", False)])
def test_detfuse_mps_chooses_the_nodes(tmp_path, gpus, setting, starts):
    env = node_tools(tmp_path, gpus=gpus)
    if setting is not None:
        env["DETFUSE_MPS"] = setting
    said, seen, calls = exported_after(tmp_path, env)
    assert bool(seen) == starts and (f"-d pipe={PIPE}" in calls) == starts
    if setting == "off":
        assert "DETFUSE_MPS must be 0, 1 or auto, got 'off'" in said


def test_a_running_daemon_is_used_and_a_failed_start_leaves_the_gpu_shared_without_mps(tmp_path):
    running, failing = tmp_path / "running", tmp_path / "failing"
    running.mkdir(), failing.mkdir()
    _, seen, calls = exported_after(running, {**node_tools(running, gpus=1, daemon="running"),
                                              "CUDA_MPS_PIPE_DIRECTORY": "/run/admin-mps"})
    assert seen == ["CUDA_MPS_PIPE_DIRECTORY=/run/admin-mps"] and calls == ["pipe=/run/admin-mps"]
    said, seen, calls = exported_after(failing, node_tools(failing, gpus=1, daemon="fails"))
    assert seen == [] and calls[-1] == f"-d pipe={PIPE}" and "could not start MPS" in said


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


@pytest.mark.skipif(os.environ.get("DETFUSE_TEST_MPS") != "1",
                    reason="on purpose only, on a machine with one NVIDIA GPU and MPS: DETFUSE_TEST_MPS=1")
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
        # sourcing it again (a second `ray up`) finds the daemon it started and hands on the same pipe
        again = sourced_then("echo next-command-ran", env)
        assert again.returncode == 0 and f"run through MPS (pipe {PIPE})" in again.stdout, again
    finally:
        subprocess.run(f"{RAY} stop --force", shell=True, env=env, capture_output=True, timeout=120)
        subprocess.run(["nvidia-cuda-mps-control"], input="quit\n", env={**env, "CUDA_MPS_PIPE_DIRECTORY": PIPE},
                       text=True, timeout=60)
        shutil.rmtree(ray_dir, ignore_errors=True)
