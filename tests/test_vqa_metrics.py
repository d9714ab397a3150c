"""VQAv2 soft accuracy and the official normalisation, on hand-computed vectors."""

import pytest

from clipdistill.vqa.metrics import normalize_answer, summarize, vqa_accuracy


@pytest.mark.parametrize("raw, expected", [
    ("Two", "2"), ("two dogs", "2 dogs"), ("the red circle", "red circle"), ("A Cat.", "cat"),
    ("yes!", "yes"), ("black/white", "black white"), ("1,000", "1000"), ("3.5", "3.5"),
    ("dont know", "don't know"), ("  top\tleft\n", "top left"), ("none", "0"), ("an apple", "apple"),
])
def test_normalisation(raw, expected):
    assert normalize_answer(raw) == expected


@pytest.mark.parametrize("matches, expected", [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)])
def test_soft_score_by_number_of_matching_annotators(matches, expected):
    answers = ["blue"] * matches + ["red"] * (10 - matches)
    assert vqa_accuracy("blue", answers) == pytest.approx(expected)


def test_normalisation_applies_to_both_sides():
    answers = ["2"] * 5 + ["two"] * 3 + ["3", "1"]
    assert vqa_accuracy("Two.", answers) == 1.0
    assert vqa_accuracy("three", answers) == pytest.approx(0.3)
    assert vqa_accuracy("the red circle", ["red circle"] * 2 + ["circle"] * 8) == pytest.approx(0.6)


def test_single_answer_is_exact_match_and_empty_is_an_error():
    assert vqa_accuracy("Yes", ["yes"]) == 1.0 and vqa_accuracy("no", ["yes"]) == 0.0
    with pytest.raises(ValueError):
        vqa_accuracy("yes", [])


def test_summary_per_type_and_pope_statistics():
    recs = [
        {"prediction": "yes", "answer": "yes", "answers": ["yes"] * 10, "question_type": "exists", "answer_type": "yes/no"},
        {"prediction": "yes", "answer": "no", "answers": ["no"] * 10, "question_type": "exists", "answer_type": "yes/no"},
        {"prediction": "no", "answer": "yes", "answers": ["yes"] * 10, "question_type": "relation", "answer_type": "yes/no"},
        {"prediction": "red", "answer": "red", "answers": ["red"] * 2 + ["pink"] * 8, "question_type": "color",
         "answer_type": "other"},
    ]
    s = summarize(recs)
    assert s["overall"] == pytest.approx(100 * (1 + 0 + 0 + 0.6) / 4)
    assert s["per_question_type"] == {"color": pytest.approx(60.0), "exists": 50.0, "relation": 0.0}
    assert s["per_answer_type"]["yes/no"] == pytest.approx(100 / 3)
    assert s["yes_no"] == {"precision": 0.5, "recall": 0.5, "f1": pytest.approx(0.5), "yes_ratio": pytest.approx(2 / 3)}
