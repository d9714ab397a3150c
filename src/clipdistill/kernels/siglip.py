"""Fused SigLIP sigmoid loss in a single pass.

Each logit's gradient, −z σ(−z·logit)/B, needs no global statistic, so one kernel
computes the loss and the gradients of both feature matrices, the scale and the bias
while the tile is in registers; backward only multiplies them by grad_output.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from clipdistill.kernels.contrastive import BWD_OPTIONS, INTERPRET, _accumulate_grads, _blocks, _prep, _scalar, _sim_tile


@triton.jit
def _siglip_kernel(a_ptr, b_ptr, scale_ptr, bias_ptr, loss_part_ptr, da_ptr, db_ptr, dscale_part_ptr,
                   dbias_part_ptr, M, N, D, stride_a, stride_b,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                   BLOCK_D: tl.constexpr, CAST: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    rmask = rows < M
    s = tl.load(scale_ptr).to(tl.float32)
    bias = tl.load(bias_ptr).to(tl.float32)
    loss = tl.zeros((BLOCK_M,), tl.float32)
    dsc = tl.zeros((BLOCK_M,), tl.float32)
    dbi = tl.zeros((BLOCK_M,), tl.float32)
    for n0 in range(0, N, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        cmask = cols < N
        valid = rmask[:, None] & cmask[None, :]
        sim = _sim_tile(a_ptr, b_ptr, rows, cols, rmask, cmask, D, stride_a, stride_b,
                        BLOCK_M, BLOCK_N, BLOCK_K, CAST)
        z = tl.where(rows[:, None] == cols[None, :], 1.0, -1.0)
        x = tl.where(valid, z * (s * sim + bias), 0.0)
        # −log σ(x) = softplus(−x), computed stably
        loss += tl.sum(tl.where(valid, tl.maximum(-x, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(x))), 0.0), 1)
        G = tl.where(valid, -z * tl.sigmoid(-x) / M, 0.0)
        dsc += tl.sum(G * sim, 1)
        dbi += tl.sum(G, 1)
        _accumulate_grads(G * s, a_ptr, b_ptr, da_ptr, db_ptr, rows, cols, rmask, cmask, D,
                          stride_a, stride_b, BLOCK_D, CAST)
    tl.store(loss_part_ptr + rows, loss, mask=rmask)
    tl.store(dscale_part_ptr + rows, dsc, mask=rmask)
    tl.store(dbias_part_ptr + rows, dbi, mask=rmask)


class _Siglip(torch.autograd.Function):
    @staticmethod
    def forward(ctx, image, text, scale, bias):
        image, text = _prep(image), _prep(text)
        M, D = image.shape
        cfg = _blocks(M, M, D)
        dev = image.device
        da = torch.zeros(M, D, device=dev, dtype=torch.float32)
        db = torch.zeros(M, D, device=dev, dtype=torch.float32)
        loss, dscale, dbias = (torch.empty(M, device=dev, dtype=torch.float32) for _ in range(3))
        _siglip_kernel[(triton.cdiv(M, cfg["BLOCK_M"]),)](
            image, text, scale, bias, loss, da, db, dscale, dbias, M, M, D, image.stride(0), text.stride(0),
            CAST=INTERPRET, **cfg, **BWD_OPTIONS)
        ctx.save_for_backward(da, db, dscale.sum(), dbias.sum())
        ctx.dtypes = (image.dtype, text.dtype, scale.dtype, bias.dtype, scale.shape, bias.shape)
        return loss.sum() / M

    @staticmethod
    def backward(ctx, grad):
        da, db, dscale, dbias = ctx.saved_tensors
        ti, tt, ts, tb, ss, bs = ctx.dtypes
        g = grad.float()
        return ((g * da).to(ti), (g * db).to(tt), (g * dscale).reshape(ss).to(ts), (g * dbias).reshape(bs).to(tb))


def siglip_triton(image, text, logit_scale, logit_bias):
    return _Siglip.apply(image, text, _scalar(logit_scale, image), _scalar(logit_bias, image))
