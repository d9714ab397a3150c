"""Code deps are complete (issue 20): after an edit to one source file, `dvc status` calls
stale exactly the stages whose command imports that file (transitively), and `snakemake -n`
would run exactly those and everything downstream of them — nothing else. (DVC reports a stage
whose own deps changed; what follows it reruns under `dvc repro` once an input really changes.)

The session's smoke study made by `dvc repro` (tests/studies.py) is shared; each edit is made
in a copy of it (modification times kept, so Snakemake sees only the edited file as new)."""

from pathlib import Path

import pytest
from studies import copy_study, dvc_stale, nothing_to_do, snakemake_stale_stages

KERNELS = "src/clipdistill/kernels/contrastive.py"
METRICS = "src/clipdistill/vqa/metrics.py"


def _covers(a: str, b: str) -> bool:
    return a == b or a.startswith(b.rstrip("/") + "/") or b.startswith(a.rstrip("/") + "/")


def expected_stale(root: Path, edited: str) -> tuple[set[str], set[str]]:
    """From the generated dvc.yaml: the stages that list `edited` as a dep, and those plus every
    stage downstream of them (a dep inside, or holding, one of their outputs)."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        graph = {s.name: ({d.def_path for d in s.deps if not hasattr(d, "params")}, {o.def_path for o in s.outs})
                 for s in repo.index.stages}
    direct = {name for name, (deps, _) in graph.items() if edited in deps}
    stale = set(direct)
    while True:
        more = {name for name, (deps, _) in graph.items() if name not in stale
                and any(_covers(d, o) for d in deps for s in stale for o in graph[s][1])}
        if not more:
            return direct, stale
        stale |= more


@pytest.fixture(scope="module")
def study(dvc_study, home):
    """The session's smoke study reproduced by DVC and committed: both runners see nothing to do."""
    assert dvc_stale(dvc_study, home) == set() and nothing_to_do(dvc_study, home)
    return dvc_study


def stale_after_editing(study: Path, tmp_path: Path, home: Path, rel: str) -> dict:
    root = copy_study(study, tmp_path / "project")
    with open(root / rel, "a", encoding="utf-8") as fh:
        fh.write("# an edit the results must notice\n")
    direct, downstream = expected_stale(root, rel)
    return {"dvc": dvc_stale(root, home), "snakemake": snakemake_stale_stages(root, home),
            "direct": direct, "downstream": downstream}


def _base(names: set[str]) -> set[str]:
    return {n.split("@")[0] for n in names}


@pytest.mark.slow
def test_a_kernel_edit_makes_the_distill_stages_and_what_follows_stale(study, tmp_path, home):
    stale = stale_after_editing(study, tmp_path, home, KERNELS)
    print("after editing kernels/contrastive.py: dvc status", sorted(stale["dvc"]), "snakemake -n",
          sorted(stale["snakemake"]))
    assert stale["dvc"] == stale["direct"], stale["dvc"] ^ stale["direct"]
    assert stale["snakemake"] == stale["downstream"], stale["snakemake"] ^ stale["downstream"]
    assert {"distill", "distill_baseline"} <= _base(stale["dvc"])
    assert {"student_eval", "student_eval_baseline", "vqa_student", "vqa_baseline", "report"} <= _base(
        stale["snakemake"])
    # code that never imports the kernels: the data, the preview, the language model
    assert not {"data_prepare", "data_preview", "vqa_lm"} & _base(stale["snakemake"])


@pytest.mark.slow
def test_a_vqa_metrics_edit_makes_only_the_vqa_and_report_stages_stale(study, tmp_path, home):
    stale = stale_after_editing(study, tmp_path, home, METRICS)
    print("after editing vqa/metrics.py: dvc status", sorted(stale["dvc"]), "snakemake -n", sorted(stale["snakemake"]))
    assert stale["dvc"] == stale["direct"], stale["dvc"] ^ stale["direct"]
    assert stale["snakemake"] == stale["downstream"], stale["snakemake"] ^ stale["downstream"]
    assert {"vqa_teacher", "vqa_student", "vqa_baseline", "vqa_blind", "report"} <= _base(stale["dvc"])
    assert _base(stale["snakemake"]) <= {"vqa_lm", "vqa_teacher", "vqa_student", "vqa_baseline", "vqa_blind", "report"}
