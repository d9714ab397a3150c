"""Linear CKA (Kornblith et al., 2019): representational similarity of two models on the
same inputs, invariant to rotation and isotropic scaling, comparable across widths.

    CKA(X, Y) = ‖Ỹᵀ X̃‖²_F / (‖X̃ᵀ X̃‖_F · ‖Ỹᵀ Ỹ‖_F),  X̃, Ỹ column-centred, rows = samples.
"""

from __future__ import annotations

import torch


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"linear_cka: sample counts differ: {x.shape[0]} vs {y.shape[0]}")
    x = x.double() - x.double().mean(0, keepdim=True)
    y = y.double() - y.double().mean(0, keepdim=True)
    hsic = (y.T @ x).pow(2).sum()
    return (hsic / ((x.T @ x).norm() * (y.T @ y).norm())).item()
