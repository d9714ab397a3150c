"""Fused Triton kernels (one file per kernel family)."""

from __future__ import annotations

import functools
import os


@functools.cache
def triton_available() -> bool:
    """True when Triton can run here: a CUDA device, or the interpreter (TRITON_INTERPRET=1)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    if os.environ.get("TRITON_INTERPRET") == "1":
        return True
    import torch

    return torch.cuda.is_available()
