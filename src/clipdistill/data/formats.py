"""Standard dataset formats, written and read.

- image–text pairs: open_clip CSV (tab-separated `filepath`, `title`) and webdataset tar
  shards (`<key>.png|jpg` + `<key>.txt`); COCO captions JSON is read too;
- VQA training: LLaVA conversation JSON;
- VQA evaluation: VQAv2 `questions` + `annotations` JSON (GQA-style JSON is read too).

Readers serve real datasets as well as the synthetic world. Every problem is a DataError
naming the file (and line or key); with `on_bad_sample="skip"` bad samples are dropped,
counted and reported instead.
"""

from __future__ import annotations

import csv
import io
import sys
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Literal

from PIL import Image, UnidentifiedImageError

from clipdistill.io import DataError, atomic_file, read_json, resolve_inside, write_json

OnBad = Literal["error", "skip"]
SPLIT_LAYOUT = "split.json"  # in an imported split folder: its declared image root and image pattern
SHARD_INDEX = "samples.json"  # in a split imported from webdataset shards: where each sample's image is
IMAGE_EXTS = ("png", "jpg", "jpeg", "webp")


@dataclass
class BadSamples:
    """Applies the on_bad_sample policy: raise at once, or record and carry on."""

    policy: OnBad = "error"
    dropped: list[str] = field(default_factory=list)

    def __post_init__(self):
        if self.policy not in ("error", "skip"):
            raise DataError(f"on_bad_sample must be 'error' or 'skip', got {self.policy!r}")

    def __call__(self, message: str) -> None:
        if self.policy == "error":
            raise DataError(message)
        self.dropped.append(message)

    def report(self, what: str) -> None:
        if self.dropped:
            print(f"{what}: skipped {len(self.dropped)} bad samples "
                  f"(first: {self.dropped[0]})", file=sys.stderr)


@dataclass(frozen=True)
class Pair:
    image: Path
    caption: str


@dataclass(frozen=True)
class VQARecord:
    question_id: int | str
    image_id: int | str
    image: Path
    question: str
    answer: str                 # the canonical answer (VQAv2 `multiple_choice_answer`)
    answers: tuple[str, ...]    # every annotator's answer (10 in VQAv2)
    question_type: str = ""
    answer_type: str = ""


def check_image(path: Path, where: str) -> str | None:
    """None if `path` is a readable image, else the reason."""
    try:
        with Image.open(path) as img:
            img.verify()
    except FileNotFoundError:
        return f"{where}: image not found: {path}"
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        return f"{where}: corrupt image {path}: {exc.__class__.__name__}"
    return None


def load_image(path: Path, where: str = "") -> Image.Image:
    reason = check_image(path, where or str(path))
    if reason:
        raise DataError(reason)
    with Image.open(path) as img:
        return img.convert("RGB")


def _clean_caption(raw: str | bytes, where: str) -> str:
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(f"{where}: caption is not UTF-8 (byte {exc.start})") from None
    text = " ".join(raw.split())
    if not text:
        raise DataError(f"{where}: empty caption")
    return text


def _keep_pair(pairs: list[Pair], bad: BadSamples, make, where: str, check_images: bool) -> None:
    """Append the (image, caption) that `make()` builds, or hand its problem to `bad`."""
    try:
        image, caption = make()
    except KeyError as exc:
        return bad(f"{where}: missing or unknown {exc}")
    except DataError as exc:
        return bad(str(exc))
    if check_images and (reason := check_image(image, where)):
        return bad(reason)
    pairs.append(Pair(image, caption))


# ------------------------------------------------------------------ open_clip CSV

def write_pairs_csv(path: Path, rows: Iterable[tuple[str, str]]) -> None:
    with atomic_file(path) as fh:
        w = csv.writer(fh, delimiter="\t", lineterminator="\n")
        w.writerow(["filepath", "title"])
        w.writerows(rows)


def read_pairs_csv(path: str | Path, *, root: str | Path | None = None, on_bad_sample: OnBad = "error",
                   img_key: str = "filepath", caption_key: str = "title", sep: str = "\t",
                   check_images: bool = True) -> tuple[list[Pair], BadSamples]:
    """Read an open_clip CSV. Image paths are relative to `root` (default: the CSV's folder)."""
    path = Path(path)
    root = Path(root) if root is not None else path.parent
    bad = BadSamples(on_bad_sample)
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    lines = text.split(b"\n")
    try:
        header = next(csv.reader([lines[0].decode("utf-8").rstrip("\r")], delimiter=sep))
    except (UnicodeDecodeError, StopIteration):
        raise DataError(f"{path}:1: unreadable header") from None
    missing = [k for k in (img_key, caption_key) if k not in header]
    if missing:
        raise DataError(f"{path}:1: header lacks column(s) {missing}; found {header}")
    i_img, i_cap = header.index(img_key), header.index(caption_key)
    pairs = []
    for lineno, raw in enumerate(lines[1:], start=2):
        raw = raw.rstrip(b"\r")
        if not raw.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            bad(f"{where}: not UTF-8 (byte {exc.start})")
            continue
        row = next(csv.reader([line], delimiter=sep))
        if len(row) <= max(i_img, i_cap):
            bad(f"{where}: expected {len(header)} tab-separated columns, got {len(row)}")
            continue
        _keep_pair(pairs, bad, lambda: (resolve_inside(root, row[i_img], where=where),
                                        _clean_caption(row[i_cap], where)), where, check_images)
    bad.report(str(path))
    return pairs, bad


def read_coco_captions(path: str | Path, image_root: str | Path, *, on_bad_sample: OnBad = "error",
                       check_images: bool = True) -> tuple[list[Pair], BadSamples]:
    """COCO `captions_*.json` (`images[].file_name`, `annotations[].image_id/caption`)."""
    data = read_json(path)
    bad = BadSamples(on_bad_sample)
    try:
        files = {img["id"]: img["file_name"] for img in data["images"]}
        anns = data["annotations"]
    except (KeyError, TypeError) as exc:
        raise DataError(f"{path}: not a COCO captions file (missing {exc})") from None
    pairs = []
    for k, ann in enumerate(anns):
        where = f"{path}: annotations[{k}]"
        _keep_pair(pairs, bad, lambda: (resolve_inside(image_root, files[ann["image_id"]], where=where),
                                        _clean_caption(ann["caption"], where)), where, check_images)
    bad.report(str(path))
    return pairs, bad


# ------------------------------------------------------------------ webdataset shards

def _tar_add(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)  # fixed metadata: identical params give identical bytes
    info.size, info.mtime, info.mode = len(payload), 0, 0o644
    tar.addfile(info, io.BytesIO(payload))


def write_shards(out_dir: Path, samples: Iterable[dict[str, bytes]], shard_size: int) -> list[Path]:
    """Write samples ({"__key__": key, ext: bytes, ...}) into `shard-000000.tar`, ..."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    tar = None
    for i, sample in enumerate(samples):
        if i % shard_size == 0:
            if tar is not None:
                tar.close()
            paths.append(out_dir / f"shard-{len(paths):06d}.tar")
            tar = tarfile.open(paths[-1], "w", format=tarfile.USTAR_FORMAT)
        key = sample["__key__"]
        for ext, payload in sample.items():
            if ext != "__key__":
                _tar_add(tar, f"{key}.{ext}", payload)
    if tar is not None:
        tar.close()
    return paths


def iter_shards(paths: Iterable[str | Path], *, on_bad_sample: OnBad = "error",
                bad: BadSamples | None = None) -> Iterator[tuple[str, Image.Image, str]]:
    """Yield (key, RGB image, caption) from webdataset tar shards, in order."""
    for _, key, _, image, caption in _shard_samples(paths, bad or BadSamples(on_bad_sample)):
        yield key, image, caption


def index_shards(paths: list[Path], *, on_bad_sample: OnBad = "error",
                 bad: BadSamples | None = None) -> list[tuple[int, str, int, int, str]]:
    """(shard number, key, byte offset and size of the image inside the tar, caption) of every
    good sample: what reading one image by index needs (`read_shard_image`)."""
    return [(i, key, member.offset_data, member.size, caption)
            for i, key, member, _, caption in _shard_samples(paths, bad or BadSamples(on_bad_sample))]


def read_shard_image(path: Path, offset: int, size: int) -> Image.Image:
    """One image of an (uncompressed) tar shard, read by its byte range."""
    with open(path, "rb") as fh:
        fh.seek(offset)
        payload = fh.read(size)
    try:
        with Image.open(io.BytesIO(payload)) as img:
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DataError(f"{path}@{offset}: corrupt image ({exc.__class__.__name__})") from None


def _shard_samples(paths: Iterable[str | Path], bad: BadSamples):
    """(shard number, key, image tar member, RGB image, caption) of each good sample, in order."""
    for number, path in enumerate(paths):
        path = Path(path)
        try:
            tar = tarfile.open(path, "r")
        except (FileNotFoundError, tarfile.TarError) as exc:
            raise DataError(f"{path}: unreadable shard ({exc.__class__.__name__})") from None
        with tar:
            groups: dict[str, dict[str, tarfile.TarInfo]] = {}
            for member in tar.getmembers():
                if not member.isfile():
                    continue
                key, _, ext = member.name.partition(".")
                groups.setdefault(key, {})[ext.lower()] = member
            for key, files in groups.items():  # insertion order: the shard's order
                where = f"{path}:{key}"
                img_ext = next((e for e in IMAGE_EXTS if e in files), None)
                if img_ext is None or "txt" not in files:
                    bad(f"{where}: sample needs an image ({'/'.join(IMAGE_EXTS)}) and a txt; has {sorted(files)}")
                    continue
                try:
                    caption = _clean_caption(tar.extractfile(files["txt"]).read(), where)
                    with Image.open(io.BytesIO(tar.extractfile(files[img_ext]).read())) as img:
                        image = img.convert("RGB")
                except DataError as exc:
                    bad(str(exc))
                    continue
                except (UnidentifiedImageError, OSError, SyntaxError) as exc:
                    bad(f"{where}: corrupt image ({exc.__class__.__name__})")
                    continue
                yield number, key, files[img_ext], image, caption


# ------------------------------------------------------------------ LLaVA conversations

def write_llava(path: Path, records: list[dict]) -> None:
    write_json(path, records, compact=True)


LLAVA_QUESTION_TYPE = "conversation"  # LLaVA turns carry no question type: each imported turn gets this one


def read_llava(path: str | Path, image_root: str | Path, *, on_bad_sample: OnBad = "error",
               check_images: bool = True, imported: bool = False) -> tuple[list[dict], BadSamples]:
    """LLaVA conversation JSON: a list of {"id", "image", "conversations": [{"from", "value"}, ...]},
    turns alternating human, gpt. `imported` (a split from `data prepare`): every record needs an
    `id` and an `image` (the VLM learns from image conversations, questions are keyed by the id)."""
    data = read_json(path)
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of conversations, got {type(data).__name__}")
    bad = BadSamples(on_bad_sample)
    out = []
    for k, rec in enumerate(data):
        where = f"{path}: [{k}]" + (f" id {rec['id']!r}" if isinstance(rec, dict) and "id" in rec else "")
        if not isinstance(rec, dict) or "conversations" not in rec:
            bad(f"{where}: missing key 'conversations'")
            continue
        turns = rec["conversations"]
        if (not isinstance(turns, list) or len(turns) < 2 or len(turns) % 2 or
                any(not isinstance(t, dict) or t.get("from") != ("human", "gpt")[i % 2]
                    or not isinstance(t.get("value"), str) or not t["value"].strip() for i, t in enumerate(turns))):
            bad(f"{where}: conversations must be pairs of turns {{'from': 'human', then 'gpt', 'value': non-empty str}}")
            continue
        if imported and (missing := [key for key in ("id", "image") if key not in rec]):
            bad(f"{where}: missing key {missing[0]!r}" + (" (a text-only conversation: the VLM trains on image "
                                                          "conversations)" if missing[0] == "image" else ""))
            continue
        if imported and not isinstance(rec["id"], (str, int)):
            bad(f"{where}: id must be a string or an integer")
            continue
        if "image" in rec:
            try:
                image = resolve_inside(image_root, str(rec["image"]), where=where)
            except DataError as exc:
                bad(str(exc))
                continue
            if "<image>" not in turns[0]["value"]:
                bad(f"{where}: first human turn lacks the <image> token")
                continue
            if check_images and (reason := check_image(image, where)):
                bad(reason)
                continue
            rec = {**rec, "image": image}
        out.append(rec)
    bad.report(str(path))
    return out, bad


def llava_exchanges(rec: dict) -> list[tuple[str, str]]:
    """(question, answer) per human→gpt pair of a conversation, the <image> token taken out."""
    turns = rec["conversations"]
    return [(" ".join(h["value"].replace("<image>", " ").split()), g["value"].strip())
            for h, g in zip(turns[::2], turns[1::2])]


# ------------------------------------------------------------------ VQAv2 / GQA

def write_vqa(questions_path: Path, annotations_path: Path, records: list[VQARecord], subtype: str,
              description: str = "clipdistill synthetic world", data_type: str = "synthetic") -> None:
    header = {"info": {"description": description}, "task_type": "Open-Ended",
              "data_type": data_type, "data_subtype": subtype, "license": {}}
    write_json(questions_path, {**header, "questions": [
        {"image_id": r.image_id, "question": r.question, "question_id": r.question_id} for r in records]},
        compact=True)
    write_json(annotations_path, {**header, "annotations": [
        {"question_id": r.question_id, "image_id": r.image_id, "question_type": r.question_type,
         "answer_type": r.answer_type, "multiple_choice_answer": r.answer,
         "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1}
                     for i, a in enumerate(r.answers)]}
        for r in records]}, compact=True)


def image_path(pattern: str, image_id: int | str, where: str) -> str:
    """An image's path under its root from the split's `image_pattern` (e.g. `COCO_val2014_{image_id:012d}.jpg`)."""
    try:
        return pattern.format(image_id=image_id)
    except (KeyError, IndexError, AttributeError):
        raise DataError(f"{where}: image_pattern {pattern!r} names an unknown field; known: image_id") from None
    except ValueError as exc:
        raise DataError(f"{where}: image_pattern {pattern!r} does not fit image_id {image_id!r} ({exc})") from None


def read_vqa(questions_path: str | Path, annotations_path: str | Path, image_root: str | Path,
             image_pattern: str = "images/{image_id:06d}.png", *, on_bad_sample: OnBad = "error",
             check_images: bool = True) -> tuple[list[VQARecord], BadSamples]:
    """VQAv2 questions + annotations. `image_pattern` maps image_id to a path under image_root
    (VQAv2 on COCO: "val2014/COCO_val2014_{image_id:012d}.jpg")."""
    qs, anns = read_json(questions_path), read_json(annotations_path)
    try:
        questions, annotations = qs["questions"], anns["annotations"]
    except (KeyError, TypeError) as exc:
        raise DataError(f"{questions_path if 'questions' in str(exc) else annotations_path}: "
                        f"missing top-level key {exc}") from None
    by_qid = {}
    for k, a in enumerate(annotations):
        if not isinstance(a, dict) or "question_id" not in a:
            raise DataError(f"{annotations_path}: annotations[{k}] lacks 'question_id'")
        by_qid[a["question_id"]] = a
    bad = BadSamples(on_bad_sample)
    out = []
    checked: dict[Path, str | None] = {}
    for k, q in enumerate(questions):
        try:
            qid, image_id, text = q["question_id"], q["image_id"], q["question"]
        except (KeyError, TypeError) as exc:
            bad(f"{questions_path}: questions[{k}]: missing key {exc}")
            continue
        where = f"{questions_path}: question_id {qid!r}"
        if qid not in by_qid:
            bad(f"{annotations_path}: question_id {qid!r}: no annotation")
            continue
        ann = by_qid[qid]
        if "answers" not in ann:
            bad(f"{annotations_path}: question_id {qid!r}: annotation has no 'answers'")
            continue
        try:
            answers = [a["answer"] for a in ann["answers"]]
        except (KeyError, TypeError):
            answers = []
        if not answers or not all(isinstance(a, str) for a in answers):
            bad(f"{annotations_path}: question_id {qid!r}: answers must be a non-empty list of {{'answer': str}}")
            continue
        try:
            image = resolve_inside(image_root, image_path(image_pattern, image_id, where), where=where)
        except DataError as exc:
            bad(str(exc))
            continue
        if check_images:
            if image not in checked:
                checked[image] = check_image(image, where)
            if checked[image]:
                bad(checked[image])
                continue
        mc = ann.get("multiple_choice_answer", answers[0])
        out.append(VQARecord(qid, image_id, image, text, mc, tuple(answers),
                             ann.get("question_type", ""), ann.get("answer_type", "")))
    bad.report(str(questions_path))
    return out, bad


def read_gqa(path: str | Path, image_root: str | Path, *, image_pattern: str = "images/{image_id}.jpg",
             on_bad_sample: OnBad = "error", check_images: bool = True) -> tuple[list[VQARecord], BadSamples]:
    """GQA-style questions JSON: {qid: {"imageId", "question", "answer", "types": {...}}}.
    The single answer stands for all ten annotators, so soft accuracy reduces to exact match."""
    data = read_json(path)
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object keyed by question id")
    bad = BadSamples(on_bad_sample)
    out = []
    for qid, q in data.items():
        where = f"{path}: {qid}"
        try:
            image = resolve_inside(image_root, image_path(image_pattern, q["imageId"], where), where=where)
            answer = str(q["answer"])
            types = q.get("types", {})
            rec = VQARecord(qid, q["imageId"], image, q["question"], answer, (answer,) * 10,
                            types.get("semantic", ""), types.get("structural", ""))
        except (KeyError, TypeError) as exc:
            bad(f"{where}: missing key {exc}")
            continue
        except DataError as exc:
            bad(str(exc))
            continue
        if check_images and (reason := check_image(image, where)):
            bad(reason)
            continue
        out.append(rec)
    bad.report(str(path))
    return out, bad
