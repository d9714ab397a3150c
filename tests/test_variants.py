"""Held-out world variants: readable by the VQA code, reproducible, and really different from
the default world in what the VQA instrument depends on."""

import json

import pytest

from clipdistill.data import world
from clipdistill.data.formats import read_vqa
from clipdistill.data.splits import load_split
from clipdistill.data.variants import DEV, HELD_OUT, VARIANTS, synth_variant
from clipdistill.io import read_json
from clipdistill.vqa.recipe import stage_examples


@pytest.fixture(scope="module")
def variant_splits(tmp_path_factory):
    root = tmp_path_factory.mktemp("variants")
    return {n: synth_variant(VARIANTS[n], "vqa_eval", 12, root / n) and root / n for n in (*HELD_OUT, DEV)}


def test_at_least_three_held_out_variants_and_a_separate_dev_one():
    assert len(HELD_OUT) >= 3 and DEV not in HELD_OUT and set(HELD_OUT) <= set(VARIANTS)


@pytest.mark.parametrize("name", [*HELD_OUT, DEV])
def test_a_variant_split_reads_like_a_synth_split(variant_splits, name):
    d = variant_splits[name]
    v = VARIANTS[name]
    split = load_split(d)
    assert split.images.shape == (12, 3, v.image_size, v.image_size)
    records, _ = read_vqa(d / "questions.json", d / "annotations.json", d)
    captions, qa = stage_examples(d)
    assert len(captions) == 12 and len(qa) == 12 and sum(len(t) for _, t in qa) == len(records)
    scenes = read_json(d / "scenes.json")
    assert all(v.min_objects <= len(s) <= v.max_objects for s in scenes)
    assert {o["color"] for s in scenes for o in s} <= set(v.colors)
    assert all(len(r.answers) == 10 for r in records)


def test_variants_differ_from_the_default_world_where_the_instrument_depends_on_it(variant_splits):
    def questions(name):
        return {q["question"] for q in read_json(variant_splits[name] / "questions.json")["questions"]}

    one = read_json(variant_splits["single_yesno"] / "questions.json")["questions"]
    assert len(one) >= 9 * 12  # many questions per image ...
    answers = [a["multiple_choice_answer"] for a in read_json(variant_splits["single_yesno"] / "annotations.json")["annotations"]]
    assert answers.count("no") > 0.5 * len(answers)  # ... mostly yes/no, mostly "no"
    assert not set(VARIANTS["palette"].colors) & set(world.COLORS)  # other colour names
    assert VARIANTS["small_scale"].image_size != 64 and VARIANTS["small_scale"].scale < 1
    for name in HELD_OUT:  # phrasings the default world never uses
        assert not any(q.startswith("What color is the") for q in questions(name)), name


def test_variant_splits_are_reproducible(tmp_path):
    a = synth_variant(VARIANTS["palette"], "x", 5, tmp_path / "a")
    b = synth_variant(VARIANTS["palette"], "x", 5, tmp_path / "b")
    assert a["content_sha256"] == b["content_sha256"]
    assert json.loads((tmp_path / "a" / "manifest.json").read_text())["params"]["variant"]["name"] == "palette"
