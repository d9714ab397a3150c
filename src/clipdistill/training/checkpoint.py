"""Resumable training checkpoints: one safetensors file, written atomically.

Tensors: each module's state dict under its name (`student.`, `heads.`, ...) and the
optimizer state under `opt.<param id>.<name>`; the metadata holds the step, the log, the
optimizer's param groups and the scheduler state as JSON, and, for fp16, the grad scaler's
state (its loss scale and growth tracker: a resumed run must scale as the uninterrupted one).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from clipdistill.io import DataError, safetensors_header


def save_checkpoint(path: Path, modules: dict[str, torch.nn.Module], opt, sched, step: int, log: list[dict],
                    scaler: torch.amp.GradScaler | None = None) -> None:
    # on the host: a run on a GPU saves and resumes like one on the CPU (no-op there)
    tensors = {f"{prefix}.{k}": v.detach().cpu().contiguous()
               for prefix, module in modules.items() for k, v in module.state_dict().items()}
    opt_state = opt.state_dict()
    for pid, state in opt_state["state"].items():
        for name, value in state.items():
            # safetensors has no 0-d tensors: scalars (Adam's step) travel as shape [1]
            tensors[f"opt.{pid}.{name}"] = (value.detach().cpu().reshape(-1).contiguous() if value.ndim == 0
                                            else value.detach().cpu().contiguous())
    meta = {"step": step, "log": log, "param_groups": opt_state["param_groups"], "sched": sched.state_dict(),
            "scalar_states": sorted(f"opt.{pid}.{n}" for pid, st in opt_state["state"].items()
                                    for n, v in st.items() if v.ndim == 0)}
    if scaler is not None and scaler.is_enabled():  # a disabled scaler has no state: fp32 files stay as they were
        meta["scaler"] = scaler.state_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_file(tensors, tmp, metadata={"state": json.dumps(meta, default=str)})
    os.replace(tmp, path)


def load_checkpoint(path: Path, modules: dict[str, torch.nn.Module], opt, sched,
                    scaler: torch.amp.GradScaler | None = None) -> tuple[int, list[dict]]:
    """Restore the modules, optimizer, scheduler and (when both sides have one) grad scaler in
    place; returns (step, log)."""
    from safetensors import safe_open

    try:
        safetensors_header(path)
    except DataError as exc:
        raise DataError(f"{exc}; delete it to restart the run from step 0") from None
    with safe_open(path, framework="pt") as fh:
        meta = json.loads(fh.metadata()["state"])
    tensors = load_file(path)
    for prefix, module in modules.items():
        module.load_state_dict({k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(f"{prefix}.")})
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = value.reshape(()) if key in meta["scalar_states"] else value
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    sched.load_state_dict(meta["sched"])
    if scaler is not None and scaler.is_enabled() and "scaler" in meta:
        scaler.load_state_dict(meta["scaler"])
    return meta["step"], meta["log"]
