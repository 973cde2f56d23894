"""The table of benchmarks/placement.sh: GPU utilisation while trials waited to start, and where each process ran.

    python3 benchmarks/placement_table.py OUT
"""

import csv
import json
import statistics
import sys
from datetime import datetime
from pathlib import Path


def trial_spans(experiment):
    """{trial directory name: (start, end, pid, architecture)} from each trial's Tune results."""
    spans = {}
    for result in sorted(experiment.glob("*/result.json")):
        rows = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        if rows:
            spans[result.parent.name] = (rows[0]["timestamp"] - rows[0]["time_total_s"], rows[-1]["timestamp"],
                                         rows[0]["pid"], rows[0]["config"]["architecture"])
    return spans


def utilisation_samples(path):
    """[(time, GPU index, utilisation %)] from nvidia-smi's CSV (its timestamps are local time)."""
    samples = []
    for row in csv.reader(path.open()):
        if len(row) >= 3:
            moment = datetime.strptime(row[0].strip(), "%Y/%m/%d %H:%M:%S.%f").timestamp()
            samples.append((moment, int(row[1]), float(row[2])))
    return samples


def main(out):
    spans = trial_spans(out / "runs" / "placement")
    starts = sorted(start for start, _, _, _ in spans.values())
    samples = utilisation_samples(out / "utilisation.csv")
    waiting = [(t, gpu, util) for t, gpu, util in samples if starts[0] <= t < starts[-1]]
    running = [(t, gpu, util) for t, gpu, util in samples
               if any(start <= t < end for start, end, _, _ in spans.values())]
    gpus = sorted({gpu for _, gpu, _ in samples})
    print(f"{len(spans)} trials; the last started {starts[-1] - starts[0]:.0f} s after the first\n")
    print("| GPU | mean utilisation while trials waited to start | seconds idle (0 %) while trials waited | "
          "mean utilisation while any trial ran |")
    print("|---|---|---|---|")
    for gpu in gpus:
        during_wait = [util for _, index, util in waiting if index == gpu]
        during_run = [util for _, index, util in running if index == gpu]
        print(f"| {gpu} | {statistics.mean(during_wait) if during_wait else float('nan'):.0f} % | "
              f"{sum(1 for util in during_wait if util == 0)} | "
              f"{statistics.mean(during_run) if during_run else float('nan'):.0f} % |")

    uuids = {row[1].strip(): int(row[0]) for row in csv.reader((out / "gpus.csv").open())}
    used = {}  # pid -> (GPUs it held memory on, its command line)
    for row in csv.reader((out / "processes.csv").open()):
        if len(row) >= 5 and row[1].strip() in uuids:
            gpus_of, _ = used.setdefault(int(row[2]), (set(), row[4].strip()))
            gpus_of.add(uuids[row[1].strip()])
    trials_of = {}  # pid -> its trials, in order: Tune may run several in one process, one after another
    for name, (_, _, pid, _) in sorted(spans.items(), key=lambda item: item[1][0]):
        trials_of.setdefault(pid, []).append(name)
    print("\n| process | what it is | GPUs it used |\n|---|---|---|")
    for pid, (gpus_of, command) in sorted(used.items()):
        names = trials_of.get(pid)
        what = ((f"trial {names[0]}" if len(names) == 1 else f"trials {', '.join(names)}") if names
                else "Ray Train DDP worker" if "RayTrainWorker" in command else command or "unknown")
        print(f"| {pid} | {what} | {', '.join(map(str, sorted(gpus_of)))} |")
    stray = [pid for pid, (gpus_of, _) in used.items() if len(gpus_of) > 1]
    print(f"\nprocesses on more than one GPU: {len(stray)} (each asked for one GPU or a fraction of one)")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
