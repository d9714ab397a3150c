"""The distillation loss zoo: one small pure function per loss, formula in its docstring.

All embeddings are L2-normalised unless said otherwise. s_* is the student, t_* the
teacher; `proj_*` are learned linear maps from the student width to the teacher width
(identity when the widths agree). The registry at the bottom (`LOSSES`) binds each
function to the fields of a training batch; a *method* is a weighted dict of names.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from clipdistill.losses import contrastive_loss, siglip_loss, similarity_kd_loss


def feature_distillation(s_feat: torch.Tensor, t_feat: torch.Tensor) -> torch.Tensor:
    """FD: mean squared error between the (projected) student and the teacher embedding,
    mean over batch and dimensions: ‖P·s − t‖² / (B·D)."""
    return F.mse_loss(s_feat, t_feat)


def interactive_contrastive(s_image, s_text, t_image, t_text, scale) -> torch.Tensor:
    """ICL: student queries against teacher keys, row-wise InfoNCE with its own scale:
    ½ [CE(scale · s_image @ t_textᵀ, diag) + CE(scale · s_text @ t_imageᵀ, diag)]."""
    target = torch.arange(len(s_image), device=s_image.device)
    return 0.5 * (F.cross_entropy(scale * s_image @ t_text.T, target)
                  + F.cross_entropy(scale * s_text @ t_image.T, target))


def infonce_feature_gradient(image, text, scale) -> tuple[torch.Tensor, torch.Tensor]:
    """Closed-form gradient of the symmetric InfoNCE w.r.t. image and text embeddings:
    with P = softmax_rows(L), Q = softmax_cols(L), L = scale·I Tᵀ, and E = ½(P + Q) − 1:
    ∂ℓ/∂I = scale·E T / B,  ∂ℓ/∂T = scale·Eᵀ I / B."""
    logits = scale * image @ text.T
    n = len(image)
    E = 0.5 * (logits.softmax(1) + logits.softmax(0)) - torch.eye(n, device=image.device, dtype=logits.dtype)
    return scale * E @ text / n, scale * E.T @ image / n


def gradient_distillation(s_image, s_text, s_scale, t_image, t_text, t_scale) -> torch.Tensor:
    """GD: match the InfoNCE gradients the two models would receive (student projected to
    the teacher width): B·MSE(∂ℓ_s/∂I_s, ∂ℓ_t/∂I_t) + B·MSE(∂ℓ_s/∂T_s, ∂ℓ_t/∂T_t)
    (the factor B undoes the 1/B inside the gradients, keeping magnitudes batch-independent)."""
    gs_i, gs_t = infonce_feature_gradient(s_image, s_text, s_scale)
    with torch.no_grad():
        gt_i, gt_t = infonce_feature_gradient(t_image, t_text, t_scale)
    n = len(s_image)
    return n * (F.mse_loss(gs_i, gt_i) + F.mse_loss(gs_t, gt_t))


def augmented_feature_distillation(s_image, s_text, t_image, t_text, fuse_image, fuse_text, scale):
    """AFD: fuse each student embedding with its teacher counterpart through a learned
    linear map, f = normalise(W [P·s ; t]), and train the fused pair contrastively:
    contrastive_loss(f_image, f_text, scale). Gradients reach the student through W."""
    f_img = F.normalize(fuse_image(torch.cat([s_image, t_image], dim=1)), dim=1)
    f_txt = F.normalize(fuse_text(torch.cat([s_text, t_text], dim=1)), dim=1)
    return contrastive_loss(f_img, f_txt, scale)


def affinity_mimicking(s_image, s_text, t_image, t_text, temperature: float) -> torch.Tensor:
    """TinyCLIP affinity mimicking: soft cross-entropy between teacher and student
    image→text and text→image affinities at a fixed temperature τ:
    ½ [−Σ softmax(T/τ) log softmax(S/τ) over rows + the same over columns] / B,
    S = s_image @ s_textᵀ, T = t_image @ t_textᵀ. (Soft-CE, not KL: it includes the
    teacher entropy, so its value is never 0; its gradient equals KL's.)"""
    S, T = s_image @ s_text.T / temperature, t_image @ t_text.T / temperature
    rows = -(T.softmax(1) * S.log_softmax(1)).sum(1).mean()
    cols = -(T.softmax(0) * S.log_softmax(0)).sum(0).mean()
    return 0.5 * (rows + cols)


def soft_target_ce(s_image, s_text, s_scale, teachers: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]):
    """open_clip / MobileCLIP soft-target CE with a teacher ensemble: targets are averaged
    *after* the softmax, each teacher with its own logit scale,
    P = mean_k softmax(t_scale_k · t_image_k @ t_text_kᵀ) (rows; columns likewise), and
    loss = ½ [−Σ P_rows log softmax_rows(S) − Σ P_cols log softmax_cols(S)] / B, S = s_scale·s_image@s_textᵀ."""
    S = s_scale * s_image @ s_text.T
    with torch.no_grad():
        logits = [ts * ti @ tt.T for ti, tt, ts in teachers]
        p_rows = torch.stack([t.softmax(1) for t in logits]).mean(0)
        p_cols = torch.stack([t.softmax(0) for t in logits]).mean(0)
    rows = -(p_rows * S.log_softmax(1)).sum(1).mean()
    cols = -(p_cols * S.log_softmax(0)).sum(0).mean()
    return 0.5 * (rows + cols)


def siglip_distillation(s_image, s_text, s_scale, s_bias, t_image, t_text, t_scale, t_bias) -> torch.Tensor:
    """SigLIP soft-label KD: each pair's teacher probability σ(t_scale·t_i·t_j + t_bias) is
    the target of the student's sigmoid: (1/B) Σ_ij BCE(σ(s_ij), σ(t_ij))."""
    s_logits = s_scale * s_image @ s_text.T + s_bias
    with torch.no_grad():
        target = torch.sigmoid(t_scale * t_image @ t_text.T + t_bias)
    return F.binary_cross_entropy_with_logits(s_logits, target, reduction="sum") / len(s_image)


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


def patch_feature_distillation(s_tokens, t_tokens, proj) -> torch.Tensor:
    """Patch-token FD on the penultimate layer (what LLaVA consumes): student tokens
    projected to the teacher width (proj) and resampled to the teacher's grid, then
    MSE against the teacher tokens: mean over batch, tokens and channels."""
    grid = int(round(math.sqrt(t_tokens.shape[1])))
    return F.mse_loss(proj(resample_tokens(s_tokens, grid)), t_tokens.to(s_tokens.dtype))


# -------------------------------------------------------------------- the registry


class Scalar(torch.nn.Module):
    """A learned scalar (an extra logit scale or bias) that can live in a ModuleDict."""

    def __init__(self, value: float):
        super().__init__()
        self.value = torch.nn.Parameter(torch.tensor(float(value)))


def _proj(heads, name, x):
    return heads[name](x) if name in heads else x


def _norm_proj(heads, name, x):
    return F.normalize(_proj(heads, name, x), dim=1)


def _clip(b, heads, o):
    if "local" in b:  # data parallel, local-loss mode: this rank's rows against every rank's columns
        from clipdistill.losses.distributed import local_contrastive_loss

        lo = b["local"]
        return local_contrastive_loss(lo["s_image"], lo["s_text"], b["s_scale"], all_image=b["s_image"],
                                      all_text=b["s_text"], rank=lo["rank"])
    return contrastive_loss(b["s_image"], b["s_text"], b["s_scale"])


def _crd(b, heads, o):
    return similarity_kd_loss(b["s_image"], b["s_text"], b["s_scale"], b["t_image"], b["t_text"], b["t_scale"],
                              temperature=o.get("temperature", 1.0))


def _fd(b, heads, o):
    return (feature_distillation(_proj(heads, "proj_image", b["s_image"]), b["t_image"])
            + feature_distillation(_proj(heads, "proj_text", b["s_text"]), b["t_text"]))


def _mfd(b, heads, o):
    return feature_distillation(_proj(heads, "proj_image", b["s_image_masked"]), b["t_image"])


def _icl(b, heads, o):
    return interactive_contrastive(_norm_proj(heads, "proj_image", b["s_image"]),
                                   _norm_proj(heads, "proj_text", b["s_text"]),
                                   b["t_image"], b["t_text"], heads["icl_scale"].value.exp())


def _gd(b, heads, o):
    return gradient_distillation(_norm_proj(heads, "proj_image", b["s_image"]),
                                 _norm_proj(heads, "proj_text", b["s_text"]), b["s_scale"],
                                 b["t_image"], b["t_text"], b["t_scale"])


def _afd(b, heads, o):
    return augmented_feature_distillation(_proj(heads, "proj_image", b["s_image"]),
                                          _proj(heads, "proj_text", b["s_text"]), b["t_image"], b["t_text"],
                                          heads["afd_image"], heads["afd_text"], b["s_scale"])


def _affinity(b, heads, o):
    return affinity_mimicking(b["s_image"], b["s_text"], b["t_image"], b["t_text"], o.get("temperature", 0.05))


def _soft_ce(b, heads, o):
    teachers = b.get("t_ensemble") or [(b["t_image"], b["t_text"], b["t_scale"])]
    return soft_target_ce(b["s_image"], b["s_text"], b["s_scale"], teachers)


def _siglip(b, heads, o):
    return siglip_loss(b["s_image"], b["s_text"], b["s_scale"], heads["siglip_bias"].value)


def _siglip_kd(b, heads, o):
    return siglip_distillation(b["s_image"], b["s_text"], b["s_scale"], heads["siglip_bias"].value,
                               b["t_image"], b["t_text"], b["t_scale"], o.get("teacher_bias", -10.0))


def _patch_fd(b, heads, o):
    proj = heads["proj_patch"] if "proj_patch" in heads else torch.nn.Identity()
    return patch_feature_distillation(b["s_patches"], b["t_patches"], proj)


# name → (loss(batch, heads, options), batch fields it needs beyond the student's embeddings)
LOSSES = {
    "clip": (_clip, set()),
    "crd": (_crd, {"t_image", "t_text"}),
    "fd": (_fd, {"t_image", "t_text"}),
    "mfd": (_mfd, {"t_image", "s_image_masked"}),
    "icl": (_icl, {"t_image", "t_text"}),
    "gd": (_gd, {"t_image", "t_text"}),
    "afd": (_afd, {"t_image", "t_text"}),
    "affinity": (_affinity, {"t_image", "t_text"}),
    "soft_ce": (_soft_ce, {"t_image", "t_text"}),
    "siglip": (_siglip, set()),
    "siglip_kd": (_siglip_kd, {"t_image", "t_text"}),
    "patch_fd": (_patch_fd, {"t_patches", "s_patches"}),
}


def teacher_fields(losses) -> list[str]:
    """The teacher targets (t_* batch fields) these losses read, sorted; unknown names read none."""
    return sorted({f for loss in losses for f in LOSSES.get(loss, (None, set()))[1] if f.startswith("t_")})


def make_heads(method: dict, s_dim: int, t_dim: int, s_width: int | None = None,
               t_width: int | None = None) -> torch.nn.ModuleDict:
    """The learned parts a method needs (projections, fusion layers, extra scales/biases)."""
    names = set(method)
    unknown = names - set(LOSSES)
    if unknown:
        raise ValueError(f"unknown loss(es) {sorted(unknown)}; known: {', '.join(LOSSES)}")
    heads = torch.nn.ModuleDict()
    if s_dim != t_dim and names & {"fd", "mfd", "icl", "gd", "afd"}:
        heads["proj_image"] = torch.nn.Linear(s_dim, t_dim, bias=False)
        if names & {"fd", "icl", "gd", "afd"}:
            heads["proj_text"] = torch.nn.Linear(s_dim, t_dim, bias=False)
    if "icl" in names:
        heads["icl_scale"] = Scalar(math.log(1 / 0.07))
    if "afd" in names:
        heads["afd_image"] = torch.nn.Linear(2 * t_dim, t_dim)
        heads["afd_text"] = torch.nn.Linear(2 * t_dim, t_dim)
    if names & {"siglip", "siglip_kd"}:
        heads["siglip_bias"] = Scalar(-10.0)
    if "patch_fd" in names:
        if s_width is None or t_width is None:
            raise ValueError("patch_fd needs the student and teacher token widths (a store with patch tokens)")
        if s_width != t_width:
            heads["proj_patch"] = torch.nn.Linear(s_width, t_width, bias=False)
    return heads


def method_loss(method: dict[str, dict], batch: dict, heads) -> tuple[torch.Tensor, dict[str, float]]:
    """Σ weight · loss over the method's terms; also each term's value (for the log).
    A non-finite term stops here, named."""
    total, terms = 0.0, {}
    for name, opts in method.items():
        value = LOSSES[name][0](batch, heads, opts)
        if not torch.isfinite(value):
            raise FloatingPointError(f"loss term {name!r} is {value.item()}")
        terms[name] = value.item()
        total = total + opts.get("weight", 1.0) * value
    return total, terms
