"""Connecting a job's driver to Ray: the running cluster when there is one, else a local one-node cluster."""

import logging
import os

import ray


def connect(verbose=False):
    """ray.init() for a job driver. Trial output reaches the terminal only with --verbose."""
    if ray.is_initialized():
        return
    settings = dict(log_to_driver=verbose, logging_level=logging.INFO if verbose else logging.WARNING,
                    configure_logging=True)
    address = os.environ.get("RAY_ADDRESS", "auto")
    try:
        ray.init(address=address, **settings)
    except ConnectionError:
        if "RAY_ADDRESS" in os.environ:
            raise
        ray.init(**settings)  # no cluster running: start a local one on this machine


def node_capacities():
    """(CPUs, GPUs) of every alive node, for checking that each trial fits on some node."""
    return [(node["Resources"].get("CPU", 0.0), node["Resources"].get("GPU", 0.0))
            for node in ray.nodes() if node["Alive"]]
