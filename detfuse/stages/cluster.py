"""Connecting a job's driver to Ray: the running cluster when there is one, else a local one-node cluster."""

import logging
import os
from pathlib import Path

import ray
import yaml

# Where the Ray cluster launcher leaves the cluster's config on the head node
AUTOSCALER_CONFIG = Path("~/ray_bootstrap_config.yaml").expanduser()


def connect(verbose=False):
    """ray.init() for a job driver. Trial output reaches the terminal only with --verbose. Returns the URL of the
    cluster's Ray dashboard, or None when it runs none (or this process had joined Ray already)."""
    if not verbose:  # Tune's advice on checkpoint frequency is for Tune developers, not for the status table
        os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if ray.is_initialized():
        return None
    settings = dict(log_to_driver=verbose, logging_level=logging.INFO if verbose else logging.WARNING,
                    configure_logging=True)
    address = os.environ.get("RAY_ADDRESS", "auto")
    try:
        context = ray.init(address=address, **settings)
    except ConnectionError:
        if "RAY_ADDRESS" in os.environ:
            raise
        context = ray.init(**settings)  # no cluster running: start a local one on this machine
    url = context.address_info.get("webui_url")
    return None if not url else url if "://" in url else f"http://{url}"


def node_capacities(autoscaler_config=AUTOSCALER_CONFIG):
    """(CPUs, GPUs) of every node a trial could land on: the alive nodes, plus every node type the autoscaler
    may still launch (on a fresh cluster-launcher cluster only the CPU head is up yet)."""
    capacities = [(node["Resources"].get("CPU", 0.0), node["Resources"].get("GPU", 0.0))
                  for node in ray.nodes() if node["Alive"]]
    if autoscaler_config.is_file():
        config = yaml.safe_load(autoscaler_config.read_text()) or {}
        for node_type in (config.get("available_node_types") or {}).values():
            if node_type.get("max_workers", 0) > 0:
                resources = node_type.get("resources") or {}
                capacities.append((float(resources.get("CPU", 0)), float(resources.get("GPU", 0))))
    return capacities
