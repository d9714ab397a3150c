"""Several VQA evaluation sets (`vqa.train_split`, `vqa.eval_splits`): `vqa run` trains each VLM
and scores the study's set (the first), `vqa score` scores the saved VLM on every further set,
each under results/vqa_sets/<set>/; the stage table gives both runners the same jobs."""

import json

import numpy as np
import pytest
import yaml
from conftest import BIN, SMOKE, project_copy, run_cli
from test_dag import _run, assert_same_stages, dvc_params, dvc_stages, snakemake_jobs
from test_import import coco_style_vqa, data_params

from clipdistill import stages
from clipdistill.data.prepare import prepare
from clipdistill.io import read_json
from clipdistill.params import VQAParams
from clipdistill.vqa.metrics import vqa_accuracy

TINY = {"lm": {"hidden_size": 32, "intermediate_size": 64, "layers": 1, "heads": 2},
        "stage1": {"epochs": 1, "batch_size": 8}, "stage2": {"epochs": 1, "batch_size": 8},
        "eval_batch_size": 8, "max_new_tokens": 2}


def two_sets(dest, extra=("gqa_like",)):
    """The smoke study with further synthetic evaluation sets after vqa_eval."""
    raw = yaml.safe_load(SMOKE.read_text())
    for name in extra:
        raw["data"]["splits"][name] = {"size": 8, "style": "textured"}
    raw["vqa"]["eval_splits"] = ["vqa_eval", *extra]
    dest.write_text(yaml.safe_dump(raw, sort_keys=False))
    return raw


def test_one_set_makes_no_scoring_stage_and_vqa_run_does_not_read_the_list():
    smoke = yaml.safe_load(SMOKE.read_text())
    for name in ("vqa_score_teacher", "vqa_score_student", "vqa_score_blind"):
        assert stages.targets(stages.BY_NAME[name], smoke) == []
    assert not any(k.startswith("vqa_score") for k in stages.dvc_stages(params=smoke))
    run = stages.BY_NAME["vqa_teacher"]
    keys = stages.params_keys(run)
    assert "vqa.eval_splits" not in keys and {"vqa.train_split", "vqa.seeds", "vqa.stage2", "runtime"} <= set(keys)
    assert "eval_splits" not in stages.params_values(run, smoke, {"teacher": "s", "vlm_seed": "0"})["vqa.*"]
    assert stages.snakemake_command(run, smoke, {"teacher": "s", "vlm_seed": "0"}).endswith(
        "--train results/data/vqa_train --eval results/data/vqa_eval --lm results/vqa/lm"
        " --out results/vqa/teachers/s/vlm0 --metrics results/vqa_metrics/teachers/s/vlm0.json")


def test_two_sets_give_each_vlm_a_scoring_job_that_reads_only_its_set(tmp_path):
    """The stage table with vqa.eval_splits [vqa_eval, gqa_like]: one `vqa score` per VLM on
    gqa_like, depending on that VLM and that split only; `vqa run` never reads gqa_like; the
    report reads both sets; dvc.yaml lists the further set literally."""
    params = two_sets(tmp_path / "params.yaml")
    score = stages.BY_NAME["vqa_score_teacher"]
    assert stages.targets(score, params) == [
        f"results/vqa_sets/gqa_like/{kind}/teachers/{t}/vlm{v}{ext}"
        for t in ("s", "m") for v in (0, 1) for kind, ext in (("vqa", ""), ("vqa_metrics", ".json"))]
    inputs = stages.snakemake_inputs(score, params, {"eval_set": "gqa_like", "teacher": "s", "vlm_seed": "1"})
    assert [p for p in inputs if p.startswith("results/")] == ["results/vqa/teachers/s/vlm1", "results/data/gqa_like"]
    assert stages.snakemake_command(score, params, {"eval_set": "gqa_like", "teacher": "s", "vlm_seed": "1"}).endswith(
        "vqa score --params params.yaml --vlm results/vqa/teachers/s/vlm1 --eval results/data/gqa_like"
        " --out results/vqa_sets/gqa_like/vqa/teachers/s/vlm1"
        " --metrics results/vqa_sets/gqa_like/vqa_metrics/teachers/s/vlm1.json")
    blind = stages.BY_NAME["vqa_score_blind"]
    assert "--vlm results/vqa/blind/vlm0 --blind" in stages.snakemake_command(
        blind, params, {"eval_set": "gqa_like", "vlm_seed": "0"})
    for name, wc in (("vqa_teacher", {"teacher": "s", "vlm_seed": "0"}), ("vqa_lm", {})):
        assert "results/data/gqa_like" not in stages.snakemake_inputs(stages.BY_NAME[name], params, wc)
    report = stages.snakemake_inputs(stages.BY_NAME["report"], params, {})
    assert {"results/data/vqa_eval", "results/data/gqa_like",
            "results/vqa_sets/gqa_like/vqa_metrics/blind/vlm1.json"} <= set(report)
    dvc = stages.dvc_stages(params=params)
    assert dvc["vqa_score_teacher"]["matrix"] == {"eval_set": ["gqa_like"], "teacher": "${teachers}",
                                                  "vlm_seed": "${vqa.seeds}"}
    assert "results/data/${item.eval_set}" in dvc["vqa_score_teacher"]["deps"]
    assert "vqa.eval_splits" not in dvc["vqa_teacher"]["params"]
    assert {"results/data/gqa_like", "results/vqa_sets"} <= set(dvc["report"]["deps"])


@pytest.mark.slow  # two dry runs and a DVC index of the smoke study (~40 s on 2 cores)
def test_two_sets_define_the_same_jobs_in_both_runners(tmp_path):
    two_sets(tmp_path / "params.yaml")
    root = project_copy(tmp_path / "project", tmp_path / "params.yaml")
    _run([str(BIN / "python"), "-m", "clipdistill.stages", "dvc-yaml", "--out", "dvc.yaml"], root)
    smk, dvc = snakemake_jobs(root), dvc_stages(root)
    assert_same_stages(smk, dvc)
    scored = {job[0] for job in smk if job[0].startswith("vqa_score")}
    assert scored == {"vqa_score_teacher", "vqa_score_student", "vqa_score_blind"}
    # VLM seeds × (teachers s, m; their clipkd students and the baseline in the smoke study's one
    # regime; blind)
    assert len([job for job in smk if job[0].startswith("vqa_score")]) == 2 * (2 + (2 + 1) + 1)
    assert dvc_params(root)["vqa_score_blind@gqa_like-0"] == ["runtime", "vqa.eval_batch_size", "vqa.max_new_tokens"]


# ---------------------------------------------------------------- scoring a saved VLM


@pytest.fixture(scope="module")
def vlm(tmp_path_factory, smoke_data):
    """A tiny VLM trained and scored on the smoke world's study set by `vqa run`."""
    from clipdistill.models.clip import create_model, save_model_dir
    from clipdistill.vqa.stage import run

    root = tmp_path_factory.mktemp("sets")
    save_model_dir(root / "encoder", create_model("cd-student-xs", 0), "cd-student-xs",
                   {"kind": "open_clip", "name": "cd-student-xs"}, {})
    spec = VQAParams.model_validate(TINY)
    run(spec, encoder=str(root / "encoder"), out=root / "vlm", metrics=root / "vlm.json",
        train=smoke_data / "vqa_train", eval=smoke_data / "vqa_eval")
    return root, spec


def _answers(folder):
    return {r["question_id"]: r["text"] for r in map(json.loads, (folder / "answers.jsonl").read_text().splitlines())}


@pytest.mark.slow  # trains a tiny VLM once for the module (~15 s)
def test_scoring_the_study_set_again_gives_vqa_runs_answers_and_numbers(vlm, smoke_data):
    """The saved VLM, reloaded, answers as the one in memory did: `vqa score` is `vqa run`'s evaluation."""
    from clipdistill.vqa.stage import score

    root, spec = vlm
    summary = score(spec, vlm=root / "vlm", eval=smoke_data / "vqa_eval", out=root / "again",
                    metrics=root / "again.json")
    assert _answers(root / "again") == _answers(root / "vlm")
    first, again = read_json(root / "vlm.json"), read_json(root / "again.json")
    for key in ("overall", "count", "per_question_type", "per_answer_type"):
        assert again[key] == first[key], key
    assert summary["count"] == 48 and set(again["diagnostics"]) == {"answer_health", "by_objects", "collapsed"}
    assert again["diagnostics"]["by_objects"] == first["diagnostics"]["by_objects"]  # the run's reading vs finding
    assert (root / "again" / "per_type.csv").read_text() == (root / "vlm" / "per_type.csv").read_text()


@pytest.mark.slow
def test_a_further_set_imported_with_coco_ids_gets_its_own_correct_metrics(vlm, smoke_params, tmp_path):
    """A VQAv2-format set (COCO-style ids, no captions) scored on the saved VLM: its own files,
    its numbers the soft accuracy of its answers against its own annotations."""
    from clipdistill.vqa.stage import score

    root, spec = vlm
    entry = coco_style_vqa(tmp_path / "coco")
    prepare(data_params(smoke_params, coco_eval=entry), "coco_eval", tmp_path / "coco_eval")
    before = (root / "vlm.json").read_bytes()
    summary = score(spec, vlm=root / "vlm", eval=tmp_path / "coco_eval", out=tmp_path / "out",
                    metrics=tmp_path / "m.json")
    answers = _answers(tmp_path / "out")
    gold = {a["question_id"]: [x["answer"] for x in a["answers"]]
            for a in json.loads(open(entry["annotations"]).read())["annotations"]}
    assert sorted(answers) == sorted(gold) and min(answers) >= 262148000  # COCO ids, not row indices
    expected = 100 * np.mean([vqa_accuracy(answers[q], gold[q]) for q in gold])
    written = read_json(tmp_path / "m.json")
    assert written["count"] == 12 and written["overall"] == pytest.approx(expected, abs=1e-4)
    assert summary["overall"] == pytest.approx(expected)
    assert "by_objects" not in written["diagnostics"]  # an imported set has no scenes to count objects in
    assert (root / "vlm.json").read_bytes() == before


def test_an_unknown_evaluation_set_is_one_line_exit_2_before_any_work(tmp_path):
    raw = yaml.safe_load(SMOKE.read_text())
    raw["vqa"]["eval_splits"] = ["vqa_eval", "nope"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    expected = "vqa.eval_splits: ['nope'] not data splits; known: "
    for args in (["vqa", "lm", "--train", tmp_path / "no-data", "--out", tmp_path / "lm"],
                 ["vqa", "score", "--vlm", tmp_path / "no-vlm", "--eval", tmp_path / "no-data",
                  "--out", tmp_path / "o", "--metrics", tmp_path / "m.json"],
                 ["params", "check"]):
        proc = run_cli(*args, "--params", tmp_path / "params.yaml")
        assert proc.returncode == 2, (args, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1 and expected in proc.stderr, (args, proc.stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]
    raw["vqa"]["eval_splits"] = ["vqa_train"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    proc = run_cli("params", "check", "--params", tmp_path / "params.yaml")
    assert proc.returncode == 2 and "never scored on the questions it trained on" in proc.stderr


def test_the_singular_eval_split_gets_a_one_line_migration(tmp_path):
    raw = yaml.safe_load(SMOKE.read_text())
    del raw["vqa"]["eval_splits"]
    raw["vqa"]["eval_split"] = "vqa_eval"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    proc = run_cli("vqa", "lm", "--train", tmp_path / "x", "--out", tmp_path / "lm", "--params", tmp_path / "params.yaml")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "`eval_split` is `eval_splits`" in proc.stderr and "eval_splits: [vqa_eval]" in proc.stderr


def test_the_report_adds_each_further_set_and_keeps_the_verdict_on_the_first(tmp_path):
    """A fabricated study scored on a second set (every student: the first 10 of 40 right): the
    report's table for that set has those numbers with CIs, and the verdict, effect.json and the
    study's own table are what they were without it."""
    from test_report import fabricate

    from clipdistill.report.study import report

    res, data = fabricate(tmp_path, lambda rank, seed: [10, 21, 30][rank] + seed, n_q=40)
    report(res, data, tmp_path / "one", n_boot=200)
    qids = [f"g{q}" for q in range(40)]  # GQA-style string ids
    gold = res / "data" / "gqa_like" / "annotations.json"
    gold.parent.mkdir(parents=True)
    gold.write_text(json.dumps({"annotations": [{"question_id": q, "answers": [{"answer": "no"}] * 10} for q in qids]}))
    for metrics in (res / "vqa_metrics" / "students").rglob("vlm0.json"):
        run = metrics.parent.relative_to(res / "vqa_metrics")
        answers = res / "vqa_sets" / "gqa_like" / "vqa" / run / "vlm0" / "answers.jsonl"
        answers.parent.mkdir(parents=True)
        answers.write_text("".join(json.dumps({"question_id": q, "text": "no" if i < 10 else "yes"}) + "\n"
                                   for i, q in enumerate(qids)))
        (res / "vqa_sets" / "gqa_like" / "vqa_metrics" / run).mkdir(parents=True, exist_ok=True)
        (res / "vqa_sets" / "gqa_like" / "vqa_metrics" / run / "vlm0.json").write_text(
            json.dumps({"overall": 25.0, "per_question_type": {"exists": 25.0}}))
    analysis = report(res, data, tmp_path / "two", n_boot=200)
    for name in ("effect.json", "correlations.json", "study.csv"):
        assert (tmp_path / "two" / name).read_bytes() == (tmp_path / "one" / name).read_bytes(), name
    one, two = (tmp_path / "one" / "study.md").read_text(), (tmp_path / "two" / "study.md").read_text()
    assert two.startswith(one) and "### gqa_like" in two and "The verdict above is on the study's set, `vqa_eval`" in two
    sets = json.loads((tmp_path / "two" / "eval_sets.json").read_text())
    rows = sets["gqa_like"]["students"]
    assert len(rows) == len(analysis["table"]) == 6 and all(r["vqa"] == 25.0 for r in rows)
    assert not (tmp_path / "one" / "eval_sets.json").exists()
