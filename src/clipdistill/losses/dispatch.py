"""The loss API over backends (see the package docstring): argument checks, then the
naive, chunked-torch or Triton implementation of each loss."""

from __future__ import annotations

import contextlib
import contextvars

import torch

from clipdistill.losses import contrastive as _contrastive
from clipdistill.losses import siglip as _siglip
from clipdistill.losses import similarity_kd as _kd

BACKENDS = ("auto", "triton", "torch", "naive")
_AUTO_MEANS = contextvars.ContextVar("auto_backend", default="auto")


@contextlib.contextmanager
def auto_backend(backend: str):
    """Inside: what `backend="auto"` resolves to (a stage's `runtime.loss_backend`); "auto" keeps
    the choice by device (Triton for CUDA tensors). An explicit backend argument still wins."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    token = _AUTO_MEANS.set(backend)
    try:
        yield
    finally:
        _AUTO_MEANS.reset(token)


def _check_pair(a: torch.Tensor, b: torch.Tensor, names: str) -> None:
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError(f"{names}: expected 2-D [batch, dim] tensors, got shapes {tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape != b.shape:
        raise ValueError(f"{names}: shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")


def _check_kd(s_image, s_text, t_image, t_text, temperature, name: str) -> None:
    _check_pair(s_image, s_text, f"{name} (student)")
    _check_pair(t_image, t_text, f"{name} (teacher)")
    if len(s_image) != len(t_image):
        raise ValueError(f"{name}: batch sizes differ: student {len(s_image)} vs teacher {len(t_image)}")
    if temperature <= 0:
        raise ValueError(f"{name}: temperature must be > 0, got {temperature}")


def resolve_backend(backend: str, *tensors: torch.Tensor) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        backend = _AUTO_MEANS.get()
    if backend != "auto":
        return backend
    from clipdistill.kernels import triton_available

    return "triton" if tensors[0].is_cuda and triton_available() else "torch"


def contrastive_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale,
                     *, logit_bias=None, backend: str = "auto", allow_tf32: bool = False) -> torch.Tensor:
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

    return contrastive_triton(image_features, text_features, logit_scale, logit_bias, allow_tf32=allow_tf32)


def similarity_kd_loss(s_image: torch.Tensor, s_text: torch.Tensor, s_scale, t_image: torch.Tensor,
                       t_text: torch.Tensor, t_scale, *, temperature: float = 1.0,
                       backend: str = "auto") -> torch.Tensor:
    """CRD: with S = s_scale·s_image@s_textᵀ/τ and T = t_scale·t_image@t_textᵀ/τ,
    τ²·½[KL(softmax(T rows) ‖ softmax(S rows)) + KL(softmax(T cols) ‖ softmax(S cols))],
    each KL summed over the row (column) and averaged over the batch. No teacher gradient.
    Student and teacher widths may differ."""
    _check_kd(s_image, s_text, t_image, t_text, temperature, "similarity_kd_loss")
    backend = resolve_backend(backend, s_image)
    if backend == "naive":
        return _kd.similarity_kd_naive(s_image, s_text, s_scale, t_image, t_text, t_scale, temperature)
    if backend == "torch":
        return _kd.similarity_kd_chunked(s_image, s_text, s_scale, t_image, t_text, t_scale, temperature)
    return contrastive_kd_loss(s_image, s_text, s_scale, t_image, t_text, t_scale,
                               temperature=temperature, backend="triton")[1]


def contrastive_kd_loss(s_image, s_text, s_scale, t_image, t_text, t_scale, *, temperature: float = 1.0,
                        backend: str = "auto", allow_tf32: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(contrastive_loss of the student, similarity_kd_loss to the teacher); on the Triton and
    torch backends both come from one fused loop over the similarity tiles (chunks)."""
    backend = resolve_backend(backend, s_image)
    if backend in ("triton", "torch"):
        _check_kd(s_image, s_text, t_image, t_text, temperature, "contrastive_kd_loss")
    if backend == "triton":
        from clipdistill.kernels.contrastive import contrastive_kd_triton

        return contrastive_kd_triton(s_image, s_text, s_scale, t_image, t_text, t_scale, temperature,
                                     allow_tf32=allow_tf32)
    if backend == "torch":
        return _kd.contrastive_kd_chunked(s_image, s_text, s_scale, t_image, t_text, t_scale, temperature)
    return (contrastive_loss(s_image, s_text, s_scale, backend=backend),
            similarity_kd_loss(s_image, s_text, s_scale, t_image, t_text, t_scale,
                               temperature=temperature, backend=backend))


def siglip_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale, logit_bias,
                *, backend: str = "auto", allow_tf32: bool = False) -> torch.Tensor:
    """SigLIP: −(1/B) Σ_ij log σ(z_ij (logit_scale·image_i·text_j + logit_bias)), z = +1 on the
    diagonal and −1 elsewhere."""
    _check_pair(image_features, text_features, "siglip_loss")
    backend = resolve_backend(backend, image_features)
    if backend == "naive":
        return _siglip.siglip_naive(image_features, text_features, logit_scale, logit_bias)
    if backend == "torch":
        return _siglip.siglip_chunked(image_features, text_features, logit_scale, logit_bias)
    from clipdistill.kernels.siglip import siglip_triton

    return siglip_triton(image_features, text_features, logit_scale, logit_bias, allow_tf32=allow_tf32)
