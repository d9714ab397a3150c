"""`clipdistill data synth`: render every split of the synthetic world in all standard formats.

One split per call (and per DAG stage, so a split's consumers rerun only when it
changes). Layout of a split directory:

    images/000000.png     rendered scenes
    pairs.csv             open_clip CSV (filepath, title)
    shards/shard-*.tar    webdataset (png, txt, json)
    llava.json            LLaVA conversations (one per image, a turn per question)
    questions.json        VQAv2 questions
    annotations.json      VQAv2 annotations (10 answers each)
    labels.json           zero-shot label sets (classnames, templates, labels)
    scenes.json           ground-truth objects per image
    manifest.json         counts, content hash, the params this split depends on

Every image draws from its own RNG stream (seed, split name, index), so a split is
reproducible byte for byte and independent of the other splits.
"""

from __future__ import annotations

import io
import json
import zlib
from collections import Counter
from pathlib import Path

import numpy as np

from clipdistill.data import formats, render, world
from clipdistill.io import DataError, atomic_dir, progress, write_json, write_manifest
from clipdistill.params import DataParams, SplitParams

SHORT_ANSWER = "Answer the question using a single word or phrase."


def split_rngs(seed: int, split: str, size: int) -> list[np.random.Generator]:
    root = np.random.SeedSequence([seed, zlib.crc32(split.encode())])
    return [np.random.default_rng(s) for s in root.spawn(size)]


def _png_bytes(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def synth_split(params: DataParams, name: str, split: SplitParams, out: Path) -> dict:
    """Generate one split into `out` and return its counts."""
    (out / "images").mkdir(parents=True)
    pairs, scenes, shard_samples, llava, vqa = [], [], [], [], []
    labels = {k: [] for k in world.LABEL_SETS}
    group = split.hard_negatives
    for i, rng in enumerate(progress(split_rngs(params.seed, name, split.size), desc=f"synth {name}",
                                 unit="img", leave=False)):
        if i % group == 0:  # a group's first scene is drawn afresh, the others are its hard negatives
            scene = base = world.sample_scene(rng, params.min_objects, params.max_objects)
        else:
            scene = world.hard_negative(rng, base, split.hard_negative_shape_rate)
        png = _png_bytes(render.render(scene, rng, size=params.image_size, style=split.style,
                                       supersample=params.supersample, noise=params.noise,
                                       scale=params.object_scale))
        text = world.caption(rng, scene, params.caption_position_rate)
        rel = f"images/{i:06d}.png"
        (out / rel).write_bytes(png)
        pairs.append((rel, text))
        scenes.append(world.scene_to_json(scene))
        shard_samples.append({"__key__": f"{i:06d}", "png": png, "txt": text.encode(),
                              "json": json.dumps(scenes[-1], sort_keys=True).encode()})
        for k, v in world.zero_shot_labels(scene).items():
            labels[k].append(v)
        turns = []
        for j, q in enumerate(world.questions(rng, scene, params.questions_per_image,
                                                 params.position_color_ref_rate)):
            qid = i * 100 + j
            answers = world.annotator_answers(rng, q, params.annotator_synonym_rate,
                                              params.annotator_error_rate)
            vqa.append(formats.VQARecord(qid, i, out / rel, q.question, q.answer, tuple(answers),
                                         q.question_type, q.answer_type))
            prefix = "" if turns else "<image>\n"
            turns += [{"from": "human", "value": f"{prefix}{q.question}\n{SHORT_ANSWER}"},
                      {"from": "gpt", "value": q.answer}]
        if turns:  # one multi-turn conversation per image, as in LLaVA's instruction data
            llava.append({"id": f"{i:06d}", "image": rel, "conversations": turns})
    formats.write_pairs_csv(out / "pairs.csv", pairs)
    formats.write_shards(out / "shards", shard_samples, params.shard_size)
    formats.write_llava(out / "llava.json", llava)
    formats.write_vqa(out / "questions.json", out / "annotations.json", vqa, subtype=name)
    write_json(out / "scenes.json", scenes, compact=True)
    write_json(out / "labels.json", {"images": [p for p, _ in pairs], "label_sets": {
        k: {**{f: list(v) for f, v in spec.items()}, "labels": labels[k]}
        for k, spec in world.LABEL_SETS.items()}}, compact=True)
    return {"images": split.size, "questions": len(vqa), "style": split.style,
            "question_types": dict(sorted(Counter(r.question_type for r in vqa).items()))}


def split_params(params: DataParams, name: str) -> dict:
    """What one split depends on: the shared generator params and its own entry."""
    if name not in params.splits:
        raise DataError(f"unknown split {name!r}; params define: {', '.join(sorted(params.splits))}")
    shared = params.model_dump(mode="json", exclude={"splits"})
    return {**shared, "split": name, **params.splits[name].model_dump(mode="json")}


def synthesize(params: DataParams, split: str, out: str | Path) -> dict:
    """Generate one split atomically into `out`; return its manifest."""
    own = split_params(params, split)
    with atomic_dir(out) as tmp:
        counts = synth_split(params, split, params.splits[split], tmp)
        return write_manifest(tmp, "synthetic-world-split", own, counts)
