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
        img, txt = image.float(), text.float()
        n = img.shape[0]
        s, b = scale.float(), bias.float()
        row_lse = torch.empty(n, dtype=torch.float32, device=img.device)
        col_lse = torch.full((txt.shape[0],), -torch.inf, dtype=torch.float32, device=img.device)
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
        img, txt = image.float(), text.float()
        n, chunk = img.shape[0], ctx.chunk
        s, b, g = scale.float(), bias.float(), grad.float()
        d_img, d_txt = torch.empty_like(img), torch.zeros_like(txt)
        d_scale = torch.zeros((), dtype=torch.float32, device=img.device)
        d_bias = torch.zeros((), dtype=torch.float32, device=img.device)
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
