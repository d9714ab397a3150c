"""Shared tail of the data-parallel helper scripts: reduce gradients and loss as training does,
then rank 0 saves them for the test to compare with a single process."""

import torch

from clipdistill.training import parallel


def reduce_and_save(out: str, loss: torch.Tensor, params: dict, rank: int, world: int, average: bool) -> None:
    """`average`: DDP averaging (per-rank mean losses); else a sum (globally normalised losses)."""
    if world > 1:
        parallel.average_gradients(params.values(), world, average=average)
        loss = parallel.mean_over_ranks(loss) if average else parallel.sum_over_ranks(loss)
    if rank == 0:
        torch.save({"loss": loss.detach(), "world": world,
                    "grads": {k: p.grad.clone() for k, p in params.items() if p.grad is not None}}, out)
