"""`clipdistill eval lmms`: lmms-eval's HF LLaVA model (`llava_hf`) on a local VQAv2-format split.

The task is lmms-eval's own VQAv2 task (its doc_to_visual, doc_to_text with the short-answer
post-prompt, and `vqav2_process_results_val` scoring) over a dataset saved to disk from the
split's `questions.json` / `annotations.json` — no hub download. Generation is capped at the
study's `vqa.max_new_tokens` so both evaluations answer with the same budget.
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

from clipdistill.harness import HarnessError, installed, offline, require

TASK = "clipdistill_vqav2"

# lmms-eval's task code, re-exported so the local task scores exactly as `vqav2_val` does.
_UTILS = """\
from lmms_eval.tasks.vqav2.utils import vqav2_doc_to_text, vqav2_doc_to_visual, vqav2_process_results_val  # noqa: F401
"""


def build_task(split_dir: str | Path, out: str | Path, max_new_tokens: int) -> Path:
    """Write the task folder (YAML + utils.py + the dataset saved to disk); returns it."""
    import datasets

    from clipdistill.data.splits import read_split_vqa
    from clipdistill.data.synth import SHORT_ANSWER

    split_dir, out = Path(split_dir), Path(out)
    records = read_split_vqa(split_dir, check_images=True)
    # ids as the source gives them: COCO's ints, or strings (then every id of that column as text)
    def id_column(values):
        ints = all(isinstance(v, int) for v in values)
        return (values if ints else [str(v) for v in values]), datasets.Value("int64" if ints else "string")

    (qids, qid_type), (image_ids, image_id_type) = (id_column([r.question_id for r in records]),
                                                    id_column([r.image_id for r in records]))
    # VQAv2 annotation layout: answer dicts carry answer_id, which lmms-eval's leave-one-out relies on
    rows = {"question_id": qids, "image_id": image_ids,
            "question": [r.question for r in records], "answer": [r.answer for r in records],
            "answers": [[{"answer": a, "answer_confidence": "yes", "answer_id": k + 1} for k, a in enumerate(r.answers)]
                        for r in records],
            "question_type": [r.question_type for r in records], "answer_type": [r.answer_type for r in records],
            "image": [{"bytes": Path(r.image).read_bytes(), "path": None} for r in records]}
    features = datasets.Features({
        "question_id": qid_type, "image_id": image_id_type,
        "question": datasets.Value("string"), "answer": datasets.Value("string"),
        "answers": [{"answer": datasets.Value("string"), "answer_confidence": datasets.Value("string"),
                     "answer_id": datasets.Value("int64")}],
        "question_type": datasets.Value("string"), "answer_type": datasets.Value("string"),
        "image": datasets.Image()})
    out.mkdir(parents=True, exist_ok=True)
    datasets.DatasetDict({"validation": datasets.Dataset.from_dict(rows, features=features)}).save_to_disk(
        str(out / "data"))
    (out / "utils.py").write_text(_UTILS)
    post = json.dumps("\n" + SHORT_ANSWER)  # the prompt clipdistill trains and evaluates with
    (out / f"{TASK}.yaml").write_text(f"""\
task: {TASK}
dataset_path: {json.dumps(str((out / "data").resolve()))}
dataset_kwargs:
  load_from_disk: true
test_split: validation
output_type: generate_until
doc_to_visual: !function utils.vqav2_doc_to_visual
doc_to_text: !function utils.vqav2_doc_to_text
doc_to_target: answer
generation_kwargs:
  max_new_tokens: {int(max_new_tokens)}
  temperature: 0
  num_beams: 1
process_results: !function utils.vqav2_process_results_val
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
lmms_eval_specific_kwargs:
  default:
    pre_prompt: ""
    post_prompt: {post}
metadata:
  - version: 0.0
""")
    return out


def _stub_decord() -> None:
    """lmms-eval 0.7.3's llava_hf imports decord (video decoding) at module level, and decord is
    not among its dependencies; images never reach it, so a stub that refuses video suffices."""
    try:
        import decord  # noqa: F401
    except ImportError:
        stub = types.ModuleType("decord")

        def _no_video(*args, **kwargs):
            raise HarnessError("video input needs decord, which is not installed")

        stub.VideoReader, stub.cpu = _no_video, _no_video
        sys.modules["decord"] = stub


def run_lmms(model_dir: str | Path, split_dir: str | Path, out: str | Path, max_new_tokens: int,
             limit: int | None = None) -> dict:
    """Score the VLM with lmms-eval; writes out/results.json (accuracy ×100 and every answer)."""
    offline()
    if not installed("lmms_eval"):  # said before anything is loaded
        require("lmms_eval", "lmms-eval")
    from clipdistill.export.hf import has_processor, vlm_model_dir
    from clipdistill.io import write_json

    model_dir = vlm_model_dir(model_dir)
    if not has_processor(model_dir):
        raise HarnessError(f"{model_dir}: no LlavaProcessor (saved before processors existed); "
                           f"add it in place with `clipdistill export hf --vlm {model_dir}`")
    require("lmms_eval", "lmms-eval")
    _stub_decord()
    from lmms_eval import evaluator
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager

    # lmms-eval 0.7.3 patches filelock 3's private `filelock._api` (re-entrant locks across
    # processes); the pinned filelock 4 has no such module. One process here: skip the patch.
    evaluator._enable_reentrant_filelocks._patched = True
    out = Path(out)
    task_dir = build_task(split_dir, out / "task", max_new_tokens)
    results = simple_evaluate(model="llava_hf", model_args=f"pretrained={model_dir},device=cpu,device_map=cpu,dtype=float32",
                              tasks=[TASK], task_manager=TaskManager(include_path=str(task_dir), include_defaults=False),
                              batch_size=1, limit=limit, log_samples=True, bootstrap_iters=0, force_simple=True,
                              verbosity="WARNING")
    if results is None or TASK not in results.get("results", {}):
        raise HarnessError(f"lmms-eval returned no result for {TASK}")
    samples = sorted(results["samples"][TASK], key=lambda s: s["doc_id"])
    answers = [{"question_id": s["doc"]["question_id"], "text": _text(s["filtered_resps"]),
                "exact_match": s["exact_match"]} for s in samples]
    summary = {"harness": "lmms-eval", "model": "llava_hf", "task": TASK, "split": str(split_dir),
               "accuracy": 100 * results["results"][TASK]["exact_match,none"], "count": len(answers),
               "answers": answers}
    write_json(out / "results.json", summary)
    return summary


def _text(resp) -> str:
    while isinstance(resp, (list, tuple)):
        resp = resp[0]
    return str(getattr(resp, "text", resp))
