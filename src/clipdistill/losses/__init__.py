"""The losses: the package face only re-exports. Every loss runs on one of the backends
(`dispatch.py`):

- "naive": the materialised reference (B×B logits in memory);
- "torch": chunked PyTorch with recomputation, O(B·chunk) memory (the CPU path);
- "triton": fused GPU kernels (CUDA tensors, or the interpreter with TRITON_INTERPRET=1);
- "auto": triton for CUDA tensors when available, else torch.

fp32 inputs run as IEEE fp32 everywhere; `allow_tf32=True` lets the Triton backend (and its
cuBLAS matmuls) round fp32 operands to TF32, ~8× faster on Hopper at ~1e-3 relative error.

The distillation zoo: formulas in `zoo.py`, one registry record per loss in `registry.py`.
"""

from clipdistill.losses.dispatch import (BACKENDS, contrastive_kd_loss, contrastive_loss, resolve_backend,
                                         siglip_loss, similarity_kd_loss)
from clipdistill.losses.registry import LOSSES, Loss, make_heads, method_loss, teacher_fields

__all__ = ["BACKENDS", "LOSSES", "Loss", "contrastive_kd_loss", "contrastive_loss", "make_heads", "method_loss",
           "resolve_backend", "siglip_loss", "similarity_kd_loss", "teacher_fields"]
