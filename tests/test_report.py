"""Report statistics on inputs with known answers, and the report on a fabricated results tree."""

import json

import numpy as np
import pytest

from clipdistill.report.stats import bootstrap_mean_ci, rank_correlations, verdict
from clipdistill.report.study import report


def test_perfectly_monotone_gives_rank_correlation_one():
    c = rank_correlations([0.1, 0.2, 0.3, 0.4, 0.5], [1, 4, 9, 16, 25])
    assert c["spearman"] == pytest.approx(1) and c["kendall"] == pytest.approx(1)
    assert c["spearman_ci"][0] == pytest.approx(1)  # every non-degenerate resample is monotone too
    assert verdict(c).startswith("Better teachers make better students here")


def test_reversed_and_unrelated():
    assert rank_correlations([1, 2, 3, 4], [9, 7, 5, 1])["spearman"] == pytest.approx(-1)
    x = list(range(20)) * 2
    y = list(range(20)) + list(range(20))[::-1]  # rises and falls symmetrically: ρ = 0
    c = rank_correlations(x, y)
    assert c["spearman"] == pytest.approx(0, abs=1e-12)
    assert c["spearman_ci"][0] < 0 < c["spearman_ci"][1]
    assert verdict(c).startswith("No reliable relation")
    with pytest.raises(ValueError, match="≥ 3 paired values"):
        rank_correlations([1, 2], [3, 4])


def test_bootstrap_ci_covers_the_mean_and_shrinks_with_data():
    rng = np.random.default_rng(1)
    small = [rng.normal(50, 10, 30) for _ in range(2)]
    large = [rng.normal(50, 10, 3000) for _ in range(2)]
    m, lo, hi = bootstrap_mean_ci(small, 500, 0)
    M, LO, HI = bootstrap_mean_ci(large, 500, 0)
    assert lo < m < hi and LO < M < HI and (HI - LO) < (hi - lo) / 4
    assert bootstrap_mean_ci([np.full(10, 7.0)], 200)[1:] == (7.0, 7.0)


def _write(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def test_report_on_a_fabricated_study(tmp_path):
    """Students of better teachers answer more questions right: the report must say so."""
    res, data = tmp_path / "results", tmp_path / "vqa_eval"
    qids = list(range(40))
    _write(data / "annotations.json", {"annotations": [{"question_id": q, "answers": [{"answer": "yes"}] * 10}
                                                       for q in qids]})
    for rank, t in enumerate(["s", "m", "l"]):
        _write(res / "teacher_eval" / t / "metrics.json", {"summary": {"zeroshot_mean_top1": 0.3 + 0.1 * rank,
                                                                       "retrieval_mean_R@1": 0.1 * rank}})
        _write(res / "teachers" / t / "manifest.json", {"params": {"total": 10 ** (rank + 4), "visual": 10}})
        for method in ("baseline", "kd"):
            for seed in (0, 1):
                run = f"{t}/xs/{method}/{seed}"
                _write(res / "student_eval" / run / "metrics.json",
                       {"summary": {"zeroshot_mean_top1": 0.2 + 0.05 * rank, "cka_image": 0.9}})
                # the teacher-free baseline lives under none/, once per seed
                run = f"{t}/xs/kd/{seed}" if method == "kd" else f"none/xs/baseline/{seed}"
                right = 10 + 10 * rank + seed if method == "kd" else 15 + seed
                _write(res / "students" / run / "manifest.json",
                       {"params": {"total": 1000, "visual": 500}, "data": {"split": "results/data/distill"},
                        "train": {"epochs": 8}})
                (res / "students" / run / "train_log.csv").write_text("step,loss\n0,5.0\n1,4.0\n")
                answers = res / "vqa" / "students" / run / "answers.jsonl"
                answers.parent.mkdir(parents=True, exist_ok=True)
                answers.write_text("".join(json.dumps({"question_id": q, "text": "yes" if q < right else "no"}) + "\n"
                                           for q in qids))
                _write(res / "vqa_metrics" / "students" / f"{run}.json",
                       {"overall": 100 * right / 40, "per_question_type": {"exists": 100 * right / 40}})
    _write(res / "vqa_metrics" / "blind.json", {"overall": 12.0, "per_question_type": {"exists": 12.0}})
    analysis = report(res, data, tmp_path / "report", n_boot=200)
    assert analysis["correlations"]["all"]["spearman"] > 0.9
    kd = analysis["correlations"]["kd"]  # one pair per run (3 teachers × 2 seeds), not per seed mean
    # teacher ranks tie within a teacher (1.5, 1.5, 3.5, 3.5, 5.5, 5.5), VQA ranks 1..6:
    # Σ dx·dy = 16, Σ dx² = 16, Σ dy² = 17.5
    assert kd["n"] == 6 and kd["spearman"] == pytest.approx(16 / (16 * 17.5) ** 0.5)
    assert kd["spearman_ci"][0] < kd["spearman_ci"][1]
    assert "baseline" not in analysis["correlations"]  # its VQA does not depend on the teacher
    baselines = [r for r in analysis["table"] if r["method"] == "baseline"]
    assert len(baselines) == 3 and len({r["vqa"] for r in baselines}) == 1 and all(r["teacher_free"] for r in baselines)
    assert analysis["answer"].startswith("Better teachers make better students here")
    row = next(r for r in analysis["table"] if (r["teacher"], r["method"]) == ("l", "kd"))
    assert row["vqa"] == pytest.approx(100 * 30.5 / 40) and row["vqa_ci"][0] < row["vqa"] < row["vqa_ci"][1]
    out = tmp_path / "report"
    assert sorted(p.name for p in out.iterdir()) == ["correlations.json", "learning_curves.png", "study.csv",
                                                     "study.md", "teacher_vs_student_vqa.png", "zeroshot_vs_vqa.png"]
    md = (out / "study.md").read_text()
    assert "**Answer:** Better teachers make better students" in md and "blind (no image)" in md
    assert (out / "study.csv").read_text().splitlines()[0].startswith("kind,teacher,student,method,seed")
