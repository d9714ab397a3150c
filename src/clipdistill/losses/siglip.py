"""SigLIP sigmoid loss: every image–text pair is an independent binary problem.

    logits = logit_scale · image @ textᵀ + logit_bias,  z_ij = +1 if i = j else −1
    loss   = −(1/B) Σ_ij log σ(z_ij · logits_ij)

(normalised by the batch size, as in the SigLIP paper and open_clip's SigLipLoss).
Chunked path: one pass forward, one recomputing pass backward with
dℓ/dlogits_ij = −z_ij σ(−z_ij logits_ij) / B.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from clipdistill.losses.contrastive import DEFAULT_CHUNK, _acc_dtype, _as_tensor


def siglip_naive(image, text, logit_scale, logit_bias):
    logits = logit_scale * image @ text.T + logit_bias
    z = 2 * torch.eye(len(image), device=image.device, dtype=logits.dtype) - 1
    return -F.logsigmoid(z * logits).sum() / len(image)


def _signs(r: int, rows: int, n: int, device, dtype) -> torch.Tensor:
    z = -torch.ones(rows, n, device=device, dtype=dtype)
    idx = torch.arange(rows, device=device)
    z[idx, idx + r] = 1.0
    return z


class _ChunkedSiglip(torch.autograd.Function):
    @staticmethod
    def forward(ctx, image, text, scale, bias, chunk):
        dt = _acc_dtype(image)
        img, txt, s, b = image.to(dt), text.to(dt), scale.to(dt), bias.to(dt)
        n = img.shape[0]
        total = torch.zeros((), device=img.device, dtype=dt)
        for r in range(0, n, chunk):
            logits = s * (img[r:r + chunk] @ txt.T) + b
            total -= F.logsigmoid(_signs(r, len(logits), n, img.device, dt) * logits).sum()
        ctx.save_for_backward(image, text, scale, bias)
        ctx.chunk = chunk
        return total / n

    @staticmethod
    def backward(ctx, grad):
        image, text, scale, bias = ctx.saved_tensors
        dt = _acc_dtype(ctx.saved_tensors[0])
        img, txt, s, b = image.to(dt), text.to(dt), scale.to(dt), bias.to(dt)
        n, chunk = img.shape[0], ctx.chunk
        d_img, d_txt = torch.empty_like(img), torch.zeros_like(txt)
        d_s, d_b = torch.zeros((), device=img.device, dtype=dt), torch.zeros((), device=img.device, dtype=dt)
        for r in range(0, n, chunk):
            sim = img[r:r + chunk] @ txt.T
            z = _signs(r, len(sim), n, img.device, dt)
            G = -z * torch.sigmoid(-z * (s * sim + b)) * (grad.to(dt) / n)
            d_img[r:r + chunk] = s * (G @ txt)
            d_txt += s * (G.T @ img[r:r + chunk])
            d_s += (G * sim).sum()
            d_b += G.sum()
        return (d_img.to(image.dtype), d_txt.to(text.dtype), d_s.to(scale.dtype).reshape(scale.shape),
                d_b.to(bias.dtype).reshape(bias.shape), None)


def siglip_chunked(image, text, logit_scale, logit_bias, chunk: int = DEFAULT_CHUNK):
    return _ChunkedSiglip.apply(image, text, _as_tensor(logit_scale, image), _as_tensor(logit_bias, image), chunk)
