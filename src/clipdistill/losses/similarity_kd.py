"""Similarity-matrix KD (CRD in CLIP-KD): the student's image–text similarity distribution
matches the teacher's, over rows and over columns.

    S = s_scale · s_image @ s_textᵀ / τ,   T = t_scale · t_image @ t_textᵀ / τ
    loss = τ² · ½ [KL(softmax_rows(T) ‖ softmax_rows(S)) + KL(softmax_cols(T) ‖ softmax_cols(S))]

each KL summed over the row (column) and averaged over the batch ("batchmean"). The
teacher side never needs a gradient.

Chunked path: pass 1 gets row log-sum-exps (exact per row chunk) and online column
log-sum-exps for S and T plus the row KL; pass 2 recomputes each chunk for the column KL.
Backward recomputes chunks with  dℓ/dS = [(q − p) + (q_c − p_c)] / 2B  (p: teacher, q:
student, _c: column softmax), times τ for the raw logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from clipdistill.losses.contrastive import DEFAULT_CHUNK, _acc_dtype, _as_tensor


def similarity_kd_naive(s_image, s_text, s_scale, t_image, t_text, t_scale, temperature: float = 1.0):
    S = s_scale * s_image @ s_text.T / temperature
    T = (t_scale * t_image @ t_text.T / temperature).detach()
    rows = F.kl_div(F.log_softmax(S, 1), F.log_softmax(T, 1), log_target=True, reduction="batchmean")
    cols = F.kl_div(F.log_softmax(S.T, 1), F.log_softmax(T.T, 1), log_target=True, reduction="batchmean")
    return 0.5 * (rows + cols) * temperature**2


def _logits(a, b, scale, tau):
    sim = a @ b.T
    return sim, scale * sim / tau


class _ChunkedSimilarityKD(torch.autograd.Function):
    @staticmethod
    def forward(ctx, s_image, s_text, s_scale, t_image, t_text, t_scale, tau, chunk):
        dt = _acc_dtype(s_image)
        si, st, ti, tt = s_image.to(dt), s_text.to(dt), t_image.to(dt), t_text.to(dt)
        ss, ts = s_scale.to(dt), t_scale.to(dt)
        n = si.shape[0]
        s_row, t_row = torch.empty(n, device=si.device, dtype=dt), torch.empty(n, device=si.device, dtype=dt)
        s_col = torch.full((n,), -torch.inf, device=si.device, dtype=dt)
        t_col = torch.full((n,), -torch.inf, device=si.device, dtype=dt)
        row_kl = torch.zeros((), device=si.device, dtype=dt)
        for r in range(0, n, chunk):
            _, S = _logits(si[r:r + chunk], st, ss, tau)
            _, T = _logits(ti[r:r + chunk], tt, ts, tau)
            s_row[r:r + chunk], t_row[r:r + chunk] = S.logsumexp(1), T.logsumexp(1)
            s_col = torch.logaddexp(s_col, S.logsumexp(0))
            t_col = torch.logaddexp(t_col, T.logsumexp(0))
            p = torch.exp(T - t_row[r:r + chunk, None])
            row_kl += (p * (T - S)).sum() - t_row[r:r + chunk].sum() + s_row[r:r + chunk].sum()
        col_kl = (s_col - t_col).sum()
        for r in range(0, n, chunk):
            _, S = _logits(si[r:r + chunk], st, ss, tau)
            _, T = _logits(ti[r:r + chunk], tt, ts, tau)
            col_kl += (torch.exp(T - t_col[None, :]) * (T - S)).sum()
        loss = 0.5 * (row_kl + col_kl) / n * tau**2
        ctx.save_for_backward(s_image, s_text, s_scale, t_image, t_text, t_scale, s_row, t_row, s_col, t_col)
        ctx.tau, ctx.chunk = tau, chunk
        return loss

    @staticmethod
    def backward(ctx, grad):
        s_image, s_text, s_scale, t_image, t_text, t_scale, s_row, t_row, s_col, t_col = ctx.saved_tensors
        dt = _acc_dtype(ctx.saved_tensors[0])
        tau, chunk = ctx.tau, ctx.chunk
        si, st, ti, tt = s_image.to(dt), s_text.to(dt), t_image.to(dt), t_text.to(dt)
        ss, ts = s_scale.to(dt), t_scale.to(dt)
        n = si.shape[0]
        d_si, d_st = torch.empty_like(si), torch.zeros_like(st)
        d_ss = torch.zeros((), device=si.device, dtype=dt)
        coef = grad.to(dt) * tau / (2 * n)  # τ² · ½ · 1/B, and 1/τ for the raw logits
        for r in range(0, n, chunk):
            sim, S = _logits(si[r:r + chunk], st, ss, tau)
            _, T = _logits(ti[r:r + chunk], tt, ts, tau)
            G = (torch.exp(S - s_row[r:r + chunk, None]) - torch.exp(T - t_row[r:r + chunk, None])
                 + torch.exp(S - s_col[None, :]) - torch.exp(T - t_col[None, :])) * coef
            d_si[r:r + chunk] = ss * (G @ st)
            d_st += ss * (G.T @ si[r:r + chunk])
            d_ss += (G * sim).sum()
        return (d_si.to(s_image.dtype), d_st.to(s_text.dtype), d_ss.to(s_scale.dtype).reshape(s_scale.shape),
                None, None, None, None, None)


def similarity_kd_chunked(s_image, s_text, s_scale, t_image, t_text, t_scale, temperature: float = 1.0,
                          chunk: int = DEFAULT_CHUNK):
    return _ChunkedSimilarityKD.apply(s_image, s_text, _as_tensor(s_scale, s_image), t_image.detach(),
                                      t_text.detach(), _as_tensor(t_scale, t_image).detach(),
                                      float(temperature), chunk)
