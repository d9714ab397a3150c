"""`clipdistill eval clip`: zero-shot classification, retrieval and CKA of one encoder."""

from __future__ import annotations

from pathlib import Path

from clipdistill.data.splits import load_pairs, load_split
from clipdistill.evaluate.clip_eval import evaluate_clip
from clipdistill.io import write_json
from clipdistill.models import load_model_dir
from clipdistill.params import EvalParams
from clipdistill.training.runtime import CPU, Runtime


def run(spec: EvalParams, model: Path, out: Path, data: Path, csv: Path | None = None,
        teacher: Path | None = None, runtime: Runtime = CPU) -> dict:
    """Evaluate `model` on split `spec.split` (or an open_clip CSV), write the metrics JSON, return it.
    With `teacher`, adds CKA to the teacher's representations."""
    bundle = load_model_dir(model)
    split = (load_pairs(csv, bundle.preprocess["size"][0], max_mb=runtime.in_memory_max_mb) if csv
             else load_split(data / spec.split, max_mb=runtime.in_memory_max_mb))
    metrics = evaluate_clip(bundle, split, spec, load_model_dir(teacher) if teacher else None, runtime)
    write_json(out, metrics)
    return metrics
