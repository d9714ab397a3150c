"""The shared LLaVA recipe: examples, pixels, tower features, the loss of a batch, one
training stage. Used by the language model (`vqa/language.py`), the VLM training
(`vqa/train.py`) and the diagnostics; it imports none of them.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

import torch
from transformers import CLIPImageProcessor
from transformers.modeling_outputs import BaseModelOutputWithPooling

from clipdistill.data.formats import read_llava, read_pairs_csv
from clipdistill.io import progress
from clipdistill.params import LoRAParams, VQAStageParams
from clipdistill.training import parallel
from clipdistill.training.loop import warmup_cosine
from clipdistill.training.runtime import CPU, Runtime
from clipdistill.vqa.model import collate, encode_conversation


def pixel_values(images_u8: torch.Tensor, processor: CLIPImageProcessor, blind: bool) -> torch.Tensor:
    """uint8 NCHW → the processor's normalised input (square images: resize + normalise)."""
    if blind:
        images_u8 = torch.full_like(images_u8, 128)
    x = images_u8.float() / 255.0
    size = processor.crop_size["height"]
    if x.shape[-1] != size:
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bicubic", antialias=True).clamp(0, 1)
    mean = torch.tensor(processor.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(processor.image_std).view(1, 3, 1, 1)
    return (x - mean) / std


Example = tuple[int, list[tuple[str, str]]]  # (image index, [(prompt, answer), ...])


def stage_examples(split_dir: Path) -> tuple[list[Example], list[Example]]:
    """Stage 1 (one caption per image, empty prompt) and stage 2 (each LLaVA conversation). A
    split imported from LLaVA JSON: `llava_examples`. One imported from another VQA format has
    no captions ([]) and no LLaVA JSON: each image's questions, with their canonical answers,
    make its conversation."""
    if not (split_dir / "pairs.csv").is_file():
        if (split_dir / "llava.json").is_file():
            return llava_examples(split_dir)
        return [], vqa_conversations(split_dir)
    pairs, _ = read_pairs_csv(split_dir / "pairs.csv", check_images=False)
    index = {p.image: i for i, p in enumerate(pairs)}
    captions = [(i, [("", p.caption)]) for i, p in enumerate(pairs)]
    convs, _ = read_llava(split_dir / "llava.json", split_dir, check_images=False)
    qa = [(index[c["image"]], [(h["value"].replace("<image>", " ").strip(), g["value"])
                               for h, g in zip(c["conversations"][::2], c["conversations"][1::2])])
          for c in convs]
    return captions, qa


def llava_examples(split_dir: Path) -> tuple[list[Example], list[Example]]:
    """A split imported from LLaVA JSON: each conversation verbatim for stage 2 (row: its image's
    row, `splits.vqa_images` order) and, where split.json says `captions: single_turn`, each
    one-exchange conversation's answer as its image's stage-1 caption."""
    from clipdistill.data.formats import llava_exchanges
    from clipdistill.data.splits import layout, read_split_vqa, vqa_images

    where = layout(split_dir)
    row = {p: i for i, p in enumerate(vqa_images(read_split_vqa(split_dir)))}
    convs, _ = read_llava(split_dir / "llava.json", where["image_root"], check_images=False)
    qa = [(row[c["image"]], llava_exchanges(c)) for c in convs]
    if where.get("captions") != "single_turn":
        return [], qa
    return [(i, [("", turns[0][1])]) for i, turns in qa if len(turns) == 1], qa


def vqa_conversations(split_dir: Path) -> list[Example]:
    """One conversation per image of a VQA-only split (its row: `splits.vqa_images` order), a
    turn per question with the short-answer prompt the evaluation uses."""
    from clipdistill.data.splits import read_split_vqa, vqa_images
    from clipdistill.data.synth import SHORT_ANSWER

    records = read_split_vqa(split_dir)
    row = {p: i for i, p in enumerate(vqa_images(records))}
    turns: dict[int, list[tuple[str, str]]] = {}
    for r in records:
        turns.setdefault(row[Path(r.image).resolve()], []).append((f"{r.question}\n{SHORT_ANSWER}", r.answer))
    return list(turns.items())


def corpus(*example_lists) -> list[str]:
    return ["user : assistant :"] + [f"{p} {a}" for ex in example_lists for _, turns in ex for p, a in turns]


@torch.no_grad()
def tower_features(vlm, pixels: torch.Tensor, batch_size: int = 256, runtime: Runtime = CPU) -> torch.Tensor:
    """The frozen tower's selected features (layer and CLS handling from the VLM config), N×P×D,
    fp32 on the VLM's device (`runtime`'s)."""
    cfg, tower = vlm.config, vlm.model.vision_tower.eval()
    out = []
    for s in range(0, len(pixels), batch_size):
        with runtime.autocast():
            hidden = tower(runtime.batch(pixels[s:s + batch_size]),
                           output_hidden_states=True).hidden_states[cfg.vision_feature_layer]
        out.append((hidden[:, 1:] if cfg.vision_feature_select_strategy == "default" else hidden).float())
    return torch.cat(out)


def split_features(vlm, images, processor: CLIPImageProcessor, blind: bool, runtime: Runtime = CPU,
                   batch_size: int = 256) -> torch.Tensor:
    """`tower_features` of a split's uint8 images: from RAM as one tensor, or, for a split read
    lazily (`runtime.in_memory_max_mb`), decoded `batch_size` rows at a time by
    `runtime.loader_workers` — the tower's own batches, never every image's pixels at once."""
    if isinstance(images, torch.Tensor):
        return tower_features(vlm, pixel_values(images, processor, blind), batch_size, runtime)
    from clipdistill.data.splits import batches

    rows = [slice(s, s + batch_size) for s in range(0, len(images), batch_size)]
    return torch.cat([tower_features(vlm, pixel_values(b, processor, blind), batch_size, runtime)
                      for b in batches(images, rows, runtime.loader_workers, runtime.is_cuda)])


class RecordPixels:
    """Each evaluation record's pixel values, computed on demand from a lazily read split:
    `[s:e]` decodes just those records' images (what `answer` asks for, batch by batch)."""

    def __init__(self, images, rows: list[int], processor: CLIPImageProcessor, blind: bool):
        self.images, self.rows, self.processor, self.blind = images, rows, processor, blind

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, s: slice) -> torch.Tensor:
        wanted = self.rows[s]
        unique = list(dict.fromkeys(wanted))
        pixels = pixel_values(self.images[unique], self.processor, self.blind)
        at = {row: k for k, row in enumerate(unique)}
        return pixels[[at[r] for r in wanted]]


def record_pixels(split, records, processor: CLIPImageProcessor, blind: bool):
    """What `evaluate_vqa` reads the records' images from: {image_id: pixels} for a split in RAM,
    a `RecordPixels` (aligned with `records`) for one read lazily."""
    rows = split.rows(records)  # by image path: ids are the source's own (COCO's, ...)
    if not isinstance(split.images, torch.Tensor):
        return RecordPixels(split.images, rows, processor, blind)
    pixels = pixel_values(split.images, processor, blind)
    return {r.image_id: pixels[k] for r, k in zip(records, rows)}


def image_inputs(vlm, features: torch.Tensor) -> dict:
    """`mm_encoder_outputs` for precomputed tower features: the projector runs here, with gradients."""
    projected = vlm.model.multi_modal_projector(features)
    return {"image": BaseModelOutputWithPooling(pooler_output=list(projected))}


def batch_loss(forward, tokenizer, chunk: list[Example], n_image: int, images=None,
               runtime: Runtime = CPU) -> torch.Tensor:
    """This rank's loss on a global batch: its contiguous share of `chunk`. `images(indices)`
    gives the `mm_encoder_outputs` of those images; None trains on the text alone. Under
    torchrun the loss is this rank's sum over answer tokens divided by the global token
    count, so the ranks' gradients add up to the single-process gradient."""
    rank, world = parallel.rank_and_world()
    mine = [chunk[i] for i in parallel.shard(torch.arange(len(chunk)), rank, world).tolist()]
    ids, attn, labels = runtime.batch(collate([encode_conversation(tokenizer, n_image, turns, image=images is not None)
                                               for _, turns in mine], tokenizer.pad_token_id, left=False))
    extra = {}
    if world > 1:  # the causal-LM loss predicts labels[:, 1:]
        extra["num_items_in_batch"] = parallel.sum_over_ranks((labels[:, 1:] != -100).sum())
    if images is not None:
        extra["mm_encoder_outputs"] = images([i for i, _ in mine])
    return forward(input_ids=ids, attention_mask=attn, labels=labels, **extra).loss


def run_stage(model, examples: list[Example], spec: VQAStageParams, seed: int, name: str,
              trainable: list[torch.nn.Parameter], loss_of, show_progress: bool = True,
              runtime: Runtime = CPU) -> list[dict]:
    """One training stage: AdamW on `trainable`, warmup + cosine, `loss_of(chunk)` per batch
    (its forward autocast to `runtime`'s precision; the model is already on its device)."""
    if spec.max_samples:
        examples = examples[: spec.max_samples]
    rank, world = parallel.rank_and_world()
    rng = random.Random(seed)
    steps_per_epoch = max(1, len(examples) // spec.batch_size)
    total = spec.epochs * steps_per_epoch
    opt = torch.optim.AdamW(trainable, lr=spec.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, total, max(1, total // 20)))
    scaler = runtime.grad_scaler()
    model.train()
    log = []
    bar = progress(total=total, desc=name, unit="step", disable=rank != 0 or not show_progress)
    for epoch in range(spec.epochs):
        order = list(range(len(examples)))
        rng.shuffle(order)
        for b in range(steps_per_epoch):
            with runtime.autocast():
                loss = loss_of([examples[k] for k in order[b * spec.batch_size:(b + 1) * spec.batch_size]])
            loss = loss.float()
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if world > 1:
                parallel.average_gradients(trainable, world, average=False)
                loss = parallel.sum_over_ranks(loss)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{name}: loss is {loss.item()} at step {len(log)}")
            scaler.unscale_(opt)  # clip the true gradients (no-op unless fp16)
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            scaler.step(opt)
            scaler.update()
            sched.step()
            log.append({"stage": name, "step": len(log), "loss": round(loss.item(), 6)})
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    bar.close()
    model.eval()
    return log


def with_lora(vlm, spec: LoRAParams):
    """peft adapters on the LM's linear layers only (never the tower or the projector)."""
    from peft import LoraConfig, get_peft_model

    pattern = rf".*language_model.*\.({'|'.join(map(re.escape, spec.targets))})$"
    return get_peft_model(vlm, LoraConfig(r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout,
                                          target_modules=pattern, bias="none"))
