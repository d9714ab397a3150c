"""Statistics for the study report.

The study's question — do better teachers make better students? — is answered by
`teacher_effect`: the slope of the *paired* VQA gain of KD over the seed-matched no-KD
baseline against teacher quality, with the teacher as the unit of inference.

Why this design (and not a plain bootstrap or a rank correlation over runs):

- **Paired.** A KD run and the no-KD baseline of the same seed share initial weights,
  batch order and questions, so the per-question difference removes question difficulty
  and the seed's luck before anything is averaged.
- **The teacher is the unit.** Teacher quality takes one value per teacher; runs of one
  teacher share whatever else that teacher does to a student. The slope is the ordinary
  least-squares line through the teachers' mean gains, and its standard error comes from
  the teachers' residuals with T − 2 degrees of freedom (Student t). For a balanced crossed
  design this is what the mixed model `gain ~ quality + (1|teacher) + (1|seed) +
  (1|question)` gives for the fixed slope (the seed and question effects are shared by all
  teachers and cancel from a slope). A percentile bootstrap over 3–8 teachers under-covers.
- **A floor from the measurement.** With few teachers the residual variance is itself a
  noisy estimate (one degree of freedom with three teachers) and can be tiny by luck. A
  teacher's mean gain can never be more precise than its own measurement, so the slope's
  standard error is at least the spread of the slope over a bootstrap that redraws seeds
  and questions — jointly for every encoder, since all of them answer the same questions —
  with the teachers held fixed. This is the "ad hoc" max(1, q) correction of the
  Knapp–Hartung random-effects meta-regression (Knapp & Hartung 2003, Stat. Med. 22:2693;
  Jackson et al. 2017, Stat. Med. 36:3923), with the within-teacher variance from the
  bootstrap instead of a formula.
- **Three-way honesty, four verdicts.** `better` / `worse` when the 95% CI of the slope
  excludes 0; otherwise `equivalent` when it lies inside ±margin (equivalence shown, the
  two one-sided tests at 2.5% each); otherwise `inconclusive`, with the slope the design
  could detect (`detectable_slope`) and what it would need.
- **VLM seeds, nested in the student seed.** Every encoder can get several VLMs (`vqa.seeds`:
  projector init and data order). A KD VLM is paired with the baseline VLM of the same student
  seed *and* VLM seed: what a VLM seed does to every encoder alike cancels, and what is left —
  this VLM's own luck, and the baseline VLM's, which all KD runs of that student seed share — is
  a level nested in the student seed. So a run's gain is the mean over its VLM seeds, and every
  bootstrap redraws, for each student seed, its VLM seeds with replacement (shared by every run
  of that seed, as the baseline VLM is) besides the student seeds and the questions: the
  two-stage bootstrap of Davison & Hinkley (1997, *Bootstrap Methods*, §3.8). For S student seeds
  and V VLM seeds its expected variance of a cell mean is (S − 1)/S·σ²_seed/S +
  (2 − 1/S − 1/V)·σ²_VLM/(SV): the VLM part exact at S = V = 2, conservative above, while the
  student-seed part keeps the (S − 1)/S shortfall every seed bootstrap has. Treating the
  (student seed, VLM seed) pairs as independent units instead would shrink the student-seed part
  to about σ²_seed/(SV) — too narrow whenever students differ more than VLMs. The slope's
  teacher-level error needs no change: the teacher means average the VLMs, so their residuals
  carry the VLM spread. One VLM seed per run gives exactly the results from before VLM seeds.
- **Several methods.** The verdict pools the methods (one primary test); per-method slopes
  carry Holm-adjusted p-values (Holm 1979), and their equivalence claims use the
  Bonferroni-level CI.

All scores are VQA soft accuracies in [0, 1]; gains, slopes and margins are in VQA points
(×100) per unit of teacher quality.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import optimize, stats

COLUMNS = ("teacher", "teacher_quality", "method", "seed", "question_id", "score")  # optional: student, vlm_seed
BASELINE = "baseline"
VERDICTS = ("better", "worse", "equivalent", "inconclusive")


class StudyInputError(ValueError):
    """A scores table that cannot be analysed; the message is one line naming the problem."""


# ----------------------------------------------------------------------------- input

def _prepare(scores, min_teachers: int = 2):
    """Validate the long table and turn it into arrays: the per-question paired gains of every
    VLM (runs × VLM seeds × questions, in points, zero where a run has fewer VLM seeds), their
    mean over each run's VLM seeds (runs × questions), and each run's teacher, quality, method
    and seed. A run is (student, teacher, method, seed); a VLM adds its `vlm_seed` (0 if absent)."""
    import pandas as pd

    if not isinstance(scores, pd.DataFrame):
        raise StudyInputError(f"scores must be a pandas DataFrame, got {type(scores).__name__}")
    missing = [c for c in COLUMNS if c not in scores.columns]
    if missing:
        raise StudyInputError(f"scores lacks column(s) {', '.join(missing)} (needs {', '.join(COLUMNS)})")
    if scores.empty:
        raise StudyInputError("scores is empty")
    df = scores.copy()
    if "student" not in df.columns:
        df["student"] = ""
    if "vlm_seed" not in df.columns:
        df["vlm_seed"] = 0
    score = pd.to_numeric(df["score"], errors="coerce")
    bad = ~np.isfinite(score.to_numpy(dtype=float)) | (score < 0).to_numpy() | (score > 1).to_numpy()
    if bad.any():
        first = df[bad].iloc[0]
        raise StudyInputError(f"{int(bad.sum())} score(s) outside [0, 1] (first: {first['score']!r} for method "
                              f"{first['method']!r}, seed {first['seed']}, question {first['question_id']!r})")
    df["score"] = score.astype(float)
    is_base = (df["method"] == BASELINE).to_numpy()
    if not is_base.any():
        raise StudyInputError(f"no baseline rows (method == {BASELINE!r}): the effect is paired against the no-KD student")
    if is_base.all():
        raise StudyInputError("no KD rows: every row is a baseline")
    df.loc[is_base, "teacher"] = None
    kd = df[~is_base]
    if kd["teacher"].isna().any():
        raise StudyInputError(f"{int(kd['teacher'].isna().sum())} KD row(s) without a teacher")
    quality = pd.to_numeric(kd["teacher_quality"], errors="coerce").to_numpy(dtype=float)
    if not np.isfinite(quality).all():
        raise StudyInputError(f"{int((~np.isfinite(quality)).sum())} KD row(s) without a finite teacher_quality")
    per_teacher = kd.groupby("teacher")["teacher_quality"].nunique()
    if (per_teacher > 1).any():
        raise StudyInputError(f"teacher {per_teacher[per_teacher > 1].index[0]!r} has more than one teacher_quality")
    teachers = sorted(kd["teacher"].unique(), key=str)
    if len(teachers) < min_teachers:
        raise StudyInputError(f"only one teacher ({teachers[0]!r}): a relation to teacher quality needs at least two")

    # one dense (VLMs × questions) matrix; a VLM is (student, teacher, method, seed, vlm_seed)
    df["teacher"] = df["teacher"].where(~is_base, "")
    key = ["student", "teacher", "method", "seed", "vlm_seed"]
    combined = np.zeros(len(df), dtype=np.int64)
    for col in key:
        codes, uniques = pd.factorize(df[col])
        combined = combined * (len(uniques) + 1) + codes
    _, first_row, run_codes = np.unique(combined, return_index=True, return_inverse=True)
    runs = list(df[key].iloc[first_row].itertuples(index=False, name=None))
    q_codes, questions = pd.factorize(df["question_id"])
    n_q = len(questions)
    cell = run_codes.astype(np.int64) * n_q + q_codes
    uniq, counts = np.unique(cell, return_counts=True)
    if (counts > 1).any():
        first = df.iloc[int(np.flatnonzero(cell == uniq[counts > 1][0])[0])]
        raise StudyInputError(f"{int(counts[counts > 1].sum())} duplicate rows (first: teacher {first['teacher']!r}, "
                              f"method {first['method']!r}, seed {first['seed']}, VLM seed {first['vlm_seed']}, "
                              f"question {first['question_id']!r})")
    matrix = np.full((len(runs), n_q), np.nan)
    matrix[run_codes, q_codes] = df["score"].to_numpy()
    answered = (~np.isnan(matrix)).sum(axis=1)
    if (answered < n_q).any():
        student, teacher, method, seed, vlm_seed = runs[int(np.argmin(answered))]
        raise StudyInputError(f"run teacher {teacher or None!r} method {method!r} seed {seed} (VLM seed {vlm_seed}) "
                              f"answers {int(answered.min())} of the study's {n_q} questions: every run must answer "
                              "the same questions")
    baselines = {(st, sd, v): i for i, (st, t, m, sd, v) in enumerate(runs) if m == BASELINE}
    # the VLM seeds of each student seed: its baselines' (every KD run of that seed must have them all)
    vlm_seeds_of: dict = {}
    for st, sd, v in baselines:
        vlm_seeds_of.setdefault(sd, set()).add(v)
    vlm_seeds_of = {sd: sorted(vs, key=str) for sd, vs in vlm_seeds_of.items()}
    quality_of = kd.groupby("teacher")["teacher_quality"].first().astype(float).to_dict()
    vlms_of: dict = {}
    for i, (student, teacher, method, seed, vlm_seed) in enumerate(runs):
        if method != BASELINE:
            vlms_of.setdefault((student, teacher, method, seed), {})[vlm_seed] = i
    v_max = max(len(vs) for vs in vlm_seeds_of.values())
    vlm_gains, present, run_info = [], [], []
    for (student, teacher, method, seed), vlms in vlms_of.items():
        where = f"run teacher {teacher!r} method {method!r} seed {seed}"
        if not any((student, seed, v) in baselines for v in vlms):
            raise StudyInputError(f"{where}: no baseline with seed {seed}" + (f" for student {student!r}" if student else ""))
        if sorted(vlms, key=str) != vlm_seeds_of[seed]:
            raise StudyInputError(f"{where} has VLM seeds {sorted(vlms, key=str)} but the seed-{seed} baseline has "
                                  f"{vlm_seeds_of[seed]}: every run of a seed needs the same VLM seeds")
        g = np.zeros((v_max, n_q))
        for slot, v in enumerate(vlm_seeds_of[seed]):
            g[slot] = 100.0 * (matrix[vlms[v]] - matrix[baselines[(student, seed, v)]])
        vlm_gains.append(g)
        present.append(np.arange(v_max) < len(vlms))
        run_info.append((teacher, quality_of[teacher], method, seed))
    vlm_gains = np.array(vlm_gains)
    counts = np.array(present).sum(axis=1)
    seeds = sorted({r[3] for r in run_info}, key=str)
    return {"gains": np.array([g[:c].mean(axis=0) for g, c in zip(vlm_gains, counts)]),
            "vlm_gains": vlm_gains, "vlm_present": np.array(present),
            "teachers": [r[0] for r in run_info],
            "quality": np.array([r[1] for r in run_info]), "methods": [r[2] for r in run_info],
            "seeds": np.array([seeds.index(r[3]) for r in run_info]), "seed_names": seeds,
            "vlm_counts": [len(vlm_seeds_of[sd]) for sd in seeds], "n_questions": n_q}


def _vlm_draws(rng, prep: dict, n_boot: int) -> np.ndarray:
    """(boot × student seeds × VLM slots): for each student seed, its VLM seeds drawn with
    replacement (multinomial counts); drawn after the question and seed draws, so one VLM seed
    leaves those exactly as they were."""
    v_max = prep["vlm_gains"].shape[1]
    out = np.zeros((n_boot, len(prep["vlm_counts"]), v_max))
    for s, c in enumerate(prep["vlm_counts"]):
        out[:, s, :c] = rng.multinomial(c, np.full(c, 1 / c), size=n_boot)
    return out


def _run_boot_means(prep: dict, runs: np.ndarray, boot_v: np.ndarray, question_means) -> np.ndarray:
    """(boot × runs): each run's mean gain under one bootstrap draw — `question_means(g)` maps a
    (runs × questions) gain matrix to its question-resampled means, and each run's VLM seeds are
    weighted by its student seed's VLM draw."""
    gains, present = prep["vlm_gains"][runs], prep["vlm_present"][runs]
    if gains.shape[1] == 1:  # one VLM per run: nothing to redraw (and the same arithmetic as before)
        return question_means(gains[:, 0])
    weight = boot_v[:, prep["seeds"][runs], :] * present[None]       # (boot × runs × VLM slots)
    total = sum(weight[:, :, v] * question_means(gains[:, v]) for v in range(gains.shape[1]))
    return total / weight.sum(axis=2)


# ----------------------------------------------------------------------------- core

def _teacher_matrix(teachers: list, runs: np.ndarray) -> tuple[list, np.ndarray]:
    """Unique teachers and a (teachers × runs) 0/1 membership matrix for the chosen runs."""
    names = sorted({teachers[i] for i in runs}, key=str)
    member = np.zeros((len(names), len(runs)))
    for j, i in enumerate(runs):
        member[names.index(teachers[i]), j] = 1.0
    return names, member


def _slope_fit(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """OLS slope, intercept and residual variance (T − 2 df) of y on x."""
    xc = x - x.mean()
    sxx = float(xc @ xc)
    slope = float(xc @ y) / sxx
    intercept = float(y.mean() - slope * x.mean())
    resid = y - intercept - slope * x
    df = len(x) - 2
    return slope, intercept, float(resid @ resid) / df if df > 0 else math.nan


def _analyse(prep: dict, runs: np.ndarray, margin: float, boot_q: np.ndarray, boot_s: np.ndarray,
             boot_v: np.ndarray, level: float) -> dict:
    """Slope, CI and verdict for a subset of KD runs (all methods, or one)."""
    names, member = _teacher_matrix(prep["teachers"], runs)
    quality = np.array([prep["quality"][runs][member[t] > 0][0] for t in range(len(names))])
    run_mean = prep["gains"][runs].mean(axis=1)
    teacher_mean = (member @ run_mean) / member.sum(axis=1)
    out = {"n_teachers": len(names), "n_runs": int(len(runs)),
           "teachers": [{"teacher": n, "quality": float(q), "gain": float(g), "runs": int(member[i].sum())}
                        for i, (n, q, g) in enumerate(zip(names, quality, teacher_mean))]}
    if len(names) < 2 or np.ptp(quality) == 0:
        return out | {"slope": math.nan, "ci": [-math.inf, math.inf], "se": math.nan, "df": 0, "p": 1.0,
                      "verdict": "inconclusive", "within_margin": False}
    slope, intercept, resid_var = _slope_fit(quality, teacher_mean)
    xc = quality - quality.mean()
    sxx = float(xc @ xc)
    # measurement bootstrap: the same question draw and seed draw for every run (crossed design),
    # and per student seed one VLM-seed draw for all its runs (nested)
    q_means = _run_boot_means(prep, runs, boot_v,
                              lambda g: boot_q @ g.T / boot_q.sum(axis=1, keepdims=True))  # (boot × runs)
    s_weight = boot_s[:, prep["seeds"][runs]]                                        # (boot × runs)
    t_weight = s_weight @ member.T                                                   # (boot × teachers)
    t_sum = (q_means * s_weight) @ member.T
    # a teacher none of whose seeds was drawn keeps its question-resampled mean over all its seeds
    fallback = (q_means @ member.T) / member.sum(axis=1)
    boot_means = np.where(t_weight > 0, t_sum / np.where(t_weight > 0, t_weight, 1), fallback)
    boot_slopes = boot_means @ (xc / sxx)
    se_measure = float(np.std(boot_slopes, ddof=1)) if len(boot_slopes) > 1 else 0.0
    df = len(names) - 2
    se_teacher = math.sqrt(resid_var / sxx) if df > 0 else math.inf
    se = max(se_teacher, se_measure)
    if df > 0 and se > 0:
        crit = float(stats.t.ppf(1 - (1 - level) / 2, df))
        ci = [slope - crit * se, slope + crit * se]
        p = float(2 * stats.t.sf(abs(slope) / se, df))
    else:
        ci, p = [-math.inf, math.inf], 1.0
    within = bool(-margin < ci[0] and ci[1] < margin)
    return out | {"slope": slope, "intercept": intercept, "ci": ci, "se": se, "se_teacher": se_teacher,
                  "se_measurement": se_measure, "df": df, "p": p, "within_margin": within,
                  "verdict": _verdict(ci, margin)}


def _verdict(ci: list[float], margin: float) -> str:
    lo, hi = ci
    if lo > 0:
        return "better"
    if hi < 0:
        return "worse"
    if -margin < lo and hi < margin:
        return "equivalent"
    return "inconclusive"


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values (Holm 1979, Scand. J. Statist. 6:65): the i-th
    smallest is multiplied by (m − i + 1), made monotone, capped at 1."""
    p = np.asarray(pvalues, dtype=float)
    order = np.argsort(p, kind="stable")
    adjusted = np.empty_like(p)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p) - rank) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()


def variance_components(prep: dict, result: dict) -> dict:
    """The pilot's variance components of a run's mean gain, in points²:
    `question` — per-question variance of the run-specific part of a gain (what averaging
    over questions removes), `run` — run-to-run variance beyond the questions (seed × teacher
    × method, with this study's VLM seeds per run averaged in), `teacher` — teacher
    heterogeneity beyond the fitted line, `vlm` — the spread of one VLM's gain around its
    run's mean (NaN with one VLM seed; descriptive: `run` already carries its share). Parts shared by all
    teachers (a seed's baseline, a question's difficulty) are removed first: they cannot move
    a slope. Method-of-moments estimates, truncated at 0."""
    gains, seeds = prep["gains"], prep["seeds"]
    # remove what every run of a seed shares (its baseline and the question's difficulty for it)
    resid = gains.copy()
    q_var = []
    for s in np.unique(seeds):
        rows = np.flatnonzero(seeds == s)
        if len(rows) < 2:
            continue
        # subtracting the mean of R runs leaves (R − 1)/R of each run's own variance
        part = (gains[rows] - gains[rows].mean(axis=0)) * math.sqrt(len(rows) / (len(rows) - 1))
        resid[rows] = part
        q_var.append(part.var(axis=1, ddof=1).mean())
    question = float(np.mean(q_var)) if q_var else math.nan
    run_mean = resid.mean(axis=1)
    cells = {}
    for i, key in enumerate(zip(prep["teachers"], prep["methods"])):
        cells.setdefault(key, []).append(run_mean[i])
    within = [np.var(v, ddof=1) * (len(v) - 1) for v in cells.values() if len(v) > 1]
    dof = sum(len(v) - 1 for v in cells.values() if len(v) > 1)
    run_total = float(np.sum(within) / dof) if dof else math.nan
    q = prep["n_questions"]
    run = max(0.0, run_total - question / q) if math.isfinite(run_total) else math.nan
    per_teacher = np.mean([t["runs"] for t in result["teachers"]])
    resid_var = result["se_teacher"] ** 2 * _sxx(result) if math.isfinite(result.get("se_teacher", math.nan)) else math.nan
    measured = (run + question / q) / per_teacher if math.isfinite(run) else 0.0
    teacher = max(0.0, resid_var - measured) if math.isfinite(resid_var) else math.nan
    return {"question": question, "run": run, "teacher": teacher, "vlm": _vlm_component(prep), "n_questions": q,
            "runs_per_teacher": float(per_teacher),
            "quality_sd": float(np.std([t["quality"] for t in result["teachers"]]))}


def _vlm_component(prep: dict) -> float:
    """Variance of one VLM's mean gain between the VLM seeds of a run, in points², less the
    questions' part (each VLM's per-question deviation from its run's per-question mean,
    scaled by V/(V − 1), over Q). Method of moments, truncated at 0; NaN with one VLM seed."""
    q = prep["n_questions"]
    estimates = []
    for gains, present in zip(prep["vlm_gains"], prep["vlm_present"]):
        v = int(present.sum())
        if v < 2:
            continue
        g = gains[:v]
        part = (g - g.mean(axis=0)) * math.sqrt(v / (v - 1))
        estimates.append(g.mean(axis=1).var(ddof=1) - part.var(axis=1, ddof=1).mean() / q)
    return max(0.0, float(np.mean(estimates))) if estimates else math.nan


def _sxx(result: dict) -> float:
    x = np.array([t["quality"] for t in result["teachers"]])
    return float(((x - x.mean()) ** 2).sum())


def rejection_probability(slope: float, *, se_total: float, se_floor: float, df: int, level: float = 0.95,
               grid: int = 400) -> float:
    """Probability that `teacher_effect`'s test rejects slope = 0 when the true slope is
    `slope`: the estimate is N(slope, se_total²), its teacher-level standard error is
    se_total·√(χ²_df / df) (independent of the estimate), floored at the measurement's
    `se_floor`. Integrated over `grid` quantiles of χ²_df."""
    crit = stats.t.ppf(1 - (1 - level) / 2, df)
    w = stats.chi2.ppf((np.arange(grid) + 0.5) / grid, df) / df
    se = np.maximum(se_total * np.sqrt(w), se_floor)
    z = crit * se / se_total
    d = slope / se_total
    return float(np.mean(stats.norm.sf(z - d) + stats.norm.cdf(-z - d)))


def detectable_slope(components: dict, *, n_teachers: int, runs_per_teacher: float, n_questions: int,
                     quality_sd: float | None = None, power: float = 0.8, level: float = 0.95) -> float:
    """Smallest true slope (points per unit of quality) that `teacher_effect`'s test detects
    with probability `power`, for teachers whose quality spreads like the pilot's
    (population SD `quality_sd`). A teacher mean varies by v = teacher + (run + question/Q) /
    runs, the slope by v / (T · sd²); the test's floor is the measured part alone
    (`rejection_probability`). Infinite below 3 teachers."""
    if n_teachers < 3:
        return math.inf
    sd = components["quality_sd"] if quality_sd is None else quality_sd
    measured = (components["run"] + components["question"] / n_questions) / runs_per_teacher
    var_mean = components["teacher"] + measured
    if not sd > 0 or not math.isfinite(var_mean):
        return math.inf
    sxx = n_teachers * sd * sd
    se_total, se_floor = math.sqrt(var_mean / sxx), math.sqrt(measured / sxx)
    if se_total == 0:
        return 0.0
    df = n_teachers - 2

    def shortfall(slope):
        return rejection_probability(slope, se_total=se_total, se_floor=se_floor, df=df, level=level) - power

    hi = se_total
    while shortfall(hi) < 0:  # power rises with the slope; bracket the root
        hi *= 2
    return float(optimize.brentq(shortfall, 0.0, hi, xtol=1e-6 * se_total))


def teachers_needed(components: dict, target: float, *, runs_per_teacher: float, n_questions: int,
                    most: int = 200) -> int | None:
    """Fewest teachers (same seeds, methods and questions per teacher) at which a slope of
    `target` is detected with 80% power; None if more than `most` would be needed."""
    def detects(t):
        return detectable_slope(components, n_teachers=t, runs_per_teacher=runs_per_teacher,
                                n_questions=n_questions) <= target

    if not detects(most):
        return None
    lo, hi = 2, most  # detects(hi) holds; the detectable slope falls as teachers are added
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if detects(mid) else (mid, hi)
    return hi


def teacher_effect(scores, *, margin: float = 1.0, n_boot: int = 1000, seed: int = 0,
                   level: float = 0.95) -> dict:
    """Do better teachers make better students? See the module docstring for the design.

    `scores`: a pandas DataFrame with one row per (run, question) and columns `teacher`
    (None for baselines), `teacher_quality` (NaN for baselines), `method` ("baseline" for
    the no-KD student), `seed`, `question_id`, `score` (VQA soft accuracy in [0, 1]); an
    optional `student` column matches baselines by (student, seed).

    Returns `verdict` (one of `VERDICTS`), `slope` (points of KD − baseline VQA gain per
    unit of teacher quality), `ci`, `n_teachers`, the per-teacher gains, per-method slopes
    with Holm-adjusted p-values, the variance components and the smallest detectable slope.
    """
    if not margin > 0:
        raise StudyInputError(f"margin must be > 0, got {margin}")
    if n_boot < 2:
        raise StudyInputError(f"n_boot must be ≥ 2, got {n_boot}")
    prep = _prepare(scores)
    rng = np.random.default_rng(seed)
    q, s = prep["n_questions"], len(prep["seed_names"])
    boot_q = rng.multinomial(q, np.full(q, 1 / q), size=n_boot).astype(float)
    boot_s = rng.multinomial(s, np.full(s, 1 / s), size=n_boot).astype(float)
    boot_v = _vlm_draws(rng, prep, n_boot)
    all_runs = np.arange(len(prep["teachers"]))
    result = _analyse(prep, all_runs, margin, boot_q, boot_s, boot_v, level)

    methods = sorted(set(prep["methods"]), key=str)
    per_method = {m: _analyse(prep, np.flatnonzero(np.array(prep["methods"]) == m), margin, boot_q, boot_s,
                              boot_v, 1 - (1 - level) / len(methods)) for m in methods}
    for m, p_adj in zip(methods, holm([per_method[m]["p"] for m in methods])):
        r = per_method[m]
        # direction from the Holm-adjusted test; equivalence from the Bonferroni-level CI
        direction = "better" if r["slope"] > 0 else "worse"
        r["p_holm"] = p_adj
        r["verdict"] = direction if p_adj < 1 - level else ("equivalent" if r["within_margin"] else "inconclusive")

    components = variance_components(prep, result)
    rpt = components["runs_per_teacher"]
    detectable = detectable_slope(components, n_teachers=result["n_teachers"], runs_per_teacher=rpt,
                                  n_questions=q)
    result.update({"margin": float(margin), "level": level, "n_questions": q, "n_seeds": s,
                   "n_vlm_seeds": max(prep["vlm_counts"]),
                   "methods": per_method, "components": components,
                   "detectable_slope": detectable,
                   "teachers_needed_for_margin": teachers_needed(components, margin, runs_per_teacher=rpt,
                                                                 n_questions=q)})
    return result


def verdict_sentence(effect: dict, quality: str = "teacher quality") -> str:
    """The report's answer, in one of exactly four wordings (one per verdict)."""
    lo, hi = effect["ci"]
    ci = (f"slope {effect['slope']:+.2f} VQA points per unit of {quality}, 95% CI "
          f"[{lo:+.2f}, {hi:+.2f}], {effect['n_teachers']} teachers")
    m = effect["margin"]
    v = effect["verdict"]
    if v == "better":
        return f"Better teachers make better students here: the KD gain over the no-KD student rises with {quality} ({ci})."
    if v == "worse":
        return f"Better teachers make worse students here: the KD gain over the no-KD student falls as {quality} rises ({ci})."
    if v == "equivalent":
        return (f"Teacher quality does not matter here: any relation is smaller than the margin of ±{m:g} "
                f"points per unit ({ci}).")
    if effect["n_teachers"] < 3:
        return (f"Inconclusive: this study cannot tell whether the KD gain depends on {quality} ({ci}; "
                "a confidence interval for a slope needs at least 3 teachers).")
    need = effect.get("teachers_needed_for_margin")
    needs = (f"about {need} teachers at this many seeds and questions per teacher" if need
             else "more than 200 teachers at this many seeds and questions per teacher")
    return (f"Inconclusive: this study cannot tell whether the KD gain depends on {quality} ({ci}; "
            f"smallest slope detectable with 80% power: {effect['detectable_slope']:.2f}; to resolve a slope "
            f"of ±{m:g} it would need {needs}).")


def paired_effects(scores, *, n_boot: int = 1000, seed: int = 0, level: float = 0.95,
                   min_teachers: int = 2) -> list[dict]:
    """The KD gain of every (teacher, method) cell over the seed-matched no-KD student, in
    points: the mean per-question paired difference, a percentile CI from a bootstrap that
    redraws seeds, each seed's VLM seeds (nested, see the module docstring) and one question
    draw shared by every run, and a two-sided bootstrap
    p-value, Holm-adjusted across all cells (so an effect picked after looking is tested as
    one of all the cells it was picked from). Any paired comparison fits this shape (the
    report's regime axes: a level's run against its twin at the reference level, which plays
    the baseline); `min_teachers` = 1 allows a single compared cell."""
    prep = _prepare(scores, min_teachers)
    rng = np.random.default_rng(seed)
    q, s = prep["n_questions"], len(prep["seed_names"])
    boot_q = rng.multinomial(q, np.full(q, 1 / q), size=n_boot) / q
    boot_s = rng.multinomial(s, np.full(s, 1 / s), size=n_boot).astype(float)
    boot_v = _vlm_draws(rng, prep, n_boot)
    run_boot = _run_boot_means(prep, np.arange(len(prep["teachers"])), boot_v, lambda g: boot_q @ g.T)  # (boot × runs)
    cells = {}
    for i, key in enumerate(zip(prep["teachers"], prep["methods"])):
        cells.setdefault(key, []).append(i)
    out = []
    for (teacher, method), runs in sorted(cells.items(), key=lambda kv: (str(kv[0][0]), str(kv[0][1]))):
        w = boot_s[:, prep["seeds"][runs]]
        w = np.where(w.sum(axis=1, keepdims=True) > 0, w, 1.0)              # no seed drawn: keep all
        boot = (run_boot[:, runs] * w).sum(axis=1) / w.sum(axis=1)
        gain = float(prep["gains"][runs].mean())
        lo, hi = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])
        p = float(min(1.0, 2 * min((boot <= 0).mean(), (boot >= 0).mean()) + 1 / n_boot))
        out.append({"teacher": teacher, "method": method, "quality": float(prep["quality"][runs[0]]),
                    "seeds": len(runs), "gain": gain, "ci": [float(lo), float(hi)], "p": p})
    for row, p_adj in zip(out, holm([r["p"] for r in out])):
        row["p_holm"] = p_adj
    return out


# ----------------------------------------------------------------------------- descriptive

def bootstrap_mean_ci(runs: np.ndarray, n_boot: int = 1000, seed: int = 0,
                      level: float = 0.95) -> tuple[float, float, float]:
    """Mean and percentile CI of one cell's runs (seeds × questions, or seeds × VLM seeds ×
    questions; every VLM answering the same questions): each resample draws seeds with
    replacement, then for each drawn seed its VLM seeds with replacement (the two-stage
    bootstrap, see the module docstring), and one question draw shared by all, as the questions
    are crossed with the seeds. A 2-D array is one VLM per seed."""
    runs = np.asarray(runs, dtype=float)
    vlms = runs if runs.ndim == 3 else np.atleast_2d(runs)[:, None, :]
    if vlms.size == 0:
        raise ValueError("bootstrap_mean_ci needs at least one non-empty run")
    rng = np.random.default_rng(seed)
    n_s, n_v, n_q = vlms.shape
    point = float(vlms.mean())
    s_idx = rng.integers(0, n_s, (n_boot, n_s))
    q_w = rng.multinomial(n_q, np.full(n_q, 1 / n_q), size=n_boot) / n_q
    per_vlm = np.stack([q_w @ vlms[:, v].T for v in range(n_v)], axis=2)  # (boot × seeds × VLM seeds)
    drawn = np.take_along_axis(per_vlm, s_idx[:, :, None], axis=1)         # (boot × drawn seeds × VLM seeds)
    if n_v > 1:  # each drawn seed's VLM seeds, redrawn (after the seed and question draws)
        drawn = np.take_along_axis(drawn, rng.integers(0, n_v, (n_boot, n_s, n_v)), axis=2)
    means = drawn.mean(axis=2).mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return point, float(lo), float(hi)


def rank_correlations(x, y, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """Spearman ρ and Kendall τ of paired observations, with percentile bootstrap CIs over
    pairs (resamples where either variable is constant are skipped). Descriptive only: the
    runs are not independent (they share teachers), so no verdict is drawn from these."""
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
