"""Memory at scale: peak RSS of `features extract` and `distill` on generated 64 px open_clip
CSV datasets of two sizes, with the split above `runtime.in_memory_max_mb` (read lazily), and
images/s of each.

Each size gets its own temporary project: N generated JPEGs + pairs.csv, imported as the
`distill` split (`data prepare`), an untrained cd-teacher-s (weights do not change cost), then
the two stage commands as subprocesses. Distillation runs a fixed number of steps
(`distill.train.max_steps`), so its RSS measures dataset-size scaling, not run time. Peak RSS
is sampled from /proc every 50 ms over the command's process tree (DataLoader workers
included; shared pages are counted once per process, so it overstates) and, for the main
process alone, taken from wait4's ru_maxrss.

    nice .venv/bin/python benchmarks/data_scale.py [--sizes 20000 100000] [--steps 20] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
CLI = [str(Path(sys.executable).with_name("clipdistill"))]
WORDS = ["red", "green", "blue", "yellow", "circle", "square", "triangle", "small", "large", "left", "right"]


def make_images(root: Path, n: int, seed: int = 0) -> Path:
    """n 64 px JPEGs (a colour field and a box: fast to encode, small on disk) + pairs.csv."""
    rng = np.random.default_rng(seed)
    lines = ["filepath\ttitle"]
    for i in range(n):
        folder = root / "img" / f"{i // 10_000:02d}"
        if i % 10_000 == 0:
            folder.mkdir(parents=True, exist_ok=True)
        a = np.empty((64, 64, 3), np.uint8)
        a[:] = rng.integers(0, 256, 3, dtype=np.uint8)
        y, x = rng.integers(0, 48, 2)
        a[y:y + 16, x:x + 16] = rng.integers(0, 256, 3, dtype=np.uint8)
        name = f"img/{i // 10_000:02d}/{i:06d}.jpg"
        Image.fromarray(a).save(root / name, quality=90)
        lines.append(f"{name}\ta {' '.join(rng.choice(WORDS, 4))}")
    (root / "pairs.csv").write_text("\n".join(lines) + "\n")
    return root / "pairs.csv"


def params_file(root: Path, csv: Path, steps: int, workers: int, threshold_mb: int) -> Path:
    p = yaml.safe_load((REPO / "configs" / "smoke.yaml").read_text())
    p["data"]["splits"]["distill"] = {"format": "csv", "path": str(csv), "image_root": str(csv.parent),
                                      "image_size": 64}
    p["features"] = {"dtype": "float16", "patch_tokens": False, "batch_size": 256,
                     "shard_size": 4096}
    p["distill"]["methods"]["kd"] = {"clip": 1, "crd": 1}  # the smoke grid's own names stay valid
    p["distill"]["train"] = {**p["distill"].get("train", {}), "epochs": 1, "batch_size": 128, "max_steps": steps,
                             "checkpoint_every": 10_000}
    p["runtime"] = {"device": "cpu", "in_memory_max_mb": threshold_mb, "loader_workers": workers}
    (root / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    return root / "params.yaml"


def make_teacher(out: Path) -> Path:
    from clipdistill.data.splits import Split
    from clipdistill.models.clip import create_model, word_tokenizer_for
    from clipdistill.params import TeacherParams
    from clipdistill.teachers.train import save_pipeline_teacher

    spec = TeacherParams(arch="cd-teacher-s", epochs=1)
    save_pipeline_teacher(out, "s", spec, Split(None, [], source="untrained"), create_model(spec.arch, 0),
                          word_tokenizer_for(spec.arch), [])
    return out


def _tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                todo += [int(c) for c in Path(f"/proc/{p}/task/{task}/children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            pass
    return out


def _rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def measure(cmd: list[str], log: Path) -> dict:
    """Run `cmd` niced; wall seconds, peak RSS (MiB) of its process tree and of the main process."""
    peak = [0]
    with open(log, "w") as fh:
        t0 = time.perf_counter()
        proc = subprocess.Popen(["nice", "-n", "10", *cmd], stdout=fh, stderr=subprocess.STDOUT)
        done = threading.Event()

        def sample():
            while not done.wait(0.05):
                peak[0] = max(peak[0], sum(_rss_kb(p) for p in _tree(proc.pid)))

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        done.set()
        thread.join()
    if status != 0:
        raise SystemExit(f"{' '.join(cmd)} failed; see {log}:\n{log.read_text()[-2000:]}")
    return {"wall_s": wall, "tree_mb": peak[0] / 1024, "main_mb": usage.ru_maxrss / 1024}


def run_size(n: int, steps: int, workers: int, threshold_mb: int, keep: Path | None) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"data_scale_{n}_", dir=keep) as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        csv = make_images(root / "raw", n)
        gen_s = time.perf_counter() - t0
        params = params_file(root, csv, steps, workers, threshold_mb)
        teacher = make_teacher(root / "teacher")
        data = root / "data"
        prep = measure([*CLI, "data", "prepare", "--split", "distill", "--out", str(data / "distill"),
                        "--params", str(params)], root / "prepare.log")
        feats = measure([*CLI, "features", "extract", "--teacher", str(teacher), "--data", str(data / "distill"),
                         "--out", str(root / "features"), "--params", str(params)], root / "features.log")
        dist = measure([*CLI, "distill", "--student", "xs", "--method", "kd", "--seed", "0",
                        "--data", str(data / "distill"), "--out", str(root / "student"), "--teacher-name", "s",
                        "--teacher", str(teacher), "--features", str(root / "features"), "--params", str(params)],
                       root / "distill.log")
    return {"n": n, "gen_s": gen_s, "prepare": prep, "features": feats, "distill": dist,
            "features_ips": n / feats["wall_s"], "distill_ips": steps * 128 / dist["wall_s"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs=2, default=[20_000, 100_000])
    ap.add_argument("--steps", type=int, default=20, help="distillation steps (batch 128)")
    ap.add_argument("--workers", type=int, default=2, help="runtime.loader_workers")
    ap.add_argument("--threshold-mb", type=int, default=64, help="runtime.in_memory_max_mb (both sizes above it)")
    ap.add_argument("--tmp", type=Path, default=None, help="where the temporary datasets go")
    args = ap.parse_args()
    rows = []
    for n in args.sizes:
        rows.append(run_size(n, args.steps, args.workers, args.threshold_mb, args.tmp))
        r = rows[-1]
        print(f"# {n}: generated in {r['gen_s']:.0f} s, prepared in {r['prepare']['wall_s']:.0f} s", flush=True)
    print(f"\nworkers {args.workers}, in_memory_max_mb {args.threshold_mb}, distill {args.steps} steps x 128\n")
    print("| images | stage | wall s | images/s | peak RSS tree MiB | peak RSS main MiB |")
    print("|---:|---|---:|---:|---:|---:|")
    for r in rows:
        for stage in ("features", "distill"):
            m = r[stage]
            print(f"| {r['n']} | {stage} | {m['wall_s']:.1f} | {r[stage + '_ips']:.0f} | {m['tree_mb']:.0f} | "
                  f"{m['main_mb']:.0f} |")
    small, big = rows
    ok = True
    for stage in ("features", "distill"):
        for key in ("tree_mb", "main_mb"):
            ratio = big[stage][key] / small[stage][key]
            ok &= ratio <= 1.2
            print(f"RSS({big['n']}) / RSS({small['n']}) {stage} {key.split('_')[0]}: {ratio:.3f} (limit 1.2)")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
