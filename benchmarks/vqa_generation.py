"""Greedy VQA generation throughput: batched (left padding) vs batch size 1.

Side by side in one run, the default VLM shape (exported cd-teacher-m tower, 64 image
tokens, the default tiny Llama), 128 questions of the synthetic world, up to 6 new tokens.

    .venv/bin/python benchmarks/vqa_generation.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch

from clipdistill.export.hf import export_hf
from clipdistill.params import VQAParams
from clipdistill.vqa.evaluate import answer
from clipdistill.vqa.language import tiny_llama
from clipdistill.vqa.model import build_vlm, train_tokenizer

sys.path.insert(0, str(Path(__file__).parent))
from feature_store import bundle_for  # noqa: E402


def main() -> None:
    questions = [f"what color is the {s}? answer the question using a single word or phrase."
                 for s in ("circle", "square", "small star", "large red ring")] * 32
    tok = train_tokenizer(questions + ["user : assistant : red blue green yes no 1 2 3"])
    with tempfile.TemporaryDirectory() as tmp:
        export_hf(bundle_for("cd-teacher-m"), Path(tmp) / "v")
        vlm = build_vlm(Path(tmp) / "v", tok, tiny_llama(VQAParams(), tok), VQAParams()).eval()
    pixels = torch.randn(len(questions), 3, 64, 64)
    rows = []
    for bs in (64, 16, 1):
        answer(vlm, tok, questions[:bs], pixels[:bs], bs, 6)  # warm-up
        t0 = time.perf_counter()
        answer(vlm, tok, questions, pixels, bs, 6)
        sec = time.perf_counter() - t0
        rows.append((bs, sec, len(questions) / sec))
    print("| batch size | seconds for 128 answers | answers / s |\n|---|---|---|")
    for bs, sec, rate in rows:
        print(f"| {bs} | {sec:.2f} | {rate:.1f} |")
    print(f"\nbatched (64) / batch size 1 throughput: {rows[0][2] / rows[-1][2]:.1f}x")


if __name__ == "__main__":
    main()
