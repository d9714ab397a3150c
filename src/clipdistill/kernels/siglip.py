"""SigLIP sigmoid loss on the shared kernels of `contrastive`.

Each logit's gradient, −z σ(−z·logit)/B, needs no global statistic. The forward kernel
(MODE_SIGLIP) sums the loss per row; the backward recomputes the tiles with the same
column-chunked G kernel as CLIP, then two matmuls: deterministic, no atomics.
"""

from __future__ import annotations

import torch

from clipdistill.kernels.contrastive import MODE_SIGLIP, _prep, _scalar, fused_backward, fused_forward, grad_scale


class _Siglip(torch.autograd.Function):
    @staticmethod
    def forward(ctx, image, text, scale, bias, allow_tf32):
        image, text = _prep(image), _prep(text)
        stats = fused_forward(image, text, scale, bias, mode=MODE_SIGLIP, allow_tf32=allow_tf32)
        ctx.save_for_backward(image, text, scale, bias)
        ctx.allow_tf32 = allow_tf32
        return stats["loss_part"].sum() / len(image)

    @staticmethod
    def backward(ctx, grad):
        image, text, scale, bias = ctx.saved_tensors
        coef, unscale = grad_scale(len(image), grad)
        da, db, dscale, dbias = fused_backward(image, text, scale, bias, coef, unscale, {}, mode=MODE_SIGLIP,
                                               allow_tf32=ctx.allow_tf32, out_dtype=image.dtype)
        return (da.to(image.dtype), db.to(text.dtype), dscale.reshape(scale.shape).to(scale.dtype),
                dbias.reshape(bias.shape).to(bias.dtype), None)


def siglip_triton(image, text, logit_scale, logit_bias, *, allow_tf32: bool = False):
    return _Siglip.apply(image, text, _scalar(logit_scale, image), _scalar(logit_bias, image), allow_tf32)
