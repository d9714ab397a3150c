"""`clipdistill teacher train`: one teacher, trained here on the `pretrain` split or
imported from external open_clip weights (offline), into a model directory."""

from __future__ import annotations

from pathlib import Path

from clipdistill.data.splits import load_split
from clipdistill.io import check_tracked_by_dvc, read_json
from clipdistill.params import TeacherParams, pick, teacher_files
from clipdistill.teachers.train import import_external, save_pipeline_teacher, train_teacher
from clipdistill.training.runtime import CPU, Runtime


def run(teachers: dict[str, TeacherParams], name: str, data: Path, out: Path, runtime: Runtime = CPU) -> dict:
    """Write teacher `name`'s model directory; returns its manifest."""
    spec = pick(teachers, name, "teachers")
    if spec.source == "external":
        check_tracked_by_dvc(teacher_files(spec), f"the weights of teacher {name}")
        return import_external(out, name, spec)
    split = load_split(data / "pretrain", max_mb=runtime.in_memory_max_mb)
    group = read_json(data / "pretrain" / "manifest.json")["params"].get("hard_negatives", 1)
    boxes = data / "pretrain" / "scenes.json"  # absent from imported (CSV, VQA) splits: train_teacher refuses
    scenes = read_json(boxes) if spec.local_weight > 0 and boxes.exists() else None
    model, tokenizer, log = train_teacher(spec, split, runtime=runtime, group=group, scenes=scenes)
    return save_pipeline_teacher(out, name, spec, split, model, tokenizer, log)
