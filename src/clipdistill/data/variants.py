"""Held-out world variants: the synthetic world with another palette and colour names, other
image sizes and object scales, other caption and question phrasings, another answer
vocabulary, many (mostly yes/no) questions per image.

They exist to test the VQA instrument on worlds its default params were never tuned on
(issue 16). `HELD_OUT` must never be used to choose a default; `DEV` is the one variant that
may be looked at while tuning (besides the default world). A variant split has the layout of
`data.synth` (images/, pairs.csv, llava.json, questions.json, annotations.json, scenes.json,
manifest.json; no shards or label sets) and is read by the same code.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from clipdistill.data import formats, render, world
from clipdistill.data.synth import SHORT_ANSWER, _png_bytes, split_rngs
from clipdistill.data.world import Obj, Question
from clipdistill.io import atomic_dir, write_json, write_manifest


@dataclass(frozen=True)
class Variant:
    name: str
    palette: dict[str, tuple[int, int, int]]
    background: tuple[int, int, int] = (24, 24, 28)
    image_size: int = 64
    scale: float = 1.0                     # × each size's radius
    min_objects: int = 1
    max_objects: int = 4
    questions: tuple[str, ...] = ("color", "shape", "count", "exists", "position")  # one of each, if possible
    yes_no_per_image: int = 0              # extra "is the <ref> <colour/shape/size>?" questions
    yes_share: float = 0.25                # share of those whose answer is yes
    shape_words: dict[str, str] = field(default_factory=dict)   # answer vocabulary for shapes
    phrasing: dict[str, str] = field(default_factory=dict)      # question templates by type
    caption_frame: str = "{}"
    noise: float = 0.02
    annotator_synonym_rate: float = 0.2
    annotator_error_rate: float = 0.1

    @property
    def colors(self) -> tuple[str, ...]:
        return tuple(self.palette)

    def shape_word(self, shape: str) -> str:
        return self.shape_words.get(shape, shape)


DEFAULT_PHRASING = {"color": "What color is the {ref}?", "shape": "What shape is the {ref}?",
                    "count": "How many objects are there?", "exists": "Is there {obj}?",
                    "position": "Where is the {ref}?", "yn_color": "Is the {ref} {value}?",
                    "yn_shape": "Is the {ref} {value}?", "yn_size": "Is the {ref} {value}?"}

VARIANTS = {
    # one object, ten questions per image, eight of them yes/no (a quarter answered yes): the shape of
    # the external set where every image-conditioned VLM fell below blind and one answered "no" to all
    "single_yesno": Variant(
        "single_yesno", palette=dict(zip(world.COLORS, (render.PALETTE[c] for c in world.COLORS))),
        min_objects=1, max_objects=1, questions=("color", "shape"), yes_no_per_image=8,
        phrasing={"color": "Which colour is the object?", "shape": "What kind of shape is shown?",
                  "yn_color": "Is the object {value}?", "yn_shape": "Is this a {value}?",
                  "yn_size": "Is the object {value}?"},
        caption_frame="a photo of {}"),
    # another palette with other colour names on a light background, shapes answered with other words
    "palette": Variant(
        "palette", palette={"scarlet": (190, 20, 45), "lime": (150, 225, 40), "navy": (25, 35, 130),
                            "gold": (225, 175, 20), "teal": (20, 140, 130), "white": (240, 240, 240),
                            "brown": (130, 80, 35)},
        background=(120, 120, 128), min_objects=1, max_objects=3,
        shape_words={"circle": "disc", "square": "box", "diamond": "rhombus", "cross": "plus", "ring": "donut"},
        phrasing={"color": "Which colour does the {ref} have?", "shape": "Name the form of the {ref}.",
                  "count": "Count the items in the picture.", "exists": "Does the picture contain {obj}?",
                  "position": "In which part of the picture is the {ref}?"},
        caption_frame="in this picture: {}"),
    # smaller images and smaller objects (upsampled by the tower's preprocessing), more of them
    "small_scale": Variant(
        "small_scale", palette=dict(zip(world.COLORS, (render.PALETTE[c] for c in world.COLORS))),
        image_size=48, scale=0.7, min_objects=2, max_objects=5,
        phrasing={"color": "Tell me the colour of the {ref}.", "shape": "The {ref} has which shape?",
                  "count": "What is the number of objects?", "exists": "Can you see {obj}?",
                  "position": "Which cell holds the {ref}?"},
        caption_frame="scene: {}"),
    # the dev variant (may be looked at while tuning): two objects, mixed questions incl. yes/no
    "dev": Variant(
        "dev", palette={"red": (220, 40, 40), "green": (50, 180, 60), "blue": (40, 80, 225),
                        "yellow": (235, 220, 50), "black": (10, 10, 10), "grey": (140, 140, 140)},
        background=(230, 225, 215), min_objects=1, max_objects=2, yes_no_per_image=3, yes_share=0.3,
        caption_frame="{}"),
}
HELD_OUT = ("single_yesno", "palette", "small_scale")
DEV = "dev"


def sample_scene(rng: np.random.Generator, v: Variant) -> list[Obj]:
    n = int(rng.integers(v.min_objects, v.max_objects + 1))
    cells = rng.choice(9, size=n, replace=False)
    return [Obj(shape=world.SHAPES[rng.integers(len(world.SHAPES))], color=v.colors[rng.integers(len(v.colors))],
                size=world.SIZES[rng.integers(2)], row=int(c) // 3, col=int(c) % 3) for c in cells]


def _ref(o: Obj, scene: list[Obj], v: Variant, avoid: str | None) -> str | None:
    """Shortest unique description of `o` without attribute `avoid` (variant's shape words)."""
    if len(scene) == 1:
        return "object"
    for attrs in (("shape",), ("color", "shape"), ("size", "shape"), ("size", "color", "shape"), ("color",)):
        if avoid in attrs:
            continue
        key = tuple(getattr(o, a) for a in attrs)
        if sum(tuple(getattr(x, a) for a in attrs) == key for x in scene) == 1:
            words = [v.shape_word(k) if a == "shape" else k for a, k in zip(attrs, key)]
            return " ".join(words) + (" object" if attrs == ("color",) else "")
    return None


def _article(p: str) -> str:
    return ("an " if p[0] in "aeiou" else "a ") + p


def caption(rng: np.random.Generator, scene: list[Obj], v: Variant) -> str:
    order = [scene[i] for i in rng.permutation(len(scene))]
    parts = [_article(f"{o.size} {o.color} {v.shape_word(o.shape)}") + f" at the {o.cell_name}" for o in order]
    body = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return v.caption_frame.format(body)


def questions(rng: np.random.Generator, scene: list[Obj], v: Variant) -> list[Question]:
    ph = {**DEFAULT_PHRASING, **v.phrasing}
    other = lambda text, a, qt, variants, wrong: Question(text, a, qt, "other", variants, wrong)  # noqa: E731
    out = []
    for qt in v.questions:
        if qt in ("color", "shape", "position"):
            cands = [(o, r) for o in scene if (r := _ref(o, scene, v, qt if qt != "position" else None))]
            if not cands:
                continue
            o, r = cands[int(rng.integers(len(cands)))]
            if qt == "color":
                out.append(other(ph["color"].format(ref=r), o.color, "color", (o.color,),
                                 tuple(c for c in v.colors if c != o.color)))
            elif qt == "shape":
                w = v.shape_word(o.shape)
                out.append(other(ph["shape"].format(ref=r), w, "shape", (w,),
                                 tuple(v.shape_word(s) for s in world.SHAPES if s != o.shape)))
            else:
                out.append(other(ph["position"].format(ref=r), o.cell_name, "position", (o.cell_name,),
                                 ("center",) if o.cell_name != "center" else ("top",)))
        elif qt == "count":
            n = len(scene)
            out.append(Question(ph["count"], str(n), "count", "number", (world.NUMBER_WORDS[n],), (str(n + 1),)))
        elif qt == "exists":
            if rng.random() < 0.5:
                o, yes = scene[int(rng.integers(len(scene)))], True
                c, s = o.color, o.shape
            else:
                present = {(o.color, o.shape) for o in scene}
                while True:
                    c, s = v.colors[int(rng.integers(len(v.colors)))], world.SHAPES[int(rng.integers(8))]
                    if (c, s) not in present:
                        break
                yes = False
            out.append(world._yes_no(yes, "exists", ph["exists"].format(obj=_article(f"{c} {v.shape_word(s)}"))))
    asked = set()
    for _ in range(v.yes_no_per_image * 4):  # distinct questions; tries bounded
        if len(asked) == v.yes_no_per_image:
            break
        o = scene[int(rng.integers(len(scene)))]
        attr = ("color", "shape", "size")[int(rng.integers(3))]
        values = {"color": v.colors, "shape": world.SHAPES, "size": world.SIZES}[attr]
        truth = getattr(o, attr)
        yes = rng.random() < v.yes_share
        value = truth if yes else [x for x in values if x != truth][int(rng.integers(len(values) - 1))]
        word = v.shape_word(value) if attr == "shape" else value
        r = _ref(o, scene, v, attr) or "object"  # never "is the red circle red?"
        text = ph[f"yn_{attr}"].format(ref=r, value=word)
        if text not in asked:
            asked.add(text)
            out.append(world._yes_no(yes, f"yn_{attr}", text))
    order = rng.permutation(len(out))
    return [out[i] for i in order]


def synth_variant(v: Variant, split: str, size: int, out: str | Path, seed: int = 0) -> dict:
    """One split of variant `v` (`size` images) into `out`, atomically; returns its manifest."""
    with atomic_dir(out) as tmp:
        (tmp / "images").mkdir(parents=True)
        pairs, scenes, llava, vqa = [], [], [], []
        for i, rng in enumerate(split_rngs(seed, f"{v.name}/{split}", size)):
            scene = sample_scene(rng, v)
            png = _png_bytes(render.render(scene, rng, size=v.image_size, style="plain", noise=v.noise,
                                           palette=v.palette, background=v.background, scale=v.scale))
            rel = f"images/{i:06d}.png"
            (tmp / rel).write_bytes(png)
            pairs.append((rel, caption(rng, scene, v)))
            scenes.append(world.scene_to_json(scene))
            turns = []
            for j, q in enumerate(questions(rng, scene, v)):
                answers = world.annotator_answers(rng, q, v.annotator_synonym_rate, v.annotator_error_rate)
                vqa.append(formats.VQARecord(i * 100 + j, i, tmp / rel, q.question, q.answer, tuple(answers),
                                             q.question_type, q.answer_type))
                prefix = "" if turns else "<image>\n"
                turns += [{"from": "human", "value": f"{prefix}{q.question}\n{SHORT_ANSWER}"},
                          {"from": "gpt", "value": q.answer}]
            llava.append({"id": f"{i:06d}", "image": rel, "conversations": turns})
        formats.write_pairs_csv(tmp / "pairs.csv", pairs)
        formats.write_llava(tmp / "llava.json", llava)
        formats.write_vqa(tmp / "questions.json", tmp / "annotations.json", vqa, subtype=split)
        write_json(tmp / "scenes.json", scenes, compact=True)
        counts = {"images": size, "questions": len(vqa),
                  "question_types": dict(sorted(Counter(r.question_type for r in vqa).items())),
                  "answers": dict(Counter(r.answer for r in vqa).most_common(5))}
        own = {"variant": json.loads(json.dumps(v.__dict__, default=list)), "split": split, "size": size,
               "seed": seed}
        return write_manifest(tmp, "synthetic-world-variant-split", own, counts)
