"""Symmetric CLIP InfoNCE: materialised reference and a chunked, memory-lean CPU path.

    logits = logit_scale · image @ textᵀ (+ logit_bias)
    loss   = ½ [mean_i CE(logits[i, :], i) + mean_j CE(logits[:, j], j)]

The chunked path never holds the B×B matrix: the forward pass keeps row log-sum-exps
and an online column log-sum-exp; the backward pass recomputes each row chunk of logits
and turns it into gradients with
    dℓ/dlogits_ij = (P_ij + Q_ij) / 2B − δ_ij / B,
P = row softmax, Q = column softmax.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DEFAULT_CHUNK = 1024


def _acc_dtype(x: torch.Tensor) -> torch.dtype:
    """Accumulate in fp32, or fp64 when the inputs are fp64 (references, gradient checks)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def contrastive_naive(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor | float,
                      logit_bias: torch.Tensor | float | None = None) -> torch.Tensor:
    logits = logit_scale * image @ text.T
    if logit_bias is not None:
        logits = logits + logit_bias
    target = torch.arange(len(image), device=image.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def _as_tensor(x, like: torch.Tensor) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.tensor(float(x), dtype=torch.float32, device=like.device)


class _ChunkedContrastive(torch.autograd.Function):
    @staticmethod
    def forward(ctx, image, text, scale, bias, chunk):
        dt = _acc_dtype(image)
        img, txt = image.to(dt), text.to(dt)
        n = img.shape[0]
        s, b = scale.to(dt), bias.to(dt)
        row_lse = torch.empty(n, dtype=dt, device=img.device)
        col_lse = torch.full((txt.shape[0],), -torch.inf, dtype=dt, device=img.device)
        for r in range(0, n, chunk):
            logits = s * (img[r:r + chunk] @ txt.T) + b
            row_lse[r:r + chunk] = torch.logsumexp(logits, dim=1)
            col_lse = torch.logaddexp(col_lse, torch.logsumexp(logits, dim=0))
        diag = s * (img * txt).sum(1) + b
        loss = 0.5 * (row_lse.mean() + col_lse.mean()) - diag.mean()
        ctx.save_for_backward(image, text, scale, bias, row_lse, col_lse)
        ctx.chunk = chunk
        return loss

    @staticmethod
    def backward(ctx, grad):
        image, text, scale, bias, row_lse, col_lse = ctx.saved_tensors
        dt = _acc_dtype(ctx.saved_tensors[0])
        img, txt = image.to(dt), text.to(dt)
        n, chunk = img.shape[0], ctx.chunk
        s, b, g = scale.to(dt), bias.to(dt), grad.to(dt)
        d_img, d_txt = torch.empty_like(img), torch.zeros_like(txt)
        d_scale = torch.zeros((), dtype=dt, device=img.device)
        d_bias = torch.zeros((), dtype=dt, device=img.device)
        for r in range(0, n, chunk):
            sim = img[r:r + chunk] @ txt.T
            logits = s * sim + b
            G = (torch.exp(logits - row_lse[r:r + chunk, None]) + torch.exp(logits - col_lse[None, :])) * (g / (2 * n))
            rows = torch.arange(r, min(r + chunk, n), device=img.device)
            G[rows - r, rows] -= g / n
            d_img[r:r + chunk] = s * (G @ txt)
            d_txt += s * (G.T @ img[r:r + chunk])
            d_scale += (G * sim).sum()
            d_bias += G.sum()
        return (d_img.to(image.dtype), d_txt.to(text.dtype), d_scale.to(scale.dtype).reshape(scale.shape),
                d_bias.to(bias.dtype).reshape(bias.shape), None)


def contrastive_chunked(image: torch.Tensor, text: torch.Tensor, logit_scale, logit_bias=None,
                        chunk: int = DEFAULT_CHUNK) -> torch.Tensor:
    scale = _as_tensor(logit_scale, image)
    bias = _as_tensor(0.0 if logit_bias is None else logit_bias, image)
    return _ChunkedContrastive.apply(image, text, scale, bias, chunk)


def row_contrastive_naive(a, b, logit_scale, logit_bias=None, offset: int = 0):
    logits = logit_scale * a @ b.T
    if logit_bias is not None:
        logits = logits + logit_bias
    return F.cross_entropy(logits, torch.arange(len(a), device=a.device) + offset)


class _ChunkedRows(torch.autograd.Function):
    """Row-only InfoNCE: local rows `a` against all columns `b`, the match of row i at i + offset."""

    @staticmethod
    def forward(ctx, a, b, scale, bias, offset, chunk):
        dt = _acc_dtype(a)
        af, bf, s, bb = a.to(dt), b.to(dt), scale.to(dt), bias.to(dt)
        lse = torch.cat([torch.logsumexp(s * (af[r:r + chunk] @ bf.T) + bb, 1) for r in range(0, len(af), chunk)])
        target = s * (af * bf[offset:offset + len(af)]).sum(1) + bb
        ctx.save_for_backward(a, b, scale, bias, lse)
        ctx.offset, ctx.chunk = offset, chunk
        return (lse - target).mean()

    @staticmethod
    def backward(ctx, grad):
        a, b, scale, bias, lse = ctx.saved_tensors
        dt = _acc_dtype(ctx.saved_tensors[0])
        af, bf, s, bb = a.to(dt), b.to(dt), scale.to(dt), bias.to(dt)
        m, chunk, off = len(af), ctx.chunk, ctx.offset
        da, db = torch.empty_like(af), torch.zeros_like(bf)
        d_s, d_b = torch.zeros((), device=af.device, dtype=dt), torch.zeros((), device=af.device, dtype=dt)
        for r in range(0, m, chunk):
            sim = af[r:r + chunk] @ bf.T
            G = torch.exp(s * sim + bb - lse[r:r + chunk, None]) * (grad.to(dt) / m)
            rows = torch.arange(r, min(r + chunk, m), device=af.device)
            G[rows - r, rows + off] -= grad.to(dt) / m
            da[r:r + chunk] = s * (G @ bf)
            db += s * (G.T @ af[r:r + chunk])
            d_s += (G * sim).sum()
            d_b += G.sum()
        return (da.to(a.dtype), db.to(b.dtype), d_s.reshape(scale.shape).to(scale.dtype),
                d_b.reshape(bias.shape).to(bias.dtype), None, None)


def row_contrastive_chunked(a, b, logit_scale, logit_bias=None, offset: int = 0, chunk: int = DEFAULT_CHUNK):
    return _ChunkedRows.apply(a, b, _as_tensor(logit_scale, a), _as_tensor(0.0 if logit_bias is None else logit_bias, a),
                              int(offset), chunk)
