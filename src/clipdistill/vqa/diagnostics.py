"""What the encoder can tell, what the VLM reads of it, and whether the VLM answers at all.

Three diagnostics land in every VQA `metrics.json` (key `diagnostics`):

- **Attribute probe** — a linear (multinomial logistic) probe on the frozen tower's layer −2
  patch features, trained on the VQA *training* images and scored on the *eval* images:
  `pooled`: the mean-pooled tokens → each question's canonical answer, per question type,
  scored with the same VQAv2 soft accuracy as the VLM (needs nothing but the VQA split, so it
  works on any set); `cell`: where the world knows its objects (`scenes.json` with row/col on
  the 3×3 grid) the tokens whose centres fall in an object's cell, mean-pooled → that object's
  colour / shape / size (plain accuracy over objects). A probe with fewer than two training
  classes or no eval examples is `{"estimable": false, "reason": ...}`, never a crash.
- **Reading efficiency** — per question type, VLM accuracy / probe accuracy, the probe being
  the cell probe where there is one, else the pooled one (`null` when the probe is not
  estimable or scores 0).
- **Answer health** — per question type, the VLM's most frequent answer, its share of the
  VLM's outputs and its share of the ground truth (canonical answers). A type is `collapsed`
  when that answer exceeds both 2× its ground-truth share and 50 % of the outputs; the VLM is
  `collapsed` when any type is. That rule cannot fire where the true majority is above half
  (a yes/no type that is 63 % "no" answered "no" every time), so a type is also `constant`
  when one answer takes ≥ 95 % of the outputs while ≥ 20 % of the questions want another
  (`constant_types`); a separate flag, so `collapsed` keeps its definition.
- **Reading vs finding** (`by_objects`, where the world knows its scenes) — per question type,
  the VLM's accuracy on questions about one-object scenes (`single`: nothing to find, only to
  read) and about scenes with several (`multi`: the object named in the question must be found
  first). A VLM that reads colour off a lone object but not off the one the question names is
  limited by finding the referent, not by reading; the efficiency table then says `single`
  (`efficiency_single` = single-object accuracy / probe) next to the overall efficiency.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from pathlib import Path

import torch

from clipdistill.training.runtime import CPU, Runtime
from clipdistill.vqa.metrics import normalize_answer, vqa_accuracy

CELL_ATTRIBUTES = ("color", "shape", "size")  # object fields the cell probe predicts (question type of that name)
COLLAPSE_RATIO, COLLAPSE_SHARE = 2.0, 0.5
CONSTANT_SHARE, CONSTANT_TRUTH_MAX = 0.95, 0.8  # one answer nearly always; the truth varied


def not_estimable(reason: str) -> dict:
    return {"estimable": False, "reason": reason}


# ---------------------------------------------------------------- answer health

def answer_health(records: list[dict]) -> dict:
    """records: {"prediction", "answer", "question_type"}. Per question type: the most frequent
    normalised prediction, its output share and ground-truth share, `collapsed`; plus the
    VLM-level `collapsed` and the list of collapsed types."""
    by_type = defaultdict(list)
    for r in records:
        by_type[r["question_type"]].append((normalize_answer(r["prediction"]), normalize_answer(r["answer"])))
    per_type = {}
    for qtype, pairs in sorted(by_type.items()):
        preds = Counter(p for p, _ in pairs)
        top, n_top = min(preds.items(), key=lambda kv: (-kv[1], kv[0]))  # ties: alphabetical, deterministic
        share = n_top / len(pairs)
        truth = sum(t == top for _, t in pairs) / len(pairs)
        truth_majority = max(Counter(t for _, t in pairs).values()) / len(pairs)
        per_type[qtype] = {"top_answer": top, "top_share": share, "truth_share": truth,
                           "distinct_answers": len(preds), "count": len(pairs),
                           "collapsed": share > COLLAPSE_RATIO * truth and share > COLLAPSE_SHARE,
                           "constant": share >= CONSTANT_SHARE and truth_majority <= CONSTANT_TRUTH_MAX}
    collapsed = [t for t, h in per_type.items() if h["collapsed"]]
    constant = [t for t, h in per_type.items() if h["constant"]]
    return {"per_question_type": per_type, "collapsed": bool(collapsed), "collapsed_types": collapsed,
            "constant_types": constant}


# ---------------------------------------------------------------- reading vs finding

def by_objects(records: list[dict]) -> dict:
    """records: {"prediction", "answers" (the annotators'), "question_type", "objects" (the
    scene's object count)}. Per question type, VQAv2 accuracy (in points) and count on
    one-object scenes (`single`) and on scenes with several (`multi`); a side without questions
    is not estimable."""
    hits = defaultdict(list)
    for r in records:
        if r["objects"] < 1:  # an empty scene: nothing to read or to find
            continue
        side = "single" if r["objects"] == 1 else "multi"
        hits[r["question_type"], side].append(vqa_accuracy(r["prediction"], list(r["answers"])))
    out = {}
    for qtype in sorted({t for t, _ in hits}):
        out[qtype] = {side: ({"accuracy": 100 * sum(h) / len(h), "count": len(h)} if (h := hits.get((qtype, side)))
                             else not_estimable(f"no question about a {side}-object scene"))
                      for side in ("single", "multi")}
    return out


# ---------------------------------------------------------------- linear probes

def fit_logistic(x: torch.Tensor, y: torch.Tensor, n_classes: int, weight_decay: float = 1e-3,
                 steps: int = 200, seed: int = 0):
    """Multinomial logistic regression on standardised features (L-BFGS, L2); returns predict(x)."""
    x = x.double()
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    z = (x - mean) / std
    gen = torch.Generator().manual_seed(seed)
    w = (torch.randn(z.shape[1], n_classes, generator=gen, dtype=torch.float64) * 1e-3).requires_grad_(True)
    b = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(z @ w + b, y) + weight_decay * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    w, b = w.detach(), b.detach()
    return lambda q: (((q.double() - mean) / std) @ w + b).argmax(1)


def _probe(x_train, labels_train: list[str], x_eval, labels_eval: list[str], score=None) -> dict:
    """Fit on (x_train, labels_train), score on x_eval: plain accuracy, or `score(i, prediction)`."""
    classes = sorted(set(labels_train))
    if len(classes) < 2:
        return not_estimable(f"{len(classes)} class(es) among {len(labels_train)} training examples")
    if not labels_eval:
        return not_estimable("no eval examples")
    index = {c: k for k, c in enumerate(classes)}
    predict = fit_logistic(x_train, torch.tensor([index[c] for c in labels_train]), len(classes))
    preds = [classes[k] for k in predict(x_eval).tolist()]
    scores = [score(i, p) if score else float(p == labels_eval[i]) for i, p in enumerate(preds)]
    majority = Counter(labels_train).most_common(1)[0][0]
    prior = [score(i, majority) if score else float(majority == labels_eval[i]) for i in range(len(preds))]
    return {"estimable": True, "accuracy": 100 * sum(scores) / len(scores),
            "majority_accuracy": 100 * sum(prior) / len(prior), "classes": len(classes),
            "train": len(labels_train), "eval": len(labels_eval)}


def pooled_probe(train_feats: torch.Tensor, train_records: list, eval_feats: torch.Tensor,
                 eval_records: list) -> dict:
    """Per question type: mean-pooled tokens of the question's image → its canonical answer,
    scored by VQAv2 soft accuracy against the eval annotators. Records are `VQARecord`s whose
    `image_id` indexes the feature rows."""
    pooled_train, pooled_eval = train_feats.float().mean(1), eval_feats.float().mean(1)
    out = {}
    for qtype in sorted({r.question_type for r in train_records} | {r.question_type for r in eval_records}):
        tr = [r for r in train_records if r.question_type == qtype]
        ev = [r for r in eval_records if r.question_type == qtype]
        if not tr:
            out[qtype] = not_estimable("no training questions")
            continue
        out[qtype] = _probe(pooled_train[[r.image_id for r in tr]], [normalize_answer(r.answer) for r in tr],
                            pooled_eval[[r.image_id for r in ev]], [normalize_answer(r.answer) for r in ev],
                            lambda i, p: vqa_accuracy(p, list(ev[i].answers)))
    return out


def cell_tokens(feats: torch.Tensor, scenes: list[list[dict]], grid: int = 3):
    """(per-object features, objects): the mean of the patch tokens whose centres lie in each
    object's grid cell. `feats` is N×P×D with P a square number of patches (CLS dropped)."""
    side = math.isqrt(feats.shape[1])
    if side * side != feats.shape[1]:
        raise ValueError(f"{feats.shape[1]} tokens are not a square patch grid")
    centre = (torch.arange(side) + 0.5) * grid / side
    cell_of = centre.floor().long().clamp(max=grid - 1)  # grid cell of each patch row / column
    rows, cols = cell_of.repeat_interleave(side), cell_of.repeat(side)
    x, objs = [], []
    for i, scene in enumerate(scenes):
        for o in scene:
            mask = (rows == o["row"]) & (cols == o["col"])
            x.append(feats[i, mask].float().mean(0))
            objs.append(o)
    return (torch.stack(x) if x else torch.zeros(0, feats.shape[2])), objs


def cell_probe(train_feats: torch.Tensor, train_scenes: list, eval_feats: torch.Tensor, eval_scenes: list) -> dict:
    """Per object attribute (colour, shape, size): the object's cell tokens → the attribute."""
    xt, ot = cell_tokens(train_feats, train_scenes)
    xe, oe = cell_tokens(eval_feats, eval_scenes)
    return {a: _probe(xt, [str(o[a]) for o in ot], xe, [str(o[a]) for o in oe])
            for a in CELL_ATTRIBUTES if ot and a in ot[0]}


def scenes_with_cells(scenes) -> bool:
    return bool(scenes) and all(isinstance(s, list) and all({"row", "col"} <= set(o) for o in s) for s in scenes)


# ---------------------------------------------------------------- all together

def diagnose(metrics: dict, answer_records: list[dict], train_feats=None, train_records=None, eval_feats=None,
             eval_records=None, train_scenes=None, eval_scenes=None) -> dict:
    """The `diagnostics` block of a VQA metrics.json: answer health always; reading vs finding
    when every answer record knows its scene's object count (`objects`); the probes and the
    reading efficiency when the tower features are given (not for the blind baseline)."""
    out = {"answer_health": answer_health(answer_records)}
    out["collapsed"] = out["answer_health"]["collapsed"]
    if answer_records and all(r.get("objects") is not None for r in answer_records):
        out["by_objects"] = by_objects(answer_records)
    if train_feats is None:
        return out
    probe = {"pooled": pooled_probe(train_feats, train_records, eval_feats, eval_records)}
    if scenes_with_cells(train_scenes) and scenes_with_cells(eval_scenes):
        probe["cell"] = cell_probe(train_feats, train_scenes, eval_feats, eval_scenes)
    out["probe"] = probe
    out["reading_efficiency"] = reading_efficiency(metrics["per_question_type"], probe, out.get("by_objects"))
    return out


def reading_efficiency(vlm_accuracy: dict, probe: dict, objects: dict | None = None) -> dict:
    """Per question type: VLM accuracy / what the encoder can tell (cell probe if any, else
    pooled); with `by_objects`, also the one-object scenes' accuracy / probe (`efficiency_single`)."""
    out = {}
    for qtype, acc in sorted(vlm_accuracy.items()):
        p = probe.get("cell", {}).get(qtype) or probe["pooled"].get(qtype)
        if p is None or not p["estimable"] or p["accuracy"] <= 0:
            out[qtype] = {"efficiency": None, "probe": None, "vlm": acc,
                          "reason": p["reason"] if p and not p["estimable"] else "no probe accuracy"}
        else:
            out[qtype] = {"efficiency": acc / p["accuracy"], "probe": p["accuracy"], "vlm": acc,
                          "probe_kind": "cell" if qtype in probe.get("cell", {}) else "pooled"}
            single = (objects or {}).get(qtype, {}).get("single", {})
            if "accuracy" in single:
                out[qtype]["efficiency_single"] = single["accuracy"] / p["accuracy"]
    return out


def read_scenes(split_dir):
    """A split's scenes.json (one list of objects per image, in row order), or None."""
    from clipdistill.io import read_json

    path = Path(split_dir) / "scenes.json"
    return read_json(path) if path.is_file() else None


def answer_records(eval_records: list, predictions: list[str], rows: list[int], scenes=None) -> list[dict]:
    """What `diagnose` reads of each answer: the prediction, the canonical and the annotators'
    answers, the question type and — where the scenes are known — the object count of the
    question's image (`rows`: each record's image row)."""
    known = scenes_with_cells(scenes)
    return [{"prediction": t, "answer": r.answer, "answers": list(r.answers), "question_type": r.question_type,
             "objects": len(scenes[k]) if known else None}
            for r, t, k in zip(eval_records, predictions, rows)]


def vqa_diagnostics(vlm, processor, train_dir, train_split, eval_dir, eval_split, eval_records: list,
                    predictions: list[str], metrics: dict, blind: bool, runtime: Runtime = CPU) -> dict:
    """The diagnostics of one trained VLM on its splits (see the module docstring). The splits
    are `data.splits.Split`s: a record's feature row is its image's row (`Split.rows`). The
    tower runs on `runtime`'s device, the probes on the host."""
    from dataclasses import replace

    from clipdistill.data.splits import read_split_vqa
    from clipdistill.vqa.recipe import split_features

    train_dir, eval_dir = Path(train_dir), Path(eval_dir)
    scenes = [read_scenes(d) for d in (train_dir, eval_dir)]
    eval_rows = eval_split.rows(eval_records)
    answers = answer_records(eval_records, predictions, eval_rows, scenes[1])
    if blind:
        return diagnose(metrics, answers)
    train_records = read_split_vqa(train_dir)
    feats = [runtime.host(split_features(vlm, s.images, processor, False, runtime)) for s in (train_split, eval_split)]
    # the probes index feature rows by `image_id`: hand them each record's row
    rec = [[replace(r, image_id=k) for r, k in zip(rs, rows)]
           for rs, rows in ((train_records, train_split.rows(train_records)), (eval_records, eval_rows))]
    return diagnose(metrics, answers, feats[0], rec[0], feats[1], rec[1], scenes[0], scenes[1])


def report_row(metrics: dict) -> dict:
    """Flat columns for the study table from one VQA metrics.json (missing diagnostics: {}):
    `vqa_collapsed` (bool), `vqa_collapsed_types` ("color,shape" or ""), `vqa_constant_types`
    (the types answered with one answer whatever the question), and per question type
    `vqa_probe_<type>` (the probe the efficiency uses; None if not estimable) and
    `vqa_efficiency_<type>`; with scenes, `vqa_single_<type>` / `vqa_multi_<type>` (accuracy on
    one-object scenes / on scenes with several; None where a side has no question)."""
    d = metrics.get("diagnostics")
    if not d:
        return {}
    health = d["answer_health"]
    row = {"vqa_collapsed": d["collapsed"], "vqa_collapsed_types": ",".join(health["collapsed_types"]),
           "vqa_constant_types": ",".join(health.get("constant_types", []))}  # older metrics lack it
    for qtype, e in d.get("reading_efficiency", {}).items():
        row[f"vqa_probe_{qtype}"] = e["probe"]
        row[f"vqa_efficiency_{qtype}"] = e["efficiency"]
    for qtype, sides in d.get("by_objects", {}).items():
        for side, v in sides.items():
            row[f"vqa_{side}_{qtype}"] = v.get("accuracy")
    return row
