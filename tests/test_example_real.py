"""The worked example (configs/example-real.yaml, README "Your own data"): real photos, COCO
captions, an open_clip CSV, VQAv2 sets with COCO ids, an absolute image root outside the project
and an external open_clip ViT-S-32-alt from a local file, through Snakemake and through `dvc repro`."""

import json
import re
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO
from studies import EXAMPLE, PLACEHOLDER, example_params

sys.path.insert(0, str(Path(__file__).parent / "helpers"))
import real_example  # noqa: E402

@pytest.fixture(scope="module")
def example_data(tmp_path_factory):
    return real_example.build(tmp_path_factory.mktemp("example-data"))


def test_the_example_data_is_real_format_and_the_config_validates(example_data, tmp_path):
    from clipdistill.data.formats import read_coco_captions, read_pairs_csv, read_vqa
    from clipdistill.params import VQAv2SplitParams, load_params

    params = load_params(example_params(example_data, tmp_path / "params.yaml"))
    assert PLACEHOLDER in EXAMPLE.read_text() and PLACEHOLDER not in (tmp_path / "params.yaml").read_text()
    for name in ("vqa_train", "vqa_eval"):
        split = params.data.splits[name]
        assert isinstance(split, VQAv2SplitParams) and Path(split.image_root).is_absolute()
        assert not Path(split.image_root).is_relative_to(REPO)
        records, _ = read_vqa(split.questions, split.annotations, split.image_root, split.image_pattern)
        per_image = {}
        for r in records:
            per_image.setdefault(r.image_id, []).append(r)
            assert r.question_id // 1000 == r.image_id and len(r.answers) == 10  # VQAv2's ids, ten annotators
            assert r.image.name == f"COCO_val2014_{r.image_id:012d}.jpg"
        assert per_image and all(len(qs) >= 10 for qs in per_image.values())
    assert set(params.vqa.eval_splits).isdisjoint({params.vqa.train_split})
    pairs, _ = read_coco_captions(example_data / "captions.json", example_data / "images")
    assert len(pairs) == 2 * len(real_example.PHOTOS)
    assert len(read_pairs_csv(example_data / "pairs.tsv", root=example_data / "images")[0]) == len(pairs)
    teacher = params.teachers["vits32"]
    assert teacher.arch == "ViT-S-32-alt" and Path(teacher.pretrained).is_file()


def _outs(lock: dict) -> dict[str, str]:
    return {o["path"]: o.get("md5") for stage in lock["stages"].values() for o in stage.get("outs", [])}


@pytest.mark.slow
def test_the_worked_example_runs_through_snakemake_and_dvc(worked_example):
    """data -> teacher -> features -> distill -> vqa -> report, once per runner, each in its own
    copy of the project, side by side (one core each). Both end with nothing to do and record the
    same bytes for every output (Snakemake's through `clipdistill sync`), and the VQA answers keep
    VQAv2's COCO question ids. (The runs: conftest's worked_example, built in the background.)"""
    example_data, roots, logs = (worked_example[k] for k in ("data", "roots", "logs"))
    for k, returncode in worked_example["returncodes"].items():
        assert returncode == 0, f"{k} failed:\n{logs[k][-4000:]}"
    assert "Running stage 'report'" in logs["dvc"]
    for k in roots:
        assert worked_example["stale"][k] == set() and worked_example["nothing_to_do"][k], k
    locks = {k: yaml.safe_load((r / "dvc.lock").read_text()) for k, r in roots.items()}
    assert _outs(locks["snakemake"]) == _outs(locks["dvc"])  # the same bytes, whichever runner

    root = roots["dvc"]
    teacher = json.loads((root / "results/teachers/vits32/manifest.json").read_text())
    assert teacher["model_name"] == "ViT-S-32-alt" and teacher["source"] == "external"
    questions = json.loads((example_data / "vqa_eval_questions.json").read_text())["questions"]
    for vlm in ("teachers/vits32", "students/distill-x1/vits32/xs/clipkd/0", "students/distill-x1/none/xs/baseline/0",
                "blind"):
        answers = [json.loads(line) for line in (root / f"results/vqa/{vlm}/vlm0/answers.jsonl").open()]
        assert sorted(a["question_id"] for a in answers) == sorted(q["question_id"] for q in questions), vlm
        metrics = json.loads((root / f"results/vqa_metrics/{vlm}/vlm0.json").read_text())
        assert 0 <= metrics["overall"] <= 100
    study = (root / "results/report/study.md").read_text()
    assert re.search(r"vits32", study)
