"""The synthetic world: scenes of coloured shapes and the language about them.

A scene is 1–N objects on a 3×3 grid, each with a shape, colour, size and cell. This module
samples scenes and produces captions, VQA questions with 10 noisy annotator answers, and
zero-shot labels. Rendering lives in `render.py`; nothing here touches pixels.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

SHAPES = ("circle", "square", "triangle", "diamond", "star", "cross", "hexagon", "ring")
COLORS = ("red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink")
SIZES = ("small", "large")
ROWS = ("top", "middle", "bottom")
COLS = ("left", "center", "right")
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

# Paraphrases used in captions and by "synonym" annotators.
SHAPE_SYNONYMS = {
    "circle": ("disc",), "square": ("box",), "triangle": ("triangle",),
    "diamond": ("rhombus",), "star": ("star",), "cross": ("plus",),
    "hexagon": ("hexagon",), "ring": ("donut",),
}
COLOR_SYNONYMS = {"purple": ("violet",), "cyan": ("turquoise",), "pink": ("magenta",)}
SIZE_SYNONYMS = {"small": ("little", "tiny"), "large": ("big", "huge")}
QUESTION_TYPES = ("color", "shape", "count", "exists", "relation", "size", "position")
ANSWER_TYPES = {"color": "other", "shape": "other", "count": "number", "exists": "yes/no",
                "relation": "yes/no", "size": "other", "position": "other"}
RELATIONS = {  # name: predicate on (a, b)
    "to the left of": lambda a, b: a.col < b.col,
    "to the right of": lambda a, b: a.col > b.col,
    "above": lambda a, b: a.row < b.row,
    "below": lambda a, b: a.row > b.row,
}


@dataclass(frozen=True)
class Obj:
    shape: str
    color: str
    size: str
    row: int
    col: int

    @property
    def cell_name(self) -> str:
        if (self.row, self.col) == (1, 1):
            return "center"
        if self.row == 1:
            return COLS[self.col]
        if self.col == 1:
            return ROWS[self.row]
        return f"{ROWS[self.row]} {COLS[self.col]}"


def sample_scene(rng: np.random.Generator, min_objects: int, max_objects: int) -> list[Obj]:
    n = int(rng.integers(min_objects, max_objects + 1))
    cells = rng.choice(9, size=n, replace=False)
    return [
        Obj(shape=SHAPES[rng.integers(len(SHAPES))], color=COLORS[rng.integers(len(COLORS))],
            size=SIZES[rng.integers(2)], row=int(c) // 3, col=int(c) % 3)
        for c in cells
    ]


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


# ---------------------------------------------------------------- referring expressions

_REF_ATTRS = (("shape",), ("color", "shape"), ("size", "shape"), ("size", "color", "shape"))


def referring_expression(obj: Obj, scene: list[Obj], avoid: str | None = None) -> str | None:
    """Shortest description ("circle", "red circle", "small red circle") that picks out
    `obj` alone in the scene, without using attribute `avoid`; None if there is none."""
    for attrs in _REF_ATTRS:
        if avoid in attrs:
            continue
        key = tuple(getattr(obj, a) for a in attrs)
        if sum(tuple(getattr(o, a) for a in attrs) == key for o in scene) == 1:
            return " ".join(key)
    if avoid == "shape":  # colour-only references for shape questions
        if sum(o.color == obj.color for o in scene) == 1:
            return f"{obj.color} object"
        if sum((o.size, o.color) == (obj.size, obj.color) for o in scene) == 1:
            return f"{obj.size} {obj.color} object"
    return None


# ---------------------------------------------------------------- captions

def _object_phrase(rng: np.random.Generator, obj: Obj, with_position: bool) -> str:
    shape = _pick(rng, (obj.shape, obj.shape, *SHAPE_SYNONYMS[obj.shape]))
    color = _pick(rng, (obj.color, obj.color, *COLOR_SYNONYMS.get(obj.color, ())))
    size = _pick(rng, (obj.size, obj.size, *SIZE_SYNONYMS[obj.size]))
    form = int(rng.integers(3))
    if form == 0:
        phrase = f"{size} {color} {shape}"
    elif form == 1:
        phrase = f"{color} {size} {shape}" if rng.random() < 0.3 else f"{size} {color} {shape}"
    else:
        phrase = f"{size} {shape} that is {color}"
    phrase = _article(phrase)
    if with_position:
        pos = obj.cell_name
        phrase += " in the center" if pos == "center" else f" on the {pos}"
    return phrase


def _join(phrases: list[str]) -> str:
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


def caption(rng: np.random.Generator, scene: list[Obj], position_rate: float = 0.3) -> str:
    """One caption naming every object, in a random paraphrase; with probability
    `position_rate` it also states the objects' cells (a relation caption: those after the
    relation, and at rate 1 the related two as well, so that every caption states every cell)."""
    order = [scene[i] for i in rng.permutation(len(scene))]
    with_position = rng.random() < position_rate
    if len(order) >= 2 and rng.random() < 0.4:
        a, b = order[0], order[1]
        true_rel = [r for r, pred in RELATIONS.items() if pred(a, b)]
        if true_rel:
            rel = _pick(rng, true_rel)
            both = position_rate >= 1.0  # below 1 the related pair keeps its old, cell-free wording
            head = f"{_object_phrase(rng, a, both)} {rel} {_object_phrase(rng, b, both)}"
            rest = [_object_phrase(rng, o, with_position) for o in order[2:]]
            return head + (f" and {_join(rest)}" if rest else "")
    body = _join([_object_phrase(rng, o, with_position) for o in order])
    frame = _pick(rng, ("{}", "there is {}", "an image with {}", "a picture showing {}",
                        "{n} on a background: {}"))
    noun = "object" if len(order) == 1 else "objects"
    return frame.format(body, n=f"{NUMBER_WORDS[len(order)]} {noun}")


def hard_negative(rng: np.random.Generator, scene: list[Obj], shape_rate: float = 0.5) -> list[Obj]:
    """The scene with one object changed in shape (with probability `shape_rate`, always when
    no cell is empty) or moved to an empty cell (same colours, sizes and count): a caption can
    tell it from `scene` only by shape or position."""
    k = int(rng.integers(len(scene)))
    o = scene[k]
    empty = sorted(set(range(9)) - {x.row * 3 + x.col for x in scene})
    if empty and rng.random() < 1.0 - shape_rate:  # one draw whatever the rate (0.5: the original stream)
        cell = empty[int(rng.integers(len(empty)))]
        new = Obj(o.shape, o.color, o.size, cell // 3, cell % 3)
    else:
        new = Obj(_pick(rng, [s for s in SHAPES if s != o.shape]), o.color, o.size, o.row, o.col)
    return [new if i == k else x for i, x in enumerate(scene)]


# ---------------------------------------------------------------- questions

@dataclass(frozen=True)
class Question:
    question: str
    answer: str
    question_type: str
    answer_type: str
    variants: tuple[str, ...]      # acceptable paraphrases a careful annotator may give
    distractors: tuple[str, ...]   # wrong answers a careless annotator may give


def _yes_no(answer: bool, qtype: str, text: str) -> Question:
    a = "yes" if answer else "no"
    return Question(text, a, qtype, "yes/no", (a,), ("no" if answer else "yes",))


def _q_color(rng, scene):
    cands = [(o, r) for o in scene if (r := referring_expression(o, scene, avoid="color"))]
    if not cands:
        return None
    o, ref = _pick(rng, cands)
    return Question(f"What color is the {ref}?", o.color, "color", "other",
                    COLOR_SYNONYMS.get(o.color, (o.color,)), tuple(c for c in COLORS if c != o.color))


def _q_shape(rng, scene):
    cands = [(o, r) for o in scene if (r := referring_expression(o, scene, avoid="shape"))]
    if not cands:
        return None
    o, ref = _pick(rng, cands)
    return Question(f"What shape is the {ref}?", o.shape, "shape", "other",
                    SHAPE_SYNONYMS[o.shape], tuple(s for s in SHAPES if s != o.shape))


def _q_count(rng, scene):
    form = int(rng.integers(3))
    if form == 0:
        n, text = len(scene), "How many objects are there?"
    elif form == 1:
        color = _pick(rng, COLORS if rng.random() < 0.3 else [o.color for o in scene])
        n, text = sum(o.color == color for o in scene), f"How many {color} objects are there?"
    else:
        shape = _pick(rng, SHAPES if rng.random() < 0.3 else [o.shape for o in scene])
        plural = shape + ("es" if shape.endswith(("x", "s")) else "s")
        n, text = sum(o.shape == shape for o in scene), f"How many {plural} are there?"
    wrong = tuple(str(k) for k in (n - 1, n + 1) if k >= 0)
    return Question(text, str(n), "count", "number", (NUMBER_WORDS[n],), wrong)


def _q_exists(rng, scene):
    if rng.random() < 0.5:
        o = _pick(rng, scene)
        return _yes_no(True, "exists", f"Is there {_article(o.color + ' ' + o.shape)}?")
    present = {(o.color, o.shape) for o in scene}
    while True:
        color, shape = _pick(rng, COLORS), _pick(rng, SHAPES)
        if (color, shape) not in present:
            return _yes_no(False, "exists", f"Is there {_article(color + ' ' + shape)}?")


def _q_relation(rng, scene):
    refs = [(o, r) for o in scene if (r := referring_expression(o, scene))]
    if len(refs) < 2:
        return None
    i, j = rng.choice(len(refs), size=2, replace=False)
    (a, ra), (b, rb) = refs[i], refs[j]
    rel = _pick(rng, tuple(RELATIONS))
    return _yes_no(RELATIONS[rel](a, b), "relation", f"Is the {ra} {rel} the {rb}?")


def _q_size(rng, scene):
    refs = [(o, r) for o in scene if (r := referring_expression(o, scene, avoid="size"))]
    pairs = [(x, y) for x in refs for y in refs if x[0].size == "large" and y[0].size == "small"]
    if not pairs:
        return None
    big, small = _pick(rng, pairs)
    first, second = (big, small) if rng.random() < 0.5 else (small, big)
    word = _pick(rng, ("bigger", "larger"))
    return Question(f"Which is {word}, the {first[1]} or the {second[1]}?", big[1], "size", "other",
                    (f"the {big[1]}", big[0].shape), (small[1],))


def _color_reference(obj: Obj, scene: list[Obj]) -> str | None:
    """"red object" where the colour alone picks out `obj`."""
    return f"{obj.color} object" if sum(o.color == obj.color for o in scene) == 1 else None


def _q_position(rng, scene, color_ref_rate: float = 0.0):
    cands = [(o, r) for o in scene if (r := referring_expression(o, scene))]
    if color_ref_rate > 0 and rng.random() < color_ref_rate:  # "where is the red object?": no shape needed
        cands = [(o, r) for o in scene if (r := _color_reference(o, scene))] or cands
    if not cands:
        return None
    o, ref = _pick(rng, cands)
    pos = o.cell_name
    variants = (pos.replace("top", "upper").replace("bottom", "lower"),
                "middle" if pos == "center" else f"{pos} side")
    wrong = tuple({Obj("", "", "", r, c).cell_name for r in range(3) for c in range(3)} - {pos})
    return Question(f"Where is the {ref}?", pos, "position", "other", variants, tuple(sorted(wrong)))


_GENERATORS = {"color": _q_color, "shape": _q_shape, "count": _q_count, "exists": _q_exists,
               "relation": _q_relation, "size": _q_size, "position": _q_position}


def questions(rng: np.random.Generator, scene: list[Obj], k: int, color_ref_rate: float = 0.0) -> list[Question]:
    """Up to k questions of distinct types (random order), skipping types the scene can't support.
    A position question refers to its object by colour alone with probability `color_ref_rate`
    (where the colour is unique)."""
    out = []
    for t in rng.permutation(len(QUESTION_TYPES)):
        qtype = QUESTION_TYPES[t]
        q = _q_position(rng, scene, color_ref_rate) if qtype == "position" else _GENERATORS[qtype](rng, scene)
        if q is not None:
            out.append(q)
        if len(out) == k:
            break
    return out


def annotator_answers(rng: np.random.Generator, q: Question, synonym_rate: float,
                      error_rate: float, n: int = 10) -> list[str]:
    """n annotators: most give the canonical answer, some a paraphrase, a few a wrong one."""
    answers = []
    for _ in range(n):
        u = rng.random()
        if u < error_rate:
            answers.append(_pick(rng, q.distractors))
        elif u < error_rate + synonym_rate:
            answers.append(_pick(rng, q.variants))
        else:
            answers.append(q.answer)
    return answers


# ---------------------------------------------------------------- zero-shot labels

LABEL_SETS = {
    "largest_shape": {"classnames": SHAPES,
                      "templates": ("a {}.", "a picture with a big {}.", "the largest object is a {}.")},
    "largest_color": {"classnames": COLORS,
                      "templates": ("a big {} object.", "the largest object is {}.", "a {} shape.")},
    "object_count": {"classnames": tuple(f"{w} object" + ("s" if i != 1 else "")
                                         for i, w in enumerate(NUMBER_WORDS) if i >= 1),
                     "templates": ("{}.", "a picture of {}.", "an image with {}.")},
}


def zero_shot_labels(scene: list[Obj]) -> dict[str, int]:
    """Class index per label set; -1 where the label is ambiguous (no unique large object)."""
    large = [o for o in scene if o.size == "large"]
    unique = large[0] if len(large) == 1 else (scene[0] if len(scene) == 1 else None)
    return {
        "largest_shape": SHAPES.index(unique.shape) if unique else -1,
        "largest_color": COLORS.index(unique.color) if unique else -1,
        "object_count": len(scene) - 1,
    }


def scene_to_json(scene: list[Obj]) -> list[dict]:
    return [asdict(o) for o in scene]
