"""What the VQA recipe can do before any tower is involved (issue 16): per question type, the
first answer word's accuracy on questions about one-object scenes (only reading) and about
scenes with several (the named object must be found first), for two stand-ins of a perfect
tower:

- `text`: the shared language model alone, the scene's caption written where the image goes
  (what `vqa.lm_pretrain` trains it on) — can the LM find the named object in words?
- `oracle`: a VLM trained by the recipe (`vqa.train.train_vlm`, params.yaml's `vqa` with
  --set overrides) on ideal tower tokens: every patch token inside an object's 3×3-grid cell
  holds its colour, shape and size one-hot, small noise elsewhere.

    .venv/bin/python benchmarks/vqa_ceiling.py WORLD --lm WORLD/lm-xxxx [--oracle TEACHER_DIR] [--set K=V]

WORLD is a folder with vqa_train/ and vqa_eval/ (scenes.json with row/col), e.g. one that
benchmarks/vqa_held_out.py made (with its LM and teachers). A tower is needed only for the
VLM's shape (patch grid and width); its features are never computed.
"""
import argparse
import json
import sys
from pathlib import Path

import torch
import yaml

import clipdistill.vqa.train as vqa_train
from param_sets import apply_sets
from clipdistill.data.splits import load_split
from clipdistill.data.world import COLORS, SHAPES, SIZES
from clipdistill.params import VQAParams
from clipdistill.vqa.language import load_language_dir
from clipdistill.vqa.model import collate, encode_conversation
from clipdistill.vqa.recipe import stage_examples

KINDS = {"color": "What color", "shape": "What shape", "position": "Where is"}


def ideal_tokens(scenes: list, grid: int, width: int, seed: int) -> torch.Tensor:
    """N×grid²×width: colour, shape, size one-hot and an object bit on every token of an object's cell."""
    if width < len(COLORS) + len(SHAPES) + len(SIZES) + 1:
        sys.exit(f"a tower of width {width} cannot hold the one-hot attributes")
    centre = ((torch.arange(grid) + 0.5) * 3 / grid).floor()
    feats = 0.05 * torch.randn(len(scenes), grid, grid, width, generator=torch.Generator().manual_seed(seed))
    for n, scene in enumerate(scenes):
        for o in scene:
            v = torch.zeros(width)
            v[COLORS.index(o["color"])] = v[len(COLORS) + SHAPES.index(o["shape"])] = 1
            v[len(COLORS) + len(SHAPES) + SIZES.index(o["size"])] = v[-1] = 1
            feats[n, (centre == o["row"]).nonzero()[:, None], (centre == o["col"]).nonzero()[None, :]] += v
    return feats.view(len(scenes), grid * grid, width)


@torch.no_grad()
def first_word_hits(model, tok, world: Path, n_image: int, context) -> dict:
    """{(kind, one|several): [hit, ...]}: the greedy first answer token against the canonical
    answer's, for each eval question of a KINDS type; `context(i, prompt)` gives the prompt and
    the model inputs for image i."""
    scenes = json.loads((world / "vqa_eval" / "scenes.json").read_text())
    _, qa = stage_examples(world / "vqa_eval")
    hits = {}
    model.eval()
    for i, turns in qa:
        for prompt, ans in turns:
            kind = next((k for k, s in KINDS.items() if prompt.startswith(s)), None)
            if kind is None:
                continue
            text, extra = context(i, prompt)
            ids, labels = encode_conversation(tok, n_image, [(text, ans)], image=n_image > 0)
            x, attn, _ = collate([(ids, labels)], tok.pad_token_id, left=False)
            logits = model(input_ids=x, attention_mask=attn, **extra).logits
            first = next(k for k, lab in enumerate(labels) if lab != -100)
            side = "one" if len(scenes[i]) == 1 else "several"
            hits.setdefault((kind, side), []).append(logits[0, first - 1].argmax().item() == ids[first])
    return hits


def summary(hits: dict) -> dict:
    return {f"{k}/{s}": {"accuracy": round(100 * sum(v) / len(v), 1), "n": len(v)} for (k, s), v in sorted(hits.items())}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("world", type=Path)
    ap.add_argument("--lm", type=Path, required=True, help="the shared LM directory (clipdistill vqa lm)")
    ap.add_argument("--oracle", type=Path, help="a teacher directory whose shape the oracle VLM takes")
    ap.add_argument("--set", action="append", default=[], help="vqa FIELD=VALUE for the oracle VLM")
    a = ap.parse_args()
    torch.set_num_threads(1)
    lm, tok = load_language_dir(a.lm)
    captions, _ = stage_examples(a.world / "vqa_eval")
    caption = {i: turns[0][1] for i, turns in captions}
    out = {"text": summary(first_word_hits(lm, tok, a.world, 0, lambda i, p: (f"{caption[i]} . {p}", {})))}
    print("text  ", out["text"], flush=True)
    if a.oracle:
        from clipdistill.export.hf import to_hf
        from clipdistill.models import load_model_dir

        tower = to_hf(load_model_dir(a.oracle))
        cfg = tower[0].config
        grid = cfg.image_size // cfg.patch_size
        scenes = {s: json.loads((a.world / s / "scenes.json").read_text()) for s in ("vqa_train", "vqa_eval")}
        feats = {s: ideal_tokens(v, grid, cfg.hidden_size, k) for k, (s, v) in enumerate(scenes.items())}
        vqa_train.split_features = lambda vlm, images, processor, blind, runtime=None, batch_size=256: feats["vqa_train"]
        vqa = apply_sets(yaml.safe_load(Path("params.yaml").read_text())["vqa"], a.set)
        vlm, vtok, _, _ = vqa_train.train_vlm(tower, a.world / "vqa_train", load_split(a.world / "vqa_train"),
                                              VQAParams.model_validate(vqa), language=(lm, tok))
        out["oracle"] = summary(first_word_hits(
            vlm, vtok, a.world, grid * grid,
            lambda i, p: (p, {"mm_encoder_outputs": vqa_train.image_inputs(vlm, feats["vqa_eval"][[i]])})))
        print("oracle", out["oracle"], flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
