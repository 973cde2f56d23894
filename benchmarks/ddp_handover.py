"""What a DDP trial's report costs its workers: rank 0 handing a checkpoint to the trial process (ddp.QueueReport).

    python3 benchmarks/ddp_handover.py [--megabytes 500] [--reports 5] [--gap 2]

Rank 0 is a Ray task on this node and the trial process is this driver, as in a DDP trial whose workers share the
trial's node. Every rank waits while rank 0 reports, so rank 0's time in QueueReport is time no GPU trains. As in
a trial, whose evaluations are far apart, each report starts `--gap` seconds after the trial process has taken
the last. The same checkpoint goes both ways: as a directory of hard links (what the trial's own node gets) and
as file contents (what a worker on another node sends; here forced by naming another node). The trial process's
time is from the report's arrival in the queue to its checkpoint directory being ready. Prints a Markdown table.
"""

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import ray
from ray.util.queue import Queue

from trainables.detectron2 import ddp


@ray.remote(num_cpus=1)
def rank_zero(queue, checkpoint_dir, node, root, reports, gap):
    """Report `reports` times like rank 0 does; the seconds each QueueReport call blocked."""
    report = ddp.QueueReport(queue, node, root)
    blocked = []
    for index in range(reports):
        while not queue.empty():
            time.sleep(0.05)
        time.sleep(gap)
        start = time.perf_counter()
        report({"report": index}, checkpoint_dir)
        blocked.append(time.perf_counter() - start)
    return blocked


def measure(checkpoint_dir, node, root, reports, gap):
    queue = Queue(maxsize=1, actor_options={"num_cpus": 0})
    worker = rank_zero.remote(queue, str(checkpoint_dir), node, str(root), reports, gap)
    received = []
    for _ in range(reports):
        while queue.empty():
            time.sleep(0.01)
        start = time.perf_counter()
        _, checkpoint = queue.get()
        with ddp._received_checkpoint(checkpoint) as directory:
            assert sum(f.stat().st_size for f in Path(directory).rglob("*") if f.is_file()) > 0
            received.append(time.perf_counter() - start)
    return ray.get(worker), received


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=500, help="checkpoint size (model + optimizer state)")
    parser.add_argument("--reports", type=int, default=5)
    parser.add_argument("--gap", type=float, default=2.0, help="seconds between one report's end and the next")
    args = parser.parse_args()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    here = ray.get_runtime_context().get_node_id()
    with tempfile.TemporaryDirectory(prefix="detfuse-handover-bench-") as work:
        checkpoint_dir = Path(work) / "checkpoint"
        checkpoint_dir.mkdir()
        third = args.megabytes * 1024 * 1024 // 3
        (checkpoint_dir / "model.pth").write_bytes(os.urandom(third))
        (checkpoint_dir / "training.pth").write_bytes(os.urandom(2 * third))
        root = Path(work) / "handover"
        root.mkdir()
        print(f"{os.cpu_count()} CPUs, {args.megabytes} MB checkpoint, {args.reports} reports {args.gap:g} s apart; "
              f"median (min-max) s\n")
        print("| route | rank 0 blocked per report | trial process: checkpoint ready to report |")
        print("|---|---|---|")
        for route, node in (("same node: hard links", here), ("other node: file contents", "another node")):
            blocked, received = measure(checkpoint_dir, node, root, args.reports, args.gap)
            print(f"| {route} | {_summary(blocked)} | {_summary(received)} |")


def _summary(seconds):
    return f"{statistics.median(seconds):.3f} ({min(seconds):.3f}-{max(seconds):.3f})"


if __name__ == "__main__":
    main()
