"""Per-stage wall-time breakdown of a study run, from Snakemake's `benchmark:` files.

    .venv/bin/python benchmarks/study_budget.py [results/benchmarks] [--wall SECONDS]
    .venv/bin/python benchmarks/study_budget.py --estimate configs/full.yaml

Prints a Markdown table: jobs, summed job seconds, mean and max per job, per rule. Jobs run
side by side (`-c2`), so the sum over rules exceeds the wall time; `--wall` adds the
measured wall clock and the achieved parallelism. `--estimate PARAMS` prices a study before
running it: its jobs per stage (from the stage table) at the default study's measured seconds
per job (README), a distill job scaled by its duration.
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


# Seconds per job of the default study on the 2-core machine (README: the ccbb98d table; a VQA
# job at the measured 67 CPU-seconds), and the parallelism `make run` reached there.
SECONDS_PER_JOB = {"data_prepare": 2.2, "data_preview": 2.3, "teacher_train": 106.7, "teacher_eval": 5.8,
                   "features_extract": 11.8, "distill": 16.7, "student_eval": 7.2, "vqa_lm": 136.0,
                   "vqa_teacher": 67.0, "vqa_student": 67.0, "vqa_blind": 67.0, "report": 7.1}
PARALLELISM = 1.97


def estimate(params_file: Path) -> str:
    """The study's jobs per stage and their estimated seconds; the wall time at PARALLELISM."""
    import yaml

    from clipdistill import stages

    params = yaml.safe_load(params_file.read_text())
    lines = ["| stage | jobs | est. job s |", "|---|---:|---:|"]
    jobs = total = 0.0
    for stage in stages.STAGES:
        runs = [bound for _, bound in stages.bindings(stage, params)]
        if not runs or stage.name not in SECONDS_PER_JOB:
            continue
        secs = sum(SECONDS_PER_JOB[stage.name] * (int(b["duration"]) if stage.name == "distill" else 1) for b in runs)
        jobs, total = jobs + len(runs), total + secs
        lines.append(f"| {stage.name} | {len(runs)} | {secs:.0f} |")
    wall = total / PARALLELISM
    lines.append(f"| **all** | {jobs:.0f} | {total:.0f} |")
    lines.append(f"\nestimated wall clock {wall:.0f} s ({wall / 60:.0f} min) at parallelism {PARALLELISM}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", nargs="?", default="results/benchmarks", type=Path)
    ap.add_argument("--wall", type=float, help="measured wall-clock seconds of the run")
    ap.add_argument("--estimate", type=Path, metavar="PARAMS", help="estimate this study's time instead")
    args = ap.parse_args()
    print(estimate(args.estimate) if args.estimate else table(job_seconds(args.root), args.wall))


if __name__ == "__main__":
    main()
