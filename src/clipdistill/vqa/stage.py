"""`clipdistill vqa run`: one VLM per encoder — the two-stage LLaVA training on the training
split, greedy evaluation on the study's evaluation split (VQAv2 soft accuracy, diagnostics),
the VLM and its answers saved. `encoder="blind"` runs the same recipe on a constant grey image
through an untrained tower whose architecture comes from params (`vqa.blind`). Under `torchrun`
the training is data-parallel; rank 0 evaluates and writes.

`clipdistill vqa score`: a saved VLM on a further evaluation split (`vqa.eval_splits[1:]`): the
same greedy evaluation and scoring, answer health but no probes (they need the training split
and belong to the encoder, not to the set), nothing retrained.
"""

from __future__ import annotations

from pathlib import Path

from clipdistill.data.splits import load_split, read_split_vqa
from clipdistill.export.hf import save_vlm_processor, to_hf
from clipdistill.io import atomic_dir, rounded, write_json
from clipdistill.models import ClipBundle, create_model, load_model_dir
from clipdistill.models.clip import preprocess_cfg
from clipdistill.params import BlindParams, VQAParams
from clipdistill.training.loop import log_csv
from clipdistill.training.parallel import init_from_env
from clipdistill.training.runtime import CPU, Runtime
from clipdistill.vqa.diagnostics import vqa_diagnostics
from clipdistill.vqa.evaluate import evaluate_vqa, jsonl
from clipdistill.vqa.language import load_language_dir
from clipdistill.vqa.recipe import record_pixels
from clipdistill.vqa.train import train_vlm

BLIND = "blind"


def blind_tower(spec: BlindParams) -> ClipBundle:
    """An untrained tower of the configured architecture (its input is always grey)."""
    tower = create_model(spec.arch, spec.seed)
    return ClipBundle(tower, None, spec.arch, preprocess_cfg(tower), {"weights_sha256": None}, {})


def run(spec: VQAParams, *, encoder: str, out: Path, metrics: Path, train: Path, eval: Path, lm: Path | None = None,
        vlm_seed: int | None = None, runtime: Runtime = CPU) -> dict | None:
    """Train, evaluate and save one VLM; returns the metrics summary (None on ranks other than 0).
    `lm` is the shared language model from `vqa lm`; without it the LM is prepared here.
    `vlm_seed` (default: the first of `vqa.seeds`) seeds the VLM's projector and data order.
    Models and batches go to `runtime`'s device; the VLM is saved from the host."""
    vlm_seed = spec.seeds[0] if vlm_seed is None else vlm_seed
    language = load_language_dir(lm) if lm else None  # before any data is read: a bad path fails at once
    rank, _ = init_from_env(runtime.device)
    blind = encoder == BLIND
    bundle = blind_tower(spec.blind) if blind else load_model_dir(encoder)
    train_split = load_split(train, max_mb=runtime.in_memory_max_mb)
    eval_split = load_split(eval, max_mb=runtime.in_memory_max_mb)
    records = read_split_vqa(eval)
    eval_split.rows(records)  # every question's image is one of the split's, checked before training
    # the exported tower in memory (every rank builds its own; HF saves only on rank 0)
    vlm, tokenizer, processor, log = train_vlm(to_hf(bundle), train, train_split, spec, blind, language,
                                       vlm_seed, runtime)
    if rank != 0:
        return None
    pixels_by_image = record_pixels(eval_split, records, processor, blind)
    rows, summary, per_type = evaluate_vqa(vlm, tokenizer, records, pixels_by_image,
                                           spec.eval_batch_size, spec.max_new_tokens, model_id=str(encoder),
                                           runtime=runtime)
    summary["diagnostics"] = vqa_diagnostics(vlm, processor, train, train_split, eval, eval_split, records,
                                             [r["text"] for r in rows], summary, blind, runtime)
    vlm = vlm.cpu()  # saved from the host, fp32 as trained
    with atomic_dir(out) as tmp:
        vlm.save_pretrained(tmp / "model")
        tokenizer.save_pretrained(tmp / "model")
        processor.save_pretrained(tmp / "model")
        save_vlm_processor(tmp / "model", tokenizer, processor, vlm.config)  # AutoProcessor, pipelines, lmms-eval
        (tmp / "answers.jsonl").write_text(jsonl(rows))
        (tmp / "per_type.csv").write_text(per_type)
        (tmp / "train_log.csv").write_bytes(log_csv(log))
    summary["vlm_seed"] = vlm_seed
    write_json(metrics, rounded(summary, 4))
    return summary


def score(spec: VQAParams, *, vlm: Path, eval: Path, out: Path, metrics: Path, blind: bool = False,
          runtime: Runtime = CPU) -> dict:
    """Score a saved VLM (`vqa run`'s folder) on the split `eval`: `out` gets answers.jsonl and
    per_type.csv, `metrics` the summary (with answer health); returns the summary. `blind`: the
    VLM of the blind baseline, shown the grey image it trained on."""
    from transformers import CLIPImageProcessor

    from clipdistill.export.hf import vlm_model_dir
    from clipdistill.vqa.diagnostics import answer_records, diagnose, read_scenes
    from clipdistill.vqa.model import load_vlm

    model_dir = vlm_model_dir(vlm)  # before any data is read: a bad path fails at once
    split, records = load_split(eval, max_mb=runtime.in_memory_max_mb), read_split_vqa(eval)
    model, tokenizer = load_vlm(model_dir)
    processor = CLIPImageProcessor.from_pretrained(model_dir)
    runtime.module(model)
    pixels_by_image = record_pixels(split, records, processor, blind)
    rows, summary, per_type = evaluate_vqa(model, tokenizer, records, pixels_by_image, spec.eval_batch_size,
                                           spec.max_new_tokens, model_id=str(vlm), runtime=runtime)
    answers = answer_records(records, [r["text"] for r in rows], split.rows(records), read_scenes(eval))
    summary["diagnostics"] = diagnose(summary, answers)
    with atomic_dir(out) as tmp:
        (tmp / "answers.jsonl").write_text(jsonl(rows))
        (tmp / "per_type.csv").write_text(per_type)
    write_json(metrics, rounded(summary, 4))
    return summary
