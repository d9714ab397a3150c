"""The console script: every stage listed, one-line errors, exit codes, nothing half-written."""

import subprocess

import yaml

from conftest import BIN, SMOKE, run_cli

STAGES = {"data": ["synth", "preview"], "teacher": ["train"], "features": ["extract"],
          "eval": ["clip", "lmms", "mieb"],
          "export": ["hf"], "vqa": ["lm", "run"], "params": ["check", "schema"]}
COMMANDS = ["distill", "report", "push", "pull", "sync"]


def test_help_lists_every_stage_subcommand():
    top = run_cli("--help", check=True).stdout
    assert all(c in top for c in COMMANDS)
    for group, commands in STAGES.items():
        assert group in top
        sub = run_cli(group, "--help", check=True).stdout
        assert all(c in sub for c in commands), (group, sub)


def test_reading_params_does_not_load_open_clip():
    """Issue 23: `params check`, one-line params errors and every Snakemake parse only read
    params (the distill validators import the loss registry); open_clip + timm would add seconds
    of CPU to each of them, and the tests run dozens."""
    code = ("import sys; from clipdistill import stages; from clipdistill.params import load_params; "
            f"load_params({str(SMOKE)!r}); print(sorted(m for m in ('open_clip', 'timm') if m in sys.modules))")
    proc = subprocess.run([str(BIN / "python"), "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]", proc.stdout


def test_synth_and_preview_end_to_end(tmp_path):
    out = tmp_path / "data"
    for split in ("vqa_eval", "distill_shifted"):
        proc = run_cli("--log", tmp_path / "logs" / f"{split}.log", "data", "synth", "--params", SMOKE,
                       "--split", split, "--out", out / split, check=True)
    assert "wrote 24 images" in proc.stderr
    assert "wrote 24 images" in (tmp_path / "logs" / "distill_shifted.log").read_text()
    run_cli("data", "preview", "--data", out, "--split", "vqa_eval", "--split", "distill_shifted",
            "--n", "3", "--out", tmp_path / "p.png", check=True)
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _bad_params(tmp_path, **changes):
    raw = yaml.safe_load(SMOKE.read_text())
    raw["data"].update(changes)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_bad_params_exit_2_with_one_line_and_no_output(tmp_path):
    bad = _bad_params(tmp_path, splits={**yaml.safe_load(SMOKE.read_text())["data"]["splits"],
                                        "distill": {"size": 4, "style": "watercolour"}})
    proc = run_cli("data", "synth", "--params", bad, "--split", "distill", "--out", tmp_path / "data")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "data.splits.distill.style = 'watercolour'" in lines[0]
    assert not (tmp_path / "data").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]


def test_params_check_and_schema(tmp_path):
    assert run_cli("params", "check", "--params", SMOKE).returncode == 0
    bad = _bad_params(tmp_path, max_objects=-1)
    proc = run_cli("params", "check", "--params", bad)
    assert proc.returncode == 2 and "data.max_objects = -1" in proc.stderr
    assert '"DataParams"' in run_cli("params", "schema", check=True).stdout


def test_preview_of_missing_split_is_one_line(tmp_path, smoke_data):
    proc = run_cli("data", "preview", "--data", smoke_data, "--split", "nope", "--out", tmp_path / "p.png")
    assert proc.returncode == 2 and "no such split" in proc.stderr and len(proc.stderr.splitlines()) == 1
    assert not (tmp_path / "p.png").exists()


def test_distill_without_teacher_refuses_kd_methods_in_one_line(tmp_path, smoke_data):
    proc = run_cli("distill", "--params", SMOKE, "--student", "xs", "--method", "clipkd", "--seed", "0",
                   "--data", smoke_data / "distill", "--out", tmp_path / "student")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "method 'clipkd' needs teacher targets" in proc.stderr
    assert not (tmp_path / "student").exists()


def test_preview_shows_the_splits_params_name_in_both_runners(tmp_path, smoke_data):
    """A study without `vqa_eval` or `distill_shifted`: the preview stage reads its first VQA
    evaluation set and its first distillation split, in the stage table, in dvc.yaml as DVC resolves
    it, and the rendered command (and the CLI's default, from --params) draws them."""
    import shutil

    from test_dag import dvc_stages

    from clipdistill import stages
    from conftest import project_copy

    raw = yaml.safe_load(SMOKE.read_text())
    splits = raw["data"]["splits"]
    splits["vqa_test"] = splits.pop("vqa_eval")
    del splits["distill_shifted"]
    raw["vqa"]["eval_splits"] = ["vqa_test"]
    raw["distill"]["grid"]["data"] = ["distill"]
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw, sort_keys=False))
    stage = stages.BY_NAME["data_preview"]
    wanted = {"results/data/vqa_test", "results/data/distill"}
    assert wanted == {p for p in stages.snakemake_inputs(stage, raw, {}) if p.startswith("results/")}
    project = project_copy(tmp_path / "project", params)
    dvc = next(s for s in dvc_stages(project) if s[0] == "data_preview")
    assert wanted == {d for d in dvc[2] if d.startswith("results/")} and "--split vqa_test --split distill" in dvc[1]

    data = tmp_path / "results" / "data"
    shutil.copytree(smoke_data / "vqa_eval", data / "vqa_test")
    shutil.copytree(smoke_data / "distill", data / "distill")
    cmd = stages.snakemake_command(stage, raw, {}).split()
    proc = subprocess.run([str(BIN / cmd[0]), *cmd[1:]], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "results/preview/scenes.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    run_cli("data", "preview", "--data", data, "--params", params, "--n", "2", "--out", tmp_path / "p.png", check=True)
    assert (tmp_path / "p.png").is_file()
    proc = run_cli("data", "preview", "--data", data, "--params", SMOKE, "--out", tmp_path / "q.png")
    assert proc.returncode == 2 and "vqa_eval: no such split" in proc.stderr and not (tmp_path / "q.png").exists()


def test_preview_draws_a_webdataset_split_from_its_shards(tmp_path, smoke_data, smoke_params, monkeypatch):
    """The preview's distillation row may be a webdataset split: its images come from the shards."""
    from clipdistill.data import preview as P
    from clipdistill.data.prepare import prepare
    from clipdistill.params import DataParams

    entry = {"format": "webdataset", "shards": str(smoke_data / "distill" / "shards"), "image_size": 32}
    raw = smoke_params.model_dump(mode="json")
    params = DataParams.model_validate({**raw, "splits": {**raw["splits"], "distill": entry}})
    prepare(params, "distill", tmp_path / "data" / "distill")
    read, drawn = P.read_shard_image, []
    monkeypatch.setattr(P, "read_shard_image", lambda *a: drawn.append(a[1:]) or read(*a))
    P.preview(tmp_path / "data", ["distill"], 3, tmp_path / "p.png")
    assert len(drawn) == 3 and len(set(drawn)) == 3  # three different samples (byte ranges)
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
