"""Fast proxies for issue 18 (a world where the encoder matters): train one teacher on a small
pretrain split of the default world (or the `dev` variant) and measure what its tower can tell.

    nice .venv/bin/python benchmarks/world_headroom.py --name NAME [--arch cd-teacher-m] \
        [--epochs 8] [--pretrain 3000] [--data '{"caption_position_rate": 1}'] [--group 4] \
        [--dev] [--csv benchmarks/world_headroom.csv]

Reported: zero-shot top-1 on the eval split (largest shape / colour / count), and linear probes
on the layer −2 patch tokens (what the VLM reads): per object cell → shape, colour (as
`vqa/diagnostics.py`), and `position`: mean-pooled tokens → is each of the 9 cells occupied
(mean accuracy over cells; chance ≈ 0.5–0.7). Probes train on 800 images, score on 400.
Never pass a held-out variant: `--dev` is the only variant allowed here.
"""

from __future__ import annotations

import argparse
import csv
import json
import resource
import tempfile
import time
from pathlib import Path

import torch

from clipdistill.data import synth, variants
from clipdistill.data.splits import load_split
from clipdistill.data.world import SHAPES, SIZES
from clipdistill.evaluate.clip_eval import evaluate_clip, patch_tokens
from clipdistill.io import read_json
from clipdistill.models.clip import load_model_dir
from clipdistill.params import DataParams, EvalParams, TeacherParams
from clipdistill.teachers.train import save_pipeline_teacher, train_teacher
from clipdistill.vqa.diagnostics import _probe, cell_probe, cell_tokens, fit_logistic

FIELDS = ["name", "arch", "epochs", "lr", "pretrain", "group", "data", "probe_world", "steps", "zs_shape", "zs_color",
          "zs_count", "probe_shape", "probe_color", "probe_position", "final_loss", "train_s", "total_s",
          # added 2026-12-07 (earlier rows leave them empty)
          "warmup_frac", "shape_rate", "probe_shape_small", "probe_shape_large", "train_core_s", "core_s"]


def core_s() -> float:
    """CPU seconds this process has used (user + system): comparable on a shared machine."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def shape_by_size(tr_feats, tr_scenes, ev_feats, ev_scenes) -> dict[str, float]:
    """The cell probe's shape accuracy (%), scored separately on small and large objects."""
    xt, ot = cell_tokens(tr_feats, tr_scenes)
    xe, oe = cell_tokens(ev_feats, ev_scenes)
    predict = fit_logistic(xt, torch.tensor([SHAPES.index(o["shape"]) for o in ot]), len(SHAPES))
    hit = predict(xe) == torch.tensor([SHAPES.index(o["shape"]) for o in oe])
    size = [o["size"] for o in oe]
    return {s: 100 * hit[torch.tensor([z == s for z in size])].double().mean().item() for s in SIZES}


def occupancy_probe(tr_feats, tr_scenes, ev_feats, ev_scenes) -> float:
    """Mean over the 9 cells of a pooled-token probe's accuracy at 'is this cell occupied'."""
    occ = lambda scenes, c: [str(any(o["row"] * 3 + o["col"] == c for o in s)) for s in scenes]  # noqa: E731
    xt, xe = tr_feats.mean(1), ev_feats.mean(1)
    accs = [r["accuracy"] for c in range(9)
            if (r := _probe(xt, occ(tr_scenes, c), xe, occ(ev_scenes, c)))["estimable"]]
    return sum(accs) / len(accs)


def make_data(root: Path, data: dict, pretrain: int, group: int, dev: bool, shape_rate: float = 0.5) -> Path:
    splits = {"pretrain": {"size": pretrain, "hard_negatives": group, "hard_negative_shape_rate": shape_rate},
              "distill": {"size": 1},
              "vqa_train": {"size": 800}, "vqa_eval": {"size": 400}, "clip_eval": {"size": 400}}
    params = DataParams.model_validate({**data, "splits": splits})
    if dev:  # the dev variant's images for the probes (the teacher still pretrains on the default world)
        v = variants.VARIANTS[variants.DEV]
        for name in ("vqa_train", "vqa_eval"):
            variants.synth_variant(v, name, splits[name]["size"], root / name)
    for name in ("pretrain", "clip_eval") if dev else ("pretrain", "vqa_train", "vqa_eval", "clip_eval"):
        synth.synthesize(params, name, root / name)
    return root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--name", required=True)
    ap.add_argument("--arch", default="cd-teacher-m")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup-frac", type=float, default=0.1)
    ap.add_argument("--pretrain", type=int, default=3000)
    ap.add_argument("--group", type=int, default=1, help="pretrain hard_negatives")
    ap.add_argument("--shape-rate", type=float, default=0.5, help="pretrain hard_negative_shape_rate")
    ap.add_argument("--data", default="{}", help="JSON data params (besides splits)")
    ap.add_argument("--dev", action="store_true", help="probe on the dev variant's images")
    ap.add_argument("--csv", type=Path, default=Path("benchmarks/world_headroom.csv"))
    ap.add_argument("--keep", type=Path, help="save the teacher here")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1, as the pipeline's stages)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    t0, c0 = time.time(), core_s()
    with tempfile.TemporaryDirectory() as tmp:
        root = make_data(Path(tmp), json.loads(args.data), args.pretrain, args.group, args.dev, args.shape_rate)
        spec = TeacherParams(arch=args.arch, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                             warmup_frac=args.warmup_frac)
        pre = load_split(root / "pretrain")
        c1 = core_s()
        model, tok, log = train_teacher(spec, pre, show_progress=False, group=args.group)
        save_pipeline_teacher(args.keep or Path(tmp) / "teacher", args.name, spec, pre, model, tok, log)
        train_core_s = core_s() - c1
        bundle = load_model_dir(args.keep or Path(tmp) / "teacher")
        train_s = time.time() - t0
        zs = evaluate_clip(bundle, load_split(root / "clip_eval"), EvalParams())["zeroshot"]
        tr, ev = load_split(root / "vqa_train"), load_split(root / "vqa_eval")
        ft, fe = patch_tokens(bundle, tr, 256), patch_tokens(bundle, ev, 256)
        st, se = read_json(root / "vqa_train" / "scenes.json"), read_json(root / "vqa_eval" / "scenes.json")
        cell = cell_probe(ft, st, fe, se)
        by_size = shape_by_size(ft, st, fe, se)
        row = {"name": args.name, "arch": args.arch, "epochs": args.epochs, "lr": args.lr, "pretrain": args.pretrain,
               "group": args.group, "shape_rate": args.shape_rate, "data": args.data, "probe_world": "dev" if args.dev else "default",
               "steps": len(log), "zs_shape": zs["largest_shape"]["top1"], "zs_color": zs["largest_color"]["top1"],
               "zs_count": zs["object_count"]["top1"], "probe_shape": cell["shape"]["accuracy"],
               "probe_color": cell["color"]["accuracy"], "probe_position": occupancy_probe(ft, st, fe, se),
               "final_loss": log[-1]["loss"], "train_s": round(train_s), "total_s": round(time.time() - t0),
               "warmup_frac": args.warmup_frac, "probe_shape_small": by_size["small"],
               "probe_shape_large": by_size["large"], "train_core_s": round(train_core_s),
               "core_s": round(core_s() - c0)}
    row = {k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}
    print(json.dumps(row))
    new = not args.csv.exists()
    with args.csv.open("a", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=FIELDS)
        if new:
            w.writeheader()
        w.writerow(row)


if __name__ == "__main__":
    main()
