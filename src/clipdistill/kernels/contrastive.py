"""Fused Triton kernels for CLIP InfoNCE, with optional fused similarity KD (CRD), the
row-only loss of the distributed local-loss mode, and SigLIP's gradient tiles.

No B×B tensor is ever materialised; logit tiles are recomputed from the feature matrices.
The design and its roofline are in docs/kernels.md. In short:

forward  (persistent grid of P programs, each owning row blocks p, p+P, …) — online row
         log-sum-exp over column tiles, and per program a running column (max, sum-exp)
         (with KD also the teacher-weighted log-ratio) merged in place into its own row of
         a [P, stats, N] buffer: no atomics, O(P·N) memory; a tiny torch reduction turns
         the P partials into column log-sum-exps. 2·B²·D FLOPs (+2·B²·D_t with KD).
backward (per column chunk of C columns) — a 2-D grid recomputes each logit tile and
         writes dℓ/dlogits for the chunk as a [B, C] matrix G (16-bit for 16-bit inputs),
         then d(image) += G·text_c and d(text)_c = Gᵀ·image are plain cuBLAS matmuls with
         fp32 output: deterministic, no atomics, O(B·C) extra memory. 6·B²·D FLOPs.

Precision. fp32 operands run as IEEE fp32 in `tl.dot` unless `allow_tf32=True`. Before the
16-bit cast, G is multiplied by R = 2¹⁴·B/c (c = the largest grad_output coefficient), so its
entries lie in [−2¹⁵, 2¹⁵] instead of ~s/B² (which underflows fp16 at large B); the
matmul results are multiplied by 1/R in fp32. Under the interpreter (CPU) operand tiles are
cast to fp32 first, because the interpreter's bf16 dot is wrong; products of 16-bit values
are exact in fp32, so this matches the GPU's fp32-accumulated 16-bit dot, and G is still
rounded to 16 bits by its store. Offsets are int64.
"""

from __future__ import annotations

import contextlib
import os

import torch
import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
NEG = tl.constexpr(-1.0e30)  # masked logits: finite, so masked lanes never make inf − inf
GAMMA = 2.0**14  # G·R ∈ [−2·GAMMA, 2·GAMMA] ⊂ fp16's range (65504); typical entries ~0.25 stay normal
MODE_CLIP, MODE_ROWS, MODE_SIGLIP = 0, 1, 2


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
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, CAST: tl.constexpr,
              IEEE: tl.constexpr):
    """fp32 tile a[rows] @ b[cols]ᵀ, reduced over D in BLOCK_K chunks. IEEE: fp32 operands
    stay fp32 (tl.dot would otherwise round them to TF32's 10-bit mantissa)."""
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    ks = tl.arange(0, BLOCK_K)
    for k0 in range(0, D, BLOCK_K):
        a = _load_tile(a_ptr, rows, rmask, k0 + ks, D, stride_a, CAST)
        b = _load_tile(b_ptr, cols, cmask, k0 + ks, D, stride_b, CAST)
        if IEEE:
            acc = tl.dot(a, tl.trans(b), acc, input_precision="ieee")
        else:
            acc = tl.dot(a, tl.trans(b), acc)
    return acc


@triton.jit
def _fwd_kernel(a_ptr, b_ptr, ta_ptr, tb_ptr, scale_ptr, bias_ptr, tscale_ptr,
                row_lse_ptr, col_part_ptr, kd_row_ptr, loss_part_ptr,
                M, N, D, DT, stride_a, stride_b, stride_ta, stride_tb, inv_tau, NPROG,
                MODE: tl.constexpr, HAS_KD: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, CAST: tl.constexpr,
                IEEE: tl.constexpr):
    """Row statistics per row, column partials per program (MODE_CLIP), or SigLIP's loss per row."""
    pid = tl.program_id(0)
    s = tl.load(scale_ptr).to(tl.float32)
    bias = tl.load(bias_ptr).to(tl.float32)
    if HAS_KD:
        ts = tl.load(tscale_ptr).to(tl.float32)
    NSTAT: tl.constexpr = 7 if HAS_KD else 2
    part = col_part_ptr + pid.to(tl.int64) * NSTAT * N
    for rb in range(pid, tl.cdiv(M, BLOCK_M), NPROG):
        rows = rb * BLOCK_M + tl.arange(0, BLOCK_M)
        rmask = rows < M
        m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
        l_i = tl.zeros((BLOCK_M,), tl.float32)
        if HAS_KD:
            ms_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)   # student row stats at τ
            ls_i = tl.zeros((BLOCK_M,), tl.float32)
            mt_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)   # teacher row stats at τ
            lt_i = tl.zeros((BLOCK_M,), tl.float32)
            wt_i = tl.zeros((BLOCK_M,), tl.float32)                  # Σ_j e^{T−mt} (T − S)
        for n0 in range(0, N, BLOCK_N):
            cols = n0 + tl.arange(0, BLOCK_N)
            cmask = cols < N
            valid = rmask[:, None] & cmask[None, :]
            sim = _sim_tile(a_ptr, b_ptr, rows, cols, rmask, cmask, D, stride_a, stride_b,
                            BLOCK_M, BLOCK_N, BLOCK_K, CAST, IEEE)
            if MODE == 2:  # SigLIP: −log σ(z·x) = softplus(−z·x), computed stably
                z = tl.where(rows[:, None] == cols[None, :], 1.0, -1.0)
                x = tl.where(valid, z * (s * sim + bias), 0.0)
                l_i += tl.sum(tl.where(valid, tl.maximum(-x, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(x))), 0.0), 1)
            else:
                logits = tl.where(valid, s * sim + bias, NEG)
                m_new = tl.maximum(m_i, tl.max(logits, 1))
                l_i = l_i * tl.exp(m_i - m_new) + tl.sum(tl.exp(logits - m_new[:, None]), 1)
                m_i = m_new
            if MODE == 0:
                off = cols.to(tl.int64)
                cm_old = tl.load(part + off, mask=cmask, other=0.0)
                cm_new = tl.maximum(cm_old, tl.max(logits, 0))
                cs = tl.load(part + N + off, mask=cmask, other=0.0) * tl.exp(cm_old - cm_new) \
                    + tl.sum(tl.exp(logits - cm_new[None, :]), 0)
                tl.store(part + off, cm_new, mask=cmask)
                tl.store(part + N + off, cs, mask=cmask)
            if HAS_KD:
                tsim = _sim_tile(ta_ptr, tb_ptr, rows, cols, rmask, cmask, DT, stride_ta, stride_tb,
                                 BLOCK_M, BLOCK_N, BLOCK_K, CAST, IEEE)
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
                # running column stats of this program: student (max, sum), teacher (max, sum, weighted diff)
                off = cols.to(tl.int64)
                sm_old = tl.load(part + 2 * N + off, mask=cmask, other=0.0)
                sm_new = tl.maximum(sm_old, tl.max(S, 0))
                ss = tl.load(part + 3 * N + off, mask=cmask, other=0.0) * tl.exp(sm_old - sm_new) \
                    + tl.sum(tl.exp(S - sm_new[None, :]), 0)
                tm_old = tl.load(part + 4 * N + off, mask=cmask, other=0.0)
                tm_new = tl.maximum(tm_old, tl.max(T, 0))
                beta = tl.exp(tm_old - tm_new)
                pct = tl.exp(T - tm_new[None, :])
                tsum = tl.load(part + 5 * N + off, mask=cmask, other=0.0) * beta + tl.sum(pct, 0)
                tw = tl.load(part + 6 * N + off, mask=cmask, other=0.0) * beta + tl.sum(pct * diff, 0)
                tl.store(part + 2 * N + off, sm_new, mask=cmask)
                tl.store(part + 3 * N + off, ss, mask=cmask)
                tl.store(part + 4 * N + off, tm_new, mask=cmask)
                tl.store(part + 5 * N + off, tsum, mask=cmask)
                tl.store(part + 6 * N + off, tw, mask=cmask)
        r64 = rows.to(tl.int64)
        if MODE == 2:
            tl.store(loss_part_ptr + r64, l_i, mask=rmask)
        else:
            tl.store(row_lse_ptr + r64, m_i + tl.log(l_i), mask=rmask)
        if HAS_KD:
            slse = ms_i + tl.log(ls_i)
            tlse = mt_i + tl.log(lt_i)
            tl.store(kd_row_ptr + r64, slse, mask=rmask)
            tl.store(kd_row_ptr + M + r64, tlse, mask=rmask)
            tl.store(kd_row_ptr + 2 * M + r64, wt_i / lt_i - tlse + slse, mask=rmask)


@triton.jit
def _grad_kernel(a_ptr, b_ptr, ta_ptr, tb_ptr, scale_ptr, bias_ptr, tscale_ptr, coef_ptr,
                 row_lse_ptr, col_lse_ptr, kd_row_ptr, kd_col_lse_ptr, g_ptr, part_ptr,
                 M, N, D, DT, stride_a, stride_b, stride_ta, stride_tb, stride_g, n_start, width, offset,
                 inv_tau,
                 MODE: tl.constexpr, HAS_KD: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, CAST: tl.constexpr,
                 IEEE: tl.constexpr):
    """One [BLOCK_M, BLOCK_N] tile of R·dℓ/dlogits for columns n_start … n_start+width, stored
    (in g_ptr's dtype) at G[rows, cols − n_start]; per-tile partial sums of G·sim (→ d scale)
    and of the contrastive part of G (→ d bias) go to part_ptr[0|1, pid_m, pid_n]."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    local = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = n_start + local
    rmask = rows < M
    cmask = (local < width) & (cols < N)
    valid = rmask[:, None] & cmask[None, :]
    s = tl.load(scale_ptr).to(tl.float32)
    bias = tl.load(bias_ptr).to(tl.float32)
    k_main = tl.load(coef_ptr)  # R·grad_output/B for the contrastive (or SigLIP) term
    sim = _sim_tile(a_ptr, b_ptr, rows, cols, rmask, cmask, D, stride_a, stride_b,
                    BLOCK_M, BLOCK_N, BLOCK_K, CAST, IEEE)
    logits = s * sim + bias
    if MODE == 0:  # dℓ/dlogits·B = (P + Q)/2 − I
        row_lse = tl.load(row_lse_ptr + rows, mask=rmask, other=0.0)
        col_lse = tl.load(col_lse_ptr + cols, mask=cmask, other=0.0)
        G = 0.5 * (tl.exp(logits - row_lse[:, None]) + tl.exp(logits - col_lse[None, :]))
        G = G - tl.where(rows[:, None] == cols[None, :], 1.0, 0.0)
    elif MODE == 1:  # rows only: P − I shifted by the rank's offset
        row_lse = tl.load(row_lse_ptr + rows, mask=rmask, other=0.0)
        G = tl.exp(logits - row_lse[:, None]) - tl.where(rows[:, None] + offset == cols[None, :], 1.0, 0.0)
    else:  # SigLIP: −z σ(−z·logit)
        z = tl.where(rows[:, None] == cols[None, :], 1.0, -1.0)
        G = -z * tl.sigmoid(-z * logits)
    G = tl.where(valid, G * k_main, 0.0)
    dbi = tl.sum(tl.sum(G, 1), 0)  # the bias enters the contrastive logits only
    if HAS_KD:
        k_kd = tl.load(coef_ptr + 1)  # R·grad_kd·τ/(2B): τ²·½·1/B, and 1/τ for raw logits
        ts = tl.load(tscale_ptr).to(tl.float32)
        tsim = _sim_tile(ta_ptr, tb_ptr, rows, cols, rmask, cmask, DT, stride_ta, stride_tb,
                         BLOCK_M, BLOCK_N, BLOCK_K, CAST, IEEE)
        S = s * sim * inv_tau
        T = ts * tsim * inv_tau
        srow = tl.load(kd_row_ptr + rows, mask=rmask, other=0.0)
        trow = tl.load(kd_row_ptr + M + rows, mask=rmask, other=0.0)
        scol = tl.load(kd_col_lse_ptr + cols, mask=cmask, other=0.0)
        tcol = tl.load(kd_col_lse_ptr + N + cols, mask=cmask, other=0.0)
        Gk = (tl.exp(S - srow[:, None]) - tl.exp(T - trow[:, None])
              + tl.exp(S - scol[None, :]) - tl.exp(T - tcol[None, :]))
        G = tl.where(valid, G + Gk * k_kd, 0.0)
    dsc = tl.sum(tl.sum(G * sim, 1), 0)
    tl.store(g_ptr + rows[:, None].to(tl.int64) * stride_g + local[None, :],
             G.to(g_ptr.dtype.element_ty), mask=valid)
    pidx = pid_m.to(tl.int64) * tl.num_programs(1) + pid_n
    tl.store(part_ptr + 2 * pidx, dsc)
    tl.store(part_ptr + 2 * pidx + 1, dbi)


# ---------------------------------------------------------------------------- host side

FWD_OPTIONS = {"num_warps": 8, "num_stages": 2}   # launch options; compile_check uses the same
GRAD_OPTIONS = {"num_warps": 8, "num_stages": 3}
G_BUDGET_BYTES = 128 * 2**20  # the backward's G chunk: ≤ 128 MiB whatever B (docs/kernels.md)


def blocks(kind: str = "fwd", has_kd: bool = False, half: bool = True) -> dict:
    """Tile sizes per kernel, chosen with compile_check and the roofline (docs/kernels.md).
    kind: "fwd" or "grad"; half: 16-bit operands."""
    if INTERPRET:  # small tiles keep the interpreter quick
        return dict(BLOCK_M=32, BLOCK_N=32, BLOCK_K=32)
    if has_kd:  # a student and a teacher tile and 7 column statistics: narrower tiles
        return dict(BLOCK_M=128, BLOCK_N=32, BLOCK_K=64)
    # 128×128 tiles: 64 FLOP per byte loaded from L2 against 43 at 128×64 — the forward and
    # grad kernels are L2-bound otherwise (docs/kernels.md); costs the forward a ≤ 16-byte
    # spill (documented). IEEE fp32 runs on FMAs and keeps 128×64
    return dict(BLOCK_M=128, BLOCK_N=128 if half else 64, BLOCK_K=64)


def num_programs(M: int, device: torch.device) -> int:
    """Persistent forward grid: 2 programs per SM (each holds one column-stat row of N)."""
    bm = blocks()["BLOCK_M"]
    if device.type == "cuda":
        cap = 2 * torch.cuda.get_device_properties(device).multi_processor_count
    else:
        cap = 4  # interpreter: several row blocks per program, so the in-place merge is exercised
    return max(1, min(triton.cdiv(M, bm), cap))


def chunk_width(M: int, g_dtype: torch.dtype) -> int:
    """Columns per backward chunk: G [M, C] within G_BUDGET_BYTES, a multiple of BLOCK_N."""
    if INTERPRET:
        return 48  # several chunks, the last one partial, and tiles straddling a chunk edge
    bn = 128  # a multiple of every grad kernel's BLOCK_N
    c = G_BUDGET_BYTES // (M * torch.empty((), dtype=g_dtype).element_size())
    return max(bn, min(8192, c // bn * bn))


def _prep(x: torch.Tensor) -> torch.Tensor:
    if x.stride(-1) != 1:
        x = x.contiguous()
    return x


def _scalar(x, like: torch.Tensor) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.tensor(float(x), device=like.device)
    return t.reshape(()).to(device=like.device, dtype=torch.float32)


def _ieee(x: torch.Tensor, allow_tf32: bool) -> bool:
    return x.dtype == torch.float32 and not allow_tf32


@contextlib.contextmanager
def _cublas_tf32(allow: bool):
    """fp32 cuBLAS matmuls follow the same allow_tf32 choice as the kernels."""
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = allow
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


def mm32(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """x @ y with fp32 output and fp32 accumulation. On CPU, 16-bit operands are widened to
    fp32 first: their products are exact there, which is what the GPU's tensor cores compute."""
    if x.is_cuda and x.dtype in (torch.bfloat16, torch.float16):
        try:
            return torch.mm(x, y, out_dtype=torch.float32)
        except (RuntimeError, TypeError):  # a torch/cuBLAS without fp32 output for 16-bit: same numbers, slower
            pass
    return x.float() @ y.float()


def grad_scale(M: int, g_main: torch.Tensor, g_kd: torch.Tensor | None = None, tau: float = 1.0):
    """(coefficients [k_main, k_kd] for the G kernel, 1/R). G·R, with R = GAMMA·M/c and c the
    largest |grad_output| weight, has entries within ±2·GAMMA whatever B: no fp16 underflow
    (G ≈ s/B² unscaled) and no overflow. Device tensors: no host sync."""
    g_main = g_main.float().reshape(())
    g_kd = torch.zeros_like(g_main) if g_kd is None else g_kd.float().reshape(())
    c = torch.maximum(g_main.abs(), g_kd.abs() * tau).clamp_min(1e-30)
    coef = torch.stack([g_main * GAMMA / c, g_kd * (0.5 * tau) * GAMMA / c])
    return coef, c / (GAMMA * M)


def _col_lse(col_max: torch.Tensor, col_sum: torch.Tensor) -> torch.Tensor:
    return torch.logsumexp(col_max + torch.log(col_sum), dim=0)


def fused_forward(a, b, scale, bias, *, mode: int = MODE_CLIP, teacher=None, tau: float = 1.0,
                  allow_tf32: bool = False) -> dict:
    """Run the forward kernel. Returns a dict of statistics (and KD terms when `teacher`)."""
    M, D = a.shape
    N = b.shape[0]
    has_kd = teacher is not None
    cfg = blocks("fwd", has_kd, a.element_size() == 2)
    P = num_programs(M, a.device)
    dev = a.device
    nstat = 7 if has_kd else 2
    row_lse = torch.empty(M if mode != MODE_SIGLIP else 1, device=dev, dtype=torch.float32)
    loss_part = torch.empty(M if mode == MODE_SIGLIP else 1, device=dev, dtype=torch.float32)
    if mode == MODE_CLIP:
        # running (max, sum) pairs start at (−inf, 0): the first merge takes the tile's own stats
        col_part = torch.zeros(P, nstat, N, device=dev, dtype=torch.float32)
        col_part[:, [0, 2, 4] if has_kd else [0]] = float("-inf")
    else:
        col_part = torch.empty(1, device=dev, dtype=torch.float32)
    ta, tb, ts = teacher if has_kd else (a, b, scale)
    kd_row = torch.empty((3, M) if has_kd else (1,), device=dev, dtype=torch.float32)
    _fwd_kernel[(P,)](a, b, ta, tb, scale, bias, ts, row_lse, col_part, kd_row, loss_part,
                      M, N, D, ta.shape[1], a.stride(0), b.stride(0), ta.stride(0), tb.stride(0), 1.0 / tau, P,
                      MODE=mode, HAS_KD=has_kd, CAST=INTERPRET, IEEE=_ieee(a, allow_tf32), **cfg, **FWD_OPTIONS)
    if mode == MODE_SIGLIP:
        return {"loss_part": loss_part}
    out = {"row_lse": row_lse}
    if mode == MODE_CLIP:
        out["col_lse"] = _col_lse(col_part[:, 0], col_part[:, 1])
    if has_kd:
        out["kd_row"] = kd_row
        cms, css, cmt, cst, cwt = col_part[:, 2:].unbind(1)
        s_col, t_col = _col_lse(cms, css), _col_lse(cmt, cst)
        weights = torch.exp(cmt - t_col[None, :])  # rescale each program's teacher sums to the global lse
        col_term = (cwt * weights).sum(0) - t_col + s_col
        out["kd_col_lse"] = torch.stack([s_col, t_col])
        out["kd"] = 0.5 * (kd_row[2].sum() + col_term.sum()) / M * tau**2
    return out


def fused_backward(a, b, scale, bias, coef, unscale, stats, *, mode: int = MODE_CLIP, offset: int = 0,
                   teacher=None, tau: float = 1.0, allow_tf32: bool = False, scaled: bool = True,
                   out_dtype=torch.float32):
    """(d a, d b) in out_dtype, (d scale, d bias) in fp32. `coef`, `unscale` from grad_scale.
    scaled=False stores G without the R factor (only to show, in tests, what the scaling prevents)."""
    M, D = a.shape
    N = b.shape[0]
    has_kd = teacher is not None
    cfg = blocks("grad", has_kd, a.element_size() == 2)
    dev = a.device
    g_dtype = a.dtype if a.dtype in (torch.bfloat16, torch.float16) else torch.float32
    C = chunk_width(M, g_dtype)
    G = torch.empty(M, C, device=dev, dtype=g_dtype)
    gm, gn = triton.cdiv(M, cfg["BLOCK_M"]), triton.cdiv(C, cfg["BLOCK_N"])
    part = torch.zeros(triton.cdiv(N, C), gm * gn, 2, device=dev, dtype=torch.float32)  # a partial chunk leaves 0s
    ta, tb, ts = teacher if has_kd else (a, b, scale)
    if not scaled:
        coef, unscale = coef * unscale, torch.ones_like(unscale)
    dummy = stats.get("row_lse", coef)
    k = scale.float() * unscale
    da = torch.zeros(M, D, device=dev, dtype=torch.float32)  # accumulated over chunks
    db = torch.empty(N, D, device=dev, dtype=out_dtype)      # written once per chunk
    with _cublas_tf32(allow_tf32) if dev.type == "cuda" else contextlib.nullcontext():
        for i, n0 in enumerate(range(0, N, C)):
            w = min(C, N - n0)
            _grad_kernel[(gm, triton.cdiv(w, cfg["BLOCK_N"]))](
                a, b, ta, tb, scale, bias, ts, coef, dummy, stats.get("col_lse", dummy),
                stats.get("kd_row", dummy), stats.get("kd_col_lse", dummy), G, part[i],
                M, N, D, ta.shape[1], a.stride(0), b.stride(0), ta.stride(0), tb.stride(0), G.stride(0), n0, w, offset,
                1.0 / tau, MODE=mode, HAS_KD=has_kd, CAST=INTERPRET, IEEE=_ieee(a, allow_tf32), **cfg, **GRAD_OPTIONS)
            Gc = G[:, :w]
            da += mm32(Gc, b[n0:n0 + w])
            db[n0:n0 + w] = mm32(Gc.T, a) * k
    sums = part.sum((0, 1))
    return (da * k).to(out_dtype), db, sums[0] * unscale, sums[1] * unscale


class _ContrastiveKD(torch.autograd.Function):
    """Symmetric CLIP loss, and with a teacher also the fused similarity-KD term."""

    @staticmethod
    def forward(ctx, image, text, scale, bias, t_image, t_text, t_scale, tau, allow_tf32):
        image, text = _prep(image), _prep(text)
        teacher = None if t_image is None else (_prep(t_image.detach()), _prep(t_text.detach()), t_scale.detach())
        stats = fused_forward(image, text, scale, bias, teacher=teacher, tau=tau, allow_tf32=allow_tf32)
        diag = scale * (image.float() * text.float()).sum(1) + bias
        clip = 0.5 * (stats["row_lse"].mean() + stats["col_lse"].mean()) - diag.mean()
        keys = sorted(k for k in stats if k != "kd")
        ctx.save_for_backward(image, text, scale, bias, *(teacher or ()), *(stats[k] for k in keys))
        ctx.keys, ctx.has_kd, ctx.tau, ctx.allow_tf32 = keys, teacher is not None, tau, allow_tf32
        return clip, stats.get("kd", torch.zeros((), device=image.device))

    @staticmethod
    def backward(ctx, g_clip, g_kd):
        saved = list(ctx.saved_tensors)
        image, text, scale, bias = saved[:4]
        teacher = tuple(saved[4:7]) if ctx.has_kd else None
        stats = dict(zip(ctx.keys, saved[7 if ctx.has_kd else 4:]))
        coef, unscale = grad_scale(len(image), g_clip, g_kd if ctx.has_kd else None, ctx.tau)
        da, db, dscale, dbias = fused_backward(image, text, scale, bias, coef, unscale, stats, teacher=teacher,
                                               tau=ctx.tau, allow_tf32=ctx.allow_tf32, out_dtype=image.dtype)
        return (da.to(image.dtype), db.to(text.dtype), dscale.reshape(scale.shape).to(scale.dtype),
                dbias.reshape(bias.shape).to(bias.dtype), None, None, None, None, None)


class _RowContrastive(torch.autograd.Function):
    """Row-only InfoNCE of local rows `a` against all columns `b`, targets at i + offset."""

    @staticmethod
    def forward(ctx, a, b, scale, bias, offset, allow_tf32):
        a, b = _prep(a), _prep(b)
        stats = fused_forward(a, b, scale, bias, mode=MODE_ROWS, allow_tf32=allow_tf32)
        target = b[offset:offset + a.shape[0]]
        diag = scale * (a.float() * target.float()).sum(1) + bias
        ctx.save_for_backward(a, b, scale, bias, stats["row_lse"])
        ctx.offset, ctx.allow_tf32 = offset, allow_tf32
        return (stats["row_lse"] - diag).mean()

    @staticmethod
    def backward(ctx, grad):
        a, b, scale, bias, row_lse = ctx.saved_tensors
        coef, unscale = grad_scale(len(a), grad)
        da, db, dscale, dbias = fused_backward(a, b, scale, bias, coef, unscale, {"row_lse": row_lse},
                                               mode=MODE_ROWS, offset=ctx.offset, allow_tf32=ctx.allow_tf32,
                                               out_dtype=a.dtype)
        return (da.to(a.dtype), db.to(b.dtype), dscale.reshape(scale.shape).to(scale.dtype),
                dbias.reshape(bias.shape).to(bias.dtype), None, None)


def contrastive_triton(image, text, logit_scale, logit_bias=None, *, allow_tf32: bool = False):
    scale = _scalar(logit_scale, image)
    bias = _scalar(0.0 if logit_bias is None else logit_bias, image)
    clip, _ = _ContrastiveKD.apply(image, text, scale, bias, None, None, None, 1.0, allow_tf32)
    return clip


def contrastive_kd_triton(s_image, s_text, s_scale, t_image, t_text, t_scale, temperature=1.0, *,
                          allow_tf32: bool = False):
    """(CLIP InfoNCE of the student, similarity-KD to the teacher) from one fused loop."""
    scale = _scalar(s_scale, s_image)
    bias = _scalar(0.0, s_image)
    return _ContrastiveKD.apply(s_image, s_text, scale, bias, t_image, t_text, _scalar(t_scale, t_image),
                                float(temperature), allow_tf32)


def row_contrastive_triton(a, b, logit_scale, logit_bias=None, offset: int = 0, *, allow_tf32: bool = False):
    return _RowContrastive.apply(a, b, _scalar(logit_scale, a), _scalar(0.0 if logit_bias is None else logit_bias, a),
                                 int(offset), allow_tf32)
