"""The two finished smoke studies the end-to-end tests share (issue 23: each costs minutes on
two cores, so the session builds each once): one made by Snakemake (SIGKILLed midway, synced,
resumed), one by `dvc repro` in a fresh clone. Also the other jobs of conftest's background
queue: the bf16 study, the worked example's runs and test_vqa's one-object world. Tests only read them; one that changes anything
works on `copy_study`, which keeps modification times (Snakemake's rerun trigger) and the
project's own DVC cache and git history."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml
from conftest import BIN, REPO, SMOKE, project_copy

HELPERS = Path(__file__).resolve().parent / "helpers"

SNAKEMAKE = [str(BIN / "snakemake"), "-c2", "--workflow-profile", "workflow/profiles/default"]  # = make run


def env(home: Path) -> dict:
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "HOME": str(home),
            "DVC_SITE_CACHE_DIR": str(home / "dvc-site"), "DVC_NO_ANALYTICS": "1"}


def run(args, cwd, home, timeout=1800, check=True):
    t0 = time.monotonic()
    proc = subprocess.run(["timeout", "-k", "5", str(timeout), *map(str, args)], cwd=cwd, env=env(home),
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


def lock(root: Path) -> dict:
    path = root / "dvc.lock"
    return yaml.safe_load(path.read_text())["stages"] if path.exists() else {}


def copy_study(study: Path, dest: Path) -> Path:
    """A private copy to change: mtimes, .dvc/cache, .git and .snakemake come along; the
    default local remote (../../clipdistill-remote from .dvc) is then dest's parent's."""
    shutil.copytree(study, dest, symlinks=True)
    return dest


def snakemake_killed(root: Path, home: Path) -> dict:
    """The smoke study through Snakemake, SIGKILLed (its whole process group) once 8 jobs have
    finished, then `clipdistill sync`: the states both runners see, right after (read here,
    because the same project is resumed afterwards)."""
    project_copy(root)
    git_commit(root, home, "project")
    log_path = root.parent / "run.log"
    log = log_path.open("w")
    proc = subprocess.Popen(SNAKEMAKE, cwd=root, env=env(home), stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.monotonic() + 600
    while log_path.read_text().count("Finished job") < 8:
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before it could be killed"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    log.close()
    locks = root / ".snakemake" / "locks"
    assert locks.is_dir() and any(locks.iterdir())
    sync = run([BIN / "clipdistill", "sync"], root, home)
    recorded = lock(root)
    outs = [o["path"] for stage in recorded.values() for o in stage["outs"]]
    return {"root": root, "sync": sync, "lock": recorded, "dvc": dvc_stale(root, home),
            "snakemake": snakemake_stale_stages(root, home),
            "missing_outs": [o for o in outs if not (root / o).exists()],
            "incomplete": list((root / ".snakemake" / "incomplete").iterdir())}


def snakemake_finished(killed: dict, home: Path) -> dict:
    """The killed project after `make run` resumes and finishes it (its onsuccess hook records);
    then, as a user shares it, `dvc commit -f` (which must change nothing) and dvc.lock into git."""
    root = killed["root"]
    proc = run(SNAKEMAKE, root, home)
    stale = dvc_stale(root, home)
    recorded = lock(root)
    run([BIN / "dvc", "commit", "-f", "-q"], root, home)
    git_commit(root, home, "study", "dvc.lock")  # what the README tells a newcomer to do
    return {"root": root, "run": proc, "dvc": stale, "recorded": recorded, "committed": lock(root)}


def dvc_reproduced(root: Path, home: Path) -> Path:
    """The smoke study through `dvc repro` in a fresh clone, dvc.lock then committed."""
    project_copy(root)
    git_commit(root, home, "project")
    run([BIN / "dvc", "repro", "-q"], root, home)
    git_commit(root, home, "study", "dvc.lock")
    return root


METHOD_PARAM = "distill.methods.clipkd.weight=2"


def exp_run_stages(root: Path, home: Path) -> set[str]:
    """The stages `dvc exp run -S METHOD_PARAM` runs in root."""
    out = run([BIN / "dvc", "exp", "run", "-S", METHOD_PARAM], root, home).stdout
    return {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}


CLIPKD_LINE = "clipkd: {clip: 1, crd: 1, icl: 1, fd: 2000, weight: 1}"


def one_param_experiment(study: Path, dest: Path, home: Path) -> dict:
    """On a copy of a finished Snakemake study (dvc.lock in git): what DVC calls stale once the
    clipkd weight is edited in params.yaml, then (the edit undone) what `dvc exp run -S
    METHOD_PARAM` runs, and what both runners see after it and after `clipdistill sync`."""
    root = copy_study(study, dest)
    params = root / "params.yaml"
    original = params.read_text()
    edited = original.replace(CLIPKD_LINE, CLIPKD_LINE.replace("weight: 1", "weight: 2"))
    params.write_text(edited)  # DVC calls only the stages that read the param stale
    stale_after_edit = dvc_stale(root, home)
    params.write_text(original)
    ran = exp_run_stages(root, home)
    stale_after_exp = dvc_stale(root, home)
    run([BIN / "clipdistill", "sync"], root, home)  # DVC reran them: Snakemake's records follow
    return {"root": root, "edited": edited != original, "stale_after_edit": stale_after_edit, "ran": ran,
            "stale_after_exp": stale_after_exp, "nothing_to_do_after_sync": nothing_to_do(root, home),
            "stale_after_sync": dvc_stale(root, home)}


def snakemake_killed_finished_experiment(parent: Path, home: Path, experiment: bool) -> tuple[dict, dict, dict | None]:
    """The Snakemake study killed midway (its states read right after), then finished, then (if
    asked) the one-param experiment on a copy of it: one background job (conftest)."""
    killed = snakemake_killed(parent / "project", home)
    finished = snakemake_finished(killed, home)
    return killed, finished, one_param_experiment(finished["root"], parent / "experiment", home) if experiment else None


def dvc_reproduced_with_experiment(parent: Path, home: Path, experiment: bool) -> tuple[Path, dict | None]:
    """dvc_reproduced under parent/project, then (if `experiment`) the one-param experiment, a
    `dvc exp run`, in a copy taken right after: (the study, {"root": the copy, "ran": the stages
    it ran} or None). One job, one stage at a time, so that it can run beside the other tests."""
    study = dvc_reproduced(parent / "project", home)
    if not experiment:
        return study, None
    (parent / "experiment").mkdir()
    root = copy_study(study, parent / "experiment" / "project")
    return study, {"root": root, "ran": exp_run_stages(root, home)}


def bf16_study(parent: Path) -> dict:
    """The smoke study with `runtime.precision: bf16` (one VLM seed: bf16 is not about VLM seeds,
    and it halves the VQA stages), HOME its own: Snakemake trains and evaluates every teacher and
    student, `clipdistill sync` records them in dvc.lock, then `dvc repro` runs every VQA stage
    and the report on top. What the runs left, for test_runtime to check."""
    params = yaml.safe_load(SMOKE.read_text())
    params["runtime"]["precision"] = "bf16"
    params["vqa"]["seeds"] = [0]
    (parent / "bf16.yaml").write_text(yaml.safe_dump(params))
    root = project_copy(parent / "project", parent / "bf16.yaml")
    git_commit(root, parent, "bf16 study")
    run([*SNAKEMAKE, "--omit-from", "vqa_lm"], root, parent)
    vqa_by_snakemake = (root / "results" / "vqa").exists()
    run([BIN / "clipdistill", "sync"], root, parent)
    recorded = set(yaml.safe_load((root / "dvc.lock").read_text())["stages"])
    repro = run([BIN / "dvc", "repro"], root, parent)
    return {"root": root, "home": parent, "vqa_by_snakemake": vqa_by_snakemake, "recorded": recorded,
            "repro": repro}


EXAMPLE = REPO / "configs" / "example-real.yaml"
PLACEHOLDER = "/tmp/clipdistill-example"  # where the config expects the data; the tests use their own folder


def example_params(data: Path, out: Path) -> Path:
    """configs/example-real.yaml pointed at `data` (what a user does for their own data)."""
    out.write_text(EXAMPLE.read_text().replace(PLACEHOLDER, str(data)))
    return out


def worked_example(parent: Path) -> dict:
    """The worked example's data built afresh (tests/helpers/real_example.py), then the example
    run by Snakemake and by `dvc repro`, each in its own copy of the project, side by side (one
    core each), HOME parent; if both succeed, `clipdistill sync` in Snakemake's copy and what
    both runners then see (dvc status, snakemake -n). What the runs left, for test_example_real."""
    if str(HELPERS) not in sys.path:
        sys.path.insert(0, str(HELPERS))
    import real_example

    data = real_example.build(parent / "example-data")
    params = example_params(data, parent / "example.yaml")
    roots = {}
    for runner in ("snakemake", "dvc"):
        root = roots[runner] = project_copy(parent / runner, params)
        run([BIN / "python", "-m", "clipdistill.stages", "dvc-yaml", "--out", "dvc.yaml"], root, parent)
        git_commit(root, parent, "the worked example")
    commands = {"snakemake": [BIN / "snakemake", "-c1", "--workflow-profile", "workflow/profiles/default"],
                "dvc": [BIN / "dvc", "repro"]}
    procs = {k: subprocess.Popen(list(map(str, cmd)), cwd=roots[k], env=env(parent), stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True) for k, cmd in commands.items()}
    logs = {k: p.communicate(timeout=1800)[0] for k, p in procs.items()}
    out = {"data": data, "roots": roots, "logs": logs, "returncodes": {k: p.returncode for k, p in procs.items()}}
    if any(out["returncodes"].values()):
        return out  # the test says which runner failed, with its log
    run([BIN / "clipdistill", "sync"], roots["snakemake"], parent)
    out["stale"] = {k: dvc_stale(root, parent) for k, root in roots.items()}
    out["nothing_to_do"] = {k: nothing_to_do(root, parent) for k, root in roots.items()}
    return out


def one_object_world(parent: Path) -> Path:
    """tests/helpers/one_object_world.py's world and teacher under parent/world, built in its own
    process (one thread; the foreground tests keep the other core)."""
    run([BIN / "python", HELPERS / "one_object_world.py", parent / "world"], REPO, parent)
    return parent / "world"
