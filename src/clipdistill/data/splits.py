"""Load a dataset split into memory: uint8 images, captions, zero-shot labels, VQA records.

Synthetic splits are small (64 px), so whole splits fit in memory as one uint8 tensor;
real CSV datasets go through the same reader and are resized/cropped on load. A split
imported from a VQA format (`data prepare`) has no pairs.csv: its images are the ones its
questions refer to, read in place under its declared image root. A VQA record finds its image
row by the image's path (`Split.rows`), never by taking its id for a row number.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from clipdistill.data.formats import SPLIT_LAYOUT, OnBad, VQARecord, load_image, read_pairs_csv, read_vqa
from clipdistill.io import DataError, progress, read_json


@dataclass
class Split:
    images: torch.Tensor               # uint8 [N, 3, H, W]
    captions: list[str]
    label_sets: dict[str, dict] = field(default_factory=dict)   # name -> classnames, templates, labels
    content_sha256: str = ""           # of the split directory (manifest), "" for plain CSVs
    source: str = ""
    paths: list[Path] = field(default_factory=list)   # each row's image file, resolved

    def rows(self, records: list[VQARecord]) -> list[int]:
        """Each record's row in `images`, matched by its image's path."""
        row = {p: i for i, p in enumerate(self.paths)}
        out = []
        for r in records:
            path = Path(r.image).resolve()
            if path not in row:
                raise DataError(f"{self.source}: question_id {r.question_id!r}: image {path} is not an image "
                                "of the split")
            out.append(row[path])
        return out


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


def load_pairs(csv_path: str | Path, size: int | None = None, *, on_bad_sample: OnBad = "error",
               root: str | Path | None = None) -> Split:
    """An open_clip CSV (synthetic or real) as a Split; images squared to `size` if given, paths
    relative to `root` (default: the CSV's folder)."""
    pairs, _ = read_pairs_csv(csv_path, root=root, on_bad_sample=on_bad_sample, check_images=False)
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
    return Split(images, [p.caption for p in pairs], source=str(csv_path), paths=[p.image for p in pairs])


def layout(split_dir: str | Path) -> dict:
    """Where a split's images live: `split.json` of an imported split (an absolute root), else
    the synthetic layout (images/NNNNNN.png inside the split, named by image id)."""
    split_dir = Path(split_dir)
    if (split_dir / SPLIT_LAYOUT).is_file():
        return read_json(split_dir / SPLIT_LAYOUT)
    return {"format": "synthetic", "image_root": str(split_dir), "image_pattern": "images/{image_id:06d}.png",
            "image_size": None}


def read_split_vqa(split_dir: str | Path, check_images: bool = False) -> list[VQARecord]:
    """The VQA records of a split folder, images resolved under its declared root."""
    split_dir, where = Path(split_dir), layout(split_dir)
    records, _ = read_vqa(split_dir / "questions.json", split_dir / "annotations.json", where["image_root"],
                          where["image_pattern"], check_images=check_images)
    return records


def vqa_images(records: list[VQARecord]) -> list[Path]:
    """The images VQA records refer to, each once, in order of first mention: the rows of a
    VQA-only split."""
    return list(dict.fromkeys(Path(r.image).resolve() for r in records))


def _load_vqa_images(split_dir: Path, size: int) -> Split:
    """The images a VQA-only split's questions refer to (`vqa_images`)."""
    paths = vqa_images(read_split_vqa(split_dir))
    arrays = [np.asarray(_square(load_image(p), size))
              for p in progress(paths, desc=f"load {split_dir.name}", unit="img", leave=False)]
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    return Split(images, [], source=str(split_dir), paths=paths)


def load_split(split_dir: str | Path, size: int | None = None) -> Split:
    """A split written by `data prepare`: pairs.csv (+ labels.json), or, for a split imported
    from a VQA format, the images its questions refer to (no captions)."""
    split_dir = Path(split_dir)
    if not (split_dir / "manifest.json").is_file():
        raise DataError(f"{split_dir}: not a data split (no manifest.json); run `clipdistill data prepare`")
    if not (split_dir / "pairs.csv").is_file() and (split_dir / "questions.json").is_file():
        split = _load_vqa_images(split_dir, size or layout(split_dir)["image_size"])
        split.content_sha256 = read_json(split_dir / "manifest.json")["content_sha256"]
        return split
    where = layout(split_dir)  # an imported image–text split: images under its declared root
    split = load_pairs(split_dir / "pairs.csv", size or where["image_size"], root=where["image_root"])
    split.content_sha256 = read_json(split_dir / "manifest.json")["content_sha256"]
    if (split_dir / "labels.json").is_file():
        split.label_sets = read_json(split_dir / "labels.json")["label_sets"]
    split.source = str(split_dir)
    return split
