"""A word-level tokenizer for the synthetic world's small vocabulary.

Behaves like an open_clip tokenizer: `tok(texts) -> LongTensor[N, context_length]` with
start/end tokens and zero padding. The end token has the largest id because open_clip's
text tower pools at `argmax(token id)`.
"""

from __future__ import annotations

import re

import numpy as np
import torch

from clipdistill.data import world

PAD, UNK, SOT = "<pad>", "<unk>", "<sot>"
_WORD = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def world_lexicon(samples: int = 3000, seed: int = 0) -> list[str]:
    """Every word the synthetic world's captions and prompt templates use (sorted)."""
    rng = np.random.default_rng(seed)
    vocab = set()
    for _ in range(samples):
        vocab.update(words(world.caption(rng, world.sample_scene(rng, 1, 9))))
    for spec in world.LABEL_SETS.values():
        for template in spec["templates"]:
            for name in spec["classnames"]:
                vocab.update(words(template.format(name)))
    vocab.update(w for group in (world.SHAPES, world.COLORS, world.SIZES, world.NUMBER_WORDS)
                 for item in group for w in words(item))
    return sorted(vocab)


class WordTokenizer:
    def __init__(self, vocab: list[str], vocab_size: int, context_length: int):
        specials = [PAD, UNK, SOT]
        if len(vocab) + len(specials) + 1 > vocab_size:
            raise ValueError(f"{len(vocab)} words do not fit a vocab_size of {vocab_size}")
        self.vocab, self.vocab_size, self.context_length = list(vocab), vocab_size, context_length
        self.ids = {w: i for i, w in enumerate(specials + self.vocab)}
        self.sot, self.eot, self.unk = self.ids[SOT], vocab_size - 1, self.ids[UNK]

    def encode(self, text: str) -> list[int]:
        return [self.ids.get(w, self.unk) for w in words(text)]

    def __call__(self, texts: str | list[str], context_length: int | None = None) -> torch.Tensor:
        texts = [texts] if isinstance(texts, str) else texts
        n = context_length or self.context_length
        out = torch.zeros(len(texts), n, dtype=torch.long)
        for i, text in enumerate(texts):
            ids = [self.sot, *self.encode(text)][: n - 1] + [self.eot]
            out[i, : len(ids)] = torch.tensor(ids)
        return out

    def to_json(self) -> dict:
        return {"kind": "word", "vocab": self.vocab, "vocab_size": self.vocab_size,
                "context_length": self.context_length}
