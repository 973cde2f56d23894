"""cluster.yaml (AWS) and cluster-onprem.yaml (local provider): accepted by Ray's own cluster launcher checks,
and true to the project's rules; configs/trash.yaml runs on the AWS cluster's node types.

Ray's checks run offline: `prepare_config` fills in Ray's bundled defaults.yaml and `validate_config` applies
ray-schema.json, which rejects unknown keys. A guard fails any test that opens a network connection, so nothing
here can reach AWS. Ray accepts many configs this project must not ship (a GPU node type that hides its GPUs,
AWS keys in setup commands, an open dashboard), so `rule_violations` checks those rules, and every rule is shown
to reject a copy of the file that breaks it.
"""

import copy
import re
import socket
from pathlib import Path

import jsonschema
import pytest
import yaml

from detfuse.stages.experiment import load_experiment

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest itself depends on tomli there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
AWS = ROOT / "cluster.yaml"
ONPREM = ROOT / "cluster-onprem.yaml"
TRASH = ROOT / "configs" / "trash.yaml"
REMOTE_PROJECT = "~/detfuse"  # where file_mounts put the project on every node

# (vCPUs, GPUs) of EC2 instance types (AWS's published specifications)
INSTANCE_TYPES = {
    "m5.xlarge": (4, 0), "m5.2xlarge": (8, 0), "m5.4xlarge": (16, 0), "m5.8xlarge": (32, 0),
    "g4dn.xlarge": (4, 1), "g4dn.2xlarge": (8, 1), "g4dn.12xlarge": (48, 4),
    "g5.xlarge": (4, 1), "g5.2xlarge": (8, 1), "g5.4xlarge": (16, 1), "g5.8xlarge": (32, 1),
    "g5.12xlarge": (48, 4), "g5.24xlarge": (96, 4), "g5.48xlarge": (192, 8),
    "g6.xlarge": (4, 1), "g6.2xlarge": (8, 1), "g6.12xlarge": (48, 4),
    "p3.2xlarge": (8, 1), "p3.8xlarge": (32, 4), "p3.16xlarge": (64, 8),
    "p4d.24xlarge": (96, 8), "p5.48xlarge": (192, 8),
}
GPU_FAMILY = re.compile(r"^(g\d+\w*|p\d+\w*)\.")  # g4dn, g5, g6e, p3, p4d, p5, ...
AWS_KEYS = re.compile(r"AWS_ACCESS_KEY_ID|AWS_SECRET_ACCESS_KEY|AWS_SESSION_TOKEN|aws_access_key_id|"
                      r"aws_secret_access_key|\b(?:AKIA|ASIA)[0-9A-Z]{16}\b")
PACKAGE_INSTALL = re.compile(r"pip install .*(?:--editable|-e) \"?(?:\$HOME|~)/detfuse\[[^\]]*\bs3\b")
DETECTRON2_OFFICIAL = re.compile(r"DETECTRON2_ROUTE=official bash (?:\$HOME|~)/detfuse/tools/install_detectron2\.sh")
DASHBOARD_PORT = 8265


@pytest.fixture
def offline(monkeypatch):
    """Any DNS lookup or connection fails the test: validation must not touch AWS."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access during offline validation: {args}")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)


def ray_validate(config):
    """What `ray up` checks before it asks the cloud for anything; returns the config with Ray's defaults."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def load(path):
    return yaml.safe_load(path.read_text())


def write(tmp_path, config, name="cluster.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


# ------------------------------------------------------------------------------------------------- project rules

def rule_violations(path):
    """Every way the cluster config at `path` breaks the project's rules (empty when it keeps them all)."""
    text = path.read_text()
    config = yaml.safe_load(text)
    problems = _setup_problems(config) + _dashboard_problems(config) + _gpu_sharing_problems(config)
    if AWS_KEYS.search(text) or "aws_credentials" in config.get("provider", {}):
        problems.append("AWS keys in the file: nodes must get S3 access from an instance profile or their ~/.aws")
    if config["provider"]["type"] == "aws":
        problems += _aws_node_problems(config)
    return problems


def _setup_problems(config):
    problems = []
    commands = config.get("setup_commands") or []  # the commands every node runs
    installs = [i for i, command in enumerate(commands) if PACKAGE_INSTALL.search(command)]
    detectron2 = [i for i, command in enumerate(commands) if DETECTRON2_OFFICIAL.search(command)]
    if not installs:
        problems.append("setup_commands do not install the package (pip install --editable ~/detfuse[s3,...])")
    if not detectron2:
        problems.append("setup_commands do not install detectron2 by its official route "
                        "(DETECTRON2_ROUTE=official bash ~/detfuse/tools/install_detectron2.sh)")
    if installs and detectron2 and detectron2[0] < installs[0]:
        problems.append("setup_commands build detectron2 before the package installs torch")

    mounts = config.get("file_mounts") or {}
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = [p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]]
    needed = ["pyproject.toml", pyproject["project"]["readme"], "tools", *packages]
    for relative in needed:
        if f"{REMOTE_PROJECT}/{relative}" not in mounts:
            problems.append(f"file_mounts do not sync ./{relative} to {REMOTE_PROJECT}/{relative}")
    for remote, local in mounts.items():
        if not (ROOT / local).exists():
            problems.append(f"file_mounts: {remote} comes from {local}, which is not in the repository")
    return problems


def _gpu_sharing_problems(config):
    """Trials sharing a GPU run through MPS only when `ray start` inherits what tools/gpu_sharing.sh exports: it
    must be sourced in the same command, before it, on every node that may have a GPU (AWS heads are CPU-only)."""
    problems = []
    keys = ["worker_start_ray_commands"] + ([] if config["provider"]["type"] == "aws" else ["head_start_ray_commands"])
    for key in keys:
        starts = [c for c in config.get(key) or [] if "ray start" in c]
        if not all(re.search(rf"source {re.escape(REMOTE_PROJECT)}/tools/gpu_sharing\.sh;.*ray start", c, re.S)
                   for c in starts):
            problems.append(f"{key}: source {REMOTE_PROJECT}/tools/gpu_sharing.sh before `ray start`, in the same "
                            "command, so that trials sharing a GPU run through MPS")
    return problems


def _dashboard_problems(config):
    problems = []
    head_start = " ".join(config.get("head_start_ray_commands") or [])
    if not re.search(r"ray start --head\b.*--dashboard-host=(127\.0\.0\.1|localhost)\b", head_start):
        problems.append("head_start_ray_commands must bind the dashboard to 127.0.0.1 (reached through "
                        "`ray dashboard`, never from the internet)")
    for rule in config["provider"].get("security_group", {}).get("IpPermissions", []):
        all_ports = str(rule.get("IpProtocol")) == "-1" or rule.get("FromPort", 0) == -1
        if all_ports or rule.get("FromPort", 0) <= DASHBOARD_PORT <= rule.get("ToPort", -1):
            problems.append(f"provider.security_group opens the dashboard port {DASHBOARD_PORT}: {rule}")
    return problems


def _aws_node_problems(config):
    problems = []
    node_types = config["available_node_types"]
    head = config["head_node_type"]
    for name, node_type in node_types.items():
        node_config, resources = node_type["node_config"], node_type.get("resources", {})
        instance = node_config["InstanceType"]
        declared = resources.get("GPU", 0)
        if instance in INSTANCE_TYPES:
            cpus, gpus = INSTANCE_TYPES[instance]
            if declared != gpus or resources.get("CPU") != cpus:
                problems.append(f"{name}: resources must declare the {instance}'s {cpus} CPUs and {gpus} GPUs, "
                                f"got {resources}")
        elif GPU_FAMILY.match(instance) and declared < 1:
            problems.append(f"{name}: {instance} is a GPU instance but resources declare no GPU")
        if name == head and (declared or GPU_FAMILY.match(instance)):
            problems.append(f"{name}: the head node must be a CPU instance; trials run on GPU workers")
        if "IamInstanceProfile" not in node_config:
            problems.append(f"{name}: no IamInstanceProfile: the node could not reach S3")
        if "ImageId" not in node_config:
            problems.append(f"{name}: no ImageId: Ray would fall back to its own outdated default image")
        if "worker_setup_commands" in node_type:
            problems.append(f"{name}: its own worker_setup_commands would replace setup_commands on these nodes")
        if name != head and not ("min_workers" in node_type and "max_workers" in node_type):
            problems.append(f"{name}: min_workers and max_workers must be set (autoscaling limits)")
        if node_type.get("max_workers", 0) > config.get("max_workers", 0):
            problems.append(f"{name}: max_workers exceeds the cluster's max_workers ({config.get('max_workers')})")

    workers = {name: t for name, t in node_types.items() if name != head}
    gpu_counts = {t.get("resources", {}).get("GPU", 0) for t in workers.values()}
    if 1 not in gpu_counts:
        problems.append("no 1-GPU worker type for small and fractional trials")
    if not any(count >= 4 for count in gpu_counts):
        problems.append("no worker type with 4 or more GPUs for DDP trials")
    if not any(t["node_config"].get("InstanceMarketOptions", {}).get("MarketType") == "spot"
               for t in workers.values()):
        problems.append("no spot worker type")
    return problems


# ------------------------------------------------------------------------------------------- the shipped files

@pytest.mark.parametrize("path", [AWS, ONPREM], ids=lambda p: p.name)
def test_ray_accepts_the_cluster_config_offline(offline, path):
    prepared = ray_validate(load(path))
    assert prepared["head_node_type"] in prepared["available_node_types"]
    # Ray's defaults filled in what the file leaves out (the head's default setup would pip install boto3)
    assert "cluster_synced_files" in prepared
    assert prepared["head_setup_commands"] == load(path)["setup_commands"]


@pytest.mark.parametrize("path", [AWS, ONPREM], ids=lambda p: p.name)
def test_cluster_config_keeps_the_project_rules(path):
    assert rule_violations(path) == []


def test_aws_gpu_workers_scale_from_zero():
    """The shipped cluster costs only its head while no trial waits: no GPU node is kept up."""
    config = load(AWS)
    gpu_types = {name: t for name, t in config["available_node_types"].items() if t["resources"].get("GPU")}
    assert set(gpu_types) == {"gpu-1x", "gpu-4x", "gpu-1x-spot"}
    assert all(t["min_workers"] == 0 for t in gpu_types.values())


def test_onprem_cluster_lets_ray_detect_its_machines(offline):
    prepared = ray_validate(load(ONPREM))
    # the local provider builds its one node type itself, sized by the worker list
    (node_type,) = prepared["available_node_types"].values()
    assert node_type["max_workers"] == len(load(ONPREM)["provider"]["worker_ips"])


# ----------------------------------------------------------------- Ray's schema rejects what it does not know

@pytest.mark.parametrize("change", [
    lambda c: c.update(worker_setup_comands=[]),
    lambda c: c["available_node_types"]["gpu-1x"].update(max_worker=4),
    lambda c: c["available_node_types"]["gpu-1x"]["resources"].update(GPU=0.5),  # resources are whole numbers
], ids=["top-level typo", "node type typo", "fractional resource"])
def test_ray_rejects_a_broken_aws_cluster_config(offline, change):
    config = load(AWS)
    change(config)
    with pytest.raises(jsonschema.ValidationError):
        ray_validate(config)


def test_ray_rejects_node_types_in_an_onprem_cluster_config(offline):
    from click.exceptions import ClickException

    config = load(ONPREM)
    config["available_node_types"] = load(AWS)["available_node_types"]
    with pytest.raises(ClickException, match="available_node_types is not supported"):
        ray_validate(config)


# -------------------------------------------------------------- each project rule rejects a copy breaking it

def _node(name):
    return lambda c: c["available_node_types"][name]


def _replace_in_setup(old, new):
    def change(config):
        config["setup_commands"] = [command.replace(old, new) for command in config["setup_commands"]]
    return change


AWS_BREAKS = {
    "GPU type hides its GPUs": (lambda c: _node("gpu-4x")(c)["resources"].pop("GPU"), "gpu-4x: resources must"),
    "wrong GPU count": (lambda c: _node("gpu-1x")(c)["resources"].update(GPU=2), "gpu-1x: resources must"),
    "unknown GPU instance without GPUs": (
        lambda c: _node("gpu-1x")(c).update(node_config={**_node("gpu-1x")(c)["node_config"],
                                                         "InstanceType": "g9.xlarge"}, resources={"CPU": 4}),
        "g9.xlarge is a GPU instance but resources declare no GPU"),
    "GPU head": (lambda c: _node("head")(c).update(node_config={**_node("head")(c)["node_config"],
                                                                "InstanceType": "g5.2xlarge"},
                                                   resources={"CPU": 8, "GPU": 1}),
                 "head node must be a CPU instance"),
    "no package install": (lambda c: c.update(setup_commands=[x for x in c["setup_commands"] if "--editable" not in x]),
                           "do not install the package"),
    "package without s3 extra": (_replace_in_setup("[s3,wandb]", "[wandb]"), "do not install the package"),
    "detectron2 fallback route": (_replace_in_setup("DETECTRON2_ROUTE=official", "DETECTRON2_ROUTE=fallback"),
                                  "official route"),
    "detectron2 before torch": (lambda c: c["setup_commands"].insert(0, c["setup_commands"].pop()),
                                "before the package installs torch"),
    "tools not synced": (lambda c: c["file_mounts"].pop("~/detfuse/tools"), "do not sync ./tools"),
    "package not synced": (lambda c: c["file_mounts"].pop("~/detfuse/trainables"), "do not sync ./trainables"),
    "mount of a missing path": (lambda c: c["file_mounts"].update({"~/detfuse/data": "./no-such-dir"}),
                                "./no-such-dir, which is not in the repository"),
    "AWS key in setup": (lambda c: c["setup_commands"].append("export AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE"),
                         "AWS keys in the file"),
    "AWS credentials in provider": (
        lambda c: c["provider"].update(aws_credentials={"aws_access_key_id": "x", "aws_secret_access_key": "y"}),
        "AWS keys in the file"),
    "no instance profile": (lambda c: _node("gpu-1x")(c)["node_config"].pop("IamInstanceProfile"),
                            "gpu-1x: no IamInstanceProfile"),
    "no image": (lambda c: _node("gpu-4x")(c)["node_config"].pop("ImageId"), "gpu-4x: no ImageId"),
    "dashboard on all interfaces": (
        lambda c: c.update(head_start_ray_commands=[x.replace("127.0.0.1", "0.0.0.0")
                                                    for x in c["head_start_ray_commands"]]),
        "bind the dashboard to 127.0.0.1"),
    "security group opens the dashboard": (
        lambda c: c["provider"].update(security_group={"IpPermissions": [
            {"FromPort": 8000, "ToPort": 9000, "IpProtocol": "tcp", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}]}),
        "opens the dashboard port 8265"),
    "security group opens every port": (
        lambda c: c["provider"].update(security_group={"IpPermissions": [
            {"IpProtocol": "-1", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}]}),
        "opens the dashboard port 8265"),
    "no spot workers": (lambda c: c["available_node_types"].pop("gpu-1x-spot"), "no spot worker type"),
    "no 4-GPU workers": (lambda c: c["available_node_types"].pop("gpu-4x"), "no worker type with 4 or more GPUs"),
    "node type replaces setup": (lambda c: _node("gpu-4x")(c).update(worker_setup_commands=["nvidia-smi"]),
                                 "gpu-4x: its own worker_setup_commands"),
    "no autoscaling limit": (lambda c: _node("gpu-4x")(c).pop("max_workers"), "gpu-4x: min_workers and max_workers"),
    "no cluster limit": (lambda c: c.pop("max_workers"), "gpu-1x: max_workers exceeds the cluster's max_workers"),
    "no MPS on workers": (lambda c: c.update(worker_start_ray_commands=[
        "ray stop", "source ~/detfuse/tools/gpu_sharing.sh", "ray start --address=$RAY_HEAD_IP:6379"]),
        "worker_start_ray_commands: source ~/detfuse/tools/gpu_sharing.sh"),
}


@pytest.mark.parametrize("change, expected", AWS_BREAKS.values(), ids=AWS_BREAKS.keys())
def test_project_rules_reject_a_broken_aws_cluster_config(tmp_path, change, expected):
    config = load(AWS)
    change(config)
    problems = rule_violations(write(tmp_path, config))
    assert any(expected in problem for problem in problems), problems


ONPREM_BREAKS = {
    "no package install": (_replace_in_setup("pip install", "echo"), "do not install the package"),
    "no detectron2": (lambda c: c["setup_commands"].pop(), "official route"),
    "dashboard on all interfaces": (
        lambda c: c.update(head_start_ray_commands=["ray stop", "ray start --head --dashboard-host=0.0.0.0"]),
        "bind the dashboard to 127.0.0.1"),
    "AWS key in setup": (lambda c: c["setup_commands"].append("echo aws_secret_access_key=x >> ~/.aws/credentials"),
                         "AWS keys in the file"),
    "no MPS on the head": (lambda c: c.update(head_start_ray_commands=[
        "ray stop", "ray start --head --autoscaling-config=~/ray_bootstrap_config.yaml --dashboard-host=127.0.0.1"]),
        "head_start_ray_commands: source ~/detfuse/tools/gpu_sharing.sh"),
}


@pytest.mark.parametrize("change, expected", ONPREM_BREAKS.values(), ids=ONPREM_BREAKS.keys())
def test_project_rules_reject_a_broken_onprem_cluster_config(tmp_path, change, expected):
    config = load(ONPREM)
    change(config)
    problems = rule_violations(write(tmp_path, config))
    assert any(expected in problem for problem in problems), problems


# ------------------------------------------------------------------------ configs/trash.yaml on this cluster

def trash_problems(path, cluster=AWS):
    """Why the experiment at `path` would not run as intended on `cluster`'s worker types (empty when it would)."""
    experiment = load_experiment(path)
    config = load(cluster)
    workers = [t["resources"] for name, t in config["available_node_types"].items()
               if name != config["head_node_type"] and t["max_workers"] > 0]
    problems = [f"{key} {value} is not on S3" for key, value in
                (("storage", experiment.storage), ("dataset", experiment.dataset)) if not value.startswith("s3://")]
    for entry in experiment.entries:
        wanted = entry.settings["resources"]
        if not any(wanted["cpu"] <= w.get("CPU", 0) and wanted["gpu"] <= w.get("GPU", 0) for w in workers):
            problems.append(f"{entry.space.name}: {wanted} fits no worker type")
    if not any(e.space.family == "detectron2" and e.settings["resources"]["gpu"] == 4 for e in experiment.entries):
        problems.append("no detectron2 DDP entry with gpu: 4")
    if not any(e.space.architecture == "yolov5n" and 0 < e.settings["resources"]["gpu"] < 1
               for e in experiment.entries):
        problems.append("no fractional-GPU yolov5n entry")
    return problems


def test_trash_experiment_runs_on_the_aws_cluster():
    assert trash_problems(TRASH) == []
    experiment = load_experiment(TRASH)
    assert {e.space.architecture for e in experiment.entries} == {
        "faster_rcnn", "retinanet", "cascade_rcnn", "yolov5n", "yolov5s"}


@pytest.mark.parametrize("change, expected", [
    ({"storage": "runs"}, "storage"),
    ({"dataset": "builtin"}, "dataset builtin is not on S3"),
    ({"spaces": [{"space": "faster_rcnn", "resources": {"cpu": 8, "gpu": 8}},
                 {"space": "yolov5n", "resources": {"cpu": 2, "gpu": 0.25}}]}, "fits no worker type"),
    ({"spaces": [{"space": "faster_rcnn", "resources": {"cpu": 8, "gpu": 1}},
                 {"space": "yolov5n", "resources": {"cpu": 2, "gpu": 0.25}}]}, "no detectron2 DDP entry"),
    ({"spaces": [{"space": "faster_rcnn", "resources": {"cpu": 32, "gpu": 4}},
                 {"space": "yolov5n", "resources": {"cpu": 8, "gpu": 1}}]}, "no fractional-GPU yolov5n"),
])
def test_trash_rules_reject_a_broken_copy(tmp_path, change, expected):
    config = {**load(TRASH), **change}
    problems = trash_problems(write(tmp_path, config, "trash.yaml"))
    assert any(expected in problem for problem in problems), problems
