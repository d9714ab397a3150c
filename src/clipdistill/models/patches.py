"""Patch-token grids of ViT towers (penultimate-layer tokens, CLS dropped)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def resample_tokens(tokens: torch.Tensor, grid: int) -> torch.Tensor:
    """[B, P, W] patch tokens on a √P×√P grid → [B, grid², W] by bilinear resampling."""
    b, p, w = tokens.shape
    side = int(round(math.sqrt(p)))
    if side * side != p:
        raise ValueError(f"patch tokens do not form a square grid: {p} tokens")
    if side == grid:
        return tokens
    x = tokens.transpose(1, 2).reshape(b, w, side, side)
    x = F.interpolate(x, size=(grid, grid), mode="bilinear", align_corners=False)
    return x.reshape(b, w, grid * grid).transpose(1, 2)
