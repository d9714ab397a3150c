"""Create, save and load open_clip models as self-describing directories.

A model directory (teachers and students alike):

    model.safetensors    weights (open_clip state dict)
    model_config.json    the open_clip config the weights belong to
    tokenizer.json       {"kind": "word", ...} or {"kind": "open_clip", "name": ...}
    manifest.json        model name, weights sha256, preprocessing, provenance

External weights are resolved offline: a local file, or an open_clip pretrained tag whose
file is already in the Hugging Face cache. Anything else fails at once with one line.
"""

from __future__ import annotations

import logging
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import open_clip
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import save_file

from clipdistill.io import ClipdistillError, atomic_dir, read_json, safetensors_header, sha256_file, write_json
from clipdistill.models.tokenizer import WordTokenizer, world_lexicon

HF_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


class ModelError(ClipdistillError):
    """A model or its weights cannot be found or loaded."""


@dataclass
class ClipBundle:
    model: open_clip.CLIP
    tokenizer: Callable[[list[str]], torch.Tensor]
    model_name: str
    preprocess: dict[str, Any]   # size, mean, std, interpolation (open_clip's preprocess cfg)
    manifest: dict[str, Any]
    tokenizer_spec: dict[str, Any]
    config: dict[str, Any] | None = None   # the open_clip config; None: the registry's for model_name


def preprocess_cfg(model) -> dict[str, Any]:
    cfg = open_clip.get_model_preprocess_cfg(model)
    return {"size": list(cfg["size"]), "mean": list(cfg["mean"]), "std": list(cfg["std"]),
            "interpolation": cfg.get("interpolation", "bicubic")}


def preprocess_images(images: torch.Tensor, cfg: dict[str, Any]) -> torch.Tensor:
    """uint8 NCHW → normalised float NCHW at the model's size (same as open_clip's
    transform for square inputs: resize, then normalise)."""
    x = images.float().div_(255.0)
    size = tuple(cfg["size"])
    if tuple(x.shape[-2:]) != size:
        x = F.interpolate(x, size=size, mode=cfg["interpolation"], antialias=True,
                          align_corners=False).clamp_(0, 1)
    mean = torch.tensor(cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    return (x - mean) / std


def word_tokenizer_for(model_name: str) -> WordTokenizer:
    text_cfg = open_clip.get_model_config(model_name)["text_cfg"]
    return WordTokenizer(world_lexicon(), text_cfg["vocab_size"], text_cfg["context_length"])


def default_tokenizer_spec(model_name: str) -> dict:
    """Small-vocabulary configs (the synthetic world) get the word tokenizer, others open_clip's."""
    if open_clip.get_model_config(model_name)["text_cfg"].get("vocab_size", 49408) <= 4096:
        return word_tokenizer_for(model_name).to_json()
    return {"kind": "open_clip", "name": model_name}


def tokenizer_from_spec(spec: dict) -> Callable:
    if spec["kind"] == "word":
        return WordTokenizer(spec["vocab"], spec["vocab_size"], spec["context_length"])
    if spec["kind"] == "open_clip":
        return open_clip.get_tokenizer(spec["name"])
    raise ModelError(f"unknown tokenizer kind {spec['kind']!r}")


def create_model(model_name: str, seed: int) -> open_clip.CLIP:
    if open_clip.get_model_config(model_name) is None:
        raise ModelError(f"unknown model {model_name!r}; known: {', '.join(open_clip.list_models())}")
    torch.manual_seed(seed)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # open_clip warns that no pretrained weights were loaded: intended here
    try:
        return open_clip.create_model(model_name)
    finally:
        root.setLevel(level)


def save_model_dir(out: str | Path, model, model_name: str, tokenizer_spec: dict,
                   provenance: dict, extra_files: dict[str, bytes] | None = None) -> dict:
    """Write a model directory atomically; returns its manifest."""
    with atomic_dir(out) as tmp:
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(state, tmp / "model.safetensors")
        write_json(tmp / "model_config.json", open_clip.get_model_config(model_name))
        write_json(tmp / "tokenizer.json", tokenizer_spec)
        for name, payload in (extra_files or {}).items():
            (tmp / name).write_bytes(payload)
        manifest = {"model_name": model_name, "weights_sha256": sha256_file(tmp / "model.safetensors"),
                    "preprocess": preprocess_cfg(model),
                    "params": {"total": sum(p.numel() for p in model.parameters()),
                               "visual": sum(p.numel() for p in model.visual.parameters())},
                    **provenance}
        write_json(tmp / "manifest.json", manifest)
    return manifest


def load_model_dir(path: str | Path) -> ClipBundle:
    path = Path(path)
    if not (path / "manifest.json").is_file():
        raise ModelError(f"{path}: not a model directory (no manifest.json)")
    manifest = read_json(path / "manifest.json")
    name = manifest["model_name"]
    weights = path / "model.safetensors"
    safetensors_header(weights)  # a truncated file: one line, not the library's traceback
    if manifest.get("weights_sha256") and sha256_file(weights) != manifest["weights_sha256"]:
        raise ModelError(f"{weights}: corrupt weights (their sha256 differs from the one in manifest.json)")
    # The saved config wins over the registry's config of the same name: a directory written
    # before a shipped config changed must load as it was trained (open_clip would otherwise
    # resize the position embedding to the new image size without a word).
    registry = open_clip.factory._MODEL_CONFIGS
    shipped = registry.get(name)
    config = registry[name] = read_json(path / "model_config.json")
    try:
        model = open_clip.create_model(name, pretrained=str(weights))
    except (RuntimeError, KeyError, ValueError, SafetensorError) as exc:
        raise ModelError(f"{weights}: cannot load into {name}: {_first_line(exc)}") from None
    finally:
        if shipped is None:
            registry.pop(name)
        else:
            registry[name] = shipped
    model.eval()
    spec = read_json(path / "tokenizer.json")
    return ClipBundle(model, tokenizer_from_spec(spec), name, preprocess_cfg(model), manifest, spec, config)


def resolve_pretrained(model_name: str, pretrained: str, cache_dir: str | None = None) -> Path:
    """Local path of the weights for (model, pretrained tag or file), never downloading."""
    if open_clip.get_model_config(model_name) is None:
        raise ModelError(f"unknown open_clip model {model_name!r}")
    candidate = Path(pretrained).expanduser()
    if candidate.suffix or os.sep in pretrained:  # a file path
        if not candidate.is_file():
            raise ModelError(f"{model_name}: checkpoint file not found: {candidate.resolve()}")
        return candidate
    cfg = open_clip.get_pretrained_cfg(model_name, pretrained)
    if not cfg:
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(model_name)) or "none"
        raise ModelError(f"{model_name}: unknown pretrained tag {pretrained!r} (known: {tags})")
    if cfg.get("hf_hub"):
        from huggingface_hub import try_to_load_from_cache
        from huggingface_hub.constants import HF_HUB_CACHE

        repo = cfg["hf_hub"].rstrip("/")
        for filename in HF_WEIGHT_FILES:
            hit = try_to_load_from_cache(repo, filename, cache_dir=cache_dir)
            if isinstance(hit, str):
                return Path(hit)
        raise ModelError(f"{model_name}/{pretrained}: weights not available offline: looked for "
                         f"{' or '.join(HF_WEIGHT_FILES)} of hf://{repo} in {cache_dir or HF_HUB_CACHE}")
    url_file = Path(cache_dir or Path.home() / ".cache" / "clip") / os.path.basename(cfg.get("url", ""))
    if url_file.is_file():
        return url_file
    raise ModelError(f"{model_name}/{pretrained}: weights not available offline: looked for {url_file}")


def load_external(model_name: str, pretrained: str, cache_dir: str | None = None) -> open_clip.CLIP:
    """An open_clip model with external weights (safetensors, or .pt/.bin with weights_only)."""
    weights = resolve_pretrained(model_name, pretrained, cache_dir)
    if weights.suffix == ".safetensors":
        safetensors_header(weights)
    try:
        model = open_clip.create_model(model_name, pretrained=str(weights), weights_only=True)
    except (RuntimeError, KeyError, ValueError, OSError, AssertionError, EOFError, pickle.UnpicklingError,
            SafetensorError) as exc:
        raise ModelError(f"{weights}: cannot load into {model_name}: {_first_line(exc)}") from None
    return model.eval()


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__
