"""Statistics for the study report: bootstrap confidence intervals and rank correlations."""

from __future__ import annotations

import numpy as np
from scipy import stats


def bootstrap_mean_ci(groups: list[np.ndarray], n_boot: int = 1000, seed: int = 0,
                      level: float = 0.95) -> tuple[float, float, float]:
    """Mean and percentile CI of a two-level sample: `groups` are seeds, each an array of
    per-question scores. Each resample draws seeds with replacement, then questions with
    replacement inside each drawn seed."""
    groups = [np.asarray(g, dtype=float) for g in groups if len(g)]
    if not groups:
        raise ValueError("bootstrap_mean_ci needs at least one non-empty group")
    rng = np.random.default_rng(seed)
    point = float(np.mean([g.mean() for g in groups]))
    means = np.empty(n_boot)
    for b in range(n_boot):
        picked = rng.integers(0, len(groups), len(groups))
        means[b] = np.mean([groups[i][rng.integers(0, len(groups[i]), len(groups[i]))].mean() for i in picked])
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return point, float(lo), float(hi)


def rank_correlations(x, y, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """Spearman ρ and Kendall τ of paired observations, with percentile bootstrap CIs over
    pairs (resamples where either variable is constant are skipped)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) != len(y) or len(x) < 3:
        raise ValueError(f"rank_correlations needs ≥ 3 paired values, got {len(x)} and {len(y)}")
    out = {"n": int(len(x)),
           "spearman": float(stats.spearmanr(x, y).statistic),
           "kendall": float(stats.kendalltau(x, y).statistic)}
    rng = np.random.default_rng(seed)
    boot = {"spearman": [], "kendall": []}
    for _ in range(n_boot):
        idx = rng.integers(0, len(x), len(x))
        if np.ptp(x[idx]) == 0 or np.ptp(y[idx]) == 0:
            continue
        boot["spearman"].append(stats.spearmanr(x[idx], y[idx]).statistic)
        boot["kendall"].append(stats.kendalltau(x[idx], y[idx]).statistic)
    for name, values in boot.items():
        lo, hi = np.quantile(values, [(1 - level) / 2, (1 + level) / 2]) if values else (np.nan, np.nan)
        out[f"{name}_ci"] = [float(lo), float(hi)]
    return out


def verdict(corr: dict, what: str = "teacher quality", of: str = "student VQA accuracy") -> str:
    """The plain-words answer the numbers give, whatever it is."""
    rho, (lo, hi) = corr["spearman"], corr["spearman_ci"]
    ci = f"Spearman ρ = {rho:+.2f}, 95% CI [{lo:+.2f}, {hi:+.2f}], n = {corr['n']}"
    if np.isnan(lo) or lo <= 0 <= hi:
        return f"No reliable relation between {what} and {of} here ({ci}): better teachers do not reliably make better students."
    if lo > 0:
        return f"Better teachers make better students here: {of} rises with {what} ({ci})."
    return f"Better teachers make *worse* students here: {of} falls as {what} rises ({ci})."
