"""One data-parallel distillation step on a fixed global batch; rank 0 saves loss and gradients.
Run under `torchrun --nproc_per_node N` (or plainly, for the single-process reference)."""

import sys

import torch
import torch.nn.functional as F

from clipdistill.training import parallel
from clipdistill.distill.train import student_batch
from clipdistill.losses import make_heads, method_loss
from clipdistill.models import create_model

from reduce_and_save import reduce_and_save  # tests/helpers, the script's own folder

METHOD = {"clip": {}, "crd": {"temperature": 2.0}, "icl": {}, "fd": {"weight": 10.0}, "affinity": {}}


def main(out: str) -> None:
    rank, world = parallel.init_from_env()
    g = torch.Generator().manual_seed(0)
    batch, width = 12, 80
    images = torch.randn(batch, 3, 64, 64, generator=g)
    tokens = torch.randint(1, 200, (batch, 48), generator=g)
    t_image = F.normalize(torch.randn(batch, width, generator=g), dim=-1)
    t_text = F.normalize(torch.randn(batch, width, generator=g), dim=-1)
    student = create_model("cd-student-xs", 0)
    torch.manual_seed(1)
    heads = make_heads(METHOD, student.text_projection.shape[1], width)
    idx = parallel.shard(torch.arange(batch), rank, world)
    b = {**student_batch(student, images[idx], tokens[idx], set(), 0.0),
         "t_image": t_image[idx], "t_text": t_text[idx], "t_scale": torch.tensor(30.0)}
    if world > 1:
        b = parallel.gather_batch(b, rank)
    loss, _ = method_loss(METHOD, b, heads)
    loss.backward()
    params = dict(student.named_parameters()) | {f"heads.{k}": v for k, v in heads.named_parameters()}
    reduce_and_save(out, loss, params, rank, world, average=True)

if __name__ == "__main__":
    main(sys.argv[1])
