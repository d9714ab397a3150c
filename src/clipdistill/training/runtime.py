"""Where and how a stage computes (params `runtime`): the device, mixed precision, TF32,
`torch.compile` and gradient checkpointing — one helper every stage uses, so no stage moves
a model or a batch by hand.

The defaults (`device: auto` on a machine without CUDA, `precision: fp32`) do nothing at all:
moves to the CPU return the very same tensors, autocast is not entered and the grad scaler is
disabled (a pass-through), so CPU results stay bit-identical. Mixed precision autocasts the
forward passes only; weights, optimizer state and saved files stay fp32, and fp16 adds a
dynamic loss scale (`GradScaler`) because its gradients underflow.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from dataclasses import dataclass

import torch

from clipdistill.io import ClipdistillError
from clipdistill.params import RuntimeParams

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class DeviceUnavailable(ClipdistillError):
    """The params ask for a device this machine does not have."""


def resolve_device(name: str) -> torch.device:
    """`auto` → CUDA when present, else CPU; `cuda` → this rank's GPU (`LOCAL_RANK` under torchrun)."""
    has_cuda = torch.cuda.is_available()
    if name == "cuda" and not has_cuda:
        raise DeviceUnavailable("runtime.device is cuda but this machine has no CUDA device "
                                "(torch.cuda.is_available() is False); set runtime.device: cpu or auto")
    if name == "cpu" or not has_cuda:
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))


@dataclass(frozen=True)
class Runtime:
    """The resolved runtime of one stage process."""

    device: torch.device = torch.device("cpu")
    precision: str = "fp32"
    compile: bool = False
    grad_checkpointing: bool = False
    loss_backend: str = "auto"  # the stages that compute losses scope them with losses.dispatch.auto_backend
    # a split bigger than this is read lazily (data.splits.LazyImages), decoded by these workers
    in_memory_max_mb: int = RuntimeParams.model_fields["in_memory_max_mb"].default
    loader_workers: int = RuntimeParams.model_fields["loader_workers"].default

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    def module(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model on the device (in place; weights keep their dtype, fp32 masters)."""
        return model.to(self.device)

    def batch(self, value):
        """A tensor (or a dict / list / tuple of them) on the device; non-tensors pass through."""
        if isinstance(value, torch.Tensor):
            if self.is_cuda and value.device.type == "cpu":  # page-locked: an asynchronous copy
                return value.pin_memory().to(self.device, non_blocking=True)
            return value.to(self.device)
        if isinstance(value, dict):
            return {k: self.batch(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(self.batch(v) for v in value)
        return value

    def host(self, value: torch.Tensor) -> torch.Tensor:
        """A result back on the CPU (for metrics, numpy and files); the same tensor on the CPU."""
        return value.cpu()

    def autocast(self):
        """Mixed-precision autocast for forward passes (nothing at all in fp32)."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=AUTOCAST_DTYPES[self.precision])

    def grad_scaler(self) -> torch.amp.GradScaler:
        """fp16's dynamic loss scale; a disabled pass-through for fp32 and bf16."""
        return torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")

    def towers(self, model: torch.nn.Module, *, train: bool) -> torch.nn.Module:
        """An open_clip model on the device, with gradient checkpointing (training) and
        `torch.compile` of its towers in place (state-dict keys unchanged) when asked."""
        model = self.module(model)
        if train and self.grad_checkpointing:
            model.set_grad_checkpointing(True)
        if self.compile:
            for tower in (model.visual, getattr(model, "transformer", None)):
                if tower is not None:
                    tower.compile()
        return model


CPU = Runtime()  # what a stage function uses when no runtime is given: today's behaviour


def torchrun_argv(spec: RuntimeParams, argv: list[str]) -> list[str] | None:
    """The command that reruns `argv` (a data-parallel stage's command line) under torchrun with
    one rank per GPU, when `runtime.gpus` asks for more than one and this process is not a rank
    already; None otherwise. The GPUs are the ones this job sees (under SLURM: its allocation,
    which the profile requests as `runtime.gpus`)."""
    if spec.gpus == 1 or "LOCAL_RANK" in os.environ:
        return None
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if visible < spec.gpus:
        raise DeviceUnavailable(f"runtime.gpus is {spec.gpus} but this job sees {visible} GPU(s)")
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or "torchrun"
    return [torchrun, "--standalone", f"--nproc_per_node={spec.gpus}", "--no-python", *argv]


def setup(spec: RuntimeParams) -> Runtime:
    """Resolve the params once per process, before any work: refuses a missing device, sets
    the TF32 policy explicitly (PyTorch's default differs between matmul and cuDNN), and makes
    this rank's GPU the current one."""
    device = resolve_device(spec.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = spec.tf32
        torch.backends.cudnn.allow_tf32 = spec.tf32
        torch.cuda.set_device(device)
    return Runtime(device, spec.precision, spec.compile, spec.grad_checkpointing, spec.loss_backend,
                   spec.in_memory_max_mb, spec.loader_workers)
