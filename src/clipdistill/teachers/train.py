"""`clipdistill teacher train|import`: teachers trained here from scratch, or external weights.

Pipeline teachers are open_clip CLIP models (configs cd-teacher-s|m|l) trained with the
symmetric InfoNCE loss on the synthetic world's pretraining split; capacity and budget set
their strength. External teachers are any open_clip model with local or cached weights.
Both end as the same model directory (see models/clip.py).
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import torch

from clipdistill.data.splits import Split, batches
from clipdistill.io import DataError, progress
from clipdistill.losses import contrastive_loss
from clipdistill.losses.dispatch import auto_backend
from clipdistill.losses.region import batch_regions, cell_means, region_phrase_loss
from clipdistill.models import create_model, preprocess_images, save_model_dir
from clipdistill.models.clip import open_external, preprocess_cfg, word_tokenizer_for
from clipdistill.params import TeacherParams
from clipdistill.training.loop import log_csv, param_groups, warmup_cosine
from clipdistill.training.runtime import CPU, Runtime

MAX_LOGIT_SCALE = math.log(100.0)


def group_order(n: int, group: int, gen: torch.Generator) -> torch.Tensor:
    """A random order of 0..n-1 that keeps each run of `group` consecutive samples (a scene and
    its hard negatives) together, aligned to multiples of `group`; a short last group goes last."""
    full = n // group
    starts = (torch.randperm(full, generator=gen) * group).tolist()
    return torch.cat([torch.arange(s, s + group) for s in starts] + [torch.arange(full * group, n)])


def encode_with_regions(model, pixels, text, scenes: list, tokenizer, layer: int, phrase: str = "object",
                        logit_scale: float | None = None):
    """(normalised image and text embeddings, the region–phrase term) of one batch: the image
    embedding and block `layer`'s tokens come from one forward pass of the vision tower. The term's
    logit scale is `logit_scale`, or the model's learned one when None."""
    visual = model.visual
    index = len(visual.transformer.resblocks) + layer if layer < 0 else layer
    out = visual.forward_intermediates(pixels, indices=[index], output_fmt="NLC")
    img = torch.nn.functional.normalize(out["image_features"], dim=-1)
    image, cell, phrases, target = batch_regions(scenes, phrase)
    pooled = cell_means(out["image_intermediates"][0])[image.to(pixels.device), cell.to(pixels.device)]
    regions = visual.ln_post(pooled) @ visual.proj
    phrase_emb = model.encode_text(tokenizer(phrases).to(pixels.device))
    scale = model.logit_scale.exp() if logit_scale is None else logit_scale
    local = region_phrase_loss(regions.float(), phrase_emb.float(), target.to(pixels.device), scale)
    return img, model.encode_text(text, normalize=True), local


def train_teacher(spec: TeacherParams, split: Split, *, show_progress: bool = True, runtime: Runtime = CPU,
                  group: int = 1, scenes: list | None = None):
    """Train a CLIP teacher from scratch on `runtime`'s device; returns (model on the CPU,
    tokenizer, log rows). `group` > 1: the split's hard-negative groups (`hard_negatives`)
    share a batch (batches a multiple of it). `scenes` (the split's `scenes.json`): each
    sample's objects, needed by the region–phrase term (`spec.local_weight` > 0)."""
    if spec.local_weight > 0 and scenes is None:
        raise DataError(f"teacher {spec.arch}: local_weight needs each pretrain image's objects (scenes.json); "
                        f"the split {split.source or '(unnamed)'} has none")
    if spec.local_weight > 0 and len(scenes) != len(split.captions):
        raise DataError(f"teacher {spec.arch}: {len(scenes)} scenes for the {len(split.captions)} pretrain pairs")
    model = runtime.towers(create_model(spec.arch, spec.seed), train=True)
    tokenizer = word_tokenizer_for(spec.arch)
    keep = len(split.captions) if spec.samples is None else spec.samples
    if keep > len(split.captions):
        raise DataError(f"teacher {spec.arch}: samples {keep} > the {len(split.captions)} samples of the pretrain split")
    cfg = preprocess_cfg(model)
    lazy = not isinstance(split.images, torch.Tensor)  # above runtime.in_memory_max_mb: decoded per batch
    if not lazy:  # the first `keep` pairs (lazily: the schedule only draws rows below `keep`)
        images, tokens = preprocess_images(split.images[:keep], cfg), tokenizer(split.captions[:keep])
    n = keep
    batch = min(spec.batch_size, n)
    if group > 1:
        batch = max(group, batch - batch % group)
    steps_per_epoch = n // batch
    total = spec.epochs * steps_per_epoch
    opt = torch.optim.AdamW(param_groups(model, spec.weight_decay), lr=spec.lr, betas=(0.9, 0.98), eps=1e-6)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: warmup_cosine(s, total, max(1, int(spec.warmup_frac * total))))
    scaler = runtime.grad_scaler()
    gen = torch.Generator().manual_seed(spec.seed)
    log, step = [], 0
    model.train()
    bar = progress(total=total, desc=f"teacher {spec.arch}", unit="step", disable=not show_progress)

    def schedule():  # (epoch, rows) of every step: the same draws from `gen` either way
        for epoch in range(spec.epochs):
            order = torch.randperm(n, generator=gen) if group == 1 else group_order(n, group, gen)
            for b in range(steps_per_epoch):
                yield epoch, order[b * batch:(b + 1) * batch]

    steps = schedule()
    if lazy:  # workers decode ahead along a copy of the schedule
        steps, ahead = itertools.tee(steps)
        decoded = batches(split.images, (idx for _, idx in ahead), runtime.loader_workers, runtime.is_cuda)
    for epoch, idx in steps:
        if lazy:
            pixels = preprocess_images(next(decoded), cfg)
            text = tokenizer([split.captions[i] for i in idx.tolist()])
        else:
            pixels, text = images[idx], tokens[idx]
        local = None
        with runtime.autocast():
            if spec.local_weight > 0:
                img, txt, local = encode_with_regions(model, runtime.batch(pixels), runtime.batch(text),
                                                      [scenes[i] for i in idx.tolist()], tokenizer,
                                                      spec.local_layer, spec.local_phrase, spec.local_logit_scale)
            else:
                img = model.encode_image(runtime.batch(pixels), normalize=True)
                txt = model.encode_text(runtime.batch(text), normalize=True)
        with auto_backend(runtime.loss_backend):
            loss = contrastive_loss(img.float(), txt.float(), model.logit_scale.exp())
        if local is not None:
            clip_part, loss = loss.item(), loss + spec.local_weight * local
        if not torch.isfinite(loss):
            raise FloatingPointError(f"teacher {spec.arch}: loss is {loss.item()} at step {step}")
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)  # clip the true gradients (no-op unless fp16)
        torch.nn.utils.clip_grad_norm_(model.parameters(), spec.grad_clip)
        scaler.step(opt)
        scaler.update()
        sched.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
        log.append({"step": step, "epoch": epoch, "loss": round(loss.item(), 6),
                    "lr": opt.param_groups[0]["lr"], "logit_scale": round(model.logit_scale.exp().item(), 4)})
        if local is not None:  # the log of a run without the term keeps its old columns
            log[-1] |= {"clip_loss": round(clip_part, 6), "local_loss": round(local.item(), 6)}
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
        bar.update()
        step += 1
    bar.close()
    return model.cpu().eval(), tokenizer, log


def save_pipeline_teacher(out: str | Path, name: str, spec: TeacherParams, split: Split,
                          model, tokenizer, log: list[dict]) -> dict:
    provenance = {"source": "pipeline", "teacher": name, "spec": spec.model_dump(mode="json"),
                  "data": {"split": split.source, "content_sha256": split.content_sha256},
                  "final_loss": log[-1]["loss"] if log else None}
    return save_model_dir(out, model, spec.arch, tokenizer.to_json(), provenance,
                          extra_files={"train_log.csv": log_csv(log)})


def import_external(out: str | Path, name: str, spec: TeacherParams, cache_dir: str | None = None) -> dict:
    """Copy an external open_clip model into a model directory (weights resolved offline, the
    config saved beside them: an hf-hub or local-dir model reloads without its source)."""
    model, ext = open_external(spec.arch, spec.pretrained, cache_dir)
    provenance = {"source": "external", "teacher": name, "spec": spec.model_dump(mode="json")}
    return save_model_dir(out, model, ext.name, {"kind": "open_clip", "name": ext.name}, provenance,
                          config=ext.config)
