"""LLaVA conversation JSON as an imported split (`format: llava`): each human→gpt pair becomes a
question of the VQA layout, the conversations train the VLM verbatim, one-exchange
conversations can be stage-1 captions (`captions: single_turn`); bad input is one line naming
the file and the id, and nothing is written."""

import json

import numpy as np
import pytest
import yaml
from PIL import Image

from clipdistill.data.prepare import prepare
from clipdistill.data.splits import load_split, read_split_vqa
from clipdistill.io import DataError, read_json
from clipdistill.params import DataParams, ParamsError, load_params
from conftest import SMOKE, run_cli

CONVERSATIONS = [
    {"id": "a1", "image": "img/red.png", "conversations": [
        {"from": "human", "value": "<image>\nWhat colour is the square?"}, {"from": "gpt", "value": "red"},
        {"from": "human", "value": "Is it round?"}, {"from": "gpt", "value": "no"}]},
    {"id": "a2", "image": "img/blue.png", "conversations": [
        {"from": "human", "value": "What colour is it?\n<image>"}, {"from": "gpt", "value": "blue"}]},
    {"id": "d1", "image": "img/red.png", "conversations": [
        {"from": "human", "value": "<image>\nDescribe the image briefly."},
        {"from": "gpt", "value": "a red square on black velvet"}]},
    {"id": 7, "image": "img/green.png", "conversations": [
        {"from": "human", "value": "<image>\nWhat colour?"}, {"from": "gpt", "value": "green"},
        {"from": "human", "value": "How many squares?"}, {"from": "gpt", "value": "one"}]},
]


def llava_source(root, conversations=CONVERSATIONS):
    """Three 40 px photos-to-be under root/img and the conversations as root/llava.json."""
    (root / "img").mkdir(parents=True, exist_ok=True)
    for name, colour in (("red", (200, 30, 30)), ("blue", (30, 30, 200)), ("green", (30, 200, 30))):
        pixels = np.zeros((40, 48, 3), np.uint8)
        pixels[8:32, 10:34] = colour
        Image.fromarray(pixels).save(root / "img" / f"{name}.png")
    (root / "llava.json").write_text(json.dumps(conversations))
    return {"format": "llava", "path": str(root / "llava.json"), "image_root": str(root), "image_size": 32}


def _data(**splits) -> DataParams:
    raw = yaml.safe_load(SMOKE.read_text())["data"]
    return DataParams.model_validate({**raw, "splits": {**raw["splits"], **splits}})


def test_each_exchange_is_a_question_and_the_conversations_train_verbatim(tmp_path):
    from clipdistill.vqa.recipe import stage_examples

    entry = {**llava_source(tmp_path / "src"), "captions": "single_turn"}
    manifest = prepare(_data(vqa_train=entry), "vqa_train", tmp_path / "split")
    assert manifest["counts"] == {"images": 3, "conversations": 4, "questions": 6, "captions": 2, "skipped": 0}
    records = read_split_vqa(tmp_path / "split", check_images=True)
    assert [r.question_id for r in records] == ["a1#0", "a1#1", "a2#0", "d1#0", "7#0", "7#1"]
    assert [(r.question, r.answer) for r in records[:2]] == [("What colour is the square?", "red"), ("Is it round?", "no")]
    assert records[2].question == "What colour is it?" and records[3].answer == "a red square on black velvet"
    assert {r.question_type for r in records} == {"conversation"} and records[0].answers == ("red",) * 10
    assert records[0].image_id == "img/red.png" and records[0].image == (tmp_path / "src/img/red.png").resolve()
    assert read_json(tmp_path / "split/llava.json")[3] == {**CONVERSATIONS[3], "image": "img/green.png"}

    split = load_split(tmp_path / "split")  # the images the questions name, in order of first mention
    assert split.paths == [(tmp_path / "src/img" / f"{c}.png").resolve() for c in ("red", "blue", "green")]
    assert split.images.shape == (3, 3, 32, 32) and split.images[0, 0, 16, 16] == 200
    captions, qa = stage_examples(tmp_path / "split")
    assert qa == [(0, [("What colour is the square?", "red"), ("Is it round?", "no")]),
                  (1, [("What colour is it?", "blue")]), (0, [("Describe the image briefly.", "a red square on black velvet")]),
                  (2, [("What colour?", "green"), ("How many squares?", "one")])]
    assert captions == [(1, [("", "blue")]), (0, [("", "a red square on black velvet")])]
    prepare(_data(vqa_train=llava_source(tmp_path / "src")), "vqa_train", tmp_path / "plain")  # captions: none
    assert stage_examples(tmp_path / "plain") == ([], qa)


@pytest.mark.parametrize("case, message", [
    ("missing image", r"llava.json: \[1\] id 'a2': image not found: .*img/nope.png"),
    ("escape", r"llava.json: \[1\] id 'a2': path '../outside.png' escapes the data root"),
    ("no token", r"llava.json: \[1\] id 'a2': first human turn lacks the <image> token"),
    ("text only", r"llava.json: \[1\] id 'a2': missing key 'image' \(a text-only conversation"),
    ("no id", r"llava.json: \[1\]: missing key 'id'"),
    ("two humans", r"llava.json: \[1\] id 'a2': conversations must be pairs of turns"),
    ("duplicate id", r"llava.json: id 'a1' appears 2 times"),
])
def test_a_bad_conversation_is_one_line_naming_file_and_id_and_nothing_is_written(tmp_path, case, message):
    bad = json.loads(json.dumps(CONVERSATIONS))
    conv = bad[1]
    if case == "missing image":
        conv["image"] = "img/nope.png"
    elif case == "escape":
        conv["image"] = "../outside.png"
    elif case == "no token":
        conv["conversations"][0]["value"] = "What colour is it?"
    elif case == "text only":
        del conv["image"]
    elif case == "no id":
        del conv["id"]
    elif case == "two humans":
        conv["conversations"][1]["from"] = "human"
    else:
        conv["id"] = "a1"
    entry = llava_source(tmp_path / "src", bad)
    (tmp_path / "split").mkdir()
    (tmp_path / "split" / "previous").write_text("kept")
    with pytest.raises(DataError, match=message) as err:
        prepare(_data(vqa_train=entry), "vqa_train", tmp_path / "split")
    assert "\n" not in str(err.value)
    assert [p.name for p in (tmp_path / "split").iterdir()] == ["previous"]  # the old split, untouched
    if case != "duplicate id":  # skip: dropped and counted
        manifest = prepare(_data(vqa_train={**entry, "on_bad_sample": "skip"}), "vqa_train", tmp_path / "split")
        assert manifest["counts"]["skipped"] == 1 and manifest["counts"]["conversations"] == 3


def test_cli_refuses_a_bad_import_with_exit_2_and_params_refuse_llava_as_an_evaluation_set(tmp_path):
    entry = llava_source(tmp_path / "src", [{**CONVERSATIONS[0], "image": "img/nope.png"}])
    raw = yaml.safe_load(SMOKE.read_text())
    raw["data"]["splits"]["vqa_train"] = entry
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    proc = run_cli("data", "prepare", "--params", tmp_path / "params.yaml", "--split", "vqa_train",
                   "--out", tmp_path / "out")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "llava.json: [0] id 'a1': image not found" in proc.stderr and not (tmp_path / "out").exists()
    raw["data"]["splits"]["vqa_eval"] = entry
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ParamsError, match=r"vqa.eval_splits: split 'vqa_eval' is imported from llava \(free-form"):
        load_params(tmp_path / "params.yaml")
    raw["data"]["splits"]["vqa_eval"] = {"size": 4}
    raw["data"]["splits"]["pretrain"] = entry
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ParamsError, match=r"teacher training: split 'pretrain' is imported from llava"):
        load_params(tmp_path / "params.yaml")


@pytest.mark.slow  # a tiny language model and VLM trained and scored (~40 s on 2 shared cores)
def test_a_vlm_trains_on_imported_llava_conversations_and_scores_on_the_study_set(tmp_path, smoke_data):
    """`data prepare` imports the conversations (captions: single_turn); the shared LM learns its
    vocabulary and reading from them, `vqa run` trains on them (stage 1 on the two descriptions)
    with a real tower and scores every question of the study's synthetic evaluation set."""
    from clipdistill.models.clip import create_model, save_model_dir
    from clipdistill.params import VQAParams
    from clipdistill.vqa.language import run as lm_run
    from clipdistill.vqa.stage import run

    raw = yaml.safe_load(SMOKE.read_text())
    raw["data"]["splits"]["vqa_train"] = {**llava_source(tmp_path / "src"), "captions": "single_turn"}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    run_cli("data", "prepare", "--params", tmp_path / "params.yaml", "--split", "vqa_train",
            "--out", tmp_path / "vqa_train", check=True)
    spec = VQAParams.model_validate({**raw["vqa"], "stage1": {"epochs": 2, "batch_size": 1},
                                     "stage2": {"epochs": 1, "batch_size": 2}, "seeds": [0]})
    lm_run(spec, tmp_path / "vqa_train", tmp_path / "lm")
    vocab = json.loads((tmp_path / "lm" / "tokenizer.json").read_text())["model"]["vocab"]
    assert {"velvet", "squares", "round"} <= set(vocab)  # words only the conversations hold
    save_model_dir(tmp_path / "encoder", create_model("cd-student-xs", 0), "cd-student-xs",
                   {"kind": "open_clip", "name": "cd-student-xs"}, {})
    summary = run(spec, encoder=str(tmp_path / "encoder"), out=tmp_path / "vlm", metrics=tmp_path / "vlm.json",
                  train=tmp_path / "vqa_train", eval=smoke_data / "vqa_eval", lm=tmp_path / "lm")
    log = (tmp_path / "vlm" / "train_log.csv").read_text()
    assert log.count("vqa stage 1") == 2 * 2 and log.count("vqa stage 2") == 4 // 2  # 2 captions, 4 conversations
    answers = (tmp_path / "vlm" / "answers.jsonl").read_text().splitlines()
    assert len(answers) == len(read_split_vqa(smoke_data / "vqa_eval")) == summary["count"]
