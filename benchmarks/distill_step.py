"""Distillation step time: targets from the feature store vs an online teacher.

Side by side in one run, the largest default teacher (cd-teacher-l) and the default student
(cd-student-xs) with the clipkd method, batch 128 of 64 px synthetic images; median over
steps after a warm-up. The ratio is what the store saves per step.

    .venv/bin/python benchmarks/distill_step.py [--steps 12]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from clipdistill.distill import train as D
from clipdistill.features.store import FeatureStore, extract
from clipdistill.params import FeatureParams, LossOptions, StudentParams, TrainParams

sys.path.insert(0, str(Path(__file__).parent))
from feature_store import bundle_for, world  # noqa: E402


def time_steps(teacher: D.Teacher, split, steps: int) -> list[float]:
    method = {"clip": LossOptions(), "crd": LossOptions(), "icl": LossOptions(), "fd": LossOptions(weight=2000)}
    stamps = []
    real = D.method_loss

    def stamped(*args, **kwargs):
        stamps.append(time.perf_counter())
        return real(*args, **kwargs)

    D.method_loss = stamped
    try:
        train = TrainParams(epochs=max(1, -(-steps * 128 // len(split.images))), batch_size=128)
        D.distill(StudentParams(arch="cd-student-xs"), method, train, 0, split, teacher, show_progress=False)
    finally:
        D.method_loss = real
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    return gaps[2:steps]  # drop warm-up


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=12)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        split = world(128 * 4, Path(tmp))
        bundle = bundle_for("cd-teacher-l")
        extract(bundle, split, FeatureParams(patch_tokens=True), Path(tmp) / "store")
        store = D.Teacher(store=FeatureStore(Path(tmp) / "store"))
        online = D.Teacher(bundle=bundle)
        results = {}
        for name, teacher in (("store", store), ("online", online), ("store ", store)):
            results.setdefault(name.strip(), []).extend(time_steps(teacher, split, args.steps))
    med = {k: statistics.median(v) for k, v in results.items()}
    print("| teacher targets | median step (s) |\n|---|---|")
    for k, v in med.items():
        print(f"| {k} | {v:.3f} |")
    print(f"\nonline / store step time: {med['online'] / med['store']:.2f}x (torch threads {torch.get_num_threads()})")


if __name__ == "__main__":
    main()
