"""The synthetic world's language is true to its scenes, varied, and covers every attribute."""

import re
from collections import Counter

import numpy as np
import pytest

from clipdistill.data import world
from clipdistill.data.world import Obj


def scenes(n=400, seed=0):
    rng = np.random.default_rng(seed)
    return [(world.sample_scene(rng, 1, 4), rng) for _ in range(n)]


def test_scenes_respect_limits_and_cover_attributes():
    seen = Counter()
    for scene, _ in scenes():
        assert 1 <= len(scene) <= 4
        assert len({(o.row, o.col) for o in scene}) == len(scene), "two objects share a cell"
        seen.update(("shape", o.shape) for o in scene)
        seen.update(("color", o.color) for o in scene)
        seen.update(("size", o.size) for o in scene)
    assert {s for k, s in seen if k == "shape"} == set(world.SHAPES) and len(world.SHAPES) >= 6
    assert {c for k, c in seen if k == "color"} == set(world.COLORS) and len(world.COLORS) >= 8
    assert {s for k, s in seen if k == "size"} == {"small", "large"}


def _find(scene, ref):
    """Objects matching a referring expression like 'small red circle' (independent parser)."""
    words = ref.replace(" object", "").split()
    return [o for o in scene if all(w in (o.shape, o.color, o.size) for w in words)]


def check_answer(scene, q):
    """Recompute the answer from the scene alone."""
    text = q.question
    if m := re.fullmatch(r"What color is the (.+)\?", text):
        (o,) = _find(scene, m[1])
        return o.color
    if m := re.fullmatch(r"What shape is the (.+)\?", text):
        (o,) = _find(scene, m[1])
        return o.shape
    if text == "How many objects are there?":
        return str(len(scene))
    if m := re.fullmatch(r"How many (\w+) objects are there\?", text):
        return str(sum(o.color == m[1] for o in scene))
    if m := re.fullmatch(r"How many (\w+?)(es|s) are there\?", text):
        shape = m[1] if m[1] in world.SHAPES else m[1] + "e"
        return str(sum(o.shape == shape for o in scene))
    if m := re.fullmatch(r"Is there an? (\w+) (\w+)\?", text):
        return "yes" if any((o.color, o.shape) == (m[1], m[2]) for o in scene) else "no"
    if m := re.fullmatch(r"Is the (.+) (to the left of|to the right of|above|below) the (.+)\?", text):
        (a,), (b,) = _find(scene, m[1]), _find(scene, m[3])
        dc, dr = b.col - a.col, b.row - a.row
        truth = {"to the left of": dc > 0, "to the right of": dc < 0, "above": dr > 0, "below": dr < 0}
        return "yes" if truth[m[2]] else "no"
    if m := re.fullmatch(r"Which is (bigger|larger), the (.+) or the (.+)\?", text):
        (a,), (b,) = _find(scene, m[2]), _find(scene, m[3])
        assert a.size != b.size
        return m[2] if a.size == "large" else m[3]
    if m := re.fullmatch(r"Where is the (.+)\?", text):
        (o,) = _find(scene, m[1])
        row, col = ("top", "middle", "bottom")[o.row], ("left", "center", "right")[o.col]
        return {("middle", "center"): "center"}.get((row, col), col if row == "middle" else
                                                     row if col == "center" else f"{row} {col}")
    raise AssertionError(f"unparsed question {text!r}")


def test_every_answer_is_true_to_the_scene():
    types = Counter()
    for scene, rng in scenes(600):
        for q in world.questions(rng, scene, k=7):
            assert check_answer(scene, q) == q.answer, (scene, q)
            assert q.answer_type == world.ANSWER_TYPES[q.question_type]
            types[q.question_type] += 1
    assert set(types) == set(world.QUESTION_TYPES) and len(types) >= 6
    assert min(types.values()) > 50


def test_yes_no_questions_are_balanced():
    answers = Counter()
    for scene, rng in scenes(600, seed=1):
        answers.update(q.answer for q in world.questions(rng, scene, 7) if q.answer_type == "yes/no")
    assert 0.4 < answers["yes"] / (answers["yes"] + answers["no"]) < 0.6


def test_annotators_mostly_agree_with_noise_and_synonyms():
    rng = np.random.default_rng(0)
    q = world._q_color(np.random.default_rng(3), [Obj("circle", "purple", "large", 0, 0)])
    assert q.answer == "purple" and "violet" in q.variants
    votes = Counter(a for _ in range(200) for a in world.annotator_answers(rng, q, 0.3, 0.1))
    total = sum(votes.values())
    assert total == 2000
    assert votes[q.answer] / total == pytest.approx(0.6, abs=0.05)
    assert sum(votes[v] for v in q.variants if v != q.answer) / total == pytest.approx(0.3, abs=0.05)
    assert sum(votes[d] for d in q.distractors) / total == pytest.approx(0.1, abs=0.03)


def test_count_answers_mix_digits_and_words():
    q = world.Question("How many objects are there?", "2", "count", "number", ("two",), ("1", "3"))
    answers = world.annotator_answers(np.random.default_rng(0), q, 0.5, 0.1)
    assert len(answers) == 10 and {"2", "two"} <= set(answers)


def test_captions_name_every_object_and_vary():
    forms = set()
    for scene, rng in scenes(300, seed=2):
        text = world.caption(rng, scene)
        for o in scene:
            names = (o.shape, *world.SHAPE_SYNONYMS[o.shape])
            assert any(n in text for n in names), (text, o)
        forms.add(text.split()[0])
        forms.update(rel for rel in world.RELATIONS if rel in text)
    assert {"to the left of", "above"} <= forms and len(forms) > 6


def test_referring_expressions_are_unique_and_avoid_the_asked_attribute():
    for scene, _ in scenes(300, seed=3):
        for o in scene:
            for avoid in (None, "color", "shape", "size"):
                ref = world.referring_expression(o, scene, avoid)
                if ref is None:
                    continue
                assert _find(scene, ref) == [o]
                if avoid:
                    assert avoid not in ("shape" if o.shape in ref else "",
                                         "color" if o.color in ref else "",
                                         "size" if o.size in ref.split() else "")


def test_zero_shot_labels():
    one_large = [Obj("star", "blue", "large", 0, 0), Obj("ring", "red", "small", 1, 1)]
    assert world.zero_shot_labels(one_large) == {
        "largest_shape": world.SHAPES.index("star"), "largest_color": world.COLORS.index("blue"),
        "object_count": 1}
    two_large = one_large + [Obj("cross", "pink", "large", 2, 2)]
    labels = world.zero_shot_labels(two_large)
    assert labels["largest_shape"] == -1 and labels["object_count"] == 2
    names = world.LABEL_SETS["object_count"]["classnames"]
    assert names[0] == "one object" and names[2] == "three objects"


def _cell_phrase(o):
    return "in the center" if o.cell_name == "center" else f"on the {o.cell_name}"


def test_captions_at_position_rate_one_state_every_shape_and_cell():
    for scene, rng in scenes(300, seed=5):
        text = world.caption(rng, scene, position_rate=1.0)
        for o in scene:
            assert any(n in text for n in (o.shape, *world.SHAPE_SYNONYMS[o.shape])), (text, o)
            assert _cell_phrase(o) in text, (text, o)
    cells = [_cell_phrase(o) in world.caption(rng, scene, position_rate=0.0)
             for scene, rng in scenes(200, seed=6) for o in scene if o.cell_name != "center"]
    assert not any(cells), "position_rate 0 still states cells"


def test_hard_negative_differs_only_in_one_shape_or_one_cell():
    kinds = Counter()
    for scene, rng in scenes(400, seed=7):
        neg = world.hard_negative(rng, scene)
        assert len(neg) == len(scene)
        assert [(o.color, o.size) for o in neg] == [(o.color, o.size) for o in scene], "colours or sizes changed"
        changed = [(a, b) for a, b in zip(scene, neg) if a != b]
        assert len(changed) == 1, (scene, neg)
        a, b = changed[0]
        if a.shape != b.shape:
            assert (a.row, a.col) == (b.row, b.col)
            kinds["shape"] += 1
        else:
            assert (b.row, b.col) not in {(o.row, o.col) for o in scene}, "moved onto another object"
            kinds["position"] += 1
    assert kinds["shape"] > 100 and kinds["position"] > 100, kinds


def _negative_kinds(shape_rate, n=400, seed=7):
    kinds = Counter()
    for scene, rng in scenes(n, seed=seed):
        neg = world.hard_negative(rng, scene, shape_rate)
        (a, b), = [(a, b) for a, b in zip(scene, neg) if a != b]
        assert [(o.color, o.size) for o in neg] == [(o.color, o.size) for o in scene]
        kinds["shape" if a.shape != b.shape else "position"] += 1
        if a.shape != b.shape:
            assert (a.row, a.col) == (b.row, b.col), "a shape negative also moved"
    return kinds


@pytest.mark.parametrize("rate, low, high", [(1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (0.8, 0.72, 0.88)])
def test_hard_negative_shape_rate_sets_the_share_of_shape_changes(rate, low, high):
    """shape_rate 1: every negative differs only in a shape (what a caption must tell apart by
    shape); 0: every negative moves an object (no scene here fills the grid); between: that share."""
    kinds = _negative_kinds(rate)
    assert low <= kinds["shape"] / 400 <= high, kinds


def _hard_negative_before_the_rate(rng, scene):
    """world.hard_negative as it was before `shape_rate` (commit aee1b96), for the test below."""
    k = int(rng.integers(len(scene)))
    o = scene[k]
    empty = sorted(set(range(9)) - {x.row * 3 + x.col for x in scene})
    if empty and rng.random() < 0.5:
        cell = empty[int(rng.integers(len(empty)))]
        new = Obj(o.shape, o.color, o.size, cell // 3, cell % 3)
    else:
        new = Obj(world._pick(rng, [s for s in world.SHAPES if s != o.shape]), o.color, o.size, o.row, o.col)
    return [new if i == k else x for i, x in enumerate(scene)]


def test_hard_negative_default_rate_keeps_the_original_stream():
    """The default rate (0.5) draws exactly what the code before the rate drew: recorded data and
    golden digests stay valid."""
    for (scene, rng), (_, rng2) in zip(scenes(300, seed=3), scenes(300, seed=3)):
        assert world.hard_negative(rng, scene) == _hard_negative_before_the_rate(rng2, scene)
        assert rng.random() == rng2.random(), "the streams diverged after the negative"


def test_position_questions_refer_by_colour_at_the_given_rate():
    by_colour, total = 0, 0
    for scene, rng in scenes(600, seed=8):
        for q in world.questions(rng, scene, k=7, color_ref_rate=0.5):
            assert check_answer(scene, q) == q.answer, q
            if q.question_type == "position":
                total += 1
                by_colour += q.question.endswith(" object?")
    assert 0.3 < by_colour / total < 0.6, (by_colour, total)
    legacy = [q.question for scene, rng in scenes(300, seed=8) for q in world.questions(rng, scene, k=7)
              if q.question_type == "position"]
    assert not any(t.endswith(" object?") for t in legacy)
