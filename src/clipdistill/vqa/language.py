"""`clipdistill vqa lm`: the language model every VLM of the study starts from.

LLaVA starts from an instruction-tuned LM (Vicuna), never from random weights. Here the LM
is the seeded tiny Llama with a word-level tokenizer trained on the corpus, or any local HF
causal LM with its own tokenizer (the `<image>` token added). With `vqa.lm_pretrain` it is
then instruction-tuned on *text* reading comprehension: each image's caption (a scene
description) stands where the image will stand, followed by that image's VQA conversation
(loss on the answers), and the caption is also repeated back as a description. The LM thus
learns to read answers out of its context — what a pretrained LLM brings to LLaVA — and stage 1
only has to make the image tokens readable. Without the description in context, the LM only
learns answer priors, and a VLM on perfect per-object features still could not read colour
or shape from its image tokens. Built once and shared: every encoder gets the identical LM.

The vocabulary (tiny Llama) comes from the training split's text alone — its captions and
conversations, whatever the split is called — never from an evaluation set: words only an
evaluation question or answer uses map to `<unk>`, so no set's answers leak into the model
through its vocabulary, and adding an evaluation set changes no VLM.

Directory: the LM (`save_pretrained`), its tokenizer, `train_log.csv`, `manifest.json`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from clipdistill.io import ClipdistillError, atomic_dir, check_tracked_by_dvc, safetensors_header, write_manifest
from clipdistill.params import VQAParams
from clipdistill.training.loop import log_csv
from clipdistill.training.runtime import CPU, Runtime
from clipdistill.vqa.model import IMAGE_TOKEN, train_tokenizer
from clipdistill.vqa.recipe import batch_loss, corpus, run_stage, stage_examples


class LanguageModelError(ClipdistillError):
    """The language model or its tokenizer cannot be loaded."""


def tiny_llama(spec: VQAParams, tokenizer) -> LlamaForCausalLM:
    """The seeded tiny Llama: identical initial weights for a given config and seed."""
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=spec.lm.hidden_size,
                      intermediate_size=spec.lm.intermediate_size, num_hidden_layers=spec.lm.layers,
                      num_attention_heads=spec.lm.heads, num_key_value_heads=spec.lm.heads,
                      max_position_embeddings=spec.lm.max_length, pad_token_id=tokenizer.pad_token_id,
                      bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                      tie_word_embeddings=False)
    torch.manual_seed(spec.lm.seed)
    return LlamaForCausalLM(cfg)


def load_language_dir(path: str | Path):
    """(LM, tokenizer) from a local HF directory; the tokenizer gains `<image>` (and a pad
    token) when it lacks them, and the LM's embeddings grow to match."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise LanguageModelError(f"language model {path}: no config.json (expected a Hugging Face model directory)")
    for weights in sorted(path.glob("*.safetensors")):
        safetensors_header(weights)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        lm = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as e:
        raise LanguageModelError(f"language model {path}: {str(e).splitlines()[0]}") from None
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if lm.get_input_embeddings().num_embeddings < len(tokenizer):
        lm.resize_token_embeddings(len(tokenizer))
    if lm.config.pad_token_id is None:
        lm.config.pad_token_id = tokenizer.pad_token_id
    tokenizer.padding_side = "left"
    return lm, tokenizer


def reading_examples(captions: list, qa: list) -> list:
    """Text-only examples with the scene description where the image goes: the description
    then each VQA conversation, and the description repeated back (stage 1's task in words)."""
    if not captions:  # a split without captions: the conversations alone
        return qa
    text = {i: turns[0][1] for i, turns in captions}
    # an image without a caption (an imported LLaVA split describes only some) keeps its bare question
    with_context = [(i, [(f"{text[i]} . {turns[0][0]}" if i in text else turns[0][0], turns[0][1]), *turns[1:]])
                    for i, turns in qa]
    return with_context + [(i, [(text[i], text[i])]) for i, _ in captions]


def prepare_language(spec: VQAParams, split_dir: Path, show_progress: bool = True, runtime: Runtime = CPU):
    """(LM on the CPU, tokenizer, log): the configured LM, instruction-tuned on the split's text
    (on `runtime`'s device) when `spec.lm_pretrain` is set."""
    if spec.lm.path:  # before any data is read: an untracked LM fails at once
        check_tracked_by_dvc([spec.lm.path], "vqa.lm.path")
    captions, qa = stage_examples(split_dir)
    if spec.lm.path:
        lm, tokenizer = load_language_dir(spec.lm.path)
    else:
        tokenizer = train_tokenizer(corpus(captions, qa))
        lm = tiny_llama(spec, tokenizer)
    log = []
    if spec.lm_pretrain is not None:
        examples = reading_examples(captions, qa)
        runtime.module(lm)
        log = run_stage(lm, examples, spec.lm_pretrain, spec.lm.seed, "language model", list(lm.parameters()),
                        lambda chunk: batch_loss(lm, tokenizer, chunk, 0, None, runtime), show_progress, runtime)
    return lm.cpu().eval(), tokenizer, log


def save_language(out: str | Path, lm, tokenizer, log: list[dict], spec: VQAParams) -> dict:
    """Write the LM directory atomically; returns its manifest."""
    with atomic_dir(out) as tmp:
        lm.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "train_log.csv").write_bytes(log_csv(log))
        own = {"lm": spec.lm.model_dump(mode="json"),
               "lm_pretrain": spec.lm_pretrain.model_dump(mode="json") if spec.lm_pretrain else None}
        return write_manifest(tmp, "vqa-language-model", own,
                              {"parameters": sum(p.numel() for p in lm.parameters()), "vocab": len(tokenizer),
                               "final_loss": log[-1]["loss"] if log else None})


def run(spec: VQAParams, train: Path, out: Path, runtime: Runtime = CPU) -> dict:
    """`clipdistill vqa lm`: prepare the shared LM from the training split `train` and save it."""
    lm, tokenizer, log = prepare_language(spec, train, runtime=runtime)
    return save_language(out, lm, tokenizer, log, spec)
