"""`clipdistill distill`: one student of one method, seed and teacher (or none).

Checks that the feature store belongs to this data and this teacher, trains (resuming from
the checkpoint next to `out`), and writes the student's model directory with its
provenance. Under `torchrun` every rank trains; rank 0 writes.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from clipdistill.data.splits import load_split
from clipdistill.distill.train import Teacher, distill
from clipdistill.features.store import FeatureStore
from clipdistill.io import ClipdistillError
from clipdistill.losses.registry import teacher_fields
from clipdistill.models import load_model_dir, save_model_dir
from clipdistill.params import DistillParams, pick
from clipdistill.training.loop import log_csv
from clipdistill.training.parallel import init_from_env
from clipdistill.training.runtime import CPU, Runtime


def checkpoint_path(out: Path) -> Path:
    """The resumable checkpoint of a run: a hidden sibling of its output, removed on success."""
    return out.parent / f".{out.name}.ckpt" / "last.safetensors"


def check_inputs(method: str, method_spec: dict, teacher_name: str, teacher: Path | None,
                 features: Path | None) -> None:
    """A baseline takes no teacher and reads no teacher targets; a KD run takes both inputs."""
    if teacher_name == "none":
        if teacher is not None or features is not None:
            raise ClipdistillError("--teacher-name none trains a teacher-free baseline: drop --teacher/--features")
        if uses := teacher_fields(method_spec):
            raise ClipdistillError(f"method {method!r} needs teacher targets ({', '.join(uses)}); give --teacher-name,"
                                   " --teacher and --features")
    elif teacher is None or features is None:
        raise ClipdistillError(f"teacher {teacher_name!r}: give both --teacher and --features")


def teacher_source(spec: DistillParams, split, teacher: Path, features: Path) -> tuple[Teacher, dict]:
    """The targets (store, or the live teacher in online mode) and the teacher's id; refuses a
    store made from other data, other preprocessing or another teacher."""
    store = FeatureStore(features)
    bundle = load_model_dir(teacher)
    store.check(data_sha256=split.content_sha256, preprocess=bundle.preprocess,
                image_size=list(split.images.shape[-2:]))
    if store.manifest["teacher"]["weights_sha256"] != bundle.manifest["weights_sha256"]:
        raise ClipdistillError(f"{features}: feature store was made by another teacher than {teacher}")
    source = Teacher(store=store) if spec.train.teacher_mode == "store" else Teacher(bundle=bundle)
    return source, store.manifest["teacher"]


def run(spec: DistillParams, *, student: str, method: str, seed: int, data: Path, out: Path,
        teacher_name: str = "none", teacher: Path | None = None, features: Path | None = None,
        duration: int = 1, runtime: Runtime = CPU) -> dict | None:
    """Train and save one student on `runtime`'s device for `duration` × the epochs (and
    max_steps) of spec.train; returns its manifest (None on ranks other than 0)."""
    if duration < 1:
        raise ClipdistillError(f"--duration {duration}: a duration is a multiple (≥ 1) of distill.train.epochs")
    if duration != 1:
        train = spec.train
        longer = {"epochs": train.epochs * duration,
                  "max_steps": None if train.max_steps is None else train.max_steps * duration}
        spec = spec.model_copy(update={"train": train.model_copy(update=longer)})
    rank, _ = init_from_env(runtime.device)
    student_spec = pick(spec.students, student, "distill.students")
    method_spec = pick(spec.methods, method, "distill.methods")
    check_inputs(method, method_spec, teacher_name, teacher, features)
    split = load_split(data, max_mb=runtime.in_memory_max_mb)
    if teacher_name == "none":
        source, teacher_id = Teacher(), None
    else:
        source, teacher_id = teacher_source(spec, split, teacher, features)
    checkpoint = checkpoint_path(out)
    info: dict = {}
    model, tok_spec, log = distill(student_spec, method_spec, spec.train, seed, split, source, checkpoint, info=info,
                                   runtime=runtime)
    provenance = {"source": "distilled", "teacher": teacher_id, "teacher_name": teacher_name,
                  "resumed_from_step": info["resumed_from"],
                  "student": student, "method": method, "method_spec": {k: v.options() for k, v in method_spec.items()},
                  "seed": seed, "train": spec.train.model_dump(mode="json"),
                  "data": {"split": str(data), "content_sha256": split.content_sha256},
                  "final_loss": log[-1]["loss"] if log else None}
    if rank != 0:
        return None
    manifest = save_model_dir(out, model, student_spec.arch, tok_spec, provenance,
                              extra_files={"train_log.csv": log_csv(log)})
    shutil.rmtree(checkpoint.parent, ignore_errors=True)
    return manifest
