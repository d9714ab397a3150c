"""The distillation loss zoo: one small pure function per loss, formula in its docstring.

All embeddings are L2-normalised unless said otherwise. s_* is the student, t_* the
teacher; `proj` maps the student width to the teacher width (a learned Linear with bias,
built for every teacher, equal widths included). `registry.py` binds each function to the
fields of a training batch and the heads it learns; a *method* is a weighted dict of loss names.

Sources, read side by side with their code: CLIP-KD (Yang et al., CVPR 2024, arXiv
2307.12732; §3 and `KDClipLoss` in its open_clip fork) for crd, fd, mfd, icl, gd, afd;
TinyCLIP (Wu et al., ICCV 2023, arXiv 2309.12314; §3.1 affinity mimicking) for affinity.
Deviations kept on purpose are said in the docstring of the loss that keeps them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from clipdistill.losses.dispatch import contrastive_loss

# CLIP-KD tuned its FD weight (2000) with a ViT-B/16 teacher: D = 512, error averaged over D.
FD_REFERENCE_DIM = 512


def feature_distillation(s_feat: torch.Tensor, t_feat: torch.Tensor, proj) -> torch.Tensor:
    """FD (CLIP-KD §3, "Feature Distillation"): the student embedding through the projector
    P (Linear with bias, student → teacher width), re-normalised, against the teacher's:
        ‖normalise(P·s + b) − t‖² summed over the D dims, mean over the batch, / 512.

    Weight rule: CLIP-KD computes λ·MSE = λ·‖·‖²/D with λ = 2000 at D = 512. Dividing by 512
    instead of D keeps a weight of 2000 exactly CLIP-KD's at D = 512 and makes the initial
    FD/CLIP ratio width-independent: at initialisation normalise(P·s + b) and t are unrelated
    unit vectors, E‖·‖² = 2 at any D, so each modality's term starts at 2/512 per unit of
    weight (about 7.8 at 2000), where λ·MSE would start at 2λ/D (8× larger at D = 64).

    Kept on purpose: CLIP-KD builds P only when the widths differ; here every teacher gets
    one (issue #18: no teacher-dependent heads). P reads the student's normalised embedding
    where CLIP-KD's reads it before normalisation: the batch carries only normalised ones."""
    s = F.normalize(proj(s_feat), dim=1)
    return (s - t_feat).square().sum(1).mean() / FD_REFERENCE_DIM


def interactive_contrastive(s_image, s_text, t_image, t_text, scale) -> torch.Tensor:
    """ICL (CLIP-KD §3, "Interactive Contrastive Learning"): the student's projected,
    normalised embeddings as queries against the teacher's keys, row-wise InfoNCE:
        ½ [CE(scale · s_image @ t_textᵀ, diag) + CE(scale · s_text @ t_imageᵀ, diag)].
    `scale` is CLIP-KD's learnable `cross_logit_scale`, which its code uses as the multiplier
    itself (initialised to log(1/0.07) ≈ 2.66, never exponentiated); the registry passes the
    parameter, not its exp."""
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
    """AFD (CLIP-KD §3, "Augmented Feature Distillation"): fuse each normalised student
    embedding with its teacher counterpart through a learned Linear with bias from
    D_s + D_t to D_s, f = normalise(W [s ; t] + b), and train the fused pair with InfoNCE
    at AFD's own learnable scale (CLIP-KD's `fusion_logit_scale`, used as the multiplier
    itself, initialised to log(1/0.07)): contrastive_loss(f_image, f_text, scale).
    Gradients reach the student through W. (CLIP-KD's code concatenates the *projected*
    student, which only fits its declared (D_s + D_t) → D_s fusion at equal widths; the
    student's own embedding is what that shape asks for at any width.)"""
    f_img = F.normalize(fuse_image(torch.cat([s_image, t_image], dim=1)), dim=1)
    f_txt = F.normalize(fuse_text(torch.cat([s_text, t_text], dim=1)), dim=1)
    return contrastive_loss(f_img, f_txt, scale)


def affinity_mimicking(s_image, s_text, s_scale, t_image, t_text, t_scale) -> torch.Tensor:
    """TinyCLIP affinity mimicking (§3.1, and `ClipSoftLoss` in its code): soft
    cross-entropy between the teacher's and the student's image→text and text→image
    affinities, each model at its own logit scale:
        ½ [−Σ softmax_rows(T) log softmax_rows(S) − Σ softmax_cols(T) log softmax_cols(S)] / B,
        S = s_scale · s_image @ s_textᵀ,  T = t_scale · t_image @ t_textᵀ.
    (Soft-CE, not KL: it includes the teacher entropy, so its value is never 0; its gradient
    equals KL's.) The registry's `temperature` option, when set, puts both models at 1/τ:
    the pre-#18 behaviour, kept only so that old params still run."""
    S = s_scale * s_image @ s_text.T
    T = (t_scale * t_image @ t_text.T).detach()
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
    # imported here: clipdistill.models loads open_clip (seconds), which `params check` never needs
    from clipdistill.models.patches import resample_tokens

    grid = int(round(math.sqrt(t_tokens.shape[1])))
    return F.mse_loss(proj(resample_tokens(s_tokens, grid)), t_tokens.to(s_tokens.dtype))
