"""Report statistics on inputs with known answers, and the report on fabricated results trees
— one per verdict, so that every wording is asserted."""

import itertools
import json

import numpy as np
import pytest

from clipdistill.report.stats import bootstrap_mean_ci, rank_correlations
from clipdistill.report.study import report


def test_perfectly_monotone_gives_rank_correlation_one():
    c = rank_correlations([0.1, 0.2, 0.3, 0.4, 0.5], [1, 4, 9, 16, 25])
    assert c["spearman"] == pytest.approx(1) and c["kendall"] == pytest.approx(1)
    assert c["spearman_ci"][0] == pytest.approx(1)  # every non-degenerate resample is monotone too


def test_reversed_and_unrelated():
    assert rank_correlations([1, 2, 3, 4], [9, 7, 5, 1])["spearman"] == pytest.approx(-1)
    x = list(range(20)) * 2
    y = list(range(20)) + list(range(20))[::-1]  # rises and falls symmetrically: ρ = 0
    c = rank_correlations(x, y)
    assert c["spearman"] == pytest.approx(0, abs=1e-12)
    assert c["spearman_ci"][0] < 0 < c["spearman_ci"][1]
    with pytest.raises(ValueError, match="≥ 3 paired values"):
        rank_correlations([1, 2], [3, 4])


def test_bootstrap_ci_covers_the_mean_and_shrinks_with_data():
    rng = np.random.default_rng(1)
    small = rng.normal(50, 10, (2, 30))
    large = rng.normal(50, 10, (2, 3000))
    m, lo, hi = bootstrap_mean_ci(small, 500, 0)
    M, LO, HI = bootstrap_mean_ci(large, 500, 0)
    assert lo < m < hi and LO < M < HI and (HI - LO) < (hi - lo) / 4
    assert bootstrap_mean_ci(np.full((1, 10), 7.0), 200)[1:] == pytest.approx((7.0, 7.0))


def test_bootstrap_draws_questions_jointly_for_all_seeds():
    """Two seeds that answer every question alike: their mean varies with the question draw
    only, so the CI equals that of one seed. Drawn independently per seed it would be ~√2
    narrower."""
    rng = np.random.default_rng(2)
    one = rng.integers(0, 2, 400).astype(float) * 100
    _, lo1, hi1 = bootstrap_mean_ci(one[None, :], 2000, 0)
    _, lo2, hi2 = bootstrap_mean_ci(np.stack([one, one]), 2000, 0)
    assert (hi2 - lo2) == pytest.approx(hi1 - lo1, rel=0.1)


def _write(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def fabricate(tmp_path, right, n_q=40, teachers=("s", "m", "l"), baseline_right=lambda seed: 15 + seed,
              vlm_seeds=(0,), vlm_shift=lambda rank, seed, vlm_seed: 0, regimes=(("distill", 1),),
              regime_shift=lambda data, duration, rank, seed: 0, seeds=(0, 1)):
    """A results tree where KD student (teacher rank r, seed s) answers `right(r, s)` of the
    `n_q` questions right (the first ones), the no-KD student `baseline_right(s)`; its VLM of
    VLM seed v answers `vlm_shift(r, s, v)` more (rank None: the baseline); in regime (data,
    duration) every student answers `regime_shift(data, duration, r, s)` more."""
    res, data = tmp_path / "results", tmp_path / "vqa_eval"
    qids = [1000 + 7 * q for q in range(n_q)]  # real ids, not row indices
    _write(data / "annotations.json", {"annotations": [{"question_id": q, "answers": [{"answer": "yes"}] * 10}
                                                       for q in qids]})
    for rank, t in enumerate(teachers):
        _write(res / "teacher_eval" / t / "metrics.json", {"summary": {"zeroshot_mean_top1": 0.3 + 0.1 * rank,
                                                                       "retrieval_mean_R@1": 0.1 * rank}})
        _write(res / "teachers" / t / "manifest.json", {"params": {"total": 10 ** (rank + 4), "visual": 10}})
        for (d, n), method, seed in itertools.product(regimes, ("baseline", "kd"), seeds):
            run = f"{d}-x{n}/{t}/xs/{method}/{seed}"
            _write(res / "student_eval" / run / "metrics.json",
                   {"summary": {"zeroshot_mean_top1": 0.2 + 0.05 * rank, "cka_image": 0.9}})
            # the teacher-free baseline lives under none/, once per seed
            run = f"{d}-x{n}/{t}/xs/kd/{seed}" if method == "kd" else f"{d}-x{n}/none/xs/baseline/{seed}"
            _write(res / "students" / run / "manifest.json",
                   {"params": {"total": 1000, "visual": 500}, "data": {"split": "results/data/distill"},
                    "train": {"epochs": 8}})
            (res / "students" / run / "train_log.csv").write_text("step,loss\n0,5.0\n1,4.0\n")
            for v in vlm_seeds:
                kd_rank = rank if method == "kd" else None
                n_right = (right(rank, seed) if method == "kd" else baseline_right(seed)) \
                    + vlm_shift(kd_rank, seed, v) + regime_shift(d, n, kd_rank, seed)
                answers = res / "vqa" / "students" / run / f"vlm{v}" / "answers.jsonl"
                answers.parent.mkdir(parents=True, exist_ok=True)
                answers.write_text("".join(json.dumps({"question_id": q, "text": "yes" if i < n_right else "no"})
                                           + "\n" for i, q in enumerate(qids)))
                _write(res / "vqa_metrics" / "students" / run / f"vlm{v}.json",
                       {"overall": 100 * n_right / n_q, "per_question_type": {"exists": 100 * n_right / n_q}})
    for v in vlm_seeds:
        _write(res / "vqa_metrics" / "blind" / f"vlm{v}.json", {"overall": 12.0 + v, "per_question_type": {"exists": 12.0}})
    return res, data


def test_report_on_a_fabricated_study(tmp_path):
    """Students of better teachers answer more questions right, with a teacher offset the
    line does not explain: the report's numbers, files and verdict."""
    res, data = fabricate(tmp_path, lambda rank, seed: [10, 21, 30][rank] + seed, n_q=400)
    analysis = report(res, data, tmp_path / "report", n_boot=200, margin=0.1)
    assert analysis["correlations"]["all"]["spearman"] > 0.9
    kd = analysis["correlations"]["kd"]  # one pair per run (3 teachers × 2 seeds), not per seed mean
    # teacher ranks tie within a teacher (1.5, 1.5, 3.5, 3.5, 5.5, 5.5), VQA ranks 1..6:
    # Σ dx·dy = 16, Σ dx² = 16, Σ dy² = 17.5
    assert kd["n"] == 6 and kd["spearman"] == pytest.approx(16 / (16 * 17.5) ** 0.5)
    assert "baseline" not in analysis["correlations"]  # its VQA does not depend on the teacher
    baselines = [r for r in analysis["table"] if r["method"] == "baseline"]
    assert len(baselines) == 3 and len({r["vqa"] for r in baselines}) == 1 and all(r["teacher_free"] for r in baselines)
    row = next(r for r in analysis["table"] if (r["teacher"], r["method"]) == ("l", "kd"))
    assert row["vqa"] == pytest.approx(100 * 30.5 / 400) and row["vqa_ci"][0] < row["vqa"] < row["vqa_ci"][1]
    # paired gains: (right − baseline right) / 400 per seed; seed shifts cancel
    gains = {g["teacher"]: g["gain"] for g in analysis["gains"]}
    assert gains == pytest.approx({"s": 100 * -5 / 400, "m": 100 * 6 / 400, "l": 100 * 15 / 400})
    effect = analysis["effect"]
    # teacher means −1.25, 1.5, 3.75 at 30, 40, 50 %: slope = (−10·−1.25 + 10·3.75) / 200
    assert effect["slope"] == pytest.approx(0.25) and effect["n_teachers"] == 3
    assert effect["verdict"] == "inconclusive"  # 3 teachers, 1 residual df: t = 12.7
    assert analysis["answer"].startswith("Inconclusive: this study cannot tell")
    out = tmp_path / "report"
    assert sorted(p.name for p in out.iterdir()) == ["correlations.json", "effect.json", "learning_curves.png",
                                                     "study.csv", "study.md", "teacher_effect.png",
                                                     "teacher_vs_student_vqa.png", "zeroshot_vs_vqa.png"]
    md = (out / "study.md").read_text()
    assert "**Answer:** Inconclusive" in md and "blind (no image)" in md and "| **inconclusive** |" in md
    assert (out / "study.csv").read_text().splitlines()[0].startswith("kind,teacher,student,method,seed")
    saved = json.loads((out / "effect.json").read_text())
    assert saved["effect"]["verdict"] == "inconclusive" and saved["answer"] == analysis["answer"]


@pytest.mark.parametrize("right, margin, verdict, opening", [
    # gains rise exactly along a line over 5 teachers: the CI excludes 0
    (lambda r, s: 100 + 20 * r + s, 0.1, "better", "**Answer:** Better teachers make better students here"),
    (lambda r, s: 200 - 20 * r + s, 0.1, "worse", "**Answer:** Better teachers make worse students here"),
    # every teacher's students answer alike: slope 0 with a CI well inside ±1
    (lambda r, s: 150 + s + (r % 2), 1.0, "equivalent", "**Answer:** Teacher quality does not matter here"),
    (lambda r, s: 150 + s + [0, 40, 0, 40, 0][r], 0.1, "inconclusive", "**Answer:** Inconclusive"),
])
def test_every_verdict_reads_as_its_own_sentence(tmp_path, right, margin, verdict, opening):
    res, data = fabricate(tmp_path, right, n_q=400, teachers=("a", "b", "c", "d", "e"),
                          baseline_right=lambda seed: 120 + seed)
    analysis = report(res, data, tmp_path / "report", n_boot=200, margin=margin)
    assert analysis["effect"]["verdict"] == verdict
    md = (tmp_path / "report" / "study.md").read_text()
    assert opening in md
    others = {"better": "make better students", "worse": "make worse students",
              "equivalent": "does not matter", "inconclusive": "Inconclusive"}
    assert [w for v, w in others.items() if v != verdict and w in analysis["answer"]] == []


def test_report_shows_reading_efficiency_and_flags_collapse(tmp_path):
    res, data = fabricate(tmp_path, lambda rank, seed: 10 + 5 * rank + seed)

    def diagnostics(collapsed):
        return {"collapsed": collapsed, "answer_health": {"collapsed_types": ["color"] if collapsed else [],
                                                          "constant_types": [] if collapsed else ["exists"]},
                "reading_efficiency": {"color": {"probe": 0.8, "efficiency": 0.25 if collapsed else 0.9},
                                       "shape": {"probe": None, "efficiency": None}},
                "by_objects": {"color": {"single": {"accuracy": 92.4, "count": 38},
                                         "multi": {"accuracy": 31.0 if collapsed else 36.3, "count": 102}},
                               "shape": {"single": {"estimable": False, "reason": "no question"},
                                         "multi": {"accuracy": 27.6, "count": 99}}}}

    for run, collapsed in [("students/distill-x1/m/xs/kd/0", True), ("students/distill-x1/l/xs/kd/1", False)]:
        path = res / "vqa_metrics" / run / "vlm0.json"
        path.write_text(json.dumps(json.loads(path.read_text()) | {"diagnostics": diagnostics(collapsed)}))
    report(res, data, tmp_path / "report", n_boot=100)
    md = (tmp_path / "report" / "study.md").read_text()
    assert "| m/xs/kd/0 (VLM seed 0) | **yes** (color) | – | 0.25 | n/e |" in md
    assert "| l/xs/kd/1 (VLM seed 0) | no | exists | 0.90 | n/e |" in md
    assert "**1 VLM(s) collapsed**" in md and "**1 VLM(s) give one answer**" in md
    assert "| encoder | color: one / several | shape: one / several |" in md  # reading vs finding
    assert "| m/xs/kd/0 (VLM seed 0) | 92 / 31 | – / 28 |" in md and "| l/xs/kd/1 (VLM seed 0) | 92 / 36 | – / 28 |" in md
    header = (tmp_path / "report" / "study.csv").read_text().splitlines()[0].split(",")
    assert {"vqa_collapsed", "vqa_collapsed_types", "vqa_constant_types", "vqa_efficiency_color",
            "vqa_probe_color", "vqa_single_color", "vqa_multi_shape"} <= set(header)


def test_report_pools_the_vlms_of_each_run(tmp_path):
    """Two VLMs per encoder (issue 16): KD VLM seed 1 answers 8 more questions right than VLM
    seed 0 for teacher l, 8 fewer for teacher s; the baselines' VLMs agree. Gains are the mean
    over each run's VLMs, so they equal the one-VLM study's; the VLM spread widens their CIs;
    correlations keep one pair per run; study.csv has one row per VLM."""
    right = lambda rank, seed: [10, 21, 30][rank] + seed  # noqa: E731
    one = report(*fabricate(tmp_path / "one", right, n_q=400), tmp_path / "one" / "report", n_boot=300)
    shift = {0: -4, 1: 0, 2: 4}
    res, data = fabricate(tmp_path / "two", right, n_q=400, vlm_seeds=(0, 1),
                          vlm_shift=lambda rank, seed, v: 0 if rank is None else (2 * v - 1) * shift[rank])
    two = report(res, data, tmp_path / "two" / "report", n_boot=300)
    gains = {g["teacher"]: g for g in two["gains"]}
    assert {t: g["gain"] for t, g in gains.items()} == pytest.approx({g["teacher"]: g["gain"] for g in one["gains"]})
    widths = {g["teacher"]: g["ci"][1] - g["ci"][0] for g in one["gains"]}
    assert gains["l"]["ci"][1] - gains["l"]["ci"][0] > widths["l"] + 0.5  # its VLMs differ by ±4 of 400 answers
    assert gains["m"]["ci"][1] - gains["m"]["ci"][0] == pytest.approx(widths["m"])  # its VLMs agree
    assert two["effect"]["slope"] == pytest.approx(one["effect"]["slope"]) and two["effect"]["n_vlm_seeds"] == 2
    assert two["effect"]["components"]["vlm"] > 0
    assert two["correlations"]["kd"]["n"] == 6
    assert {(r["method"], r["seeds"], r["vlm_seeds"]) for r in two["table"]} == {("kd", 2, 2), ("baseline", 2, 2)}
    lines = (tmp_path / "two" / "report" / "study.csv").read_text().splitlines()
    assert "vlm_seed" in lines[0].split(",") and len(lines) == 1 + 2 * (3 * 2 * 2) + 3 + 2
    # header, 2 VLMs of each evaluated student (KD and baseline, per teacher and seed), the teachers (no VQA
    # here: one row each), 2 blind VLMs
    md = (tmp_path / "two" / "report" / "study.md").read_text()
    assert "up to 2 VLM seeds per run" in md and "| blind (no image) | – | 12.5 |" in md


# ------------------------------------------------------------------ the distillation regime's axes

REGIMES_2x2 = [(d, n) for d in ("distill", "distill_shifted") for n in (1, 4)]


def test_every_kd_run_is_paired_with_the_baseline_of_its_own_data_and_duration(tmp_path):
    """KD students answer 100 + 10·rank right on `distill` ×1 and 20 more elsewhere; the no-KD
    students 100 on `distill` ×1 and 40 more elsewhere. Paired within its regime, every KD
    run's gain is 10·rank answers on `distill` ×1 and 10·rank − 20 in the three other regimes;
    any other pairing (another regime's baseline, or always the reference regime's) changes
    them."""
    from clipdistill.report.stats import _prepare
    from clipdistill.report.study import collect, score_table

    def shift(data, duration, rank, seed):
        return 0 if (data, duration) == ("distill", 1) else (40 if rank is None else 20)

    res, data = fabricate(tmp_path, lambda rank, seed: 100 + 10 * rank, n_q=400, regimes=REGIMES_2x2,
                          baseline_right=lambda seed: 100, regime_shift=shift)
    prep = _prepare(score_table(collect(res, data)))
    rank = {"s": 0, "m": 1, "l": 2}
    found = sorted((t, prep["seed_names"][s], round(float(g.mean()), 6))
                   for t, s, g in zip(prep["teachers"], prep["seeds"], prep["gains"]))
    expected = sorted((t, seed, round(100 * (10 * r - d) / 400, 6))
                      for t, r in rank.items() for seed in (0, 1) for d in (0, 20, 20, 20))
    assert found == expected


def test_each_regime_axis_gets_its_effect_against_the_reference_level(tmp_path):
    """A study of data [distill, distill_shifted, distill_textured] × durations [1, 4]: on
    distill_shifted every student answers 8 more of 400 questions right (± 4 by seed: +2 VQA
    points on average), distill_textured and ×4 change nothing on average (± 4 answers by
    seed). The report recovers +2 within its CI (which excludes 0) and CIs covering 0 for the
    null levels, in study.md, study.csv and effect.json, with p Holm-adjusted over an axis's
    levels."""
    regimes = [(d, n) for d in ("distill", "distill_shifted", "distill_textured") for n in (1, 4)]

    def shift(data, duration, rank, seed):
        noise = 4 if seed == 0 else -4
        return {"distill": 0, "distill_shifted": 8 + noise, "distill_textured": noise}[data] \
            + (noise if duration == 4 else 0)

    res, data = fabricate(tmp_path, lambda rank, seed: 150 + 10 * rank + seed, n_q=400, regimes=regimes,
                          baseline_right=lambda seed: 150 + seed, regime_shift=shift)
    analysis = report(res, data, tmp_path / "report", n_boot=400)
    axes = analysis["axes"]
    assert {a: r["reference"] for a, r in axes.items()} == {"data": "distill", "duration": "1"}
    levels = {(a, c["level"]): c for a, r in axes.items() for c in r["levels"]}
    assert sorted(levels) == [("data", "distill_shifted"), ("data", "distill_textured"), ("duration", "4")]
    shifted = levels[("data", "distill_shifted")]
    assert shifted["effect"] == pytest.approx(2.0) and 0 < shifted["ci"][0] < 2.0 < shifted["ci"][1]
    # every student of every teacher, method (KD and no-KD), seed and duration
    assert shifted["runs"] == (3 + 1) * 2 * 2
    for null in (levels[("data", "distill_textured")], levels[("duration", "4")]):
        assert null["effect"] == pytest.approx(0.0) and null["ci"][0] < 0 < null["ci"][1]
        assert null["p_holm"] > 0.05
    data_levels = axes["data"]["levels"]
    assert all(c["p_holm"] >= c["p"] for c in data_levels) and shifted["p_holm"] < 0.05
    out = tmp_path / "report"
    md = (out / "study.md").read_text()
    assert "## Distillation regime: each level against the reference level" in md
    assert "| data | distill_shifted | distill | 16 | +2.0 [" in md and "| duration | ×4 | ×1 | " in md
    saved = json.loads((out / "effect.json").read_text())
    assert saved["axes"]["data"]["levels"][0]["level"] == "distill_shifted"
    header = (out / "study.csv").read_text().splitlines()[0].split(",")
    assert {"data", "duration"} <= set(header)


def test_an_axis_with_one_level_is_not_reported(tmp_path):
    """Durations [1, 4] on one data split: the duration axis is reported, the data axis is not
    (no section row, no column, no effect.json entry); with one level of each, nothing is."""
    res, data = fabricate(tmp_path / "one_axis", lambda rank, seed: 150 + 10 * rank, n_q=200,
                          regimes=[("distill", 1), ("distill", 4)])
    analysis = report(res, data, tmp_path / "one_axis" / "report", n_boot=200)
    assert list(analysis["axes"]) == ["duration"]
    md = (tmp_path / "one_axis" / "report" / "study.md").read_text()
    assert "| duration | ×4 | ×1 |" in md and "| data |" not in md
    header = (tmp_path / "one_axis" / "report" / "study.csv").read_text().splitlines()[0].split(",")
    assert "duration" in header and "data" not in header
    res, data = fabricate(tmp_path / "none", lambda rank, seed: 150 + 10 * rank, n_q=200)
    analysis = report(res, data, tmp_path / "none" / "report", n_boot=200)
    assert analysis["axes"] == {}
    assert "Distillation regime" not in (tmp_path / "none" / "report" / "study.md").read_text()
    assert "axes" not in json.loads((tmp_path / "none" / "report" / "effect.json").read_text())
    header = (tmp_path / "none" / "report" / "study.csv").read_text().splitlines()[0].split(",")
    assert not {"data", "duration"} & set(header)
