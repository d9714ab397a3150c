"""The SLURM profile: it validates (`-n`), and — where Debian's slurm-wlm and munge are
installed and we are root — a single-node SLURM cluster on localhost runs a chain of the
smoke study (data → teacher → evaluation) as real sbatch jobs. Every call is bounded.

Nothing is written outside the tests' temporary folders: the cluster's slurm.conf lives in its
folder and SLURM_CONF points the daemons and clients at it. One client does not see SLURM_CONF:
inside each job, snakemake's slurm-jobstep plugin removes every SLURM_* variable except the
job's identity before its inner `srun` (so that the allocation's task and GPU defaults do not
leak into the step), and that srun then looks only at the compiled-in /etc/slurm/slurm.conf
("Could not establish a configuration source" — why the data_synth jobs FAILED when only
SLURM_CONF was set). PATH survives that filter, so the cluster's folder holds an `srun` that
sets SLURM_CONF again and runs the real one; sbatch exports the submitting environment, PATH
included, into every job."""

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from conftest import BIN, REPO, project_copy

SYSTEM_CONF = Path("/etc/slurm/slurm.conf")  # read, never written
CLUSTER_ENV: dict[str, str] = {}  # SLURM_CONF and the srun wrapper's folder while the cluster is up


def _env():
    path = os.pathsep.join(p for p in (CLUSTER_ENV.get("PATH_FIRST"), str(BIN), os.environ["PATH"]) if p)
    extra = {k: v for k, v in CLUSTER_ENV.items() if k != "PATH_FIRST"}
    return {**os.environ, "PATH": path, **extra}


def _run(args, cwd=None, timeout=120, check=True):
    proc = subprocess.run(["timeout", "-k", "10", str(timeout), *map(str, args)], cwd=cwd, env=_env(),
                          capture_output=True, text=True)
    if check:
        assert proc.returncode == 0, f"{args}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


MODEL_RULES = {"teacher_train", "teacher_eval", "features_extract", "distill", "student_eval", "vqa_lm", "vqa_teacher",
               "vqa_student", "vqa_blind"}


def _planned_gpus(project: Path) -> dict[str, set[int]]:
    """rule -> the `gpu` counts its jobs ask for, from the slurm profile's dry run of the whole study."""
    out = _run([BIN / "snakemake", "--profile", "workflow/profiles/slurm", "-n", "--forceall"], project).stdout
    assert "vqa_student" in out and "distill" in out and "This was a dry-run" in out
    gpus: dict[str, set[int]] = {}
    for rule, body in re.findall(r"^rule (\w+):\n(.*?)(?=^\S|\Z)", out, re.M | re.S):
        found = re.search(r"resources: .*?\bgpu=(\d+)", body)
        gpus.setdefault(rule, set()).add(int(found[1]) if found else 0)
    return gpus


def test_slurm_profile_validates_the_whole_study_and_asks_gpus_only_for_cuda(tmp_path):
    # a scratch copy (nothing written into the checkout, no local study seen) and --forceall
    # (every job planned whatever exists): the dry run lists the whole study
    project = project_copy(tmp_path / "project")
    profile = yaml.safe_load((REPO / "workflow/profiles/slurm/config.yaml").read_text())
    assert profile["executor"] == "slurm"
    assert not any("gpu" in res for res in profile["set-resources"].values())  # the rules ask, from params
    assert all(g == {0} for g in _planned_gpus(project).values())  # runtime.device auto: no GPUs requested
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["runtime"].update(device="cuda", gpus=4)
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    gpus = _planned_gpus(project)
    assert {r: g for r, g in gpus.items() if r in MODEL_RULES} == {
        r: {4} if r == "distill" or r.startswith("vqa_") and r != "vqa_lm" else {1} for r in MODEL_RULES}
    assert all(g == {0} for r, g in gpus.items() if r not in MODEL_RULES), gpus  # data, report: CPU jobs


def _wait(predicate, seconds: float, what: str):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise TimeoutError(what)


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    needed = ("slurmctld", "slurmd", "munged", "mungekey", "sinfo", "scontrol", "srun")
    if os.geteuid() != 0 or not all(shutil.which(b) or Path(f"/usr/sbin/{b}").exists() for b in needed):
        pytest.skip("needs root and Debian's slurmctld, slurmd, munge (make test installs them when it can)")
    system_conf_before = _fingerprint(SYSTEM_CONF)
    root = tmp_path_factory.mktemp("slurm")
    sock = root / "munge.socket"
    subprocess.run(["mungekey", "--create", f"--keyfile={root / 'munge.key'}"], check=True, timeout=30)
    os.chmod(root / "munge.key", 0o600)
    subprocess.run(["munged", f"--socket={sock}", f"--key-file={root / 'munge.key'}",
                    f"--pid-file={root / 'munged.pid'}", f"--log-file={root / 'munged.log'}",
                    f"--seed-file={root / 'munged.seed'}", "--force"], check=True, timeout=30)
    cpus = os.cpu_count() or 2
    (root / "spool").mkdir()
    (root / "state").mkdir()
    conf = root / "slurm.conf"
    conf.write_text("\n".join([
        "ClusterName=clipdistill-test", "SlurmctldHost=localhost", "SlurmUser=root", "SlurmdUser=root",
        "AuthType=auth/munge", "CredType=cred/munge", f"AuthInfo=socket={sock}",
        f"StateSaveLocation={root / 'state'}", f"SlurmdSpoolDir={root / 'spool'}",
        f"SlurmctldPidFile={root / 'slurmctld.pid'}", f"SlurmdPidFile={root / 'slurmd.pid'}",
        f"SlurmctldLogFile={root / 'slurmctld.log'}", f"SlurmdLogFile={root / 'slurmd.log'}",
        "MailProg=/bin/true", "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none",
        "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core",
        "AccountingStorageType=accounting_storage/none", "JobAcctGatherType=jobacct_gather/none",
        "MinJobAge=300", "ReturnToService=2",
        f"NodeName=localhost NodeHostname=localhost CPUs={cpus} RealMemory=4000 State=UNKNOWN",
        "PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP", ""]))
    wrappers = root / "bin"
    wrappers.mkdir()
    (wrappers / "srun").write_text(f'#!/bin/sh\nSLURM_CONF={conf} exec {shutil.which("srun")} "$@"\n')
    (wrappers / "srun").chmod(0o755)
    CLUSTER_ENV.update(SLURM_CONF=str(conf), PATH_FIRST=str(wrappers))
    pids = []
    try:
        subprocess.run(["slurmctld"], check=True, timeout=30, env=_env())
        pids.append(root / "slurmctld.pid")
        _wait(lambda: "UP" in _run(["scontrol", "ping"], check=False).stdout, 30, "slurmctld did not come up")
        subprocess.run(["slurmd", "-N", "localhost"], check=True, timeout=30, env=_env())
        pids.append(root / "slurmd.pid")
        _wait(lambda: "idle" in _run(["sinfo", "-h", "-N", "-o", "%T"], check=False).stdout, 60,
              "slurmd did not register an idle node")
        yield root
    finally:
        for pid_file in [*pids, root / "munged.pid"]:
            if pid_file.exists():
                try:
                    os.kill(int(pid_file.read_text().split()[0]), 15)
                except (ProcessLookupError, ValueError):
                    pass
        CLUSTER_ENV.clear()
    assert _fingerprint(SYSTEM_CONF) == system_conf_before, f"{SYSTEM_CONF} changed"


def _fingerprint(path: Path):
    """What is at `path` (kind, target or bytes), to show that a run left it as it was."""
    if path.is_symlink():
        return "link", os.readlink(path)
    return ("file", path.read_bytes()) if path.exists() else None


def local_profile(project: Path) -> str:
    """The shipped slurm profile, fitted to a one-node cluster without GPUs or accounting."""
    profile = yaml.safe_load((REPO / "workflow/profiles/slurm/config.yaml").read_text())
    profile["default-resources"].update(slurm_partition="debug", mem_mb=500)
    for res in profile["set-resources"].values():
        res.pop("gpu", None)
        res.update(slurm_partition="debug", mem_mb=500)
    profile.update({"slurm-status-command": "squeue", "slurm-init-seconds-before-status-checks": 1,
                    "jobs": 2, "latency-wait": 5})
    out = project / "workflow" / "profiles" / "slurm-local"
    out.mkdir(parents=True)
    (out / "config.yaml").write_text(yaml.safe_dump(profile))
    return "workflow/profiles/slurm-local"


@pytest.mark.slow
def test_a_smoke_chain_runs_as_slurm_jobs(slurm_cluster, tmp_path):
    project = project_copy(tmp_path / "project")
    profile = local_profile(project)
    target = "results/teacher_eval/s/metrics.json"
    proc = _run([BIN / "snakemake", "--workflow-profile", profile, target], project, timeout=600, check=False)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert (project / target).is_file()
    submitted = re.findall(r"has been submitted with SLURM jobid (\d+)", proc.stdout + proc.stderr)
    assert len(submitted) == 4, (proc.stdout + proc.stderr)[-3000:]  # two splits, the teacher, its evaluation
    dry = _run([BIN / "snakemake", "--workflow-profile", profile, "-n", target], project)
    assert "Nothing to be done" in dry.stdout
