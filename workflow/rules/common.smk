# Shared names: the study grid, and the run lists the rules and the final targets expand.
import re

GRID = config["distill"]["grid"]
DISTILL_SPLIT = config["features"]["split"]


def one_of(names):
    """A wildcard constraint matching exactly one of `names`."""
    return "|".join(re.escape(n) for n in names)


KD_RUNS = expand(
    "{teacher}/{student}/{method}/{seed}",
    teacher=GRID["teachers"],
    student=GRID["students"],
    method=GRID["methods"],
    seed=GRID["seeds"],
)
BASELINE_RUNS = expand(
    "none/{student}/{method}/{seed}", student=GRID["students"], method=GRID["baselines"], seed=GRID["seeds"]
)
BASELINE_EVALS = expand(
    "{teacher}/{student}/{method}/{seed}",
    teacher=GRID["teachers"],
    student=GRID["students"],
    method=GRID["baselines"],
    seed=GRID["seeds"],
)
