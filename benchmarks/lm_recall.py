"""Can the study's tiny language model bind at all? Associative recall with no world in it:
`k1 v1 k2 v2 … kn vn SEP kq` → `vq` (keys and values from disjoint vocabularies), trained on
fresh random sequences with the LM config of params.yaml (`vqa.lm`) and `vqa.lm_pretrain`'s lr.
Answering a value present in the sequence scores 1/n; finding the queried key's value, 100 %.
This is the binding the VQA questions about one of several objects need (benchmarks/
vqa_held_out.md, "Reading vs finding").

    .venv/bin/python benchmarks/lm_recall.py [--pairs 4] [--steps 3000] [--schedule study] [--set lm.layers=4 ...]
"""
import argparse
import time
from pathlib import Path

import torch
import yaml
from param_sets import apply_sets
from transformers import LlamaConfig, LlamaForCausalLM

ap = argparse.ArgumentParser()
ap.add_argument("--pairs", type=int, default=4)
ap.add_argument("--steps", type=int, default=3000)
ap.add_argument("--batch", type=int, default=64)
ap.add_argument("--schedule", choices=["constant", "study"], default="constant",
                help="study: run_stage's warm-up (5 %) and cosine decay over --steps")
ap.add_argument("--set", action="append", default=[], help="vqa FIELD=VALUE (lm.*, lm_pretrain.lr)")
a = ap.parse_args()
vqa = apply_sets(yaml.safe_load(Path("params.yaml").read_text())["vqa"], a.set)
lm, lr = vqa["lm"], vqa["lm_pretrain"]["lr"]
torch.manual_seed(lm.get("seed", 0))
torch.set_num_threads(1)
KEYS = VALUES = 16
SEP = KEYS + VALUES
cfg = LlamaConfig(vocab_size=SEP + 1, hidden_size=lm["hidden_size"], intermediate_size=lm["intermediate_size"],
                  num_hidden_layers=lm["layers"], num_attention_heads=lm["heads"], num_key_value_heads=lm["heads"],
                  max_position_embeddings=4 * a.pairs + 8, tie_word_embeddings=False)
model = LlamaForCausalLM(cfg)
opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
if a.schedule == "study":
    from clipdistill.training.loop import warmup_cosine

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, a.steps, max(1, a.steps // 20)))


def batch(b: int):
    keys = torch.stack([torch.randperm(KEYS)[:a.pairs] for _ in range(b)])
    values = torch.randint(VALUES, (b, a.pairs)) + KEYS
    q = torch.randint(a.pairs, (b,))
    rows = torch.arange(b)
    x = torch.cat([torch.stack([keys, values], 2).view(b, -1), torch.full((b, 1), SEP), keys[rows, q][:, None]], 1)
    return x, values[rows, q]


t = time.time()
print(f"{lm['layers']} layers, width {lm['hidden_size']}, {lm['heads']} heads, lr {lr} ({a.schedule}); "
      f"{a.pairs} pairs: a value present in the sequence scores {100 / a.pairs:.0f} %", flush=True)
for step in range(a.steps + 1):
    x, y = batch(a.batch)
    loss = torch.nn.functional.cross_entropy(model(input_ids=x).logits[:, -1], y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    if a.schedule == "study":
        sched.step()
    if step % 500 == 0:
        with torch.no_grad():
            x, y = batch(1024)
            acc = (model(input_ids=x).logits[:, -1].argmax(1) == y).float().mean().item()
        print(f"step {step}: loss {loss.item():.3f}, recall {100 * acc:.1f} %, {time.time() - t:.0f} s", flush=True)
