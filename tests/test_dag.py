"""Snakemake and DVC define the same pipeline, and both run it."""

import os
import re
import subprocess


from conftest import BIN, REPO, project_copy


def _env():
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}


def _run(args, cwd, timeout=600):
    proc = subprocess.run(args, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{args} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def snakemake_jobs(cwd=REPO):
    """{(rule, command, deps, outs)} from a forced dry run with shell commands printed."""
    out = _run([str(BIN / "snakemake"), "-n", "-p", "--forceall"], cwd).stdout
    jobs = set()
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", out):
        head = re.match(r"(?:local)?rule (\w+):", block)
        if not head or head[1] == "all":
            continue
        fields = dict(re.findall(r"^    (\w+): (.*)$", block, re.M))
        cmd = re.search(r"^Shell command: (.*)$", block, re.M)[1]
        split = lambda v: frozenset(x for x in (v or "").split(", ") if x)  # noqa: E731
        jobs.add((head[1], cmd, split(fields.get("input")), split(fields.get("output"))))
    return jobs


def dvc_stages(cwd=REPO):
    from dvc.repo import Repo

    stages = set()
    with Repo(str(cwd)) as repo:
        for s in repo.index.stages:
            deps = frozenset(d.def_path for d in s.deps if not hasattr(d, "params"))
            stages.add((s.name.split("@")[0], s.cmd, deps, frozenset(o.def_path for o in s.outs)))
    return stages


def dvc_params(cwd=REPO):
    from dvc.repo import Repo

    with Repo(str(cwd)) as repo:
        return {s.name: sorted(p for d in s.deps if hasattr(d, "params") for p in d.params)
                for s in repo.index.stages}


def _covered(path: str, by: str) -> bool:
    return path == by or path.startswith(by.rstrip("/") + "/")


def test_snakemake_and_dvc_define_the_same_stages():
    """Same stages, commands and outputs; the same dependencies, where DVC may name a folder
    (e.g. results/vqa_metrics) for the files Snakemake lists inside it — each side covers
    the other."""
    smk = {(name, cmd, outs): deps for name, cmd, deps, outs in snakemake_jobs()}
    dvc = {(name, cmd, outs): deps for name, cmd, deps, outs in dvc_stages()}
    assert smk, "no jobs parsed from snakemake"
    assert smk.keys() == dvc.keys(), f"only in Snakemake: {smk.keys() - dvc.keys()}\nonly in DVC: {dvc.keys() - smk.keys()}"
    for key, s_deps in smk.items():
        d_deps = dvc[key]
        assert all(any(_covered(s, d) for d in d_deps) for s in s_deps), (key[0], s_deps - d_deps)
        assert all(any(_covered(s, d) for s in s_deps) for d in d_deps), (key[0], d_deps - s_deps)


def test_each_stage_tracks_exactly_the_params_it_reads():
    from clipdistill.params import DataParams, load_section

    params = dvc_params()
    shared = {f"data.{k}" for k in DataParams.model_fields if k != "splits"}
    for split in load_section(REPO / "params.yaml", "data").splits:
        assert set(params.pop(f"data_synth@{split}")) == shared | {f"data.splits.{split}"}
    for teacher in load_section(REPO / "params.yaml", "teachers"):
        assert params.pop(f"teacher_train@{teacher}") == [f"teachers.{teacher}"]
        assert params.pop(f"teacher_eval@{teacher}") == ["eval"]
        assert params.pop(f"features_extract@{teacher}") == ["features"]
    grid = load_section(REPO / "params.yaml", "distill").grid
    runs = [(t, s, m, seed) for t in grid.teachers for s in grid.students for m in grid.methods for seed in grid.seeds]
    for t, s, m, seed in runs:
        assert set(params.pop(f"distill@{t}-{s}-{m}-{seed}")) == {
            "distill.train", f"distill.students.{s}", f"distill.methods.{m}"}
        assert params.pop(f"student_eval@{t}-{s}-{m}-{seed}") == ["eval"]
        assert params.pop(f"vqa_student@{t}-{s}-{m}-{seed}") == ["vqa"]
    for s, m, seed in [(s, m, seed) for s in grid.students for m in grid.baselines for seed in grid.seeds]:
        assert set(params.pop(f"distill_baseline@{s}-{m}-{seed}")) == {
            "distill.train", f"distill.students.{s}", f"distill.methods.{m}"}
        assert params.pop(f"vqa_baseline@{s}-{m}-{seed}") == ["vqa"]
        for t in grid.teachers:
            assert params.pop(f"student_eval_baseline@{t}-{s}-{m}-{seed}") == ["eval"]
    for teacher in load_section(REPO / "params.yaml", "teachers"):
        assert params.pop(f"vqa_teacher@{teacher}") == ["vqa"]
    assert params == {"data_preview": [], "vqa_lm": ["vqa.lm", "vqa.lm_pretrain"], "vqa_blind": ["vqa"],
                      "report": ["report"]}


def test_snakemake_lint_is_clean():
    proc = _run([str(BIN / "snakemake"), "--lint"], REPO)
    assert "Congratulations" in proc.stdout + proc.stderr
