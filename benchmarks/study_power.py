"""How big a study must be: the smallest teacher effect it detects with 80% power.

    .venv/bin/python benchmarks/study_power.py [results/report/effect.json]
        [--teachers 3 5 8 12 20] [--runs R ...] [--questions Q ...] [--target SLOPE]

Reads a pilot study's variance components from the report (`effect.json`, written by
`clipdistill report`): teacher heterogeneity around the line, run-to-run variance (seed ×
teacher × method) and per-question variance of a paired gain, plus the spread of the pilot's
teacher qualities. For each design (teachers × runs per teacher × questions) it prints the
smallest slope — VQA points of KD gain per point of teacher zero-shot — that the report's
test (`stats.teacher_effect`) finds with 80% power at the 5% level, and how many teachers a
`--target` slope would need. Runs per teacher = seeds × methods; new teachers are assumed to
spread in quality like the pilot's. `teacher_effect`'s own formula is used, and it is
checked against simulated studies in tests/test_stats_calibration.py.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from clipdistill.report.stats import detectable_slope, teachers_needed  # noqa: E402


def table(components: dict, teachers: list[int], runs: list[float], questions: list[int]) -> str:
    lines = ["| teachers | runs / teacher | questions | detectable slope (80% power) |", "|---:|---:|---:|---:|"]
    for t in teachers:
        for r in runs:
            for q in questions:
                mds = detectable_slope(components, n_teachers=t, runs_per_teacher=r, n_questions=q)
                lines.append(f"| {t} | {r:g} | {q} | {mds:.3f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("effect", nargs="?", default="results/report/effect.json", type=Path)
    ap.add_argument("--teachers", type=int, nargs="+", default=[3, 5, 8, 12, 20])
    ap.add_argument("--runs", type=float, nargs="+", help="runs per teacher (default: the pilot's, ×2, ×4)")
    ap.add_argument("--questions", type=int, nargs="+", help="questions (default: the pilot's, ×4)")
    ap.add_argument("--target", type=float, help="slope to resolve (default: the report's equivalence margin)")
    args = ap.parse_args()
    if not args.effect.is_file():
        sys.exit(f"{args.effect}: no such file (run the study's report first: it writes effect.json)")
    effect = json.loads(args.effect.read_text())["effect"]
    if effect is None:
        sys.exit(f"{args.effect}: the report could not estimate a teacher effect (see its answer)")
    comp = effect["components"]
    pilot_runs, pilot_q = comp["runs_per_teacher"], comp["n_questions"]
    runs = args.runs or [pilot_runs, 2 * pilot_runs, 4 * pilot_runs]
    questions = args.questions or [pilot_q, 4 * pilot_q]
    target = args.target if args.target is not None else effect["margin"]
    print(f"pilot: {effect['n_teachers']} teachers, {pilot_runs:g} runs per teacher, {pilot_q} questions; "
          f"variance components (points²): teacher {comp['teacher']:.3g}, run {comp['run']:.3g}, "
          f"question {comp['question']:.3g}; teacher quality SD {comp['quality_sd']:.3g}")
    print(f"pilot's own detectable slope: {effect['detectable_slope']:.3f}; its slope {effect['slope']:+.3f}, "
          f"verdict {effect['verdict']}\n")
    print(table(comp, args.teachers, runs, questions))
    print()
    for r in runs:
        need = teachers_needed(comp, target, runs_per_teacher=r, n_questions=pilot_q)
        print(f"to detect a slope of {target:g} with {r:g} runs per teacher and {pilot_q} questions: "
              + (f"{need} teachers" if need else "more than 200 teachers (the teacher heterogeneity dominates)"))


if __name__ == "__main__":
    main()
