"""Feature extraction cost per teacher scale, and store size per dtype / option.

Side by side in one run (this machine is shared and noisy): wall time per 1k images for
each default teacher architecture, and bytes per 1k images for fp32 vs fp16 stores, with
and without patch tokens. Weights do not change cost, so randomly initialised teachers
are used and the benchmark needs no pipeline run.

    .venv/bin/python benchmarks/feature_store.py [--images 1000] [--csv out.csv]
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from pathlib import Path

import torch

from clipdistill.data.splits import Split
from clipdistill.data.synth import synth_split
from clipdistill.features.store import extract
from clipdistill.models import ClipBundle, create_model
from clipdistill.models.clip import preprocess_cfg, word_tokenizer_for
from clipdistill.params import DataParams, FeatureParams, SplitParams


def bundle_for(arch: str) -> ClipBundle:
    model = create_model(arch, seed=0).eval()
    tok = word_tokenizer_for(arch)
    return ClipBundle(model, tok, arch, preprocess_cfg(model), {"weights_sha256": "-" * 64, "teacher": arch},
                      tok.to_json())


def world(n: int, root: Path) -> Split:
    from clipdistill.data.splits import load_split
    from clipdistill.io import write_manifest

    params = DataParams()
    synth_split(params, "bench", SplitParams(size=n), root / "bench")
    write_manifest(root / "bench", "bench", {}, {})
    return load_split(root / "bench")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--csv", type=Path, default=Path("benchmarks/feature_store.csv"))
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        split = world(args.images, tmp)
        for arch in ("cd-teacher-s", "cd-teacher-m", "cd-teacher-l"):
            bundle = bundle_for(arch)
            for dtype, patches in (("float32", False), ("float32", True), ("float16", False), ("float16", True)):
                out = tmp / f"{arch}-{dtype}-{patches}"
                start = time.perf_counter()
                extract(bundle, split, FeatureParams(dtype=dtype, patch_tokens=patches, views=0), out)
                seconds = time.perf_counter() - start
                size = sum(p.stat().st_size for p in out.glob("*.safetensors"))
                rows.append({"teacher": arch, "dtype": dtype, "patch_tokens": patches,
                             "s_per_1k": round(seconds * 1000 / args.images, 2),
                             "MB_per_1k": round(size / 1e6 * 1000 / args.images, 3)})
                print(rows[-1], file=sys.stderr)
    args.csv.parent.mkdir(parents=True, exist_ok=True)
    with open(args.csv, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"| teacher | dtype | patch tokens | s / 1k images | MB / 1k images |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['teacher']} | {r['dtype']} | {r['patch_tokens']} | {r['s_per_1k']} | {r['MB_per_1k']} |")
    print(f"\n(torch threads: {torch.get_num_threads()})")


if __name__ == "__main__":
    main()
