"""Every loss in the zoo against an independent float64 formula: value and gradients, with
unequal student/teacher widths. The KD terms of CLIP-KD and TinyCLIP are checked through the
registry (with the heads a method really builds) against their sources' formulas written out
here: gradients reach the student's embeddings and every learned head."""

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


def assert_same(f_zoo, f_ref, inputs, grad_output=1.0):
    """Values and input gradients (for a scalar `grad_output`) of two float64 computations agree."""
    a = f_zoo(*inputs)
    ga = torch.autograd.grad(a, inputs, torch.tensor(grad_output, dtype=a.dtype))
    b = f_ref(*inputs)
    gb = torch.autograd.grad(b, inputs, torch.tensor(grad_output, dtype=b.dtype))
    assert a.item() == pytest.approx(b.item(), rel=1e-10, abs=1e-12)
    for x, y in zip(ga, gb):
        assert torch.allclose(x, y, rtol=1e-9, atol=1e-12)


def random_grad(seed):
    return float(torch.empty(()).uniform_(0.3, 3.0, generator=torch.Generator().manual_seed(seed)))


def heads_for(method, ds, dt, seed=0):
    torch.manual_seed(seed)
    return make_heads(method, ds, dt).double()


def term(name, batch, heads, opts=None):
    """One registered loss term, as the training loop computes it."""
    return LOSSES[name].term(batch, heads, opts or {})


def ref_linear(x, lin):
    """x Wᵀ + b, row by row."""
    return torch.stack([lin.weight @ row + lin.bias for row in x])


def ref_normalise(x):
    return x / (x**2).sum(1, keepdim=True).sqrt()


def ref_fd(s, t, lin):
    """CLIP-KD FD with its projector, the error summed over dims and divided by 512 (the width
    its weight of 2000 was tuned at): Σ_k ‖normalise(W s_k + b) − t_k‖² / (B · 512)."""
    p = ref_normalise(ref_linear(s, lin))
    return sum(((p[k] - t[k]) ** 2).sum() for k in range(len(s))) / (len(s) * 512)


def lse(v):
    m = max(v)
    return m + math.log(sum(math.exp(x - m) for x in v)) if isinstance(v, list) else torch.logsumexp(v, 0)


def ce_row(logits, k):
    """−log softmax(logits)[k] for one row, written out."""
    return torch.logsumexp(logits, 0) - logits[k]


def ref_infonce(i, t, s):
    L = s * i @ t.T
    return 0.5 * (sum(ce_row(L[k], k) for k in range(len(i))) + sum(ce_row(L[:, k], k) for k in range(len(i)))) / len(i)


@pytest.mark.parametrize("ds,dt", [(DS, DT), (DS, DS), (DT, 7)])
def test_fd_projects_with_bias_and_renormalises_for_every_teacher(ds, dt):
    """Equal widths included: the student is never pinned to the teacher's embedding directly."""
    heads = heads_for({"fd": {}}, ds, dt)
    for name in ("proj_image", "proj_text"):
        lin = heads[name]
        assert lin.weight.shape == (dt, ds) and lin.bias is not None and lin.bias.shape == (dt,)
    si, st = unit(B, ds, 0).requires_grad_(), unit(B, ds, 1).requires_grad_()
    ti, tt = teacher(d=dt)
    pi, pt = heads["proj_image"], heads["proj_text"]
    inputs = [si, st, pi.weight, pi.bias, pt.weight, pt.bias]

    def zoo(si, st, *_):
        return term("fd", {"s_image": si, "s_text": st, "t_image": ti, "t_text": tt}, heads)

    def ref(si, st, *_):
        return ref_fd(si, ti, pi) + ref_fd(st, tt, pt)

    assert_same(zoo, ref, inputs, random_grad(ds + dt))


def test_fd_weight_keeps_clipkd_meaning_and_a_width_independent_start():
    """At D = 512 a weight of 2000 is CLIP-KD's 2000 · MSE (mean over batch and dims) exactly;
    at initialisation the weighted FD is 2000 · 2 · 2/512 ≈ 15.6 whatever the teacher width
    (λ·MSE would give 8000/D: 125 at D = 64)."""
    n = 400
    starts = {}
    for d in (8, 64, 512, 1024):
        heads = heads_for({"fd": {}}, 64, d, seed=d)
        batch = {"s_image": unit(n, 64, 1), "s_text": unit(n, 64, 2), "t_image": unit(n, d, 3), "t_text": unit(n, d, 4)}
        starts[d] = 2000 * term("fd", batch, heads).item()
        if d == 512:
            mse = sum(((ref_normalise(ref_linear(batch[f"s_{m}"], heads[f"proj_{m}"])) - batch[f"t_{m}"]) ** 2).mean()
                      for m in ("image", "text"))
            assert starts[d] == pytest.approx(2000 * mse.item(), rel=1e-12)
    for d, v in starts.items():
        assert v == pytest.approx(2000 * 4 / 512, rel=0.1), starts


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


def test_icl_uses_clipkd_cross_logit_scale_itself():
    """CLIP-KD's ICL: the projected, normalised student against the teacher, times its learnable
    cross_logit_scale as it is (starting at log(1/0.07) ≈ 2.66, not exp of it ≈ 14.3)."""
    heads = heads_for({"icl": {}}, DS, DT)
    c = heads["icl_scale"].value
    assert c.item() == pytest.approx(math.log(1 / 0.07))
    with torch.no_grad():
        c.fill_(4.5)  # away from the initial value: value and exp(value) cannot be confused
    si, st = students()
    ti, tt = teacher()
    pi, pt = heads["proj_image"], heads["proj_text"]

    def zoo(si, st, *_):
        return term("icl", {"s_image": si, "s_text": st, "t_image": ti, "t_text": tt}, heads)

    def ref(si, st, *_):
        qi, qt = ref_normalise(ref_linear(si, pi)), ref_normalise(ref_linear(st, pt))
        return 0.5 * sum(ce_row(c * qi[k] @ tt.T, k) + ce_row(c * qt[k] @ ti.T, k) for k in range(B)) / B

    assert_same(zoo, ref, [si, st, c, pi.weight, pi.bias, pt.weight, pt.bias], random_grad(1))


def test_mfd_distils_the_masked_image_and_the_text():
    heads = heads_for({"mfd": {}}, DS, DT)
    assert LOSSES["mfd"].reads >= {"t_image", "t_text", "s_image_masked"}
    si, st = students()
    sm = unit(B, DS, 5).requires_grad_()  # the masked view's embedding
    ti, tt = teacher()
    pi, pt = heads["proj_image"], heads["proj_text"]
    batch = {"s_image": si, "s_image_masked": sm, "s_text": st, "t_image": ti, "t_text": tt}

    def zoo(sm, st, *_):
        return term("mfd", {**batch, "s_image_masked": sm, "s_text": st}, heads)

    def ref(sm, st, *_):
        return ref_fd(sm, ti, pi) + ref_fd(st, tt, pt)

    assert_same(zoo, ref, [sm, st, pi.weight, pi.bias, pt.weight, pt.bias], random_grad(2))
    assert torch.autograd.grad(term("mfd", batch, heads), si, allow_unused=True)[0] is None  # the unmasked view


def test_afd_fuses_student_and_teacher_to_the_student_width_at_its_own_scale():
    """CLIP-KD's AFD: f = normalise(W [s ; t] + b), W: D_s + D_t → D_s, InfoNCE of the fused
    pair at fusion_logit_scale as it is; no projector, and not the student's CLIP scale."""
    heads = heads_for({"afd": {}}, DS, DT)
    assert set(heads) == {"afd_image", "afd_text", "afd_scale"}
    fi, ft, c = heads["afd_image"], heads["afd_text"], heads["afd_scale"].value
    assert fi.weight.shape == (DS, DS + DT) and fi.bias.shape == (DS,)
    assert c.item() == pytest.approx(math.log(1 / 0.07))
    with torch.no_grad():
        c.fill_(6.0)
    si, st = students()
    ti, tt = teacher()

    def zoo(si, st, *_):
        return term("afd", {"s_image": si, "s_text": st, "s_scale": 50.0, "t_image": ti, "t_text": tt}, heads)

    def ref(si, st, *_):
        fuse = [ref_normalise(ref_linear(torch.cat([s, t], 1), lin)) for s, t, lin in ((si, ti, fi), (st, tt, ft))]
        return ref_infonce(*fuse, c)

    assert_same(zoo, ref, [si, st, c, fi.weight, fi.bias, ft.weight, ft.bias], random_grad(3))


def soft_ce_ref(S, P_rows, P_cols):
    n = len(S)
    rows = -sum((P_rows[k] * (S[k] - torch.logsumexp(S[k], 0))).sum() for k in range(n)) / n
    cols = -sum((P_cols[:, k] * (S[:, k] - torch.logsumexp(S[:, k], 0))).sum() for k in range(n)) / n
    return 0.5 * (rows + cols)


def test_affinity_uses_each_models_own_logit_scale():
    """TinyCLIP affinity mimicking: soft-CE of the student's affinities at the student's logit
    scale against the teacher's at the teacher's (gradient reaches the student's scale too)."""
    si, st = students()
    ti, tt = teacher()
    s_scale = torch.tensor(9.0, dtype=torch.float64, requires_grad=True)
    t_scale = torch.tensor(31.0, dtype=torch.float64)

    def softmax_written(T, dim):
        return torch.exp(T - torch.logsumexp(T, dim, keepdim=True))

    def ref(si, st, s_scale):
        T = t_scale * ti @ tt.T
        return soft_ce_ref(s_scale * si @ st.T, softmax_written(T, 1), softmax_written(T, 0))

    def zoo(si, st, s_scale):
        return term("affinity", {"s_image": si, "s_text": st, "s_scale": s_scale, "t_image": ti, "t_text": tt,
                                 "t_scale": t_scale}, {})

    assert_same(zoo, ref, [si, st, s_scale], random_grad(4))
    # old params (`temperature`) keep their fixed τ for both models
    tau = 0.07
    old = term("affinity", {"s_image": si, "s_text": st, "s_scale": s_scale, "t_image": ti, "t_text": tt,
                            "t_scale": t_scale}, {}, {"temperature": tau})
    T = ti @ tt.T / tau
    want = soft_ce_ref(si @ st.T / tau, softmax_written(T, 1), softmax_written(T, 0))
    assert old.item() == pytest.approx(want.item(), rel=1e-10)


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
    sce = Z.affinity_mimicking(si, st, 1 / tau, ti, tt, 1 / tau)
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
    from clipdistill.models.patches import resample_tokens

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
    assert torch.equal(resample_tokens(same, 3), same)
    with pytest.raises(ValueError, match="square grid: 10 tokens"):
        resample_tokens(torch.zeros(1, 10, 2), 3)


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
    same = make_heads({"clip": {}, "fd": {}}, DT, DT)  # equal widths: a projector all the same
    assert set(same) == {"proj_image", "proj_text"} and same["proj_image"].bias is not None
    with pytest.raises(ValueError, match=r"unknown loss\(es\) \['kld'\]"):
        make_heads({"kld": {}}, DS, DT)


def test_non_finite_term_is_named():
    si, st = students()
    batch = {"s_image": si * float("nan"), "s_text": st, "s_scale": 10.0}
    with pytest.raises(FloatingPointError, match="loss term 'clip' is nan"):
        method_loss({"clip": {}}, batch, make_heads({"clip": {}}, DS, DS))


def test_icl_and_gd_build_their_targets_on_the_embeddings_device():
    """The InfoNCE targets (ICL's diagonal labels, GD's identity in E = ½(P + Q) − I) are made on
    the device of the embeddings, not the default one: run on the meta device (shapes only, no
    data), a target left on the CPU is a device mismatch."""
    def meta(n, d):
        return torch.empty(n, d, device="meta", dtype=torch.float64)

    si, st, ti, tt = meta(5, 3), meta(5, 3), meta(5, 3), meta(5, 3)
    icl = Z.interactive_contrastive(si, st, ti, tt, 2.0)
    gd = Z.gradient_distillation(si, st, 2.0, ti, tt, 3.0)
    gi, gt = Z.infonce_feature_gradient(si, st, 2.0)
    assert icl.device.type == gd.device.type == gi.device.type == gt.device.type == "meta"
    assert icl.shape == gd.shape == () and gi.shape == gt.shape == (5, 3)


def test_infonce_feature_gradient_stays_in_a_low_precision_dtype():
    """bf16 embeddings (mixed-precision training) give bf16 gradients: the identity of
    E = ½(P + Q) − I is built in the logits' dtype, not promoted to float32. The values are the
    float64 formula's on the same (rounded) inputs, within bf16 resolution:
    L = s·I Tᵀ, P = exp(L − lse_rows), Q = exp(L − lse_cols), ∂ℓ/∂I = s(½(P + Q) − I) T / B."""
    i = unit(B, DS, 40).to(torch.bfloat16)
    t = unit(B, DS, 41).to(torch.bfloat16)
    s = 5.0
    gi, gt = Z.infonce_feature_gradient(i, t, s)
    assert gi.dtype == gt.dtype == torch.bfloat16
    i64, t64 = i.double(), t.double()
    L = s * i64 @ t64.T
    P = torch.exp(L - torch.logsumexp(L, 1, keepdim=True))
    Q = torch.exp(L - torch.logsumexp(L, 0, keepdim=True))
    E = 0.5 * (P + Q) - torch.eye(B, dtype=torch.float64)
    assert torch.allclose(gi.double(), s * E @ t64 / B, atol=2e-3)
    assert torch.allclose(gt.double(), s * E.T @ i64 / B, atol=2e-3)


def test_patch_fd_is_computed_in_the_students_dtype():
    """Teacher tokens stored at another precision are cast to the student's dtype before the
    MSE, so the loss (and its backward) runs at the student's precision: a float32 student
    against float64 or float16 teacher tokens gives a float32 loss equal to the mean squared
    error against the teacher tokens rounded to float32."""
    g = torch.Generator().manual_seed(7)
    s_tok = torch.randn(2, 9, 5, generator=g)                     # 3×3 grid, float32
    proj = torch.nn.Identity()
    for t_dtype in (torch.float64, torch.float16):
        t_tok = torch.randn(2, 9, 5, generator=g, dtype=torch.float64).to(t_dtype)
        got = Z.patch_feature_distillation(s_tok, t_tok, proj)
        assert got.dtype == torch.float32
        want = ((s_tok.double() - t_tok.to(torch.float32).double()) ** 2).sum() / (2 * 9 * 5)
        assert got.item() == pytest.approx(want.item(), rel=1e-6)


# ---------------------------------------------------------------- registry terms, one by one


def kl_rows_ref(S, T):
    """Σ_k Σ_j p_kj (log p_kj − log q_kj) / n, p = softmax_rows(T), q = softmax_rows(S), written out."""
    n = len(S)
    total = 0.0
    for k in range(n):
        lp = T[k] - torch.logsumexp(T[k], 0)
        lq = S[k] - torch.logsumexp(S[k], 0)
        total = total + (torch.exp(lp) * (lp - lq)).sum()
    return total / n


def test_gd_term_projects_normalises_and_uses_each_models_scale():
    """The registry's GD: the student through its projectors (with bias), re-normalised, at the
    student's logit scale; the teacher's InfoNCE gradients at the teacher's scale, by autograd here."""
    heads = heads_for({"gd": {}}, DS, DT)
    assert set(heads) == {"proj_image", "proj_text"}
    si, st = students()
    ti, tt = teacher()
    pi, pt = heads["proj_image"], heads["proj_text"]
    batch = {"s_scale": 6.0, "t_image": ti, "t_text": tt, "t_scale": 15.0}

    def zoo(si, st, *_):
        return term("gd", {**batch, "s_image": si, "s_text": st}, heads)

    def ref(si, st, *_):
        qi, qt = ref_normalise(ref_linear(si, pi)), ref_normalise(ref_linear(st, pt))
        gs = torch.autograd.grad(ref_infonce(qi, qt, 6.0), (qi, qt), create_graph=True)
        ti_, tt_ = ti.clone().requires_grad_(), tt.clone().requires_grad_()
        gt = torch.autograd.grad(ref_infonce(ti_, tt_, 15.0), (ti_, tt_))
        return sum(((a - b) ** 2).sum() for a, b in zip(gs, gt)) / DT  # B · mean over B × DT

    assert_same(zoo, ref, [si, st, pi.weight, pi.bias, pt.weight, pt.bias], random_grad(5))


def test_crd_term_is_at_temperature_one_unless_told():
    si, st = students()
    ti, tt = teacher(d=7)  # CRD compares similarity matrices: any teacher width
    batch = {"s_image": si, "s_text": st, "s_scale": 4.0, "t_image": ti, "t_text": tt, "t_scale": 9.0}
    for opts, tau in (({}, 1.0), ({"temperature": 2.5}, 2.5)):
        S, T = 4.0 * si @ st.T / tau, 9.0 * ti @ tt.T / tau
        want = tau**2 * 0.5 * (kl_rows_ref(S, T) + kl_rows_ref(S.T, T.T))
        assert term("crd", batch, {}, opts).item() == pytest.approx(want.item(), rel=1e-10)


def test_soft_ce_term_reads_the_ensemble_or_else_the_batch_teacher():
    si, st = students()
    ti, tt = teacher()
    batch = {"s_image": si, "s_text": st, "s_scale": 7.0, "t_image": ti, "t_text": tt, "t_scale": 20.0}
    S = 7.0 * si @ st.T
    T = 20.0 * ti @ tt.T
    single = soft_ce_ref(S, torch.softmax(T, 1), torch.softmax(T, 0))
    assert term("soft_ce", batch, {}).item() == pytest.approx(single.item(), rel=1e-10)
    other = (*teacher(50, 9), 3.0)
    U = 3.0 * other[0] @ other[1].T
    both = soft_ce_ref(S, (torch.softmax(T, 1) + torch.softmax(U, 1)) / 2, (torch.softmax(T, 0) + torch.softmax(U, 0)) / 2)
    got = term("soft_ce", {**batch, "t_ensemble": [(ti, tt, 20.0), other]}, {})
    assert got.item() == pytest.approx(both.item(), rel=1e-10)


def sigmoid_bce_ref(x, p):
    """Σ_ij −[p log σ(x) + (1 − p) log(1 − σ(x))] over the matrix, σ(x) = 1 / (1 + e^(−x))."""
    sig = 1 / (1 + torch.exp(-x))
    return -(p * torch.log(sig) + (1 - p) * torch.log(1 - sig)).sum()


def test_siglip_terms_learn_a_bias_from_minus_ten_and_kd_targets_a_teacher_bias_of_minus_ten():
    heads = heads_for({"siglip_kd": {}}, DS, DT)
    assert set(heads) == {"siglip_bias"} and heads["siglip_bias"].value.item() == -10.0
    si, st = students()
    ti, tt = teacher(d=DS)
    with torch.no_grad():
        heads["siglip_bias"].value.fill_(-2.0)
    batch = {"s_image": si, "s_text": st, "s_scale": 5.0, "t_image": ti, "t_text": tt, "t_scale": 12.0}
    x = 5.0 * si @ st.T - 2.0
    for opts, t_bias in (({}, -10.0), ({"teacher_bias": 1.5}, 1.5)):
        p = 1 / (1 + torch.exp(-(12.0 * ti @ tt.T + t_bias)))
        want = sigmoid_bce_ref(x, p) / B
        assert term("siglip_kd", batch, heads, opts).item() == pytest.approx(want.item(), rel=1e-10)
    # the plain SigLIP term: label +1 on the diagonal, 0 elsewhere, with the learned bias
    want = sigmoid_bce_ref(x, torch.eye(B, dtype=torch.float64)) / B
    assert term("siglip", batch, heads).item() == pytest.approx(want.item(), rel=1e-10)


def test_patch_fd_term_projects_only_between_different_widths():
    s_tok = torch.randn(2, 4, 3, dtype=torch.float64)
    t_tok = torch.randn(2, 4, 5, dtype=torch.float64)
    heads = make_heads({"patch_fd": {}}, DS, DT, s_width=3, t_width=5).double()
    lin = heads["proj_patch"]
    assert lin.weight.shape == (5, 3) and lin.bias is None
    got = term("patch_fd", {"s_patches": s_tok, "t_patches": t_tok}, heads)
    assert got.item() == pytest.approx(((s_tok @ lin.weight.T - t_tok) ** 2).mean().item(), rel=1e-10)
    assert "proj_patch" not in make_heads({"patch_fd": {}}, DS, DT, s_width=5, t_width=5)
    t_same = torch.randn(2, 4, 3, dtype=torch.float64)
    got = term("patch_fd", {"s_patches": s_tok, "t_patches": t_same}, torch.nn.ModuleDict())
    assert got.item() == pytest.approx(((s_tok - t_same) ** 2).mean().item(), rel=1e-10)
    with pytest.raises(ValueError, match=r"^patch_fd needs the student and teacher token widths"):
        make_heads({"clip": {}, "patch_fd": {}}, DS, DT)


def test_teacher_fields_are_the_t_fields_read_sorted():
    from clipdistill.losses import teacher_fields

    assert teacher_fields(["clip", "siglip"]) == []
    assert teacher_fields(["patch_fd", "mfd", "kld"]) == ["t_image", "t_patches", "t_text"]


def test_method_loss_weights_default_to_one_and_the_log_has_each_terms_value():
    si, st = students()
    ti, tt = teacher()
    method = {"clip": {}, "crd": {"weight": 0.25}}
    batch = {"s_image": si, "s_text": st, "s_scale": 10.0, "t_image": ti, "t_text": tt, "t_scale": 20.0}
    total, terms = method_loss(method, batch, make_heads(method, DS, DT))
    clip = ref_infonce(si, st, 10.0)
    S, T = 10.0 * si @ st.T, 20.0 * ti @ tt.T
    crd = 0.5 * (kl_rows_ref(S, T) + kl_rows_ref(S.T, T.T))
    assert terms["clip"] == pytest.approx(clip.item(), rel=1e-10)
    assert terms["crd"] == pytest.approx(crd.item(), rel=1e-10)
    assert total.item() == pytest.approx(clip.item() + 0.25 * crd.item(), rel=1e-10)
