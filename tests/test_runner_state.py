"""One state, two runners (issue 25): whatever ran the smoke study — Snakemake, a Snakemake
run killed with SIGKILL, `dvc repro` in a fresh clone — `dvc status` and `snakemake -n` agree
on what is done, and a one-parameter `dvc exp run` reruns exactly that method's stages.

The two runs are the session's shared smoke studies (tests/studies.py): one through Snakemake
(killed midway, `clipdistill sync`, then finished), a fresh one through `dvc repro` (built, with
its one-param experiment, beside the other tests: conftest.dvc_study_in_background). Every
assertion shares those two runs; a test that changes anything works on a copy."""

import re

import pytest
from conftest import BIN
from studies import copy_study, dvc_stale, nothing_to_do, run

# The clipkd students of both teachers in the smoke study's regime (distill × 1), their
# evaluations and VLMs (one per VLM seed, vqa.seeds: [0, 1]), and the report: nothing else.
REGIMES = ["distill-1"]
CLIPKD_RUNS = {f"distill@{r}-{t}-xs-clipkd-0" for r in REGIMES for t in "sm"}
EXPECTED_RERUN = ({f"{stage}@{r}-{t}-xs-clipkd-0" for stage in ("distill", "student_eval")
                   for r in REGIMES for t in "sm"}
                  | {f"vqa_student@{r}-{t}-xs-clipkd-0-{v}" for r in REGIMES for t in "sm" for v in (0, 1)}
                  | {"report"})


def test_sync_outside_a_project_fails_in_one_line(tmp_path):
    proc = run([BIN / "clipdistill", "sync", "--project", tmp_path], tmp_path, tmp_path, check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "no dvc.yaml" in proc.stderr, proc.stderr


@pytest.mark.slow
def test_after_a_kill_and_sync_finished_stages_are_recorded_and_unfinished_are_stale_in_both(snakemake_killed):
    killed = snakemake_killed
    assert killed["dvc"] == killed["snakemake"], (killed["dvc"] ^ killed["snakemake"])
    assert killed["lock"] and killed["dvc"], "the kill should fall between the first and the last job"
    assert not set(killed["lock"]) & killed["dvc"]
    assert not killed["missing_outs"], killed["missing_outs"]
    assert "still to run, for both runners" in killed["sync"].stderr, killed["sync"].stderr
    assert not killed["incomplete"], killed["incomplete"]


@pytest.mark.slow
def test_make_run_records_itself_so_dvc_status_is_clean(snakemake_study, home):
    finished = snakemake_study
    text = finished["run"].stdout + finished["run"].stderr
    assert re.search(r"clipdistill: recorded \d+ stage\(s\) in dvc\.lock", text), text[-2000:]
    assert finished["dvc"] == set(), finished["dvc"]
    assert finished["committed"] == finished["recorded"], "dvc commit -f changed what the run recorded"
    assert nothing_to_do(finished["root"], home)


@pytest.mark.slow
def test_one_param_experiment_after_make_run_reruns_only_that_method(snakemake_experiment):
    """On a copy of the finished study (dvc.lock in git already; the run: conftest's snakemake_chain,
    built in the background): the edited clipkd weight makes exactly its runs stale, `dvc exp run`
    reruns only those, and after `clipdistill sync` both runners have nothing to do."""
    experiment = snakemake_experiment
    assert experiment["edited"], "the clipkd line of params.yaml was not found"
    assert experiment["stale_after_edit"] == CLIPKD_RUNS
    assert experiment["ran"] == EXPECTED_RERUN
    assert experiment["stale_after_exp"] == set()
    assert experiment["nothing_to_do_after_sync"]
    assert experiment["stale_after_sync"] == set()


@pytest.mark.slow
def test_dvc_repro_in_a_fresh_clone_leaves_snakemake_nothing_to_do(dvc_study_and_experiment, home):
    study, experiment = dvc_study_and_experiment  # the experiment ran on a copy (dvc.lock in git already)
    assert dvc_stale(study, home) == set()
    assert nothing_to_do(study, home)  # no --touch, no sync: repro writes in DAG order
    assert experiment["ran"] == EXPECTED_RERUN
    assert nothing_to_do(experiment["root"], home)
    assert dvc_stale(experiment["root"], home) == set()


@pytest.mark.slow
def test_sync_refuses_an_output_edited_after_snakemake_wrote_it(snakemake_study, home, tmp_path):
    """Recording must never bless a hand edit: one line naming the stage, nothing written."""
    copy = copy_study(snakemake_study["root"], tmp_path / "copy")
    lock = (copy / "dvc.lock").read_text()
    (copy / "results/teacher_eval/s/metrics.json").write_text("{}")
    proc = run([BIN / "clipdistill", "sync"], copy, home, check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "teacher_eval@s" in proc.stderr and "changed after Snakemake wrote it" in proc.stderr
    assert (copy / "dvc.lock").read_text() == lock
