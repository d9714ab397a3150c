"""`clipdistill vqa run`: the identical two-stage LLaVA recipe for one encoder, then evaluation.

Stage 1 — projector alignment: captions of the VQA training images, LM and tower frozen (a
split without captions — imported from a VQA format — aligns on its questions and answers).
Stage 2 — instruction tuning: the LLaVA conversation JSON (short-answer suffix), projector
and LM trained, tower frozen, loss on the answer tokens only. A new optimizer per stage;
the projector is trained from its seeded init for every encoder, never reused.
The blind baseline runs the same recipe on a constant grey image.

The tower is frozen, so its layer −2 features are computed once per image and handed to
`LlavaForConditionalGeneration` through `mm_encoder_outputs` (the projector still runs, with
gradients, every step): the same forward as `pixel_values=`, without recomputing the tower.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import CLIPImageProcessor

from clipdistill.data.splits import Split
from clipdistill.params import VQAParams
from clipdistill.training.runtime import CPU, Runtime
from clipdistill.vqa.model import build_vlm, num_image_tokens
from clipdistill.vqa.recipe import batch_loss, image_inputs, run_stage, split_features, stage_examples, with_lora


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


def order_seeds(vlm_seed: int) -> tuple[int, int]:
    """The data-order seeds of stages 1 and 2 for VLM seed v: (2v, 2v + 1) — distinct for every
    v, and v = 0 gives (0, 1), the orders every VLM had before VLM seeds existed (`vqa.seed: 0`).
    With `projector_seed` these are all of a VLM's random choices: VLM seed 0 is byte for byte
    the VLM from before, so its results stay valid."""
    return 2 * vlm_seed, 2 * vlm_seed + 1


def train_vlm(vision: Path | tuple, split_dir: Path, images: Split, spec: VQAParams, blind: bool = False,
              language: tuple | None = None, vlm_seed: int = 0, runtime: Runtime = CPU):
    """Both stages for one encoder and VLM seed; returns (vlm on `runtime`'s device, tokenizer,
    processor, log).
    `vision` is an exported HF directory or an in-memory (CLIPVisionModel, CLIPImageProcessor)
    pair; `language` the shared (LM, tokenizer) from `clipdistill vqa lm`, else prepared here."""
    captions, qa = stage_examples(split_dir)
    if language is None:
        from clipdistill.vqa.language import prepare_language

        language = prepare_language(spec, split_dir, runtime=runtime)[:2]
    lm_model, tokenizer = language
    if isinstance(vision, tuple):
        tower, processor = vision
    else:
        tower, processor = vision, CLIPImageProcessor.from_pretrained(vision)
    vlm = runtime.module(build_vlm(tower, tokenizer, lm_model, spec, vlm_seed))
    stage1_seed, stage2_seed = order_seeds(vlm_seed)
    features = split_features(vlm, images.images, processor, blind, runtime)
    if spec.standardize_features:  # trained on standardised features, folded into the projector at the end
        mean, std = feature_standardizer(features)
        features = (features - mean) / std
    n_image = num_image_tokens(vlm)
    projector = list(vlm.model.multi_modal_projector.parameters())
    lm = list(vlm.model.language_model.parameters()) + list(vlm.lm_head.parameters())

    def loss_of(forward):
        return lambda chunk: batch_loss(forward, tokenizer, chunk, n_image,
                                        lambda idx: image_inputs(vlm, features[idx]), runtime)

    for p in lm:
        p.requires_grad_(False)
    # without captions (a split imported from a VQA format) stage 1 aligns on the conversations
    log = run_stage(vlm, captions or qa, spec.stage1, stage1_seed, "vqa stage 1", projector, loss_of(vlm),
                    runtime=runtime)
    if spec.lora is None:
        for p in lm:
            p.requires_grad_(True)
        log += run_stage(vlm, qa, spec.stage2, stage2_seed, "vqa stage 2", projector + lm, loss_of(vlm),
                         runtime=runtime)
        if spec.standardize_features:
            fold_standardizer(vlm, mean, std)
        return vlm, tokenizer, processor, log
    peft_vlm = with_lora(vlm, spec.lora)
    adapters = [p for n, p in peft_vlm.named_parameters() if "lora_" in n]
    for p in projector:
        p.requires_grad_(True)
    log += run_stage(peft_vlm, qa, spec.stage2, stage2_seed, "vqa stage 2 (LoRA)", projector + adapters,
                     loss_of(peft_vlm), runtime=runtime)
    vlm = peft_vlm.merge_and_unload()
    if spec.standardize_features:
        fold_standardizer(vlm, mean, std)
    return vlm, tokenizer, processor, log
