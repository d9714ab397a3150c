"""Fast proxies for issue 18 (a world where the encoder matters): train one teacher on a small
pretrain split of the default world (or the `dev` variant) and measure what its tower can tell.

    nice .venv/bin/python benchmarks/world_headroom.py --name NAME [--arch cd-teacher-m] \
        [--epochs 8] [--pretrain 3000] [--data '{"caption_position_rate": 1}'] [--group 4] \
        [--dev] [--csv benchmarks/world_headroom.csv] \
        [--local-weight 4 --local-layer -2 --local-phrase object|object_position|shape --local-scale S]

Reported: zero-shot top-1 on the eval split (largest shape / colour / count), and linear probes
on the layer −2 patch tokens (what the VLM reads): per object cell → shape, colour (as
`vqa/diagnostics.py`), and `position`: mean-pooled tokens → is each of the 9 cells occupied
(mean accuracy over cells; chance ≈ 0.5–0.7). Probes train on 800 images, score on 400.
Also (2026-12-07): the same linear cell probe on the **last** block (`last_*`), a linear probe on
the image embedding → the largest object's shape (`embed_largest_shape`), the region embedding's
zero-shot shape among its own size + colour's 8 phrases (`region_zs_shape`), and a one-hidden-layer
probe on the layer −2 cell means (`mlp_shape_*`). `--local-*`: the teacher's region–phrase term.
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
import torch.nn.functional as F

from clipdistill.data import synth, variants
from clipdistill.data.splits import load_split
from clipdistill.data.world import SHAPES, SIZES
from clipdistill.evaluate.clip_eval import encode, evaluate_clip, patch_tokens
from clipdistill.io import read_json
from clipdistill.losses.region import batch_regions, cell_means, object_phrase
from clipdistill.models.clip import load_model_dir
from clipdistill.params import DataParams, EvalParams, TeacherParams
from clipdistill.teachers.train import save_pipeline_teacher, train_teacher
from clipdistill.vqa.diagnostics import _probe, cell_probe, cell_tokens, fit_logistic

FIELDS = ["name", "arch", "epochs", "lr", "pretrain", "group", "data", "probe_world", "steps", "zs_shape", "zs_color",
          "zs_count", "probe_shape", "probe_color", "probe_position", "final_loss", "train_s", "total_s",
          # added 2026-12-07 (earlier rows leave them empty)
          "warmup_frac", "shape_rate", "probe_shape_small", "probe_shape_large", "train_core_s", "core_s",
          # added 2026-12-07 (b): the region–phrase term, and probes of the last block / the image embedding
          "local_weight", "local_layer", "local_phrase", "final_clip_loss", "final_local_loss",
          "last_shape_small", "last_shape_large", "last_color", "embed_largest_shape", "region_zs_shape",
          "local_scale", "mlp_shape_small", "mlp_shape_large"]


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


def embed_probe(bundle, tr, ev, tr_dir: Path, ev_dir: Path) -> float:
    """Linear probe on the normalised image embedding (what the CLIP loss sees) → the largest
    object's shape (the zero-shot label), accuracy %."""
    et, ee = encode(bundle, tr, 256)[0], encode(bundle, ev, 256)[0]
    labels = [read_json(d / "labels.json")["label_sets"]["largest_shape"]["labels"] for d in (tr_dir, ev_dir)]
    keep = [[i for i, v in enumerate(ls) if v >= 0] for ls in labels]  # -1: no single largest object
    return _probe(et[keep[0]], [str(labels[0][i]) for i in keep[0]],
                  ee[keep[1]], [str(labels[1][i]) for i in keep[1]])["accuracy"]


@torch.no_grad()
def region_zeroshot_shape(bundle, feats: torch.Tensor, scenes: list) -> float:
    """Each object's region embedding (its cell's layer −2 tokens → ln_post → proj, as the
    region–phrase term makes it) against the 8 phrases of its own size and colour, one per shape:
    top-1 shape accuracy % (chance 12.5)."""
    visual, model = bundle.model.visual, bundle.model
    image, cell, _, _ = batch_regions(scenes)
    regions = F.normalize(visual.ln_post(cell_means(feats)[image, cell]) @ visual.proj, dim=-1)
    objs = [o for s in scenes for o in s]
    kinds = sorted({(o["size"], o["color"]) for o in objs})
    texts = {k: model.encode_text(bundle.tokenizer([object_phrase({"size": k[0], "color": k[1], "shape": s})
                                                    for s in SHAPES]), normalize=True) for k in kinds}
    hits = sum(int((texts[o["size"], o["color"]] @ r).argmax()) == SHAPES.index(o["shape"])
               for o, r in zip(objs, regions))
    return 100 * hits / len(objs)


def mlp_shape_probe(tr_feats, tr_scenes, ev_feats, ev_scenes, steps: int = 1500) -> dict[str, float]:
    """A one-hidden-layer probe (256 GELU units, AdamW, standardised inputs) on the same cell means
    → shape, % per object size: whether the cells hold shape in a form a linear probe cannot read
    (e.g. as colour × shape conjunctions); the VLM's projector is an MLP."""
    xt, ot = cell_tokens(tr_feats, tr_scenes)
    xe, oe = cell_tokens(ev_feats, ev_scenes)
    yt = torch.tensor([SHAPES.index(o["shape"]) for o in ot])
    mean, std = xt.mean(0), xt.std(0).clamp_min(1e-6)
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(xt.shape[1], 256), torch.nn.GELU(), torch.nn.Linear(256, len(SHAPES)))
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-2)
    for _ in range(steps):
        idx = torch.randint(len(xt), (256,), generator=gen)
        loss = F.cross_entropy(net((xt[idx] - mean) / std), yt[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        hit = net((xe - mean) / std).argmax(1) == torch.tensor([SHAPES.index(o["shape"]) for o in oe])
    size = [o["size"] for o in oe]
    return {s: 100 * hit[torch.tensor([z == s for z in size])].double().mean().item() for s in SIZES}


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
    ap.add_argument("--local-weight", type=float, default=0.0, help="teacher local_weight (region–phrase term)")
    ap.add_argument("--local-layer", type=int, default=-2)
    ap.add_argument("--local-phrase", default="object", help="teacher local_phrase: object | object_position | shape")
    ap.add_argument("--local-scale", type=float, help="teacher local_logit_scale (unset: the learned CLIP scale)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1, as the pipeline's stages)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    t0, c0 = time.time(), core_s()
    with tempfile.TemporaryDirectory() as tmp:
        root = make_data(Path(tmp), json.loads(args.data), args.pretrain, args.group, args.dev, args.shape_rate)
        spec = TeacherParams(arch=args.arch, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                             warmup_frac=args.warmup_frac, local_weight=args.local_weight,
                             local_layer=args.local_layer, local_phrase=args.local_phrase,
                             local_logit_scale=args.local_scale)
        pre = load_split(root / "pretrain")
        c1 = core_s()
        model, tok, log = train_teacher(spec, pre, show_progress=False, group=args.group,
                                        scenes=read_json(root / "pretrain" / "scenes.json"))
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
        lt, le = patch_tokens(bundle, tr, 256, layer=-1), patch_tokens(bundle, ev, 256, layer=-1)
        last_size, last_cell = shape_by_size(lt, st, le, se), cell_probe(lt, st, le, se)
        row = {"name": args.name, "arch": args.arch, "epochs": args.epochs, "lr": args.lr, "pretrain": args.pretrain,
               "group": args.group, "shape_rate": args.shape_rate, "data": args.data, "probe_world": "dev" if args.dev else "default",
               "steps": len(log), "zs_shape": zs["largest_shape"]["top1"], "zs_color": zs["largest_color"]["top1"],
               "zs_count": zs["object_count"]["top1"], "probe_shape": cell["shape"]["accuracy"],
               "probe_color": cell["color"]["accuracy"], "probe_position": occupancy_probe(ft, st, fe, se),
               "final_loss": log[-1]["loss"], "train_s": round(train_s), "total_s": round(time.time() - t0),
               "warmup_frac": args.warmup_frac, "probe_shape_small": by_size["small"],
               "probe_shape_large": by_size["large"], "train_core_s": round(train_core_s),
               "local_weight": args.local_weight, "local_layer": args.local_layer,
               "local_phrase": args.local_phrase, "local_scale": args.local_scale,
               "final_clip_loss": log[-1].get("clip_loss", log[-1]["loss"]), "final_local_loss": log[-1].get("local_loss"),
               "last_shape_small": last_size["small"], "last_shape_large": last_size["large"],
               "last_color": last_cell["color"]["accuracy"],
               "embed_largest_shape": embed_probe(bundle, tr, ev, root / "vqa_train", root / "vqa_eval"),
               "region_zs_shape": region_zeroshot_shape(bundle, fe, se),
               **{f"mlp_shape_{k}": v for k, v in mlp_shape_probe(ft, st, fe, se).items()},
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
