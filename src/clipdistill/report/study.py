"""`clipdistill report`: the answer to "do better teachers make better students (as VLM
vision encoders)?" — one of four verdicts from `stats.teacher_effect` (paired against the
no-KD student, the teacher as the unit) — with the tables, paired gains and plots behind it.

Reads what the pipeline wrote under `results/` (teacher/student evaluations, VQA metrics and
answer files, student manifests and training logs) where the stage table puts it, for the runs
the study's grid defines — nothing is recomputed.
"""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from clipdistill import stages
from clipdistill.io import DataError, atomic_dir, read_json, rounded, write_json
from clipdistill.report.stats import (BASELINE, StudyInputError, bootstrap_mean_ci, paired_effects,
                                      rank_correlations, teacher_effect, verdict_sentence)
from clipdistill.vqa.diagnostics import report_row
from clipdistill.vqa.metrics import vqa_accuracy

QUALITY = "zeroshot_mean_top1"
QUALITY_NAME = "teacher zero-shot (top-1 %)"  # the unit of the slope and of report.equivalence_margin


def _question_scores(answers_file: Path, gold: dict) -> dict:
    """question_id → that answer's VQA soft accuracy (0–1)."""
    rows = [json.loads(line) for line in answers_file.read_text().splitlines() if line.strip()]
    missing = [r["question_id"] for r in rows if r["question_id"] not in gold]
    if missing:
        raise DataError(f"{answers_file}: question_id {missing[0]!r} is not in the evaluation split's annotations")
    return {r["question_id"]: vqa_accuracy(r["text"], gold[r["question_id"]]) for r in rows}


AXES = ("data", "duration")  # the distillation regime's axes (distill.grid.data, .durations)


def study_layout(params: str | Path | None, results: Path) -> dict:
    """The runs the report reads, from the stage table: with the study's params, every student
    its grid defines (and whether it is a teacher-free baseline), every teacher, the VLM seeds
    and the levels of each regime axis (the first the reference); without (a hand-made results
    tree), the runs, VLM seeds and levels found where the table's paths point (reference: the
    smallest duration, split `distill` if present)."""
    if params is not None:
        from clipdistill.params import load_section

        grid = load_section(params, "distill").grid
        if grid is None:
            raise DataError(f"{params}: distill.grid is missing; the report reads the study's runs from it")
        study = {"teachers": dict.fromkeys(load_section(params, "teachers")), "distill": {"grid": grid.model_dump()}}
        vqa = load_section(params, "vqa")
        return {"teachers": sorted(study["teachers"]), "evaluated": stages.student_runs(study),
                "trained": stages.trained_students(study), "vlm_seeds": vqa.seeds, "eval_sets": vqa.eval_splits[1:],
                "levels": {"data": list(grid.data), "duration": [str(d) for d in grid.durations]}}
    segments = len(stages.RUN.split("/"))
    depth = "/".join("*" * segments)

    def run_of(parts) -> dict:
        regime, *rest = parts
        data, _, duration = regime.rpartition("-x")
        return dict(zip(stages.RUN_KEYS, (data, duration, *rest), strict=True))

    evaluated = []
    for ev in sorted((results / "student_eval").glob(f"{depth}/metrics.json")):
        run = run_of(ev.parts[-segments - 1:-1])
        kd = stages.results_path("distill", results, **run).is_dir()
        evaluated.append({**run, "kd_teacher": run["teacher"] if kd else stages.NO_TEACHER})
    trained = [run_of(log.parts[-segments - 1:-1])
               for log in sorted((results / "students").glob(f"{depth}/train_log.csv"))]
    found = {axis: sorted({r[axis] for r in evaluated}) for axis in AXES}
    found["duration"].sort(key=int)
    if "distill" in found["data"]:
        found["data"].insert(0, found["data"].pop(found["data"].index("distill")))
    return {"teachers": [p.parent.name for p in sorted((results / "teacher_eval").glob("*/metrics.json"))],
            "evaluated": evaluated, "trained": trained, "vlm_seeds": found_vlm_seeds(results),
            "eval_sets": sorted(p.name for p in (results / "vqa_sets").glob("*") if p.is_dir()), "levels": found}


def varied_axes(layout: dict) -> dict[str, list[str]]:
    """The regime axes with at least two levels (the others are not reported on)."""
    return {axis: levels for axis, levels in (layout.get("levels") or {}).items() if len(levels) >= 2}


def found_vlm_seeds(results: Path) -> list[int]:
    """The VLM seeds of the VQA metrics under `results` (`.../vlm<seed>.json`, the table's names)."""
    prefix, suffix = stages.VLM.split("{vlm_seed}")
    seeds = {p.stem[len(prefix):] for p in (results / "vqa_metrics").rglob(f"{prefix}*{suffix}.json")}
    return sorted(int(v) for v in seeds if v.isdigit())


def collect(results: Path, vqa_eval: Path, layout: dict | None = None, eval_set: str | None = None) -> list[dict]:
    """One row per VLM (students, teachers, blind; each encoder once per VLM seed, `vlm_seed`),
    flat and numeric where possible; an encoder without any VQA result gets one row without.
    `eval_set`: the VLMs' scores on that further evaluation set (`vqa score`, gold answers from
    its split folder) instead of the study's set `vqa_eval`."""
    layout = layout or study_layout(None, results)
    if eval_set is not None:
        vqa_eval = stages.results_path("data_prepare", results, split=eval_set)
    gold = {a["question_id"]: [x["answer"] for x in a["answers"]]
            for a in read_json(vqa_eval / "annotations.json")["annotations"]}
    teachers = {t: read_json(stages.results_path("teacher_eval", results, teacher=t))["summary"]
                for t in layout["teachers"]}
    rows = []

    def vqa_fields(metrics_file: Path, answers: Path) -> dict:
        if not metrics_file.is_file():
            return {}
        m = read_json(metrics_file)
        out = {"vqa_overall": m["overall"], **{f"vqa_{k}": v for k, v in m["per_question_type"].items()},
               **report_row(m)}
        if answers.is_file():
            out["_scores"] = _question_scores(answers, gold)
        return out

    def vlms(stage: str, **bound) -> list[dict]:
        """The VQA fields of each VLM seed whose metrics exist ([{}] if none)."""
        found = []
        for v in layout.get("vlm_seeds") or []:
            if eval_set is not None:  # vqa_teacher -> vqa_score_teacher, ...
                stage, bound = stage.replace("vqa_", "vqa_score_", 1), {**bound, "eval_set": eval_set}
            fields = vqa_fields(stages.results_path(stage, results, 1, **bound, vlm_seed=v),
                                stages.results_path(stage, results, 0, **bound, vlm_seed=v) / "answers.jsonl")
            if fields:
                found.append({"vlm_seed": int(v), **fields})
        return found or [{}]

    varied = varied_axes(layout)
    for run in layout["evaluated"]:
        t, s, m, seed, owner = run["teacher"], run["student"], run["method"], run["seed"], run["kd_teacher"]
        trained = {"data": run["data"], "duration": run["duration"], "teacher": owner, "student": s, "method": m,
                   "seed": seed}
        manifest = read_json(stages.results_path("distill", results, **trained) / "manifest.json")
        summary = read_json(stages.results_path("student_eval", results, **run))["summary"]
        student = {"kind": "student", "teacher": t, "student": s, "method": m, "seed": int(seed),
                   "teacher_free": owner == stages.NO_TEACHER,
                   "data_source": Path(manifest["data"]["split"]).name, "epochs": manifest["train"]["epochs"],
                   "params_total": manifest["params"]["total"], "params_visual": manifest["params"]["visual"],
                   "teacher_zeroshot": teachers.get(t, {}).get(QUALITY),
                   "teacher_retrieval": teachers.get(t, {}).get("retrieval_mean_R@1"),
                   "zeroshot": summary.get(QUALITY), "retrieval": summary.get("retrieval_mean_R@1"),
                   "cka_image": summary.get("cka_image"),
                   **{axis: run[axis] for axis in varied}}  # a regime axis is a column where it varies
        rows += [{**student, **vlm} for vlm in vlms("vqa_student", **trained)]
    for t, summary in teachers.items():
        manifest = read_json(stages.results_path("teacher_train", results, teacher=t) / "manifest.json")
        teacher = {"kind": "teacher", "teacher": t, "params_total": manifest["params"]["total"],
                   "params_visual": manifest["params"]["visual"], "teacher_zeroshot": summary.get(QUALITY),
                   "teacher_retrieval": summary.get("retrieval_mean_R@1"), "zeroshot": summary.get(QUALITY),
                   "retrieval": summary.get("retrieval_mean_R@1")}
        rows += [{**teacher, **vlm} for vlm in vlms("vqa_teacher", teacher=t)]
    rows += [{"kind": "blind", **vlm} for vlm in vlms("vqa_blind") if vlm]
    if not any(r["kind"] == "student" for r in rows):
        raise DataError(f"{results}: no evaluated students found (results/student_eval/{stages.RUN}/metrics.json)")
    return rows


def _regime(r: dict) -> str:
    """A row's regime levels where they vary (`distill_shifted x4`); empty in a one-regime study."""
    return " ".join(f"x{r[a]}" if a == "duration" else str(r[a]) for a in AXES if a in r)


def score_table(rows: list[dict]):
    """The long (VLM × question) table `teacher_effect` reads: KD students with their
    teacher's zero-shot in %, and each no-KD baseline once per (regime, student, seed, VLM
    seed). A run is paired with the baseline of its own regime (data split, duration): the
    regime is part of `student`, the pairing key."""
    import pandas as pd

    frames, seen = [], set()
    for r in rows:
        if r["kind"] != "student" or "_scores" not in r:
            continue
        if r.get("teacher_free"):
            key = (_regime(r), r["student"], r["seed"], r.get("vlm_seed", 0))
            if key in seen:  # evaluated against every teacher, trained and asked once
                continue
            seen.add(key)
            teacher, quality, method = None, np.nan, "baseline"
        else:
            teacher, quality, method = r["teacher"], 100 * r["teacher_zeroshot"], r["method"]
        qids, scores = zip(*r["_scores"].items())
        student = f"{r['student']} {_regime(r)}".strip()
        frames.append(pd.DataFrame({"student": student, "teacher": teacher, "teacher_quality": quality,
                                    "method": method, "seed": r["seed"], "vlm_seed": r.get("vlm_seed", 0),
                                    "question_id": list(qids),
                                    "score": list(scores)}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def axis_effects(rows: list[dict], axes: dict[str, list[str]], n_boot: int = 1000, seed: int = 0) -> dict:
    """Per regime axis (name → its levels, the first the reference): the effect on student VQA
    (points) of each other level, every trained student (KD and no-KD) paired with its twin at
    the reference level — same teacher, student, method, seed, other axis's level and VLM seed —
    question by question. The teacher axis's machinery (`paired_effects`): bootstrap CI over
    seeds, VLM seeds and questions; p Holm-adjusted over the axis's levels."""
    import pandas as pd

    out = {}
    for axis, levels in axes.items():
        frames, seen = [], set()
        for r in rows:
            if r["kind"] != "student" or "_scores" not in r:
                continue
            owner = None if r.get("teacher_free") else r["teacher"]
            others = (r[a] for a in AXES if a in r and a != axis)
            twin = (owner or stages.NO_TEACHER, r["student"], r["method"], *others)
            key = (twin, r[axis], r["seed"], r.get("vlm_seed", 0))
            if key in seen:  # a no-KD student is evaluated against every teacher, trained and asked once
                continue
            seen.add(key)
            reference = r[axis] == levels[0]
            qids, scores = zip(*r["_scores"].items())
            frames.append(pd.DataFrame({"student": "/".join(map(str, twin)), "teacher": None if reference else r[axis],
                                        "teacher_quality": np.nan if reference else float(levels.index(r[axis])),
                                        "method": BASELINE if reference else axis, "seed": r["seed"],
                                        "vlm_seed": r.get("vlm_seed", 0), "question_id": list(qids),
                                        "score": list(scores)}))
        try:
            cells = paired_effects(pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(),
                                   n_boot=n_boot, seed=seed, min_teachers=1)
        except StudyInputError as e:
            out[axis] = {"reference": levels[0], "error": str(e)}
            continue
        cells.sort(key=lambda c: levels.index(c["teacher"]))
        out[axis] = {"reference": levels[0],
                     "levels": [{"level": c["teacher"], "runs": c["seeds"], "effect": c["gain"], "ci": c["ci"],
                                 "p": c["p"], "p_holm": c["p_holm"]} for c in cells]}
    return out


def per_run(rows: list[dict]) -> list[dict]:
    """One row per encoder run: its VLMs' rows merged (no `vlm_seed`), `vqa_overall` their mean."""
    merged: dict = {}
    for r in rows:
        key = (r["kind"], r.get("teacher"), r.get("student"), r.get("method"), r.get("seed"), _regime(r))
        if key in merged:
            merged[key]["_vqa"].append(r["vqa_overall"])
        else:
            merged[key] = {**r, "_vqa": [r["vqa_overall"]]}
    return [{**{k: v for k, v in r.items() if k not in ("_vqa", "vlm_seed")}, "vqa_overall": float(np.mean(r["_vqa"]))}
            for r in merged.values()]


def student_table(rows: list[dict], n_boot: int = 1000, seed: int = 0) -> list[dict]:
    """Per (teacher, student, method): VQA mean and 95% bootstrap CI over seeds, each seed's VLM
    seeds and the questions, with the CLIP-side columns."""
    groups = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r["kind"] == "student" and "_scores" in r:
            groups[(tuple(r[a] for a in AXES if a in r), r["teacher"], r["student"], r["method"])][r["seed"]].append(r)
    table = []
    for (levels, t, s, m), by_seed in sorted(groups.items()):
        runs = [vlm for _, vlms in sorted(by_seed.items()) for vlm in vlms]
        qids = sorted(runs[0]["_scores"], key=str)
        per_seed = [100 * np.array([[vlm["_scores"][q] for q in qids] for vlm in vlms]) for _, vlms in sorted(by_seed.items())]
        # seeds × VLM seeds × questions when every seed has as many VLMs; else each seed's VLM mean
        matrix = np.stack(per_seed) if len({len(v) for v in per_seed}) == 1 else np.stack([v.mean(0) for v in per_seed])
        mean, lo, hi = bootstrap_mean_ci(matrix, n_boot, seed)
        table.append({**{a: r for a, r in zip([a for a in AXES if a in runs[0]], levels)},
                      "teacher": t, "student": s, "method": m, "seeds": len(by_seed),
                      "vlm_seeds": max(len(v) for v in per_seed),
                      "teacher_free": runs[0].get("teacher_free", False),
                      "teacher_zeroshot": runs[0]["teacher_zeroshot"],
                      "zeroshot": float(np.mean([r["zeroshot"] for r in runs])),
                      "cka_image": float(np.mean([r["cka_image"] for r in runs])),
                      "vqa": mean, "vqa_ci": [lo, hi]})
    return table


def analyse(rows: list[dict], n_boot: int = 1000, seed: int = 0, margin: float = 0.1,
            axes: dict[str, list[str]] | None = None) -> dict:
    """Group means with CIs, the paired KD gains, the teacher effect and its verdict, the
    (descriptive) rank correlations, and the effect of each regime axis in `axes` (those with
    two or more levels, see `axis_effects`)."""
    table = student_table(rows, n_boot, seed)
    correlations = {}
    # descriptive only: one pair per run (teacher × seed, its VLMs averaged); runs of a teacher are not independent
    students = per_run([r for r in rows if r["kind"] == "student" and "vqa_overall" in r and not r.get("teacher_free")])
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
    scores = score_table(rows)
    effect, gains = None, []
    try:
        effect = teacher_effect(scores, margin=margin, n_boot=n_boot, seed=seed)
        gains = paired_effects(scores, n_boot=n_boot, seed=seed)
        answer = verdict_sentence(effect, QUALITY_NAME)
    except StudyInputError as e:  # e.g. no baseline in the grid: say what is missing, not a traceback
        answer = f"Inconclusive: the study cannot be analysed ({e})."
    return {"table": table, "correlations": correlations, "effect": effect, "gains": gains, "answer": answer,
            "axes": axis_effects(rows, axes, n_boot, seed) if axes else {}}


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
    regimes = any(_regime(r) for r in analysis["table"])  # a column only where a regime axis varies
    lines = ["# Study report", "", f"**Answer:** {analysis['answer']}", "",
             "## Students (mean over seeds and VLM seeds; VQA ± 95% bootstrap CI over seeds, each seed's VLM seeds "
             "and questions)", "",
             ("| regime " if regimes else "") +
             "| teacher | teacher zero-shot | student | method | seeds | VLMs per seed | student zero-shot | "
             "CKA to teacher | VQA overall |",
             ("|---" if regimes else "") + "|---|---|---|---|---|---|---|---|---|"]
    for r in analysis["table"]:
        lines.append((f"| {_regime(r)} " if regimes else "") +
                     f"| {r['teacher']} | {r['teacher_zeroshot']:.3f} | {r['student']} | {r['method']} | {r['seeds']} | "
                     f"{r['vlm_seeds']} | {r['zeroshot']:.3f} | {r['cka_image']:.3f} | "
                     f"{r['vqa']:.1f} [{r['vqa_ci'][0]:.1f}, {r['vqa_ci'][1]:.1f}] |")
    refs = per_run([r for r in rows if r["kind"] in ("teacher", "blind") and "vqa_overall" in r])
    if refs:
        lines += ["", "## References (VQA: mean over VLM seeds)", "", "| encoder | zero-shot | VQA overall |",
                  "|---|---|---|"]
        for r in refs:
            name = "blind (no image)" if r["kind"] == "blind" else f"teacher {r['teacher']}"
            zs = f"{r['zeroshot']:.3f}" if r.get("zeroshot") is not None else "–"
            lines.append(f"| {name} | {zs} | {r['vqa_overall']:.1f} |")
    lines += _diagnostics_markdown(rows)
    lines += _effect_markdown(analysis)
    lines += _axes_markdown(analysis["axes"])
    lines += ["", "## Teacher zero-shot vs student VQA: rank correlations (descriptive)", "",
              "Runs of one teacher are not independent; the verdict above comes from the teacher effect.", "",
              "| methods | n | Spearman ρ [95% CI] | Kendall τ [95% CI] |", "|---|---|---|---|"]
    for name, c in analysis["correlations"].items():
        lines.append(f"| {name} | {c['n']} | {c['spearman']:+.2f} [{c['spearman_ci'][0]:+.2f}, {c['spearman_ci'][1]:+.2f}] | "
                     f"{c['kendall']:+.2f} [{c['kendall_ci'][0]:+.2f}, {c['kendall_ci'][1]:+.2f}] |")
    lines += ["", "![KD gain vs teacher quality](teacher_effect.png)",
              "![teacher quality vs student VQA](teacher_vs_student_vqa.png)",
              "![student zero-shot vs VQA](zeroshot_vs_vqa.png)", "![learning curves](learning_curves.png)", ""]
    return "\n".join(lines)


def further_set(rows: list[dict], n_boot: int, seed: int) -> dict:
    """One further evaluation set: the students' table (as the study's, CIs over seeds, VLM
    seeds and this set's questions) and the references (teachers, blind; mean over VLM seeds)."""
    missing = sum(1 for r in rows if r["kind"] != "blind" and "vqa_overall" not in r)
    refs = per_run([r for r in rows if r["kind"] in ("teacher", "blind") and "vqa_overall" in r])
    keys = (*AXES, "teacher", "student", "method", "seeds", "vlm_seeds", "vqa", "vqa_ci")
    return {"students": [{k: r[k] for k in keys if k in r}
                         for r in student_table(rows, n_boot, seed)],
            "references": [{"encoder": "blind" if r["kind"] == "blind" else f"teacher {r['teacher']}",
                            "vqa": r["vqa_overall"]} for r in refs],
            "missing_vlm_results": missing}


def _sets_markdown(study_set: str, further: dict) -> str:
    if not further:
        return ""
    lines = ["## Further evaluation sets (descriptive)", "",
             f"The verdict above is on the study's set, `{study_set}` (the first of vqa.eval_splits), fixed before "
             "the results: choosing among sets after seeing them would let the choice move the verdict, and the "
             "sets differ in question mix and difficulty, so their accuracies are not pooled. Each further set "
             "scores the same VLMs; VQA ± 95% bootstrap CI over seeds, each seed's VLM seeds and that set's "
             "questions.", ""]
    for name, res in further.items():
        lines += [f"### {name}", "", "| teacher | student | method | seeds | VQA overall |", "|---|---|---|---|---|"]
        lines += [f"| {(_regime(r) + ' ') if _regime(r) else ''}{r['teacher']} | {r['student']} | {r['method']} | "
                  f"{r['seeds']} | "
                  f"{r['vqa']:.1f} [{r['vqa_ci'][0]:.1f}, {r['vqa_ci'][1]:.1f}] |" for r in res["students"]]
        if res["references"]:
            lines += ["", "References: " + ", ".join(f"{r['encoder']} {r['vqa']:.1f}" for r in res["references"]) + "."]
        if res["missing_vlm_results"]:
            lines += ["", f"{res['missing_vlm_results']} encoders have no result on this set yet."]
        lines.append("")
    return "\n".join(lines)


def _diagnostics_markdown(rows: list[dict]) -> list[str]:
    """What each VLM reads of what its tower encodes (reading efficiency = VLM accuracy / probe
    accuracy per question type), and which VLMs collapsed onto one answer."""
    diag = [r for r in rows if "vqa_collapsed" in r]
    if not diag:
        return []
    types = sorted({k[len("vqa_efficiency_"):] for r in diag for k in r if k.startswith("vqa_efficiency_")})

    def name(r):
        vlm = f" (VLM seed {r['vlm_seed']})" if "vlm_seed" in r else ""
        if r["kind"] == "student":
            regime = _regime(r).replace(" ", "-")
            return (f"{regime}/" if regime else "") + f"{r['teacher']}/{r['student']}/{r['method']}/{r['seed']}{vlm}"
        return ("blind" if r["kind"] == "blind" else f"teacher {r['teacher']}") + vlm

    def cell(v):
        return "n/e" if v is None else f"{v:.2f}"

    lines = ["", "## VQA diagnostics: reading efficiency (VLM accuracy / tower probe) and answer collapse", "",
             "n/e: the probe is not estimable there (one class, or no eval question of that type).", "",
             "| encoder | collapsed | one answer on | " + " | ".join(types) + " |",
             "|---|---|---|" + "---|" * len(types)]
    collapsed = [r for r in diag if r["vqa_collapsed"]]
    constant = [r for r in diag if r.get("vqa_constant_types")]
    for r in sorted(diag, key=lambda r: (r["kind"] != "teacher", r["kind"] != "blind", name(r))):
        flag = f"**yes** ({r['vqa_collapsed_types']})" if r["vqa_collapsed"] else "no"
        lines.append(f"| {name(r)} | {flag} | {r.get('vqa_constant_types') or '–'} | "
                     + " | ".join(cell(r.get(f"vqa_efficiency_{t}")) for t in types) + " |")
    if collapsed:
        lines += ["", f"**{len(collapsed)} VLM(s) collapsed** onto one answer for some question type (its most "
                  "frequent answer exceeds both twice its true share and half its outputs): their VQA numbers "
                  "measure the recipe's failure, not the encoder."]
    if constant:
        lines += ["", f"**{len(constant)} VLM(s) give one answer** to ≥ 95 % of some question type's questions "
                  "although ≥ 20 % of them want another (\"one answer on\"): on those types the VLM ignores "
                  "the question, even where its score looks like the answer prior."]
    sides = sorted({k[len("vqa_single_"):] for r in diag for k in r if k.startswith("vqa_single_")})
    if sides:
        def acc(v):
            return "–" if v is None else f"{v:.0f}"

        lines += ["", "Reading vs finding: accuracy on questions about one-object scenes (only reading) / about "
                  "scenes with several (the named object must be found first). A VLM far better on the first "
                  "reads the attribute but does not find the object the question names.", "",
                  "| encoder | " + " | ".join(f"{t}: one / several" for t in sides) + " |",
                  "|---|" + "---|" * len(sides)]
        for r in sorted(diag, key=lambda r: (r["kind"] != "teacher", r["kind"] != "blind", name(r))):
            lines.append(f"| {name(r)} | " + " | ".join(f"{acc(r.get(f'vqa_single_{t}'))} / {acc(r.get(f'vqa_multi_{t}'))}"
                                                         for t in sides) + " |")
    return lines


def _num(x: float, fmt: str = "+.2f") -> str:
    return format(x, fmt) if np.isfinite(x) else ("−∞" if x < 0 else "+∞")


def _effect_markdown(analysis: dict) -> list[str]:
    effect = analysis["effect"]
    if effect is None:
        return []
    lo, hi = effect["ci"]
    lines = ["", "## Teacher effect: KD gain over the no-KD student vs teacher quality", "",
             f"Slope of the paired gain (KD − seed-matched no-KD student, VQA points) per point of {QUALITY_NAME}, "
             f"the teacher as the unit ({effect['n_teachers']} teachers, {effect['n_runs']} KD runs, "
             f"{effect['n_seeds']} seeds, up to {effect['n_vlm_seeds']} VLM seeds per run, "
             f"{effect['n_questions']} questions).", "",
             "| verdict | slope | 95% CI | SE (teachers) | SE (seeds, VLM seeds, questions) | df | equivalence margin | "
             "detectable slope (80% power) |", "|---|---|---|---|---|---|---|---|",
             f"| **{effect['verdict']}** | {_num(effect['slope'])} | [{_num(lo)}, {_num(hi)}] | "
             f"{_num(effect.get('se_teacher', np.nan), '.3f')} | {_num(effect.get('se_measurement', np.nan), '.3f')} | "
             f"{effect['df']} | ±{effect['margin']:g} | {_num(effect['detectable_slope'], '.3f')} |"]
    need = effect["teachers_needed_for_margin"]
    c = effect["components"]
    vlm = f", between the VLM seeds of a run {c['vlm']:.3g}" if np.isfinite(c.get("vlm", np.nan)) else ""
    lines += ["", f"Variance components (points²): teacher {c['teacher']:.3g}, run {c['run']:.3g}, "
              f"per question {c['question']:.3g}{vlm}. To detect a slope of ±{effect['margin']:g} with 80% power "
              + (f"the study needs about {need} teachers at this many runs and questions per teacher."
                 if need else "more than 200 teachers would be needed at this many runs per teacher."), "",
              "| method | teachers | slope | CI (Bonferroni level) | p (Holm) | verdict |", "|---|---|---|---|---|---|"]
    for m, r in effect["methods"].items():
        lines.append(f"| {m} | {r['n_teachers']} | {_num(r['slope'])} | [{_num(r['ci'][0])}, {_num(r['ci'][1])}] | "
                     f"{r['p_holm']:.3f} | {r['verdict']} |")
    lines += ["", "## Paired KD gains over the no-KD student (VQA points; p Holm-adjusted over all cells)", "",
              "| teacher | method | seeds | gain [95% CI] | p (Holm) |", "|---|---|---|---|---|"]
    for g in analysis["gains"]:
        lines.append(f"| {g['teacher']} | {g['method']} | {g['seeds']} | {g['gain']:+.1f} "
                     f"[{g['ci'][0]:+.1f}, {g['ci'][1]:+.1f}] | {g['p_holm']:.3f} |")
    return lines


def _level(axis: str, level: str) -> str:
    return f"×{level}" if axis == "duration" else level


def _axes_markdown(axes: dict) -> list[str]:
    """Each regime axis with two or more levels: every level against the reference level."""
    if not axes:
        return []
    lines = ["", "## Distillation regime: each level against the reference level (VQA points)", "",
             "Every trained student (KD and no-KD) against its twin at the axis's reference level (the first listed): "
             "the same teacher, student, method, seed, level of the other axis and VLM seed, question by question. "
             "95% bootstrap CI over seeds, VLM seeds and questions; p Holm-adjusted over the axis's levels "
             "(the teacher effect's machinery).", "",
             "| axis | level | reference | runs | effect [95% CI] | p (Holm) |", "|---|---|---|---|---|---|"]
    for axis, res in axes.items():
        ref = _level(axis, res["reference"])
        if "error" in res:
            lines.append(f"| {axis} | – | {ref} | – | not analysable: {res['error']} | – |")
            continue
        lines += [f"| {axis} | {_level(axis, c['level'])} | {ref} | {c['runs']} | {c['effect']:+.1f} "
                  f"[{c['ci'][0]:+.1f}, {c['ci'][1]:+.1f}] | {c['p_holm']:.3f} |" for c in res["levels"]]
    return lines


def _effect_plot(analysis: dict, out: Path, meta: dict) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    effect = analysis["effect"]
    by_method = defaultdict(list)
    for g in analysis["gains"]:
        by_method[g["method"]].append(g)
    for method, items in sorted(by_method.items()):
        items.sort(key=lambda g: g["quality"])
        ax.errorbar([g["quality"] for g in items], [g["gain"] for g in items], capsize=3, marker="o", ls=":",
                    yerr=[[g["gain"] - g["ci"][0] for g in items], [g["ci"][1] - g["gain"] for g in items]],
                    label=method, alpha=0.8)
    if effect is not None and np.isfinite(effect["slope"]):
        x = np.array([t["quality"] for t in effect["teachers"]])
        xs = np.linspace(x.min(), x.max(), 50)
        ax.plot(xs, effect["intercept"] + effect["slope"] * xs, color="black", lw=2,
                label=f"teacher effect ({effect['verdict']})")
    ax.axhline(0, color="grey", ls="--", lw=0.8)
    ax.set(xlabel=QUALITY_NAME, ylabel="KD − no-KD student VQA (points)", title="KD gain vs teacher quality")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "teacher_effect.png", dpi=110, metadata=meta)
    plt.close(fig)


def _plots(rows: list[dict], analysis: dict, results: Path, out: Path, trained: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    meta = {"Software": None}
    _effect_plot(analysis, out, meta)
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
    blind = [r["vqa_overall"] for r in rows if r["kind"] == "blind" and "vqa_overall" in r]
    if blind:
        ax.axhline(float(np.mean(blind)), color="grey", ls="--", label="blind")
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
    for run in trained:
        log, method = stages.results_path("distill", results, **run) / "train_log.csv", run["method"]
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


def _finite(obj):
    """JSON has no infinities: an unbounded CI end is written as null."""
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def report(results: str | Path, vqa_eval: str | Path, out: str | Path, n_boot: int = 1000, seed: int = 0,
           margin: float = 0.1, params: str | Path | None = None) -> dict:
    """params: the study's params.yaml, whose grid names the runs to read (see `study_layout`)."""
    results, out = Path(results), Path(out)
    layout = study_layout(params, results)
    rows = collect(results, Path(vqa_eval), layout)
    analysis = analyse(rows, n_boot, seed, margin, varied_axes(layout))
    further = {s: further_set(collect(results, Path(vqa_eval), layout, eval_set=s), n_boot, seed)
               for s in layout.get("eval_sets") or []}
    with atomic_dir(out) as tmp:
        (tmp / "study.csv").write_text(_csv(rows))
        (tmp / "study.md").write_text(_markdown(rows, analysis) + _sets_markdown(Path(vqa_eval).name, further))
        if further:  # absent with one evaluation set: the default study's report is unchanged
            write_json(tmp / "eval_sets.json", _finite(rounded(further, 4)))
        write_json(tmp / "correlations.json", rounded(analysis["correlations"], 4))
        axes = {"axes": analysis["axes"]} if analysis["axes"] else {}  # only an axis with two or more levels
        write_json(tmp / "effect.json", _finite(rounded({"answer": analysis["answer"], "effect": analysis["effect"],
                                                         "gains": analysis["gains"], **axes}, 4)))
        _plots(rows, analysis, results, tmp, layout["trained"])
    return analysis
