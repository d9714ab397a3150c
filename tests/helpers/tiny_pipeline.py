"""Every model stage of the smoke study once, through the stages' own `run` functions, on a
smoke world: teacher training, feature extraction, distillation (store and online teacher),
CLIP evaluation with CKA, the VQA language model and a VLM. `digests` hashes what the stages
computed (weights, stores, metrics, answers, logs; not manifests, which name temporary paths).

`python tests/helpers/tiny_pipeline.py` prints the digests of the default (CPU, fp32) run:
tests/test_runtime.py keeps them as the golden values that prove the default path unchanged.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "configs" / "smoke.yaml"
HASHED = ("*.safetensors", "*.csv", "*.jsonl", "metrics*.json")


def run_stages(root: Path, data: Path, runtime=None, online: bool = True) -> Path:
    """Run every model stage into `root`; `runtime` (None: each stage's default) is passed on."""
    from clipdistill.distill.stage import run as distill
    from clipdistill.evaluate.stage import run as eval_clip
    from clipdistill.features.stage import run as extract
    from clipdistill.params import load_section
    from clipdistill.teachers.stage import run as train_teacher
    from clipdistill.vqa.language import run as vqa_lm
    from clipdistill.vqa.stage import run as vqa_run

    rt = {} if runtime is None else {"runtime": runtime}
    distill_spec = load_section(SMOKE, "distill")
    train_teacher(load_section(SMOKE, "teachers"), "s", data, root / "teacher", **rt)
    extract(load_section(SMOKE, "features"), root / "teacher", data / "distill", root / "features", **rt)
    runs = [("store", distill_spec)]
    if online:
        online_train = distill_spec.train.model_copy(update={"teacher_mode": "online", "use_views": True})
        runs.append(("online", distill_spec.model_copy(update={"train": online_train})))
    for name, spec in runs:
        distill(spec, student="xs", method="clipkd", seed=0, data=data / "distill", out=root / f"student_{name}",
                teacher_name="s", teacher=root / "teacher", features=root / "features", **rt)
    eval_clip(load_section(SMOKE, "eval"), root / "student_store", root / "metrics_eval.json", data,
              teacher=root / "teacher", **rt)
    vqa = load_section(SMOKE, "vqa")
    vqa_lm(vqa, data / vqa.train_split, root / "lm", **rt)
    vqa_run(vqa, encoder=str(root / "student_store"), out=root / "vlm", metrics=root / "metrics_vqa.json",
            train=data / vqa.train_split, eval=data / vqa.eval_splits[0], lm=root / "lm", **rt)
    return root


def digests(root: Path) -> dict[str, str]:
    """sha256 (16 hex digits) per file; the answers name their encoder's path, written here as ROOT."""
    files = sorted({p for pattern in HASHED for p in root.rglob(pattern)})
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes().replace(str(root).encode(), b"ROOT"))
            .hexdigest()[:16] for p in files}


def main() -> None:
    import json
    import tempfile

    sys.path.insert(0, str(REPO / "tests"))
    from conftest import synth_world

    from clipdistill.params import load_section

    with tempfile.TemporaryDirectory() as tmp:
        data = synth_world(load_section(SMOKE, "data"), Path(tmp) / "data")
        print(json.dumps(digests(run_stages(Path(tmp) / "out", data)), indent=1))


if __name__ == "__main__":
    main()
