"""`clipdistill data preview`: a PNG grid of rendered scenes with their caption and a question."""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from clipdistill.data.formats import SHARD_INDEX, load_image, read_pairs_csv, read_shard_image  # noqa: E402
from clipdistill.data.splits import layout, read_split_vqa  # noqa: E402
from clipdistill.io import DataError, atomic_file, read_json  # noqa: E402


def preview_splits(params_file: str | Path) -> list[str]:
    """The splits the study's preview shows: its first VQA evaluation set, then its first
    distillation split (the stage table names the same two)."""
    from clipdistill.params import load_section, load_vqa_section

    return list(dict.fromkeys([load_vqa_section(params_file).eval_splits[0],
                               load_section(params_file, "distill").grid.data[0]]))


def preview(data_dir: str | Path, splits: list[str], n: int, out: str | Path) -> None:
    data_dir = Path(data_dir)
    splits = list(dict.fromkeys(splits))  # one synthetic split may be both the evaluation and the distillation split
    if n < 1:
        raise DataError(f"--n must be ≥ 1, got {n}")
    fig, axes = plt.subplots(len(splits), n, figsize=(2.6 * n, 3.4 * len(splits)), squeeze=False)
    for row, split in enumerate(splits):
        root = data_dir / split
        if not root.is_dir():
            raise DataError(f"{root}: no such split in {data_dir}")
        vqa = read_split_vqa(root, check_images=True) if (root / "questions.json").is_file() else []
        first_q = {}  # by image file: ids are the source's own
        for r in vqa:
            first_q.setdefault(r.image.resolve(), r)
        where = layout(root)
        if (root / "pairs.csv").is_file():
            pairs, _ = read_pairs_csv(root / "pairs.csv", root=where["image_root"])
            shown = [(p.image, p.caption) for p in pairs]
        elif where["format"] == "webdataset":  # images inside the shards, by byte range
            shards = [Path(where["image_root"]) / name for name in where["shards"]]
            samples = read_json(root / SHARD_INDEX)["samples"][:n]  # [shard, key, offset, size, caption]
            shown = [((shards[s[0]], s[2], s[3]), s[4]) for s in samples]
        else:  # imported from a VQA format: no captions
            shown = [(image, "") for image in first_q]
        for col in range(n):
            ax = axes[row][col]
            ax.axis("off")
            if col >= len(shown):
                continue
            image, caption = shown[col]
            ax.imshow(read_shard_image(*image) if isinstance(image, tuple) else load_image(image),
                      interpolation="nearest")
            q = None if isinstance(image, tuple) else first_q.get(image.resolve())
            qa = f"\nQ: {q.question}\nA: {q.answer}" if q else ""
            ax.set_title(("\n".join(textwrap.wrap(caption, 30)) + qa).lstrip("\n"), fontsize=7, loc="left")
        axes[row][0].text(-0.1, 0.5, split, transform=axes[row][0].transAxes, rotation=90,
                          va="center", ha="right", fontsize=9)
    fig.tight_layout()
    with atomic_file(out, "wb") as fh:
        fig.savefig(fh, format="png", dpi=110, metadata={"Software": None})
    plt.close(fig)
