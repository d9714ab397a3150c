"""Snakemake and DVC define the same pipeline, both built from the stage table
(src/clipdistill/stages.py); code deps are the transitive imports, computed."""

import json
import os
import re
import subprocess
import textwrap

import pytest
import yaml
from conftest import BIN, REPO, SMOKE, project_copy

from clipdistill import codedeps, stages


def _env():
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}


def _run(args, cwd, timeout=600):
    proc = subprocess.run(args, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{args} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


HARNESSES_ON = {"lmms": ["vqa_eval"], "mieb": ["clip_eval"]}


def params_with_harnesses(source, dest, harnesses=HARNESSES_ON, **sections):
    """A copy of a params file with eval.harnesses set (and whole sections replaced)."""
    raw = yaml.safe_load(source.read_text())
    raw["eval"]["harnesses"] = harnesses
    raw.update(sections)
    dest.write_text(yaml.safe_dump(raw, sort_keys=False))
    return dest


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """The default study's project, copied (dry runs leave .snakemake state behind)."""
    return project_copy(tmp_path_factory.mktemp("dag") / "project", REPO / "params.yaml")


@pytest.fixture(scope="module")
def dags(project):
    """Both runners' view of the default study: Snakemake's jobs, DVC's stages."""
    return snakemake_jobs(project), dvc_stages(project)


@pytest.fixture(scope="module")
def harness_dags(tmp_path_factory):
    """The same with both harnesses switched on (one split each)."""
    root = tmp_path_factory.mktemp("dag_harness")
    params = params_with_harnesses(REPO / "params.yaml", root / "params.yaml")
    project = project_copy(root / "project", params)
    return snakemake_jobs(project), dvc_stages(project), dvc_params(project)


def snakemake_jobs(cwd):
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


def dvc_stages(cwd):
    """{(table stage, command, deps, outs)} of every DVC stage."""
    from dvc.repo import Repo

    found = set()
    with Repo(str(cwd)) as repo:
        for s in repo.index.stages:
            deps = frozenset(d.def_path for d in s.deps if not hasattr(d, "params"))
            found.add((stages.dvc_stage_of(s.name), s.cmd, deps, frozenset(o.def_path for o in s.outs)))
    return found


def dvc_params(cwd):
    from dvc.repo import Repo

    with Repo(str(cwd)) as repo:
        return {s.name: sorted(p for d in s.deps if hasattr(d, "params") for p in d.params)
                for s in repo.index.stages}


def _covered(path: str, by: str) -> bool:
    return path == by or path.startswith(by.rstrip("/") + "/")


def assert_same_stages(snakemake: set, dvc: set) -> None:
    """Same stages, commands and outputs; the same code files; the same data dependencies,
    where DVC may name a folder (e.g. results/vqa_metrics/students) for the files Snakemake
    lists inside it — each side covers the other."""
    smk = {(name, cmd, outs): deps for name, cmd, deps, outs in snakemake}
    dvc = {(name, cmd, outs): deps for name, cmd, deps, outs in dvc}
    assert smk, "no jobs parsed from snakemake"
    assert smk.keys() == dvc.keys(), f"only in Snakemake: {smk.keys() - dvc.keys()}\nonly in DVC: {dvc.keys() - smk.keys()}"
    for key, s_deps in smk.items():
        d_deps = dvc[key]
        code = {d for d in s_deps if d.startswith("src/")}
        assert code == {d for d in d_deps if d.startswith("src/")}, key[0]
        assert code == set(stages.code_deps(stages.BY_NAME[key[0]])) and "src/clipdistill/cli.py" in code, key[0]
        assert all(any(_covered(s, d) for d in d_deps) for s in s_deps), (key[0], s_deps - d_deps)
        assert all(any(_covered(s, d) for s in s_deps) for d in d_deps), (key[0], d_deps - s_deps)


def test_snakemake_and_dvc_define_the_same_stages(dags):
    assert_same_stages(*dags)


HARNESS_STAGES = {s.name for s in stages.STAGES if s.name.startswith("harness_")}


@pytest.fixture(scope="module")
def regime_dags(tmp_path_factory):
    """The smoke study with a 2 × 2 regime (distill.grid.data [distill, distill_shifted] ×
    durations [1, 2]): Snakemake's jobs, DVC's stages and DVC's stage names."""
    raw = yaml.safe_load(SMOKE.read_text())
    raw["distill"]["grid"] |= {"data": ["distill", "distill_shifted"], "durations": [1, 2]}
    tmp = tmp_path_factory.mktemp("dag_regimes")
    (tmp / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    project = project_copy(tmp / "project", tmp / "params.yaml")
    return snakemake_jobs(project), dvc_stages(project), set(dvc_params(project))


def test_a_two_by_two_regime_gives_every_run_its_split_store_and_duration_in_both_runners(regime_dags):
    """One feature store per (split, teacher); every KD run and no-KD baseline once per regime,
    reading that regime's split and store and training for its duration; every student's
    evaluations and VLMs under its regime's folder; the same jobs for Snakemake and DVC."""
    snakemake, dvc, names = regime_dags
    assert_same_stages(snakemake, dvc)
    splits, durations, teachers = ("distill", "distill_shifted"), (1, 2), "sm"
    regimes = [(d, n) for d in splits for n in durations]

    def outs(stage):
        return {o for job in snakemake if job[0] == stage for o in job[3]}

    assert outs("features_extract") == {f"results/features/{d}/{t}" for d in splits for t in teachers}
    trained = [(d, n, t, m) for d, n in regimes for t, m in (("s", "clipkd"), ("m", "clipkd"), ("none", "baseline"))]
    assert outs("distill") == {f"results/students/{d}-x{n}/{t}/xs/{m}/0" for d, n, t, m in trained}
    commands = {job[1] for job in snakemake if job[0] == "distill"}
    for d, n, t, m in trained:
        reads = (f" --teacher results/teachers/{t} --features results/features/{d}/{t}" if t != "none" else "")
        assert any(f"--teacher-name {t} --student xs --method {m} --seed 0 --duration {n}{reads} --data "
                   f"results/data/{d} --out results/students/{d}-x{n}/{t}/xs/{m}/0" in c for c in commands), (d, n, t)
    # a baseline is scored against each teacher, from its own regime's folder
    evals = {(o, frozenset(i for i in job[2] if i.startswith("results/students/")))
             for job in snakemake if job[0] == "student_eval" for o in job[3]}
    assert evals == {(f"results/student_eval/{d}-x{n}/{t}/xs/{m}/0/metrics.json",
                      frozenset({f"results/students/{d}-x{n}/{t if m == 'clipkd' else 'none'}/xs/{m}/0"}))
                     for d, n in regimes for t in teachers for m in ("clipkd", "baseline")}
    assert outs("vqa_student") >= {f"results/vqa_metrics/students/{d}-x{n}/{t}/xs/{m}/0/vlm{v}.json"
                                   for d, n, t, m in trained for v in (0, 1)}
    assert len(outs("vqa_student")) == 2 * len(trained) * 2  # a folder and a metrics file per VLM
    # DVC stage names read as the paths: regime (split, duration) first
    assert {"features_extract@distill_shifted-m", "distill@distill_shifted-2-m-xs-clipkd-0",
            "distill_baseline@distill-1-xs-baseline-0", "student_eval_baseline@distill_shifted-1-s-xs-baseline-0",
            "vqa_student@distill-2-s-xs-clipkd-0-1", "vqa_baseline@distill_shifted-2-xs-baseline-0-0"} <= names
    assert sum(n.startswith(("distill@", "distill_baseline@")) for n in names) == len(trained)


def test_harness_stages_are_off_by_default_in_both_runners(dags):
    """Empty eval.harnesses: no harness job in Snakemake's DAG (so none in `all`), no harness
    stage in DVC's (an empty matrix axis makes none), whatever else the study runs."""
    snakemake, dvc = dags
    assert HARNESS_STAGES == {"harness_lmms_teacher", "harness_lmms_student", "harness_lmms_blind",
                              "harness_mieb_teacher", "harness_mieb_student"}
    assert not {job[0] for job in snakemake} & HARNESS_STAGES
    assert not {stage[0] for stage in dvc} & HARNESS_STAGES
    assert "report" in {job[0] for job in snakemake} and "report" in {stage[0] for stage in dvc}


def test_harness_stages_switched_on_run_every_model_the_same_way_in_both_runners(harness_dags, dags):
    """lmms-eval on every VLM (3 teachers, 24 KD students, 2 baselines, blind; each per VLM
    seed), mteb on every encoder (3 + 24 + 2); the study's other stages are unchanged, and each harness stage reads
    only the params it uses (not eval.harnesses: switching on reruns no CLIP evaluation)."""
    snakemake, dvc, params = harness_dags
    assert_same_stages(snakemake, dvc)
    counts = {name: sum(job[0] == name for job in snakemake) for name in HARNESS_STAGES}
    assert counts == {"harness_lmms_teacher": 6, "harness_lmms_student": 52, "harness_lmms_blind": 2,  # per VLM
                      "harness_mieb_teacher": 3, "harness_mieb_student": 26}
    assert {job for job in snakemake if job[0] not in HARNESS_STAGES} == dags[0]
    for name, keys in params.items():
        if name.startswith("harness_lmms"):
            assert keys == ["vqa.max_new_tokens"], name
        elif name.startswith("harness_mieb"):
            assert keys == ["eval.batch_size"], name
    # DVC names: the split first, then the model's own axes
    assert {"harness_lmms_blind@vqa_eval-1",
            "harness_mieb_student_baseline@clip_eval-distill-1-xs-baseline-0"} <= set(params)
    assert ("clipdistill --log logs/harness/lmms/vqa_eval/teachers/s/vlm1.log eval lmms --params params.yaml --model"
            " results/vqa/teachers/s/vlm1 --data results/data/vqa_eval --out results/harness/lmms/vqa_eval/teachers/s/vlm1"
            ) in {job[1] for job in snakemake}


CLIP_EVAL = ["eval.batch_size", "eval.recall_at", "eval.split", "runtime"]  # `eval clip`'s keys (not eval.harnesses), runtime


def test_each_stage_tracks_exactly_the_params_it_reads(project):
    from clipdistill.params import DataParams, VQAParams, load_section

    params = dvc_params(project)
    shared = {f"data.{k}" for k in DataParams.model_fields if k != "splits"}
    for split in load_section(REPO / "params.yaml", "data").splits:
        assert set(params.pop(f"data_prepare@{split}")) == shared | {f"data.splits.{split}"}
    grid = load_section(REPO / "params.yaml", "distill").grid
    for teacher in load_section(REPO / "params.yaml", "teachers"):
        assert params.pop(f"teacher_train@{teacher}") == ["runtime", f"teachers.{teacher}"]
        assert params.pop(f"teacher_eval@{teacher}") == CLIP_EVAL
        for data in grid.data:
            assert params.pop(f"features_extract@{data}-{teacher}") == ["features", "runtime"]
    vlm_seeds = load_section(REPO / "params.yaml", "vqa").seeds
    # `vqa run`: every vqa key but the further evaluation sets (adding one retrains no VLM)
    vqa_run = sorted(["runtime", *(f"vqa.{k}" for k in VQAParams.model_fields if k != "eval_splits")])
    assert len(vlm_seeds) >= 2  # issue 16: the default study measures the VLM-to-VLM spread
    # DVC names: the regime (data split, duration) first, as in the results paths
    regimes = [f"{d}-{n}" for d in grid.data for n in grid.durations]
    runs = [(r, t, s, m, seed) for r in regimes for t in grid.teachers for s in grid.students for m in grid.methods
            for seed in grid.seeds]
    for r, t, s, m, seed in runs:
        assert set(params.pop(f"distill@{r}-{t}-{s}-{m}-{seed}")) == {
            "distill.train", f"distill.students.{s}", f"distill.methods.{m}", "runtime"}
        assert params.pop(f"student_eval@{r}-{t}-{s}-{m}-{seed}") == CLIP_EVAL
        for v in vlm_seeds:
            assert params.pop(f"vqa_student@{r}-{t}-{s}-{m}-{seed}-{v}") == vqa_run
    for r, s, m, seed in [(r, s, m, seed) for r in regimes for s in grid.students for m in grid.baselines
                          for seed in grid.seeds]:
        assert set(params.pop(f"distill_baseline@{r}-{s}-{m}-{seed}")) == {
            "distill.train", f"distill.students.{s}", f"distill.methods.{m}", "runtime"}
        for v in vlm_seeds:
            assert params.pop(f"vqa_baseline@{r}-{s}-{m}-{seed}-{v}") == vqa_run
        for t in grid.teachers:
            assert params.pop(f"student_eval_baseline@{r}-{t}-{s}-{m}-{seed}") == CLIP_EVAL
    for teacher in load_section(REPO / "params.yaml", "teachers"):
        for v in vlm_seeds:
            assert params.pop(f"vqa_teacher@{teacher}-{v}") == vqa_run
    for v in vlm_seeds:
        assert params.pop(f"vqa_blind@{v}") == vqa_run
    # `runtime` (device, precision): every stage that runs one of our models, and no other
    assert params == {"data_preview": [], "vqa_lm": ["runtime", "vqa.lm", "vqa.lm_pretrain", "vqa.train_split"],
                      "report": ["distill.grid", "report", "teachers", "vqa.eval_splits", "vqa.seeds"]}


def test_snakemake_lint_is_clean(project):
    proc = _run([str(BIN / "snakemake"), "--lint"], project)
    assert "Congratulations" in proc.stdout + proc.stderr


def test_committed_dvc_yaml_is_the_generated_one():
    """dvc.yaml is generated from the stage table; regenerate it after a change to the table or
    to any import: `python -m clipdistill.stages dvc-yaml --out dvc.yaml`."""
    assert (REPO / "dvc.yaml").read_text() == stages.dvc_yaml(), \
        "dvc.yaml is stale: run `python -m clipdistill.stages dvc-yaml --out dvc.yaml`"


def test_teacher_free_runs_are_the_same_stages_without_the_teacher():
    dvc = stages.dvc_stages()
    kd, baseline = dvc["distill"], dvc["distill_baseline"]
    assert [d for d in kd["deps"] if d.startswith("src/")] == [d for d in baseline["deps"] if d.startswith("src/")]
    assert "results/teachers/${item.teacher}" in kd["deps"]
    assert not any(d.startswith("results/teachers") for d in baseline["deps"])
    assert "--teacher-name none" in baseline["cmd"] and "--features" not in baseline["cmd"]
    assert "--model results/students/${item.data}-x${item.duration}/none/" in dvc["student_eval_baseline"]["cmd"]
    assert "--teacher results/teachers/${item.teacher}" in dvc["student_eval_baseline"]["cmd"]
    assert dvc["vqa_baseline"]["matrix"]["method"] == "${distill.grid.baselines}"


def _package(root, files: dict):
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(textwrap.dedent(text))
    return root


def _rel(paths, root):
    return {p.relative_to(root).as_posix() for p in paths}


def test_closure_follows_lazy_relative_and_package_imports(tmp_path):
    root = _package(tmp_path, {
        "toy/__init__.py": "",
        "toy/cli.py": "import toy.light\n\ndef cmd():\n    from toy.heavy import run\n",
        "toy/light.py": "X = 1\n",
        "toy/heavy/__init__.py": "from .run import run\n",
        "toy/heavy/run.py": "import json\n\ndef run():\n    from ..util import helper\n    from . import data\n",
        "toy/heavy/data/table.json": "{}",
        "toy/heavy/data/notes.txt": "kept: data of the package",
        "toy/util/__init__.py": "",
        "toy/util/helper.py": "try:\n    from toy.util import deep\nexcept ImportError:\n    pass\n",
        "toy/util/deep.py": "",
        "toy/unused.py": "import toy.heavy\n",
    })
    assert _rel(codedeps.closure(["toy.heavy.run"], root), root) == {
        "toy/__init__.py", "toy/heavy/__init__.py", "toy/heavy/run.py", "toy/heavy/data/table.json",
        "toy/heavy/data/notes.txt", "toy/util/__init__.py", "toy/util/helper.py", "toy/util/deep.py"}
    assert codedeps.top_level_imports("toy.cli", root) == {"toy.light"}
    assert _rel(codedeps.closure(["toy.light"], root), root) == {"toy/__init__.py", "toy/light.py"}
    assert codedeps.import_chain(["toy.heavy.run"], root / "toy/util/deep.py", root) == [
        "toy.heavy.run", "toy.util.helper", "toy.util.deep"]


def test_lazy_imports_of_a_params_section_count_only_for_stages_reading_it(tmp_path):
    root = _package(tmp_path, {
        "toy/__init__.py": "",
        "toy/losses.py": "",
        "toy/params.py": """\
            import toy.io

            class Methods:
                def check(self):
                    from toy.losses import LOSSES

            class Distill:
                methods: dict[str, Methods]

            class Data:
                seed: int

            class Params:
                data: Data
                distill: Distill
            """,
        "toy/io.py": "",
    })

    def scoped(*sections):
        return _rel(codedeps.closure(["toy.params"], root, ("toy.params", "Params", sections)), root)

    assert "toy/losses.py" not in scoped("data")
    assert "toy/losses.py" in scoped("distill") and "toy/io.py" in scoped("data")
    assert "toy/losses.py" in _rel(codedeps.closure(["toy.params"], root), root)  # unscoped: everything counts


def test_a_commands_entry_modules_are_what_its_body_imports(tmp_path):
    root = _package(tmp_path, {
        "toy/__init__.py": "",
        "toy/a.py": "", "toy/b.py": "", "toy/c.py": "",
        "toy/cli.py": """\
            import toy.b

            def _helper():
                from toy import c

            def run_cmd():
                from toy.a import x
                _helper()

            def other_cmd():
                import toy.b
            """,
        "toy/cli_tools.py": "def preview():\n    import toy.c\n",
        "toy/main.py": "import toy.cli\nimport toy.cli_tools\n\ndef main():\n    import toy.a\n",
    })
    assert codedeps.function_imports("toy.cli", "run_cmd", root) == {"toy", "toy.a", "toy.c"}
    assert codedeps.function_imports("toy.cli", "other_cmd", root) == {"toy.b"}
    with pytest.raises(LookupError, match="no function 'nope'"):
        codedeps.function_imports("toy.cli", "nope", root)
    # the CLI layer is shallow: importing it runs its top level, not its commands' bodies
    assert _rel(codedeps.closure(["toy.main"], root, shallow=("toy.cli",)), root) == {
        "toy/__init__.py", "toy/main.py", "toy/cli.py", "toy/cli_tools.py", "toy/b.py", "toy/a.py"}


def test_the_cli_finds_every_stage_command():
    assert stages.command_function(("vqa", "run", "--params", "params.yaml")) == ("clipdistill.cli", "vqa_run")
    # registered as `eval_app.command("lmms")(tools.eval_lmms)`: its body is in cli_tools
    assert stages.command_function(("eval", "lmms", "--model", "m")) == ("clipdistill.cli_tools", "eval_lmms")
    with pytest.raises(LookupError, match="no clipdistill command for 'vqa'"):
        stages.command_function(("vqa",))


def test_every_stage_finds_its_command_and_depends_on_its_code():
    for stage in stages.STAGES:
        entry = stages.entry_modules(stage)
        assert entry, stage.name
        deps = stages.code_deps(stage)
        assert {"src/clipdistill/cli.py", "src/clipdistill/params.py", "src/clipdistill/io.py"} <= set(deps)
        for module in entry:
            assert codedeps.module_file(module).relative_to(REPO).as_posix() in deps, (stage.name, module)
    assert "src/clipdistill/models/configs/cd-student-xs.json" in stages.code_deps(stages.BY_NAME["distill"])


def test_the_report_reads_the_runs_the_grid_defines(tmp_path):
    """With the study's params the report reads exactly the grid's runs where the table puts
    them: the same files as reading a complete results tree, and a missing run is an error
    naming its file instead of a silently shorter table."""
    from test_report import fabricate

    from clipdistill.report.study import report

    res, data = fabricate(tmp_path, lambda rank, seed: 10 + 5 * rank + seed)
    params = tmp_path / "params.yaml"
    params.write_text(textwrap.dedent("""\
        teachers: {s: {arch: cd-teacher-s}, m: {arch: cd-teacher-m}, l: {arch: cd-teacher-l}}
        distill:
          students: {xs: {arch: cd-student-xs}}
          methods: {baseline: {clip: 1}, kd: {clip: 1, fd: 1}}
          grid: {teachers: [s, m, l], students: [xs], methods: [kd], baselines: [baseline], seeds: [0, 1]}
        """))
    report(res, data, tmp_path / "found", n_boot=50)
    report(res, data, tmp_path / "grid", n_boot=50, params=params)
    for name in ("study.md", "study.csv", "effect.json", "correlations.json"):
        assert (tmp_path / "grid" / name).read_bytes() == (tmp_path / "found" / name).read_bytes(), name
    (res / "student_eval/distill-x1/m/xs/baseline/1/metrics.json").unlink()
    from clipdistill.io import DataError

    with pytest.raises(DataError, match="student_eval/distill-x1/m/xs/baseline/1/metrics.json: file not found"):
        report(res, data, tmp_path / "short", n_boot=50, params=params)


@pytest.mark.slow
def test_harness_stages_run_on_the_smoke_study_and_score_as_its_own_evaluations(tmp_path):
    """Switched on for the smoke study, Snakemake runs the harness stages (one VLM, one encoder:
    teacher s) and its onsuccess hook records them in dvc.lock, where DVC calls them up to date:
    the same stages in both runners. lmms-eval's VQAv2 accuracy is the study's own within 0.1
    points (answer for answer), mteb's zero-shot top-1 and R@1/R@5 are `eval clip`'s. The VLM is
    trained a little longer than the smoke study's, so it scores above 0."""
    pytest.importorskip("lmms_eval", reason="lmms-eval not installed: pip install -e '.[harness]'")
    pytest.importorskip("mteb", reason="mteb not installed: pip install -e '.[harness]'")
    smoke = yaml.safe_load(SMOKE.read_text())
    data = {**smoke["data"], "splits": {**smoke["data"]["splits"], "vqa_train": {"size": 160, "style": "plain"}}}
    vqa = {**smoke["vqa"], "lm_pretrain": {"epochs": 3, "batch_size": 32, "lr": 0.003},
           "stage1": {"epochs": 1, "batch_size": 32, "lr": 0.002}, "stage2": {"epochs": 4, "batch_size": 32, "lr": 0.003}}
    root = project_copy(tmp_path / "project", params_with_harnesses(SMOKE, tmp_path / "params.yaml", data=data, vqa=vqa))
    lmms, mieb = "results/harness/lmms/vqa_eval/teachers/s/vlm0", "results/harness/mieb/clip_eval/teachers/s.json"
    run = _run([str(BIN / "snakemake"), "-c2", "--workflow-profile", "workflow/profiles/default", lmms, mieb,
                "results/teacher_eval/s/metrics.json"], root, timeout=900)
    log = run.stdout + run.stderr
    assert "rule harness_lmms_teacher:" in log and "rule harness_mieb_teacher:" in log, log[-3000:]
    stale = _run([str(BIN / "dvc"), "status", "--json", "harness_lmms_teacher@vqa_eval-s-0",
                  "harness_mieb_teacher@clip_eval-s"], root).stdout
    assert json.loads(stale or "{}") == {}, stale

    theirs = json.loads((root / lmms / "results.json").read_text())
    ours = json.loads((root / "results/vqa_metrics/teachers/s/vlm0.json").read_text())
    own_answers = [json.loads(line) for line in (root / "results/vqa/teachers/s/vlm0/answers.jsonl").read_text().splitlines()]
    assert theirs["count"] == ours["count"] == len(own_answers) == 48
    assert {a["question_id"]: a["text"].strip() for a in theirs["answers"]} == {
        a["question_id"]: a["text"].strip() for a in own_answers}
    assert ours["overall"] > 5 and abs(theirs["accuracy"] - ours["overall"]) < 0.1, (theirs["accuracy"], ours["overall"])

    theirs = json.loads((root / mieb).read_text())
    ours = json.loads((root / "results/teacher_eval/s/metrics.json").read_text())
    assert set(theirs["zeroshot"]) == set(ours["zeroshot"]) and ours["zeroshot"]
    for name, v in ours["zeroshot"].items():  # eval clip writes 6 decimals
        assert theirs["zeroshot"][name]["top1"] == pytest.approx(v["top1"], abs=1e-6), name
    for direction in ("image_to_text", "text_to_image"):
        for k in ("R@1", "R@5"):
            assert theirs["retrieval"][direction][k] == pytest.approx(ours["retrieval"][direction][k], abs=1e-6)
    print(f"lmms-eval {json.loads((root / lmms / 'results.json').read_text())['accuracy']:.4f} vs own VQAv2 "
          f"{json.loads((root / 'results/vqa_metrics/teachers/s/vlm0.json').read_text())['overall']:.4f}; mteb",
          theirs["zeroshot"], theirs["retrieval"], "\neval clip", ours["zeroshot"], ours["retrieval"])
