"""VQA diagnostics: the collapse flag, the attribute probes (and when they are not estimable),
the reading efficiency, and the diagnostics written by a real VQA run."""

import math

import pytest
import torch

from clipdistill.data.formats import VQARecord, read_vqa
from clipdistill.io import read_json
from clipdistill.vqa.diagnostics import (answer_health, cell_probe, cell_tokens, diagnose, pooled_probe,
                                         reading_efficiency)


@pytest.fixture(scope="module")
def eval_records(smoke_data):
    d = smoke_data / "vqa_eval"
    return read_vqa(d / "questions.json", d / "annotations.json", d, check_images=False)[0]


def health_of(records, predict):
    return answer_health([{"prediction": predict(r), "answer": r.answer, "question_type": r.question_type}
                          for r in records])


def test_collapse_flag_fires_on_a_collapsed_vlm_and_stays_off_on_a_healthy_one(eval_records):
    """The failure seen on an external set: 'no' to (nearly) every question."""
    collapsed = health_of(eval_records, lambda r: "no")
    assert collapsed["collapsed"]
    assert {"color", "shape", "count"} <= set(collapsed["collapsed_types"])
    colour = collapsed["per_question_type"]["color"]
    assert colour["top_answer"] == "no" and colour["top_share"] == 1.0 and colour["truth_share"] == 0.0
    # a healthy VLM: right on every question (its answers follow the ground-truth distribution)
    healthy = health_of(eval_records, lambda r: r.answer)
    assert not healthy["collapsed"] and healthy["collapsed_types"] == []
    for h in healthy["per_question_type"].values():
        assert h["top_share"] == h["truth_share"] and not h["collapsed"]


def test_collapse_needs_both_twice_the_truth_share_and_half_the_outputs():
    def rec(pred, truth, qtype="exists"):
        return {"prediction": pred, "answer": truth, "question_type": qtype}

    # 'no' is 70 % of the truth, the VLM says it 100 %: < 2x truth share -> a prior-heavy but not collapsed VLM
    h = answer_health([rec("no", "no")] * 7 + [rec("no", "yes")] * 3)
    assert not h["collapsed"] and h["per_question_type"]["exists"]["top_share"] == 1.0
    # 40 % of outputs on one answer that is 10 % of the truth: > 2x but not > 50 % -> not collapsed
    h = answer_health([rec("red", c, "color") for c in ["red"] + ["blue"] * 9][:4]
                      + [rec(c, c, "color") for c in ["blue", "green", "pink", "cyan", "gray", "teal"]])
    assert h["per_question_type"]["color"]["top_share"] == pytest.approx(0.4) and not h["collapsed"]
    # 60 % on an answer with 10 % truth share -> collapsed; normalisation applies ("Red." == "red")
    h = answer_health([rec("Red.", "red", "color")] + [rec("red", "blue", "color")] * 5
                      + [rec(c, c, "color") for c in ["blue", "green", "pink", "cyan"]])
    assert h["collapsed"] and h["collapsed_types"] == ["color"]



def test_one_answer_whatever_the_question_is_flagged_where_the_collapse_rule_cannot_fire():
    """A yes/no type that is 63 % 'no', answered 'no' every time: not `collapsed` (100 % < 2 x 63 %),
    but `constant`; a type whose truth is itself one answer is not."""
    def rec(pred, truth, qtype="relation"):
        return {"prediction": pred, "answer": truth, "question_type": qtype}

    always_no = [rec("no", "no")] * 63 + [rec("no", "yes")] * 37
    h = answer_health(always_no + [rec("red", "red", "color")] * 30)
    assert not h["collapsed"] and h["constant_types"] == ["relation"]
    assert not h["per_question_type"]["color"]["constant"]  # its truth is one answer too
    # the thresholds: 95 % of outputs on one answer, ≥ 20 % of the truth on another
    assert answer_health([rec("no", "no")] * 80 + [rec("no", "yes")] * 20)["constant_types"] == ["relation"]
    assert answer_health([rec("no", "no")] * 81 + [rec("no", "yes")] * 19)["constant_types"] == []
    mostly = [rec("no", "no")] * 60 + [rec("no", "yes")] * 34 + [rec("yes", "yes")] * 6
    assert answer_health(mostly)["constant_types"] == []  # 94 % 'no': it does answer some questions
    assert answer_health(mostly[:-2])["constant_types"] == ["relation"]  # 94/98 ≥ 95 %

def _records(labels, qtype="color", answers=None):
    return [VQARecord(k, k, f"{k}.png", "q", a, tuple(answers[k] if answers else [a] * 10), qtype, "other")
            for k, a in enumerate(labels)]


def test_cell_tokens_take_the_patches_whose_centres_lie_in_the_object_cell():
    feats = torch.arange(64, dtype=torch.float32).view(1, 64, 1)  # 8x8 patch grid, value = patch index
    x, objs = cell_tokens(feats, [[{"row": 0, "col": 0}, {"row": 2, "col": 1}]])
    # 8 patches per side over 3 cells: centres (k+0.5)*3/8 -> cells 0,0,0,1,1,2,2,2 by row/column
    top_left = [r * 8 + c for r in (0, 1, 2) for c in (0, 1, 2)]
    bottom_centre = [r * 8 + c for r in (5, 6, 7) for c in (3, 4)]
    assert x[0].item() == pytest.approx(sum(top_left) / len(top_left))
    assert x[1].item() == pytest.approx(sum(bottom_centre) / len(bottom_centre))
    assert len(objs) == 2
    with pytest.raises(ValueError):
        cell_tokens(torch.zeros(1, 10, 4), [[{"row": 0, "col": 0}]])


def test_cell_probe_reads_what_the_tokens_encode_and_nothing_else():
    """Colour written into the object's cell tokens, shape nowhere: the probe reads colour, and
    shape stays at chance."""
    gen = torch.Generator().manual_seed(0)
    colours, shapes = ["red", "green", "blue", "pink"], ["circle", "square", "star", "ring"]

    def world(n):
        scenes, feats = [], torch.randn(n, 64, 16, generator=gen) * 0.5
        side_cell = (torch.arange(8) + 0.5).mul(3 / 8).floor().long()
        for i in range(n):
            r, c = int(torch.randint(3, (1,), generator=gen)), int(torch.randint(3, (1,), generator=gen))
            o = {"row": r, "col": c, "color": colours[i % 4], "shape": shapes[int(torch.randint(4, (1,), generator=gen))],
                 "size": "small"}
            mask = (side_cell.repeat_interleave(8) == r) & (side_cell.repeat(8) == c)
            feats[i, mask, colours.index(o["color"])] += 3.0
            scenes.append([o])
        return feats, scenes

    (ft, st), (fe, se) = world(200), world(100)
    probe = cell_probe(ft, st, fe, se)
    assert probe["color"]["estimable"] and probe["color"]["accuracy"] > 95
    assert probe["shape"]["accuracy"] < 45  # chance 25
    assert probe["size"] == {"estimable": False, "reason": "1 class(es) among 200 training examples"}
    eff = reading_efficiency({"color": 50.0, "size": 80.0}, {"pooled": {}, "cell": probe})
    assert eff["color"]["efficiency"] == pytest.approx(50.0 / probe["color"]["accuracy"])
    assert eff["color"]["probe_kind"] == "cell"
    assert eff["size"]["efficiency"] is None and "1 class" in eff["size"]["reason"]


def test_pooled_probe_scores_with_vqa_soft_accuracy():
    gen = torch.Generator().manual_seed(1)
    labels = ["yes", "no"] * 40
    feats = torch.randn(80, 4, 8, generator=gen)
    feats[:, :, 0] += torch.tensor([4.0 if a == "yes" else -4.0 for a in labels]).view(-1, 1)
    # eval annotators: 2 of 10 say the canonical answer -> the right answer scores 0.6, not 1
    ev = _records(labels[:20], "exists", [[a] * 2 + ["maybe"] * 8 for a in labels[:20]])
    out = pooled_probe(feats, _records(labels, "exists"), feats[:20], ev)
    assert out["exists"]["accuracy"] == pytest.approx(60.0)
    assert out["exists"]["majority_accuracy"] == pytest.approx(30.0)  # 'no' (alphabetical tie) right on half


def test_single_answer_split_and_single_class_type_are_not_estimable():
    """Bad input: every answer the same word, or one question type with a single class; no
    crash, no division by zero, the efficiency is None."""
    feats = torch.randn(10, 4, 8)
    one_word = _records(["yes"] * 10, "exists")
    probe = {"pooled": pooled_probe(feats, one_word, feats, one_word)}
    assert probe["pooled"]["exists"]["estimable"] is False
    eff = reading_efficiency({"exists": 100.0}, probe)
    assert eff["exists"]["efficiency"] is None
    mixed = _records(["red", "blue"] * 5, "color") + _records(["2"] * 10, "count")
    probe = pooled_probe(feats, mixed, feats, [])
    assert probe["color"] == {"estimable": False, "reason": "no eval examples"}
    assert probe["count"]["estimable"] is False
    scenes = [[{"row": 1, "col": 1, "color": "red", "shape": "star", "size": "large"}]] * 10
    cells = cell_probe(torch.randn(10, 64, 8), scenes, torch.randn(10, 64, 8), scenes)
    assert all(not p["estimable"] for p in cells.values())
    answers = [{"prediction": "yes", "answer": "yes", "question_type": "exists"}] * 10
    d = diagnose({"per_question_type": {"exists": 100.0}}, answers, feats, one_word, feats, one_word, scenes, scenes)
    assert d["reading_efficiency"]["exists"]["efficiency"] is None and not d["collapsed"]
    assert all(v is None or isinstance(v, (bool, str, int)) or math.isfinite(v)
               for v in d["reading_efficiency"]["exists"].values())


@pytest.mark.slow
def test_vqa_run_writes_the_diagnostics(teacher_dir, smoke_data, tmp_path):
    """`clipdistill vqa run` on a pipeline teacher: metrics.json carries answer health, both
    probes per type and the reading efficiency; the blind run carries answer health only."""
    import yaml

    from conftest import SMOKE, run_cli

    params = yaml.safe_load(SMOKE.read_text())
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    for enc in (teacher_dir, "blind"):
        m = tmp_path / f"{'blind' if enc == 'blind' else 'teacher'}.json"
        run_cli("vqa", "run", "--encoder", enc, "--out", tmp_path / m.stem, "--metrics", m, "--train", smoke_data / "vqa_train",
                "--eval", smoke_data / "vqa_eval",
                "--params", tmp_path / "params.yaml", check=True, timeout=600)
    teacher, blind = read_json(tmp_path / "teacher.json"), read_json(tmp_path / "blind.json")
    d = teacher["diagnostics"]
    assert set(d) == {"answer_health", "by_objects", "collapsed", "probe", "reading_efficiency"}
    assert set(d["probe"]["cell"]) == {"color", "shape", "size"} and "color" in d["probe"]["pooled"]
    assert d["probe"]["cell"]["color"]["estimable"] and d["probe"]["pooled"]["color"]["estimable"]
    assert set(d["reading_efficiency"]) == set(teacher["per_question_type"])
    assert set(blind["diagnostics"]) == {"answer_health", "by_objects", "collapsed"}
    # every eval question lands on one side, by its image's object count in scenes.json
    scenes = read_json(smoke_data / "vqa_eval" / "scenes.json")
    records = read_vqa(smoke_data / "vqa_eval" / "questions.json", smoke_data / "vqa_eval" / "annotations.json",
                       smoke_data / "vqa_eval", check_images=False)[0]
    for m in (teacher, blind):
        for qtype, sides in m["diagnostics"]["by_objects"].items():
            single = sum(r.question_type == qtype and len(scenes[r.image_id]) == 1 for r in records)
            several = sum(r.question_type == qtype and len(scenes[r.image_id]) > 1 for r in records)
            assert sides["single"].get("count", 0) == single and sides["multi"].get("count", 0) == several


def test_report_row_flattens_the_diagnostics():
    from clipdistill.vqa.diagnostics import report_row

    feats = torch.randn(20, 4, 8)
    recs = _records(["red", "blue"] * 10)
    answers = [{"prediction": "red", "answer": r.answer, "question_type": "color"} for r in recs]
    metrics = {"per_question_type": {"color": 50.0}}
    metrics["diagnostics"] = diagnose(metrics, answers, feats, recs, feats, recs)
    row = report_row(metrics)
    assert row["vqa_collapsed"] is False and row["vqa_collapsed_types"] == ""
    assert row["vqa_efficiency_color"] == pytest.approx(50.0 / row["vqa_probe_color"])
    assert report_row({"overall": 1.0}) == {}
    blind = {"per_question_type": {"color": 50.0}, "diagnostics": diagnose(metrics, [dict(a, prediction="green") for a in answers])}
    assert report_row(blind)["vqa_collapsed"] is True and "vqa_efficiency_color" not in report_row(blind)


def test_by_objects_separates_reading_a_lone_object_from_finding_the_named_one():
    """Known truth: a VLM right on every question about a one-object scene and wrong on every
    question about a scene with several reads the attribute but does not find the referent."""
    from clipdistill.vqa.diagnostics import by_objects

    def rec(qtype, objects, right, annotators=None):
        truth = annotators or ["red"] * 10
        return {"prediction": "red" if right else "blue", "answer": truth[0], "answers": truth,
                "question_type": qtype, "objects": objects}

    records = ([rec("color", 1, True)] * 6 + [rec("color", n, False) for n in (2, 3, 4)]
               + [rec("shape", 3, True)] * 4 + [rec("shape", 0, False)]  # an empty scene: on neither side
               + [rec("exists", 1, True, ["red"] * 2 + ["blue"] * 8)])   # 2 of 10 annotators: VQAv2 gives 0.6
    out = by_objects(records)
    assert out["color"] == {"single": {"accuracy": 100.0, "count": 6}, "multi": {"accuracy": 0.0, "count": 3}}
    assert out["shape"]["multi"] == {"accuracy": 100.0, "count": 4}
    assert out["shape"]["single"] == {"estimable": False, "reason": "no question about a single-object scene"}
    assert out["exists"]["single"]["accuracy"] == pytest.approx(60.0)
    assert out["exists"]["multi"]["estimable"] is False

    probe = {"pooled": {}, "cell": {"color": {"estimable": True, "accuracy": 80.0},
                                    "shape": {"estimable": True, "accuracy": 50.0}}}
    eff = reading_efficiency({"color": 66.7, "shape": 100.0}, probe, out)
    assert eff["color"]["efficiency_single"] == pytest.approx(100.0 / 80.0)
    assert "efficiency_single" not in eff["shape"]  # no one-object question of that type
    # diagnose adds it only when every answer knows its scene, and the report row carries both sides
    from clipdistill.vqa.diagnostics import report_row

    d = diagnose({"per_question_type": {}}, records)
    assert d["by_objects"] == out
    assert "by_objects" not in diagnose({"per_question_type": {}}, records + [dict(records[0], objects=None)])
    row = report_row({"diagnostics": d})
    assert row["vqa_single_color"] == 100.0 and row["vqa_multi_color"] == 0.0 and row["vqa_single_shape"] is None
