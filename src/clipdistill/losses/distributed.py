"""Local-loss mode for data-parallel training (as open_clip's `local_loss` + `gather_with_grad`).

Each rank scores its own B_r rows against the columns gathered from every rank (with
gradient), target at `rank·B_r + i`:

    ℓ_r = ½ [CE_rows(s·I_r @ T_allᵀ) + CE_rows(s·T_r @ I_allᵀ)]

The text-side rows of rank r are the global matrix's columns, so the mean of ℓ_r over
ranks equals the single-process symmetric loss, and DDP's gradient averaging makes the
gradients equal too. No rank ever holds the B×B matrix.
"""

from __future__ import annotations

import torch

from clipdistill.losses import contrastive as _contrastive
from clipdistill.losses.dispatch import resolve_backend
from clipdistill.training.parallel import gather_with_grad


def row_contrastive_loss(rows: torch.Tensor, columns: torch.Tensor, logit_scale, *, offset: int = 0,
                         logit_bias=None, backend: str = "auto") -> torch.Tensor:
    """mean_i CE(logit_scale · rows_i @ columnsᵀ (+ bias), target i + offset)."""
    if rows.ndim != 2 or columns.ndim != 2 or rows.shape[1] != columns.shape[1]:
        raise ValueError(f"row_contrastive_loss: expected [M, D] and [N, D], got {tuple(rows.shape)} and {tuple(columns.shape)}")
    if not 0 <= offset <= len(columns) - len(rows):
        raise ValueError(f"row_contrastive_loss: offset {offset} puts targets outside the {len(columns)} columns")
    backend = resolve_backend(backend, rows)
    if backend == "naive":
        return _contrastive.row_contrastive_naive(rows, columns, logit_scale, logit_bias, offset)
    if backend == "torch":
        return _contrastive.row_contrastive_chunked(rows, columns, logit_scale, logit_bias, offset)
    from clipdistill.kernels.contrastive import row_contrastive_triton

    return row_contrastive_triton(rows, columns, logit_scale, logit_bias, offset)


def local_contrastive_loss(local_image: torch.Tensor, local_text: torch.Tensor, logit_scale, *,
                           all_image: torch.Tensor, all_text: torch.Tensor, rank: int,
                           logit_bias=None, backend: str = "auto") -> torch.Tensor:
    """This rank's share of the symmetric loss, given the gathered features (equal local batches)."""
    offset = rank * len(local_image)
    kw = dict(offset=offset, logit_bias=logit_bias, backend=backend)
    return 0.5 * (row_contrastive_loss(local_image, all_text, logit_scale, **kw)
                  + row_contrastive_loss(local_text, all_image, logit_scale, **kw))


def ddp_contrastive_loss(image: torch.Tensor, text: torch.Tensor, logit_scale, *, logit_bias=None,
                         group=None, backend: str = "auto") -> torch.Tensor:
    """Local-loss mode in a torch.distributed job (falls back to the plain loss on one process)."""
    import torch.distributed as dist

    rank = dist.get_rank(group) if dist.is_available() and dist.is_initialized() else 0
    return local_contrastive_loss(image, text, logit_scale, all_image=gather_with_grad(image, group),
                                  all_text=gather_with_grad(text, group), rank=rank,
                                  logit_bias=logit_bias, backend=backend)
