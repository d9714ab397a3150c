"""The report's tables built from rows written by hand (no results tree): a further evaluation
set's table and its markdown, worked out number by number (issue 23: mutation scores of
`report/study.py`)."""

import numpy as np
import pytest

from clipdistill.report.stats import bootstrap_mean_ci
from clipdistill.report.study import _sets_markdown, further_set


def _student(seed, score, vlm_seed=0, **extra):
    """A KD student's VLM scoring `score` (VQA soft accuracy) on each of 4 questions."""
    return {"kind": "student", "teacher": "t", "student": "xs", "method": "kd", "seed": seed, "vlm_seed": vlm_seed,
            "teacher_free": False, "teacher_zeroshot": 0.4, "zeroshot": 0.2, "cka_image": 0.9,
            "vqa_overall": 100 * score, "_scores": dict.fromkeys(range(4), score), **extra}


def _further_rows():
    return [_student(0, 1.0), _student(1, 0.5),
            {"kind": "teacher", "teacher": "t", "vqa_overall": 30.0, "vlm_seed": 0},
            {"kind": "teacher", "teacher": "t", "vqa_overall": 50.0, "vlm_seed": 1},
            {"kind": "teacher", "teacher": "u"},  # no result on this set yet
            {"kind": "blind", "vqa_overall": 12.0, "vlm_seed": 0},
            {"kind": "blind"}]  # a blind VLM without a result is not an encoder that lacks one


def test_a_further_sets_table_worked_out_by_hand():
    """Seed 0 scores 1 on every question, seed 1 0.5: VQA 75. A draw of two seeds gives 100,
    75 or 50 with probability ¼, ½, ¼ whatever the question draw, so the 95% CI is [50, 100].
    Only the listed columns; references are the mean over VLM seeds (teacher t: 30 and 50);
    one encoder (teacher u) has no result on this set."""
    out = further_set(_further_rows(), n_boot=400, seed=0)
    (row,) = out["students"]
    assert row == {"teacher": "t", "student": "xs", "method": "kd", "seeds": 2, "vlm_seeds": 1, "vqa": 75.0,
                   "vqa_ci": [50.0, 100.0]}
    assert out["references"] == [{"encoder": "teacher t", "vqa": 40.0}, {"encoder": "blind", "vqa": 12.0}]
    assert out["missing_vlm_results"] == 1
    # the bootstrap's seed is passed on: few draws, so seeds 0 and 2 give other CIs
    points = np.array([[100.0] * 4, [50.0] * 4])
    assert further_set(_further_rows(), n_boot=5, seed=2)["students"][0]["vqa_ci"] == \
        list(bootstrap_mean_ci(points, 5, 2)[1:]) != list(bootstrap_mean_ci(points, 5, 0)[1:])


def test_a_further_sets_markdown_word_for_word():
    """The section names the study's set, then per set its students (the regime first where
    one varies), its references and how many encoders lack a result; nothing without sets."""
    rows = _further_rows()
    for r in rows[:2]:
        r["data"] = "distill_shifted"
    intro = ("## Further evaluation sets (descriptive)\n\nThe verdict above is on the study's set, `vqa_eval` (the "
             "first of vqa.eval_splits), fixed before the results: choosing among sets after seeing them would let "
             "the choice move the verdict, and the sets differ in question mix and difficulty, so their accuracies "
             "are not pooled. Each further set scores the same VLMs; VQA ± 95% bootstrap CI over seeds, each seed's "
             "VLM seeds and that set's questions.\n\n")
    table = "### gqa_like\n\n| teacher | student | method | seeds | VQA overall |\n|---|---|---|---|---|\n"
    assert _sets_markdown("vqa_eval", {"gqa_like": further_set(rows, n_boot=400, seed=0)}) == (
        intro + table + "| distill_shifted t | xs | kd | 2 | 75.0 [50.0, 100.0] |\n\n"
        "References: teacher t 40.0, blind 12.0.\n\n1 encoders have no result on this set yet.\n")
    complete = further_set(rows[:2], n_boot=400, seed=0)  # no references, nothing missing
    assert _sets_markdown("vqa_eval", {"gqa_like": complete}) == (
        intro + table + "| distill_shifted t | xs | kd | 2 | 75.0 [50.0, 100.0] |\n")
    assert _sets_markdown("vqa_eval", {}) == ""


def test_the_axes_section_word_for_word():
    """A level's row (duration levels get ×) and an axis that could not be analysed."""
    from clipdistill.report.study import _axes_markdown

    axes = {"data": {"reference": "distill", "levels": [{"level": "distill_shifted", "runs": 16, "effect": 2.0,
                                                         "ci": [0.5, 3.5], "p": 0.01, "p_holm": 0.02}]},
            "duration": {"reference": "1", "error": "no KD rows: every row is a baseline"}}
    assert _axes_markdown(axes) == [
        "", "## Distillation regime: each level against the reference level (VQA points)", "",
        ("Every trained student (KD and no-KD) against its twin at the axis's reference level (the first listed): "
        "the same teacher, student, method, seed, level of the other axis and VLM seed, question by question. "
        "95% bootstrap CI over seeds, VLM seeds and questions; p Holm-adjusted over the axis's levels "
        "(the teacher effect's machinery)."), "",
        "| axis | level | reference | runs | effect [95% CI] | p (Holm) |", "|---|---|---|---|---|---|",
        "| data | distill_shifted | distill | 16 | +2.0 [+0.5, +3.5] | 0.020 |",
        "| duration | – | ×1 | – | not analysable: no KD rows: every row is a baseline | – |"]
    assert _axes_markdown({}) == []


EFFECT = {"ci": [-0.5, 1.25], "n_teachers": 3, "n_runs": 6, "n_seeds": 2, "n_vlm_seeds": 2, "n_questions": 40,
          "verdict": "inconclusive", "slope": 0.375, "se_teacher": 0.0625, "se_measurement": 0.03125, "df": 1,
          "margin": 0.1, "detectable_slope": 2.5, "teachers_needed_for_margin": 12,
          "components": {"teacher": 0.5, "run": 0.25, "question": 40.0, "vlm": 1.5},
          "methods": {"kd": {"n_teachers": 3, "slope": 0.375, "ci": [-np.inf, np.inf], "p_holm": 0.5,
                             "verdict": "inconclusive"}}}


def test_the_effect_section_word_for_word():
    """Every number of the teacher effect where the report puts it; the VLM component only
    where it was estimated; the teachers needed, or more than 200."""
    from clipdistill.report.study import _effect_markdown

    gains = [{"teacher": "s", "method": "kd", "seeds": 2, "gain": -1.25, "ci": [-2.0, -0.5], "p_holm": 0.03}]
    head = [
        "", "## Teacher effect: KD gain over the no-KD student vs teacher quality", "",
        ("Slope of the paired gain (KD − seed-matched no-KD student, VQA points) per point of teacher zero-shot "
        "(top-1 %), the teacher as the unit (3 teachers, 6 KD runs, 2 seeds, up to 2 VLM seeds per run, 40 questions)."),
        "",
        ("| verdict | slope | 95% CI | SE (teachers) | SE (seeds, VLM seeds, questions) | df | equivalence margin | "
        "detectable slope (80% power) |"), "|---|---|---|---|---|---|---|---|",
        "| **inconclusive** | +0.38 | [-0.50, +1.25] | 0.062 | 0.031 | 1 | ±0.1 | 2.500 |", ""]
    methods = ["", "| method | teachers | slope | CI (Bonferroni level) | p (Holm) | verdict |", "|---|---|---|---|---|---|",
               "| kd | 3 | +0.38 | [−∞, +∞] | 0.500 | inconclusive |", "",
               "## Paired KD gains over the no-KD student (VQA points; p Holm-adjusted over all cells)", "",
               "| teacher | method | seeds | gain [95% CI] | p (Holm) |", "|---|---|---|---|---|"]
    assert _effect_markdown({"effect": EFFECT, "gains": gains}) == [
        *head, ("Variance components (points²): teacher 0.5, run 0.25, per question 40, between the VLM seeds of a "
        "run 1.5. To detect a slope of ±0.1 with 80% power the study needs about 12 teachers at this many runs and "
        "questions per teacher."), *methods, "| s | kd | 2 | -1.2 [-2.0, -0.5] | 0.030 |"]
    one_vlm = EFFECT | {"components": EFFECT["components"] | {"vlm": np.nan}, "teachers_needed_for_margin": None}
    assert _effect_markdown({"effect": one_vlm, "gains": []}) == [
        *head, ("Variance components (points²): teacher 0.5, run 0.25, per question 40. To detect a slope of ±0.1 "
        "with 80% power more than 200 teachers would be needed at this many runs per teacher."), *methods]
    assert _effect_markdown({"effect": None, "gains": []}) == []


def _params(tmp_path, **grid):
    """The smoke study's params with the grid's entries replaced (teachers s and m)."""
    import yaml
    from conftest import SMOKE

    p = yaml.safe_load(SMOKE.read_text())
    p["distill"]["grid"] |= grid
    p["vqa"] |= {"eval_splits": ["vqa_eval", "gqa_like"], "seeds": [0, 2]}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(p))
    return path


def test_the_layout_comes_from_the_params_grid(tmp_path):
    """2 teachers × (clipkd, baseline) × 2 data splits × 2 durations × 2 seeds = 32 evaluated
    students; trained: 16 KD runs and 8 baselines (one per regime and seed, not per teacher).
    Levels in the grid's order (durations as text), VLM seeds and further sets from `vqa`."""
    from clipdistill.io import DataError
    from clipdistill.report.study import study_layout

    layout = study_layout(_params(tmp_path, data=["distill", "distill_shifted"], durations=[1, 4], seeds=[0, 1]),
                          tmp_path / "results")
    assert {k: layout[k] for k in ("teachers", "vlm_seeds", "eval_sets", "levels")} == {
        "teachers": ["m", "s"], "vlm_seeds": [0, 2], "eval_sets": ["gqa_like"],
        "levels": {"data": ["distill", "distill_shifted"], "duration": ["1", "4"]}}
    assert len(layout["evaluated"]) == 32 and len(layout["trained"]) == 24
    assert sum(r["kd_teacher"] == "none" for r in layout["evaluated"]) == 16
    assert sum(r["teacher"] == "none" for r in layout["trained"]) == 8
    import yaml

    path = tmp_path / "params.yaml"
    p = yaml.safe_load(path.read_text())
    del p["distill"]["grid"]
    path.write_text(yaml.safe_dump(p))
    with pytest.raises(DataError, match="distill.grid is missing"):
        study_layout(path, tmp_path / "results")


def test_a_one_seed_cell_has_a_point_ci():
    """One seed, one VLM: the table's CI is the point (nothing to redraw but the questions,
    and every question scores alike); a teacher-free cell says so."""
    from clipdistill.report.study import student_table

    (row,) = student_table([_student(0, 0.5, teacher_free=True)], n_boot=50)
    assert (row["vqa"], row["vqa_ci"], row["seeds"], row["teacher_free"]) == (50.0, [50.0, 50.0], 1, True)
    unmarked = {k: v for k, v in _student(0, 0.5).items() if k != "teacher_free"}
    assert student_table([unmarked], n_boot=50)[0]["teacher_free"] is False  # KD unless said otherwise


def test_collect_reads_a_further_sets_answers_and_the_teachers_summaries(tmp_path):
    """`eval_set` swaps the study's gold answers and VQA files for the set's; teacher rows carry
    their zero-shot and retrieval summaries."""
    import json

    from test_report import fabricate

    from clipdistill.report.study import collect

    res, data = fabricate(tmp_path, lambda rank, seed: 2 + rank, n_q=4, teachers=("s", "m"), seeds=(0,))
    gold = res / "data" / "gqa_like" / "annotations.json"
    gold.parent.mkdir(parents=True)
    gold.write_text(json.dumps({"annotations": [{"question_id": f"g{q}", "answers": [{"answer": "no"}] * 10}
                                                for q in range(3)]}))
    for metrics in (res / "vqa_metrics" / "students").rglob("vlm0.json"):
        run = metrics.parent.relative_to(res / "vqa_metrics")
        answers = res / "vqa_sets" / "gqa_like" / "vqa" / run / "vlm0" / "answers.jsonl"
        answers.parent.mkdir(parents=True)
        answers.write_text("".join(json.dumps({"question_id": f"g{q}", "text": "no" if q == 0 else "yes"}) + "\n"
                                   for q in range(3)))
        (res / "vqa_sets" / "gqa_like" / "vqa_metrics" / run).mkdir(parents=True, exist_ok=True)
        (res / "vqa_sets" / "gqa_like" / "vqa_metrics" / run / "vlm0.json").write_text(
            json.dumps({"overall": 100 / 3, "per_question_type": {}}))
    students = [r for r in collect(res, data, eval_set="gqa_like") if r["kind"] == "student"]
    assert len(students) == 4 and all(r["_scores"] == {"g0": 1.0, "g1": 0.0, "g2": 0.0} for r in students)
    teachers = {r["teacher"]: r for r in collect(res, data) if r["kind"] == "teacher"}
    assert {t: (r["zeroshot"], r["teacher_retrieval"], r["retrieval"]) for t, r in teachers.items()} == {
        "s": (0.3, 0.0, 0.0), "m": (0.4, 0.1, 0.1)}


def test_the_report_reads_only_the_runs_the_params_grid_names(tmp_path):
    """A results tree with teachers s, m and l, a grid naming s and m: the report analyses two
    teachers. Gains (right answers of 40 over the baseline's): s −5, m +6, i.e. −12.5 and +15
    points at 30 and 40 % zero-shot: slope 27.5 / 10. The four KD runs answer 10, 11, 21, 22
    right: teacher ranks (1.5, 1.5, 3.5, 3.5) against 1..4 give Spearman 4/√20 = 0.8944 and
    Kendall τ-b 4/√24 = 0.8165, written to 4 decimals."""
    import json

    import yaml
    from conftest import SMOKE
    from test_report import fabricate

    from clipdistill.report.study import report

    res, data = fabricate(tmp_path, lambda rank, seed: [10, 21, 30][rank] + seed, n_q=40)
    p = yaml.safe_load(SMOKE.read_text())
    p["distill"]["methods"]["kd"] = p["distill"]["methods"].pop("clipkd")
    p["distill"]["grid"] |= {"methods": ["kd"], "seeds": [0, 1]}
    p["vqa"] |= {"seeds": [0]}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p))
    analysis = report(res, data, tmp_path / "out", n_boot=50, params=tmp_path / "params.yaml")
    assert [(t["teacher"], t["gain"]) for t in analysis["effect"]["teachers"]] == [
        ("m", pytest.approx(15.0)), ("s", pytest.approx(-12.5))]
    assert analysis["effect"]["slope"] == pytest.approx(2.75)
    saved = json.loads((tmp_path / "out" / "correlations.json").read_text())
    assert (saved["kd"]["n"], saved["kd"]["spearman"], saved["kd"]["kendall"]) == (4, 0.8944, 0.8165)
    md = (tmp_path / "out" / "study.md").read_text().splitlines()
    assert md[:4] == ["# Study report", "", f"**Answer:** {analysis['answer']}", ""]
    assert "| methods | n | Spearman ρ [95% CI] | Kendall τ [95% CI] |" in md
