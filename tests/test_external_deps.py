"""Files outside results/ that params point at — an external teacher's checkpoint or local-dir:
folder, a local language model (vqa.lm.path) — are dependencies in both runners: listed by the
stage table, Snakemake and the generated dvc.yaml, and editing one makes its stage stale."""

import json
import os
import re

import pytest
import yaml

from clipdistill import stages
from conftest import BIN, SMOKE, project_copy, run_cli


def _study(tmp_path):
    """The smoke study plus a checkpoint-file teacher, a local-dir teacher and a local LM (the
    files need not load: nothing here runs them)."""
    w = tmp_path / "weights"
    (w / "dir").mkdir(parents=True)
    (w / "lm").mkdir()
    (w / "ext.safetensors").write_bytes(b"weights v1")
    (w / "dir" / "open_clip_config.json").write_text("{}")
    (w / "dir" / "open_clip_model.safetensors").write_bytes(b"dir weights v1")
    (w / "lm" / "config.json").write_text("{}")
    raw = yaml.safe_load(SMOKE.read_text())
    raw["teachers"]["ext"] = {"source": "external", "arch": "ViT-S-32-alt", "pretrained": str(w / "ext.safetensors")}
    raw["teachers"]["dir"] = {"source": "external", "arch": f"local-dir:{w / 'dir'}"}
    raw["vqa"]["lm"]["path"] = str(w / "lm")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return raw, w


def test_the_stage_table_lists_external_weights_and_the_local_lm(tmp_path):
    raw, w = _study(tmp_path)
    teacher_train = stages.BY_NAME["teacher_train"]

    def inputs(stage, **wildcards):
        return [p for p in stages.snakemake_inputs(stage, raw, wildcards) if not p.startswith("src/")]

    assert inputs(teacher_train, teacher="ext") == ["results/data/pretrain", str(w / "ext.safetensors")]
    assert inputs(teacher_train, teacher="dir") == ["results/data/pretrain", str(w / "dir/open_clip_config.json"),
                                                    str(w / "dir/open_clip_model.safetensors")]
    assert inputs(teacher_train, teacher="s") == ["results/data/pretrain"]
    assert inputs(stages.BY_NAME["vqa_lm"]) == ["results/data/vqa_train", str(w / "lm/config.json")]
    dvc = stages.dvc_stages(params=raw)
    assert dvc["teacher_train"]["foreach"] == ["s", "m"] and "${item.path}" not in dvc["teacher_train"]["do"]["deps"]
    assert dvc["teacher_train"]["do"]["params"] == ["teachers.${item}", "runtime"]
    assert dvc["teacher_train_external"]["foreach"] == {"ext": {"path": str(w / "ext.safetensors")},
                                                        "dir": {"path": str(w / "dir")}}
    assert dvc["teacher_train_external"]["do"]["deps"][-1] == "${item.path}"
    assert dvc["vqa_lm"]["deps"][-1] == str(w / "lm")
    assert stages.dvc_stage_of("teacher_train_external@ext") == "teacher_train"
    # the default study reads no external file: its dvc.yaml keeps one teacher_train group
    default = stages.dvc_stages(params=yaml.safe_load(SMOKE.read_text()))
    assert "teacher_train_external" not in default and default["teacher_train"]["foreach"] == "${teachers}"


@pytest.mark.slow
def test_both_runners_rerun_a_stage_whose_external_file_changed(tmp_path):
    """A project with the study's dvc.yaml regenerated: both runners list the same deps; once the
    teacher and LM outputs are recorded, editing the checkpoint, a file of the local-dir folder
    or the LM makes exactly that stage stale in `dvc status` and in `snakemake -n`."""
    from test_dag import _run, assert_same_stages, dvc_stages, snakemake_jobs

    raw, w = _study(tmp_path)
    project = project_copy(tmp_path / "project", tmp_path / "params.yaml")
    _run([str(BIN / "python"), "-m", "clipdistill.stages", "dvc-yaml", "--out", "dvc.yaml"], project)
    assert_same_stages(snakemake_jobs(project), dvc_stages(project))

    for out in ("results/data/pretrain", "results/data/vqa_train", "results/teachers/ext", "results/teachers/dir",
                "results/vqa/lm"):  # stand-ins for the outputs: only their records matter here
        (project / out).mkdir(parents=True)
        (project / out / "x").write_text(out)
    names = ["teacher_train_external@ext", "teacher_train_external@dir", "vqa_lm"]
    dvc = str(BIN / "dvc")
    _run([dvc, "commit", "-f", *names], project)
    targets = ["results/teachers/ext", "results/teachers/dir", "results/vqa/lm"]
    _run([str(BIN / "snakemake"), "-c1", "--touch", *targets], project)

    def dvc_stale():
        status = json.loads(_run([dvc, "status", "--json", *names], project).stdout)
        return {name: [c for c in changes if "changed deps" in c] for name, changes in status.items()}

    assert dvc_stale() == {}
    assert "Nothing to be done" in _run([str(BIN / "snakemake"), "-n", *targets], project).stdout

    edits = [(w / "ext.safetensors", "teacher_train_external@ext", str(w / "ext.safetensors"), "results/teachers/ext"),
             (w / "dir" / "open_clip_model.safetensors", "teacher_train_external@dir", str(w / "dir"),
              "results/teachers/dir"),
             (w / "lm" / "config.json", "vqa_lm", str(w / "lm"), "results/vqa/lm")]
    for k, (path, name, dep, out) in enumerate(edits):
        path.write_bytes(path.read_bytes() + b" edited")
        later = os.stat(project / out).st_mtime + 10 + k
        os.utime(path, (later, later))
        stale = dvc_stale()
        assert stale.keys() == {n for _, n, _, _ in edits[:k + 1]}, stale
        assert stale[name] == [{"changed deps": {dep: "modified"}}], stale
        dry = _run([str(BIN / "snakemake"), "-n", out], project).stdout
        assert "updated input files" in dry.lower() and str(path) in dry, dry[-2000:]


def test_under_dvc_an_untracked_external_file_is_refused_in_one_line(tmp_path, monkeypatch):
    """`dvc repro` from a dvc.yaml generated before the teacher or LM was named: one line, exit 2,
    nothing written (DVC would otherwise never notice the file change)."""
    raw, w = _study(tmp_path)
    project = project_copy(tmp_path / "project", tmp_path / "params.yaml")  # the committed dvc.yaml: no externals
    env = {"DVC_ROOT": str(project)}
    proc = run_cli("teacher", "train", "--params", project / "params.yaml", "--name", "ext", "--data",
                   project / "results/data", "--out", tmp_path / "t", env=env)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert f"dvc.yaml does not track {w / 'ext.safetensors'} (the weights of teacher ext)" in proc.stderr
    assert not (tmp_path / "t").exists()
    from clipdistill.io import DataError
    from clipdistill.params import load_section
    from clipdistill.vqa.language import prepare_language

    monkeypatch.setenv("DVC_ROOT", str(project))
    with pytest.raises(DataError, match=re.escape(f"dvc.yaml does not track {w / 'lm'} (vqa.lm.path)")):
        prepare_language(load_section(project / "params.yaml", "vqa"), project / "results/data/vqa_train")
