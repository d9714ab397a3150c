"""`clipdistill features extract`: the frozen teacher, once over a distillation split."""

from __future__ import annotations

from pathlib import Path

from clipdistill.data.splits import load_split
from clipdistill.features.store import extract
from clipdistill.models import load_model_dir
from clipdistill.params import FeatureParams
from clipdistill.training.runtime import CPU, Runtime


def run(spec: FeatureParams, teacher: Path, split_dir: Path, out: Path, runtime: Runtime = CPU) -> dict:
    """Write the feature store of `teacher` on the split in `split_dir`; returns its manifest."""
    split = load_split(split_dir, max_mb=runtime.in_memory_max_mb)
    return extract(load_model_dir(teacher), split, spec, out, runtime)
