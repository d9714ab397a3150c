"""Region–phrase contrastive term for teacher training (opt-in: `teachers.*.local_weight`).

A whole-scene InfoNCE only scores the pooled embedding against the caption; it does not ask the
patch tokens of an object's cell to say what the object is. This term does, at the layer the VLM
reads. It follows RegionCLIP's region–concept contrastive loss (Zhong et al., "RegionCLIP:
Region-based Language-Image Pretraining", CVPR 2022, eq. 1–2): each region's visual embedding is
classified, by cosine similarity over a temperature, among the text embeddings of a pool of
concepts. Here a region is an object's 3×3-grid cell (the synthetic world knows it), its embedding
is the mean of that cell's tokens sent through the tower's own output head (ln_post, proj, as the
CLS token is), and the concept pool is the batch's distinct object phrases ("a small red star"; or
the shape word alone, "a star", which asks for one shape direction whatever the colour).
Distinct phrases only: two objects with the same phrase share one target, so there are no false
negatives, and a batch with a single distinct phrase contributes exactly zero.

    L = mean_m  −log softmax_u( s · r̂_m · t̂_u )[target_m]
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cell_of_patches(side: int, grid: int = 3) -> torch.Tensor:
    """[side²] grid-cell index (row·grid + col) of each patch of a side×side token grid: the cell
    holding the patch's centre (the rule of `vqa.diagnostics.cell_tokens`, the VLM's cell probe)."""
    centre = (torch.arange(side) + 0.5) * grid / side
    cell = centre.floor().long().clamp(max=grid - 1)
    return (cell.repeat_interleave(side) * grid + cell.repeat(side))


def cell_means(tokens: torch.Tensor, grid: int = 3) -> torch.Tensor:
    """[B, grid², D]: the mean of each cell's patch tokens; `tokens` is [B, P, D], P a square (no CLS)."""
    side = round(tokens.shape[1] ** 0.5)
    if side * side != tokens.shape[1] or side < grid:
        raise ValueError(f"{tokens.shape[1]} tokens are not a square patch grid of at least {grid}×{grid}")
    member = F.one_hot(cell_of_patches(side, grid), grid * grid).to(tokens.dtype)  # [P, cells]
    return torch.einsum("pc,bpd->bcd", member / member.sum(0), tokens)


def region_phrase_loss(regions: torch.Tensor, phrases: torch.Tensor, target: torch.Tensor,
                       scale: torch.Tensor | float) -> torch.Tensor:
    """Mean cross-entropy of each region [M, E] against the phrase pool [U, E] (cosine · scale);
    `target` [M] is each region's phrase row. Neither input needs to be normalised."""
    logits = scale * F.normalize(regions, dim=-1) @ F.normalize(phrases, dim=-1).T
    return F.cross_entropy(logits, target)


PHRASES = ("object", "object_position", "shape")


def object_phrase(obj: dict, kind: str = "object") -> str:
    """A scene object's (`world.scene_to_json` row) canonical phrase: "a small red star" (object),
    the same + " on the top left" (object_position), or "a star" (shape)."""
    if kind not in PHRASES:
        raise ValueError(f"unknown phrase kind {kind!r}; one of {', '.join(PHRASES)}")
    text = obj["shape"] if kind == "shape" else f"{obj['size']} {obj['color']} {obj['shape']}"
    if kind == "object_position":
        from clipdistill.data.world import Obj
        cell = Obj(**obj).cell_name
        text += " in the center" if cell == "center" else f" on the {cell}"
    return ("an " if text[0] in "aeiou" else "a ") + text


def batch_regions(scenes: list[list[dict]], kind: str = "object"):
    """For a batch's scenes: (image index [M], cell index [M], distinct phrases [U], target [M])."""
    image, cell, target, pool = [], [], [], {}
    for i, scene in enumerate(scenes):
        for o in scene:
            image.append(i)
            cell.append(o["row"] * 3 + o["col"])
            target.append(pool.setdefault(object_phrase(o, kind), len(pool)))
    return torch.tensor(image, dtype=torch.long), torch.tensor(cell, dtype=torch.long), list(pool), \
        torch.tensor(target, dtype=torch.long)
