"""Loss backends side by side: time and peak extra memory of forward+backward.

CPU (always): our chunked torch path vs open_clip's ClipLoss / DistillClipLoss (eager),
B ∈ {8k, 16k}, D = 512. Each case runs in its own subprocess so peak RSS is its own.
GPU (when CUDA is present): our Triton kernels vs open_clip eager and torch.compile (and
Inf-CL if importable), B ∈ {4k, 16k, 32k, 64k}, D ∈ {512, 768}, bf16; achieved TFLOP/s
counted as 8·B²·D (12·B²·D for CLIP+KD) and the fraction of the measured bf16 matmul peak.

    .venv/bin/python benchmarks/loss_kernels.py [--reps 5] [--csv benchmarks/loss_kernels.csv]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F


def features(b: int, d: int, device="cpu", dtype=torch.float32, seed=0):
    g = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(b, d, device=device, dtype=torch.float32, generator=g)
    return F.normalize(x, dim=1).to(dtype)


def make_case(impl: str, b: int, d: int, device: str, dtype):
    """A zero-argument callable running forward+backward once."""
    from open_clip.loss import ClipLoss, DistillClipLoss

    from clipdistill import losses

    img = features(b, d, device, dtype, 0).requires_grad_()
    txt = features(b, d, device, dtype, 1).requires_grad_()
    t_img, t_txt = features(b, d, device, dtype, 2), features(b, d, device, dtype, 3)
    scale = torch.tensor(14.0, device=device)
    kd = impl.endswith("+kd")
    name = impl.removesuffix("+kd")
    if name == "open_clip":
        fn = (lambda: sum(DistillClipLoss()(img, txt, scale, t_img, t_txt, scale))) if kd else \
             (lambda: ClipLoss()(img, txt, scale))
    elif name == "open_clip_compiled":
        loss_mod = DistillClipLoss() if kd else ClipLoss()
        compiled = torch.compile(loss_mod)
        fn = (lambda: sum(compiled(img, txt, scale, t_img, t_txt, scale))) if kd else (lambda: compiled(img, txt, scale))
    elif name == "inf_cl":
        from inf_cl import cal_inf_loss  # optional dependency

        fn = lambda: cal_inf_loss(img, txt, scale=scale)  # noqa: E731
    else:  # ours: torch (chunked) or triton
        fn = (lambda: sum(losses.contrastive_kd_loss(img, txt, scale, t_img, t_txt, scale, backend=name))) if kd \
            else (lambda: losses.contrastive_loss(img, txt, scale, backend=name))

    def step():
        img.grad = txt.grad = None
        fn().backward()

    return step


def run_one(impl: str, b: int, d: int, reps: int, device: str, dtype_name: str) -> dict:
    dtype = getattr(torch, dtype_name)
    step = make_case(impl, b, d, device, dtype)
    if device == "cuda":
        step()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        times = []
        for _ in range(reps):
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1000)
        peak = torch.cuda.max_memory_allocated() - base
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    flops = (12 if impl.endswith("+kd") else 8) * b * b * d
    sec = statistics.median(times)
    return {"impl": impl, "B": b, "D": d, "dtype": dtype_name, "device": device, "ms": round(sec * 1e3, 2),
            "peak_extra_MB": round(peak / 2**20, 1), "TFLOPs": round(flops / sec / 1e12, 3)}


def subprocess_case(impl, b, d, reps, device, dtype) -> dict | None:
    cmd = [sys.executable, __file__, "--one", json.dumps([impl, b, d, reps, device, dtype])]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"  {impl} B={b}: failed: {proc.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def matmul_peak_tflops(device="cuda", n=8192) -> float:
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ a
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(20):
        a @ a
    torch.cuda.synchronize()
    return 2 * n**3 * 20 / (time.perf_counter() - t0) / 1e12


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--csv", type=Path, default=Path("benchmarks/loss_kernels.csv"))
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(*json.loads(args.one))))
        return
    rows = []
    if torch.cuda.is_available():
        peak = matmul_peak_tflops()
        impls = ["triton", "open_clip", "open_clip_compiled", "triton+kd", "open_clip+kd", "open_clip_compiled+kd"]
        try:
            import inf_cl  # noqa: F401
            impls.append("inf_cl")
        except ImportError:
            pass
        for d in (512, 768):
            for b in (4096, 16384, 32768, 65536):
                for impl in impls:
                    if (r := subprocess_case(impl, b, d, args.reps * 4, "cuda", "bfloat16")):
                        r["frac_peak"] = round(r["TFLOPs"] / peak, 3)
                        rows.append(r)
                        print(r, file=sys.stderr)
    os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))
    for b in (8192, 16384):
        for impl in ("torch", "open_clip", "torch+kd", "open_clip+kd"):
            if (r := subprocess_case(impl, b, 512, args.reps, "cpu", "float32")):
                rows.append(r)
                print(r, file=sys.stderr)
    args.csv.parent.mkdir(parents=True, exist_ok=True)
    with open(args.csv, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=sorted({k for r in rows for k in r}))
        w.writeheader()
        w.writerows(rows)
    print("| device | impl | B | D | dtype | ms (median) | peak extra MB | TFLOP/s |\n|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['device']} | {r['impl']} | {r['B']} | {r['D']} | {r['dtype']} | {r['ms']} | "
              f"{r['peak_extra_MB']} | {r['TFLOPs']} |")
    cpu = {(r["impl"], r["B"]): r for r in rows if r["device"] == "cpu"}
    print("\nCPU ratios, ours / open_clip (lower is better):")
    for b in (8192, 16384):
        for ours, theirs in (("torch", "open_clip"), ("torch+kd", "open_clip+kd")):
            if (ours, b) in cpu and (theirs, b) in cpu:
                o, t = cpu[(ours, b)], cpu[(theirs, b)]
                print(f"  B={b} {ours}: time {o['ms'] / t['ms']:.2f}x, peak memory "
                      f"{o['peak_extra_MB'] / max(t['peak_extra_MB'], 1e-9):.3f}x")


if __name__ == "__main__":
    main()
