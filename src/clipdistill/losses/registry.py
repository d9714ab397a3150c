"""The loss registry: one record per loss, written where its term is defined.

A record says how to compute the loss from a training batch (`term(batch, heads, options)`),
which batch fields it reads beyond the student's embeddings (`t_*` fields are teacher
targets: a method reading none is a teacher-free baseline), and which learned heads it needs
(projections, fusion layers, extra scales and biases; see `HEADS`). Adding a loss: its
formula in `zoo.py`, then one `@loss(...)` term here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from clipdistill.losses import zoo
from clipdistill.losses.dispatch import contrastive_loss, siglip_loss, similarity_kd_loss


@dataclass(frozen=True)
class Loss:
    term: Callable[[dict, torch.nn.ModuleDict, dict], torch.Tensor]
    reads: frozenset[str]
    heads: tuple[str, ...] = ()


LOSSES: dict[str, Loss] = {}


def loss(name: str, reads: set[str] = frozenset(), heads: tuple[str, ...] = ()):
    """Register the decorated term as loss `name`."""
    def register(term):
        LOSSES[name] = Loss(term, frozenset(reads), heads)
        return term
    return register


# ---------------------------------------------------------------- heads

class Scalar(torch.nn.Module):
    """A learned scalar (an extra logit scale or bias) that can live in a ModuleDict."""

    def __init__(self, value: float):
        super().__init__()
        self.value = torch.nn.Parameter(torch.tensor(float(value)))


@dataclass(frozen=True)
class Widths:
    s_dim: int
    t_dim: int
    s_width: int | None  # patch-token widths: known only when the teacher gives patch tokens
    t_width: int | None


def _projection(w: Widths):
    # CLIP-KD's projector is a Linear with bias; built at equal widths too, so that the KD
    # heads (and what FD pins) do not depend on which teacher it is (issue #18)
    return torch.nn.Linear(w.s_dim, w.t_dim)


# CLIP-KD's extra logit scales (cross_logit_scale for ICL, fusion_logit_scale for AFD):
# learnable, initialised to log(1/0.07) and used as the multiplier itself (not exponentiated)
KD_SCALE_INIT = math.log(1 / 0.07)


def _patch_projection(w: Widths, users: str):
    if w.s_width is None or w.t_width is None:
        raise ValueError(f"{users} needs the student and teacher token widths (a store with patch tokens)")
    return torch.nn.Linear(w.s_width, w.t_width, bias=False) if w.s_width != w.t_width else None


# name -> factory(widths, names of the losses that use it) -> module, or None for the identity.
# Built in this order, whatever the method's order: initial weights draw from the global RNG.
HEADS: dict[str, Callable[[Widths, str], torch.nn.Module | None]] = {
    "proj_image": lambda w, users: _projection(w),
    "proj_text": lambda w, users: _projection(w),
    "icl_scale": lambda w, users: Scalar(KD_SCALE_INIT),
    "afd_image": lambda w, users: torch.nn.Linear(w.s_dim + w.t_dim, w.s_dim),
    "afd_text": lambda w, users: torch.nn.Linear(w.s_dim + w.t_dim, w.s_dim),
    "afd_scale": lambda w, users: Scalar(KD_SCALE_INIT),
    "siglip_bias": lambda w, users: Scalar(-10.0),
    "proj_patch": _patch_projection,
}


def _norm_proj(heads, name, x):
    return F.normalize(heads[name](x), dim=1)


# ---------------------------------------------------------------- the losses

@loss("clip")
def _clip(b, heads, o):
    if "local" in b:  # data parallel, local-loss mode: this rank's rows against every rank's columns
        from clipdistill.losses.distributed import local_contrastive_loss

        lo = b["local"]
        return local_contrastive_loss(lo["s_image"], lo["s_text"], b["s_scale"], all_image=b["s_image"],
                                      all_text=b["s_text"], rank=lo["rank"])
    return contrastive_loss(b["s_image"], b["s_text"], b["s_scale"])


@loss("crd", reads={"t_image", "t_text"})
def _crd(b, heads, o):
    return similarity_kd_loss(b["s_image"], b["s_text"], b["s_scale"], b["t_image"], b["t_text"], b["t_scale"],
                              temperature=o.get("temperature", 1.0))


@loss("fd", reads={"t_image", "t_text"}, heads=("proj_image", "proj_text"))
def _fd(b, heads, o):
    return (zoo.feature_distillation(b["s_image"], b["t_image"], heads["proj_image"])
            + zoo.feature_distillation(b["s_text"], b["t_text"], heads["proj_text"]))


@loss("mfd", reads={"t_image", "t_text", "s_image_masked"}, heads=("proj_image", "proj_text"))
def _mfd(b, heads, o):
    # CLIP-KD MFD: FD with the student's image masked, plus the (unmasked) text term
    return (zoo.feature_distillation(b["s_image_masked"], b["t_image"], heads["proj_image"])
            + zoo.feature_distillation(b["s_text"], b["t_text"], heads["proj_text"]))


@loss("icl", reads={"t_image", "t_text"}, heads=("proj_image", "proj_text", "icl_scale"))
def _icl(b, heads, o):
    return zoo.interactive_contrastive(_norm_proj(heads, "proj_image", b["s_image"]),
                                       _norm_proj(heads, "proj_text", b["s_text"]),
                                       b["t_image"], b["t_text"], heads["icl_scale"].value)


@loss("gd", reads={"t_image", "t_text"}, heads=("proj_image", "proj_text"))
def _gd(b, heads, o):
    return zoo.gradient_distillation(_norm_proj(heads, "proj_image", b["s_image"]),
                                     _norm_proj(heads, "proj_text", b["s_text"]), b["s_scale"],
                                     b["t_image"], b["t_text"], b["t_scale"])


@loss("afd", reads={"t_image", "t_text"}, heads=("afd_image", "afd_text", "afd_scale"))
def _afd(b, heads, o):
    return zoo.augmented_feature_distillation(b["s_image"], b["s_text"], b["t_image"], b["t_text"],
                                              heads["afd_image"], heads["afd_text"], heads["afd_scale"].value)


@loss("affinity", reads={"t_image", "t_text"})
def _affinity(b, heads, o):
    if "temperature" in o:  # old params: one fixed τ for both models (not TinyCLIP's)
        s_scale = t_scale = 1.0 / o["temperature"]
    else:
        s_scale, t_scale = b["s_scale"], b["t_scale"]
    return zoo.affinity_mimicking(b["s_image"], b["s_text"], s_scale, b["t_image"], b["t_text"], t_scale)


@loss("soft_ce", reads={"t_image", "t_text"})
def _soft_ce(b, heads, o):
    teachers = b.get("t_ensemble") or [(b["t_image"], b["t_text"], b["t_scale"])]
    return zoo.soft_target_ce(b["s_image"], b["s_text"], b["s_scale"], teachers)


@loss("siglip", heads=("siglip_bias",))
def _siglip(b, heads, o):
    return siglip_loss(b["s_image"], b["s_text"], b["s_scale"], heads["siglip_bias"].value)


@loss("siglip_kd", reads={"t_image", "t_text"}, heads=("siglip_bias",))
def _siglip_kd(b, heads, o):
    return zoo.siglip_distillation(b["s_image"], b["s_text"], b["s_scale"], heads["siglip_bias"].value,
                                   b["t_image"], b["t_text"], b["t_scale"], o.get("teacher_bias", -10.0))


@loss("patch_fd", reads={"t_patches", "s_patches"}, heads=("proj_patch",))
def _patch_fd(b, heads, o):
    proj = heads["proj_patch"] if "proj_patch" in heads else torch.nn.Identity()
    return zoo.patch_feature_distillation(b["s_patches"], b["t_patches"], proj)


# ---------------------------------------------------------------- methods

def teacher_fields(losses) -> list[str]:
    """The teacher targets (t_* batch fields) these losses read, sorted; unknown names read none."""
    return sorted({f for name in losses if name in LOSSES for f in LOSSES[name].reads if f.startswith("t_")})


def make_heads(method: dict, s_dim: int, t_dim: int, s_width: int | None = None,
               t_width: int | None = None) -> torch.nn.ModuleDict:
    """The learned parts a method needs (projections, fusion layers, extra scales/biases)."""
    unknown = set(method) - set(LOSSES)
    if unknown:
        raise ValueError(f"unknown loss(es) {sorted(unknown)}; known: {', '.join(LOSSES)}")
    widths = Widths(s_dim, t_dim, s_width, t_width)
    heads = torch.nn.ModuleDict()
    for head, build in HEADS.items():
        users = [name for name in method if head in LOSSES[name].heads]
        if users and (module := build(widths, "/".join(users))) is not None:
            heads[head] = module
    return heads


def method_loss(method: dict[str, dict], batch: dict, heads) -> tuple[torch.Tensor, dict[str, float]]:
    """Σ weight · loss over the method's terms; also each term's value (for the log).
    A non-finite term stops here, named."""
    total, terms = 0.0, {}
    for name, opts in method.items():
        value = LOSSES[name].term(batch, heads, opts)
        if not torch.isfinite(value):
            raise FloatingPointError(f"loss term {name!r} is {value.item()}")
        terms[name] = value.item()
        total = total + opts.get("weight", 1.0) * value
    return total, terms
