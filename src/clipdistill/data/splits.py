"""Load a dataset split: uint8 images, captions, zero-shot labels, VQA records.

Synthetic splits are small (64 px), so whole splits fit in memory as one uint8 tensor;
real CSV datasets go through the same reader and are resized/cropped on load. A split whose
decoded images would take more than `max_mb` (params `runtime.in_memory_max_mb`) is read
lazily instead: `LazyImages` decodes rows by index, with the same decoder, so every batch
holds the same bytes as the in-RAM tensor would; `batches` decodes them ahead in DataLoader
workers. A split
imported from a VQA format (`data prepare`) has no pairs.csv: its images are the ones its
questions refer to, read in place under its declared image root. A VQA record finds its image
row by the image's path (`Split.rows`), never by taking its id for a row number.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from clipdistill.data.formats import (IMAGE_EXTS, SHARD_INDEX, SPLIT_LAYOUT, OnBad, VQARecord, load_image,
                                      read_pairs_csv, read_shard_image, read_vqa)
from clipdistill.io import DataError, progress, read_json


class LazyImages:
    """A split's images decoded on demand: `images[idx]` (slice, int or index list/tensor) is
    uint8 [n, 3, size, size], exactly the rows of the tensor the in-RAM path would hold. A row's
    source is an image file, or (tar shard, byte offset, byte size) of a webdataset sample."""

    def __init__(self, paths: list, size: int):
        self.paths, self.size = paths, size

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.paths), 3, self.size, self.size))

    def row(self, i: int) -> torch.Tensor:
        return torch.from_numpy(_decode(self.paths[i], self.size)).permute(2, 0, 1).contiguous()

    def __getitem__(self, idx) -> torch.Tensor:
        rows = range(len(self))[idx] if isinstance(idx, slice) else np.asarray(idx, dtype=np.int64).reshape(-1)
        arrays = [_decode(self.paths[int(i)], self.size) for i in rows]
        if not arrays:
            return torch.empty((0, 3, self.size, self.size), dtype=torch.uint8)
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def _decode(source, size: int) -> np.ndarray:
    image = read_shard_image(*source) if isinstance(source, tuple) else load_image(source, str(source))
    return np.asarray(_square(image, size))


class _Rows(torch.utils.data.Dataset):
    def __init__(self, images: LazyImages):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.images.row(i)


def batches(images, index_lists, workers: int = 0, pin_memory: bool = False):
    """`images[idx]` for each idx of `index_lists`, in order: sliced from an in-RAM tensor, or
    decoded ahead by `workers` DataLoader processes when the split is read lazily."""
    if isinstance(images, torch.Tensor) or workers == 0:
        for idx in index_lists:
            yield images[idx]
        return
    rows = range(len(images))  # a generator: a long run's batches are never all in memory at once
    index_lists = (list(map(int, rows[i] if isinstance(i, slice) else i)) for i in index_lists)
    # its own generator: creating the loader must not draw from the global RNG the caller seeds
    yield from torch.utils.data.DataLoader(_Rows(images), batch_sampler=index_lists, num_workers=workers,
                                           pin_memory=pin_memory, generator=torch.Generator(),
                                           persistent_workers=False, prefetch_factor=2)


@dataclass
class Split:
    images: torch.Tensor | LazyImages  # uint8 [N, 3, H, W], or decoded by index
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


def fits_in_memory(n: int, size: int, max_mb: int | None) -> bool:
    """Whether n decoded uint8 RGB images of side `size` take at most `max_mb` MiB (None: no limit)."""
    return max_mb is None or n * 3 * size * size <= max_mb * 2**20


def load_pairs(csv_path: str | Path, size: int | None = None, *, on_bad_sample: OnBad = "error",
               root: str | Path | None = None, max_mb: int | None = None) -> Split:
    """An open_clip CSV (synthetic or real) as a Split; images squared to `size` if given, paths
    relative to `root` (default: the CSV's folder); read lazily above `max_mb` MiB."""
    pairs, _ = read_pairs_csv(csv_path, root=root, on_bad_sample=on_bad_sample, check_images=False)
    if not pairs:
        raise DataError(f"{csv_path}: no samples")
    if size is None and max_mb is not None:
        with load_image(pairs[0].image, str(pairs[0].image)) as first:  # its side, as the in-RAM path takes it
            size = first.size[0]
    if not fits_in_memory(len(pairs), size or 0, max_mb):
        return Split(LazyImages([p.image for p in pairs], size), [p.caption for p in pairs], source=str(csv_path),
                     paths=[p.image for p in pairs])
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


def _load_vqa_images(split_dir: Path, size: int, max_mb: int | None = None) -> Split:
    """The images a VQA-only split's questions refer to (`vqa_images`); read lazily above `max_mb` MiB."""
    paths = vqa_images(read_split_vqa(split_dir))
    if not fits_in_memory(len(paths), size, max_mb):
        return Split(LazyImages(paths, size), [], source=str(split_dir), paths=paths)
    arrays = [np.asarray(_square(load_image(p), size))
              for p in progress(paths, desc=f"load {split_dir.name}", unit="img", leave=False)]
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    return Split(images, [], source=str(split_dir), paths=paths)


def load_shards(split_dir: Path, size: int, max_mb: int | None = None) -> Split:
    """A split imported from webdataset shards: in RAM, streamed through the `webdataset`
    library in shard order; above `max_mb`, each image read by its byte range in its tar."""
    where = layout(split_dir)
    shards = [Path(where["image_root"]) / name for name in where["shards"]]
    samples = read_json(split_dir / SHARD_INDEX)["samples"]  # [shard, key, offset, size, caption]
    captions = [s[4] for s in samples]
    if not fits_in_memory(len(samples), size, max_mb):
        return Split(LazyImages([(shards[s[0]], s[2], s[3]) for s in samples], size), captions,
                     source=str(split_dir))
    import webdataset as wds

    wanted = {(str(shards[s[0]]), s[1]) for s in samples}  # `data prepare` may have skipped bad samples
    stream = wds.WebDataset([str(p) for p in shards], shardshuffle=False, empty_check=False)
    arrays = []
    bar = progress(total=len(samples), desc=f"load {split_dir.name}", unit="img", leave=False)
    for sample in stream:
        if (sample["__url__"], sample["__key__"]) not in wanted:
            continue
        payload = next(sample[k] for e in IMAGE_EXTS for k in sample if k.lower() == e)  # as `index_shards`
        with Image.open(io.BytesIO(payload)) as img:
            arrays.append(np.asarray(_square(img.convert("RGB"), size)))
        bar.update()
    bar.close()
    if len(arrays) != len(samples):
        raise DataError(f"{split_dir}: the shards hold {len(arrays)} of the {len(samples)} indexed samples; "
                        "rerun `clipdistill data prepare`")
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    return Split(images, captions, source=str(split_dir))


def load_split(split_dir: str | Path, size: int | None = None, max_mb: int | None = None) -> Split:
    """A split written by `data prepare`: pairs.csv (+ labels.json), or, for a split imported
    from a VQA format, the images its questions refer to (no captions). A split above `max_mb`
    MiB of decoded images is read lazily (`LazyImages`)."""
    split_dir = Path(split_dir)
    if not (split_dir / "manifest.json").is_file():
        raise DataError(f"{split_dir}: not a data split (no manifest.json); run `clipdistill data prepare`")
    if not (split_dir / "pairs.csv").is_file() and (split_dir / "questions.json").is_file():
        split = _load_vqa_images(split_dir, size or layout(split_dir)["image_size"], max_mb)
        split.content_sha256 = read_json(split_dir / "manifest.json")["content_sha256"]
        return split
    where = layout(split_dir)  # an imported image–text split: images under its declared root
    if where["format"] == "webdataset":
        split = load_shards(split_dir, size or where["image_size"], max_mb=max_mb)
        split.content_sha256 = read_json(split_dir / "manifest.json")["content_sha256"]
        return split
    split = load_pairs(split_dir / "pairs.csv", size or where["image_size"], root=where["image_root"], max_mb=max_mb)
    split.content_sha256 = read_json(split_dir / "manifest.json")["content_sha256"]
    if (split_dir / "labels.json").is_file():
        split.label_sets = read_json(split_dir / "labels.json")["label_sets"]
    split.source = str(split_dir)
    return split
