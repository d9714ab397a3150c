"""The pilot's variance components (`report.stats.variance_components`), which size the
detectable slope and the teachers needed: a study small enough to work out by hand, the edge
cases, and a simulation with known variances."""

import math

import numpy as np
import pytest

from clipdistill.report.stats import variance_components

DELTA, C0 = 3.0, 4.0


def _prep(gains, teachers, seeds, n_q):
    """`_prepare`'s arrays for a study with one VLM seed per run (each run's gain is its VLM's)."""
    gains = np.asarray(gains, dtype=float)
    return {"gains": gains, "vlm_gains": gains[:, None, :], "vlm_present": np.ones((len(gains), 1), dtype=bool),
            "teachers": list(teachers), "methods": ["kd"] * len(gains), "seeds": np.asarray(seeds),
            "n_questions": n_q}


def _hand_prep():
    """Seeds 1 and 2 with teachers a and b (one method), plus seed 0 — drawn first — with a single
    run of teacher c.
    Within each of seeds 0 and 1 the two runs differ by c_s + (±δ per question):
    g_a − g_b = [c_s + δ, c_s − δ, c_s + δ, c_s − δ], with c_0 = 4, c_1 = 0.
    Anything both runs of a seed share (here 10 + 5·question + 7·seed) must drop out."""
    pattern = np.array([DELTA, -DELTA, DELTA, -DELTA])
    rows, teachers, seeds = [], [], []
    for s, c in ((0, C0), (1, 0.0)):
        shared = 10.0 + 5.0 * np.arange(4) + 7.0 * s
        rows += [shared + (c + pattern) / 2, shared - (c + pattern) / 2]
        teachers += ["a", "b"]
        seeds += [s + 1, s + 1]
    rows.append(np.array([1.0, 2.0, 3.0, 6.0]))  # seed 0: one run, teacher c — no partner to centre on
    teachers.append("c")
    seeds.append(0)
    return _prep(rows, teachers, seeds, 4)


def _result(se_teacher, qualities=(1.0, 3.0), runs=(2, 2)):
    return {"se_teacher": se_teacher,
            "teachers": [{"quality": q, "runs": r} for q, r in zip(qualities, runs)]}


def test_components_of_a_study_worked_out_by_hand():
    c = variance_components(_hand_prep(), _result(se_teacher=2.0))
    # seed s, R = 2 runs: run a's part (g_a − mean)·√(R/(R−1)) = (c_s + pattern)/√2, run b's its
    # negative; over the 4 questions: values ±δ/√2 around c_s/√2, sample variance 4·(δ²/2)/3 = 2δ²/3
    question = 2 * DELTA**2 / 3
    assert c["question"] == pytest.approx(question)  # 6; seed 0's single run adds no question term
    # run means: a → c_s/√2, b → −c_s/√2 over seeds 0, 1: each cell's sample variance (c_0 − c_1)²/4;
    # pooled over the 2 cells (1 dof each; teacher c's single-run cell has none) = 4
    run_total = (C0 - 0.0) ** 2 / 4
    assert c["run"] == pytest.approx(run_total - question / 4)  # 2.5: minus the questions' share
    # teacher: residual variance se²·Sxx = 4·((1 − 2)² + (3 − 2)²) = 8, minus what the measurement
    # explains per teacher, (run + question/Q) / runs per teacher = (2.5 + 1.5) / 2 = 2
    assert c["teacher"] == pytest.approx(8.0 - 2.0)
    assert c["n_questions"] == 4
    assert c["runs_per_teacher"] == 2.0
    assert c["quality_sd"] == pytest.approx(1.0)  # population SD of (1, 3)
    assert math.isnan(c["vlm"])  # one VLM seed per run: no VLM-to-VLM spread to estimate


def test_components_are_truncated_at_zero():
    prep = _hand_prep()
    # a tiny teacher-level residual: the measurement explains more than all of it
    assert variance_components(prep, _result(se_teacher=0.1))["teacher"] == 0.0
    # runs that differ only question by question: the run part would be negative
    prep = _prep(prep["gains"][[2, 3, 2, 3, 4]], prep["teachers"], prep["seeds"], 4)  # seed 1 repeats seed 2 (c = 0)
    c = variance_components(prep, _result(se_teacher=2.0))
    assert c["question"] == pytest.approx(6.0)
    assert c["run"] == 0.0
    assert c["teacher"] == pytest.approx(8.0 - (0.0 + 1.5) / 2)


def test_runs_per_teacher_is_the_mean_over_teachers():
    c = variance_components(_hand_prep(), _result(se_teacher=2.0, qualities=(1.0, 3.0, 5.0), runs=(1, 2, 6)))
    assert c["runs_per_teacher"] == 3.0
    # Sxx = 4 + 0 + 4 = 8, so the residual is 4·8 = 32; the measurement part is (2.5 + 1.5)/3
    assert c["teacher"] == pytest.approx(32.0 - 4.0 / 3)
    assert c["quality_sd"] == pytest.approx(math.sqrt(8 / 3))


def test_what_cannot_be_estimated_is_nan_not_a_number_made_up():
    prep = _hand_prep()
    # no seed with two runs: no question term; no cell with two runs: no run term
    one_each = _prep(prep["gains"][[0, 2, 4]], ["a", "b", "c"], [0, 1, 2], 4)
    c = variance_components(one_each, _result(se_teacher=2.0))
    assert math.isnan(c["question"]) and math.isnan(c["run"])
    assert c["teacher"] == pytest.approx(8.0)  # nothing measured to subtract
    # two teachers: no teacher-level residual (se_teacher = inf or nan), so no teacher term
    assert math.isnan(variance_components(prep, _result(se_teacher=math.nan))["teacher"])


def test_components_recover_known_variances_by_simulation():
    """gain[run, q] = seed baseline + seed's question difficulty + run effect (SD τ) + noise (SD σ):
    `question` estimates σ², `run` estimates τ², whatever the shared parts and however many runs a seed has."""
    rng = np.random.default_rng(7)
    sigma, tau, n_q, n_seeds, n_teachers = 5.0, 2.0, 2000, 60, 3
    rows, teachers, seeds = [], [], []
    for s in range(n_seeds):
        shared = rng.normal(0, 10) + rng.normal(0, 3, n_q)
        for t in range(n_teachers):
            rows.append(shared + rng.normal(0, tau) + rng.normal(0, sigma, n_q))
            teachers.append(f"t{t}")
            seeds.append(s)
    prep = _prep(rows, teachers, seeds, n_q)
    c = variance_components(prep, _result(se_teacher=1.0, qualities=(1.0, 2.0, 3.0), runs=(n_seeds,) * 3))
    assert c["question"] == pytest.approx(sigma**2, rel=0.02)
    # pooled over 3·59 dof, the run variance's SE is about τ²·√(2/177) ≈ 0.43
    assert c["run"] == pytest.approx(tau**2, abs=1.3)


def test_vlm_component_with_three_vlm_seeds_worked_out():
    """One run, V = 3 VLM seeds, Q = 2 questions, gains [[1, 3], [2, 2], [6, 4]]:
    the VLMs' mean gains 2, 2, 5 vary by 3 (ddof 1); each VLM's deviation from the per-question
    mean, scaled by √(V/(V−1)) = √1.5, has variances 3, 0, 3 over the questions, mean 2, over
    Q = 2 → 1. Component 3 − 1 = 2. (With V = 2 the scale √(V/(V−1)) equals √(V(V−1)), so two
    VLM seeds cannot tell the factor apart.)"""
    from clipdistill.report.stats import _vlm_component

    gains = np.array([[[1.0, 3.0], [2.0, 2.0], [6.0, 4.0]]])
    prep = {"n_questions": 2, "vlm_gains": gains, "vlm_present": np.ones((1, 3), dtype=bool)}
    assert _vlm_component(prep) == pytest.approx(2.0, abs=1e-12)


def test_teachers_needed_is_exactly_the_threshold_for_every_threshold(monkeypatch):
    """With a detectable slope of 1/t, a target of 1/k is first detected at k teachers: the
    bisection must land on k itself for every k from 3 to `most`, not on a neighbour."""
    import clipdistill.report.stats as st

    monkeypatch.setattr(st, "detectable_slope", lambda components, *, n_teachers, **_: 1.0 / n_teachers)
    found = {k: st.teachers_needed({}, 1.0 / k + 1e-12, runs_per_teacher=1, n_questions=1) for k in range(3, 201)}
    assert found == {k: k for k in range(3, 201)}
    assert st.teachers_needed({}, 1.0 / 201, runs_per_teacher=1, n_questions=1) is None
