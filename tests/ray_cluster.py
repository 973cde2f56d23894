"""A real multi-node Ray cluster on this machine (ray.cluster_utils.Cluster) and a small dataset for the jobs.

The head node gets no CPUs, as the CPU head of a real cluster runs no trials; two worker nodes run them.
"""

import pytest
import ray
from ray.cluster_utils import Cluster

from detfuse.core.data.synthetic import generate


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    """48 train / 16 val images: enough for trials to learn a little and for ASHA to rank them."""
    return generate(tmp_path_factory.mktemp("data") / "litter", seed=3, num_train=48, num_val=16, num_test=0)


@pytest.fixture
def cluster():
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    workers = [cluster.add_node(num_cpus=2) for _ in range(2)]
    cluster.wait_for_nodes()
    yield cluster, workers
    ray.shutdown()
    cluster.shutdown()
