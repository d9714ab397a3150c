"""`clipdistill data prepare`: one split of params `data.splits`, synthetic or imported, into the
split-folder contract every later stage reads. Formats: vqav2 and gqa (the VQA splits), llava
(VLM training conversations), csv (open_clip), coco_captions and webdataset (image–text splits:
pretrain, the distillation splits).

A split folder always has `manifest.json` (what made it, a content hash) and, for VQA,
`questions.json` + `annotations.json` (VQAv2 layout) keyed by the source's own question and
image ids — COCO's 9-digit ids stay what they are. Synthetic splits are rendered (synth.py).
Imported splits are read from the files their params name and normalised; their images stay
where they are: `split.json` declares the image root and the pattern from an image id to a path
under it (pairs.csv: paths relative to it), and the manifest records the sha256 of every source file read (images are referenced,
not hashed).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from clipdistill.data.formats import (LLAVA_QUESTION_TYPE, SHARD_INDEX, BadSamples, SPLIT_LAYOUT, VQARecord, index_shards,
                                      llava_exchanges, read_coco_captions, read_gqa, read_llava, read_pairs_csv,
                                      read_vqa, write_llava, write_pairs_csv, write_vqa)
from clipdistill.io import DataError, atomic_dir, check_tracked_by_dvc, sha256_file, write_json, write_manifest
from clipdistill.params import SOURCE_KEYS, VQA_FORMATS, DataParams, is_imported

def split_entry(params: DataParams, name: str):
    if name not in params.splits:
        raise DataError(f"unknown split {name!r}; params define: {', '.join(sorted(params.splits))}")
    return params.splits[name]


def prepare(params: DataParams, split: str, out: str | Path) -> dict:
    """Write one split atomically into `out`; return its manifest."""
    entry = split_entry(params, split)
    if not is_imported(entry):
        from clipdistill.data.synth import synthesize

        return synthesize(params, split, out)
    if entry.format in VQA_FORMATS:
        return import_vqa(split, entry, Path(out))
    if entry.format == "llava":
        return import_llava(split, entry, Path(out))
    if entry.format == "webdataset":
        return import_shards(split, entry, Path(out))
    return import_pairs(split, entry, Path(out))


def _sources(name: str, entry) -> dict[str, Path]:
    """The files the split reads, each checked to exist (one line naming the first missing one)."""
    files = {key: Path(getattr(entry, key)) for key in SOURCE_KEYS[entry.format]}
    for key, path in files.items():
        if key == "shards":  # a folder of tars
            if not path.is_dir():
                raise DataError(f"data.splits.{name}.{key}: {path}: not a directory")
        elif not path.is_file():
            raise DataError(f"data.splits.{name}.{key}: {path}: file not found")
    check_tracked_by_dvc(files.values(), f"a source of split {name}")
    return files


def _image_root(name: str, entry) -> Path:
    root = Path(entry.image_root).absolute()
    if not root.is_dir():
        raise DataError(f"data.splits.{name}.image_root: {root}: not a directory")
    return root


def _sha256s(files: dict[str, Path]) -> dict:
    return {key: {"path": str(path), "sha256": sha256_file(path)} for key, path in files.items()}


def import_pairs(name: str, entry, out: Path) -> dict:
    """An open_clip CSV or COCO captions JSON → the split folder: `pairs.csv` with each image's
    path relative to the (resolved) root, `split.json` naming the root; every image checked
    before anything is written."""
    files = _sources(name, entry)
    root = _image_root(name, entry)
    if entry.format == "csv":
        pairs, bad = read_pairs_csv(files["path"], root=root, on_bad_sample=entry.on_bad_sample,
                                    img_key=entry.img_key, caption_key=entry.caption_key, sep=entry.sep)
    else:
        pairs, bad = read_coco_captions(files["captions"], root, on_bad_sample=entry.on_bad_sample)
    source = next(iter(files.values()))
    if not pairs:
        raise DataError(f"{source}: no usable samples"
                        + (f" ({len(bad.dropped)} skipped; first: {bad.dropped[0]})" if bad.dropped else ""))
    resolved = root.resolve()
    with atomic_dir(out) as tmp:
        write_pairs_csv(tmp / "pairs.csv", [(p.image.relative_to(resolved).as_posix(), p.caption) for p in pairs])
        write_json(tmp / SPLIT_LAYOUT, {"format": entry.format, "image_root": str(resolved),
                                        "image_size": entry.image_size})
        counts = {"images": len({p.image for p in pairs}), "pairs": len(pairs),
                  "skipped": len(bad.dropped)}
        return write_manifest(tmp, "imported-split", {"split": name, **entry.model_dump(mode="json"),
                                                      "sources": _sha256s(files)}, counts)


def import_shards(name: str, entry, out: Path) -> dict:
    """Webdataset shards → the split folder: `split.json` (the shards' folder, their names),
    `samples.json` (per sample: shard, key, the image's byte range in the tar, caption), every
    sample decoded and checked before anything is written. Images stay in the shards."""
    folder = _sources(name, entry)["shards"].resolve()
    shards = sorted(folder.glob("*.tar"))
    if not shards:
        raise DataError(f"data.splits.{name}.shards: {folder}: no .tar shards")
    bad = BadSamples(entry.on_bad_sample)
    samples = index_shards(shards, bad=bad)
    bad.report(str(folder))
    if not samples:
        raise DataError(f"{folder}: no usable samples"
                        + (f" ({len(bad.dropped)} skipped; first: {bad.dropped[0]})" if bad.dropped else ""))
    hashes = {p.name: sha256_file(p) for p in shards}  # in split.json: the content hash covers the shards
    with atomic_dir(out) as tmp:
        write_json(tmp / SPLIT_LAYOUT, {"format": "webdataset", "image_root": str(folder), "shards": hashes,
                                        "image_size": entry.image_size})
        write_json(tmp / SHARD_INDEX, {"samples": [list(s) for s in samples]}, compact=True)
        counts = {"images": len(samples), "pairs": len(samples), "skipped": len(bad.dropped)}
        sources = {"shards": {"path": str(folder), "sha256": hashes}}
        return write_manifest(tmp, "imported-split", {"split": name, **entry.model_dump(mode="json"),
                                                      "sources": sources}, counts)


def import_vqa(name: str, entry, out: Path) -> dict:
    """VQAv2 questions + annotations, or GQA questions → the split folder (VQAv2 layout); every
    question checked (answers, an image that exists inside `image_root`) before anything is
    written."""
    files = _sources(name, entry)
    root = _image_root(name, entry)
    if entry.format == "vqav2":
        records, bad = read_vqa(files["questions"], files["annotations"], root, entry.image_pattern,
                                on_bad_sample=entry.on_bad_sample)
    else:
        records, bad = read_gqa(files["questions"], root, image_pattern=entry.image_pattern,
                                on_bad_sample=entry.on_bad_sample)
    if not records:
        raise DataError(f"{files['questions']}: no usable questions"
                        + (f" ({len(bad.dropped)} skipped; first: {bad.dropped[0]})" if bad.dropped else ""))
    seen = Counter(r.question_id for r in records)
    if twice := [(qid, n) for qid, n in seen.items() if n > 1]:  # answers and scores are keyed by it
        raise DataError(f"{files['questions']}: question_id {twice[0][0]!r} appears {twice[0][1]} times")
    sources = _sha256s(files)
    with atomic_dir(out) as tmp:
        write_vqa(tmp / "questions.json", tmp / "annotations.json", records, subtype=name,
                  description=f"imported from {files['questions']}", data_type=entry.format)
        write_json(tmp / SPLIT_LAYOUT, {"format": entry.format, "image_root": str(root),
                                  "image_pattern": entry.image_pattern, "image_size": entry.image_size})
        counts = {"images": len({r.image for r in records}), "questions": len(records), "skipped": len(bad.dropped)}
        return write_manifest(tmp, "imported-split", {"split": name, **entry.model_dump(mode="json"),
                                                      "sources": sources}, counts)


LLAVA_PATTERN = "{image_id}"  # an imported LLaVA split's image id is the image's path under its root


def import_llava(name: str, entry, out: Path) -> dict:
    """LLaVA conversation JSON → the split folder: `llava.json` (the conversations, each image's
    path relative to the resolved root: stage 2 trains on them verbatim) and the VQAv2 layout
    with a question per human→gpt pair (`question_id` "ID#k", `image_id` the image's relative
    path, type LLAVA_QUESTION_TYPE), so everything that reads a VQA training split reads it;
    every conversation checked (structure, a unique id, its image inside the root) first."""
    files = _sources(name, entry)
    root = _image_root(name, entry)
    convs, bad = read_llava(files["path"], root, on_bad_sample=entry.on_bad_sample, imported=True)
    if not convs:
        raise DataError(f"{files['path']}: no usable conversations"
                        + (f" ({len(bad.dropped)} skipped; first: {bad.dropped[0]})" if bad.dropped else ""))
    seen = Counter(str(c["id"]) for c in convs)
    if twice := [(cid, n) for cid, n in seen.items() if n > 1]:  # question ids are made from it
        raise DataError(f"{files['path']}: id {twice[0][0]!r} appears {twice[0][1]} times")
    resolved = root.resolve()
    records, normalised = [], []
    for c in convs:
        rel = c["image"].relative_to(resolved).as_posix()
        normalised.append({"id": c["id"], "image": rel, "conversations": c["conversations"]})
        records += [VQARecord(f"{c['id']}#{k}", rel, c["image"], q, a, (a,) * 10, LLAVA_QUESTION_TYPE, "other")
                    for k, (q, a) in enumerate(llava_exchanges(c))]
    described = sum(len(c["conversations"]) == 2 for c in convs) if entry.captions == "single_turn" else 0
    with atomic_dir(out) as tmp:
        write_llava(tmp / "llava.json", normalised)
        write_vqa(tmp / "questions.json", tmp / "annotations.json", records, subtype=name,
                  description=f"imported from {files['path']}", data_type="llava")
        write_json(tmp / SPLIT_LAYOUT, {"format": "llava", "image_root": str(resolved), "image_pattern": LLAVA_PATTERN,
                                        "image_size": entry.image_size, "captions": entry.captions})
        counts = {"images": len({c["image"] for c in convs}), "conversations": len(convs), "questions": len(records),
                  "captions": described, "skipped": len(bad.dropped)}
        return write_manifest(tmp, "imported-split", {"split": name, **entry.model_dump(mode="json"),
                                                      "sources": _sha256s(files)}, counts)
