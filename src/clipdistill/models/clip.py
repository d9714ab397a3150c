"""Create, save and load open_clip models as self-describing directories.

A model directory (teachers and students alike):

    model.safetensors    weights (open_clip state dict)
    model_config.json    the open_clip config the weights belong to
    tokenizer.json       {"kind": "word", ...} or {"kind": "open_clip", "name": ...}
    manifest.json        model name, weights sha256, preprocessing, provenance

External weights are resolved offline: a local file, an open_clip pretrained tag whose file is
already in the Hugging Face cache, an `hf-hub:ORG/NAME` repo in that cache, or a `local-dir:PATH`
folder laid out like one (open_clip_config.json + weights). Anything else fails at once with
one line.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
from contextlib import contextmanager
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
from clipdistill.params import is_checkpoint_path

HF_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
HF_CONFIG_FILE = "open_clip_config.json"
SCHEMAS = ("hf-hub:", "local-dir:")  # open_clip's own prefixes for a model that brings its config
PREPROCESS_KEYS = ("mean", "std", "interpolation")


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
                   provenance: dict, extra_files: dict[str, bytes] | None = None, config: dict | None = None) -> dict:
    """Write a model directory atomically; returns its manifest. `config`: the open_clip config
    (default: the registry's for `model_name`)."""
    with atomic_dir(out) as tmp:
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(state, tmp / "model.safetensors")
        write_json(tmp / "model_config.json", config or open_clip.get_model_config(model_name))
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
    # resize the position embedding to the new image size without a word). External models
    # (hf-hub:, local-dir:) are only ever known by their saved config.
    config = read_json(path / "model_config.json")
    spec = read_json(path / "tokenizer.json")
    pre = {k: v for k, v in manifest.get("preprocess", {}).items() if k in PREPROCESS_KEYS}
    with _registered(name, config):
        try:
            model = open_clip.create_model(name, pretrained=str(weights), force_preprocess_cfg=pre)
        except (RuntimeError, KeyError, ValueError, SafetensorError) as exc:
            raise ModelError(f"{weights}: cannot load into {name}: {_first_line(exc)}") from None
        tokenizer = tokenizer_from_spec(spec)  # an open_clip tokenizer reads the config's context length
    model.eval()
    return ClipBundle(model, tokenizer, name, preprocess_cfg(model), manifest, spec, config)


def resolve_pretrained(model_name: str, pretrained: str, cache_dir: str | None = None) -> Path:
    """Local path of the weights for (model, pretrained tag or file), never downloading."""
    if open_clip.get_model_config(model_name) is None:
        raise ModelError(f"unknown open_clip model {model_name!r}")
    candidate = Path(pretrained).expanduser()
    if is_checkpoint_path(pretrained):
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


@contextmanager
def _registered(name: str, config: dict):
    """`config` under `name` in open_clip's registry for the block, whatever was there restored."""
    registry = open_clip.factory._MODEL_CONFIGS
    shipped = registry.get(name)
    registry[name] = config
    try:
        yield
    finally:
        if shipped is None:
            registry.pop(name, None)
        else:
            registry[name] = shipped


@dataclass
class External:
    """Where an external model's parts are: its name in model directories (no schema: open_clip
    would go to the hub for it), open_clip config, weights file, preprocessing overrides."""

    name: str
    config: dict
    weights: Path
    preprocess: dict


def _hub_files(repo: str, cache_dir: str | None) -> tuple[Path | None, Path | None, str]:
    """(config, weights, where) of an hf-hub repo, from the local cache only."""
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.constants import HF_HUB_CACHE

    def cached(filename):
        hit = try_to_load_from_cache(repo, filename, cache_dir=cache_dir)
        return Path(hit) if isinstance(hit, str) else None

    weights = next((w for w in map(cached, HF_WEIGHT_FILES) if w), None)
    return cached(HF_CONFIG_FILE), weights, f"hf://{repo} in {cache_dir or HF_HUB_CACHE}"


def _folder_files(folder: Path) -> tuple[Path | None, Path | None, str]:
    weights = next((folder / f for f in HF_WEIGHT_FILES if (folder / f).is_file()), None)
    config = folder / HF_CONFIG_FILE
    return (config if config.is_file() else None), weights, str(folder.resolve())


def resolve_external(arch: str, pretrained: str | None = None, cache_dir: str | None = None) -> External:
    """An external open_clip model's parts, never downloading: `hf-hub:ORG/NAME` from the HF
    cache or `local-dir:PATH` (both bring their open_clip_config.json; `pretrained` must be
    unset), or a registered architecture with a pretrained tag or checkpoint file."""
    schema = next((p for p in SCHEMAS if arch.startswith(p)), None)
    if schema is None:
        if not pretrained:
            raise ModelError(f"{arch}: an open_clip architecture needs `pretrained` (a tag or a checkpoint file)")
        weights = resolve_pretrained(arch, pretrained, cache_dir)
        tag = {} if is_checkpoint_path(pretrained) else open_clip.get_pretrained_cfg(arch, pretrained)
        return External(arch, open_clip.get_model_config(arch), weights,
                        {k: v for k, v in tag.items() if k in PREPROCESS_KEYS})
    if pretrained:
        raise ModelError(f"{arch}: brings its own weights; leave `pretrained` unset (got {pretrained!r})")
    ident = arch[len(schema):].strip()
    if not ident:
        raise ModelError(f"{arch!r}: nothing after {schema!r}")
    if schema == "hf-hub:":
        config_file, weights, where = _hub_files(ident.rstrip("/"), cache_dir)
    else:
        folder = Path(ident).expanduser()
        if not folder.is_dir():
            raise ModelError(f"{arch}: folder not found: {folder.resolve()}")
        config_file, weights, where = _folder_files(folder)
    if config_file is None or weights is None:
        missing = HF_CONFIG_FILE if config_file is None else " or ".join(HF_WEIGHT_FILES)
        raise ModelError(f"{arch}: not available offline: looked for {missing} of {where}")
    try:
        raw = json.loads(config_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{config_file}: not valid JSON ({_first_line(exc)})") from None
    config = raw.get("model_cfg") if isinstance(raw, dict) else None
    if not isinstance(config, dict) or not {"vision_cfg", "text_cfg", "embed_dim"} <= set(config):
        raise ModelError(f"{config_file}: expected {{\"model_cfg\": {{embed_dim, vision_cfg, text_cfg}}, ...}}")
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", ident.strip("/").replace("/", "--"))  # a registry key, no schema
    pre = raw.get("preprocess_cfg") or {}
    return External(name, config, weights, {k: v for k, v in pre.items() if k in PREPROCESS_KEYS})


def open_external(arch: str, pretrained: str | None = None, cache_dir: str | None = None):
    """(model, External): an open_clip model with external weights (safetensors, or .pt/.bin
    with weights_only)."""
    ext = resolve_external(arch, pretrained, cache_dir)
    if ext.weights.suffix == ".safetensors":
        safetensors_header(ext.weights)
    with _registered(ext.name, ext.config):
        try:
            model = open_clip.create_model(ext.name, pretrained=str(ext.weights), weights_only=True,
                                           force_preprocess_cfg=ext.preprocess)
        except (RuntimeError, KeyError, ValueError, OSError, AssertionError, EOFError, pickle.UnpicklingError,
                SafetensorError) as exc:
            raise ModelError(f"{ext.weights}: cannot load into {arch}: {_first_line(exc)}") from None
    return model.eval(), ext


def load_external(arch: str, pretrained: str | None = None, cache_dir: str | None = None) -> open_clip.CLIP:
    """An open_clip model with external weights (see `resolve_external`)."""
    return open_external(arch, pretrained, cache_dir)[0]


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__
