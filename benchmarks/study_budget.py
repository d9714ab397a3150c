"""Per-stage wall-time breakdown of a study run, from Snakemake's `benchmark:` files.

    .venv/bin/python benchmarks/study_budget.py [results/benchmarks] [--wall SECONDS]

Prints a Markdown table: jobs, summed job seconds, mean and max per job, per rule. Jobs run
side by side (`-c2`), so the sum over rules exceeds the wall time; `--wall` adds the
measured wall clock and the achieved parallelism.
"""

from __future__ import annotations

import argparse
import csv
from collections import defaultdict
from pathlib import Path


def job_seconds(root: Path) -> dict[str, list[float]]:
    """rule name (first folder under root, or the file stem) → seconds of each job."""
    per_rule: dict[str, list[float]] = defaultdict(list)
    for tsv in sorted(root.rglob("*.tsv")):
        rel = tsv.relative_to(root)
        rule = rel.parts[0] if len(rel.parts) > 1 else tsv.stem
        if rule == "vqa":
            rule = f"vqa_{rel.parts[1].rstrip('s')}" if len(rel.parts) > 2 else "vqa_blind"
        with tsv.open() as fh:
            rows = list(csv.DictReader(fh, delimiter="\t"))
        per_rule[rule] += [float(r["s"]) for r in rows]
    return dict(per_rule)


def table(per_rule: dict[str, list[float]], wall: float | None) -> str:
    lines = ["| stage | jobs | total job s | mean s | max s |", "|---|---:|---:|---:|---:|"]
    total = 0.0
    for rule, secs in sorted(per_rule.items(), key=lambda kv: -sum(kv[1])):
        total += sum(secs)
        lines.append(f"| {rule} | {len(secs)} | {sum(secs):.0f} | {sum(secs) / len(secs):.1f} | {max(secs):.1f} |")
    jobs = sum(len(s) for s in per_rule.values())
    lines.append(f"| **all** | {jobs} | {total:.0f} | | |")
    if wall:
        lines.append(f"\nwall clock {wall:.0f} s ({wall / 60:.1f} min); job seconds / wall = {total / wall:.2f}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", nargs="?", default="results/benchmarks", type=Path)
    ap.add_argument("--wall", type=float, help="measured wall-clock seconds of the run")
    args = ap.parse_args()
    print(table(job_seconds(args.root), args.wall))


if __name__ == "__main__":
    main()
