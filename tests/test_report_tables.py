"""The report's tables built from rows written by hand (no results tree): a further evaluation
set's table and its markdown, worked out number by number (issue 23: mutation scores of
`report/study.py`)."""

import numpy as np

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
