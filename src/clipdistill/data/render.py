"""Rendering scenes to anti-aliased RGB images, in one of several styles (data sources).

Shapes are drawn at `supersample`× resolution and box-filtered down, which is the
anti-aliasing. Styles change the pixel distribution but never the semantics, so
distillation data can come from another distribution than teacher pretraining.
"""

from __future__ import annotations

import colorsys
import math

import numpy as np
from PIL import Image, ImageDraw

from clipdistill.data.world import Obj

PALETTE = {
    "red": (220, 40, 40), "orange": (245, 140, 30), "yellow": (235, 220, 50),
    "green": (50, 180, 60), "cyan": (50, 205, 215), "blue": (40, 80, 225),
    "purple": (140, 60, 200), "pink": (245, 125, 185),
}
SIZE_RADIUS = {"small": 0.22, "large": 0.42}  # fraction of a grid cell


def _shift_hue(rgb: tuple[int, int, int], degrees: float, sat: float, val: float):
    h, s, v = colorsys.rgb_to_hsv(*(c / 255 for c in rgb))
    r, g, b = colorsys.hsv_to_rgb((h + degrees / 360) % 1.0, min(1.0, s * sat), min(1.0, v * val))
    return int(r * 255), int(g * 255), int(b * 255)


def _style(style: str):
    """(background RGB, colour function) per style."""
    if style == "plain":
        return (24, 24, 28), lambda c: PALETTE[c]
    if style == "textured":
        return (40, 36, 32), lambda c: PALETTE[c]
    if style == "shifted_palette":
        return (205, 205, 195), lambda c: _shift_hue(PALETTE[c], 12, 0.8, 0.85)
    raise ValueError(f"unknown style {style!r}")


def _polygon(cx: float, cy: float, r: float, sides: int, rotation: float) -> list[tuple]:
    return [(cx + r * math.cos(rotation + 2 * math.pi * k / sides),
             cy + r * math.sin(rotation + 2 * math.pi * k / sides)) for k in range(sides)]


def _star(cx: float, cy: float, r: float) -> list[tuple]:
    pts = []
    for k in range(10):
        rad = r if k % 2 == 0 else r * 0.45
        a = -math.pi / 2 + math.pi * k / 5
        pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
    return pts


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill,
                background) -> None:
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        q = r * 0.5
        draw.ellipse([cx - q, cy - q, cx + q, cy + q], fill=background)
    elif shape == "square":
        s = r * 0.85
        draw.rectangle([cx - s, cy - s, cx + s, cy + s], fill=fill)
    elif shape == "triangle":
        draw.polygon(_polygon(cx, cy + r * 0.15, r, 3, -math.pi / 2), fill=fill)
    elif shape == "diamond":
        draw.polygon(_polygon(cx, cy, r, 4, 0.0), fill=fill)
    elif shape == "hexagon":
        draw.polygon(_polygon(cx, cy, r, 6, 0.0), fill=fill)
    elif shape == "star":
        draw.polygon(_star(cx, cy, r), fill=fill)
    elif shape == "cross":
        w = r * 0.36
        draw.rectangle([cx - r, cy - w, cx + r, cy + w], fill=fill)
        draw.rectangle([cx - w, cy - r, cx + w, cy + r], fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def render(scene: list[Obj], rng: np.random.Generator, *, size: int, style: str,
           supersample: int = 4, noise: float = 0.0, palette: dict | None = None, background=None,
           scale: float = 1.0) -> Image.Image:
    """Render one scene. All randomness (jitter, texture, noise) comes from `rng`. A world
    variant (`data.variants`) may bring its own `palette` (colour name → RGB), `background`
    and object `scale` (× the radius of each size)."""
    background_, colour_of = _style(style)
    if palette is not None:
        colour_of = palette.__getitem__
    background = background_ if background is None else tuple(background)
    big = size * supersample
    cell = big / 3
    img = Image.new("RGB", (big, big), background)
    draw = ImageDraw.Draw(img)
    if style == "textured":  # low-contrast stripes at a random angle and period
        period = cell * rng.uniform(0.25, 0.6)
        angle = rng.uniform(0, math.pi)
        dx, dy = math.cos(angle), math.sin(angle)
        for k in range(-int(2 * big / period), int(2 * big / period)):
            if k % 2:
                continue
            ox, oy = big / 2 + k * period * dx, big / 2 + k * period * dy
            draw.line([(ox - 2 * big * dy, oy + 2 * big * dx), (ox + 2 * big * dy, oy - 2 * big * dx)],
                      fill=(58, 52, 46), width=max(1, int(period / 2)))
    for obj in scene:
        r = SIZE_RADIUS[obj.size] * scale * cell * rng.uniform(0.9, 1.1)
        jitter = (0.5 - SIZE_RADIUS[obj.size] * scale) * cell * 0.6
        cx = (obj.col + 0.5) * cell + rng.uniform(-jitter, jitter)
        cy = (obj.row + 0.5) * cell + rng.uniform(-jitter, jitter)
        fill = colour_of(obj.color)
        if style == "textured":  # per-object brightness jitter
            f = rng.uniform(0.8, 1.1)
            fill = tuple(min(255, int(c * f)) for c in fill)
        _draw_shape(draw, obj.shape, cx, cy, r, fill, background)
    img = img.resize((size, size), Image.Resampling.BOX)
    if noise > 0:
        arr = np.asarray(img, dtype=np.float32) / 255.0
        arr = arr + rng.normal(0.0, noise, arr.shape).astype(np.float32)
        img = Image.fromarray((np.clip(arr, 0, 1) * 255 + 0.5).astype(np.uint8))
    return img
