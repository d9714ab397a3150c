"""`clipdistill vqa run`: the identical two-stage LLaVA recipe for one encoder, then evaluation.

Stage 1 — projector alignment: captions of the VQA training images, LM and tower frozen.
Stage 2 — instruction tuning: the LLaVA conversation JSON (short-answer suffix), projector
and LM trained, tower frozen, loss on the answer tokens only. A new optimizer per stage;
the projector is trained from its seeded init for every encoder, never reused.
The blind baseline runs the same recipe on a constant grey image.

The tower is frozen, so its layer −2 features are computed once per image and handed to
`LlavaForConditionalGeneration` through `mm_encoder_outputs` (the projector still runs, with
gradients, every step): the same forward as `pixel_values=`, without recomputing the tower.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

import torch
from transformers import CLIPImageProcessor
from transformers.modeling_outputs import BaseModelOutputWithPooling

from clipdistill.data.formats import read_llava, read_pairs_csv
from clipdistill.data.splits import Split
from clipdistill.distill import parallel
from clipdistill.io import progress
from clipdistill.params import LoRAParams, VQAParams, VQAStageParams
from clipdistill.teachers.train import warmup_cosine
from clipdistill.vqa.model import build_vlm, collate, encode_conversation, num_image_tokens


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
    """Stage 1 (one caption per image, empty prompt) and stage 2 (each LLaVA conversation)."""
    pairs, _ = read_pairs_csv(split_dir / "pairs.csv", check_images=False)
    index = {p.image: i for i, p in enumerate(pairs)}
    captions = [(i, [("", p.caption)]) for i, p in enumerate(pairs)]
    convs, _ = read_llava(split_dir / "llava.json", split_dir, check_images=False)
    qa = [(index[c["image"]], [(h["value"].replace("<image>", " ").strip(), g["value"])
                               for h, g in zip(c["conversations"][::2], c["conversations"][1::2])])
          for c in convs]
    return captions, qa


def corpus(*example_lists) -> list[str]:
    return ["user : assistant :"] + [f"{p} {a}" for ex in example_lists for _, turns in ex for p, a in turns]


@torch.no_grad()
def tower_features(vlm, pixels: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """The frozen tower's selected features (layer and CLS handling from the VLM config), N×P×D."""
    cfg, tower = vlm.config, vlm.model.vision_tower.eval()
    out = []
    for s in range(0, len(pixels), batch_size):
        hidden = tower(pixels[s:s + batch_size], output_hidden_states=True).hidden_states[cfg.vision_feature_layer]
        out.append(hidden[:, 1:] if cfg.vision_feature_select_strategy == "default" else hidden)
    return torch.cat(out)


def feature_standardizer(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) per feature dimension over every token of every training image; the std is
    floored so a constant dimension (the blind baseline's grey image) stays finite."""
    flat = features.reshape(-1, features.shape[-1]).double()
    return flat.mean(0).float(), flat.std(0).clamp_min(1e-4).float()


@torch.no_grad()
def fold_standardizer(vlm, mean: torch.Tensor, std: torch.Tensor) -> None:
    """Make the projector's first layer take raw tower features: W (x − μ)/σ + b = (W/σ) x + (b − W μ/σ).
    Exact, so the saved VLM is a plain LlavaForConditionalGeneration."""
    lin = vlm.model.multi_modal_projector.linear_1
    w = lin.weight.double() / std.double()
    lin.bias.copy_((lin.bias.double() - w @ mean.double()).float())
    lin.weight.copy_(w.float())


def image_inputs(vlm, features: torch.Tensor) -> dict:
    """`mm_encoder_outputs` for precomputed tower features: the projector runs here, with gradients."""
    projected = vlm.model.multi_modal_projector(features)
    return {"image": BaseModelOutputWithPooling(pooler_output=list(projected))}


def batch_loss(forward, tokenizer, chunk: list[Example], n_image: int, images=None) -> torch.Tensor:
    """This rank's loss on a global batch: its contiguous share of `chunk`. `images(indices)`
    gives the `mm_encoder_outputs` of those images; None trains on the text alone. Under
    torchrun the loss is this rank's sum over answer tokens divided by the global token
    count, so the ranks' gradients add up to the single-process gradient."""
    rank, world = parallel.rank_and_world()
    mine = [chunk[i] for i in parallel.shard(torch.arange(len(chunk)), rank, world).tolist()]
    ids, attn, labels = collate([encode_conversation(tokenizer, n_image, turns, image=images is not None)
                                 for _, turns in mine], tokenizer.pad_token_id, left=False)
    extra = {}
    if world > 1:  # the causal-LM loss predicts labels[:, 1:]
        extra["num_items_in_batch"] = parallel.sum_over_ranks((labels[:, 1:] != -100).sum())
    if images is not None:
        extra["mm_encoder_outputs"] = images([i for i, _ in mine])
    return forward(input_ids=ids, attention_mask=attn, labels=labels, **extra).loss


def run_stage(model, examples: list[Example], spec: VQAStageParams, seed: int, name: str,
              trainable: list[torch.nn.Parameter], loss_of, show_progress: bool = True) -> list[dict]:
    """One training stage: AdamW on `trainable`, warmup + cosine, `loss_of(chunk)` per batch."""
    if spec.max_samples:
        examples = examples[: spec.max_samples]
    rank, world = parallel.rank_and_world()
    rng = random.Random(seed)
    steps_per_epoch = max(1, len(examples) // spec.batch_size)
    total = spec.epochs * steps_per_epoch
    opt = torch.optim.AdamW(trainable, lr=spec.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, total, max(1, total // 20)))
    model.train()
    log = []
    bar = progress(total=total, desc=name, unit="step", disable=rank != 0 or not show_progress)
    for epoch in range(spec.epochs):
        order = list(range(len(examples)))
        rng.shuffle(order)
        for b in range(steps_per_epoch):
            loss = loss_of([examples[k] for k in order[b * spec.batch_size:(b + 1) * spec.batch_size]])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if world > 1:
                parallel.average_gradients(trainable, world, average=False)
                loss = parallel.sum_over_ranks(loss)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{name}: loss is {loss.item()} at step {len(log)}")
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            opt.step()
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


def train_vlm(vision: Path | tuple, split_dir: Path, images: Split, spec: VQAParams, blind: bool = False,
              language: tuple | None = None):
    """Both stages for one encoder; returns (vlm, tokenizer, processor, log). `vision` is an
    exported HF directory or an in-memory (CLIPVisionModel, CLIPImageProcessor) pair;
    `language` the shared (LM, tokenizer) from `clipdistill vqa lm`, else prepared here."""
    captions, qa = stage_examples(split_dir)
    if language is None:
        from clipdistill.vqa.language import prepare_language

        language = prepare_language(spec, split_dir)[:2]
    lm_model, tokenizer = language
    if isinstance(vision, tuple):
        tower, processor = vision
    else:
        tower, processor = vision, CLIPImageProcessor.from_pretrained(vision)
    vlm = build_vlm(tower, tokenizer, lm_model, spec)
    features = tower_features(vlm, pixel_values(images.images, processor, blind))
    if spec.standardize_features:  # trained on standardised features, folded into the projector at the end
        mean, std = feature_standardizer(features)
        features = (features - mean) / std
    n_image = num_image_tokens(vlm)
    projector = list(vlm.model.multi_modal_projector.parameters())
    lm = list(vlm.model.language_model.parameters()) + list(vlm.lm_head.parameters())

    def loss_of(forward):
        return lambda chunk: batch_loss(forward, tokenizer, chunk, n_image, lambda idx: image_inputs(vlm, features[idx]))

    for p in lm:
        p.requires_grad_(False)
    log = run_stage(vlm, captions, spec.stage1, spec.seed, "vqa stage 1", projector, loss_of(vlm))
    if spec.lora is None:
        for p in lm:
            p.requires_grad_(True)
        log += run_stage(vlm, qa, spec.stage2, spec.seed + 1, "vqa stage 2", projector + lm, loss_of(vlm))
        if spec.standardize_features:
            fold_standardizer(vlm, mean, std)
        return vlm, tokenizer, processor, log
    peft_vlm = with_lora(vlm, spec.lora)
    adapters = [p for n, p in peft_vlm.named_parameters() if "lora_" in n]
    for p in projector:
        p.requires_grad_(True)
    log += run_stage(peft_vlm, qa, spec.stage2, spec.seed + 1, "vqa stage 2 (LoRA)", projector + adapters,
                     loss_of(peft_vlm))
    vlm = peft_vlm.merge_and_unload()
    if spec.standardize_features:
        fold_standardizer(vlm, mean, std)
    return vlm, tokenizer, processor, log
