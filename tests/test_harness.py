"""Standard harnesses cross-checked against clipdistill's own evaluation: a saved VLM driven by
AutoProcessor / pipeline("image-text-to-text") / lmms-eval gives our answers and our VQAv2
accuracy; mteb on local tasks gives `eval clip`'s zero-shot top-1 and R@1."""

import json
import shutil
import subprocess
import sys

import pytest
import torch
from PIL import Image

from clipdistill.data.formats import read_vqa
from clipdistill.data.splits import load_split
from clipdistill.export.hf import save_vlm_processor, to_hf
from clipdistill.models import ClipBundle, create_model
from clipdistill.models.clip import preprocess_cfg
from clipdistill.params import SplitParams, VQAParams
from clipdistill.vqa.evaluate import evaluate_vqa, prompt_of
from clipdistill.vqa.language import tiny_llama
from clipdistill.vqa.metrics import vqa_accuracy
from clipdistill.vqa.model import build_vlm, encode_conversation, encode_example, load_vlm, train_tokenizer
from clipdistill.vqa.recipe import corpus, pixel_values, stage_examples
from conftest import SMOKE, run_cli, synth_world

SPEC = VQAParams.model_validate({"lm": {"hidden_size": 32, "intermediate_size": 64, "layers": 1, "heads": 2},
                                 "eval_batch_size": 32, "max_new_tokens": 4})


@pytest.fixture(scope="module")
def vqa_world(smoke_params, tmp_path_factory):
    """64 px scenes (the tower's own size, as in the study): 8 eval images, 24 questions."""
    params = smoke_params.model_copy(update={"image_size": 64, "splits": {
        "vqa_train": SplitParams(size=40), "vqa_eval": SplitParams(size=8)}})
    return synth_world(params, tmp_path_factory.mktemp("harness_world"))


@pytest.fixture(scope="module")
def vlm_dir(vqa_world, tmp_path_factory):
    """A seeded, untrained VLM saved as `vqa run` saves it. Untrained on purpose: its greedy
    answers are arbitrary word strings that depend on image and question, so equal answers mean
    equal token ids and pixels, not a shared answer prior. At the default init scale nearly every
    answer is the same string; ×10 on the LM's matrices and the projector: 8 distinct in 24
    (a briefly trained one answers "yes" to everything)."""
    tower = create_model("cd-student-xs", 3)
    vision, image_processor = to_hf(ClipBundle(tower, None, "cd-student-xs", preprocess_cfg(tower), {}, {}))
    tok = train_tokenizer(corpus(*stage_examples(vqa_world / "vqa_train")))
    vlm = build_vlm(vision, tok, tiny_llama(SPEC, tok), SPEC)
    with torch.no_grad():
        for p in [*vlm.model.language_model.parameters(), *vlm.model.multi_modal_projector.parameters()]:
            p.mul_(10 if p.dim() == 2 or p in set(vlm.model.multi_modal_projector.parameters()) else 1)
    out = tmp_path_factory.mktemp("vlm") / "run" / "model"
    vlm.save_pretrained(out)
    tok.save_pretrained(out)
    image_processor.save_pretrained(out)
    save_vlm_processor(out, tok, image_processor, vlm.config)
    return out


@pytest.fixture(scope="module")
def trained_vlm_dir(smoke_params, tmp_path_factory):
    """A briefly trained VLM (random tower, reading LM, both stages): its answers lean on priors
    but score a non-zero VQAv2 accuracy with partial (0.3/0.6/0.9) credits to agree on."""
    from clipdistill.vqa.language import prepare_language
    from clipdistill.vqa.train import train_vlm

    params = smoke_params.model_copy(update={"image_size": 64, "splits": {
        "vqa_train": SplitParams(size=160), "vqa_eval": SplitParams(size=10)}})
    world = synth_world(params, tmp_path_factory.mktemp("trained_world"))
    spec = SPEC.model_copy(update={"lm_pretrain": VQAParams.model_validate(
        {"lm_pretrain": {"epochs": 3, "batch_size": 32, "lr": 3e-3}}).lm_pretrain,
        "stage1": SPEC.stage1.model_copy(update={"epochs": 1, "batch_size": 32, "lr": 2e-3}),
        "stage2": SPEC.stage2.model_copy(update={"epochs": 4, "batch_size": 32, "lr": 3e-3})})
    tower = create_model("cd-student-xs", 0)
    language = prepare_language(spec, world / "vqa_train", show_progress=False)[:2]
    vlm, tok, image_processor, _ = train_vlm(to_hf(ClipBundle(tower, None, "cd-student-xs", preprocess_cfg(tower),
                                                                {}, {})),
                                             world / "vqa_train", load_split(world / "vqa_train"), spec, False, language)
    out = world / "vlm" / "model"
    vlm.save_pretrained(out)
    tok.save_pretrained(out)
    image_processor.save_pretrained(out)
    save_vlm_processor(out, tok, image_processor, vlm.config)
    return world, out


def eval_records(world):
    records, _ = read_vqa(world / "vqa_eval" / "questions.json", world / "vqa_eval" / "annotations.json",
                          world / "vqa_eval", check_images=False)
    return records


def own_answers(vlm_dir, world):
    from transformers import CLIPImageProcessor

    vlm, tok = load_vlm(vlm_dir)
    records = eval_records(world)
    pixels = pixel_values(load_split(world / "vqa_eval").images, CLIPImageProcessor.from_pretrained(vlm_dir), False)
    rows, metrics, _ = evaluate_vqa(vlm, tok, records, dict(enumerate(pixels)), SPEC.eval_batch_size,
                                    SPEC.max_new_tokens, "own")
    return records, [r["text"] for r in rows], metrics


def messages(record, image=None):
    img = {"type": "image"} if image is None else {"type": "image", "image": image}
    return [{"role": "user", "content": [img, {"type": "text", "text": prompt_of(record)}]}]


def test_processor_builds_our_token_ids_and_pixels(vlm_dir, vqa_world):
    """AutoProcessor + chat template give exactly the ids and pixels clipdistill trains and evaluates with."""
    from transformers import AutoProcessor, CLIPImageProcessor, LlavaProcessor

    proc = AutoProcessor.from_pretrained(vlm_dir)
    assert isinstance(proc, LlavaProcessor)
    records = eval_records(vqa_world)
    assert len(records) >= 20
    ours = pixel_values(load_split(vqa_world / "vqa_eval").images, CLIPImageProcessor.from_pretrained(vlm_dir), False)
    n_img = proc.num_image_tokens if hasattr(proc, "num_image_tokens") else None
    for r in records:
        text = proc.apply_chat_template(messages(r), add_generation_prompt=True)
        inputs = proc(images=Image.open(r.image).convert("RGB"), text=text, return_tensors="pt")
        ids, _ = encode_example(proc.tokenizer, 64, prompt_of(r), None)
        assert inputs["input_ids"][0].tolist() == ids, text
        assert (inputs["pixel_values"][0] - ours[r.image_id]).abs().max() < 1e-5
    del n_img
    # multi-turn: answers close with </s> and the next turn follows, as in training
    turns = [("What colour is it?", "Red"), ("How many?", "2")]
    conv = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": turns[0][0]}]},
            {"role": "assistant", "content": [{"type": "text", "text": turns[0][1]}]},
            {"role": "user", "content": [{"type": "text", "text": turns[1][0]}]},
            {"role": "assistant", "content": [{"type": "text", "text": turns[1][1]}]}]
    text = proc.apply_chat_template(conv)
    ids = proc(images=Image.open(records[0].image).convert("RGB"), text=text)["input_ids"][0]
    assert list(ids) == encode_conversation(proc.tokenizer, 64, turns)[0]


@pytest.mark.slow
def test_autoprocessor_and_pipeline_answer_as_our_evaluation(vlm_dir, vqa_world):
    from transformers import AutoProcessor, LlavaForConditionalGeneration, pipeline

    records, ours, _ = own_answers(vlm_dir, vqa_world)
    assert len(set(ours)) >= 5, f"answers too uniform to tell pipelines apart: {ours}"
    proc = AutoProcessor.from_pretrained(vlm_dir)
    model = LlavaForConditionalGeneration.from_pretrained(vlm_dir).eval()
    auto = []
    for r in records:
        inputs = proc.apply_chat_template(messages(r, str(r.image)), add_generation_prompt=True, tokenize=True,
                                          return_dict=True, return_tensors="pt")
        gen = model.generate(**inputs, max_new_tokens=SPEC.max_new_tokens, do_sample=False)
        auto.append(proc.decode(gen[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip())
    assert auto == ours
    pipe = pipeline("image-text-to-text", model=str(vlm_dir))
    piped = [pipe(text=messages(r, str(r.image)), max_new_tokens=SPEC.max_new_tokens, return_full_text=False,
                  generate_kwargs={"do_sample": False})[0]["generated_text"].strip() for r in records]
    assert piped == ours


def test_export_hf_vlm_upgrades_an_old_directory_in_place(vlm_dir, tmp_path):
    from transformers import AutoProcessor, LlavaProcessor

    old = tmp_path / "old"
    shutil.copytree(vlm_dir.parent, old)  # the `vqa run` folder (model/ inside)
    for name in ("processor_config.json", "chat_template.jinja"):
        (old / "model" / name).unlink(missing_ok=True)
    proc = run_cli("eval", "lmms", "--model", old, "--out", tmp_path / "lmms", "--data", tmp_path, "--params", SMOKE)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "export hf --vlm" in proc.stderr
    run_cli("export", "hf", "--vlm", old, check=True)
    assert isinstance(AutoProcessor.from_pretrained(old / "model"), LlavaProcessor)
    (old / "model" / "tokenizer.json").unlink()
    (old / "model" / "processor_config.json").unlink()
    broken = run_cli("export", "hf", "--vlm", old)
    assert broken.returncode == 2 and len(broken.stderr.strip().splitlines()) == 1, broken.stderr


@pytest.mark.parametrize("module, command", [("lmms_eval", "lmms"), ("mteb", "mieb")])
def test_missing_harness_names_the_extra(module, command, tmp_path, vlm_dir):
    model, data = (vlm_dir, tmp_path) if command == "lmms" else (tmp_path, tmp_path)  # refused before any reading
    code = (f"import sys; sys.modules[{module!r}] = None; sys.argv = ['clipdistill', 'eval', {command!r}, "
            f"'--model', {str(model)!r}, '--out', {str(tmp_path / 'out')!r}, '--data', {str(data)!r}, "
            f"'--params', {str(SMOKE)!r}]; from clipdistill.cli import main; main()")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "pip install -e '.[harness]'" in proc.stderr


def test_lmms_eval_vqav2_scoring_equals_ours(vqa_world, smoke_data):
    """lmms-eval's own VQAv2 scoring function against our soft accuracy, per question, on every
    annotator answer and on spellings the normalisation must fold (case, punctuation, articles,
    number words)."""
    pytest.importorskip("lmms_eval", reason="lmms-eval not installed: pip install -e '.[harness]'")
    from lmms_eval.tasks.vqav2.utils import vqav2_process_results_val

    n, partial = 0, 0
    for world in (vqa_world, smoke_data):
        for r in eval_records(world):
            candidates = set(r.answers) | {a.upper() + "!" for a in r.answers} | {f"the {a}." for a in r.answers}
            candidates |= {"two", "Yes.", "no", "none", "a red cross", "top-left"}
            for pred in sorted(candidates):
                doc = {"question_id": r.question_id,
                       "answers": [{"answer": a, "answer_id": k + 1} for k, a in enumerate(r.answers)]}
                theirs = vqav2_process_results_val(doc, [pred])["exact_match"]
                assert vqa_accuracy(pred, list(r.answers)) == pytest.approx(theirs, abs=1e-12), (pred, r.answers)
                n += 1
                partial += 0 < theirs < 1
    assert n > 500 and partial > 20  # the leave-one-out fractions are exercised, not only 0 and 1


@pytest.mark.slow
def test_lmms_eval_accuracy_equals_our_vqav2_accuracy(trained_vlm_dir, tmp_path):
    pytest.importorskip("lmms_eval", reason="lmms-eval not installed: pip install -e '.[harness]'")
    vqa_world, vlm_dir = trained_vlm_dir
    records, ours, metrics = own_answers(vlm_dir, vqa_world)
    assert metrics["overall"] > 5, metrics["overall"]  # not a trivial 0 = 0
    proc = run_cli("eval", "lmms", "--model", vlm_dir.parent, "--out", tmp_path / "lmms",
                   "--data", vqa_world / "vqa_eval", "--params", SMOKE, check=True, timeout=600)
    theirs = json.loads((tmp_path / "lmms" / "results.json").read_text())
    assert theirs["count"] == len(records)
    assert [a["text"].strip() for a in theirs["answers"]] == ours
    assert abs(theirs["accuracy"] - metrics["overall"]) < 0.1, (theirs["accuracy"], metrics["overall"])
    print(f"lmms-eval {theirs['accuracy']:.4f} vs own {metrics['overall']:.4f} on {len(records)} questions")
    assert "VQAv2 accuracy" in proc.stderr


@pytest.mark.slow
def test_mteb_scores_equal_eval_clip(teacher_dir, world, tmp_path):
    pytest.importorskip("mteb", reason="mteb not installed: pip install -e '.[harness]'")
    run_cli("eval", "clip", "--model", teacher_dir, "--out", tmp_path / "clip.json", "--data", world,
            "--params", SMOKE, check=True)
    run_cli("eval", "mieb", "--model", teacher_dir, "--out", tmp_path / "mieb.json", "--data", world,
            "--params", SMOKE, check=True, timeout=600)
    ours = json.loads((tmp_path / "clip.json").read_text())
    theirs = json.loads((tmp_path / "mieb.json").read_text())
    assert set(theirs["zeroshot"]) == set(ours["zeroshot"]) and len(ours["zeroshot"]) == 3
    for name, v in ours["zeroshot"].items():
        assert theirs["zeroshot"][name]["top1"] == pytest.approx(v["top1"], abs=1e-6), name
    for direction in ("image_to_text", "text_to_image"):
        assert theirs["retrieval"][direction]["R@1"] == pytest.approx(ours["retrieval"][direction]["R@1"], abs=1e-6)
        assert theirs["retrieval"][direction]["R@5"] == pytest.approx(ours["retrieval"][direction]["R@5"], abs=1e-6)
    print("eval clip", ours["zeroshot"], ours["retrieval"], "\nmteb", theirs["zeroshot"], theirs["retrieval"])
    assert ours["summary"]["zeroshot_mean_top1"] > 0.2  # a trained teacher: the check is not at chance
