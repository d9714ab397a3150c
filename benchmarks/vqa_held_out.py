"""The VQA instrument on a held-out world variant (issue 16): world -> pipeline teacher -> the
shared LM -> VLMs on the teacher and on the blind (grey) image, with the default `vqa` params
of params.yaml (or --set overrides) -> accuracy per question type and the diagnostics.

    .venv/bin/python benchmarks/vqa_held_out.py single_yesno --sizes 1500,800,200 --root /tmp/held_out
    .venv/bin/python benchmarks/vqa_held_out.py default            # the default world (tuning)
    .venv/bin/python benchmarks/vqa_held_out.py small_scale --teacher cd-teacher-m:32 --sizes 4000,1500,300 \
        --teacher-set batch_size=128 --teacher-set lr=0.002 --teacher-set local_weight=4 --teacher-set local_phrase=shape

WORLD is `default` or a name in `clipdistill.data.variants.VARIANTS` (HELD_OUT: never tune on them).
--teacher-set FIELD=VALUE sets a TeacherParams field (the region–phrase term: local_weight, local_phrase, ...);
the teacher is trained as the pipeline's teacher stage trains it (the split's scenes.json, its hard-negative
groups) and cached in a directory named by every setting, so teachers of other settings never mix.
Data, teacher and LM are cached under --root; each run appends its metrics to runs/.
"""
import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import torch
import yaml

from clipdistill.data.splits import load_split, read_split_vqa
from clipdistill.export.hf import to_hf
from clipdistill.io import rounded
from clipdistill.models import load_model_dir
from clipdistill.params import DataParams, SplitParams, TeacherParams, VQAParams
from clipdistill.teachers import stage as teacher_stage
from clipdistill.vqa.diagnostics import vqa_diagnostics
from clipdistill.vqa.evaluate import evaluate_vqa
from clipdistill.vqa.language import load_language_dir, prepare_language, save_language
from clipdistill.vqa.recipe import record_pixels
from clipdistill.vqa.train import train_vlm
from param_sets import apply_sets

ap = argparse.ArgumentParser()
ap.add_argument("world")
ap.add_argument("--teacher", default="cd-teacher-s:20")
ap.add_argument("--set", action="append", default=[])
ap.add_argument("--teacher-set", action="append", default=[], help="TeacherParams FIELD=VALUE (repeatable)")
ap.add_argument("--tag", default="base")
ap.add_argument("--only", default=None)
ap.add_argument("--vlm-seed", type=int, default=0, help="the VLM seed (projector init, data order)")
ap.add_argument("--sizes", default="2000,1500,300", help="pretrain,vqa_train,vqa_eval images")
ap.add_argument("--root", default="/tmp/clipdistill-held-out")
ap.add_argument("--params", default="params.yaml")
a = ap.parse_args()
torch.set_num_threads(1)
ROOT = Path(a.root) / "worlds" / (a.world + ("" if a.sizes == "2000,1500,300" else "-" + a.sizes.replace(",", "-")))
n_pre, n_tr, n_ev = map(int, a.sizes.split(","))
t0 = time.time()
if not (ROOT / "vqa_eval").exists():
    if a.world == "default":
        from clipdistill.data.synth import synthesize
        base = yaml.safe_load(Path(a.params).read_text())["data"]
        dp = DataParams.model_validate(base).model_copy(update={"splits": {
            "pretrain": SplitParams(size=n_pre), "vqa_train": SplitParams(size=n_tr), "vqa_eval": SplitParams(size=n_ev)}})
        for s in ("pretrain", "vqa_train", "vqa_eval"):
            synthesize(dp, s, ROOT / s)
    else:
        from clipdistill.data.variants import VARIANTS, synth_variant
        for s, n in (("pretrain", n_pre), ("vqa_train", n_tr), ("vqa_eval", n_ev)):
            synth_variant(VARIANTS[a.world], s, n, ROOT / s)
print(f"data {time.time()-t0:.0f}s", flush=True)
arch, ep = a.teacher.split(":")
teacher_settings = {k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in a.teacher_set)}
tdir = ROOT / ("-".join([f"teacher-{arch}-{ep}"] + [f"{k}={v}" for k, v in sorted(teacher_settings.items())]))
if not tdir.exists():
    spec = TeacherParams.model_validate({"arch": arch, "epochs": int(ep), "batch_size": 64, "lr": 3e-3}
                                        | teacher_settings)
    manifest = teacher_stage.run({"t": spec}, "t", ROOT, tdir)
    print(f"teacher {time.time()-t0:.0f}s loss {manifest['final_loss']:.3f} {spec.model_dump()}", flush=True)

if a.only == "none":
    sys.exit(0)
vqa = apply_sets(yaml.safe_load(Path(a.params).read_text())["vqa"], a.set)
spec = VQAParams.model_validate(vqa)
key = hashlib.sha1(json.dumps([spec.lm.model_dump(), spec.lm_pretrain.model_dump() if spec.lm_pretrain else None]).encode()).hexdigest()[:8]
lmdir = ROOT / f"lm-{key}"
if lmdir.exists():
    language = load_language_dir(lmdir)
else:
    lm_, tok_, log_ = prepare_language(spec, ROOT / "vqa_train", show_progress=False)
    save_language(lmdir, lm_, tok_, log_, spec)
    language = load_language_dir(lmdir)
print(f"lm {time.time()-t0:.0f}s", flush=True)
train, ev = load_split(ROOT / "vqa_train"), load_split(ROOT / "vqa_eval")
records = read_split_vqa(ROOT / "vqa_eval")
out = {}
for name in ("teacher", "blind"):
    if a.only and name != a.only:
        continue
    blind = name == "blind"
    vlm, tok, proc, log = train_vlm(to_hf(load_model_dir(tdir)), ROOT / "vqa_train", train, spec, blind, language,
                                   vlm_seed=a.vlm_seed)
    rows, m, _ = evaluate_vqa(vlm, tok, records, record_pixels(ev, records, proc, blind), 64, spec.max_new_tokens, name)
    m["diagnostics"] = vqa_diagnostics(vlm, proc, ROOT / "vqa_train", train, ROOT / "vqa_eval", ev,
                                       records, [r["text"] for r in rows], m, blind)
    out[name] = rounded(m, 2)
    out[name]["answers"] = {r["question_id"]: r["text"] for r in rows}  # for splits by scene (analysis below)
    d = m["diagnostics"]
    eff = {k: round(v["efficiency"], 2) for k, v in d.get("reading_efficiency", {}).items() if v["efficiency"]}
    print(f"{a.world} {a.tag} {name}: overall {m['overall']:.1f} types "
          f"{ {k: round(v, 1) for k, v in m['per_question_type'].items()} } collapsed {d['answer_health']['collapsed_types']} "
          f"eff {eff} loss {log[-1]['loss']:.3f} t {time.time()-t0:.0f}s", flush=True)
    if not blind:
        pr = d["probe"]
        print("  probe cell", {k: round(v.get("accuracy", -1), 1) for k, v in pr.get("cell", {}).items()},
              "pooled", {k: round(v.get("accuracy", -1), 1) for k, v in pr["pooled"].items()}, flush=True)
    print("  top answers", {k: (v["top_answer"], round(v["top_share"], 2), round(v["truth_share"], 2))
                            for k, v in d["answer_health"]["per_question_type"].items()}, flush=True)
(Path(a.root) / "runs").mkdir(parents=True, exist_ok=True)
(Path(a.root) / "runs" / f"{a.world}-{a.tag}-{a.only or 'both'}-v{a.vlm_seed}.json").write_text(
    json.dumps({"args": vars(a), "vqa": vqa, "out": out}, indent=1))
