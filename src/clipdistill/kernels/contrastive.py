"""Fused Triton kernels for CLIP InfoNCE, with optional fused similarity KD (CRD).

No B×B tensor is ever materialised. Logit tiles are recomputed from the feature matrices:

forward  (grid: row blocks) — online row log-sum-exp over column tiles; per row block,
         partial column statistics (max, sum-exp; for KD also the teacher-weighted
         log-ratio) that a tiny torch reduction turns into column log-sum-exps. One
         read of the features: 2·B²·D FLOPs (+2·B²·D_t for the teacher with KD).
backward (grid: row blocks) — recompute the tile, form dℓ/dlogits from the saved row and
         column statistics, accumulate d(image) for the owned rows in place and
         d(text) with atomics: 6·B²·D FLOPs (+2·B²·D_t). CLIP: 8·B²·D in all.

Row-only mode (`symmetric=False`, rectangular A [M, D] against B [N, D] with a diagonal
offset) is the building block of the distributed local loss.

Operands are loaded in their own dtype (bf16/fp16/fp32) and accumulated in fp32; under
the interpreter (CPU) tiles are cast to fp32 first, because the interpreter's bf16 dot is
wrong. Offsets are int64.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
NEG = tl.constexpr(-1.0e30)  # masked logits: finite, so masked lanes never make inf − inf


@triton.jit
def _load_tile(ptr, rows, rmask, cols, D, stride, CAST: tl.constexpr):
    """x[rows, cols] of a row-major [·, D] matrix with row stride `stride` (int64 offsets);
    out-of-range lanes read 0. Cast to fp32 under the interpreter (its bf16 dot is wrong)."""
    tile = tl.load(ptr + rows[:, None].to(tl.int64) * stride + cols[None, :],
                   mask=rmask[:, None] & (cols < D)[None, :], other=0.0)
    if CAST:
        tile = tile.to(tl.float32)
    return tile


@triton.jit
def _sim_tile(a_ptr, b_ptr, rows, cols, rmask, cmask, D, stride_a, stride_b,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, CAST: tl.constexpr):
    """fp32 tile a[rows] @ b[cols]ᵀ, reduced over D in BLOCK_K chunks."""
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    ks = tl.arange(0, BLOCK_K)
    for k0 in range(0, D, BLOCK_K):
        a = _load_tile(a_ptr, rows, rmask, k0 + ks, D, stride_a, CAST)
        b = _load_tile(b_ptr, cols, cmask, k0 + ks, D, stride_b, CAST)
        acc += tl.dot(a, tl.trans(b))
    return acc


@triton.jit
def _accumulate_grads(Gs, a_ptr, b_ptr, da_ptr, db_ptr, rows, cols, rmask, cmask, D, stride_a, stride_b,
                      BLOCK_D: tl.constexpr, CAST: tl.constexpr):
    """da[rows] += Gs @ b[cols] (rows are owned by the program: plain read-modify-write);
    db[cols] += Gsᵀ @ a[rows] (shared across programs: atomics). fp32 accumulators [·, D]."""
    ds = tl.arange(0, BLOCK_D)
    for d0 in range(0, D, BLOCK_D):
        dmask = (d0 + ds) < D
        b_tile = _load_tile(b_ptr, cols, cmask, d0 + ds, D, stride_b, CAST)
        a_tile = _load_tile(a_ptr, rows, rmask, d0 + ds, D, stride_a, CAST)
        Gd = Gs.to(b_tile.dtype)  # 16-bit operands on the GPU's matrix path; fp32 under the interpreter
        da_off = rows[:, None].to(tl.int64) * D + (d0 + ds)[None, :]
        amask = rmask[:, None] & dmask[None, :]
        da = tl.load(da_ptr + da_off, mask=amask, other=0.0)
        tl.store(da_ptr + da_off, da + tl.dot(Gd, b_tile), mask=amask)
        tl.atomic_add(db_ptr + cols[:, None].to(tl.int64) * D + (d0 + ds)[None, :],
                      tl.dot(tl.trans(Gd), a_tile), mask=cmask[:, None] & dmask[None, :])


@triton.jit
def _fwd_kernel(a_ptr, b_ptr, ta_ptr, tb_ptr, scale_ptr, bias_ptr, tscale_ptr,
                row_lse_ptr, col_max_ptr, col_sum_ptr,
                kd_row_ptr, kd_col_ptr,
                M, N, D, DT, stride_a, stride_b, stride_ta, stride_tb, inv_tau,
                SYMMETRIC: tl.constexpr, HAS_KD: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, CAST: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    rmask = rows < M
    s = tl.load(scale_ptr).to(tl.float32)
    bias = tl.load(bias_ptr).to(tl.float32)
    m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    l_i = tl.zeros((BLOCK_M,), tl.float32)
    if HAS_KD:
        ts = tl.load(tscale_ptr).to(tl.float32)
        ms_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)   # student row stats at τ
        ls_i = tl.zeros((BLOCK_M,), tl.float32)
        mt_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)   # teacher row stats at τ
        lt_i = tl.zeros((BLOCK_M,), tl.float32)
        wt_i = tl.zeros((BLOCK_M,), tl.float32)                  # Σ_j e^{T-mt} (T - S)
    for n0 in range(0, N, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        cmask = cols < N
        valid = rmask[:, None] & cmask[None, :]
        sim = _sim_tile(a_ptr, b_ptr, rows, cols, rmask, cmask, D, stride_a, stride_b,
                        BLOCK_M, BLOCK_N, BLOCK_K, CAST)
        logits = tl.where(valid, s * sim + bias, NEG)
        m_new = tl.maximum(m_i, tl.max(logits, 1))
        l_i = l_i * tl.exp(m_i - m_new) + tl.sum(tl.exp(logits - m_new[:, None]), 1)
        m_i = m_new
        if SYMMETRIC:
            cm = tl.max(logits, 0)
            cs = tl.sum(tl.exp(logits - cm[None, :]), 0)
            off = pid.to(tl.int64) * N + cols
            tl.store(col_max_ptr + off, cm, mask=cmask)
            tl.store(col_sum_ptr + off, cs, mask=cmask)
        if HAS_KD:
            tsim = _sim_tile(ta_ptr, tb_ptr, rows, cols, rmask, cmask, DT, stride_ta, stride_tb,
                             BLOCK_M, BLOCK_N, BLOCK_K, CAST)
            S = tl.where(valid, s * sim * inv_tau, NEG)
            T = tl.where(valid, ts * tsim * inv_tau, NEG)
            diff = tl.where(valid, T - S, 0.0)
            ms_new = tl.maximum(ms_i, tl.max(S, 1))
            ls_i = ls_i * tl.exp(ms_i - ms_new) + tl.sum(tl.exp(S - ms_new[:, None]), 1)
            ms_i = ms_new
            mt_new = tl.maximum(mt_i, tl.max(T, 1))
            alpha = tl.exp(mt_i - mt_new)
            pt = tl.exp(T - mt_new[:, None])
            lt_i = lt_i * alpha + tl.sum(pt, 1)
            wt_i = wt_i * alpha + tl.sum(pt * diff, 1)
            mt_i = mt_new
            # column partials of this row block: student (max, sum), teacher (max, sum, weighted diff)
            cms = tl.max(S, 0)
            cmt = tl.max(T, 0)
            pct = tl.exp(T - cmt[None, :])
            base = pid.to(tl.int64) * 5 * N + cols
            tl.store(kd_col_ptr + base, cms, mask=cmask)
            tl.store(kd_col_ptr + base + N, tl.sum(tl.exp(S - cms[None, :]), 0), mask=cmask)
            tl.store(kd_col_ptr + base + 2 * N, cmt, mask=cmask)
            tl.store(kd_col_ptr + base + 3 * N, tl.sum(pct, 0), mask=cmask)
            tl.store(kd_col_ptr + base + 4 * N, tl.sum(pct * diff, 0), mask=cmask)
    tl.store(row_lse_ptr + rows, m_i + tl.log(l_i), mask=rmask)
    if HAS_KD:
        slse = ms_i + tl.log(ls_i)
        tlse = mt_i + tl.log(lt_i)
        r64 = rows.to(tl.int64)
        tl.store(kd_row_ptr + r64, slse, mask=rmask)
        tl.store(kd_row_ptr + M + r64, tlse, mask=rmask)
        tl.store(kd_row_ptr + 2 * M + r64, wt_i / lt_i - tlse + slse, mask=rmask)


@triton.jit
def _bwd_kernel(a_ptr, b_ptr, ta_ptr, tb_ptr, scale_ptr, bias_ptr, tscale_ptr, grad_ptr,
                row_lse_ptr, col_lse_ptr, kd_row_ptr, kd_col_lse_ptr,
                da_ptr, db_ptr, dscale_part_ptr, dbias_part_ptr,
                M, N, D, DT, stride_a, stride_b, stride_ta, stride_tb, offset, inv_tau, tau,
                SYMMETRIC: tl.constexpr, HAS_KD: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                BLOCK_D: tl.constexpr, CAST: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    rmask = rows < M
    s = tl.load(scale_ptr).to(tl.float32)
    bias = tl.load(bias_ptr).to(tl.float32)
    g_clip = tl.load(grad_ptr).to(tl.float32)
    row_lse = tl.load(row_lse_ptr + rows, mask=rmask, other=0.0)
    if HAS_KD:
        g_kd = tl.load(grad_ptr + 1).to(tl.float32)
        ts = tl.load(tscale_ptr).to(tl.float32)
        srow = tl.load(kd_row_ptr + rows, mask=rmask, other=0.0)
        trow = tl.load(kd_row_ptr + M + rows, mask=rmask, other=0.0)
    dsc = tl.zeros((BLOCK_M,), tl.float32)
    dbi = tl.zeros((BLOCK_M,), tl.float32)
    for n0 in range(0, N, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        cmask = cols < N
        valid = rmask[:, None] & cmask[None, :]
        sim = _sim_tile(a_ptr, b_ptr, rows, cols, rmask, cmask, D, stride_a, stride_b,
                        BLOCK_M, BLOCK_N, BLOCK_K, CAST)
        logits = s * sim + bias
        # d loss / d logits for the contrastive term(s)
        if SYMMETRIC:
            col_lse = tl.load(col_lse_ptr + cols, mask=cmask, other=0.0)
            G = (tl.exp(logits - row_lse[:, None]) + tl.exp(logits - col_lse[None, :])) * (0.5 / M)
            G = G - tl.where(rows[:, None] == cols[None, :], 1.0 / M, 0.0)
        else:
            G = tl.exp(logits - row_lse[:, None]) * (1.0 / M)
            G = G - tl.where(rows[:, None] + offset == cols[None, :], 1.0 / M, 0.0)
        G = tl.where(valid, G * g_clip, 0.0)
        dbi += tl.sum(G, 1)  # the bias enters the contrastive logits only
        if HAS_KD:
            tsim = _sim_tile(ta_ptr, tb_ptr, rows, cols, rmask, cmask, DT, stride_ta, stride_tb,
                             BLOCK_M, BLOCK_N, BLOCK_K, CAST)
            S = s * sim * inv_tau
            T = ts * tsim * inv_tau
            scol = tl.load(kd_col_lse_ptr + cols, mask=cmask, other=0.0)
            tcol = tl.load(kd_col_lse_ptr + N + cols, mask=cmask, other=0.0)
            Gk = (tl.exp(S - srow[:, None]) - tl.exp(T - trow[:, None])
                  + tl.exp(S - scol[None, :]) - tl.exp(T - tcol[None, :]))
            G = tl.where(valid, G + Gk * (g_kd * tau * 0.5 / M), 0.0)  # τ²·½·1/B, 1/τ for raw logits
        dsc += tl.sum(G * sim, 1)
        _accumulate_grads(G * s, a_ptr, b_ptr, da_ptr, db_ptr, rows, cols, rmask, cmask, D,
                          stride_a, stride_b, BLOCK_D, CAST)
    tl.store(dscale_part_ptr + rows, dsc, mask=rmask)
    tl.store(dbias_part_ptr + rows, dbi, mask=rmask)


# ---------------------------------------------------------------------------- host side

FWD_OPTIONS = {"num_warps": 4, "num_stages": 2}   # launch options; compile_check uses the same
BWD_OPTIONS = {"num_warps": 8, "num_stages": 2}


def _blocks(M: int, N: int, D: int) -> dict:
    if INTERPRET:  # small tiles keep the interpreter quick
        return dict(BLOCK_M=32, BLOCK_N=32, BLOCK_K=32, BLOCK_D=32)
    return dict(BLOCK_M=128, BLOCK_N=64, BLOCK_K=64, BLOCK_D=64)


def _prep(x: torch.Tensor) -> torch.Tensor:
    if x.stride(-1) != 1:
        x = x.contiguous()
    return x


def _scalar(x, like: torch.Tensor) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.tensor(float(x), device=like.device)
    return t.reshape(()).to(device=like.device, dtype=torch.float32)


def _col_lse(col_max: torch.Tensor, col_sum: torch.Tensor) -> torch.Tensor:
    return torch.logsumexp(col_max + torch.log(col_sum), dim=0)


def fused_forward(a, b, scale, bias, *, symmetric: bool, teacher=None, tau: float = 1.0):
    """Run the forward kernel. Returns a dict of statistics (and KD terms when `teacher`)."""
    M, D = a.shape
    N = b.shape[0]
    cfg = _blocks(M, N, D)
    grid = (triton.cdiv(M, cfg["BLOCK_M"]),)
    dev = a.device
    row_lse = torch.empty(M, device=dev, dtype=torch.float32)
    col_max = torch.empty((grid[0], N) if symmetric else (1,), device=dev, dtype=torch.float32)
    col_sum = torch.empty_like(col_max)
    has_kd = teacher is not None
    ta, tb, ts = teacher if has_kd else (a, b, scale)
    kd_row = torch.empty((3, M) if has_kd else (1,), device=dev, dtype=torch.float32)
    kd_col = torch.empty((grid[0], 5, N) if has_kd else (1,), device=dev, dtype=torch.float32)
    _fwd_kernel[grid](a, b, ta, tb, scale, bias, ts, row_lse, col_max, col_sum, kd_row, kd_col,
                      M, N, D, ta.shape[1], a.stride(0), b.stride(0), ta.stride(0), tb.stride(0), 1.0 / tau,
                      SYMMETRIC=symmetric, HAS_KD=has_kd, BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"],
                      BLOCK_K=cfg["BLOCK_K"], CAST=INTERPRET, **FWD_OPTIONS)
    out = {"row_lse": row_lse}
    if symmetric:
        out["col_lse"] = _col_lse(col_max, col_sum)
    if has_kd:
        out["kd_row"] = kd_row
        cms, css, cmt, cst, cwt = kd_col.unbind(1)
        s_col, t_col = _col_lse(cms, css), _col_lse(cmt, cst)
        weights = torch.exp(cmt - t_col[None, :])  # rescale each block's teacher sums to the global lse
        col_term = (cwt * weights).sum(0) - t_col + s_col
        out["kd_col_lse"] = torch.stack([s_col, t_col])
        out["kd"] = 0.5 * (kd_row[2].sum() + col_term.sum()) / M * tau**2
    return out


def fused_backward(a, b, scale, bias, grads, stats, *, symmetric: bool, offset: int = 0, teacher=None,
                   tau: float = 1.0):
    M, D = a.shape
    N = b.shape[0]
    cfg = _blocks(M, N, D)
    grid = (triton.cdiv(M, cfg["BLOCK_M"]),)
    da = torch.zeros(M, D, device=a.device, dtype=torch.float32)
    db = torch.zeros(N, D, device=a.device, dtype=torch.float32)
    dscale = torch.empty(M, device=a.device, dtype=torch.float32)
    dbias = torch.empty(M, device=a.device, dtype=torch.float32)
    has_kd = teacher is not None
    ta, tb, ts = teacher if has_kd else (a, b, scale)
    dummy = stats["row_lse"]
    _bwd_kernel[grid](a, b, ta, tb, scale, bias, ts, grads, stats["row_lse"], stats.get("col_lse", dummy),
                      stats.get("kd_row", dummy), stats.get("kd_col_lse", dummy), da, db, dscale, dbias,
                      M, N, D, ta.shape[1], a.stride(0), b.stride(0), ta.stride(0), tb.stride(0), offset,
                      1.0 / tau, tau, SYMMETRIC=symmetric, HAS_KD=has_kd, CAST=INTERPRET, **cfg, **BWD_OPTIONS)
    return da, db, dscale.sum(), dbias.sum()


class _ContrastiveKD(torch.autograd.Function):
    """Symmetric CLIP loss, and with a teacher also the fused similarity-KD term."""

    @staticmethod
    def forward(ctx, image, text, scale, bias, t_image, t_text, t_scale, tau):
        image, text = _prep(image), _prep(text)
        teacher = None if t_image is None else (_prep(t_image.detach()), _prep(t_text.detach()), t_scale.detach())
        stats = fused_forward(image, text, scale, bias, symmetric=True, teacher=teacher, tau=tau)
        diag = scale * (image.float() * text.float()).sum(1) + bias
        clip = 0.5 * (stats["row_lse"].mean() + stats["col_lse"].mean()) - diag.mean()
        ctx.save_for_backward(image, text, scale, bias, *(teacher or ()), *(v for k, v in sorted(stats.items()) if k != "kd"))
        ctx.keys = [k for k in sorted(stats) if k != "kd"]
        ctx.has_kd, ctx.tau = teacher is not None, tau
        return clip, stats.get("kd", torch.zeros((), device=image.device))

    @staticmethod
    def backward(ctx, g_clip, g_kd):
        saved = list(ctx.saved_tensors)
        image, text, scale, bias = saved[:4]
        teacher = tuple(saved[4:7]) if ctx.has_kd else None
        stats = dict(zip(ctx.keys, saved[7 if ctx.has_kd else 4:]))
        grads = torch.stack([g_clip.float().reshape(()),
                             (g_kd if g_kd is not None else torch.zeros_like(g_clip)).float().reshape(())])
        da, db, dscale, dbias = fused_backward(image, text, scale, bias, grads, stats, symmetric=True,
                                               teacher=teacher, tau=ctx.tau)
        return (da.to(image.dtype), db.to(text.dtype), dscale.reshape(scale.shape).to(scale.dtype),
                dbias.reshape(bias.shape).to(bias.dtype), None, None, None, None)


class _RowContrastive(torch.autograd.Function):
    """Row-only InfoNCE of local rows `a` against all columns `b`, targets at i + offset."""

    @staticmethod
    def forward(ctx, a, b, scale, bias, offset):
        a, b = _prep(a), _prep(b)
        stats = fused_forward(a, b, scale, bias, symmetric=False)
        target = b[offset:offset + a.shape[0]]
        diag = scale * (a.float() * target.float()).sum(1) + bias
        ctx.save_for_backward(a, b, scale, bias, stats["row_lse"])
        ctx.offset = offset
        return (stats["row_lse"] - diag).mean()

    @staticmethod
    def backward(ctx, grad):
        a, b, scale, bias, row_lse = ctx.saved_tensors
        grads = torch.stack([grad.float().reshape(()), torch.zeros((), device=a.device)])
        da, db, dscale, dbias = fused_backward(a, b, scale, bias, grads, {"row_lse": row_lse},
                                               symmetric=False, offset=ctx.offset)
        return (da.to(a.dtype), db.to(b.dtype), dscale.reshape(scale.shape).to(scale.dtype),
                dbias.reshape(bias.shape).to(bias.dtype), None)


def contrastive_triton(image, text, logit_scale, logit_bias=None):
    scale = _scalar(logit_scale, image)
    bias = _scalar(0.0 if logit_bias is None else logit_bias, image)
    clip, _ = _ContrastiveKD.apply(image, text, scale, bias, None, None, None, 1.0)
    return clip


def contrastive_kd_triton(s_image, s_text, s_scale, t_image, t_text, t_scale, temperature=1.0):
    """(CLIP InfoNCE of the student, similarity-KD to the teacher) from one fused loop."""
    scale = _scalar(s_scale, s_image)
    bias = _scalar(0.0, s_image)
    return _ContrastiveKD.apply(s_image, s_text, scale, bias, t_image, t_text, _scalar(t_scale, t_image),
                                float(temperature))


def row_contrastive_triton(a, b, logit_scale, logit_bias=None, offset: int = 0):
    return _RowContrastive.apply(a, b, _scalar(logit_scale, a), _scalar(0.0 if logit_bias is None else logit_bias, a),
                                 int(offset))
