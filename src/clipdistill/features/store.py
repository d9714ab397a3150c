"""The teacher feature store: one pass of a frozen teacher, reused by every student.

A store is a directory of safetensors shards plus `manifest.json`:

    shard-000000.safetensors   image_emb [n, D], text_emb [n, D] (L2-normalised),
                               patch_tokens [n, P, W] (penultimate layer, CLS dropped),
                               view_emb [n, K, D], view_boxes [n, K, 4] (top, left, h, w)
    manifest.json              teacher id + weights sha256, preprocessing, tokenizer,
                               dtype, augmentation, data hash, logit scale, code version

Views are random resized crops whose boxes are stored, so `replay_views` recreates the
exact pixels a student should see for view k of image i. Reading memory-maps the shards
and gathers arbitrary indices without loading whole files.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from safetensors.torch import save_file

from clipdistill import __version__
from clipdistill.data.splits import Split, batches
from clipdistill.io import (ClipdistillError, progress, read_json, resumable_dir, safetensors_header, sha256_file,
                            write_json)
from clipdistill.models import ClipBundle, preprocess_images
from clipdistill.params import FeatureParams
from clipdistill.training.runtime import CPU, Runtime

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_SAFETENSORS_NP = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "I32": np.int32, "I64": np.int64}
_SAFETENSORS_TORCH = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                      "I32": torch.int32, "I64": torch.int64}


class StoreMismatch(ClipdistillError):
    """A feature store does not belong to the data or preprocessing it is used with."""


def sample_boxes(n: int, height: int, width: int, views: int, spec: FeatureParams) -> torch.Tensor:
    """[n, views, 4] crop boxes (top, left, h, w), deterministic in (seed, view)."""
    boxes = np.zeros((n, views, 4), dtype=np.int32)
    for k in range(views):
        rng = np.random.default_rng([spec.seed, k])
        area = rng.uniform(*spec.augment.scale, n) * height * width
        ratio = np.exp(rng.uniform(*np.log(spec.augment.ratio), n))
        w = np.clip(np.round(np.sqrt(area * ratio)), 1, width).astype(np.int32)
        h = np.clip(np.round(np.sqrt(area / ratio)), 1, height).astype(np.int32)
        top = (rng.random(n) * (height - h + 1)).astype(np.int32)
        left = (rng.random(n) * (width - w + 1)).astype(np.int32)
        boxes[:, k] = np.stack([top, left, h, w], axis=1)
    return torch.from_numpy(boxes)


def replay_views(images: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """uint8 [n, 3, H, W] + boxes [n, 4] → the cropped-and-resized uint8 views [n, 3, H, W]."""
    size = list(images.shape[-2:])
    return torch.stack([TF.resized_crop(img, *map(int, box), size=size, antialias=True)
                        for img, box in zip(images, boxes)])


def _encode_images(bundle: ClipBundle, images_u8: torch.Tensor, patch_layer: int | None, runtime: Runtime):
    """Normalised embeddings and (optionally) patch tokens of one layer, in a single forward,
    back on the host in fp32 (the store's dtype is applied when a shard is written)."""
    x = runtime.batch(preprocess_images(images_u8, bundle.preprocess))
    with runtime.autocast():
        if patch_layer is None:
            return runtime.host(bundle.model.encode_image(x, normalize=True).float()), None
        out = bundle.model.visual.forward_intermediates(x, indices=[patch_layer], output_fmt="NLC")
    return (runtime.host(F.normalize(out["image_features"].float(), dim=-1)),
            runtime.host(out["image_intermediates"][0].float()))


def teacher_id(bundle: ClipBundle) -> dict:
    m = bundle.manifest
    return {"name": m.get("teacher", ""), "model_name": bundle.model_name, "source": m.get("source", ""),
            "weights_sha256": m["weights_sha256"]}


def _save_shard(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """One shard, renamed into place when complete: a file that exists is a whole shard."""
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, tmp)
    os.replace(tmp, path)


@torch.no_grad()
def extract(bundle: ClipBundle, split: Split, spec: FeatureParams, out: str | Path, runtime: Runtime = CPU) -> dict:
    """Run the frozen teacher over `split` on `runtime`'s device into a store at `out`.

    Streams: each shard is written as soon as it is full, and a rerun of an interrupted (even
    killed) extraction with the same inputs starts after its last complete shard, ending with
    the bytes of an uninterrupted run. The manifest is written last and the whole store then
    renamed into place, so a half-done store is never taken for a finished one."""
    model, dtype = runtime.towers(bundle.model, train=False).eval(), DTYPES[spec.dtype]
    n, (_, height, width) = len(split.images), tuple(split.images.shape[1:])
    layers = len(model.visual.transformer.resblocks)
    patch_layer = max(0, layers - 2) if spec.patch_tokens else None
    boxes = sample_boxes(n, height, width, spec.views, spec) if spec.views else None
    bounds = [(s0, min(n, s0 + spec.shard_size)) for s0 in range(0, n, spec.shard_size)]
    names = [f"shard-{k:06d}.safetensors" for k in range(len(bounds))]
    data = {"split": split.source, "content_sha256": split.content_sha256, "image_size": [height, width]}
    key = {"code_version": __version__, "teacher": teacher_id(bundle), "spec": spec.model_dump(mode="json"),
           "data": data, "count": n, "precision": runtime.precision, "device": runtime.device.type}
    with resumable_dir(out, key) as work:
        done = 0  # shards of an interrupted run: whole files (written by rename), in order
        while done < len(names) and (work / names[done]).is_file():
            done += 1
        todo = [(b0, min(s1, b0 + spec.batch_size)) for s0, s1 in bounds[done:]
                for b0 in range(s0, s1, spec.batch_size)]
        loader = batches(split.images, [slice(b0, b1) for b0, b1 in todo], runtime.loader_workers, runtime.is_cuda)
        bar = progress(total=n, initial=bounds[done][0] if done < len(bounds) else n, unit="img",
                       desc=f"features {teacher_id(bundle)['name'] or bundle.model_name}")
        for k in range(done, len(bounds)):
            s0, s1 = bounds[k]
            parts: dict[str, list[torch.Tensor]] = {}
            for b0 in range(s0, s1, spec.batch_size):
                b1, images = min(s1, b0 + spec.batch_size), next(loader)
                emb, patches = _encode_images(bundle, images, patch_layer, runtime)
                parts.setdefault("image_emb", []).append(emb)
                with runtime.autocast():
                    text = model.encode_text(runtime.batch(bundle.tokenizer(split.captions[b0:b1])), normalize=True)
                parts.setdefault("text_emb", []).append(runtime.host(text.float()))
                if patches is not None:
                    parts.setdefault("patch_tokens", []).append(patches)
                if boxes is not None:
                    views = [_encode_images(bundle, replay_views(images, boxes[b0:b1, v]), None, runtime)[0]
                             for v in range(spec.views)]
                    parts.setdefault("view_emb", []).append(torch.stack(views, dim=1))
                bar.update(b1 - b0)
            tensors = {name: torch.cat(v).to(dtype).contiguous() for name, v in parts.items()}
            tensors["index"] = torch.arange(s0, s1, dtype=torch.int64)
            if boxes is not None:
                tensors["view_boxes"] = boxes[s0:s1].contiguous()
            _save_shard(tensors, work / names[k])
        bar.close()
        shapes = {name: info["shape"] for name, info in safetensors_header(work / names[0])[0].items()
                  if name != "__metadata__"}
        shards = [{"file": name, "start": s0, "count": s1 - s0, "sha256": sha256_file(work / name)}
                  for name, (s0, s1) in zip(names, bounds)]
        manifest = {
            "kind": "teacher-feature-store", "code_version": __version__,
            "teacher": teacher_id(bundle), "logit_scale": float(model.logit_scale.exp().item()),
            "embed_dim": int(shapes["image_emb"][-1]),
            "preprocess": bundle.preprocess,
            "tokenizer": {"kind": bundle.tokenizer_spec["kind"], "sha256": _json_sha(bundle.tokenizer_spec)},
            "data": data, "dtype": spec.dtype, "count": n, "shards": shards,
            "patch_tokens": None if patch_layer is None else {"layer": patch_layer,
                                                              "shape": list(shapes["patch_tokens"][1:])},
            "views": spec.views, "augment": spec.augment.model_dump(mode="json") if spec.views else None,
            "seed": spec.seed,
        }
        write_json(work / "manifest.json", manifest)  # last: only a finished store has one
    return manifest


def _json_sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def _mmap_safetensors(path: Path) -> dict[str, tuple[np.memmap, torch.dtype]]:
    """Memory-map every tensor of a safetensors file as a numpy array (no copy)."""
    header, data_start = safetensors_header(path)
    arrays = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        shape = tuple(info["shape"])
        arr = np.memmap(path, dtype=_SAFETENSORS_NP[info["dtype"]], mode="r", offset=data_start + start,
                        shape=shape) if end > start else np.zeros(shape, _SAFETENSORS_NP[info["dtype"]])
        arrays[name] = (arr, _SAFETENSORS_TORCH[info["dtype"]])
    return arrays


class FeatureStore:
    """Memory-mapped reader: `store.get("image_emb", indices)` gathers rows across shards."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not (self.path / "manifest.json").is_file():
            raise StoreMismatch(f"{self.path}: not a feature store (no manifest.json); run `clipdistill features extract`")
        self.manifest = read_json(self.path / "manifest.json")
        self.shards = [_mmap_safetensors(self.path / s["file"]) for s in self.manifest["shards"]]
        for shard, entry in zip(self.shards, self.manifest["shards"]):
            if "index" in shard and len(shard["index"][0]) != entry["count"]:
                raise StoreMismatch(f"{self.path / entry['file']}: holds {len(shard['index'][0])} rows, "
                                    f"manifest.json says {entry['count']}")
        self.starts = np.array([s["start"] for s in self.manifest["shards"]])

    def __len__(self) -> int:
        return self.manifest["count"]

    @property
    def keys(self) -> list[str]:
        return sorted(self.shards[0]) if self.shards else []

    def check(self, *, data_sha256: str | None = None, preprocess: dict | None = None,
              image_size: list[int] | None = None) -> None:
        """Refuse a store that was not made from this data / with this preprocessing."""
        problems = []
        stored = self.manifest
        if data_sha256 is not None and data_sha256 != stored["data"]["content_sha256"]:
            problems.append(f"data hash {data_sha256[:12]} != stored {stored['data']['content_sha256'][:12]} "
                            f"({stored['data']['split']})")
        if preprocess is not None and preprocess != stored["preprocess"]:
            diff = [k for k in set(preprocess) | set(stored["preprocess"]) if preprocess.get(k) != stored["preprocess"].get(k)]
            problems.append(f"preprocessing differs in {sorted(diff)}")
        if image_size is not None and list(image_size) != stored["data"]["image_size"]:
            problems.append(f"image size {list(image_size)} != stored {stored['data']['image_size']}")
        if problems:
            raise StoreMismatch(f"{self.path}: feature store does not match: " + "; ".join(problems))

    def get(self, key: str, indices) -> torch.Tensor:
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"{self.path}: index out of range [0, {len(self)})")
        shard_of = np.searchsorted(self.starts, idx, side="right") - 1
        first_arr, torch_dtype = self.shards[0][key]
        out = np.empty((len(idx), *first_arr.shape[1:]), dtype=first_arr.dtype)
        for s in np.unique(shard_of):
            sel = shard_of == s
            out[sel] = self.shards[s][key][0][idx[sel] - self.starts[s]]
        return torch.from_numpy(out).view(torch_dtype)

    def iter_batches(self, batch_size: int, keys: list[str] | None = None):
        """Stream the store in order, `batch_size` rows at a time."""
        keys = keys or [k for k in self.keys if k != "index"]
        for start in range(0, len(self), batch_size):
            idx = np.arange(start, min(len(self), start + batch_size))
            yield {k: self.get(k, idx) for k in keys}
