"""Does a study's teacher ladder have headroom as VLM encoders (issue 18)? From a results folder
(Snakemake's or DVC's, as far as it got — the report is not needed): each teacher's quality
three ways (zero-shot, retrieval, its own VLM's VQA), the blind baseline and the no-KD students,
per question type, mean over VLM seeds (and training seeds), with paired 95 % CIs:

- each teacher's VLM − the weakest teacher's (by zero-shot), overall;
- the strongest teacher's VLM − blind, per question type;
- the no-KD students − the strongest teacher's VLM, overall.

A pair shares its questions; VLM seed v of one encoder is paired with VLM seed v of the other
(same projector init and data order); the CI is `report.stats.bootstrap_mean_ci`'s (students'
training seeds, then VLM seeds, then questions, resampled).

    .venv/bin/python benchmarks/teacher_ladder.py RESULTS [--out table.md]
"""
import argparse
import json
from pathlib import Path

import numpy as np

from clipdistill.report.stats import bootstrap_mean_ci
from clipdistill.report.study import _question_scores

TYPES = ("color", "shape", "position", "count", "exists", "size", "relation")


def scores(folder: Path, gold: dict) -> np.ndarray | None:
    """Per-question VQA accuracy (points) of one VLM, in `gold`'s order; None if not run yet."""
    answers = folder / "answers.jsonl"
    if not answers.is_file():
        return None
    per_question = _question_scores(answers, gold)  # the report's own scoring
    return 100 * np.array([per_question[q] for q in gold])


def vlm_runs(base: Path, gold: dict) -> np.ndarray | None:
    """VLM seeds × questions for one encoder folder (vlm0, vlm1, …), the seeds found complete."""
    found = [s for d in sorted(base.glob("vlm*")) if (s := scores(d, gold)) is not None]
    return np.stack(found) if found else None


def diagnosis(results: Path, base: Path) -> str:
    """'shape probe | colour one / several' from the VLMs' metrics.json (vqa/diagnostics.py):
    the cell probe of the tower, and the VLM's colour accuracy on one-object vs several-object
    scenes, mean over VLM seeds; blank where the world has no scenes."""
    found = sorted((results / "vqa_metrics" / base.relative_to(results / "vqa")).rglob("vlm*.json"))
    diags = [json.loads(f.read_text()).get("diagnostics", {}) for f in found]
    try:
        probe = np.mean([d["probe"]["cell"]["shape"]["accuracy"] for d in diags])
        one, several = (np.mean([d["by_objects"]["color"][k]["accuracy"] for d in diags]) for k in ("single", "multi"))
    except (KeyError, TypeError, ValueError):
        return " | "
    return f"{probe:.1f} | {one:.0f} / {several:.0f}"


def ci(diff: np.ndarray) -> str:
    mean, lo, hi = bootstrap_mean_ci(diff, n_boot=2000, seed=0)
    return f"{mean:+.1f} [{lo:+.1f}, {hi:+.1f}]"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("results", type=Path)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--regime", default="distill-x1", help="the no-KD students' distillation regime (data-x<duration>)")
    a = ap.parse_args()
    r = a.results
    anns = json.loads((r / "data/vqa_eval/annotations.json").read_text())["annotations"]
    gold = {x["question_id"]: [y["answer"] for y in x["answers"]] for x in anns}
    qtype = np.array([x["question_type"] for x in anns])
    teachers = {}
    for d in sorted((r / "vqa/teachers").iterdir()):
        runs = vlm_runs(d, gold)
        summary = json.loads((r / "teacher_eval" / d.name / "metrics.json").read_text())["summary"]
        if runs is not None:
            teachers[d.name] = (summary, runs)
    blind = vlm_runs(r / "vqa/blind", gold)
    no_kd = [x for d in sorted(r.glob(f"vqa/students/{a.regime}/none/*/baseline/*")) if (x := vlm_runs(d, gold)) is not None]
    order = sorted(teachers, key=lambda t: teachers[t][0]["zeroshot_mean_top1"])
    weakest, strongest = order[0], order[-1]
    types = [t for t in TYPES if (qtype == t).any()]
    lines = ["| encoder | zero-shot | R@1 | VLMs | overall | " + " | ".join(types)
             + " | − weakest teacher (overall) | shape probe (cell) | colour: one / several objects |",
             "|---|---:|---:|---:|---:|" + "---:|" * len(types) + "---|---:|---|"]

    def row(name, zs, r1, runs, versus, base):
        per = " | ".join(f"{runs[:, qtype == t].mean():.1f}" for t in types)
        lines.append(f"| {name} | {zs} | {r1} | {len(runs)} | {runs.mean():.1f} | {per} | {versus} | "
                     f"{diagnosis(r, base)} |")

    for t in order:
        s, runs = teachers[t]
        n = min(len(runs), len(teachers[weakest][1]))
        versus = "" if t == weakest else ci(runs[:n] - teachers[weakest][1][:n])
        row(f"teacher {t}", f"{100 * s['zeroshot_mean_top1']:.1f}", f"{100 * s['retrieval_mean_R@1']:.1f}", runs, versus,
            r / "vqa/teachers" / t)
    if no_kd:
        row("no-KD student", "", "", np.concatenate(no_kd), "", r / f"vqa/students/{a.regime}/none")
    if blind is not None:
        row("blind", "", "", blind, "", r / "vqa/blind")
    spread = teachers[strongest][1].mean() - teachers[weakest][1].mean()
    lines += ["", f"Spread strongest − weakest teacher VLM: {spread:.1f} points ({strongest} − {weakest})."]
    if blind is not None:
        best = teachers[strongest][1]
        n = min(len(best), len(blind))
        lines += ["", f"Strongest teacher ({strongest}) − blind, paired, per type:", ""]
        lines += [f"- {t}: {ci(best[:n][:, qtype == t] - blind[:n][:, qtype == t])}" for t in types]
        lines.append(f"- overall: {ci(best[:n] - blind[:n])}")
    if no_kd:
        best = teachers[strongest][1]
        n = min(len(best), *(len(x) for x in no_kd))
        diff = np.stack([x[:n] - best[:n] for x in no_kd])  # training seeds × VLM seeds × questions
        lines += ["", f"No-KD students − strongest teacher ({strongest}), overall: {ci(diff)}"]
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        a.out.write_text(text)


if __name__ == "__main__":
    main()
