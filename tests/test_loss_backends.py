"""Every loss backend (chunked torch, Triton under the interpreter) against an independent
float64 reference: loss, both feature gradients, scale (and bias) gradients, odd shapes,
bf16/fp32 operands, random grad_output, inputs inside NaN-filled buffers."""

import math

import pytest
import torch

from clipdistill import losses as L
from clipdistill.losses.distributed import local_contrastive_loss, row_contrastive_loss

SHAPES = [(257, 40), (64, 768), (19, 33)]
BACKENDS = ["torch", "triton"]
DTYPES = [torch.float32, torch.bfloat16]


# ------------------------------------------------------------------ independent references (float64)

def ref_contrastive(i, t, s, b=0.0):
    logits = s * i @ t.T + b
    n = len(i)
    row = sum(torch.logsumexp(logits[k], 0) - logits[k, k] for k in range(n)) / n
    col = sum(torch.logsumexp(logits[:, k], 0) - logits[k, k] for k in range(n)) / n
    return 0.5 * (row + col)


def ref_kd(si, st, ss, ti, tt, ts, tau):
    S, T = ss * si @ st.T / tau, ts * ti @ tt.T / tau

    def kl(p_logits, q_logits):  # Σ_rows Σ_j p (log p − log q) / rows
        logp = p_logits - torch.logsumexp(p_logits, 1, keepdim=True)
        logq = q_logits - torch.logsumexp(q_logits, 1, keepdim=True)
        return (logp.exp() * (logp - logq)).sum() / len(p_logits)

    return tau**2 * 0.5 * (kl(T, S) + kl(T.T, S.T))


def ref_siglip(i, t, s, b):
    logits = s * i @ t.T + b
    z = 2 * torch.eye(len(i), dtype=logits.dtype) - 1
    return torch.log1p(torch.exp(-z * logits)).sum() / len(i)


# ------------------------------------------------------------------ helpers

def embedded(x: torch.Tensor, dtype) -> torch.Tensor:
    """x (cast to dtype) as a strided view inside a larger NaN-filled buffer."""
    buf = torch.full((x.shape[0] + 5, x.shape[1] + 7), float("nan"), dtype=dtype)
    view = buf[2:2 + x.shape[0], 3:3 + x.shape[1]]
    view.copy_(x.to(dtype))
    return view


def unit(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)


def leaf(x, dtype):
    """(the test input as the backend sees it, its float64 twin for the reference)."""
    view = embedded(x, dtype).requires_grad_()
    return view, view.detach().double().clone().requires_grad_()


def close(got, want, dtype, what):
    """Accumulation is fp32 whatever the operands; a gradient returned in bf16 carries bf16's
    own rounding (2⁻⁸ relative), so that is its tolerance. Losses are fp32 scalars."""
    got, want = got.double(), want.double()
    scale = max(1.0, want.abs().max().item())
    err = (got - want).abs().max().item() / scale
    limit = 4e-3 if dtype == torch.bfloat16 and got.ndim == 2 else 2e-5
    assert err <= limit, f"{what}: max rel err {err:.2e} > {limit:.0e}"


# ------------------------------------------------------------------ tests

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"B{s[0]}xD{s[1]}")
def test_contrastive_matches_float64(backend, dtype, shape):
    n, d = shape
    (i, i64), (t, t64) = leaf(unit(n, d, 1), dtype), leaf(unit(n, d, 2), dtype)
    s = torch.tensor(17.3, requires_grad=True)
    s64 = torch.tensor(17.3, dtype=torch.float64, requires_grad=True)
    b = torch.tensor(-2.1, requires_grad=True)
    b64 = torch.tensor(-2.1, dtype=torch.float64, requires_grad=True)
    g = torch.rand(()).item() * 3 + 0.1  # random grad_output
    loss = L.contrastive_loss(i, t, s, logit_bias=b, backend=backend)
    (g * loss).backward()
    want = ref_contrastive(i64, t64, s64, b64)
    (g * want).backward()
    close(loss, want, dtype, "loss")
    close(i.grad, i64.grad, dtype, "d image")
    close(t.grad, t64.grad, dtype, "d text")
    close(s.grad, s64.grad, dtype, "d scale")
    close(b.grad, b64.grad, dtype, "d bias")
    assert i.grad.dtype == dtype and torch.isfinite(i.grad).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("tau", [1.0, 2.5])
@pytest.mark.parametrize("shapes", [(257, 40, 24), (64, 768, 512)], ids=["B257", "B64"])
def test_similarity_kd_and_fused_pair_match_float64(backend, tau, shapes):
    n, ds, dt = shapes
    dtype = torch.float32
    (si, si64), (st, st64) = leaf(unit(n, ds, 3), dtype), leaf(unit(n, ds, 4), dtype)
    ti, tt = embedded(unit(n, dt, 5), dtype), embedded(unit(n, dt, 6), dtype)
    ss = torch.tensor(11.0, requires_grad=True)
    ss64 = torch.tensor(11.0, dtype=torch.float64, requires_grad=True)
    g_clip, g_kd = 0.7, 1.9
    clip, kd = L.contrastive_kd_loss(si, st, ss, ti, tt, 23.0, temperature=tau, backend=backend)
    (g_clip * clip + g_kd * kd).backward()
    want_clip = ref_contrastive(si64, st64, ss64)
    want_kd = ref_kd(si64, st64, ss64, ti.double(), tt.double(), 23.0, tau)
    (g_clip * want_clip + g_kd * want_kd).backward()
    close(clip, want_clip, dtype, "clip")
    close(kd, want_kd, dtype, "kd")
    close(si.grad, si64.grad, dtype, "d s_image")
    close(st.grad, st64.grad, dtype, "d s_text")
    close(ss.grad, ss64.grad, dtype, "d s_scale")
    # and the KD term alone through its own API
    si.grad = None
    kd_only = L.similarity_kd_loss(si, st, ss, ti, tt, 23.0, temperature=tau, backend=backend)
    close(kd_only, want_kd, dtype, "kd alone")


def test_kd_is_kl_not_soft_cross_entropy():
    """KL and soft-CE share gradients but not values: identical distributions give KL = 0."""
    x = unit(16, 8, 7)
    for backend in ("naive", "torch", "triton"):
        assert L.similarity_kd_loss(x, x, 10.0, x, x, 10.0, backend=backend).abs().item() < 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"B{s[0]}xD{s[1]}")
def test_siglip_matches_float64(backend, dtype, shape):
    n, d = shape
    (i, i64), (t, t64) = leaf(unit(n, d, 8), dtype), leaf(unit(n, d, 9), dtype)
    s, s64 = torch.tensor(10.0, requires_grad=True), torch.tensor(10.0, dtype=torch.float64, requires_grad=True)
    b, b64 = torch.tensor(-10.0, requires_grad=True), torch.tensor(-10.0, dtype=torch.float64, requires_grad=True)
    g = 1.7
    (g * (loss := L.siglip_loss(i, t, s, b, backend=backend))).backward()
    (g * (want := ref_siglip(i64, t64, s64, b64))).backward()
    for got, ref, what in ((loss, want, "loss"), (i.grad, i64.grad, "d image"), (t.grad, t64.grad, "d text"),
                           (s.grad, s64.grad, "d scale"), (b.grad, b64.grad, "d bias")):
        close(got, ref, dtype, what)


@pytest.mark.parametrize("backend", ["naive", "torch", "triton"])
@pytest.mark.parametrize("ranks", [2, 3])
def test_local_loss_mode_equals_single_process(backend, ranks):
    n, d = 24 * ranks, 40
    i = unit(n, d, 10).float().requires_grad_()
    t = unit(n, d, 11).float().requires_grad_()
    s = torch.tensor(13.0, requires_grad=True)
    local = n // ranks
    total = sum(local_contrastive_loss(i[r * local:(r + 1) * local], t[r * local:(r + 1) * local], s,
                                       all_image=i, all_text=t, rank=r, backend=backend)
                for r in range(ranks)) / ranks
    total.backward()
    grads = (i.grad.clone(), t.grad.clone(), s.grad.clone())
    i.grad = t.grad = s.grad = None
    single = L.contrastive_loss(i, t, s, backend="naive")
    single.backward()
    assert torch.allclose(total, single, atol=1e-6)
    for got, want in zip(grads, (i.grad, t.grad, s.grad)):
        assert torch.allclose(got, want, atol=1e-6)


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


@pytest.mark.parametrize("fn", ["contrastive", "siglip", "kd"])
def test_bad_shapes_are_named(fn):
    a, b = torch.zeros(4, 8), torch.zeros(5, 8)
    call = {"contrastive": lambda: L.contrastive_loss(a, b, 1.0),
            "siglip": lambda: L.siglip_loss(a, torch.zeros(4), 1.0, 0.0),
            "kd": lambda: L.similarity_kd_loss(a, a, 1.0, b, b, 1.0)}[fn]
    with pytest.raises(ValueError, match="shapes|2-D|batch sizes differ"):
        call()


def test_large_logits_stay_finite():
    """Online log-sum-exp: scale 100 on unit vectors does not overflow."""
    i, t = unit(70, 12, 14).float(), unit(70, 12, 15).float()
    for backend in ("torch", "triton"):
        loss = L.contrastive_loss(i, t, 100.0, backend=backend)
        assert math.isfinite(loss.item())
        assert loss.item() == pytest.approx(L.contrastive_loss(i, t, 100.0, backend="naive").item(), rel=1e-5)
