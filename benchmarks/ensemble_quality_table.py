"""The ensemble-quality table for benchmarks/RESULTS.md, from a finished experiment's summary.json and leaderboard.

    python benchmarks/ensemble_quality_table.py EXPERIMENT_DIR [CARD_FILE]

Prints Markdown: the card, each family's trials and GPU-seconds, every member's reported vs re-scored mAP50,
and best single / same-family ensembles / cross-family ensemble on the report split(s), fold by fold.
"""

import json
import sys
from pathlib import Path


def gpu_seconds(row):
    """A trial's GPU-seconds: its wall time in Tune times the GPUs it held."""
    trial_dir = Path(row["path"])
    params = json.loads((trial_dir / "params.json").read_text())
    lines = (trial_dir / "result.json").read_text().splitlines()
    seconds = json.loads(lines[-1])["time_total_s"] if lines else 0.0
    return seconds * float(params.get("resources", {}).get("gpu", 0.0))


def main(experiment, card=None):
    experiment = Path(experiment)
    summary = json.loads((experiment / "ensemble" / "summary.json").read_text())
    rows = json.loads((experiment / "leaderboard.json").read_text())
    report = summary["splits"]["report"]["split"]
    if card:
        print("Card: " + " / ".join(Path(card).read_text().split("\n")).strip(" /"))
    print(f"\nSplits: {summary['splits']['note']}\n")

    print("| family | trials | stopped early by ASHA | epochs trained | GPU-seconds |")
    print("|---|---|---|---|---|")
    for family in sorted({row["family"] for row in rows}):
        mine = [row for row in rows if row["family"] == family]
        print(f"| {family} | {len(mine)} | {sum(row['stopped_early'] for row in mine)} | "
              f"{sum(row['epochs_trained'] for row in mine):.0f} | {sum(gpu_seconds(row) for row in mine):.0f} |")

    print("\n| member | family | architecture | mAP50 reported by its trial | re-scored by the ensemble stage | "
          "difference | mAP50 on mirrored images |")
    print("|---|---|---|---|---|---|---|")
    for member in summary["members"]:
        check = member["reported_vs_rescored"]
        flipped = member.get("mAP50_hflip", {}).get("val")
        print(f"| {member['trial_id']} | {member['family']} | {member['architecture']} | {check['reported']:.4f} | "
              f"{check['rescored']:.4f} | {check['difference']:+.4f} | "
              f"{'-' if flipped is None else f'{flipped:.4f}'} |")

    named = [(f"best single ({summary['best_single']['trial_id']})", summary["best_single"])]
    named += [(f"{family} ensemble", entry) for family, entry in sorted(summary["family_ensembles"].items())]
    if summary["cross_family"] is not None:
        named.append(("cross-family ensemble", summary["cross_family"]))
    folds = summary["splits"]["folds"]
    fold_labels = [fold["report"]["split"] for fold in folds] if len(folds) > 1 else []
    print(f"\n| | mAP50 {report} | " + " | ".join(f"mAP50 {label}" for label in fold_labels) + " | gain over best single |")
    print("|---|---|" + "---|" * len(fold_labels) + "---|")
    best = summary["best_single"]["mAP50"][report]
    for name, entry in named:
        by_fold = [f"{fold['mAP50'][fold['report']]:.4f}" for fold in entry.get("folds", [])] if fold_labels else []
        print(f"| {name} | {entry['mAP50'][report]:.4f} | " + " | ".join(by_fold) + (" | " if by_fold else "")
              + f"{entry['mAP50'][report] - best:+.4f} |")
    cross = summary["cross_family"]
    if cross is not None:
        print(f"\nCross-family members: {', '.join(cross['members'])} (weights {cross['weights']}, "
              f"{cross['params']['method']}); gains: {json.dumps({k: round(v, 4) for k, v in summary['gains'].items() if isinstance(v, float)})}")
    for warning in summary.get("warnings", []):
        print(f"\n{warning}")


if __name__ == "__main__":
    main(*sys.argv[1:])
