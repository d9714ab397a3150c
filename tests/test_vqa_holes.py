"""VQA checks the other VQA tests left open: answers are scored against the image their
question names when image ids are not row indices, and LoRA adapts every projection it
targets in every layer (not only the two the stage-two test looks at)."""

import pytest
import torch

from clipdistill.data.formats import VQARecord
from clipdistill.params import VQAParams
from clipdistill.vqa import evaluate as E

COLOURS = ["red", "green", "blue", "yellow"]


def test_answers_follow_image_ids_that_are_not_row_indices(monkeypatch):
    """A stub VLM answers the colour coded in the pixels it is given; ids are sparse, mixed
    int/str and the records are not in id order, so any row-index shortcut answers wrongly."""
    ids = [1041, "COCO_7", 3, 88]
    pixels = {i: torch.full((3, 2, 2), float(k)) for k, i in enumerate(ids)}  # image k shows COLOURS[k]
    asked = [88, 3, "COCO_7", 1041, 88, 3]
    records = [VQARecord(q, i, f"img{i}.png", "what colour is it?", COLOURS[ids.index(i)],
                         (COLOURS[ids.index(i)],) * 10, "what colour", "other") for q, i in enumerate(asked)]

    def stub_answer(vlm, tokenizer, prompts, pix, batch_size, max_new_tokens, runtime):
        assert len(prompts) == len(pix) == len(records)
        return [COLOURS[int(p[0, 0, 0])] for p in pix]

    monkeypatch.setattr(E, "answer", stub_answer)
    rows, metrics, per_type = E.evaluate_vqa(None, None, records, pixels, 4, 4, model_id="stub")
    assert [r["text"] for r in rows] == ["yellow", "blue", "green", "red", "yellow", "blue"]
    assert [r["question_id"] for r in rows] == list(range(6))
    assert metrics["overall"] == 100.0 and metrics["count"] == 6
    assert per_type.splitlines()[1:] == ["question_type,what colour,100.0", "answer_type,other,100.0"]
    with pytest.raises(KeyError):  # an id with no image is an error, not some other row's image
        E.evaluate_vqa(None, None, [*records, VQARecord(9, 2, "x.png", "q", "red", ("red",), "t", "other")],
                       pixels, 4, 4, model_id="stub")


@pytest.mark.slow  # trains both VQA stages (small, ~20 s): CI runs it
def test_lora_adapts_every_target_projection_in_every_layer(smoke_data, tmp_path):
    """After stage two with LoRA the merged LM differs from the seeded one by a non-zero update
    of rank ≤ r on every targeted projection of every layer, and nowhere else."""
    from clipdistill.data.splits import load_split
    from clipdistill.export.hf import export_hf
    from clipdistill.models import load_model_dir
    from clipdistill.models.clip import create_model, default_tokenizer_spec, save_model_dir
    from clipdistill.vqa.language import tiny_llama
    from clipdistill.vqa.model import build_vlm
    from clipdistill.vqa.train import train_vlm

    save_model_dir(tmp_path / "tower", create_model("cd-teacher-s", 0), "cd-teacher-s",
                   default_tokenizer_spec("cd-teacher-s"), {"source": "test"})
    export_hf(load_model_dir(tmp_path / "tower"), tmp_path / "vision")
    spec = VQAParams.model_validate({
        "lm": {"hidden_size": 32, "intermediate_size": 64, "layers": 2, "heads": 2},
        "lm_pretrain": None,  # the seeded LM as built, so the frozen weights can be compared with it
        "stage1": {"epochs": 1, "batch_size": 8, "lr": 2e-3, "max_samples": 8},
        "stage2": {"epochs": 1, "batch_size": 8, "lr": 2e-3, "max_samples": 16},
        "lora": {"r": 2, "alpha": 4}})
    targets = spec.lora.targets
    assert len(targets) == 7  # q, k, v, o, gate, up, down
    vlm, tok, _, _ = train_vlm(tmp_path / "vision", smoke_data / "vqa_train", load_split(smoke_data / "vqa_train"),
                               spec)
    fresh = build_vlm(tmp_path / "vision", tok, tiny_llama(spec, tok), spec)
    after, before = vlm.model.language_model.state_dict(), fresh.model.language_model.state_dict()
    assert after.keys() == before.keys()
    adapted = set()
    for name in after:
        module = name.rsplit(".", 2)[-2]
        if module in targets and name.endswith(".weight"):
            rank = torch.linalg.matrix_rank((after[name] - before[name]).double(), atol=1e-7)
            assert 0 < rank <= spec.lora.r, (name, rank)
            adapted.add(name)
        else:
            assert torch.equal(after[name], before[name]), name  # norms, embeddings, untargeted: frozen
    assert len(adapted) == len(targets) * spec.lm.layers


def _yes_no(pairs):
    return [{"prediction": p, "answer": a, "answers": [a] * 10, "question_type": "exists", "answer_type": "yes/no"}
            for p, a in pairs]


def test_yes_no_statistics_on_hand_worked_cases():
    from clipdistill.vqa.metrics import summarize

    # 1 of 1 predicted yes is right, 2 true yes: precision 1, recall 1/2, F1 = 2·½/1.5 = 2/3
    s = summarize(_yes_no([("yes", "yes"), ("no", "yes"), ("no", "no")]))["yes_no"]
    assert s == pytest.approx({"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "yes_ratio": 1 / 3})
    # precision 1/3, recall 1/2 (P + R < 1): F1 = 2·(1/6)/(5/6) = 0.4
    s = summarize(_yes_no([("yes", "yes"), ("yes", "no"), ("yes", "no"), ("no", "yes")]))["yes_no"]
    assert s == pytest.approx({"precision": 1 / 3, "recall": 0.5, "f1": 0.4, "yes_ratio": 0.75})
    # the only true yes is found: recall 1, precision 1/2, F1 2/3
    s = summarize(_yes_no([("yes", "yes"), ("yes", "no")]))["yes_no"]
    assert s == pytest.approx({"precision": 0.5, "recall": 1.0, "f1": 2 / 3, "yes_ratio": 1.0})
    # never "yes", never right: all zero, no division by zero
    s = summarize(_yes_no([("no", "yes")]))["yes_no"]
    assert s == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "yes_ratio": 0.0}
    assert "yes_no" not in summarize([{**_yes_no([("red", "red")])[0], "answer_type": "other"}])
    with pytest.raises(ValueError, match="^no records to summarise$"):
        summarize([])


def test_punctuation_follows_the_official_whole_string_rule():
    """The official script removes a mark everywhere once it touches a space anywhere in the
    answer (else it becomes a space); newlines and tabs count as spaces for that test."""
    from clipdistill.vqa.metrics import normalize_answer, vqa_accuracy

    assert normalize_answer("black/white") == "black white"
    assert normalize_answer("black/white /grey") == "blackwhite grey"  # " /" somewhere
    assert normalize_answer("black/white/ grey") == "blackwhite grey"  # "/ " somewhere
    assert normalize_answer("red\n/blue/green") == normalize_answer("red\t/blue/green") == "red bluegreen"
    with pytest.raises(ValueError, match="^vqa_accuracy needs at least one annotator answer$"):
        vqa_accuracy("yes", [])
