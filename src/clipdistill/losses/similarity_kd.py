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


def _lse_both(x: torch.Tensor, buf: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, column) log-sum-exps of x, exponentials written into buf (no temporaries)."""
    m1 = x.amax(1, keepdim=True)
    row = (m1 + torch.sub(x, m1, out=buf).exp_().sum(1, keepdim=True).log_()).squeeze(1)
    m0 = x.amax(0)
    col = m0 + torch.sub(x, m0, out=buf).exp_().sum(0).log_()
    return row, col


class _ChunkedContrastiveKD(torch.autograd.Function):
    """CLIP InfoNCE of the student and similarity KD to the teacher in one chunked loop.

    Forward, one pass over row chunks: the student and teacher logit chunks are computed once
    and give the CLIP row log-sum-exps and online column log-sum-exps, the KD row statistics
    and row KL, and online column statistics of S and T with the teacher-weighted log-ratio
    Σ_i e^{T_ij − m_j}(T_ij − S_ij) rescaled as the running column max m_j moves (the column
    KL needs no second pass). Backward, one pass: recompute both chunks, form the summed
    dℓ/dlogits of both terms, two matmuls. 6 chunk matmuls in all (B²·D each, D_t for the
    teacher's two), O(B·chunk) memory. Features are pre-multiplied by their scales (B·D work
    instead of a pass over each chunk), and chunk-sized buffers are updated in place.
    """

    @staticmethod
    def forward(ctx, s_image, s_text, s_scale, t_image, t_text, t_scale, tau, chunk):
        dt = _acc_dtype(s_image)
        si, st, ti, tt = s_image.to(dt), s_text.to(dt), t_image.to(dt), t_text.to(dt)
        ss, ts = s_scale.to(dt), t_scale.to(dt)
        n, dev = si.shape[0], si.device
        si_s, ti_s = si * ss, ti * (ts / tau)  # L = si_s @ stᵀ (CLIP logits), T = ti_s @ ttᵀ
        c_row, s_row, t_row = (torch.empty(n, device=dev, dtype=dt) for _ in range(3))
        c_col, s_col = (torch.full((n,), -torch.inf, device=dev, dtype=dt) for _ in range(2))
        t_max = torch.full((n,), -torch.inf, device=dev, dtype=dt)
        t_sum, t_w = torch.zeros(n, device=dev, dtype=dt), torch.zeros(n, device=dev, dtype=dt)
        row_kl = torch.zeros((), device=dev, dtype=dt)
        for r in range(0, n, chunk):
            rs = slice(r, r + chunk)
            L = si_s[rs] @ st.T
            S = L if tau == 1.0 else L / tau
            T = ti_s[rs] @ tt.T
            p = torch.empty_like(L)  # one chunk-sized scratch buffer for every exponential below
            c_row[rs], lse0 = _lse_both(L, p)
            c_col = torch.logaddexp(c_col, lse0)
            if S is L:
                s_row[rs], s_col = c_row[rs], c_col
            else:
                s_row[rs], lse0 = _lse_both(S, p)
                s_col = torch.logaddexp(s_col, lse0)
            tm = T.amax(1, keepdim=True)
            torch.sub(T, tm, out=p).exp_()  # one exponential gives the teacher's row lse and softmax
            z = p.sum(1, keepdim=True)
            t_row[rs] = (tm + z.log()).squeeze(1)
            diff = torch.sub(T, S)
            row_kl += torch.vdot(p.div_(z).view(-1), diff.view(-1)) - t_row[rs].sum() + s_row[rs].sum()
            m_new = torch.maximum(t_max, T.amax(0))
            alpha = torch.exp(t_max - m_new)
            torch.sub(T, m_new, out=p).exp_()  # column-shifted teacher probabilities, same buffer
            t_sum = t_sum * alpha + p.sum(0)
            t_w = t_w * alpha + p.mul_(diff).sum(0)
            t_max = m_new
        t_col = t_max + torch.log(t_sum)
        col_kl = (t_w / t_sum - t_col + s_col).sum()
        diag = ss * (si * st).sum(1)
        clip = 0.5 * (c_row.mean() + c_col.mean()) - diag.mean()
        kd = 0.5 * (row_kl + col_kl) / n * tau**2
        ctx.save_for_backward(s_image, s_text, s_scale, t_image, t_text, t_scale, c_row, c_col, s_row, t_row,
                              s_col, t_col)
        ctx.tau, ctx.chunk = tau, chunk
        return clip, kd

    @staticmethod
    def backward(ctx, g_clip, g_kd):
        s_image, s_text, s_scale, t_image, t_text, t_scale, c_row, c_col, s_row, t_row, s_col, t_col = \
            ctx.saved_tensors
        dt = _acc_dtype(s_image)
        tau, chunk = ctx.tau, ctx.chunk
        si, st, ti, tt = s_image.to(dt), s_text.to(dt), t_image.to(dt), t_text.to(dt)
        ss, ts = s_scale.to(dt), t_scale.to(dt)
        n = si.shape[0]
        si_s, ti_s = si * ss, ti * (ts / tau)
        g_clip = torch.zeros((), dtype=dt, device=si.device) if g_clip is None else g_clip.to(dt)
        g_kd = torch.zeros((), dtype=dt, device=si.device) if g_kd is None else g_kd.to(dt)
        k_clip, k_kd = g_clip / (2 * n), g_kd * tau / (2 * n)  # KD: τ²·½·1/B, and 1/τ for raw logits
        d_si, d_st = torch.empty_like(si), torch.zeros_like(st)
        d_ss = torch.zeros((), device=si.device, dtype=dt)
        for r in range(0, n, chunk):
            rs = slice(r, r + chunk)
            L = si_s[rs] @ st.T
            G = torch.sub(L, c_col[None, :]).exp_().add_(torch.sub(L, c_row[rs, None]).exp_())  # P + Q
            if tau == 1.0:  # the student's KD softmaxes are the CLIP ones
                G.mul_(k_clip + k_kd)
            else:
                S = L.div_(tau)
                G.mul_(k_clip).addcmul_(torch.sub(S, s_row[rs, None]).exp_().add_(S.sub_(s_col[None, :]).exp_()),
                                        k_kd)
            T = ti_s[rs] @ tt.T
            G.addcmul_(torch.sub(T, t_row[rs, None]).exp_().add_(T.sub_(t_col[None, :]).exp_()), k_kd, value=-1)
            rows = torch.arange(r, min(r + chunk, n), device=si.device)
            G[rows - r, rows] -= 2 * k_clip
            GS = G @ st
            d_ss += torch.vdot(GS.view(-1), si[rs].reshape(-1))  # Σ G·sim = Σ_i si_i·(G st)_i
            d_si[rs] = ss * GS
            d_st.addmm_(G.T, si[rs])
        return (d_si.to(s_image.dtype), (ss * d_st).to(s_text.dtype), d_ss.to(s_scale.dtype).reshape(s_scale.shape),
                None, None, None, None, None)


def contrastive_kd_chunked(s_image, s_text, s_scale, t_image, t_text, t_scale, temperature: float = 1.0,
                           chunk: int = DEFAULT_CHUNK):
    """(CLIP InfoNCE of the student, similarity KD to the teacher) from one chunked loop."""
    return _ChunkedContrastiveKD.apply(s_image, s_text, _as_tensor(s_scale, s_image), t_image.detach(),
                                       t_text.detach(), _as_tensor(t_scale, t_image).detach(),
                                       float(temperature), chunk)
