"""Issue 18: is an object's shape visible at all in this world, and can a tower learn it when
asked directly? Supervised ceilings on the default world's pixels (never a held-out variant).

    nice .venv/bin/python benchmarks/shape_ceiling.py --name NAME [--data '{"object_scale": 1.15}'] \
        [--train 1500] [--eval 500] [--tower cd-teacher-m --tower-steps 300] [--csv benchmarks/shape_ceiling.csv]

Crops: each object's grid cell (side ⌊image/3⌋ px) → its shape (8 classes, chance 12.5 %), scored
per object size on fresh images:
  * `logistic_pixels`: multinomial logistic regression on the crop's raw pixels;
  * `cnn`: a 3-layer conv net (3×3 convs, global max pool: translation-tolerant) trained on the crops;
  * `tower` (with --tower ARCH): the model config's vision tower, randomly initialised, trained end
    to end with a linear head on the **cell probe's features** (the mean of the layer −2 patch tokens
    whose centres fall in the object's cell, `vqa/diagnostics.cell_tokens`) for --tower-steps steps
    of 64 images: what this tower can represent about shape when the loss asks for it (the
    contrastive loss's best case), read exactly where the VLM's probe reads it.
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

from clipdistill.data import synth
from clipdistill.data.splits import load_split
from clipdistill.data.world import SHAPES, SIZES
from clipdistill.io import read_json
from clipdistill.models.clip import create_model, preprocess_cfg, preprocess_images
from clipdistill.params import DataParams
from clipdistill.vqa.diagnostics import cell_tokens, fit_logistic


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def images_and_scenes(params: DataParams, name: str, root: Path):
    synth.synthesize(params, name, root / name)
    split = load_split(root / name)
    return split.images[list(range(len(split.images)))], read_json(root / name / "scenes.json")


def crops(images: torch.Tensor, scenes: list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(N×3×c×c crops in [0, 1], shape ids, size ids), one per object: its grid cell."""
    side = images.shape[-1]
    c = side // 3
    xs, shape, size = [], [], []
    for img, scene in zip(images, scenes):
        for o in scene:
            top, left = round(o["row"] * side / 3), round(o["col"] * side / 3)
            xs.append(img[:, top:top + c, left:left + c].float() / 255)
            shape.append(SHAPES.index(o["shape"]))
            size.append(SIZES.index(o["size"]))
    return torch.stack(xs), torch.tensor(shape), torch.tensor(size)


def per_size(pred: torch.Tensor, y: torch.Tensor, size: torch.Tensor) -> dict:
    return {f"{s}": round(100 * (pred[size == i] == y[size == i]).float().mean().item(), 1)
            for i, s in enumerate(SIZES)}


def logistic_pixels(tr, ev) -> dict:
    predict = fit_logistic(tr[0].flatten(1), tr[1], len(SHAPES))
    return per_size(predict(ev[0].flatten(1)), ev[1], ev[2])


def train_loop(model, params, batches, steps: int, lr: float):
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    for step in range(steps):
        loss = batches(step)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return loss.item()


def cnn(tr, ev, steps: int) -> dict:
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(32, 64, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(64, 64, 3, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveMaxPool2d(1), torch.nn.Flatten(), torch.nn.Linear(64, len(SHAPES)))
    g = torch.Generator().manual_seed(0)

    def batch(_):
        idx = torch.randint(len(tr[0]), (128,), generator=g)
        return F.cross_entropy(net(tr[0][idx]), tr[1][idx])

    train_loop(net, net.parameters(), batch, steps, 3e-3)
    with torch.no_grad():
        pred = net(ev[0]).argmax(1)
    return per_size(pred, ev[1], ev[2])


def tower(arch: str, tr_img, tr_sc, ev_img, ev_sc, steps: int, lr: float) -> dict:
    model = create_model(arch, 0)
    visual, pre = model.visual, preprocess_cfg(model)
    layers = len(visual.transformer.resblocks)
    head = torch.nn.Linear(visual.transformer.width, len(SHAPES))

    def features(imgs, scenes):
        tok = visual.forward_intermediates(preprocess_images(imgs, pre), indices=[max(0, layers - 2)],
                                           intermediates_only=True, output_fmt="NLC")["image_intermediates"][0]
        x, objs = cell_tokens(tok, scenes)
        return x, torch.tensor([SHAPES.index(o["shape"]) for o in objs]), \
            torch.tensor([SIZES.index(o["size"]) for o in objs])

    g = torch.Generator().manual_seed(0)

    def batch(_):
        idx = torch.randint(len(tr_img), (64,), generator=g).tolist()
        x, y, _s = features(tr_img[idx], [tr_sc[i] for i in idx])
        return F.cross_entropy(head(x), y)

    loss = train_loop(visual, list(visual.parameters()) + list(head.parameters()), batch, steps, lr)
    visual.eval()
    with torch.no_grad():
        x, y, s = features(ev_img, ev_sc)
    return {**per_size(head(x).argmax(1), y, s), "loss": round(loss, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--name", required=True)
    ap.add_argument("--data", default="{}", help="JSON data params (besides splits)")
    ap.add_argument("--train", type=int, default=1500, help="training images")
    ap.add_argument("--eval", type=int, default=500, help="scored images")
    ap.add_argument("--cnn-steps", type=int, default=600)
    ap.add_argument("--tower", help="model config whose vision tower is trained supervised (see doc)")
    ap.add_argument("--tower-steps", type=int, default=300)
    ap.add_argument("--tower-lr", type=float, default=2e-3)
    ap.add_argument("--skip-pixels", action="store_true")
    ap.add_argument("--csv", type=Path, default=Path("benchmarks/shape_ceiling.csv"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    data = json.loads(args.data)
    params = DataParams.model_validate({**data, "splits": {
        "pretrain": {"size": 1}, "distill": {"size": 1}, "vqa_train": {"size": args.train},
        "vqa_eval": {"size": args.eval}, "clip_eval": {"size": 1}}})
    t0, c0 = time.time(), cpu_s()
    with tempfile.TemporaryDirectory() as tmp:
        tr_img, tr_sc = images_and_scenes(params, "vqa_train", Path(tmp))
        ev_img, ev_sc = images_and_scenes(params, "vqa_eval", Path(tmp))
    tr, ev = crops(tr_img, tr_sc), crops(ev_img, ev_sc)
    row = {"name": args.name, "data": args.data, "image_size": params.image_size, "crop_px": tr[0].shape[-1],
           "train_objects": len(tr[1]), "eval_objects": len(ev[1])}
    if not args.skip_pixels:
        lp = logistic_pixels(tr, ev)
        row |= {"logistic_small": lp["small"], "logistic_large": lp["large"]}
        cn = cnn(tr, ev, args.cnn_steps)
        row |= {"cnn_steps": args.cnn_steps, "cnn_small": cn["small"], "cnn_large": cn["large"]}
    if args.tower:
        c1 = cpu_s()
        tw = tower(args.tower, tr_img, tr_sc, ev_img, ev_sc, args.tower_steps, args.tower_lr)
        row |= {"tower": args.tower, "tower_steps": args.tower_steps, "tower_lr": args.tower_lr,
                "tower_small": tw["small"], "tower_large": tw["large"], "tower_loss": tw["loss"],
                "tower_core_s": round(cpu_s() - c1)}
    row |= {"core_s": round(cpu_s() - c0), "wall_s": round(time.time() - t0)}
    print(json.dumps(row))
    new = not args.csv.exists()
    with args.csv.open("a", newline="") as fh:
        fields = ["name", "data", "image_size", "crop_px", "train_objects", "eval_objects", "logistic_small",
                  "logistic_large", "cnn_steps", "cnn_small", "cnn_large", "tower", "tower_steps", "tower_lr",
                  "tower_small", "tower_large", "tower_loss", "tower_core_s", "core_s", "wall_s"]
        w = csv.DictWriter(fh, fieldnames=fields)
        if new:
            w.writeheader()
        w.writerow(row)


if __name__ == "__main__":
    main()
