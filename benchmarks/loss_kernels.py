"""Loss backends side by side: correctness first, then time and peak extra memory of forward+backward.

CPU (default): our chunked torch path vs open_clip's ClipLoss / DistillClipLoss (eager; if
open_clip is missing, the same computation written out: both logit matrices, cross-entropy,
KL on log-softmaxes), B = 8k (and --cpu-batches), D = 512, fp32, each case in its own
subprocess so its peak RSS is its own. PASS/FAIL for the issue's CPU goal (CLIP+KD time
≤ 1.0×, peak memory ≤ 1/8 of open_clip's).

GPU (--gpu, needs CUDA; < 8 min on one H100/H200): device name and measured bf16 matmul
peak; correctness of the Triton kernels against the chunked torch path (bf16, fp16, fp32,
CLIP and CLIP+KD); then triton, chunked torch, naive, open_clip and an in-repo Inf-CL-style
tiled torch baseline, B ∈ {4k, 8k, 16k, 32k, 64k}, D = 768, bf16, CLIP and CLIP+KD (teacher
width 768): ms, peak extra memory, TFLOP/s (8·B²·D for CLIP, 12·B²·D with KD) and % of the
matmul peak; one PASS/FAIL line per goal of issue 21.

    .venv/bin/python benchmarks/loss_kernels.py [--reps 3]              # CPU
    .venv/bin/python benchmarks/loss_kernels.py --gpu                   # GPU (make gpu-kernels)
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

GOAL_CLIP_MS = 12.5        # issue 21: CLIP fwd+bwd at B = 32k, D = 768, bf16 (H200)
GOAL_KD_RATIO = 1.6        # CLIP+KD / CLIP, teacher width = student width (FLOP floor 1.5)
GOAL_EXTRA_GB = 0.5        # extra memory at B = 32k
GOAL_CPU_TIME, GOAL_CPU_MEM = 1.0, 1 / 8  # CPU CLIP+KD vs open_clip DistillClipLoss at B = 8k, D = 512


def features(b: int, d: int, device="cpu", dtype=torch.float32, seed=0):
    g = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(b, d, device=device, dtype=torch.float32, generator=g)
    return F.normalize(x, dim=1).to(dtype)


# ------------------------------------------------------------------ baselines

def naive_clip(img, txt, scale):
    """open_clip's ClipLoss, written out: two logit matrices, cross-entropy each way."""
    labels = torch.arange(len(img), device=img.device)
    return 0.5 * (F.cross_entropy(scale * img @ txt.T, labels) + F.cross_entropy(scale * txt @ img.T, labels))


def naive_distill(img, txt, scale, t_img, t_txt, t_scale):
    """The CLIP + similarity-KD pair materialised (as open_clip's DistillClipLoss materialises it)."""
    S, T = scale * img @ txt.T, (t_scale * t_img @ t_txt.T).detach()
    labels = torch.arange(len(img), device=img.device)
    clip = 0.5 * (F.cross_entropy(S, labels) + F.cross_entropy(S.T, labels))
    kl = lambda s, t: F.kl_div(F.log_softmax(s, 1), F.log_softmax(t, 1), log_target=True,  # noqa: E731
                               reduction="batchmean")
    return clip, 0.5 * (kl(S, T) + kl(S.T, T.T))


class _InfClTiled(torch.autograd.Function):
    """Inf-CL-style baseline (Cheng et al. 2024, "Breaking the Memory Barrier: Near Infinite
    Batch Size Scaling for Contrastive Loss", arXiv:2410.17243): one direction of InfoNCE as
    a tile × tile loop in torch — row log-sum-exp merged tile by tile in the forward, tiles
    recomputed in the backward. The symmetric loss is two calls, as Inf-CL does it."""

    @staticmethod
    def forward(ctx, a, b, scale, tile):
        n = len(a)
        lse = torch.full((n,), -torch.inf, device=a.device, dtype=torch.float32)
        for r in range(0, n, tile):
            for c in range(0, n, tile):
                lse[r:r + tile] = torch.logaddexp(lse[r:r + tile], torch.logsumexp(
                    (scale * (a[r:r + tile] @ b[c:c + tile].T)).float(), 1))
        diag = scale * (a.float() * b.float()).sum(1)
        ctx.save_for_backward(a, b, scale, lse)
        ctx.tile = tile
        return (lse - diag).mean()

    @staticmethod
    def backward(ctx, g):
        a, b, scale, lse = ctx.saved_tensors
        n, tile = len(a), ctx.tile
        da, db = torch.zeros(a.shape, device=a.device), torch.zeros(b.shape, device=a.device)
        for r in range(0, n, tile):
            for c in range(0, n, tile):
                G = torch.exp((scale * (a[r:r + tile] @ b[c:c + tile].T)).float() - lse[r:r + tile, None]) * (g / n)
                if r == c:
                    G.diagonal().sub_(g / n)
                G = G.to(a.dtype)
                da[r:r + tile] += (G @ b[c:c + tile]).float()
                db[c:c + tile] += (G.T @ a[r:r + tile]).float()
        return (scale * da).to(a.dtype), (scale * db).to(b.dtype), None, None


def inf_cl_tiled(img, txt, scale, tile=4096):
    return 0.5 * (_InfClTiled.apply(img, txt, scale, tile) + _InfClTiled.apply(txt, img, scale, tile))


def make_case(impl: str, b: int, d: int, device: str, dtype):
    """A zero-argument callable running forward+backward once."""
    from clipdistill import losses

    img = features(b, d, device, dtype, 0).requires_grad_()
    txt = features(b, d, device, dtype, 1).requires_grad_()
    t_img, t_txt = features(b, d, device, dtype, 2), features(b, d, device, dtype, 3)
    scale = torch.tensor(14.0, device=device)
    kd = impl.endswith("+kd")
    name = impl.removesuffix("+kd")
    if name == "open_clip":
        try:
            from open_clip.loss import ClipLoss, DistillClipLoss
        except ImportError:  # not installable on the device: the written-out equivalent
            ClipLoss = DistillClipLoss = None
        if ClipLoss is None:
            fn = (lambda: sum(naive_distill(img, txt, scale, t_img, t_txt, scale))) if kd else \
                 (lambda: naive_clip(img, txt, scale))
        else:
            fn = (lambda: sum(DistillClipLoss()(img, txt, scale, t_img, t_txt, scale))) if kd else \
                 (lambda: ClipLoss()(img, txt, scale))
    elif name == "inf_cl_tiled":
        fn = lambda: inf_cl_tiled(img, txt, scale)  # noqa: E731
    else:  # ours: triton, torch (chunked), naive
        fn = (lambda: sum(losses.contrastive_kd_loss(img, txt, scale, t_img, t_txt, scale, backend=name))) if kd \
            else (lambda: losses.contrastive_loss(img, txt, scale, backend=name))

    def step():
        img.grad = txt.grad = None
        fn().backward()

    return step, (img, txt, t_img, t_txt)


def flops(impl: str, b: int, d: int) -> int:
    return (12 if impl.endswith("+kd") else 8) * b * b * d


def time_cuda(impl, b, d, reps, dtype=torch.bfloat16) -> dict:
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    row = {"impl": impl, "B": b, "D": d, "dtype": str(dtype).removeprefix("torch."), "device": "cuda"}
    try:
        step, keep = make_case(impl, b, d, "cuda", dtype)
        inputs = torch.cuda.memory_allocated() - base
        step()  # compile / warm up
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(reps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        # extra = peak beyond the inputs and their gradients (2 of the 4 inputs get one)
        extra = torch.cuda.max_memory_allocated() - base - inputs - inputs // 2
        del step, keep
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        return {**row, "ms": None, "peak_extra_MB": None, "TFLOPs": None, "note": "OOM"}
    sec = statistics.median(times)
    return {**row, "ms": round(sec * 1e3, 3), "peak_extra_MB": round(extra / 2**20, 1),
            "TFLOPs": round(flops(impl, b, d) / sec / 1e12, 1)}


def run_one_cpu(impl: str, b: int, d: int, reps: int) -> dict:
    step, _ = make_case(impl, b, d, "cpu", torch.float32)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    times, cpu = [], []
    for _ in range(reps):
        u0, t0 = _cpu_seconds(), time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
        cpu.append(_cpu_seconds() - u0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    sec = statistics.median(times)
    return {"impl": impl, "B": b, "D": d, "dtype": "float32", "device": "cpu", "ms": round(sec * 1e3, 1),
            "cpu_ms": round(statistics.median(cpu) * 1e3, 1), "peak_extra_MB": round(peak / 2**20, 1),
            "TFLOPs": round(flops(impl, b, d) / sec / 1e12, 3)}


def _cpu_seconds() -> float:
    """User + system CPU time of this process (all threads): unlike wall time, it does not grow
    when other processes share the cores."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def subprocess_case(impl, b, d, reps) -> dict | None:
    cmd = [sys.executable, __file__, "--one", json.dumps([impl, b, d, reps])]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"  {impl} B={b}: failed: {proc.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def matmul_peak_tflops(n=8192) -> float:
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ a
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(20):
        a @ a
    end.record()
    torch.cuda.synchronize()
    return 2 * n**3 * 20 / (start.elapsed_time(end) / 1e3) / 1e12


def verdict(ok: bool, what: str) -> bool:
    print(f"{'PASS' if ok else 'FAIL'}  {what}", flush=True)
    return ok


# ------------------------------------------------------------------ GPU

def gpu_correctness() -> bool:
    """Triton vs the chunked torch path (fp32 accumulation) on the same inputs: losses and
    gradients, relative to the largest entry. Both gradients are rounded to the 16-bit
    format, so the limits are twice the float64 tests' (tests/test_loss_backends.py)."""
    from clipdistill import losses

    limits = {torch.float32: 2e-5, torch.bfloat16: 1.6e-2, torch.float16: 4e-3}
    ok = True
    for dtype, b, d in ((torch.bfloat16, 8192, 768), (torch.float16, 8192, 768), (torch.float32, 4097, 768)):
        for kd in (False, True):
            out = {}
            for backend in ("torch", "triton"):
                img = features(b, d, "cuda", dtype, 0).requires_grad_()
                txt = features(b, d, "cuda", dtype, 1).requires_grad_()
                if kd:
                    t_img, t_txt = features(b, 512, "cuda", dtype, 2), features(b, 512, "cuda", dtype, 3)
                    c, k = losses.contrastive_kd_loss(img, txt, 14.0, t_img, t_txt, 20.0, temperature=2.0,
                                                      backend=backend)
                    vals, total = (c, k), 0.6 * c + 1.7 * k
                else:
                    vals = (losses.contrastive_loss(img, txt, 14.0, backend=backend),)
                    total = 1.3 * vals[0]
                total.backward()
                out[backend] = [v.detach().double() for v in vals] + [img.grad.double(), txt.grad.double()]
            errs = [((x - y).abs().max() / y.abs().max().clamp_min(1e-30)).item()
                    for x, y in zip(out["triton"], out["torch"])]
            nloss = len(errs) - 2
            good = all(e <= 1e-5 for e in errs[:nloss]) and all(e <= limits[dtype] for e in errs[nloss:])
            ok &= verdict(good, f"correctness {'clip+kd' if kd else 'clip'} {str(dtype)[6:]} B={b} D={d}: "
                                f"rel err loss {max(errs[:nloss]):.1e}, grads {max(errs[nloss:]):.1e} "
                                f"(limit {limits[dtype]:.0e})")
    # deterministic: bit-identical gradients from two runs (no atomics)
    grads = []
    for _ in range(2):
        img = features(8192, 768, "cuda", torch.bfloat16, 0).requires_grad_()
        txt = features(8192, 768, "cuda", torch.bfloat16, 1).requires_grad_()
        losses.contrastive_loss(img, txt, 14.0, backend="triton").backward()
        grads.append(torch.cat([img.grad, txt.grad]))
    ok &= verdict(torch.equal(*grads), "deterministic backward (two runs bit-identical)")
    return ok


def gpu_main(args) -> list[dict]:
    torch.backends.cuda.matmul.allow_tf32 = False
    name = torch.cuda.get_device_name()
    peak = matmul_peak_tflops()
    print(f"device: {name}; measured bf16 matmul peak {peak:.0f} TFLOP/s", flush=True)
    t0 = time.time()
    correct = gpu_correctness()
    print(f"(correctness: {time.time() - t0:.0f} s)", flush=True)
    rows = []
    impls = ["triton", "torch", "naive", "open_clip", "inf_cl_tiled"]
    for b in args.gpu_batches:
        for impl in impls + [i + "+kd" for i in impls if i != "inf_cl_tiled"]:
            if impl.startswith(("naive", "open_clip")) and b > 32768:
                continue  # B² bf16 matrices: several × 8 GiB at 64k
            r = time_cuda(impl, b, 768, args.reps)
            r["pct_peak"] = None if r["TFLOPs"] is None else round(100 * r["TFLOPs"] / peak, 1)
            r["gpu"] = name
            rows.append(r)
            print(json.dumps(r), flush=True)
    print(f"\n{name}; bf16 matmul peak {peak:.0f} TFLOP/s (measured); D = 768, bf16, fwd+bwd\n")
    print("| impl | B | ms | peak extra MB | TFLOP/s | % peak |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['impl']} | {r['B']} | {r['ms']} | {r['peak_extra_MB']} | {r['TFLOPs']} | {r['pct_peak']} |")
    at = {(r["impl"], r["B"]): r for r in rows}
    clip, kd = at.get(("triton", 32768)), at.get(("triton+kd", 32768))
    print()
    verdict(correct, "correctness and determinism (above)")
    if clip and clip["ms"]:
        verdict(clip["ms"] <= GOAL_CLIP_MS, f"CLIP B=32k D=768 bf16: {clip['ms']:.2f} ms ≤ {GOAL_CLIP_MS} ms "
                                          f"({clip['pct_peak']}% of matmul peak; goal set for H200)")
        verdict(clip["peak_extra_MB"] <= GOAL_EXTRA_GB * 1024,
                f"extra memory at B=32k: {clip['peak_extra_MB']:.0f} MB ≤ {GOAL_EXTRA_GB * 1024:.0f} MB")
        if kd and kd["ms"]:
            verdict(kd["ms"] / clip["ms"] <= GOAL_KD_RATIO,
                    f"CLIP+KD / CLIP at B=32k: {kd['ms'] / clip['ms']:.2f}x ≤ {GOAL_KD_RATIO}x (floor 1.5x)")
    for b in args.gpu_batches:
        if (t := at.get(("triton", b))) and t["ms"]:
            others = {i: at[(i, b)]["ms"] for i in impls[1:] if (i, b) in at and at[(i, b)]["ms"]}
            print("  B=%d triton vs " % b + ", ".join(f"{i} {v / t['ms']:.2f}x" for i, v in others.items()))
    return rows


# ------------------------------------------------------------------ CPU

def cpu_main(args) -> list[dict]:
    os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))
    rows = []
    for b in args.cpu_batches:
        for impl in ("torch", "open_clip", "torch+kd", "open_clip+kd"):
            if (r := subprocess_case(impl, b, 512, args.reps)):
                rows.append(r)
                print(r, file=sys.stderr)
    print("| device | impl | B | D | dtype | wall ms (median) | CPU ms (median) | peak extra MB | TFLOP/s |\n"
          "|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['device']} | {r['impl']} | {r['B']} | {r['D']} | {r['dtype']} | {r['ms']} | {r['cpu_ms']} | "
              f"{r['peak_extra_MB']} | {r['TFLOPs']} |")
    cpu = {(r["impl"], r["B"]): r for r in rows}
    print("\nCPU ratios, ours / open_clip (lower is better; CPU time is robust to other load, wall is not):")
    for b in args.cpu_batches:
        for ours, theirs in (("torch", "open_clip"), ("torch+kd", "open_clip+kd")):
            if (ours, b) in cpu and (theirs, b) in cpu:
                o, t = cpu[(ours, b)], cpu[(theirs, b)]
                tr, wr = o["cpu_ms"] / t["cpu_ms"], o["ms"] / t["ms"]
                mr = o["peak_extra_MB"] / max(t["peak_extra_MB"], 1e-9)
                print(f"  B={b} {ours}: CPU time {tr:.2f}x (wall {wr:.2f}x), peak memory {mr:.3f}x")
                if ours == "torch+kd" and b == 8192:
                    verdict(tr <= GOAL_CPU_TIME and mr <= GOAL_CPU_MEM,
                            f"CPU CLIP+KD B=8k D=512: CPU time {tr:.2f}x ≤ {GOAL_CPU_TIME}x, "
                            f"peak memory {mr:.3f}x ≤ {GOAL_CPU_MEM:.3f}x of open_clip DistillClipLoss")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpu", action="store_true", help="GPU mode (CUDA only): correctness, then the GPU table")
    ap.add_argument("--reps", type=int, default=None, help="timed repetitions (default 3 CPU, 10 GPU)")
    ap.add_argument("--gpu-batches", type=int, nargs="+", default=[4096, 8192, 16384, 32768, 65536])
    ap.add_argument("--cpu-batches", type=int, nargs="+", default=[8192])
    ap.add_argument("--csv", type=Path, default=None)
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one_cpu(*json.loads(args.one))))
        return
    if args.gpu:
        if not torch.cuda.is_available():
            sys.exit("loss_kernels --gpu: no CUDA device")
        os.environ.pop("TRITON_INTERPRET", None)
        args.reps = args.reps or 10
        rows = gpu_main(args)
        csv_path = args.csv or Path("benchmarks/loss_kernels_gpu.csv")
    else:
        args.reps = args.reps or 3
        rows = cpu_main(args)
        csv_path = args.csv or Path("benchmarks/loss_kernels.csv")
    with open(csv_path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=sorted({k for r in rows for k in r}))
        w.writeheader()
        w.writerows(rows)


if __name__ == "__main__":
    main()
