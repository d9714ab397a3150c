"""Imported splits (issue 19): a VQAv2-format set with COCO-style ids, an absolute image root
outside the project and no captions is prepared from params alone, keyed by its own ids, and
evaluated; bad input is one line and leaves nothing half-written; both runners track the
source files."""

import json
import os

import numpy as np
import pytest
import yaml
from PIL import Image

from clipdistill.data.formats import read_vqa
from clipdistill.data.prepare import prepare
from clipdistill.data.splits import load_split, read_split_vqa
from clipdistill.io import DataError, sha256_file
from clipdistill.params import DataParams, ParamsError, load_section
from conftest import REPO, SMOKE, project_copy, run_cli

PATTERN = "COCO_val2014_{image_id:012d}.jpg"
IMAGE_IDS = (500000, 262148, 393225)  # COCO-style: far beyond any row index
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 60), "blue": (40, 60, 220)}


def coco_style_vqa(root, n_questions: int = 4, ids=IMAGE_IDS, pattern=PATTERN) -> dict:
    """Photos-to-be (non-square JPEGs, a coloured square on a gradient) under root/images and VQAv2
    questions + annotations with COCO-style ids (question_id = image_id·1000 + k, 9 digits);
    returns the `data.splits` entry that imports them."""
    images = root / "images"
    images.mkdir(parents=True)
    questions, annotations = [], []
    for (image_id, (name, rgb)), (w, h) in zip(zip(ids, COLOURS.items()), ((96, 72), (80, 100), (90, 90))):
        grad = np.linspace(0, 255, w, dtype=np.uint8)[None, :, None].repeat(h, 0).repeat(3, 2)
        img = Image.fromarray(grad)
        img.paste(Image.new("RGB", (w // 2, h // 2), rgb), (w // 4, h // 4))
        (images / pattern.format(image_id=image_id)).parent.mkdir(parents=True, exist_ok=True)
        img.save(images / pattern.format(image_id=image_id), quality=90)
        for k in range(n_questions):
            qid = image_id * 1000 + k if isinstance(image_id, int) else f"{image_id}/{k}"
            questions.append({"image_id": image_id, "question": f"What color is the square {k}?", "question_id": qid})
            annotations.append({"question_id": qid, "image_id": image_id, "question_type": "what color",
                                "answer_type": "other", "multiple_choice_answer": name,
                                "answers": [{"answer": name, "answer_confidence": "yes", "answer_id": j + 1}
                                            for j in range(10)]})
    (root / "questions.json").write_text(json.dumps({"questions": questions}))
    (root / "annotations.json").write_text(json.dumps({"annotations": annotations}))
    return {"format": "vqav2", "questions": str(root / "questions.json"),
            "annotations": str(root / "annotations.json"), "image_root": str(images),
            "image_pattern": pattern, "image_size": 64}


def data_params(smoke_params, **imported) -> DataParams:
    raw = smoke_params.model_dump(mode="json")
    return DataParams.model_validate({**raw, "splits": {**raw["splits"], **imported}})


@pytest.fixture
def source(tmp_path):
    root = tmp_path / "coco"  # absolute, outside the project
    return root, coco_style_vqa(root)


def test_vqav2_import_keeps_the_sources_ids_and_leaves_images_in_place(smoke_params, source, tmp_path):
    root, entry = source
    manifest = prepare(data_params(smoke_params, vqa_eval=entry), "vqa_eval", tmp_path / "vqa_eval")
    out = tmp_path / "vqa_eval"
    assert sorted(p.name for p in out.iterdir()) == ["annotations.json", "manifest.json", "questions.json", "split.json"]
    assert manifest["kind"] == "imported-split" and manifest["counts"] == {"images": 3, "questions": 12, "skipped": 0}
    assert manifest["params"]["sources"] == {
        k: {"path": entry[k], "sha256": sha256_file(entry[k])} for k in ("questions", "annotations")}
    records = read_split_vqa(out)
    assert [r.question_id for r in records[:2]] == [500000000, 500000001]
    assert {r.image_id for r in records} == set(IMAGE_IDS)
    assert all(r.image.is_relative_to(root / "images") and r.image.is_file() for r in records)
    split = load_split(out)
    assert split.images.shape == (3, 3, 64, 64) and split.captions == []
    # a record's row is its image's, whatever its id: the red square's image is row 0
    rows = split.rows(records)
    assert rows[:4] == [0, 0, 0, 0] and rows[-1] == 2
    red = split.images[0, :, 28:36, 28:36].float().mean((1, 2))
    assert red[0] > 150 and red[1] < 90 and red[2] < 90


def test_a_vqav2_set_with_coco_ids_and_no_captions_evaluates_from_params_alone(smoke_params, source, tmp_path):
    """The done-when of issue 19's first slice: `vqa run` with the eval split imported (before,
    it trained and then died with KeyError: 500000). A real (untrained) tower, so the
    diagnostics' probes look the images up too."""
    from clipdistill.models.clip import create_model, save_model_dir
    from clipdistill.params import VQAParams
    from clipdistill.vqa.stage import run

    _, entry = source
    params = data_params(smoke_params, vqa_eval=entry)
    data = tmp_path / "data"
    for split in ("vqa_train", "vqa_eval"):
        prepare(params, split, data / split)
    encoder = tmp_path / "encoder"
    save_model_dir(encoder, create_model("cd-student-xs", 0), "cd-student-xs",
                   {"kind": "open_clip", "name": "cd-student-xs"}, {})
    spec = VQAParams.model_validate({"lm": {"hidden_size": 32, "intermediate_size": 64, "layers": 1, "heads": 2},
                                     "stage1": {"epochs": 1, "batch_size": 8}, "stage2": {"epochs": 1, "batch_size": 8},
                                     "eval_batch_size": 8, "max_new_tokens": 2})
    summary = run(spec, encoder=str(encoder), out=tmp_path / "vlm", metrics=tmp_path / "metrics.json",
                  train=data / "vqa_train", eval=data / "vqa_eval")
    assert summary["count"] == 12
    answers = [json.loads(line) for line in (tmp_path / "vlm" / "answers.jsonl").read_text().splitlines()]
    assert sorted(a["question_id"] for a in answers) == sorted(i * 1000 + k for i in IMAGE_IDS for k in range(4))
    assert summary["diagnostics"]["probe"]["pooled"]["what color"] is not None


def test_a_vqa_training_split_without_captions_trains(smoke_params, source, tmp_path):
    """vqa_train imported too: no captions, no LLaVA JSON. Each image's questions make its
    conversation; stage 1 aligns on them, and the LM's reading pretraining reads them alone."""
    from clipdistill.models.clip import create_model, save_model_dir
    from clipdistill.params import VQAParams
    from clipdistill.vqa import language
    from clipdistill.vqa.recipe import stage_examples
    from clipdistill.vqa.stage import run

    _, eval_entry = source
    train_entry = coco_style_vqa(tmp_path / "coco_train", n_questions=3, ids=(9, "cat-17", 581929),
                                 pattern="train2014/{image_id}.jpg")  # str ids too, in a subfolder
    params = data_params(smoke_params, vqa_train=train_entry, vqa_eval=eval_entry)
    data = tmp_path / "data"
    for split in ("vqa_train", "vqa_eval"):
        prepare(params, split, data / split)
    captions, qa = stage_examples(data / "vqa_train")
    assert captions == [] and [i for i, _ in qa] == [0, 1, 2] and len(qa[1][1]) == 3
    assert qa[0][1][0] == ("What color is the square 0?\nAnswer the question using a single word or phrase.", "red")
    spec = VQAParams.model_validate({"lm": {"hidden_size": 32, "intermediate_size": 64, "layers": 1, "heads": 2},
                                     "lm_pretrain": {"epochs": 1, "batch_size": 4},
                                     "stage1": {"epochs": 1, "batch_size": 4}, "stage2": {"epochs": 1, "batch_size": 4},
                                     "eval_batch_size": 8, "max_new_tokens": 2})
    language.run(spec, data / "vqa_train", tmp_path / "lm")
    save_model_dir(tmp_path / "encoder", create_model("cd-student-xs", 0), "cd-student-xs",
                   {"kind": "open_clip", "name": "cd-student-xs"}, {})
    summary = run(spec, encoder=str(tmp_path / "encoder"), out=tmp_path / "vlm", metrics=tmp_path / "metrics.json",
                  train=data / "vqa_train", eval=data / "vqa_eval", lm=tmp_path / "lm")
    log = (tmp_path / "vlm" / "train_log.csv").read_text()
    assert summary["count"] == 12 and "vqa stage 1" in log and "vqa stage 2" in log
    assert summary["diagnostics"]["probe"]["pooled"]["what color"]["estimable"]  # train rows found by path


# ---------------------------------------------------------------- bad input: one line, nothing written


def _fails(params, tmp_path, match):
    out = tmp_path / "vqa_eval"
    with pytest.raises(DataError) as info:
        prepare(params, "vqa_eval", out)
    assert "\n" not in str(info.value)
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".vqa_eval")]
    assert match in str(info.value), str(info.value)
    return str(info.value)


def test_a_missing_source_file_is_one_line_naming_it(smoke_params, source, tmp_path):
    _, entry = source
    gone = str(tmp_path / "nowhere" / "annotations.json")
    _fails(data_params(smoke_params, vqa_eval={**entry, "annotations": gone}), tmp_path,
           f"data.splits.vqa_eval.annotations: {gone}: file not found")


def test_an_annotation_without_answers_names_file_and_question_id(smoke_params, source, tmp_path):
    root, entry = source
    anns = json.loads((root / "annotations.json").read_text())
    del anns["annotations"][5]["answers"]
    (root / "annotations.json").write_text(json.dumps(anns))
    _fails(data_params(smoke_params, vqa_eval=entry), tmp_path,
           f"{root / 'annotations.json'}: question_id 262148001: annotation has no 'answers'")
    # on_bad_sample: skip drops it and counts it
    manifest = prepare(data_params(smoke_params, vqa_eval={**entry, "on_bad_sample": "skip"}), "vqa_eval",
                       tmp_path / "skipped")
    assert manifest["counts"] == {"images": 3, "questions": 11, "skipped": 1}
    assert 262148001 not in {r.question_id for r in read_split_vqa(tmp_path / "skipped")}


def test_an_image_outside_the_declared_root_is_refused_symlinks_included(smoke_params, source, tmp_path):
    root, entry = source
    outside = tmp_path / "elsewhere.jpg"
    (root / "images" / PATTERN.format(image_id=500000)).rename(outside)
    (root / "images" / PATTERN.format(image_id=500000)).symlink_to(outside)
    _fails(data_params(smoke_params, vqa_eval=entry), tmp_path, "question_id 500000000: path "
           f"'{PATTERN.format(image_id=500000)}' escapes the data root {root / 'images'}")


def test_a_symlinked_root_and_links_inside_it_are_fine(smoke_params, source, tmp_path):
    root, entry = source
    (tmp_path / "linked").symlink_to(root / "images")
    prepare(data_params(smoke_params, vqa_eval={**entry, "image_root": str(tmp_path / "linked")}), "vqa_eval",
            tmp_path / "vqa_eval")
    assert len(load_split(tmp_path / "vqa_eval").paths) == 3


def test_a_missing_image_or_one_that_does_not_fit_the_pattern_is_one_line(smoke_params, source, tmp_path):
    root, entry = source
    (root / "images" / PATTERN.format(image_id=393225)).unlink()
    _fails(data_params(smoke_params, vqa_eval=entry), tmp_path, "question_id 393225000: image not found")
    qs = json.loads((root / "questions.json").read_text())
    qs["questions"][0]["image_id"] = "abc"
    (root / "questions.json").write_text(json.dumps(qs))
    _fails(data_params(smoke_params, vqa_eval=entry), tmp_path,
           f"question_id 500000000: image_pattern '{PATTERN}' does not fit image_id 'abc'")


def test_a_failed_import_keeps_the_previous_split(smoke_params, source, tmp_path):
    _, entry = source
    params = data_params(smoke_params, vqa_eval=entry)
    prepare(params, "vqa_eval", tmp_path / "vqa_eval")
    before = {p.name: p.read_bytes() for p in (tmp_path / "vqa_eval").iterdir()}
    with pytest.raises(DataError):
        prepare(data_params(smoke_params, vqa_eval={**entry, "questions": str(tmp_path / "no.json")}), "vqa_eval",
                tmp_path / "vqa_eval")
    assert {p.name: p.read_bytes() for p in (tmp_path / "vqa_eval").iterdir()} == before


def test_an_image_pattern_with_an_unknown_field_is_one_line(source, tmp_path):
    _, entry = source
    raw = yaml.safe_load(SMOKE.read_text())
    raw["data"]["splits"]["vqa_eval"] = {**entry, "image_pattern": "COCO_val2014_{id:012d}.jpg"}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ParamsError) as info:
        load_section(tmp_path / "params.yaml", "data")
    assert str(info.value) == (f"{tmp_path / 'params.yaml'}: data.splits.vqa_eval.image_pattern = "
                               "'COCO_val2014_{id:012d}.jpg': unknown field(s) ['id'] in "
                               "'COCO_val2014_{id:012d}.jpg'; known: image_id")
    with pytest.raises(DataError, match="names an unknown field; known: image_id"):  # readers called directly
        read_vqa(entry["questions"], entry["annotations"], entry["image_root"], "{id}.jpg")


def test_the_cli_prepares_from_params_and_fails_in_one_line(source, tmp_path):
    _, entry = source
    raw = yaml.safe_load(SMOKE.read_text())
    raw["data"]["splits"]["vqa_eval"] = entry
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    ok = run_cli("data", "prepare", "--params", tmp_path / "params.yaml", "--split", "vqa_eval",
                 "--out", tmp_path / "out")
    assert ok.returncode == 0 and "wrote 3 images, 12 questions" in ok.stderr + ok.stdout, ok.stderr
    raw["data"]["splits"]["vqa_eval"]["questions"] = str(tmp_path / "missing.json")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    bad = run_cli("data", "synth", "--params", tmp_path / "params.yaml", "--split", "vqa_eval",  # the old name
                  "--out", tmp_path / "out2")
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        f"clipdistill: error: data.splits.vqa_eval.questions: {tmp_path / 'missing.json'}: file not found"]


def test_splits_that_need_captions_cannot_be_imported_vqa_sets(source, tmp_path):
    _, entry = source
    raw = yaml.safe_load(SMOKE.read_text())
    raw["data"]["splits"]["clip_eval"] = entry
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    from clipdistill.params import load_params

    with pytest.raises(ParamsError, match=r"eval.split: split 'clip_eval' is imported \(vqav2\)"):
        load_params(tmp_path / "params.yaml")


# ---------------------------------------------------------------- both runners track the sources


def test_both_runners_track_an_imported_splits_source_files(source, tmp_path):
    """The smoke study with vqa_eval imported: dvc.yaml regenerated for it lists the source
    files as deps of data_prepare_vqav2@vqa_eval, Snakemake's job lists them as inputs, and
    after a run, changing a source file makes the split stale in both runners."""
    from test_dag import _run, assert_same_stages, dvc_stages, snakemake_jobs

    from conftest import BIN

    root, entry = source
    raw = yaml.safe_load(SMOKE.read_text())
    raw["data"]["splits"]["vqa_eval"] = entry
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    project = project_copy(tmp_path / "project", tmp_path / "params.yaml")
    _run([str(BIN / "python"), "-m", "clipdistill.stages", "dvc-yaml", "--out", "dvc.yaml"], project)
    snakemake, dvc = snakemake_jobs(project), dvc_stages(project)
    assert_same_stages(snakemake, dvc)
    sources = {entry["questions"], entry["annotations"]}
    job = next(j for j in snakemake if j[0] == "data_prepare" and "results/data/vqa_eval" in j[3])
    assert sources <= job[2]
    assert sources <= next(s for s in dvc if s[0] == "data_prepare" and "results/data/vqa_eval" in s[3])[2]
    assert not any(sources & s[2] for s in dvc if "results/data/vqa_eval" not in s[3])
    # an imported split reads only its own entry: the synthetic world's keys do not rerun it
    from test_dag import dvc_params

    assert dvc_params(project)["data_prepare_vqav2@vqa_eval"] == ["data.splits.vqa_eval"]

    _run([str(BIN / "dvc"), "repro", "--single-item", "data_prepare_vqav2@vqa_eval"], project)
    _run([str(BIN / "snakemake"), "-c1", "--touch", "results/data/vqa_eval"], project)
    assert json.loads(_run([str(BIN / "dvc"), "status", "--json", "data_prepare_vqav2@vqa_eval"], project).stdout) == {}
    assert "Nothing to be done" in _run([str(BIN / "snakemake"), "-n", "results/data/vqa_eval"], project).stdout
    anns = json.loads((root / "annotations.json").read_text())
    anns["annotations"][0]["multiple_choice_answer"] = "crimson"
    (root / "annotations.json").write_text(json.dumps(anns))
    status = json.loads(_run([str(BIN / "dvc"), "status", "--json", "data_prepare_vqav2@vqa_eval"], project).stdout)
    assert {"changed deps": {entry["annotations"]: "modified"}} in status["data_prepare_vqav2@vqa_eval"], status
    dry = _run([str(BIN / "snakemake"), "-n", "results/data/vqa_eval"], project).stdout
    assert "rule data_prepare:" in dry and "updated input files" in dry.lower(), dry[-2000:]


def test_dvc_refuses_to_import_a_source_its_dvc_yaml_does_not_list(smoke_params, source, tmp_path, monkeypatch):
    """dvc.yaml names imported sources literally: run from a stale one, the stage says so."""
    _, entry = source
    (tmp_path / "dvc.yaml").write_text((REPO / "dvc.yaml").read_text())
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    _fails(data_params(smoke_params, vqa_eval=entry), tmp_path,
           f"dvc.yaml does not track {entry['questions']} (a source of split vqa_eval); regenerate it")
    assert os.environ["DVC_ROOT"] == str(tmp_path)


# ---------------------------------------------------------------- image–text splits: open_clip CSV, COCO captions


def photo_folder(root, ids=IMAGE_IDS, pattern=PATTERN):
    """Non-square JPEGs named by `pattern` (COCO's by default) under root (absolute, outside the project)."""
    coco_style_vqa(root, n_questions=1, ids=ids, pattern=pattern)
    return root / "images"


def test_csv_and_coco_caption_splits_import_with_their_images_in_place(smoke_params, tmp_path):
    images = photo_folder(tmp_path / "photos")
    names = [PATTERN.format(image_id=i) for i in IMAGE_IDS]
    csv = tmp_path / "pairs.tsv"  # one absolute path inside the root, the others relative
    csv.write_text("filepath\ttitle\n" + f"{images / names[0]}\ta red square\n"
                   + "".join(f"{n}\ta square number {k}\n" for k, n in enumerate(names[1:])))
    coco = tmp_path / "captions_val2014.json"
    coco.write_text(json.dumps({"images": [{"id": i, "file_name": n} for i, n in zip(IMAGE_IDS, names)],
                                "annotations": [{"image_id": i, "id": k, "caption": f"caption {k} of {i}"}
                                                for k, i in enumerate(IMAGE_IDS * 2)]}))
    params = data_params(smoke_params,
                         distill={"format": "csv", "path": str(csv), "image_root": str(images), "image_size": 32},
                         pretrain={"format": "coco_captions", "captions": str(coco), "image_root": str(images),
                                   "image_size": 48})
    m = prepare(params, "distill", tmp_path / "distill")
    assert m["counts"] == {"images": 3, "pairs": 3, "skipped": 0}
    assert m["params"]["sources"] == {"path": {"path": str(csv), "sha256": sha256_file(csv)}}
    assert sorted(p.name for p in (tmp_path / "distill").iterdir()) == ["manifest.json", "pairs.csv", "split.json"]
    split = load_split(tmp_path / "distill")
    assert split.images.shape == (3, 3, 32, 32) and split.captions[0] == "a red square"
    assert split.paths == [(images / n).resolve() for n in names]
    assert prepare(params, "pretrain", tmp_path / "pretrain")["counts"] == {"images": 3, "pairs": 6, "skipped": 0}
    assert load_split(tmp_path / "pretrain").images.shape == (6, 3, 48, 48)

    csv.write_text(csv.read_text() + "../../elsewhere.jpg\tout of bounds\n")
    with pytest.raises(DataError) as info:
        prepare(params, "distill", tmp_path / "distill")
    assert str(info.value) == f"{csv}:5: path '../../elsewhere.jpg' escapes the data root {images}"
    skipping = data_params(smoke_params, distill={"format": "csv", "path": str(csv), "image_root": str(images),
                                                  "on_bad_sample": "skip"})
    assert prepare(skipping, "distill", tmp_path / "distill")["counts"]["skipped"] == 1


def test_a_vqa_split_cannot_be_an_image_text_import(tmp_path):
    raw = yaml.safe_load(SMOKE.read_text())
    raw["data"]["splits"]["vqa_eval"] = {"format": "csv", "path": "/x.tsv", "image_root": "/"}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    from clipdistill.params import load_params

    with pytest.raises(ParamsError, match="vqa.eval_splits: split 'vqa_eval' is imported from csv; a VQA split is synthetic or one of vqav2, gqa"):
        load_params(tmp_path / "params.yaml")


def test_dvc_yaml_groups_imported_splits_by_format_with_their_files_as_deps():
    from clipdistill import stages

    raw = yaml.safe_load(SMOKE.read_text())
    raw["data"]["splits"]["distill"] = {"format": "csv", "path": "/data/cc3m/train.tsv", "image_root": "/data/cc3m"}
    raw["data"]["splits"]["vqa_eval"] = {"format": "vqav2", "questions": "/q.json", "annotations": "/a.json",
                                         "image_root": "/coco", "image_pattern": PATTERN}
    dvc = stages.dvc_stages(params=raw)
    assert dvc["data_prepare"]["foreach"] == ["pretrain", "distill_shifted", "vqa_train", "clip_eval"]
    assert dvc["data_prepare_csv"]["foreach"] == {"distill": {"path": "/data/cc3m/train.tsv"}}
    assert dvc["data_prepare_csv"]["do"]["deps"][-1] == "${item.path}"
    assert dvc["data_prepare_csv"]["do"]["params"] == ["data.splits.${key}"]
    assert dvc["data_prepare_vqav2"]["do"]["deps"][-2:] == ["${item.questions}", "${item.annotations}"]
    assert stages.dvc_stage_of("data_prepare_csv@distill") == "data_prepare"
    assert "data_prepare_csv" not in stages.dvc_stages(params=yaml.safe_load(SMOKE.read_text()))


@pytest.mark.slow
def test_snakemake_evaluates_an_imported_vqav2_set_and_dvc_agrees(tmp_path):
    """Params alone (and dvc.yaml regenerated): the smoke study's blind VLM trained on the
    synthetic vqa_train and evaluated on a VQAv2 set with COCO ids outside the project, through
    Snakemake; its hook records the jobs in dvc.lock, where DVC calls them up to date."""
    from test_dag import _run

    from conftest import BIN

    entry = coco_style_vqa(tmp_path / "coco", n_questions=10)
    raw = yaml.safe_load(SMOKE.read_text())
    raw["data"]["splits"]["vqa_eval"] = {**entry, "image_size": 64}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    project = project_copy(tmp_path / "project", tmp_path / "params.yaml")
    _run([str(BIN / "python"), "-m", "clipdistill.stages", "dvc-yaml", "--out", "dvc.yaml"], project)
    _run([str(BIN / "snakemake"), "-c2", "--workflow-profile", "workflow/profiles/default",
          "results/vqa_metrics/blind/vlm0.json", "results/preview/scenes.png"], project, timeout=900)
    metrics = json.loads((project / "results/vqa_metrics/blind/vlm0.json").read_text())
    answers = [json.loads(line) for line in (project / "results/vqa/blind/vlm0/answers.jsonl").read_text().splitlines()]
    assert metrics["count"] == 30 and {a["question_id"] // 1000 for a in answers} == set(IMAGE_IDS)
    status = _run([str(BIN / "dvc"), "status", "--json", "data_prepare_vqav2@vqa_eval", "vqa_blind@0"], project).stdout
    assert json.loads(status or "{}") == {}, status


def test_the_lmms_task_keeps_imported_ids_ints_or_strings(smoke_params, tmp_path):
    """lmms-eval's dataset of an imported split: COCO's int ids stay int64, string ids strings,
    images read from the declared root."""
    pytest.importorskip("datasets", reason="datasets not installed: pip install -e '.[harness]'")
    import datasets

    from clipdistill.harness.lmms import build_task

    for name, ids, dtype in (("coco", IMAGE_IDS, "int64"), ("named", ("a", "b", 7), "string")):
        entry = coco_style_vqa(tmp_path / name, n_questions=2, ids=ids, pattern="{image_id}.jpg")
        prepare(data_params(smoke_params, vqa_eval=entry), "vqa_eval", tmp_path / name / "split")
        task = build_task(tmp_path / name / "split", tmp_path / name / "task", 4)
        ds = datasets.load_from_disk(str(task / "data"))["validation"]
        assert ds.features["question_id"].dtype == dtype and len(ds) == 6
        assert ds[0]["image"].size == (96, 72)
        if dtype == "int64":
            assert ds[0]["question_id"] == 500000000


def test_a_gqa_set_imports_as_a_vqa_split_with_its_string_ids(smoke_params, tmp_path):
    ids = ("n161313", "n235859", "n100552")
    images = photo_folder(tmp_path / "gqa", ids=ids, pattern="{image_id}.jpg")
    qs = {f"2013072{k}": {"imageId": image_id, "question": "Which color is the square?", "answer": colour,
                          "types": {"semantic": "attr", "structural": "query"}}
          for k, (image_id, colour) in enumerate(zip(ids, COLOURS))}
    (tmp_path / "gqa.json").write_text(json.dumps(qs))
    entry = {"format": "gqa", "questions": str(tmp_path / "gqa.json"), "image_root": str(images),
             "image_pattern": "{image_id}.jpg", "image_size": 32}
    m = prepare(data_params(smoke_params, vqa_eval=entry), "vqa_eval", tmp_path / "vqa_eval")
    assert m["counts"] == {"images": 3, "questions": 3, "skipped": 0}
    records = read_split_vqa(tmp_path / "vqa_eval")
    assert [r.question_id for r in records] == ["20130720", "20130721", "20130722"]
    assert records[0].answers == ("red",) * 10 and records[0].question_type == "attr"
    assert load_split(tmp_path / "vqa_eval").rows(records) == [0, 1, 2]
    del qs["20130721"]["answer"]
    (tmp_path / "gqa.json").write_text(json.dumps(qs))
    with pytest.raises(DataError, match=r"gqa.json: 20130721: missing key 'answer'"):
        prepare(data_params(smoke_params, vqa_eval=entry), "vqa_eval", tmp_path / "again")
    assert not (tmp_path / "again").exists()
