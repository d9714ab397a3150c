"""The teacher effect on studies small enough to work out by hand, and its refusals."""

import numpy as np
import pandas as pd
import pytest
from scipy import optimize, stats

from clipdistill.report.stats import (StudyInputError, detectable_slope, holm, paired_effects, rejection_probability,
                                      teacher_effect, verdict_sentence)


def study(gains: dict, quality: dict, seeds=(0, 1), n_q=12, base=0.5, method="kd"):
    """Every question of a KD run scores `base + gain/100`, every baseline question `base`:
    each teacher's mean gain is exactly `gains[teacher]` points, with no noise at all."""
    rows = []
    for s in seeds:
        rows += [{"teacher": None, "teacher_quality": np.nan, "method": "baseline", "seed": s, "question_id": q,
                  "score": base} for q in range(n_q)]
        for t, g in gains.items():
            rows += [{"teacher": t, "teacher_quality": quality[t], "method": method, "seed": s, "question_id": q,
                      "score": base + g / 100} for q in range(n_q)]
    return pd.DataFrame(rows)


def test_slope_and_ci_are_the_teacher_level_regression_written_out():
    x, y = np.array([30.0, 40.0, 50.0]), np.array([1.0, 2.0, 4.0])
    r = teacher_effect(study(dict(zip("abc", y)), dict(zip("abc", x))), margin=1.0, n_boot=50)
    # OLS through the teacher means: slope = Σ(x − x̄)y / Σ(x − x̄)² = (−10·1 + 10·4) / 200
    assert r["slope"] == pytest.approx(0.15)
    # residuals (1/6, −1/3, 1/6): s² = (1/36 + 1/9 + 1/36) / (3 − 2) = 1/6; se = √(s² / 200)
    se = (1 / 6 / 200) ** 0.5
    assert r["se"] == pytest.approx(se) and r["se_measurement"] == pytest.approx(0, abs=1e-12)
    half = stats.t.ppf(0.975, 1) * se  # 12.706 · 0.0289 = 0.367
    assert r["ci"] == pytest.approx([0.15 - half, 0.15 + half])
    assert r["df"] == 1 and r["n_teachers"] == 3
    assert r["verdict"] == "equivalent"  # [−0.22, 0.52] lies inside ±1 and contains 0
    assert teacher_effect(study(dict(zip("abc", y)), dict(zip("abc", x))), margin=0.1, n_boot=50)["verdict"] \
        == "inconclusive"  # the same CI against a margin of ±0.1
    assert teacher_effect(study(dict(zip("abc", y)), dict(zip("abc", x))), margin=0.3, n_boot=50)["verdict"] \
        == "inconclusive"  # one end inside ±0.3, the other outside: equivalence needs both


@pytest.mark.parametrize("sign, expected", [(1, "better"), (-1, "worse")])
def test_a_clear_slope_gives_its_direction(sign, expected):
    x = np.array([30.0, 40.0, 50.0, 60.0, 70.0])
    y = sign * np.array([1.0, 2.1, 2.9, 4.0, 5.05])
    r = teacher_effect(study(dict(zip("abcde", y)), dict(zip("abcde", x))), margin=0.01, n_boot=50)
    slope, intercept = np.polyfit(x, y, 1)
    resid = y - (intercept + slope * x)
    se = (resid @ resid / 3 / ((x - x.mean()) @ (x - x.mean()))) ** 0.5
    assert r["slope"] == pytest.approx(slope) and r["se"] == pytest.approx(se)
    assert r["verdict"] == expected and r["p"] < 0.001
    assert verdict_sentence(r).startswith(f"Better teachers make {expected} students here")


def test_the_measurement_floors_the_teacher_level_error():
    """Three teachers exactly on a line have zero residual; the seeds' and questions' own
    noise must still widen the CI, or three lucky teachers would 'prove' anything."""
    rng = np.random.default_rng(0)
    df = study({"a": 0.0, "b": 1.0, "c": 2.0}, {"a": 30, "b": 40, "c": 50}, n_q=400)
    kd = df["method"] == "kd"
    noise = rng.choice([-0.2, 0.2], size=kd.sum())
    noise -= pd.Series(noise).groupby([df.loc[kd, "teacher"].to_numpy(), df.loc[kd, "seed"].to_numpy()]) \
        .transform("mean").to_numpy()  # zero mean per run: the teacher means stay exactly on the line
    df.loc[kd, "score"] += noise
    r = teacher_effect(df, margin=1.0, n_boot=300)
    assert r["slope"] == pytest.approx(0.1) and r["se_teacher"] == pytest.approx(0, abs=1e-9)
    assert r["se_measurement"] > 0.003 and r["se"] == r["se_measurement"]
    assert r["ci"][0] < 0.1 - 12 * 0.003  # t(1 df) times the floor, not a zero-width interval


def test_paired_against_the_seed_matched_baseline():
    """Seed 1's baseline is 20 points better than seed 0's, and so are seed 1's KD runs: the
    paired gain removes it; an unpaired comparison would not."""
    df = study({"a": 1.0, "b": 3.0, "c": 5.0}, {"a": 30, "b": 40, "c": 50}, base=0.3)
    df.loc[df["seed"] == 1, "score"] += 0.2
    r = teacher_effect(df, n_boot=50)
    assert [t["gain"] for t in r["teachers"]] == pytest.approx([1.0, 3.0, 5.0])
    assert r["slope"] == pytest.approx(0.2) and r["se"] == pytest.approx(0, abs=1e-9)
    gains = paired_effects(df, n_boot=50)
    assert [(g["teacher"], g["gain"]) for g in gains] == [("a", pytest.approx(1)), ("b", pytest.approx(3)),
                                                          ("c", pytest.approx(5))]


def test_methods_get_their_own_slopes_with_holm():
    a = study({"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0}, {"a": 30, "b": 40, "c": 50, "d": 60}, method="fd")
    b = study({"a": 1.0, "b": 1.0, "c": 1.0, "d": 1.0}, {"a": 30, "b": 40, "c": 50, "d": 60}, method="crd")
    df = pd.concat([a, b[b["method"] == "crd"]], ignore_index=True)
    r = teacher_effect(df, margin=0.05, n_boot=50)
    assert r["methods"]["fd"]["slope"] == pytest.approx(0.1) and r["methods"]["crd"]["slope"] == pytest.approx(0)
    assert r["slope"] == pytest.approx(0.05)  # teacher means pool both methods
    assert {m: v["verdict"] for m, v in r["methods"].items()} == {"fd": "better", "crd": "equivalent"}


def test_holm_by_hand():
    # sorted 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, 0.04·1 = 0.04 → raised to 0.06 (monotone)
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def test_power_without_a_floor_is_the_noncentral_t():
    for df, delta in [(1, 2.0), (6, 2.5), (20, 3.0)]:
        crit = stats.t.ppf(0.975, df)
        exact = stats.nct.sf(crit, df, delta) + stats.nct.cdf(-crit, df, delta)
        assert rejection_probability(delta * 0.3, se_total=0.3, se_floor=0.0, df=df, grid=4000) \
            == pytest.approx(exact, abs=2e-3)
    # a floor at the whole standard error: a z-test against the t critical value
    crit = stats.t.ppf(0.975, 4)
    assert rejection_probability(1.0, se_total=0.5, se_floor=0.5 * 1e6, df=4) == pytest.approx(0, abs=1e-12)
    assert rejection_probability(1.0, se_total=0.5, se_floor=0.5, df=4) <= stats.norm.sf(crit - 2.0) + stats.norm.cdf(-crit - 2.0)


def test_detectable_slope_written_out():
    # nothing measured (run = question = 0): no floor, the non-central t with 6 df;
    # var of a teacher mean = 1.5, se = √(1.5 / (8 · 10²))
    comp = {"teacher": 1.5, "run": 0.0, "question": 0.0, "quality_sd": 10.0}
    se = (1.5 / 800) ** 0.5
    crit = stats.t.ppf(0.975, 6)
    delta = optimize.brentq(lambda d: stats.nct.sf(crit, 6, d) + stats.nct.cdf(-crit, 6, d) - 0.8, 0, 8)
    assert detectable_slope(comp, n_teachers=8, runs_per_teacher=3, n_questions=1000) == pytest.approx(delta * se, rel=1e-3)
    # with measurement noise the floor costs power: a larger slope is needed than the plain t says
    comp = {"teacher": 1.0, "run": 0.5, "question": 1000.0, "quality_sd": 10.0}
    mds = detectable_slope(comp, n_teachers=8, runs_per_teacher=3, n_questions=1000)
    assert mds > delta * se
    se_floor = ((0.5 + 1.0) / 3 / 800) ** 0.5
    assert rejection_probability(mds, se_total=se, se_floor=se_floor, df=6) == pytest.approx(0.8, abs=1e-4)
    assert detectable_slope(comp, n_teachers=2, runs_per_teacher=3, n_questions=1000) == np.inf
    assert detectable_slope(comp, n_teachers=20, runs_per_teacher=3, n_questions=1000) < mds


def test_inconclusive_says_what_it_would_need():
    df = study({"a": 1.0, "b": 5.0, "c": 2.0}, {"a": 30, "b": 40, "c": 50})
    r = teacher_effect(df, margin=0.05, n_boot=50)
    assert r["verdict"] == "inconclusive" and r["detectable_slope"] > 0.05
    assert r["teachers_needed_for_margin"] is None or r["teachers_needed_for_margin"] > 3
    sentence = verdict_sentence(r)
    assert sentence.startswith("Inconclusive: this study cannot tell") and "80% power" in sentence
    eq = teacher_effect(study({"a": 1.0, "b": 1.01, "c": 1.0, "d": 1.02}, {"a": 30, "b": 40, "c": 50, "d": 60}),
                        margin=0.05, n_boot=50)
    assert eq["verdict"] == "equivalent"
    assert verdict_sentence(eq).startswith("Teacher quality does not matter here")


def _base():
    return study({"a": 1.0, "b": 2.0, "c": 3.0}, {"a": 30, "b": 40, "c": 50})


@pytest.mark.parametrize("broken, message", [
    (lambda d: d[d["method"] != "baseline"], "no baseline rows"),
    (lambda d: d[d["teacher"].isin(["a", None]) | (d["method"] == "baseline")], "only one teacher"),
    (lambda d: d.assign(score=d["score"].where(d.index != 5, 1.5)), r"score\(s\) outside \[0, 1\]"),
    (lambda d: d.assign(score=d["score"].where(d.index != 5, np.nan)), r"outside \[0, 1\]"),
    (lambda d: pd.concat([d, d.iloc[[3]]]), "duplicate rows"),
    (lambda d: d.drop(columns="seed"), "lacks column"),
    (lambda d: d[~((d["seed"] == 1) & (d["method"] == "baseline"))], "no baseline with seed 1"),
    (lambda d: d[~((d["teacher"] == "b") & (d["question_id"] == 3) & (d["seed"] == 0))], "answers 11 of"),
    (lambda d: d.assign(teacher_quality=d["teacher_quality"].where(d.index != 20, 99.0)), "more than one"),
    (lambda d: d.iloc[0:0], "empty"),
])
def test_bad_input_is_one_line(broken, message):
    with pytest.raises(StudyInputError, match=message) as err:
        teacher_effect(broken(_base()), n_boot=10)
    assert "\n" not in str(err.value)


def test_two_teachers_are_inconclusive_whatever_the_gap():
    """A line through two points has no residual to judge it by: no CI, no verdict."""
    r = teacher_effect(study({"a": 0.0, "b": 30.0}, {"a": 30, "b": 40}), margin=1.0, n_boot=50)
    assert r["slope"] == pytest.approx(3.0) and r["ci"] == [-np.inf, np.inf] and r["verdict"] == "inconclusive"
    assert r["detectable_slope"] == np.inf
    assert "at least 3 teachers" in verdict_sentence(r)


def test_holm_caps_at_one():
    assert holm([0.6, 0.9]) == [1.0, 1.0]  # 2 · 0.6 = 1.2 is not a probability


def test_verdict_needs_the_ci_to_exclude_zero_and_lie_strictly_inside_the_margin():
    from clipdistill.report.stats import _verdict

    assert _verdict([0.0, 0.5], 1.0) == "equivalent"  # touching 0 does not exclude it
    assert _verdict([-0.5, 0.0], 1.0) == "equivalent"
    assert _verdict([-1.0, 0.5], 1.0) == "inconclusive"  # touching the margin is not inside it
    assert _verdict([-0.5, 1.0], 1.0) == "inconclusive"


def test_teachers_of_any_name_type_and_their_run_counts():
    """Teacher names need not be strings of one type (sorted by their text), and each teacher
    reports how many KD runs its mean gain pools."""
    r = teacher_effect(study({1: 1.0, "b": 2.0, "c": 4.0}, {1: 30, "b": 40, "c": 50}, seeds=(0, 1, 2)), n_boot=20)
    assert [(t["teacher"], t["runs"]) for t in r["teachers"]] == [(1, 3), ("b", 3), ("c", 3)]
    assert [t["gain"] for t in r["teachers"]] == pytest.approx([1.0, 2.0, 4.0])


def test_teachers_of_one_quality_give_no_slope():
    r = teacher_effect(study({"a": 1.0, "b": 2.0, "c": 4.0}, {"a": 30, "b": 30, "c": 30}), margin=1.0, n_boot=20)
    assert np.isnan(r["slope"]) and np.isnan(r["se"]) and r["ci"] == [-np.inf, np.inf]
    assert (r["df"], r["p"], r["verdict"], r["within_margin"]) == (0, 1.0, "inconclusive", False)
    assert r["detectable_slope"] == np.inf and r["teachers_needed_for_margin"] is None


def test_inconclusive_sentence_word_for_word():
    effect = {"ci": [-1.0, 2.0], "slope": 0.5, "n_teachers": 3, "margin": 0.1, "verdict": "inconclusive",
              "teachers_needed_for_margin": None, "detectable_slope": 3.0}
    assert verdict_sentence(effect) == (
        "Inconclusive: this study cannot tell whether the KD gain depends on teacher quality (slope +0.50 VQA "
        "points per unit of teacher quality, 95% CI [-1.00, +2.00], 3 teachers; smallest slope detectable with "
        "80% power: 3.00; to resolve a slope of ±0.1 it would need more than 200 teachers at this many seeds and "
        "questions per teacher).")
    assert "it would need about 12 teachers at this many seeds" in verdict_sentence(
        effect | {"teachers_needed_for_margin": 12})


def test_paired_p_values_of_noiseless_gains():
    """Without noise every bootstrap draw equals the gain: the CI is the point, the p-value is
    the bootstrap's floor 1/B for a gain of either sign and 1 for no gain; Holm over the cells."""
    df = study({"a": 0.5, "b": -3.0, "c": 0.0}, {"a": 30, "b": 40, "c": 50})
    gains = paired_effects(df, n_boot=50)
    assert [(g["teacher"], g["method"], g["seeds"]) for g in gains] == [("a", "kd", 2), ("b", "kd", 2), ("c", "kd", 2)]
    assert [g["ci"] for g in gains] == [pytest.approx([0.5, 0.5]), pytest.approx([-3.0, -3.0]), pytest.approx([0, 0])]
    assert [g["p"] for g in gains] == pytest.approx([0.02, 0.02, 1.0])
    assert [g["p_holm"] for g in gains] == pytest.approx([0.06, 0.06, 1.0])


def test_bootstrap_defaults_are_1000_draws_of_seed_0_at_95_percent():
    from clipdistill.report.stats import bootstrap_mean_ci

    runs = np.random.default_rng(1).random((3, 40))
    assert bootstrap_mean_ci(runs) == bootstrap_mean_ci(runs, n_boot=1000, seed=0, level=0.95)
    assert bootstrap_mean_ci(runs) != bootstrap_mean_ci(runs, n_boot=1001, seed=0, level=0.95)


def test_one_vlm_seed_is_the_study_from_before_vlm_seeds():
    """A `vlm_seed` column with one value changes nothing: the same numbers, bit for bit, as
    the table without it (the analysis before VLM seeds existed)."""
    from clipdistill.report.stats import bootstrap_mean_ci

    rng = np.random.default_rng(0)
    df = study({"a": 1.0, "b": 2.5, "c": 3.0}, {"a": 30, "b": 40, "c": 50}, n_q=50)
    df["score"] = np.clip(df["score"] + rng.normal(0, 0.2, len(df)), 0, 1)
    for analysis in (teacher_effect, paired_effects):
        before, after = analysis(df, n_boot=200, seed=3), analysis(df.assign(vlm_seed=7), n_boot=200, seed=3)
        if analysis is teacher_effect:
            assert np.isnan(after["components"].pop("vlm")) and np.isnan(before["components"].pop("vlm"))
        assert repr(before) == repr(after)
    runs = rng.random((3, 40))
    assert bootstrap_mean_ci(runs) == bootstrap_mean_ci(runs[:, None, :])


def vlm_study(shift: float, signs: dict, quality: dict, n_q=20):
    """`study` with two VLMs per run whose scores sit `shift` points above and below the run's
    (sign per teacher: +1, 0, −1), the same on every question; run means stay on the line."""
    base = study({t: 0.1 * (q - 30) for t, q in quality.items()}, quality, n_q=n_q)
    frames = []
    for v, direction in ((0, 1), (1, -1)):
        vlm = base.assign(vlm_seed=v)
        kd = vlm["method"] == "kd"
        vlm.loc[kd, "score"] += direction * shift / 100 * vlm.loc[kd, "teacher"].map(signs)
        frames.append(vlm)
    return pd.concat(frames, ignore_index=True)


def test_the_vlm_seeds_floor_the_slope_error():
    """Three teachers exactly on the line at the run level, but a run's two VLMs differ by ±4
    points, in opposite directions for the outer teachers: only redrawing each student seed's
    VLM seeds can see it. Per student seed the redrawn mean shift is 4·u, u ∈ {1, 0, −1} with
    P = ¼, ½, ¼ (Var u = ½); a seed draw averages the 2 seeds with multinomial multiplicities c
    (E c² = 3/2: Var of the seed-averaged u is 3/8), and the slope moves by
    (−10·(+4u) + 10·(−4u))/200 = −0.4u: SE = 0.4·√(3/8) = 0.245."""
    df = vlm_study(4.0, {"a": 1, "b": 0, "c": -1}, {"a": 30, "b": 40, "c": 50})
    r = teacher_effect(df, margin=1.0, n_boot=4000)
    assert r["slope"] == pytest.approx(0.1) and r["se_teacher"] == pytest.approx(0, abs=1e-9)
    assert r["se_measurement"] == pytest.approx(0.4 * (3 / 8) ** 0.5, rel=0.08) and r["se"] == r["se_measurement"]
    assert r["n_vlm_seeds"] == 2
    # the spread between a run's VLMs: (±4)² · 2 / (2 − 1) / 2 = 32 for a and c, 0 for b: mean 64/3
    assert r["components"]["vlm"] == pytest.approx(64 / 3)
    gains = {g["teacher"]: g for g in paired_effects(df, n_boot=2000)}
    assert gains["b"]["ci"] == pytest.approx([1.0, 1.0]) and gains["a"]["ci"][1] - gains["a"]["ci"][0] > 4


@pytest.mark.parametrize("broken, message", [
    (lambda d: d[~((d["vlm_seed"] == 1) & (d["method"] == "baseline") & (d["seed"] == 0))],
     r"has VLM seeds \[0, 1\] but the seed-0 baseline has \[0\]"),
    (lambda d: d[~((d["vlm_seed"] == 1) & (d["teacher"] == "b"))], r"has VLM seeds \[0\] but the seed-0 baseline"),
    (lambda d: pd.concat([d, d[d["vlm_seed"] == 1].iloc[[0]]]), "duplicate rows .*VLM seed 1"),
])
def test_bad_vlm_seed_tables_are_one_line(broken, message):
    df = vlm_study(1.0, {"a": 1, "b": 0, "c": -1}, {"a": 30, "b": 40, "c": 50})
    with pytest.raises(StudyInputError, match=message) as err:
        teacher_effect(broken(df), n_boot=10)
    assert "\n" not in str(err.value)


def test_the_table_ci_redraws_each_seeds_vlms():
    """Both seeds' VLMs sit at +1 and −1 on every question: only redrawing the VLMs within a
    seed moves the mean. A drawn seed's VLM mean is ±1 with probability ¼ each, so the mean
    of two is −1 with probability 1/16 > 2.5%: the 95% CI is [−1, +1]."""
    from clipdistill.report.stats import bootstrap_mean_ci

    runs = np.stack([np.ones((2, 10)), -np.ones((2, 10))], axis=1)  # seeds × VLM seeds × questions
    assert bootstrap_mean_ci(runs, n_boot=2000) == pytest.approx((0.0, -1.0, 1.0))


# ------------------------------------------------------------------ bootstraps drawn by hand (issue 23)

def _uneven_seeds():
    """Teachers a, b, c at 30, 40, 50 with mean gains 1, 3, 5 (exactly on a line): b's and c's
    seed-1 runs are 1 and 2 points above their means and their seed-0 runs as far below; a has
    two seed-0 runs only, method kd at 0 and method fd at 2. Gains are the same on every question."""
    df = study({"a": 1.0, "b": 3.0, "c": 5.0}, {"a": 30, "b": 40, "c": 50}, n_q=4)
    for t, d in (("b", 1.0), ("c", 2.0)):
        df.loc[(df["teacher"] == t) & (df["seed"] == 1), "score"] += d / 100
        df.loc[(df["teacher"] == t) & (df["seed"] == 0), "score"] -= d / 100
    df = df[~((df["teacher"] == "a") & (df["seed"] == 1))]
    a = df[df["teacher"] == "a"]
    return pd.concat([df[df["teacher"] != "a"], a.assign(score=a["score"] - 0.01),
                      a.assign(score=a["score"] + 0.01, method="fd")], ignore_index=True)


@pytest.mark.parametrize("sign", [1, -1])
def test_the_measurement_error_from_three_seed_draws_worked_out(sign):
    """Three bootstrap draws given by hand (every question once): seed 0 twice gives teacher
    means 1, 2, 3 (slope 0.1); seed 1 once gives b = 4, c = 7 while a, none of whose seeds was
    drawn, keeps the mean of its two runs, 1 (slope 0.3); one of each gives 1, 3, 5 (0.2).
    The slopes' SD (ddof 1) is 0.1, the CI 0.2 ± t₀.₉₇₅(1)·0.1 = [−1.07, 1.47]: inside ±1.5,
    not inside ±1.2. Negated gains mirror all of it."""
    from clipdistill.report.stats import _analyse, _prepare

    df = _uneven_seeds()
    kd = df["method"] != "baseline"
    df.loc[kd, "score"] = 0.5 + sign * (df.loc[kd, "score"] - 0.5)
    prep = _prepare(df)
    boot_s = np.array([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])  # weights need not sum to the seed count

    def analyse(margin):
        return _analyse(prep, np.arange(len(prep["teachers"])), margin, np.ones((3, 4)), boot_s,
                        np.zeros((3, 2, 1)), 0.95)

    r = analyse(1.5)
    half = stats.t.ppf(0.975, 1) * 0.1
    assert r["slope"] == pytest.approx(sign * 0.2) and r["se_teacher"] == pytest.approx(0, abs=1e-9)
    assert r["se_measurement"] == pytest.approx(0.1) and r["se"] == pytest.approx(0.1)
    assert r["ci"] == pytest.approx([sign * 0.2 - half, sign * 0.2 + half])
    assert r["p"] == pytest.approx(2 * stats.t.sf(2.0, 1)) and r["df"] == 1
    assert (r["within_margin"], r["verdict"]) == (True, "equivalent")
    assert (analyse(1.2)["within_margin"], analyse(1.2)["verdict"]) == (False, "inconclusive")


def _one_seed_of_three_lags():
    """Teacher a gains 0 points with seed 0 and 3 with seeds 1 and 2; teacher b 1 point with
    every seed. A draw of three seeds gives a the mean 3 − c₀ with c₀ ~ Binomial(3, ⅓): 0, 1,
    2, 3 with probability 1/27, 6/27, 12/27, 8/27, whatever the question draw."""
    df = study({"a": 3.0, "b": 1.0}, {"a": 30, "b": 40}, seeds=(0, 1, 2), n_q=4)
    df.loc[(df["teacher"] == "a") & (df["seed"] == 0), "score"] -= 0.03
    return df


@pytest.mark.parametrize("level, ci", [(0.95, [0.0, 3.0]), (0.9, [1.0, 3.0])])
def test_paired_effects_percentile_ci_worked_out(level, ci):
    """The 2.5% point of a's bootstrap is 0 (P = 1/27 = 3.7% there), the 5% point 1, the 95%
    and 97.5% points 3 (P = 8/27 at 3); p ≈ 2·(1/27) + 1/B; b's gain never moves."""
    a, b = paired_effects(_one_seed_of_three_lags(), n_boot=4000, level=level)
    assert (a["teacher"], a["gain"], a["seeds"], a["quality"]) == ("a", pytest.approx(2.0), 3, 30.0)
    assert a["ci"] == pytest.approx(ci, abs=1e-9) and b["ci"] == pytest.approx([1.0, 1.0])
    assert a["p"] == pytest.approx(2 / 27 + 1 / 4000, abs=0.01)


@pytest.mark.parametrize("level, ci", [(0.95, (0.0, 3.0)), (0.9, (1.0, 3.0))])
def test_table_percentile_ci_worked_out(level, ci):
    """`bootstrap_mean_ci` on the same three seeds (0, 3, 3 on every question): the same law."""
    from clipdistill.report.stats import bootstrap_mean_ci

    runs = np.array([[0.0] * 4, [3.0] * 4, [3.0] * 4])
    assert bootstrap_mean_ci(runs, n_boot=4000, level=level) == pytest.approx((2.0, *ci), abs=1e-9)


def test_paired_cells_come_in_teacher_then_method_order():
    """Cells sorted by the text of (teacher, method), whatever the order of the rows and
    however teachers are named (an int and a str here)."""
    fd = study({"b": 2.0, 1: 1.0}, {"b": 40, 1: 30}, method="fd")
    crd = study({"b": 4.0, 1: 3.0}, {"b": 40, 1: 30}, method="crd")
    df = pd.concat([fd, crd[crd["method"] == "crd"]], ignore_index=True)
    cells = paired_effects(df, n_boot=20)
    assert [(c["teacher"], c["method"], c["gain"], c["quality"]) for c in cells] == [
        (1, "crd", pytest.approx(3.0), 30.0), (1, "fd", pytest.approx(1.0), 30.0),
        ("b", "crd", pytest.approx(4.0), 40.0), ("b", "fd", pytest.approx(2.0), 40.0)]


COMPONENTS = {"teacher": 0.0, "run": 1.0, "question": 0.0, "quality_sd": 10.0}


def test_teachers_needed_is_the_fewest_that_detect_the_target():
    """With run variance 1 and one run per teacher the detectable slope falls with the teacher
    count T (0.94 at T = 3, 0.20 at 5, 0.16 at 6): 6 teachers detect 0.2, 5 do not; 3 are
    enough for 1.0; with at most 5 allowed, 0.2 needs more (None)."""
    from clipdistill.report.stats import teachers_needed

    def mds(t):
        return detectable_slope(COMPONENTS, n_teachers=t, runs_per_teacher=1, n_questions=100)

    assert mds(5) > 0.2 >= mds(6) and mds(3) <= 1.0
    assert teachers_needed(COMPONENTS, 0.2, runs_per_teacher=1, n_questions=100) == 6
    assert teachers_needed(COMPONENTS, 1.0, runs_per_teacher=1, n_questions=100) == 3
    assert teachers_needed(COMPONENTS, 0.2, runs_per_teacher=1, n_questions=100, most=6) == 6
    assert teachers_needed(COMPONENTS, 0.2, runs_per_teacher=1, n_questions=100, most=5) is None


def test_detectable_slope_edges():
    """No variance at all: any slope is detected (0); the quality SD given overrides the
    pilot's (twice the spread, half the slope when nothing floors it)."""
    zero = {"teacher": 0.0, "run": 0.0, "question": 0.0, "quality_sd": 10.0}
    assert detectable_slope(zero, n_teachers=5, runs_per_teacher=1, n_questions=100) == 0.0
    noise = {"teacher": 1.0, "run": 0.0, "question": 0.0, "quality_sd": 10.0}
    wide = detectable_slope(noise, n_teachers=5, runs_per_teacher=1, n_questions=100, quality_sd=20.0)
    assert wide == pytest.approx(detectable_slope(noise, n_teachers=5, runs_per_teacher=1, n_questions=100) / 2,
                                 rel=1e-4)
    narrow = detectable_slope(noise | {"quality_sd": 0.5}, n_teachers=5, runs_per_teacher=1, n_questions=100)
    assert narrow == pytest.approx(40 * wide, rel=1e-4)  # a spread below 1 is still a spread
    assert detectable_slope(noise | {"quality_sd": 0.0}, n_teachers=5, runs_per_teacher=1, n_questions=100) == np.inf


def test_each_verdict_sentence_word_for_word():
    effect = {"ci": [0.5, 1.25], "slope": 0.875, "n_teachers": 4, "margin": 0.25}
    ci = "slope +0.88 VQA points per unit of teacher zero-shot, 95% CI [+0.50, +1.25], 4 teachers"
    assert verdict_sentence(effect | {"verdict": "better"}, "teacher zero-shot") == (
        "Better teachers make better students here: the KD gain over the no-KD student rises with teacher "
        f"zero-shot ({ci}).")
    assert verdict_sentence(effect | {"verdict": "worse"}, "teacher zero-shot") == (
        "Better teachers make worse students here: the KD gain over the no-KD student falls as teacher zero-shot "
        f"rises ({ci}).")
    assert verdict_sentence(effect | {"verdict": "equivalent"}, "teacher zero-shot") == (
        "Teacher quality does not matter here: any relation is smaller than the margin of ±0.25 points per unit "
        f"({ci}).")
    assert verdict_sentence(effect | {"verdict": "inconclusive", "n_teachers": 2}) == (
        "Inconclusive: this study cannot tell whether the KD gain depends on teacher quality (slope +0.88 VQA "
        "points per unit of teacher quality, 95% CI [+0.50, +1.25], 2 teachers; a confidence interval for a slope "
        "needs at least 3 teachers).")
