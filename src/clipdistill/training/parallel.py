"""Data-parallel training under `torchrun` (one process per GPU, or gloo on CPU).

Every rank draws the same global batch order and trains on its contiguous slice. The
batch fields are gathered across ranks — the student's with gradient — so the KD terms see
the whole global batch, and the CLIP term runs in local-loss mode (this rank's rows against
every rank's columns). Gradients are then averaged over ranks, as DDP does: the result
equals the single-process gradient on the same global batch. Only rank 0 writes files.
VQA training shards each global batch the same way (see `clipdistill.vqa.recipe.batch_loss`).
"""

from __future__ import annotations

import os

import torch


def rank_and_world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_from_env(device: torch.device = torch.device("cpu")) -> tuple[int, int]:
    """Join the process group torchrun describes (WORLD_SIZE > 1); a no-op otherwise. NCCL when
    the stage computes on GPUs (each rank on `cuda:LOCAL_RANK`, see training/runtime.py), gloo
    when it computes on the CPU — even on a GPU machine, since NCCL cannot reduce CPU tensors."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank_and_world()


def shard(indices: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """This rank's contiguous share of the global batch (rank order = global order)."""
    if len(indices) % world:
        raise ValueError(f"global batch of {len(indices)} does not split evenly over {world} ranks")
    per = len(indices) // world
    return indices[rank * per:(rank + 1) * per]


def gather_batch(local: dict, rank: int) -> dict:
    """The global batch from every rank's share; the student's fields keep their gradient
    (each rank's slice receives the gradients of every rank's loss)."""
    import torch.distributed as dist

    out = {}
    for key, value in local.items():
        if not isinstance(value, torch.Tensor) or value.ndim == 0:
            out[key] = value  # scales: parameters or constants, identical on every rank
        elif value.requires_grad:
            out[key] = gather_with_grad(value)
        else:
            parts = [torch.empty_like(value) for _ in range(dist.get_world_size())]
            dist.all_gather(parts, value.contiguous())
            out[key] = torch.cat(parts)
    out["local"] = {"rank": rank, "s_image": local["s_image"], "s_text": local["s_text"]}
    return out


def gather_with_grad(x: torch.Tensor, group=None) -> torch.Tensor:
    """Concatenate `x` from every rank; gradients flow back to each rank's own slice."""
    import torch.distributed as dist
    import torch.distributed.nn.functional as dist_fn

    if not (dist.is_available() and dist.is_initialized()):
        return x
    return torch.cat(dist_fn.all_gather(x, group=group))


def average_gradients(parameters, world: int, average: bool = True) -> None:
    """All-reduce the gradients; divide by the world size (DDP's averaging) unless each rank's
    loss is already normalised by the global count (then the sum is the gradient)."""
    import torch.distributed as dist

    for p in parameters:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            if average:
                p.grad.div_(world)


def sum_over_ranks(value: torch.Tensor) -> torch.Tensor:
    import torch.distributed as dist

    value = value.detach().clone()
    dist.all_reduce(value)
    return value


def mean_over_ranks(value: torch.Tensor) -> torch.Tensor:
    import torch.distributed as dist

    return sum_over_ranks(value) / dist.get_world_size()
