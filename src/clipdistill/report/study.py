"""`clipdistill report`: one table, rank correlations and plots that answer the question
"do better teachers make better students (as VLM vision encoders)?".

Reads what the pipeline wrote under `results/` (teacher/student evaluations, VQA metrics and
answer files, student manifests and training logs) — nothing is recomputed.
"""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from clipdistill.io import DataError, atomic_dir, read_json, rounded, write_json
from clipdistill.report.stats import bootstrap_mean_ci, rank_correlations, verdict
from clipdistill.vqa.metrics import vqa_accuracy

QUALITY = "zeroshot_mean_top1"


def _question_scores(answers_file: Path, gold: dict) -> np.ndarray:
    rows = [json.loads(line) for line in answers_file.read_text().splitlines() if line.strip()]
    return np.array([vqa_accuracy(r["text"], gold[r["question_id"]]) for r in rows]) * 100


def collect(results: Path, vqa_eval: Path) -> list[dict]:
    """One row per encoder (students, teachers, blind), flat and numeric where possible."""
    gold = {a["question_id"]: [x["answer"] for x in a["answers"]]
            for a in read_json(vqa_eval / "annotations.json")["annotations"]}
    teachers = {p.parent.name: read_json(p)["summary"] for p in sorted((results / "teacher_eval").glob("*/metrics.json"))}
    rows = []

    def vqa_fields(metrics_file: Path, answers: Path) -> dict:
        if not metrics_file.is_file():
            return {}
        m = read_json(metrics_file)
        out = {"vqa_overall": m["overall"], **{f"vqa_{k}": v for k, v in m["per_question_type"].items()}}
        if answers.is_file():
            out["_scores"] = _question_scores(answers, gold)
        return out

    for ev in sorted((results / "student_eval").glob("*/*/*/*/metrics.json")):
        t, s, m, seed = ev.parts[-5:-1]
        owner = t if (results / "students" / t / s / m / seed).is_dir() else "none"  # teacher-free baseline
        manifest = read_json(results / "students" / owner / s / m / seed / "manifest.json")
        summary = read_json(ev)["summary"]
        rows.append({"kind": "student", "teacher": t, "student": s, "method": m, "seed": int(seed),
                     "teacher_free": owner == "none",
                     "data_source": Path(manifest["data"]["split"]).name, "epochs": manifest["train"]["epochs"],
                     "params_total": manifest["params"]["total"], "params_visual": manifest["params"]["visual"],
                     "teacher_zeroshot": teachers.get(t, {}).get(QUALITY),
                     "teacher_retrieval": teachers.get(t, {}).get("retrieval_mean_R@1"),
                     "zeroshot": summary.get(QUALITY), "retrieval": summary.get("retrieval_mean_R@1"),
                     "cka_image": summary.get("cka_image"),
                     **vqa_fields(results / "vqa_metrics" / "students" / owner / s / m / f"{seed}.json",
                                  results / "vqa" / "students" / owner / s / m / seed / "answers.jsonl")})
    for t, summary in teachers.items():
        manifest = read_json(results / "teachers" / t / "manifest.json")
        rows.append({"kind": "teacher", "teacher": t, "params_total": manifest["params"]["total"],
                     "params_visual": manifest["params"]["visual"], "teacher_zeroshot": summary.get(QUALITY),
                     "teacher_retrieval": summary.get("retrieval_mean_R@1"), "zeroshot": summary.get(QUALITY),
                     "retrieval": summary.get("retrieval_mean_R@1"),
                     **vqa_fields(results / "vqa_metrics" / "teachers" / f"{t}.json",
                                  results / "vqa" / "teachers" / t / "answers.jsonl")})
    blind = vqa_fields(results / "vqa_metrics" / "blind.json", results / "vqa" / "blind" / "answers.jsonl")
    if blind:
        rows.append({"kind": "blind", **blind})
    if not any(r["kind"] == "student" for r in rows):
        raise DataError(f"{results}: no evaluated students found (results/student_eval/*/*/*/*/metrics.json)")
    return rows


def analyse(rows: list[dict], n_boot: int = 1000, seed: int = 0) -> dict:
    """Group means with CIs, and teacher-quality vs student-VQA rank correlations."""
    groups = defaultdict(list)
    for r in rows:
        if r["kind"] == "student" and "_scores" in r:
            groups[(r["teacher"], r["student"], r["method"])].append(r)
    table = []
    for (t, s, m), runs in sorted(groups.items()):
        mean, lo, hi = bootstrap_mean_ci([r["_scores"] for r in runs], n_boot, seed)
        table.append({"teacher": t, "student": s, "method": m, "seeds": len(runs),
                      "teacher_free": runs[0].get("teacher_free", False),
                      "teacher_zeroshot": runs[0]["teacher_zeroshot"],
                      "zeroshot": float(np.mean([r["zeroshot"] for r in runs])),
                      "cka_image": float(np.mean([r["cka_image"] for r in runs])),
                      "vqa": mean, "vqa_ci": [lo, hi]})
    correlations = {}
    # one pair per run (teacher × seed), not per seed mean: with 3 teachers, 3 means would
    # make every bootstrap resample perfectly ordered and the CI a degenerate [±1, ±1]
    students = [r for r in rows if r["kind"] == "student" and "vqa_overall" in r and not r.get("teacher_free")]
    by_method = defaultdict(list)
    for r in students:  # teacher-free baselines are left out: their VQA does not depend on the teacher
        by_method[r["method"]].append(r)
    for method, runs in sorted(by_method.items()):
        if len(runs) >= 3:
            correlations[method] = rank_correlations([r["teacher_zeroshot"] for r in runs],
                                                     [r["vqa_overall"] for r in runs], n_boot, seed)
    if len(students) >= 3:
        correlations["all"] = rank_correlations([r["teacher_zeroshot"] for r in students],
                                                [r["vqa_overall"] for r in students], n_boot, seed)
    answer = verdict(correlations["all"]) if "all" in correlations else "Too few runs with VQA to say."
    return {"table": table, "correlations": correlations, "answer": answer}


def _csv(rows: list[dict]) -> str:
    keys = []
    for r in rows:
        keys += [k for k in r if k not in keys and not k.startswith("_")]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    w.writerows(rounded(rows, 4))
    return buf.getvalue()


def _markdown(rows: list[dict], analysis: dict) -> str:
    lines = ["# Study report", "", f"**Answer:** {analysis['answer']}", "",
             "## Students (mean over seeds; VQA ± 95% bootstrap CI over seeds and questions)", "",
             "| teacher | teacher zero-shot | student | method | seeds | student zero-shot | CKA to teacher | VQA overall |",
             "|---|---|---|---|---|---|---|---|"]
    for r in analysis["table"]:
        lines.append(f"| {r['teacher']} | {r['teacher_zeroshot']:.3f} | {r['student']} | {r['method']} | {r['seeds']} | "
                     f"{r['zeroshot']:.3f} | {r['cka_image']:.3f} | {r['vqa']:.1f} [{r['vqa_ci'][0]:.1f}, {r['vqa_ci'][1]:.1f}] |")
    refs = [r for r in rows if r["kind"] in ("teacher", "blind") and "vqa_overall" in r]
    if refs:
        lines += ["", "## References", "", "| encoder | zero-shot | VQA overall |", "|---|---|---|"]
        for r in refs:
            name = "blind (no image)" if r["kind"] == "blind" else f"teacher {r['teacher']}"
            zs = f"{r['zeroshot']:.3f}" if r.get("zeroshot") is not None else "–"
            lines.append(f"| {name} | {zs} | {r['vqa_overall']:.1f} |")
    lines += ["", "## Teacher zero-shot vs student VQA: rank correlations", "",
              "| methods | n | Spearman ρ [95% CI] | Kendall τ [95% CI] |", "|---|---|---|---|"]
    for name, c in analysis["correlations"].items():
        lines.append(f"| {name} | {c['n']} | {c['spearman']:+.2f} [{c['spearman_ci'][0]:+.2f}, {c['spearman_ci'][1]:+.2f}] | "
                     f"{c['kendall']:+.2f} [{c['kendall_ci'][0]:+.2f}, {c['kendall_ci'][1]:+.2f}] |")
    lines += ["", "![teacher quality vs student VQA](teacher_vs_student_vqa.png)",
              "![student zero-shot vs VQA](zeroshot_vs_vqa.png)", "![learning curves](learning_curves.png)", ""]
    return "\n".join(lines)


def _plots(rows: list[dict], analysis: dict, results: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    meta = {"Software": None}
    fig, ax = plt.subplots(figsize=(6, 4))
    by_method = defaultdict(list)
    for r in analysis["table"]:
        by_method[r["method"]].append(r)
    for method, items in sorted(by_method.items()):
        items.sort(key=lambda r: r["teacher_zeroshot"])
        x = [r["teacher_zeroshot"] for r in items]
        y = [r["vqa"] for r in items]
        err = [[r["vqa"] - r["vqa_ci"][0] for r in items], [r["vqa_ci"][1] - r["vqa"] for r in items]]
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=method)
    blind = [r for r in rows if r["kind"] == "blind" and "vqa_overall" in r]
    if blind:
        ax.axhline(blind[0]["vqa_overall"], color="grey", ls="--", label="blind")
    ax.set(xlabel="teacher zero-shot (mean top-1)", ylabel="student VQA accuracy (%)",
           title="Do better teachers make better students?")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "teacher_vs_student_vqa.png", dpi=110, metadata=meta)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 4))
    students = [r for r in rows if r["kind"] == "student" and "vqa_overall" in r]
    for method in sorted({r["method"] for r in students}):
        pts = [r for r in students if r["method"] == method]
        ax.scatter([r["zeroshot"] for r in pts], [r["vqa_overall"] for r in pts], label=method, s=18)
    ax.set(xlabel="student zero-shot (mean top-1)", ylabel="student VQA accuracy (%)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "zeroshot_vs_vqa.png", dpi=110, metadata=meta)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    colours = {}
    for log in sorted((results / "students").glob("*/*/*/*/train_log.csv")):
        method = log.parts[-3]
        with open(log) as fh:
            data = list(csv.DictReader(fh))
        colour = colours.setdefault(method, f"C{len(colours)}")
        ax.plot([int(d["step"]) for d in data], [float(d["loss"]) for d in data], color=colour, alpha=0.5, lw=0.8,
                label=method if method not in ax.get_legend_handles_labels()[1] else None)
    ax.set(xlabel="step", ylabel="total training loss", yscale="log", title="Student learning curves")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "learning_curves.png", dpi=110, metadata=meta)
    plt.close(fig)


def report(results: str | Path, vqa_eval: str | Path, out: str | Path, n_boot: int = 1000, seed: int = 0) -> dict:
    results, out = Path(results), Path(out)
    rows = collect(results, Path(vqa_eval))
    analysis = analyse(rows, n_boot, seed)
    with atomic_dir(out) as tmp:
        (tmp / "study.csv").write_text(_csv(rows))
        (tmp / "study.md").write_text(_markdown(rows, analysis))
        write_json(tmp / "correlations.json", rounded(analysis["correlations"], 4))
        _plots(rows, analysis, results, tmp)
    return analysis
