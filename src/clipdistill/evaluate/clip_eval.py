"""`clipdistill eval clip`: zero-shot classification and image↔text retrieval.

Zero-shot: each class's prompt templates are encoded, L2-normalised, averaged and
re-normalised (the CLIP prompt-ensemble protocol); images with label −1 (ambiguous) are
left out. Retrieval: caption i belongs to image i; R@k in both directions.
"""

from __future__ import annotations

import torch

from clipdistill.data.splits import Split, batches
from clipdistill.io import rounded
from clipdistill.models import ClipBundle, preprocess_images
from clipdistill.params import EvalParams
from clipdistill.training.runtime import CPU, Runtime


def _batches(split: Split, batch_size: int, runtime: Runtime):
    """The split's uint8 images `batch_size` rows at a time, in order: sliced from RAM, or decoded
    ahead by `runtime.loader_workers` when the split is read lazily (`runtime.in_memory_max_mb`)."""
    n = len(split.images)
    return batches(split.images, [slice(s, s + batch_size) for s in range(0, n, batch_size)],
                   runtime.loader_workers, runtime.is_cuda)


@torch.no_grad()
def encode(bundle: ClipBundle, split: Split, batch_size: int,
           runtime: Runtime = CPU) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised image and caption embeddings, fp32 on the host (the model on `runtime`'s device)."""
    model = bundle.model.eval()
    img, txt = [], []
    for s, pixels in zip(range(0, len(split.images), batch_size), _batches(split, batch_size, runtime)):
        x = runtime.batch(preprocess_images(pixels, bundle.preprocess))
        tokens = runtime.batch(bundle.tokenizer(split.captions[s:s + batch_size]))
        with runtime.autocast():
            img.append(runtime.host(model.encode_image(x, normalize=True).float()))
            txt.append(runtime.host(model.encode_text(tokens, normalize=True).float()))
    return torch.cat(img).float(), torch.cat(txt).float()


def recall_at_k(sim: torch.Tensor, ks: tuple[int, ...]) -> dict[str, float]:
    """sim[i, j]: query i vs candidate j; the match of query i is candidate i."""
    correct = sim.diagonal().unsqueeze(1)
    rank = (sim > correct).sum(1)  # candidates scored strictly higher than the match
    return {f"R@{k}": (rank < k).float().mean().item() for k in ks}


@torch.no_grad()
def zero_shot_classifier(bundle: ClipBundle, classnames, templates, runtime: Runtime = CPU) -> torch.Tensor:
    weights = []
    for name in classnames:
        with runtime.autocast():
            emb = bundle.model.encode_text(runtime.batch(bundle.tokenizer([t.format(name) for t in templates])),
                                           normalize=True)
        mean = runtime.host(emb.float()).mean(0)
        weights.append(mean / mean.norm())
    return torch.stack(weights)


@torch.no_grad()
def patch_tokens(bundle: ClipBundle, split: Split, batch_size: int, runtime: Runtime = CPU,
                 layer: int = -2) -> torch.Tensor:
    """Patch tokens [N, P, W] (CLS dropped) after block `layer` (negative: from the end; default the
    penultimate, as LLaVA consumes them); on the host."""
    layers = len(bundle.model.visual.transformer.resblocks)
    index = max(0, layers + layer) if layer < 0 else layer
    out = []
    for pixels in _batches(split, batch_size, runtime):
        x = runtime.batch(preprocess_images(pixels, bundle.preprocess))
        with runtime.autocast():
            tokens = bundle.model.visual.forward_intermediates(
                x, indices=[index], intermediates_only=True, output_fmt="NLC")["image_intermediates"][0]
        out.append(runtime.host(tokens.float()))
    return torch.cat(out).float()


def alignment(student: ClipBundle, teacher: ClipBundle, split: Split, spec: EvalParams,
              s_emb: tuple[torch.Tensor, torch.Tensor], runtime: Runtime = CPU) -> dict[str, float]:
    """Linear CKA between student and teacher: image and text embeddings, and patch tokens
    (student tokens resampled to the teacher's grid; every token a sample)."""
    from clipdistill.evaluate.cka import linear_cka
    from clipdistill.models.patches import resample_tokens

    t_img, t_txt = encode(teacher, split, spec.batch_size, runtime)
    s_tok = patch_tokens(student, split, spec.batch_size, runtime)
    t_tok = patch_tokens(teacher, split, spec.batch_size, runtime)
    grid = int(round(t_tok.shape[1] ** 0.5))
    s_tok = resample_tokens(s_tok, grid)
    return {"image": linear_cka(s_emb[0], t_img), "text": linear_cka(s_emb[1], t_txt),
            "patch_tokens": linear_cka(s_tok.reshape(-1, s_tok.shape[-1]), t_tok.reshape(-1, t_tok.shape[-1]))}


def evaluate_clip(bundle: ClipBundle, split: Split, spec: EvalParams, teacher: ClipBundle | None = None,
                  runtime: Runtime = CPU) -> dict:
    """Zero-shot and retrieval; with a teacher also CKA to it. The models run on `runtime`'s
    device; the metrics are computed on the host from fp32 embeddings."""
    for model in (bundle, teacher):
        if model is not None:
            runtime.towers(model.model, train=False)
    img, txt = encode(bundle, split, spec.batch_size, runtime)
    sim = img @ txt.T
    metrics = {"retrieval": {"image_to_text": recall_at_k(sim, spec.recall_at),
                             "text_to_image": recall_at_k(sim.T, spec.recall_at)},
               "zeroshot": {}, "count": len(img)}
    for name, ls in split.label_sets.items():
        labels = torch.tensor(ls["labels"])
        keep = labels >= 0
        if not keep.any():
            continue
        pred = (img[keep] @ zero_shot_classifier(bundle, ls["classnames"], ls["templates"], runtime).T).argmax(1)
        counts = torch.bincount(labels[keep], minlength=len(ls["classnames"]))
        metrics["zeroshot"][name] = {"top1": (pred == labels[keep]).float().mean().item(),
                                     "chance": 1 / len(ls["classnames"]),
                                     "majority": (counts.max() / counts.sum()).item(),
                                     "count": int(keep.sum())}
    r1 = [metrics["retrieval"][d][f"R@{spec.recall_at[0]}"] for d in ("image_to_text", "text_to_image")]
    metrics["summary"] = {f"retrieval_mean_R@{spec.recall_at[0]}": sum(r1) / 2}
    if metrics["zeroshot"]:
        zs = [v["top1"] for v in metrics["zeroshot"].values()]
        metrics["summary"]["zeroshot_mean_top1"] = sum(zs) / len(zs)
    if teacher is not None:
        metrics["cka"] = alignment(bundle, teacher, split, spec, (img, txt), runtime)
        metrics["summary"]["cka_image"] = metrics["cka"]["image"]
    return rounded(metrics)
