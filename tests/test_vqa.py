"""The LLaVA-style VLM: batched greedy answers equal one-at-a-time answers, and a VLM on a
pipeline-trained teacher beats the blind baseline where the image is needed."""

import pytest
import torch

from clipdistill.data.formats import read_vqa
from clipdistill.data.splits import load_split
from clipdistill.export.hf import export_hf
from clipdistill.models import load_model_dir
from clipdistill.params import VQAParams
from clipdistill.vqa.evaluate import answer, evaluate_vqa, prompt_of
from clipdistill.vqa.language import prepare_language, tiny_llama
from clipdistill.vqa.recipe import pixel_values
from clipdistill.vqa.train import train_vlm

SPEC = VQAParams.model_validate({"lm": {"hidden_size": 64, "intermediate_size": 128, "layers": 2, "heads": 4},
                                 "lm_pretrain": {"epochs": 10, "batch_size": 32, "lr": 2e-3},
                                 "stage1": {"epochs": 2, "batch_size": 32, "lr": 2e-3},
                                 "stage2": {"epochs": 15, "batch_size": 32, "lr": 2e-3},
                                 "eval_batch_size": 32, "max_new_tokens": 4})


@pytest.fixture(scope="module")
def vlms(one_object_world, tmp_path_factory):
    """A VLM on the one-object world's teacher and a blind one (the world and teacher: conftest's
    background job, tests/helpers/one_object_world.py)."""
    world = one_object_world
    vision = tmp_path_factory.mktemp("hf") / "vision"
    export_hf(load_model_dir(world / "teacher"), vision)
    train = load_split(world / "vqa_train")
    language = prepare_language(SPEC, world / "vqa_train", show_progress=False)[:2]  # shared, as in the study
    out = {}
    for name, blind in (("teacher", False), ("blind", True)):
        vlm, tok, proc, log = train_vlm(vision, world / "vqa_train", train, SPEC, blind=blind, language=language)
        out[name] = (vlm, tok, proc, log)
    return out


def eval_set(world):
    split = load_split(world / "vqa_eval")
    records, _ = read_vqa(world / "vqa_eval" / "questions.json", world / "vqa_eval" / "annotations.json",
                          world / "vqa_eval", check_images=False)
    return split, records


@pytest.mark.slow
def test_batched_answers_equal_batch_size_one(vlms, one_object_world):
    vlm, tok, proc, _ = vlms["teacher"]
    split, records = eval_set(one_object_world)
    records = records[:24]
    pixels = pixel_values(split.images, proc, False)[[r.image_id for r in records]]
    prompts = [prompt_of(r) for r in records]
    batched = answer(vlm, tok, prompts, pixels, batch_size=8, max_new_tokens=4)
    single = answer(vlm, tok, prompts, pixels, batch_size=1, max_new_tokens=4)
    assert batched == single
    lengths = {len(p.split()) for p in prompts}
    assert len(lengths) > 1, "prompts of one length would not exercise the left padding"


@pytest.mark.slow
def test_teacher_vlm_beats_the_blind_baseline(vlms, one_object_world):
    """Colour, shape and position need the image; the blind VLM can only learn answer priors.
    Measured: colour 99.8 vs 14.9, shape 29.4 vs 16.6 (the teacher's own zero-shot shape
    accuracy is 0.30), position 97.9 vs 13.7."""
    split, records = eval_set(one_object_world)
    acc = {}
    for name, (vlm, tok, proc, log) in vlms.items():
        assert log[-1]["loss"] < log[0]["loss"]
        pixels = dict(enumerate(pixel_values(split.images, proc, name == "blind")))
        rows, metrics, per_type = evaluate_vqa(vlm, tok, records, pixels, 32, 4, name)
        assert len(rows) == len(records) and {"question_id", "prompt", "text", "model_id"} == set(rows[0])
        assert per_type.startswith("kind,type,accuracy\n")
        acc[name] = metrics["per_question_type"]
    for kind in ("color", "shape", "position"):
        assert acc["teacher"][kind] > acc["blind"][kind] + 5, (kind, acc["teacher"], acc["blind"])


def test_blind_pixels_carry_no_image_information(world):
    from transformers import CLIPImageProcessor

    proc = CLIPImageProcessor(crop_size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    images = load_split(world / "vqa_eval").images[:4]
    blind = pixel_values(images, proc, True)
    assert torch.equal(blind[0], blind[3]) and not torch.equal(pixel_values(images, proc, False)[0],
                                                               pixel_values(images, proc, False)[3])


def test_cached_tower_features_equal_the_pixel_forward(teacher_dir, world, tmp_path):
    """Training feeds precomputed tower features; the loss and its projector gradient must be
    those of the plain `pixel_values=` forward."""
    from transformers import CLIPImageProcessor

    from clipdistill.vqa.model import build_vlm, collate, encode_conversation, num_image_tokens, train_tokenizer
    from clipdistill.vqa.recipe import corpus, image_inputs, stage_examples, tower_features

    export_hf(load_model_dir(teacher_dir), tmp_path / "vision")
    _, qa = stage_examples(world / "vqa_train")
    tok = train_tokenizer(corpus(qa))
    vlm = build_vlm(tmp_path / "vision", tok, tiny_llama(SPEC, tok), SPEC)
    batch = qa[:5]
    ids, attn, labels = collate([encode_conversation(tok, num_image_tokens(vlm), turns) for _, turns in batch],
                                tok.pad_token_id, left=False)
    pixels = pixel_values(load_split(world / "vqa_train").images[[i for i, _ in batch]],
                          CLIPImageProcessor.from_pretrained(tmp_path / "vision"), False)
    results = []
    for kwargs in ({"pixel_values": pixels}, {"mm_encoder_outputs": image_inputs(vlm, tower_features(vlm, pixels))}):
        vlm.zero_grad()
        loss = vlm(input_ids=ids, attention_mask=attn, labels=labels, **kwargs).loss
        loss.backward()
        results.append((loss.item(), vlm.model.multi_modal_projector.linear_1.weight.grad.clone()))
    assert results[0][0] == pytest.approx(results[1][0], abs=1e-6)
    assert torch.allclose(results[0][1], results[1][1], atol=1e-6)


def test_conversation_labels_cover_only_the_answers():
    from clipdistill.vqa.model import encode_conversation, train_tokenizer

    tok = train_tokenizer(["user : assistant : what colour red how many 2"])
    ids, labels = encode_conversation(tok, 4, [("what colour", "red"), ("how many", "2")])
    image_id = tok.convert_tokens_to_ids("<image>")
    assert ids.count(image_id) == 4 and ids.index(image_id) < ids.index(tok.convert_tokens_to_ids("how"))
    kept = [tok.convert_ids_to_tokens(i) for i, lab in zip(ids, labels) if lab != -100]
    assert kept == ["red", "</s>", "2", "</s>"]
    assert all(lab in (-100, i) for i, lab in zip(ids, labels))


def test_lora_stage_two_changes_the_lm_by_a_low_rank_update_only(teacher_dir, world, tmp_path):
    from transformers import LlavaForConditionalGeneration

    from clipdistill.vqa.model import build_vlm

    export_hf(load_model_dir(teacher_dir), tmp_path / "vision")
    spec = SPEC.model_copy(update={
        "lm_pretrain": None,  # the seeded LM as built, so the frozen weights can be compared with it
        "stage1": SPEC.stage1.model_copy(update={"max_samples": 64}),
        "stage2": SPEC.stage2.model_copy(update={"epochs": 1, "max_samples": 96}),
        "lora": VQAParams.model_validate({"lora": {"r": 2, "alpha": 4}}).lora})
    train = load_split(world / "vqa_train")
    vlm, tok, proc, log = train_vlm(tmp_path / "vision", world / "vqa_train", train, spec)
    assert type(vlm) is LlavaForConditionalGeneration and any("LoRA" in r["stage"] for r in log)
    fresh = build_vlm(tmp_path / "vision", tok, tiny_llama(spec, tok), spec)  # seeded: the LM every encoder starts from
    after, before = vlm.model.language_model.state_dict(), fresh.model.language_model.state_dict()
    assert after.keys() == before.keys()
    for name in after:
        delta = (after[name] - before[name]).double()
        if name.endswith(("q_proj.weight", "down_proj.weight")):
            assert 0 < torch.linalg.matrix_rank(delta, atol=1e-6) <= 2, name
        elif "proj" not in name:
            assert torch.equal(after[name], before[name]), name  # norms, embeddings: frozen
    vlm.save_pretrained(tmp_path / "saved")
    reloaded = LlavaForConditionalGeneration.from_pretrained(tmp_path / "saved")
    assert not any("lora" in k for k in reloaded.state_dict())


def test_standardised_features_fold_into_the_projector_exactly(teacher_dir, world, tmp_path):
    """Training sees (f − μ)/σ; the saved VLM takes raw tower features: after folding, the
    projector of raw features equals the trained projector of standardised ones."""
    from clipdistill.vqa.model import build_vlm, train_tokenizer
    from clipdistill.vqa.recipe import corpus, stage_examples, tower_features
    from clipdistill.vqa.train import feature_standardizer, fold_standardizer
    from transformers import CLIPImageProcessor

    export_hf(load_model_dir(teacher_dir), tmp_path / "vision")
    _, qa = stage_examples(world / "vqa_train")
    tok = train_tokenizer(corpus(qa))
    vlm = build_vlm(tmp_path / "vision", tok, tiny_llama(SPEC, tok), SPEC)
    pixels = pixel_values(load_split(world / "vqa_train").images[:16],
                          CLIPImageProcessor.from_pretrained(tmp_path / "vision"), False)
    feats = tower_features(vlm, pixels)
    mean, std = feature_standardizer(feats)
    z = (feats - mean) / std
    flat = z.reshape(-1, z.shape[-1])
    assert flat.mean(0).abs().max() < 1e-4 and (flat.std(0) - 1).abs().max() < 1e-3
    with torch.no_grad():
        trained = vlm.model.multi_modal_projector(z)
        fold_standardizer(vlm, mean, std)
        folded = vlm.model.multi_modal_projector(feats)
        via_pixels = vlm.model.get_image_features(pixel_values=pixels).pooler_output
    assert torch.allclose(trained, folded, atol=1e-4, rtol=1e-4)
    assert torch.allclose(torch.stack(list(via_pixels)).view_as(folded), folded, atol=1e-4, rtol=1e-4)
    # a constant feature dimension (the blind baseline's grey image) stays finite
    _, std0 = feature_standardizer(torch.ones(2, 3, 4))
    assert torch.isfinite(std0).all() and (std0 > 0).all()


def test_the_vlm_seed_drives_projector_init_and_data_order(smoke_data, monkeypatch):
    """Issue 16: VLM seed v seeds the projector with lm.seed + 1 + v and shuffles stages 1 and 2
    with seeds 2v and 2v + 1. v = 0 keeps what every VLM had before VLM seeds existed (projector
    lm.seed + 1, orders 0 and 1, `vqa.seed: 0`), so seed-0 results stay valid; another v gives
    another VLM; the same v gives the same VLM."""
    from clipdistill.export.hf import to_hf
    from clipdistill.params import load_section
    from clipdistill.vqa import train as train_module
    from clipdistill.vqa.model import projector_seed
    from clipdistill.vqa.stage import blind_tower
    from clipdistill.vqa.train import order_seeds
    from conftest import SMOKE

    spec = load_section(SMOKE, "vqa")
    assert projector_seed(spec, 0) == spec.lm.seed + 1 and order_seeds(0) == (0, 1)
    split = load_split(smoke_data / "vqa_train")
    language = prepare_language(spec, smoke_data / "vqa_train", show_progress=False)[:2]
    orders, real = [], train_module.run_stage
    monkeypatch.setattr(train_module, "run_stage", lambda *a, **k: orders.append(a[3]) or real(*a, **k))
    projectors = []
    for vlm_seed in (0, 1, 1):
        vlm = train_vlm(to_hf(blind_tower(spec.blind)), smoke_data / "vqa_train", split, spec, blind=True,
                        language=language, vlm_seed=vlm_seed)[0]
        projectors.append(torch.cat([p.detach().flatten() for p in vlm.model.multi_modal_projector.parameters()]))
    assert orders == [0, 1, 2, 3, 2, 3]
    assert not torch.equal(projectors[0], projectors[1]) and torch.equal(projectors[1], projectors[2])
