"""One state, two runners (issue 25): whatever ran the smoke study — Snakemake, a Snakemake
run killed with SIGKILL, `dvc repro` in a fresh clone — `dvc status` and `snakemake -n` agree
on what is done, and a one-parameter `dvc exp run` reruns exactly that method's stages.

One project runs the smoke study through Snakemake (killed midway, `clipdistill sync`, then
finished); a second, fresh one through `dvc repro`. Every assertion shares those two runs."""

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from conftest import BIN, project_copy

SNAKEMAKE = [str(BIN / "snakemake"), "-c2", "--workflow-profile", "workflow/profiles/default"]  # = make run
METHOD_PARAM = "distill.methods.clipkd.weight=2"
# The clipkd students of both teachers, their evaluations and VLMs (one per VLM seed of the smoke
# study, vqa.seeds: [0, 1]), and the report: nothing else.
EXPECTED_RERUN = ({f"{stage}@{t}-xs-clipkd-0" for stage in ("distill", "student_eval") for t in "sm"}
                  | {f"vqa_student@{t}-xs-clipkd-0-{v}" for t in "sm" for v in (0, 1)} | {"report"})


def _env(home: Path) -> dict:
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "HOME": str(home),
            "DVC_SITE_CACHE_DIR": str(home / "dvc-site"), "DVC_NO_ANALYTICS": "1"}


def test_sync_outside_a_project_fails_in_one_line(tmp_path):
    proc = run([BIN / "clipdistill", "sync", "--project", tmp_path], tmp_path, tmp_path, check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "no dvc.yaml" in proc.stderr, proc.stderr


def run(args, cwd, home, timeout=1800, check=True):
    t0 = time.monotonic()
    proc = subprocess.run(["timeout", "-k", "5", str(timeout), *map(str, args)], cwd=cwd, env=_env(home),
                          capture_output=True, text=True, check=False)
    proc.seconds = time.monotonic() - t0
    if check:
        assert proc.returncode == 0, f"{args} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def git_commit(root: Path, home: Path, msg: str, *paths: str) -> None:
    run(["git", "add", *(paths or ["-A"])], root, home)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", msg], root, home)


def dvc_stale(root: Path, home: Path) -> set[str]:
    return set(json.loads(run([BIN / "dvc", "status", "--json"], root, home).stdout or "{}"))


def nothing_to_do(root: Path, home: Path) -> bool:
    """What a user types: plain `snakemake -n` (no profile)."""
    return "Nothing to be done" in run([BIN / "snakemake", "-n"], root, home).stdout


def snakemake_stale_stages(root: Path, home: Path) -> set[str]:
    """DVC stage names of the jobs `snakemake -n` would run (a stage is stale if any out is)."""
    from clipdistill.state import _stages

    out = run([BIN / "snakemake", "-n"], root, home).stdout
    pending = {p for line in re.findall(r"^    output: (.*)$", out, re.MULTILINE) for p in line.split(", ")}
    return {name for name, (outs, _) in _stages(root).items() if set(outs) & pending}


def exp_run_stages(root: Path, home: Path) -> set[str]:
    out = run([BIN / "dvc", "exp", "run", "-S", METHOD_PARAM], root, home).stdout
    return {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return tmp_path_factory.mktemp("home")


@pytest.fixture(scope="module")
def killed(tmp_path_factory, home):
    """The smoke study through Snakemake, SIGKILLed (its whole process group) once 8 jobs have
    finished, then `clipdistill sync`: the states both runners see, right after."""
    root = project_copy(tmp_path_factory.mktemp("snakemake") / "project")
    git_commit(root, home, "project")
    log = (root.parent / "run.log").open("w")
    proc = subprocess.Popen(SNAKEMAKE, cwd=root, env=_env(home), stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.monotonic() + 600
    while (root.parent / "run.log").read_text().count("Finished job") < 8:
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before it could be killed"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    log.close()
    assert (root / ".snakemake" / "locks").is_dir() and any((root / ".snakemake" / "locks").iterdir())
    sync = run([BIN / "clipdistill", "sync"], root, home)
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"] if (root / "dvc.lock").exists() else {}
    return {"root": root, "sync": sync, "lock": lock, "dvc": dvc_stale(root, home),
            "snakemake": snakemake_stale_stages(root, home)}


@pytest.mark.slow
def test_after_a_kill_and_sync_finished_stages_are_recorded_and_unfinished_are_stale_in_both(killed):
    assert killed["dvc"] == killed["snakemake"], (killed["dvc"] ^ killed["snakemake"])
    assert killed["lock"] and killed["dvc"], "the kill should fall between the first and the last job"
    assert not set(killed["lock"]) & killed["dvc"]
    assert all((killed["root"] / o["path"]).exists() for stage in killed["lock"].values() for o in stage["outs"])
    assert "still to run, for both runners" in killed["sync"].stderr, killed["sync"].stderr
    assert not list((killed["root"] / ".snakemake" / "incomplete").iterdir())


@pytest.fixture(scope="module")
def finished(killed, home):
    """The same project after `make run` resumes and finishes it (its onsuccess hook records)."""
    root = killed["root"]
    proc = run(SNAKEMAKE, root, home)
    return {"root": root, "run": proc, "dvc": dvc_stale(root, home)}


@pytest.mark.slow
def test_make_run_records_itself_so_dvc_status_is_clean(finished, home):
    text = finished["run"].stdout + finished["run"].stderr
    assert re.search(r"clipdistill: recorded \d+ stage\(s\) in dvc\.lock", text), text[-2000:]
    assert finished["dvc"] == set(), finished["dvc"]
    assert nothing_to_do(finished["root"], home)


@pytest.mark.slow
def test_one_param_experiment_after_make_run_reruns_only_that_method(finished, home):
    root = finished["root"]
    git_commit(root, home, "study", "dvc.lock")  # what the README tells a newcomer to do
    assert exp_run_stages(root, home) == EXPECTED_RERUN
    assert dvc_stale(root, home) == set()
    run([BIN / "clipdistill", "sync"], root, home)  # DVC reran them: Snakemake's records follow
    assert nothing_to_do(root, home)
    assert dvc_stale(root, home) == set()


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory, home):
    """The smoke study through `dvc repro` in a fresh clone."""
    root = project_copy(tmp_path_factory.mktemp("dvc") / "project")
    git_commit(root, home, "project")
    run([BIN / "dvc", "repro", "-q"], root, home)
    return root


@pytest.mark.slow
def test_dvc_repro_in_a_fresh_clone_leaves_snakemake_nothing_to_do(reproduced, home):
    assert dvc_stale(reproduced, home) == set()
    assert nothing_to_do(reproduced, home)  # no --touch, no sync: repro writes in DAG order
    git_commit(reproduced, home, "study", "dvc.lock")
    assert exp_run_stages(reproduced, home) == EXPECTED_RERUN
    assert nothing_to_do(reproduced, home)
    assert dvc_stale(reproduced, home) == set()


@pytest.mark.slow
def test_sync_refuses_an_output_edited_after_snakemake_wrote_it(finished, home, tmp_path):
    """Recording must never bless a hand edit: one line naming the stage, nothing written."""
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(finished["root"], copy, symlinks=True)
    lock = (copy / "dvc.lock").read_text()
    (copy / "results/teacher_eval/s/metrics.json").write_text("{}")
    proc = run([BIN / "clipdistill", "sync"], copy, home, check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "teacher_eval@s" in proc.stderr and "changed after Snakemake wrote it" in proc.stderr
    assert (copy / "dvc.lock").read_text() == lock
