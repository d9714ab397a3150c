"""The distillation loss zoo: one small pure function per loss, formula in its docstring.

All embeddings are L2-normalised unless said otherwise. s_* is the student, t_* the
teacher; `proj_*` are learned linear maps from the student width to the teacher width
(identity when the widths agree). `registry.py` binds each function to the fields of a
training batch and the heads it learns; a *method* is a weighted dict of loss names.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from clipdistill.losses.dispatch import contrastive_loss
from clipdistill.models.patches import resample_tokens


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


def patch_feature_distillation(s_tokens, t_tokens, proj) -> torch.Tensor:
    """Patch-token FD on the penultimate layer (what LLaVA consumes): student tokens
    projected to the teacher width (proj) and resampled to the teacher's grid, then
    MSE against the teacher tokens: mean over batch, tokens and channels."""
    grid = int(round(math.sqrt(t_tokens.shape[1])))
    return F.mse_loss(proj(resample_tokens(s_tokens, grid)), t_tokens.to(s_tokens.dtype))
