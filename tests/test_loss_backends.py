"""Every loss backend (chunked torch, Triton) against an independent float64 reference: loss,
both feature gradients, scale (and bias) gradients, odd shapes, fp32/bf16/fp16 operands,
random grad_output, inputs inside NaN-filled buffers.

Device: the Triton kernels run under the interpreter on CPU (small shapes). With
CLIPDISTILL_GPU_TESTS=1 on a CUDA machine (`make gpu-kernels`) the conftest leaves the
interpreter off and the same tests run on the GPU with the issue's shapes
(B ∈ {131, 4097, 32768}, D ∈ {24, 768}).

Precision on the GPU is emulated on CPU where the interpreter cannot show it: the 16-bit
cast of the backward's G (fp16 underflow without scaling, `test_fp16_*`) and TF32 rounding
of fp32 operands (`test_fp32_tolerance_rejects_tf32`)."""

import math
import os

import pytest
import torch

from clipdistill import losses as L
from clipdistill.losses.distributed import local_contrastive_loss, row_contrastive_loss

GPU = os.environ.get("TRITON_INTERPRET") != "1"
if GPU and not torch.cuda.is_available():
    raise RuntimeError("CLIPDISTILL_GPU_TESTS=1 needs a CUDA device")
DEVICE = "cuda" if GPU else "cpu"

if GPU:
    SHAPES = [(b, d) for b in (131, 4097, 32768) for d in (24, 768)]
    KD_SHAPES = [(131, 24, 40), (4097, 768, 512), (4097, 24, 768)]  # float64 KD references need ~8 B² bytes
else:
    SHAPES = [(257, 40), (64, 768), (19, 33)]
    KD_SHAPES = [(257, 40, 24), (64, 768, 512)]
BACKENDS = ["torch", "triton"]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
DT_IDS = ["fp32", "bf16", "fp16"]


# ------------------------------------------------------------------ independent references (float64)

def ref_contrastive(i, t, s, b=0.0):
    logits = s * i @ t.T + b
    diag = logits.diagonal()
    return 0.5 * ((torch.logsumexp(logits, 1) - diag).mean() + (torch.logsumexp(logits, 0) - diag).mean())


def ref_kd(si, st, ss, ti, tt, ts, tau):
    S, T = ss * si @ st.T / tau, ts * ti @ tt.T / tau

    def kl(p_logits, q_logits):  # Σ_rows Σ_j p (log p − log q) / rows
        logp = p_logits - torch.logsumexp(p_logits, 1, keepdim=True)
        logq = q_logits - torch.logsumexp(q_logits, 1, keepdim=True)
        return (logp.exp() * (logp - logq)).sum() / len(p_logits)

    return tau**2 * 0.5 * (kl(T, S) + kl(T.T, S.T))


def ref_siglip(i, t, s, b):
    logits = s * i @ t.T + b
    z = 2 * torch.eye(len(i), dtype=logits.dtype, device=logits.device) - 1
    return torch.log1p(torch.exp(-z * logits)).sum() / len(i)


# ------------------------------------------------------------------ helpers

def embedded(x: torch.Tensor, dtype) -> torch.Tensor:
    """x (cast to dtype) as a strided view inside a larger NaN-filled buffer."""
    buf = torch.full((x.shape[0] + 5, x.shape[1] + 7), float("nan"), dtype=dtype, device=x.device)
    view = buf[2:2 + x.shape[0], 3:3 + x.shape[1]]
    view.copy_(x.to(dtype))
    return view


def unit(n, d, seed, device=DEVICE):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1).to(device)


def leaf(x, dtype):
    """(the test input as the backend sees it, its float64 twin — of the rounded values — for the reference)."""
    view = embedded(x, dtype).requires_grad_()
    return view, view.detach().double().clone().requires_grad_()


def scalar(v, dtype=torch.float32):
    return torch.tensor(v, dtype=dtype, device=DEVICE, requires_grad=True)


def rel_err(got, want, scale=None) -> float:
    """max |got − want| / max |want|: relative to the largest entry, no absolute floor
    (`scale` replaces max |want| where the exact value is 0)."""
    got, want = got.double(), want.double()
    return ((got - want).abs().max() / (want.abs().max().clamp_min(1e-300) if scale is None else scale)).item()


# Accumulation is fp32 whatever the operands. A 16-bit gradient carries its own rounding
# (half a unit: bf16 2⁻⁹, fp16 2⁻¹² relative) plus that of the 16-bit G in the Triton
# backward: four units of the format, relative to the largest entry.
GRAD_LIMIT = {torch.float32: 1e-5, torch.bfloat16: 8e-3, torch.float16: 2e-3}
SCALAR_LIMIT = 1e-5  # losses and scale/bias gradients are fp32 sums


def close(got, want, dtype, what, scale=None):
    limit = GRAD_LIMIT[dtype] if got.ndim == 2 else SCALAR_LIMIT
    err = rel_err(got, want, scale)
    assert err <= limit, f"{what}: max rel err {err:.2e} > {limit:.0e}"


# ------------------------------------------------------------------ tests

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"B{s[0]}xD{s[1]}")
def test_contrastive_matches_float64(backend, dtype, shape):
    n, d = shape
    (i, i64), (t, t64) = leaf(unit(n, d, 1), dtype), leaf(unit(n, d, 2), dtype)
    s, s64 = scalar(17.3), scalar(17.3, torch.float64)
    b, b64 = scalar(-2.1), scalar(-2.1, torch.float64)
    g = torch.rand((), generator=torch.Generator().manual_seed(n * d)).item() * 3 + 0.1  # random grad_output
    loss = L.contrastive_loss(i, t, s, logit_bias=b, backend=backend)
    (g * loss).backward()
    want = ref_contrastive(i64, t64, s64, b64)
    (g * want).backward()
    close(loss, want, dtype, "loss")
    close(i.grad, i64.grad, dtype, "d image")
    close(t.grad, t64.grad, dtype, "d text")
    close(s.grad, s64.grad, dtype, "d scale")
    close(b.grad, b64.grad, dtype, "d bias", scale=g)  # exactly 0 (rows of softmax sum to 1); Σ|dℓ/dlogits| = 2g
    assert i.grad.dtype == dtype and torch.isfinite(i.grad).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype, tau", [(torch.float32, 1.0), (torch.float32, 2.5), (torch.bfloat16, 2.5)],
                         ids=["fp32-tau1", "fp32-tau2.5", "bf16-tau2.5"])
@pytest.mark.parametrize("shapes", KD_SHAPES, ids=lambda s: f"B{s[0]}xD{s[1]}xDT{s[2]}")
def test_similarity_kd_and_fused_pair_match_float64(backend, dtype, tau, shapes):
    n, ds, dt = shapes  # teacher width ≠ student width
    (si, si64), (st, st64) = leaf(unit(n, ds, 3), dtype), leaf(unit(n, ds, 4), dtype)
    ti, tt = embedded(unit(n, dt, 5), dtype), embedded(unit(n, dt, 6), dtype)
    ss, ss64 = scalar(11.0), scalar(11.0, torch.float64)
    g_clip, g_kd = 0.7, 1.9
    clip, kd = L.contrastive_kd_loss(si, st, ss, ti, tt, 23.0, temperature=tau, backend=backend)
    (g_clip * clip + g_kd * kd).backward()
    want_clip = ref_contrastive(si64, st64, ss64)
    want_kd = ref_kd(si64, st64, ss64, ti.double(), tt.double(), 23.0, tau)
    (g_clip * want_clip + g_kd * want_kd).backward()
    close(clip, want_clip, dtype, "clip")
    assert abs(kd.item() - want_kd.item()) <= SCALAR_LIMIT * max(want_kd.item(), 1e-3), "kd"  # KL → 0 as S → T
    close(si.grad, si64.grad, dtype, "d s_image")
    close(st.grad, st64.grad, dtype, "d s_text")
    close(ss.grad, ss64.grad, dtype, "d s_scale")
    # and the KD term alone through its own API
    si.grad = None
    kd_only = L.similarity_kd_loss(si, st, ss, ti, tt, 23.0, temperature=tau, backend=backend)
    assert abs(kd_only.item() - want_kd.item()) <= SCALAR_LIMIT * max(want_kd.item(), 1e-3), "kd alone"


def test_kd_is_kl_not_soft_cross_entropy():
    """KL and soft-CE share gradients but not values: identical distributions give KL = 0."""
    x = unit(16, 8, 7)
    for backend in ("naive", "torch", "triton"):
        assert L.similarity_kd_loss(x, x, 10.0, x, x, 10.0, backend=backend).abs().item() < 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("shape", SHAPES[:4] if GPU else SHAPES, ids=lambda s: f"B{s[0]}xD{s[1]}")
def test_siglip_matches_float64(backend, dtype, shape):
    n, d = shape
    (i, i64), (t, t64) = leaf(unit(n, d, 8), dtype), leaf(unit(n, d, 9), dtype)
    s, s64 = scalar(10.0), scalar(10.0, torch.float64)
    b, b64 = scalar(-10.0), scalar(-10.0, torch.float64)
    g = 1.7
    (g * (loss := L.siglip_loss(i, t, s, b, backend=backend))).backward()
    (g * (want := ref_siglip(i64, t64, s64, b64))).backward()
    for got, ref, what in ((loss, want, "loss"), (i.grad, i64.grad, "d image"), (t.grad, t64.grad, "d text"),
                           (s.grad, s64.grad, "d scale"), (b.grad, b64.grad, "d bias")):
        close(got, ref, dtype, what)


def test_naive_siglip_matches_float64_with_its_bias():
    """The materialised reference path of siglip_loss, bias included (the other backends have
    their own float64 tests above)."""
    i, t = unit(9, 6, 30).float().requires_grad_(), unit(9, 6, 31).float().requires_grad_()
    s, b = scalar(4.0), scalar(-3.0)
    loss = L.siglip_loss(i, t, s, b, backend="naive")
    loss.backward()
    i64, t64 = i.detach().double().requires_grad_(), t.detach().double().requires_grad_()
    s64, b64 = scalar(4.0, torch.float64), scalar(-3.0, torch.float64)
    ref_siglip(i64, t64, s64, b64).backward()
    close(loss, ref_siglip(i64.detach(), t64.detach(), 4.0, -3.0), torch.float32, "loss")
    for got, ref, what in ((i.grad, i64.grad, "d image"), (t.grad, t64.grad, "d text"), (s.grad, s64.grad, "d scale"),
                           (b.grad, b64.grad, "d bias")):
        close(got, ref, torch.float32, what)


def test_naive_fused_pair_matches_float64():
    """contrastive_kd_loss on the materialised path: (CLIP of the student, KD to the teacher)."""
    si, st, ti, tt = unit(7, 6, 32).float(), unit(7, 6, 33).float(), unit(7, 4, 34).float(), unit(7, 4, 35).float()
    clip, kd = L.contrastive_kd_loss(si, st, 9.0, ti, tt, 5.0, temperature=2.0, backend="naive")
    close(clip, ref_contrastive(si.double(), st.double(), 9.0), torch.float32, "clip")
    close(kd, ref_kd(si.double(), st.double(), 9.0, ti.double(), tt.double(), 5.0, 2.0), torch.float32, "kd")


def test_fused_pair_backend_names_reach_their_implementations(monkeypatch):
    """Equal values on every backend, so only which implementation ran tells them apart."""
    from clipdistill.kernels import contrastive as K
    from clipdistill.losses import similarity_kd as KD

    ran = {}
    monkeypatch.setattr(KD, "contrastive_kd_chunked", lambda *args: ran.update({backend: "fused torch"}) or (0, 0))
    monkeypatch.setattr(K, "contrastive_kd_triton", lambda *args, **kw: ran.update({backend: "fused triton"}) or (0, 0))
    a = unit(3, 4, 36).float()
    for backend in ("naive", "torch", "triton"):
        L.contrastive_kd_loss(a, a, 1.0, a, a, 1.0, backend=backend)
    assert ran == {"torch": "fused torch", "triton": "fused triton"}  # naive: the two materialised losses


@pytest.mark.parametrize("backend", ["naive", "torch", "triton"])
@pytest.mark.parametrize("ranks", [2, 3])
def test_local_loss_mode_equals_single_process(backend, ranks):
    n, d = (1366 if GPU else 24) * ranks, 40
    i = unit(n, d, 10).float().requires_grad_()
    t = unit(n, d, 11).float().requires_grad_()
    s = scalar(13.0)
    local = n // ranks
    total = sum(local_contrastive_loss(i[r * local:(r + 1) * local], t[r * local:(r + 1) * local], s,
                                       all_image=i, all_text=t, rank=r, backend=backend)
                for r in range(ranks)) / ranks
    total.backward()
    grads = (i.grad.clone(), t.grad.clone(), s.grad.clone())
    i64, t64, s64 = i.detach().double().requires_grad_(), t.detach().double().requires_grad_(), scalar(13.0, torch.float64)
    want = ref_contrastive(i64, t64, s64)
    want.backward()
    close(total, want, torch.float32, "loss")
    for got, ref, what in zip(grads, (i64.grad, t64.grad, s64.grad), ("d image", "d text", "d scale")):
        close(got, ref, torch.float32, what)


def test_row_loss_rejects_targets_outside_the_columns():
    with pytest.raises(ValueError, match="offset 9 puts targets outside the 10 columns"):
        row_contrastive_loss(torch.zeros(2, 4), torch.zeros(10, 4), 1.0, offset=9)


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_batch_by_batch_tensor_is_kept_for_backward(backend):
    n, d = 300, 16
    i, t = unit(n, d, 12).float().requires_grad_(), unit(n, d, 13).float().requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda x: saved.append(x.numel()) or x, lambda x: x):
        loss = L.contrastive_kd_loss(i, t, 10.0, unit(n, 8, 1).float(), unit(n, 8, 2).float(), 10.0,
                                     backend=backend)
    sum(loss).backward()
    assert saved and max(saved) < n * n / 4, f"a saved tensor has {max(saved)} elements"


def test_naive_backend_does_keep_the_matrix():
    """The hook above can see B×B tensors: the materialised reference saves them."""
    n = 300
    i, t = unit(n, 16, 12).float().requires_grad_(), unit(n, 16, 13).float().requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda x: saved.append(x.numel()) or x, lambda x: x):
        L.contrastive_loss(i, t, 10.0, backend="naive")
    assert max(saved) >= n * n


def test_auto_backend_on_cpu_is_the_chunked_path():
    assert L.resolve_backend("auto", torch.zeros(2, 2)) == "torch"
    with pytest.raises(ValueError, match="backend must be one of"):
        L.contrastive_loss(torch.zeros(2, 4), torch.zeros(2, 4), 1.0, backend="cuda")


@pytest.mark.parametrize("fn", ["contrastive", "siglip", "kd", "fused"])
def test_bad_shapes_are_named(fn):
    a, b = torch.zeros(4, 8), torch.zeros(5, 8)
    call = {"contrastive": lambda: L.contrastive_loss(a, b, 1.0),
            "siglip": lambda: L.siglip_loss(a, torch.zeros(4), 1.0, 0.0),
            "kd": lambda: L.similarity_kd_loss(a, a, 1.0, b, b, 1.0),
            "fused": lambda: L.contrastive_kd_loss(a, a, 1.0, b, b, 1.0)}[fn]
    name = {"contrastive": "contrastive_loss", "siglip": "siglip_loss", "kd": "similarity_kd_loss",
            "fused": "contrastive_kd_loss"}[fn]
    with pytest.raises(ValueError, match=rf"^{name}\b.*(shapes|2-D|batch sizes differ)"):
        call()


def test_large_logits_stay_finite():
    """Online log-sum-exp: scale 100 on unit vectors does not overflow."""
    i, t = unit(70, 12, 14).float(), unit(70, 12, 15).float()
    for backend in ("torch", "triton"):
        loss = L.contrastive_loss(i, t, 100.0, backend=backend)
        assert math.isfinite(loss.item())
        assert loss.item() == pytest.approx(L.contrastive_loss(i, t, 100.0, backend="naive").item(), rel=1e-5)


def test_backward_is_deterministic():
    """No atomics: two backward passes give bit-identical gradients."""
    n, d = (4097, 768) if GPU else (97, 40)
    grads = []
    for _ in range(2):
        i, t = unit(n, d, 16).bfloat16().requires_grad_(), unit(n, d, 17).bfloat16().requires_grad_()
        L.contrastive_kd_loss(i, t, 14.0, unit(n, 24, 1).bfloat16(), unit(n, 24, 2).bfloat16(), 20.0,
                              backend="triton")[0].backward()
        grads.append((i.grad, t.grad))
    assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])


# ------------------------------------------------------------------ GPU rounding, emulated on CPU

def test_fp16_g_needs_its_scale_in_the_kernel():
    """A small grad_output puts dℓ/dlogits (~g/B²) below fp16's smallest subnormal: the kernel's
    unscaled G would lose the gradient, the scaled one keeps it (interpreter or GPU)."""
    from clipdistill.kernels import contrastive as K

    n, d, g = (4097, 768, 1e-2) if GPU else (257, 40, 1e-3)
    i, t = unit(n, d, 18).half().contiguous(), unit(n, d, 19).half().contiguous()
    i64, t64 = i.double().requires_grad_(), t.double().requires_grad_()
    s, bias = torch.tensor(17.0, device=DEVICE), torch.tensor(0.0, device=DEVICE)
    (g * ref_contrastive(i64, t64, 17.0)).backward()
    stats = K.fused_forward(i, t, s, bias)
    errs = {}
    for scaled in (True, False):
        coef, unscale = K.grad_scale(n, torch.tensor(g, device=DEVICE))
        da, db, _, _ = K.fused_backward(i, t, s, bias, coef, unscale, stats, scaled=scaled)
        errs[scaled] = max(rel_err(da, i64.grad), rel_err(db, t64.grad))
    assert errs[True] <= 1e-3, errs
    assert errs[False] > 1e-2, errs  # the failure the scale prevents: it must show without it


def _fp16_grads_vs_float64(i16, t16, s, g, chunk=1024):
    """The Triton backward's arithmetic emulated in plain torch (CPU), next to the float64
    gradient, in one pass over column chunks (B² does not fit at B = 32k). Returns
    {"float64": (d image, d text), "scaled": …, "unscaled": …}.

    Emulated: G per chunk cast to fp16 — scaled by the kernel's own R (grad_scale), or as
    the old kernel did, G·s unscaled — then fp32-accumulated matmuls of exact fp16 products,
    unscaled after. The statistics come from the float64 logits: the kernel's fp32 ones
    differ by ~1e-7, far below fp16's 2⁻¹¹."""
    from clipdistill.kernels.contrastive import grad_scale

    n = len(i16)
    i, t = i16.double(), t16.double()
    I, T = i16.float(), t16.float()
    row_lse = torch.cat([torch.logsumexp(s * i[r:r + chunk] @ t.T, 1) for r in range(0, n, chunk)])
    col_lse = torch.cat([torch.logsumexp(s * i @ t[c:c + chunk].T, 0) for c in range(0, n, chunk)])
    coef, unscale = grad_scale(n, torch.tensor(g))
    out = {k: (torch.zeros_like(i), torch.empty_like(t)) for k in ("float64", "scaled", "unscaled")}
    for c in range(0, n, chunk):
        logits = s * i @ t[c:c + chunk].T
        G = 0.5 * (torch.exp(logits - row_lse[:, None]) + torch.exp(logits - col_lse[None, c:c + chunk]))
        G[torch.arange(c, min(c + chunk, n)), torch.arange(len(G.T))] -= 1  # B·dℓ/dlogits / g
        for key, Gc, x, y in (("float64", G * (g / n), i, t),
                              ("scaled", (G * coef[0].item()).half().float(), I, T),
                              ("unscaled", (G * (s * g / n)).half().float(), I, T)):
            out[key][0].add_(Gc @ y[c:c + chunk])
            out[key][1][c:c + chunk] = Gc.T @ x
    back = {"float64": s, "scaled": s * unscale.item(), "unscaled": 1.0}
    return {k: (di * back[k], dt * back[k]) for k, (di, dt) in out.items()}


def test_chunked_float64_gradient_is_autograd():
    i, t = unit(300, 16, 20, "cpu"), unit(300, 16, 21, "cpu")
    i64, t64 = i.clone().requires_grad_(), t.clone().requires_grad_()
    (0.3 * ref_contrastive(i64, t64, 15.0)).backward()
    di, dt = _fp16_grads_vs_float64(i.half(), t.half(), 15.0, 0.3, chunk=64)["float64"]
    i64, t64 = i.half().double().requires_grad_(), t.half().double().requires_grad_()
    (0.3 * ref_contrastive(i64, t64, 15.0)).backward()
    assert rel_err(di, i64.grad) < 1e-12 and rel_err(dt, t64.grad) < 1e-12


def _check_fp16_at(n, d, g):
    grads = _fp16_grads_vs_float64(unit(n, d, 22, "cpu").half(), unit(n, d, 23, "cpu").half(), 17.0, g)
    errs = {k: max(rel_err(got, ref) for got, ref in zip(grads[k], grads["float64"])) for k in ("scaled", "unscaled")}
    assert errs["scaled"] <= 1e-2, errs  # the bound for fp16 gradients
    assert errs["unscaled"] > 1e-2, errs  # without the scale, G·s ≈ s·g/B² underflows
    return errs


def test_fp16_gradients_with_emulated_gpu_rounding():
    """B = 4097 with grad_output 1/64 (a small loss weight or accumulation): G·s ~ 1e-8, as at
    B = 32k with grad_output 1 — below fp16's smallest subnormal (6e-8) without the scale."""
    _check_fp16_at(4097, 24, 1 / 64)


@pytest.mark.slow
def test_fp16_gradients_with_emulated_gpu_rounding_at_32k():
    """The issue's B = 32k at grad_output 1: G·s ~ 2e-8, mostly rounded to 0 without the scale."""
    _check_fp16_at(32768, 24, 1.0)


def test_fp32_tolerance_rejects_tf32():
    """TF32 (10-bit mantissa) operands, emulated by rounding, miss the fp32 limit that the IEEE
    kernels meet: the tests would catch `tl.dot`'s TF32 default."""
    def tf32(x):  # round to nearest on the 13 dropped mantissa bits
        bits = x.float().view(torch.int32)
        return ((bits + 0x1000) & ~0x1FFF).view(torch.float32)

    n, d = 257, 40
    i, t = unit(n, d, 1, "cpu").float(), unit(n, d, 2, "cpu").float()
    i64, t64 = i.double().requires_grad_(), t.double().requires_grad_()
    ref_contrastive(i64, t64, 17.3).backward()
    it, tt = tf32(i).requires_grad_(), tf32(t).requires_grad_()
    L.contrastive_loss(it, tt, 17.3, backend="torch").backward()
    assert max(rel_err(it.grad, i64.grad), rel_err(tt.grad, t64.grad)) > GRAD_LIMIT[torch.float32]


def test_losses_build_targets_and_accumulators_on_the_embeddings_device():
    """The diagonal targets (CLIP's labels, SigLIP's ±1 signs) and the chunked paths' log-sum-exp
    buffers and loss accumulator are made on the embeddings' device, not the default one: on the
    meta device (shapes only, no data) a tensor left on the CPU is a device mismatch. (A 0-d
    gradient left on the CPU is not caught: autograd moves 0-d gradients to their input's device.)"""
    from clipdistill.losses import contrastive as C
    from clipdistill.losses import siglip as SG
    from clipdistill.losses import similarity_kd as KD

    def meta(n, d):
        return torch.empty(n, d, device="meta", dtype=torch.float32, requires_grad=True)

    a, b, rows = meta(5, 3), meta(5, 3), meta(2, 3)
    scale = torch.empty((), device="meta", requires_grad=True)
    bias = torch.empty((), device="meta", requires_grad=True)
    losses = {"clip": C.contrastive_naive(a, b, 2.0), "clip chunked": C.contrastive_chunked(a, b, scale, bias, chunk=2),
              "rows": C.row_contrastive_naive(rows, b, 2.0, offset=3),
              "rows chunked": C.row_contrastive_chunked(rows, b, scale, bias, offset=3, chunk=1),
              "siglip": SG.siglip_naive(a, b, 2.0, -1.0), "siglip chunked": SG.siglip_chunked(a, b, scale, bias, chunk=2)}
    for tau in (1.0, 2.5):  # τ ≠ 1 takes the fused loop's separate student-softmax branch
        losses[f"kd chunked τ={tau}"] = KD.similarity_kd_chunked(a, b, scale, meta(5, 4), meta(5, 4), 3.0, tau, chunk=2)
        fused = KD.contrastive_kd_chunked(a, b, scale, meta(5, 4), meta(5, 4), 3.0, tau, chunk=2)
        losses[f"fused clip + kd τ={tau}"] = fused[0] + fused[1]
    for name, loss in losses.items():
        assert loss.device.type == "meta" and loss.shape == (), name
        grads = torch.autograd.grad(loss, [a, b, rows, scale, bias], allow_unused=True)
        assert all(g is None or g.device.type == "meta" for g in grads), name


def test_naive_siglip_stays_in_the_low_precision_dtype():
    """bf16 logits → a bf16 loss: the ±1 label matrix takes the logits' dtype (a float32 one
    would promote the whole loss to float32)."""
    from clipdistill.losses.siglip import siglip_naive

    g = torch.Generator().manual_seed(0)
    image, text = (torch.randn(5, 3, generator=g).to(torch.bfloat16) for _ in range(2))
    scale, bias = torch.tensor(10.0, dtype=torch.bfloat16), torch.tensor(-10.0, dtype=torch.bfloat16)
    assert siglip_naive(image, text, scale, bias).dtype == torch.bfloat16


# ------------------------------------------------------------------ the data-parallel entry points


def test_row_loss_defaults_to_the_auto_backend():
    rows, columns = unit(3, 8, 20).float(), unit(7, 8, 21).float()
    assert torch.equal(row_contrastive_loss(rows, columns, 5.0, offset=2),
                       row_contrastive_loss(rows, columns, 5.0, offset=2, backend=L.resolve_backend("auto", rows)))


def test_row_loss_backend_names_reach_their_implementations(monkeypatch):
    """The backends give equal values, so only which implementation ran tells them apart."""
    from clipdistill.kernels import contrastive as K
    from clipdistill.losses import contrastive as C

    ran = []
    for module, name in ((C, "row_contrastive_naive"), (C, "row_contrastive_chunked"), (K, "row_contrastive_triton")):
        monkeypatch.setattr(module, name, lambda *args, name=name: ran.append(name))
    for backend in ("naive", "torch", "triton"):
        row_contrastive_loss(torch.zeros(2, 4), torch.zeros(4, 4), 1.0, backend=backend)
    assert ran == ["row_contrastive_naive", "row_contrastive_chunked", "row_contrastive_triton"]


def test_ddp_loss_on_one_process_is_the_plain_loss():
    """Without torch.distributed initialised: rank 0 of 1, nothing gathered."""
    from clipdistill.losses.distributed import ddp_contrastive_loss

    i, t = unit(6, 8, 22).float(), unit(6, 8, 23).float()
    got = ddp_contrastive_loss(i, t, 7.0)
    want = ref_contrastive(i.double(), t.double(), 7.0)
    close(got, want, torch.float32, "loss")
