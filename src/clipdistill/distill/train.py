"""`clipdistill distill`: train a small open_clip student with a method (weighted losses).

Read top to bottom: build the student and the method's heads, then for each step take a
batch of images and captions, the teacher's targets (from the feature store, or from the
teacher itself in online mode), the student's embeddings (plus patch tokens or a masked
view when the method asks), the weighted loss, one AdamW step.

Every random choice (data order, views, masks) is derived from (seed, epoch or step), so a
run resumed from a checkpoint continues exactly where it stopped and reaches the same
final weights as an uninterrupted one. Checkpoints are single safetensors files written
atomically (model, heads, optimizer state; step, scheduler and log in the metadata).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from open_clip.transformer import PatchDropout

from clipdistill.data.splits import Split, batches
from clipdistill.features.store import FeatureStore, replay_views, sample_boxes
from clipdistill.io import progress
from clipdistill.losses import LOSSES, make_heads, method_loss, teacher_fields
from clipdistill.losses.dispatch import auto_backend
from clipdistill.models import ClipBundle, create_model, preprocess_images
from clipdistill.models.clip import default_tokenizer_spec, preprocess_cfg, tokenizer_from_spec
from clipdistill.params import FeatureParams, LossOptions, StudentParams, TrainParams
from clipdistill.training import parallel
from clipdistill.training.checkpoint import load_checkpoint, save_checkpoint
from clipdistill.training.loop import param_groups, warmup_cosine
from clipdistill.training.runtime import CPU, Runtime


@dataclass
class Teacher:
    """Where targets come from: a feature store (default), the live teacher, or nothing
    (a teacher-free baseline)."""

    store: FeatureStore | None = None
    bundle: ClipBundle | None = None

    @property
    def present(self) -> bool:
        return self.store is not None or self.bundle is not None

    @property
    def logit_scale(self) -> float:
        if not self.present:
            return 1.0  # unused: no term compares with a teacher
        return self.store.manifest["logit_scale"] if self.store else float(self.bundle.model.logit_scale.detach().exp())

    def targets(self, idx: torch.Tensor, split: Split, needs: set, view: torch.Tensor | None,
                boxes: torch.Tensor | None, runtime: Runtime = CPU) -> dict:
        """The teacher's fields of this batch, fp32 on the device."""
        out = {}
        if not self.present:
            return out
        if self.store is not None:
            if "t_image" in needs:
                key = "view_emb" if view is not None else "image_emb"
                emb = self.store.get(key, idx).float()
                out["t_image"] = emb[torch.arange(len(idx)), view] if view is not None else emb
            if "t_text" in needs:
                out["t_text"] = self.store.get("text_emb", idx).float()
            if "t_patches" in needs:
                out["t_patches"] = self.store.get("patch_tokens", idx).float()
            return runtime.batch(out)
        with torch.no_grad(), runtime.autocast():
            images = split.images[idx] if boxes is None else replay_views(split.images[idx], boxes)
            x = runtime.batch(preprocess_images(images, self.bundle.preprocess))
            layers = len(self.bundle.model.visual.transformer.resblocks)
            feats = self.bundle.model.visual.forward_intermediates(x, indices=[max(0, layers - 2)], output_fmt="NLC")
            out["t_image"] = F.normalize(feats["image_features"].float(), dim=-1)
            out["t_patches"] = feats["image_intermediates"][0].float()
            tokens = runtime.batch(self.bundle.tokenizer([split.captions[i] for i in idx]))
            out["t_text"] = self.bundle.model.encode_text(tokens, normalize=True).float()
        return out


@contextlib.contextmanager
def masked_patches(visual, ratio: float):
    """Really drop `ratio` of the patch tokens (CLS kept) for the forward passes inside."""
    old, was_training = visual.patch_dropout, visual.training
    visual.patch_dropout = PatchDropout(ratio, exclude_first_token=True)
    visual.train()
    try:
        yield
    finally:
        visual.patch_dropout = old
        visual.train(was_training)


def student_batch(student, x: torch.Tensor, tokens: torch.Tensor, needs: set, mask_ratio: float) -> dict:
    batch = {"s_text": student.encode_text(tokens, normalize=True), "s_scale": student.logit_scale.exp()}
    if "s_patches" in needs:
        layers = len(student.visual.transformer.resblocks)
        feats = student.visual.forward_intermediates(x, indices=[max(0, layers - 2)], output_fmt="NLC")
        batch["s_image"], batch["s_patches"] = F.normalize(feats["image_features"], dim=-1), feats["image_intermediates"][0]
    else:
        batch["s_image"] = student.encode_image(x, normalize=True)
    if "s_image_masked" in needs:
        with masked_patches(student.visual, mask_ratio):
            batch["s_image_masked"] = student.encode_image(x, normalize=True)
    return batch


def full_precision(batch: dict) -> dict:
    """The batch's 16-bit fields in fp32: the losses and their heads run outside autocast."""
    return {k: v.float() if isinstance(v, torch.Tensor) and v.is_floating_point() else v for k, v in batch.items()}


def _step_seed(seed: int, step: int) -> int:
    return (seed * 1_000_003 + step) % (2**63)


def batch_rows(n: int, batch: int, seed: int, start: int, total: int, rank: int = 0, world: int = 1):
    """The rows of this rank's batch for each step in [start, total): a permutation per epoch,
    seeded by (seed, epoch), so a resumed run draws the batches an uninterrupted one would."""
    steps_per_epoch, order = n // batch, None
    for step in range(start, total):
        epoch, b = divmod(step, steps_per_epoch)
        if b == 0 or order is None:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(_step_seed(seed, -1 - epoch)))
        yield parallel.shard(order[b * batch:(b + 1) * batch], rank, world)


# ------------------------------------------------------------------ training

def distill(student_spec: StudentParams, method: dict[str, LossOptions], train: TrainParams, seed: int,
            split: Split, teacher: Teacher, checkpoint: Path | None = None, show_progress: bool = True,
            info: dict | None = None, runtime: Runtime = CPU):
    """Train a student on `runtime`'s device; returns (student on the CPU, tokenizer spec, log
    rows). Resumes from `checkpoint`; `info`, when given, receives `resumed_from`: the step the
    checkpoint restored (0 when fresh)."""
    opts = {name: o.options() for name, o in method.items()}
    needs = set().union(*(LOSSES[name].reads for name in opts))
    if not teacher.present and (uses := teacher_fields(opts)):
        raise ValueError(f"method uses teacher targets ({', '.join(uses)}) but no teacher was given")
    student = create_model(student_spec.arch, seed)
    tok_spec = default_tokenizer_spec(student_spec.arch)
    tokenizer = tokenizer_from_spec(tok_spec)
    pre = preprocess_cfg(student)
    # a split held in RAM is preprocessed once; a lazily read one batch by batch (bounded memory)
    images = preprocess_images(split.images, pre) if isinstance(split.images, torch.Tensor) else None
    if teacher.bundle is not None:
        runtime.towers(teacher.bundle.model, train=False)
    store = teacher.store
    s_width = student.visual.transformer.width
    t_width = (store.manifest["patch_tokens"]["shape"][-1] if store and store.manifest["patch_tokens"]
               else teacher.bundle.model.visual.transformer.width if teacher.bundle else None)
    t_dim = (store.manifest["embed_dim"] if store else teacher.bundle.model.text_projection.shape[1]
             if teacher.bundle else student.text_projection.shape[1])
    heads = runtime.module(make_heads(opts, student.text_projection.shape[1], t_dim, s_width, t_width))
    student = runtime.towers(student, train=True)
    if "t_patches" in needs and store is not None and store.manifest["patch_tokens"] is None:
        raise ValueError(f"{store.path}: method needs patch tokens but the store has none (features.patch_tokens)")
    use_views = train.use_views and (store is None or store.manifest["views"] > 0)
    n, batch = len(split.images), min(train.batch_size, len(split.images))
    rank, world = parallel.rank_and_world()
    if batch % world:
        raise ValueError(f"batch size {batch} does not split evenly over {world} data-parallel ranks")
    steps_per_epoch = n // batch
    total = train.epochs * steps_per_epoch
    if train.max_steps is not None:
        total = min(total, train.max_steps)
    params = [*param_groups(student, train.weight_decay), {"params": list(heads.parameters()), "weight_decay": 0.0}]
    opt = torch.optim.AdamW(params, lr=train.lr, betas=(0.9, 0.98), eps=1e-6)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: warmup_cosine(s, total, max(1, int(train.warmup_frac * total))))
    step, log, scaler = 0, [], runtime.grad_scaler()
    if checkpoint is not None and checkpoint.is_file():
        step, log = load_checkpoint(checkpoint, {"student": student, "heads": heads}, opt, sched, scaler)
    if info is not None:
        info["resumed_from"] = step  # the resume test needs it: a fresh restart gives the same bytes
    t_scale = runtime.batch(torch.tensor(teacher.logit_scale))
    student.train()
    bar = progress(total=total, initial=step, desc=f"distill {student_spec.arch}", unit="step",
                   disable=not show_progress or rank != 0)
    rows = batch_rows(n, batch, seed, step, total, rank, world)
    pixels = batches(split.images, batch_rows(n, batch, seed, step, total, rank, world), runtime.loader_workers,
                     runtime.is_cuda)  # uint8 rows, decoded ahead when the split is read lazily
    while step < total:
        epoch = step // steps_per_epoch
        idx, raw = next(rows), next(pixels)
        torch.manual_seed(_step_seed(seed, step))  # masks and view choices of this step
        view = boxes = None
        x = images[idx] if images is not None else preprocess_images(raw, pre)
        if use_views:
            if store is not None:  # replay one of the stored views per sample
                view = torch.randint(0, store.manifest["views"], (len(idx),))
                boxes = store.get("view_boxes", idx)[torch.arange(len(idx)), view]
            else:  # online teacher: fresh crops, seen by both models
                crop = FeatureParams(views=1, seed=_step_seed(seed, step) % 2**32)
                boxes = sample_boxes(len(idx), *split.images.shape[-2:], 1, crop)[:, 0]
            x = preprocess_images(replay_views(raw, boxes), pre)
        tokens = tokenizer([split.captions[i] for i in idx])
        with runtime.autocast():
            s_batch = student_batch(student, runtime.batch(x), runtime.batch(tokens), needs, train.mask_ratio)
        batch_in = {**full_precision(s_batch), **teacher.targets(idx, split, needs, view, boxes, runtime),
                    "t_scale": t_scale}
        if world > 1:
            batch_in = parallel.gather_batch(batch_in, rank)
        try:
            with auto_backend(runtime.loss_backend):
                loss, terms = method_loss(opts, batch_in, heads)
        except FloatingPointError as exc:
            raise FloatingPointError(f"step {step}: {exc}") from None
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if world > 1:
            parallel.average_gradients([p for g in params for p in g["params"]], world)
            loss = parallel.mean_over_ranks(loss)
            terms = {k: parallel.mean_over_ranks(torch.tensor(v, device=loss.device)).item() for k, v in terms.items()}
        scaler.unscale_(opt)  # clip the true gradients (no-op unless fp16)
        torch.nn.utils.clip_grad_norm_([p for g in params for p in g["params"]], train.grad_clip)
        scaler.step(opt)
        scaler.update()
        sched.step()
        with torch.no_grad():
            student.logit_scale.clamp_(0, 4.6052)
        log.append({"step": step, "epoch": epoch, "loss": round(loss.item(), 6),
                    **{name: round(v, 6) for name, v in terms.items()}, "lr": opt.param_groups[0]["lr"]})
        step += 1
        bar.update()
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
        if checkpoint is not None and rank == 0 and (step % train.checkpoint_every == 0 or step == total):
            save_checkpoint(checkpoint, {"student": student, "heads": heads}, opt, sched, step, log, scaler)
    bar.close()
    return student.cpu().eval(), tok_spec, log
