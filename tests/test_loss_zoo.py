"""Every loss in the zoo against an independent float64 formula: value and gradients, with
unequal student/teacher widths."""

import math

import pytest
import torch

from clipdistill.losses import LOSSES, make_heads, method_loss
from clipdistill.losses import zoo as Z

B, DS, DT = 13, 12, 20


def unit(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)


def students(seed=0):
    return [unit(B, DS, seed).requires_grad_(), unit(B, DS, seed + 1).requires_grad_()]


def teacher(seed=10, d=DT):
    return unit(B, d, seed), unit(B, d, seed + 1)


def assert_same(f_zoo, f_ref, inputs):
    """Values and input gradients of two float64 computations agree."""
    a = f_zoo(*inputs)
    ga = torch.autograd.grad(a, inputs)
    b = f_ref(*inputs)
    gb = torch.autograd.grad(b, inputs)
    assert a.item() == pytest.approx(b.item(), rel=1e-10, abs=1e-12)
    for x, y in zip(ga, gb):
        assert torch.allclose(x, y, rtol=1e-9, atol=1e-12)


def lse(v):
    m = max(v)
    return m + math.log(sum(math.exp(x - m) for x in v)) if isinstance(v, list) else torch.logsumexp(v, 0)


def ce_row(logits, k):
    """−log softmax(logits)[k] for one row, written out."""
    return torch.logsumexp(logits, 0) - logits[k]


def ref_infonce(i, t, s):
    L = s * i @ t.T
    return 0.5 * (sum(ce_row(L[k], k) for k in range(len(i))) + sum(ce_row(L[:, k], k) for k in range(len(i)))) / len(i)


def test_fd_with_projection():
    si, st = students()
    ti, tt = teacher()
    pi, pt = (torch.randn(DT, DS, dtype=torch.float64, requires_grad=True) for _ in range(2))

    def zoo(si, st, pi, pt):
        return Z.feature_distillation(si @ pi.T, ti) + Z.feature_distillation(st @ pt.T, tt)

    def ref(si, st, pi, pt):
        return sum(((si[k] @ pi.T - ti[k]) ** 2).sum() + ((st[k] @ pt.T - tt[k]) ** 2).sum() for k in range(B)) / (B * DT)

    assert_same(zoo, ref, [si, st, pi, pt])


def test_icl():
    si, st = unit(B, DT, 0).requires_grad_(), unit(B, DT, 1).requires_grad_()
    ti, tt = teacher()
    scale = torch.tensor(9.0, dtype=torch.float64, requires_grad=True)

    def ref(si, st, scale):
        return 0.5 * sum(ce_row(scale * si[k] @ tt.T, k) + ce_row(scale * st[k] @ ti.T, k) for k in range(B)) / B

    assert_same(lambda *x: Z.interactive_contrastive(x[0], x[1], ti, tt, x[2]), ref, [si, st, scale])


def test_infonce_feature_gradient_is_the_true_gradient():
    i, t = unit(B, DT, 3).requires_grad_(), unit(B, DT, 4).requires_grad_()
    gi, gt = torch.autograd.grad(ref_infonce(i, t, 7.0), (i, t))
    ci, ct = Z.infonce_feature_gradient(i.detach(), t.detach(), 7.0)
    assert torch.allclose(ci, gi, atol=1e-12) and torch.allclose(ct, gt, atol=1e-12)


def test_gd_matches_autograd_gradients():
    si, st = unit(B, DT, 0).requires_grad_(), unit(B, DT, 1).requires_grad_()
    ti, tt = teacher()

    def ref(si, st):
        gs = torch.autograd.grad(ref_infonce(si, st, 8.0), (si, st), create_graph=True)
        ti_ = ti.clone().requires_grad_()
        tt_ = tt.clone().requires_grad_()
        gt = torch.autograd.grad(ref_infonce(ti_, tt_, 12.0), (ti_, tt_))
        return sum(((a - b) ** 2).sum() for a, b in zip(gs, gt)) / DT

    assert_same(lambda si, st: Z.gradient_distillation(si, st, 8.0, ti, tt, 12.0), ref, [si, st])


def test_afd():
    si, st = unit(B, DT, 0).requires_grad_(), unit(B, DT, 1).requires_grad_()
    ti, tt = teacher()
    fi, ft = torch.nn.Linear(2 * DT, DT).double(), torch.nn.Linear(2 * DT, DT).double()

    def ref(si, st):
        def fuse(lin, a, b):
            x = torch.cat([a, b], 1) @ lin.weight.T + lin.bias
            return x / (x**2).sum(1, keepdim=True).sqrt()
        return ref_infonce(fuse(fi, si, ti), fuse(ft, st, tt), 5.0)

    assert_same(lambda si, st: Z.augmented_feature_distillation(si, st, ti, tt, fi, ft, 5.0), ref, [si, st])


def soft_ce_ref(S, P_rows, P_cols):
    n = len(S)
    rows = -sum((P_rows[k] * (S[k] - torch.logsumexp(S[k], 0))).sum() for k in range(n)) / n
    cols = -sum((P_cols[:, k] * (S[:, k] - torch.logsumexp(S[:, k], 0))).sum() for k in range(n)) / n
    return 0.5 * (rows + cols)


def test_affinity_is_soft_cross_entropy():
    si, st = students()
    ti, tt = teacher(d=DS)
    tau = 0.07

    def ref(si, st):
        T = ti @ tt.T / tau
        return soft_ce_ref(si @ st.T / tau, torch.exp(T - torch.logsumexp(T, 1, keepdim=True)),
                           torch.exp(T - torch.logsumexp(T, 0, keepdim=True)))

    assert_same(lambda si, st: Z.affinity_mimicking(si, st, ti, tt, tau), ref, [si, st])


def test_soft_ce_averages_the_teacher_ensemble_after_softmax():
    si, st = students()
    teachers = [(*teacher(20, DT), 15.0), (*teacher(30, 7), 40.0)]  # teachers of different widths and scales

    def ref(si, st):
        P_rows = sum(torch.softmax(s * a @ b.T, 1) for a, b, s in teachers) / 2
        P_cols = sum(torch.softmax(s * a @ b.T, 0) for a, b, s in teachers) / 2
        return soft_ce_ref(11.0 * si @ st.T, P_rows, P_cols)

    assert_same(lambda si, st: Z.soft_target_ce(si, st, 11.0, teachers), ref, [si, st])


def test_kl_and_soft_ce_share_gradients_but_not_values():
    from clipdistill.losses import similarity_kd_loss

    si, st = students()
    ti, tt = teacher(d=DS)
    tau = 0.1
    kl = similarity_kd_loss(si, st, 1 / tau, ti, tt, 1 / tau, backend="naive")
    sce = Z.affinity_mimicking(si, st, ti, tt, tau)
    g_kl = torch.autograd.grad(kl, (si, st))
    g_sce = torch.autograd.grad(sce, (si, st))
    assert all(torch.allclose(a, b, atol=1e-12) for a, b in zip(g_kl, g_sce))
    T = ti @ tt.T / tau
    entropy = 0.5 * (-(T.softmax(1) * T.log_softmax(1)).sum(1).mean() - (T.softmax(0) * T.log_softmax(0)).sum(0).mean())
    assert sce.item() == pytest.approx(kl.item() + entropy.item(), rel=1e-10)
    assert abs(sce.item() - kl.item()) > 0.1


def test_siglip_kd():
    si, st = students()
    ti, tt = teacher()
    bias = torch.tensor(-3.0, dtype=torch.float64, requires_grad=True)

    def ref(si, st, bias):
        x = 10.0 * si @ st.T + bias
        p = 1 / (1 + torch.exp(-(20.0 * ti @ tt.T - 5.0)))
        return -(p * torch.log(1 / (1 + torch.exp(-x))) + (1 - p) * torch.log(1 - 1 / (1 + torch.exp(-x)))).sum() / B

    assert_same(lambda si, st, b: Z.siglip_distillation(si, st, 10.0, b, ti, tt, 20.0, -5.0), ref, [si, st, bias])


def test_patch_fd_projects_and_resamples():
    s_tok = torch.randn(3, 16, 6, dtype=torch.float64, requires_grad=True)   # 4×4 grid, width 6
    t_tok = torch.randn(3, 4, 10, dtype=torch.float64)                       # 2×2 grid, width 10
    proj = torch.nn.Linear(6, 10, bias=False).double()

    def ref(s_tok):
        grid = s_tok.reshape(3, 4, 4, 6)
        pooled = 0.25 * (grid[:, 0::2, 0::2] + grid[:, 1::2, 0::2] + grid[:, 0::2, 1::2] + grid[:, 1::2, 1::2])
        return ((pooled.reshape(3, 4, 6) @ proj.weight.T - t_tok) ** 2).mean()

    # bilinear 4→2 without corner alignment averages each 2×2 block
    assert_same(lambda s: Z.patch_feature_distillation(s, t_tok, proj), ref, [s_tok])
    same = torch.randn(2, 9, 4, dtype=torch.float64)
    assert torch.equal(Z.resample_tokens(same, 3), same)
    with pytest.raises(ValueError, match="square grid: 10 tokens"):
        Z.resample_tokens(torch.zeros(1, 10, 2), 3)


def test_registry_method_and_heads():
    assert set(LOSSES) >= {"clip", "crd", "fd", "mfd", "icl", "gd", "afd", "affinity", "soft_ce", "siglip",
                           "siglip_kd", "patch_fd"}
    method = {"clip": {"weight": 1.0}, "crd": {"weight": 2.0, "temperature": 2.0}, "fd": {"weight": 3.0},
              "icl": {"weight": 0.5}}
    heads = make_heads(method, DS, DT).double()
    assert set(heads) == {"proj_image", "proj_text", "icl_scale"}
    si, st = students()
    ti, tt = teacher()
    batch = {"s_image": si, "s_text": st, "s_scale": 10.0, "t_image": ti, "t_text": tt, "t_scale": 20.0}
    total, terms = method_loss(method, batch, heads)
    assert set(terms) == set(method)
    assert total.item() == pytest.approx(sum(method[k]["weight"] * v for k, v in terms.items()), rel=1e-9)
    assert set(make_heads({"clip": {}, "fd": {}}, DT, DT)) == set()  # equal widths: no projection
    with pytest.raises(ValueError, match=r"unknown loss\(es\) \['kld'\]"):
        make_heads({"kld": {}}, DS, DT)


def test_non_finite_term_is_named():
    si, st = students()
    batch = {"s_image": si * float("nan"), "s_text": st, "s_scale": 10.0}
    with pytest.raises(FloatingPointError, match="loss term 'clip' is nan"):
        method_loss({"clip": {}}, batch, make_heads({"clip": {}}, DS, DS))
