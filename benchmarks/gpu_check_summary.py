"""`make gpu-check`'s table: per-stage wall time and the students' metrics of the smoke study
run on the GPU (bf16) next to the same study on the CPU (fp32), as Markdown for RESULTS.md.

    python benchmarks/gpu_check_summary.py CPU_PROJECT GPU_PROJECT
"""

from __future__ import annotations

import csv
import json
import sys
from collections import defaultdict
from pathlib import Path


def stage_seconds(project: Path) -> dict[str, tuple[int, float]]:
    """stage -> (jobs, summed wall seconds) from Snakemake's benchmark files."""
    out: dict[str, list] = defaultdict(lambda: [0, 0.0])
    for tsv in sorted((project / "results" / "benchmarks").rglob("*.tsv")):
        stage = tsv.relative_to(project / "results" / "benchmarks").parts[0]
        for row in csv.DictReader(tsv.open(), delimiter="\t"):
            out[stage][0] += 1
            out[stage][1] += float(row["s"])
    return {k: (n, s) for k, (n, s) in out.items()}


def student_metrics(project: Path) -> dict[str, dict[str, float]]:
    """run -> its CLIP summary (first evaluation of the run) and VQA overall score(s)."""
    runs: dict[str, dict[str, float]] = defaultdict(dict)
    for path in sorted((project / "results" / "student_eval").rglob("metrics.json")):
        run = "/".join(path.relative_to(project / "results" / "student_eval").parts[:-1])
        for key, value in json.loads(path.read_text())["summary"].items():
            runs[run].setdefault(key, value)
    for path in sorted((project / "results" / "vqa_metrics" / "students").rglob("*.json")):
        rel = path.relative_to(project / "results" / "vqa_metrics" / "students")
        runs["/".join(rel.parts[:-1])][f"vqa_{path.stem}"] = json.loads(path.read_text())["overall"]
    return runs


def main(cpu: Path, gpu: Path) -> None:
    times = stage_seconds(cpu), stage_seconds(gpu)
    print("| stage | jobs | CPU fp32 (s) | GPU bf16 (s) |\n|---|---|---|---|")
    for stage in sorted(set(times[0]) | set(times[1])):
        (n, c), (_, g) = times[0].get(stage, (0, float("nan"))), times[1].get(stage, (0, float("nan")))
        print(f"| {stage} | {n} | {c:.1f} | {g:.1f} |")
    cpu_runs, gpu_runs = student_metrics(cpu), student_metrics(gpu)
    keys = sorted({k for r in [*cpu_runs.values(), *gpu_runs.values()] for k in r})
    print("\n| student run | " + " | ".join(f"{k} CPU / GPU" for k in keys) + " |")
    print("|---|" + "---|" * len(keys))
    for run in sorted(set(cpu_runs) | set(gpu_runs)):
        cells = [f"{cpu_runs.get(run, {}).get(k, float('nan')):.3f} / {gpu_runs.get(run, {}).get(k, float('nan')):.3f}"
                 for k in keys]
        print(f"| {run} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: python benchmarks/gpu_check_summary.py CPU_PROJECT GPU_PROJECT")
    main(Path(sys.argv[1]), Path(sys.argv[2]))
