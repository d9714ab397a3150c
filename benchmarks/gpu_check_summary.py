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
    """stage -> (jobs, summed wall seconds) from Snakemake's benchmark files (where the stage
    table puts them)."""
    sys.path.insert(0, str(project / "src"))
    from clipdistill import stages

    prefixes = sorted(((stages.benchmark(st).split("{")[0], st.name) for st in stages.STAGES), reverse=True)
    out: dict[str, list] = defaultdict(lambda: [0, 0.0])
    for tsv in sorted((project / "results" / "benchmarks").rglob("*.tsv")):
        rel = tsv.relative_to(project).as_posix()
        stage = next((name for prefix, name in prefixes if rel.startswith(prefix)), rel)
        for row in csv.DictReader(tsv.open(), delimiter="\t"):
            out[stage][0] += 1
            out[stage][1] += float(row["s"])
    return {k: (n, s) for k, (n, s) in out.items()}


def metrics(folder: Path, read) -> dict[str, dict[str, float]]:
    """run path (its folders) -> numbers, from every JSON under `folder`; `read(path)` gives them."""
    runs: dict[str, dict[str, float]] = defaultdict(dict)
    for path in sorted(folder.rglob("*.json")):
        rel = path.relative_to(folder)
        runs["/".join(rel.parts[:-1])].update(read(path))
    return runs


def table(title: str, cpu: dict, gpu: dict) -> None:
    keys = sorted({k for r in [*cpu.values(), *gpu.values()] for k in r})
    print(f"\n| {title} | " + " | ".join(f"{k} CPU / GPU" for k in keys) + " |")
    print("|---|" + "---|" * len(keys))
    for run in sorted(set(cpu) | set(gpu)):
        cells = [f"{cpu.get(run, {}).get(k, float('nan')):.3f} / {gpu.get(run, {}).get(k, float('nan')):.3f}"
                 for k in keys]
        print(f"| {run} | " + " | ".join(cells) + " |")


def main(cpu: Path, gpu: Path) -> None:
    times = stage_seconds(cpu), stage_seconds(gpu)
    print("| stage | jobs | CPU fp32 (s) | GPU bf16 (s) |\n|---|---|---|---|")
    for stage in sorted(set(times[0]) | set(times[1])):
        (n, c), (_, g) = times[0].get(stage, (0, float("nan"))), times[1].get(stage, (0, float("nan")))
        print(f"| {stage} | {n} | {c:.1f} | {g:.1f} |")
    def clip(path):
        return json.loads(path.read_text())["summary"]

    def vqa(path):
        return {f"vqa_{path.stem}": json.loads(path.read_text())["overall"]}

    # CLIP metrics per evaluation (a baseline against each teacher), VQA per trained student
    table("student evaluation", *(metrics(p / "results" / "student_eval", clip) for p in (cpu, gpu)))
    table("student VLM", *(metrics(p / "results" / "vqa_metrics" / "students", vqa) for p in (cpu, gpu)))

if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: python benchmarks/gpu_check_summary.py CPU_PROJECT GPU_PROJECT")
    main(Path(sys.argv[1]), Path(sys.argv[2]))
