"""Property-based checks (hypothesis) of invariants the formulas must keep whatever the
inputs: batch losses do not depend on the order of the batch, KD terms vanish (or reach
their minimum, with zero gradient) when the student is the teacher, and VQA accuracy stays
in [0, 1] with the official leave-one-annotator-out values. Example counts are kept small:
each example is a handful of tiny float64 tensors."""

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clipdistill.losses import contrastive as C
from clipdistill.losses import siglip as SG
from clipdistill.losses import similarity_kd as KD
from clipdistill.losses import zoo as Z
from clipdistill.vqa.metrics import normalize_answer, vqa_accuracy

# no example database in the checkout, no deadline (the first call of a backend is slow)
FAST = settings(max_examples=25, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def batches(draw, teacher=True):
    """(student image, student text, teacher image, teacher text, scales, a permutation);
    rows L2-normalised (teacher rows mapped to the student's width for the terms that compare them)."""
    b, d, dt = draw(st.integers(2, 7)), draw(st.integers(2, 6)), draw(st.integers(2, 6))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))

    def unit(n, w):
        return torch.nn.functional.normalize(torch.randn(n, w, generator=gen, dtype=torch.float64), dim=1)

    scales = (draw(st.floats(0.5, 30.0)), draw(st.floats(0.5, 30.0)))
    perm = torch.tensor(draw(st.permutations(range(b))))
    proj = torch.randn(dt, d, generator=gen, dtype=torch.float64)  # a fixed teacher → student-width map
    return unit(b, d), unit(b, d), unit(b, dt) @ proj, unit(b, dt) @ proj, scales, perm


def _same(a, b):
    assert torch.allclose(a, b, rtol=1e-9, atol=1e-12), (a.item(), b.item())


@FAST
@given(batches(), st.floats(-5.0, 5.0), st.integers(1, 3))
def test_batch_losses_do_not_depend_on_the_batch_order(batch, bias, chunk):
    """Permuting the pairs (image i stays with caption i and its teacher rows) changes nothing;
    the chunked paths run with chunks smaller than the batch, so chunk boundaries move too."""
    si, st_, ti, tt, (s, t), p = batch
    proj = torch.nn.Linear(si.shape[1], ti.shape[1]).double()  # FD's projector (with bias)
    losses = {
        "clip": lambda a, b, c, d: C.contrastive_naive(a, b, s),
        "clip_chunked": lambda a, b, c, d: C.contrastive_chunked(a, b, s, bias, chunk=chunk),
        "siglip": lambda a, b, c, d: SG.siglip_naive(a, b, s, bias),
        "siglip_chunked": lambda a, b, c, d: SG.siglip_chunked(a, b, s, bias, chunk=chunk),
        "crd": lambda a, b, c, d: KD.similarity_kd_naive(a, b, s, c, d, t, 2.0),
        "crd_chunked": lambda a, b, c, d: KD.similarity_kd_chunked(a, b, s, c, d, t, 2.0, chunk=chunk),
        "icl": lambda a, b, c, d: Z.interactive_contrastive(a, b, c, d, s),
        "gd": lambda a, b, c, d: Z.gradient_distillation(a, b, s, c, d, t),
        "fd": lambda a, b, c, d: Z.feature_distillation(a, c, proj),
        "affinity": lambda a, b, c, d: Z.affinity_mimicking(a, b, s, c, d, t),
        "soft_ce": lambda a, b, c, d: Z.soft_target_ce(a, b, s, [(c, d, t), (d, c, s)]),
        "siglip_kd": lambda a, b, c, d: Z.siglip_distillation(a, b, s, bias, c, d, t, -bias),
    }
    for name, fn in losses.items():
        ref, permuted = fn(si, st_, ti, tt), fn(si[p], st_[p], ti[p], tt[p])
        assert torch.isfinite(ref), name
        _same(ref, permuted)


@FAST
@given(batches(), st.integers(1, 3))
def test_kd_terms_vanish_when_the_student_is_the_teacher(batch, chunk):
    si, st_, _, _, (s, _), _ = batch
    # CRD is a KL: exactly 0 at student = teacher, > 0 elsewhere
    for crd in (KD.similarity_kd_naive(si, st_, s, si, st_, s, 2.0),
                KD.similarity_kd_chunked(si, st_, s, si, st_, s, 2.0, chunk=chunk)):
        assert abs(crd.item()) < 1e-12
    assert KD.similarity_kd_naive(si, st_, s, si, st_, s * 1.5 + 1, 2.0).item() > 0
    assert Z.gradient_distillation(si, st_, s, si, st_, s).item() < 1e-20
    # FD re-normalises the projected student: at identity projection and student = teacher only
    # rounding is left (normalising a unit vector again)
    assert Z.feature_distillation(si, si, torch.nn.Identity()).item() < 1e-30
    # soft-CE terms are KL + the teacher's entropy: at student = teacher the value is that
    # entropy and the gradient with respect to the student vanishes
    sim = (si @ st_.T / 0.5)
    entropy = 0.5 * (-(sim.softmax(1) * sim.log_softmax(1)).sum(1).mean()
                     - (sim.softmax(0) * sim.log_softmax(0)).sum(0).mean())
    a, b = si.clone().requires_grad_(), st_.clone().requires_grad_()
    aff = Z.affinity_mimicking(a, b, 2.0, si, st_, 2.0)
    _same(aff.detach(), entropy)
    soft = Z.soft_target_ce(a, b, 2.0, [(si, st_, torch.tensor(2.0, dtype=torch.float64))])
    sig = Z.siglip_distillation(a, b, s, -1.0, si, st_, s, -1.0)
    for term in (aff, soft, sig):
        grads = torch.autograd.grad(term, (a, b))
        assert all(g.abs().max() < 1e-10 for g in grads)


def _official(k: int, n: int = 10) -> float:
    """Leave-one-annotator-out VQA accuracy when k of n annotators gave the prediction."""
    return (k * min(1.0, (k - 1) / 3) + (n - k) * min(1.0, k / 3)) / n


ANSWERS = ["yes", "no", "2", "red", "blue", "circle"]


@settings(max_examples=60, deadline=None, database=None)
@given(st.lists(st.sampled_from(ANSWERS), min_size=2, max_size=10), st.sampled_from(ANSWERS))
def test_vqa_accuracy_is_bounded_and_follows_the_annotators(answers, prediction):
    acc = vqa_accuracy(prediction, answers)
    assert 0.0 <= acc <= 1.0
    k, n = answers.count(prediction), len(answers)
    assert abs(acc - _official(k, n)) < 1e-12
    if k >= 4:
        assert acc == 1.0  # at least 3 of every 9 remaining annotators agree
    # spelling variants the normaliser folds (case, article, punctuation) score the same
    assert vqa_accuracy(f"The {prediction.upper()}!", answers) == acc


@settings(max_examples=30, deadline=None, database=None)
@given(st.integers(0, 10))
def test_vqa_accuracy_of_k_agreeing_annotators_out_of_ten(k):
    answers = ["red"] * k + ["blue"] * (10 - k)
    expected = {0: 0.0, 1: 0.3, 2: 0.6, 3: 0.9}.get(k, 1.0)
    assert abs(vqa_accuracy("red", answers) - expected) < 1e-12
    assert normalize_answer("Red.") == "red"


@FAST
@given(batches(), st.integers(1, 3), st.sampled_from([1.0, 2.5]))
def test_chunked_crd_gradient_is_the_naive_gradient(batch, chunk, tau):
    """Training's CRD term on CPU runs the chunked backward (mutation testing found no test
    reaching it): its gradients must be autograd's through the materialised formula."""
    si, st_, ti, tt, (s, t), _ = batch
    grads = []
    for fn in (KD.similarity_kd_naive, lambda *a: KD.similarity_kd_chunked(*a, chunk=chunk)):
        a, b = si.clone().requires_grad_(), st_.clone().requires_grad_()
        scale = torch.tensor(s, dtype=torch.float64, requires_grad=True)
        # a float64 teacher scale: a Python float would be rounded to float32 by the chunked path
        loss = fn(a, b, scale, ti, tt, torch.tensor(t, dtype=torch.float64), tau)
        grads.append([loss.detach(), *torch.autograd.grad(1.7 * loss, (a, b, scale))])
    for got, want in zip(grads[1], grads[0]):
        assert torch.allclose(got, want, rtol=1e-9, atol=1e-12), (got, want)


@FAST
@given(batches(), st.integers(1, 3), st.floats(-3.0, 3.0))
def test_chunked_siglip_and_row_loss_gradients_are_the_naive_ones(batch, chunk, bias):
    """The chunked SigLIP and row (local-loss) backwards, also reached by no fast test per
    mutmut, against autograd through their materialised formulas; scale and bias as float64
    tensors so both paths see the same numbers."""
    si, st_, _, _, (s, _), _ = batch
    rows = len(si) // 2 + 1  # this "rank's" rows against every column, at an offset
    offset = len(si) - rows
    pairs = {
        "siglip": (SG.siglip_naive, lambda a, b, sc, bi: SG.siglip_chunked(a, b, sc, bi, chunk=chunk)),
        "rows": (lambda a, b, sc, bi: C.row_contrastive_naive(a[offset:], b, sc, bi, offset=offset),
                 lambda a, b, sc, bi: C.row_contrastive_chunked(a[offset:], b, sc, bi, offset=offset, chunk=chunk)),
    }
    for name, fns in pairs.items():
        grads = []
        for fn in fns:
            a, b = si.clone().requires_grad_(), st_.clone().requires_grad_()
            sc, bi = (torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in (s, bias))
            loss = fn(a, b, sc, bi)
            grads.append([loss.detach(), *torch.autograd.grad(0.6 * loss, (a, b, sc, bi))])
        for got, want in zip(grads[1], grads[0]):
            assert torch.allclose(got, want, rtol=1e-9, atol=1e-12), (name, got, want)
