"""Greedy, batched VQA evaluation with left padding, scored with VQAv2 soft accuracy."""

from __future__ import annotations

import csv
import io
import json

import torch

from clipdistill.data.formats import VQARecord
from clipdistill.io import progress
from clipdistill.training.runtime import CPU, Runtime
from clipdistill.vqa.metrics import summarize
from clipdistill.vqa.model import collate, encode_example, num_image_tokens


@torch.no_grad()
def answer(vlm, tokenizer, prompts: list[str], pixels: torch.Tensor, batch_size: int,
           max_new_tokens: int, runtime: Runtime = CPU) -> list[str]:
    """Greedy answers, `batch_size` prompts at a time (left padding + attention mask); the VLM
    is on `runtime`'s device."""
    vlm.eval()
    n_img = num_image_tokens(vlm)
    out = []
    for s in progress(range(0, len(prompts), batch_size), desc="vqa answers", unit="batch"):
        ids, attn, _ = runtime.batch(collate([encode_example(tokenizer, n_img, p, None)
                                              for p in prompts[s:s + batch_size]], tokenizer.pad_token_id, left=True))
        with runtime.autocast():
            gen = vlm.generate(input_ids=ids, attention_mask=attn, pixel_values=runtime.batch(pixels[s:s + batch_size]),
                               max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                               eos_token_id=tokenizer.eos_token_id)
        new_tokens = runtime.host(gen[:, ids.shape[1]:])
        out += [t.strip() for t in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
    return out


def prompt_of(record: VQARecord) -> str:
    from clipdistill.data.synth import SHORT_ANSWER

    return f"{record.question} {SHORT_ANSWER}"


def evaluate_vqa(vlm, tokenizer, records: list[VQARecord], pixels_by_image: dict, batch_size: int,
                 max_new_tokens: int, model_id: str, runtime: Runtime = CPU) -> tuple[list[dict], dict, str]:
    """(answer-file rows, metrics, per-type CSV text)."""
    prompts = [prompt_of(r) for r in records]
    pixels = (torch.stack([pixels_by_image[r.image_id] for r in records]) if isinstance(pixels_by_image, dict)
              else pixels_by_image)  # a lazy sequence aligned with `records` (recipe.RecordPixels)
    texts = answer(vlm, tokenizer, prompts, pixels, batch_size, max_new_tokens, runtime)
    rows = [{"question_id": r.question_id, "prompt": p, "text": t, "model_id": model_id}
            for r, p, t in zip(records, prompts, texts)]
    metrics = summarize([{"prediction": t, "answers": list(r.answers), "answer": r.answer,
                          "question_type": r.question_type, "answer_type": r.answer_type}
                         for r, t in zip(records, texts)])
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["kind", "type", "accuracy"])
    for kind in ("per_question_type", "per_answer_type"):
        for t, acc in metrics[kind].items():
            w.writerow([kind.removeprefix("per_"), t, round(acc, 4)])
    return rows, metrics, buf.getvalue()


def jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
