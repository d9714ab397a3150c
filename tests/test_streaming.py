"""Teacher training, CLIP evaluation and the VQA stages read a split bigger than
`runtime.in_memory_max_mb` lazily (images decoded by index, batch by batch). Forced with a
threshold of 0 MiB on small splits, each gives exactly what the in-RAM path gives."""

import json

import pytest
import torch

from clipdistill.data import splits
from clipdistill.data.splits import LazyImages, load_split
from clipdistill.params import EvalParams, TeacherParams, VQAParams
from clipdistill.training.runtime import CPU, Runtime

LAZY = Runtime(in_memory_max_mb=0, loader_workers=0)  # decoded in this process: the spy below sees it
LAZY_WORKERS = Runtime(in_memory_max_mb=0, loader_workers=1)  # decoded ahead by a DataLoader worker


@pytest.fixture
def decodes(monkeypatch):
    """How many images were decoded lazily (in this process) since the fixture started."""
    count = [0]
    decode = splits._decode

    def counting(source, size):
        count[0] += 1
        return decode(source, size)

    monkeypatch.setattr(splits, "_decode", counting)
    return count


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_teacher_training_and_clip_evaluation_read_lazily_with_the_same_results(tmp_path, smoke_data, decodes):
    from clipdistill.evaluate.stage import run as eval_run
    from clipdistill.teachers.stage import run as teacher_run
    from clipdistill.teachers.train import train_teacher

    spec = TeacherParams(arch="cd-teacher-s", epochs=2, batch_size=16)
    assert isinstance(load_split(smoke_data / "pretrain", max_mb=0).images, LazyImages)
    ram = train_teacher(spec, load_split(smoke_data / "pretrain"), show_progress=False)
    worker = train_teacher(spec, load_split(smoke_data / "pretrain", max_mb=0), show_progress=False,
                           runtime=LAZY_WORKERS)
    assert worker[2] == ram[2] and len(ram[2]) == 2 * (40 // 16)  # the loss of every step
    a, b = _state(ram[0]), _state(worker[0])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    # the stages: `runtime.in_memory_max_mb` reaches the loaders (the lazy runs decode, the others do not)
    teachers = {"s": spec}
    teacher_run(teachers, "s", smoke_data, tmp_path / "ram", CPU)
    assert decodes[0] == 0
    teacher_run(teachers, "s", smoke_data, tmp_path / "lazy", LAZY)
    assert decodes[0] == 2 * 32  # two epochs of two 16-image batches
    assert (tmp_path / "ram/model.safetensors").read_bytes() == (tmp_path / "lazy/model.safetensors").read_bytes()

    decodes[0] = 0
    evals = EvalParams(split="clip_eval", batch_size=6)
    metrics = [eval_run(evals, tmp_path / "ram", tmp_path / f"{name}.json", smoke_data, teacher=tmp_path / "lazy",
                        runtime=runtime) for name, runtime in (("ram", CPU), ("lazy", LAZY))]
    assert decodes[0] >= 16  # the 16 evaluation images, read once per pass (embeddings, patch tokens)
    assert metrics[0] == metrics[1] and "cka" in json.dumps(metrics[0]).lower()
    assert (tmp_path / "ram.json").read_bytes() == (tmp_path / "lazy.json").read_bytes()


@pytest.mark.slow  # two tiny VLMs trained, evaluated and scored (~40 s on 2 shared cores)
def test_vqa_reads_train_and_eval_splits_lazily_with_the_same_vlm_and_answers(tmp_path, smoke_data, decodes):
    """`vqa run` (training on an imported VQA-only split, diagnostics, evaluation) and `vqa score`,
    in RAM and lazily: the same VLM weights, answers and metrics, byte for byte."""
    from safetensors.torch import load_file
    from test_llava_import import _data, llava_source

    from clipdistill.data.prepare import prepare
    from clipdistill.models.clip import create_model, save_model_dir
    from clipdistill.vqa.stage import run, score

    prepare(_data(vqa_train=llava_source(tmp_path / "src")), "vqa_train", tmp_path / "train")
    assert isinstance(load_split(tmp_path / "train", max_mb=0).images, LazyImages)
    save_model_dir(tmp_path / "encoder", create_model("cd-student-xs", 0), "cd-student-xs",
                   {"kind": "open_clip", "name": "cd-student-xs"}, {})
    spec = VQAParams.model_validate({
        "lm": {"hidden_size": 32, "intermediate_size": 64, "layers": 1, "heads": 2},
        "stage1": {"epochs": 1, "batch_size": 2}, "stage2": {"epochs": 1, "batch_size": 2},
        "eval_batch_size": 5, "max_new_tokens": 2})  # 5: evaluation batches share and split images
    out = {}
    for name, runtime in (("ram", CPU), ("lazy", LAZY)):
        before = decodes[0]
        summary = run(spec, encoder=str(tmp_path / "encoder"), out=tmp_path / name, metrics=tmp_path / f"{name}.json",
                      train=tmp_path / "train", eval=smoke_data / "vqa_eval", runtime=runtime)
        score(spec, vlm=tmp_path / name, eval=smoke_data / "vqa_eval", out=tmp_path / f"{name}_score",
              metrics=tmp_path / f"{name}_score.json", runtime=runtime)
        out[name] = summary, decodes[0] - before
    assert out["ram"][1] == 0 and out["lazy"][1] > 3 + 16  # train and evaluation images, decoded on demand
    assert out["ram"][0] == out["lazy"][0]
    for rel in ("answers.jsonl", "per_type.csv", "train_log.csv"):
        assert (tmp_path / "ram" / rel).read_bytes() == (tmp_path / "lazy" / rel).read_bytes(), rel
    for rel in ("ram.json", "ram_score.json", "ram_score/per_type.csv"):
        assert (tmp_path / rel).read_bytes() == (tmp_path / rel.replace("ram", "lazy")).read_bytes(), rel
    scored = [[{**json.loads(line), "model_id": None} for line in (tmp_path / f"{name}_score/answers.jsonl").open()]
              for name in ("ram", "lazy")]  # model_id: the VLM's folder
    assert scored[0] == scored[1] and len(scored[0]) == out["ram"][0]["count"]
    weights = [load_file(tmp_path / name / "model" / "model.safetensors") for name in ("ram", "lazy")]
    assert weights[0].keys() == weights[1].keys() and all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


@pytest.mark.slow  # both runners run two stages on the smoke study (~1-2 min on 2 shared cores)
def test_a_webdataset_distillation_split_runs_through_both_runners_alike(tmp_path, smoke_data):
    """The smoke study distilling from webdataset shards outside the project (dvc.yaml
    regenerated): Snakemake imports the shards and trains the teacher-free student on them, its
    hook records the jobs in dvc.lock where DVC calls them up to date; `dvc repro --force` of the
    same two stages writes the same bytes; a changed shard makes both stale in both runners."""
    import shutil

    import yaml
    from test_dag import _run

    from conftest import BIN, SMOKE, project_copy

    shards = tmp_path / "shards"
    shutil.copytree(smoke_data / "distill" / "shards", shards)
    raw = yaml.safe_load(SMOKE.read_text())
    raw["data"]["splits"]["distill"] = {"format": "webdataset", "shards": str(shards), "image_size": 32}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    project = project_copy(tmp_path / "project", tmp_path / "params.yaml")
    _run([str(BIN / "python"), "-m", "clipdistill.stages", "dvc-yaml", "--out", "dvc.yaml"], project)
    student, stages_ = "results/students/distill-x1/none/xs/baseline/0", ["data_prepare_webdataset@distill",
                                                                          "distill_baseline@distill-1-xs-baseline-0"]
    _run([str(BIN / "snakemake"), "-c2", "--workflow-profile", "workflow/profiles/default", student], project,
         timeout=900)
    index = json.loads((project / "results/data/distill/samples.json").read_text())["samples"]
    assert len(index) == 24 and json.loads((project / "results/data/distill/split.json").read_text())["image_root"] \
        == str(shards)

    def outputs():  # but Snakemake's marker of a finished directory output
        return {p.relative_to(project): p.read_bytes() for p in sorted((project / student).rglob("*"))
                if p.is_file() and p.name != ".snakemake_timestamp"}

    made = outputs()
    assert any(p.suffix == ".safetensors" for p in made)
    assert json.loads(_run([str(BIN / "dvc"), "status", "--json", *stages_], project).stdout or "{}") == {}
    _run([str(BIN / "dvc"), "repro", "--force", "--single-item", *stages_], project, timeout=900)
    assert outputs() == made
    first = sorted(shards.glob("*.tar"))[0]
    first.write_bytes(first.read_bytes() + b"\0" * 1024)  # tar padding: the same samples, other bytes
    status = json.loads(_run([str(BIN / "dvc"), "status", "--json", stages_[0]], project).stdout)
    assert {"changed deps": {str(shards): "modified"}} in status[stages_[0]], status
    dry = _run([str(BIN / "snakemake"), "-n", student], project).stdout
    assert "rule data_prepare:" in dry and "rule distill:" in dry and str(first) in dry, dry[-2000:]
