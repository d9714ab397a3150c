"""Losses behind one API, each with backends:

- "naive": the materialised reference (B×B logits in memory);
- "torch": chunked PyTorch with recomputation, O(B·chunk) memory (the CPU path);
- "triton": fused GPU kernels (CUDA tensors, or the interpreter with TRITON_INTERPRET=1);
- "auto": triton for CUDA tensors when available, else torch.
"""

from __future__ import annotations

import torch

from clipdistill.losses import contrastive as _contrastive

BACKENDS = ("auto", "triton", "torch", "naive")


def _check_pair(a: torch.Tensor, b: torch.Tensor, names: str) -> None:
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError(f"{names}: expected 2-D [batch, dim] tensors, got shapes {tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape != b.shape:
        raise ValueError(f"{names}: shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")


def resolve_backend(backend: str, *tensors: torch.Tensor) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend != "auto":
        return backend
    from clipdistill.kernels import triton_available

    return "triton" if tensors[0].is_cuda and triton_available() else "torch"


def contrastive_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale,
                     *, logit_bias=None, backend: str = "auto") -> torch.Tensor:
    """Symmetric CLIP InfoNCE on L2-normalised features.

    logits = logit_scale · image @ textᵀ (+ logit_bias); loss = ½ (row CE + column CE),
    each the mean over the batch of the cross-entropy against the diagonal.
    `logit_scale` is the multiplier (already exponentiated, as open_clip returns it).
    """
    _check_pair(image_features, text_features, "contrastive_loss")
    backend = resolve_backend(backend, image_features)
    if backend == "naive":
        return _contrastive.contrastive_naive(image_features, text_features, logit_scale, logit_bias)
    if backend == "torch":
        return _contrastive.contrastive_chunked(image_features, text_features, logit_scale, logit_bias)
    from clipdistill.kernels.contrastive import contrastive_triton

    return contrastive_triton(image_features, text_features, logit_scale, logit_bias)
