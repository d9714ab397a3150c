"""Load a dataset split into memory: uint8 images, captions, zero-shot labels.

Synthetic splits are small (64 px), so whole splits fit in memory as one uint8 tensor;
real CSV datasets go through the same reader and are resized/cropped on load.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from clipdistill.data.formats import OnBad, load_image, read_pairs_csv
from clipdistill.io import DataError, progress, read_json


@dataclass
class Split:
    images: torch.Tensor               # uint8 [N, 3, H, W]
    captions: list[str]
    label_sets: dict[str, dict] = field(default_factory=dict)   # name -> classnames, templates, labels
    content_sha256: str = ""           # of the split directory (manifest), "" for plain CSVs
    source: str = ""


def _square(img: Image.Image, size: int) -> Image.Image:
    """Resize the short side to `size` and centre-crop (open_clip's 'shortest' mode)."""
    w, h = img.size
    if (w, h) == (size, size):
        return img
    scale = size / min(w, h)
    img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.Resampling.BICUBIC)
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    return img.crop((left, top, left + size, top + size))


def load_pairs(csv_path: str | Path, size: int | None = None, *, on_bad_sample: OnBad = "error") -> Split:
    """An open_clip CSV (synthetic or real) as a Split; images squared to `size` if given."""
    pairs, _ = read_pairs_csv(csv_path, on_bad_sample=on_bad_sample, check_images=False)
    if not pairs:
        raise DataError(f"{csv_path}: no samples")
    arrays = []
    for p in progress(pairs, desc=f"load {Path(csv_path).parent.name}", unit="img", leave=False):
        img = load_image(p.image, str(p.image))
        if size is None:
            size = img.size[0]
        arrays.append(np.asarray(_square(img, size)))
    if any(a.shape != arrays[0].shape for a in arrays):
        raise DataError(f"{csv_path}: images differ in size; pass a size to square them")
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    return Split(images, [p.caption for p in pairs], source=str(csv_path))


def load_split(split_dir: str | Path, size: int | None = None) -> Split:
    """A split written by `data synth` (pairs.csv + labels.json + manifest.json)."""
    split_dir = Path(split_dir)
    if not (split_dir / "manifest.json").is_file():
        raise DataError(f"{split_dir}: not a data split (no manifest.json); run `clipdistill data synth`")
    split = load_pairs(split_dir / "pairs.csv", size)
    split.content_sha256 = read_json(split_dir / "manifest.json")["content_sha256"]
    if (split_dir / "labels.json").is_file():
        split.label_sets = read_json(split_dir / "labels.json")["label_sets"]
    split.source = str(split_dir)
    return split
