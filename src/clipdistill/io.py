"""Atomic writes, manifests, hashing and safe path handling.

Every artifact is produced in a temporary sibling and renamed into place, so a stage
that fails (or is killed) leaves either the previous artifact or nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from clipdistill import __version__


class ClipdistillError(Exception):
    """An error meant for a person: the CLI prints its message as one line."""


class DataError(ClipdistillError, ValueError):
    """Bad input data: the message names the file (and line or key) and what was expected."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary directory that replaces `target` only on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private; artifacts are shared
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _replace(tmp, target)


def _replace(tmp: Path, target: Path) -> None:
    """Rename `tmp` onto `target`, moving an existing target aside first (a directory cannot be
    renamed over a non-empty one)."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
    os.replace(tmp, target)
    if old is not None:
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink()


RESUME_KEY = "resume.json"


@contextlib.contextmanager
def resumable_dir(target: str | os.PathLike, key: dict) -> Iterator[Path]:
    """Like `atomic_dir`, but the work directory (`.NAME.partial` next to `target`) survives a
    failure or a kill: a rerun with the same `key` (what the files depend on) gets it back with
    the files already written, so it can skip them; another key starts from an empty one. The
    caller writes each file atomically; on success the directory replaces `target`."""
    target = Path(target)
    work = target.parent / f".{target.name}.partial"
    stamp = json.dumps(key, sort_keys=True)
    if work.is_dir() and not ((work / RESUME_KEY).is_file() and (work / RESUME_KEY).read_text() == stamp):
        shutil.rmtree(work)
    if not work.is_dir():
        work.mkdir(parents=True)
        with atomic_file(work / RESUME_KEY) as f:
            f.write(stamp)
    yield work
    (work / RESUME_KEY).unlink()
    _replace(work, target)


@contextlib.contextmanager
def atomic_file(target: str | os.PathLike, mode: str = "w") -> Iterator[Any]:
    """Open a temporary file next to `target`; rename it into place when the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.tmp-", dir=target.parent)
    os.chmod(tmp, 0o666 & ~_umask())
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as fh:
            yield fh
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: str | os.PathLike, obj: Any, *, compact: bool = False) -> None:
    """Deterministic JSON (sorted keys) written atomically; `compact` for bulk data files."""
    with atomic_file(path) as fh:
        if compact:
            json.dump(obj, fh, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        else:
            json.dump(obj, fh, indent=1, sort_keys=True, ensure_ascii=False)
        fh.write("\n")


def read_json(path: str | os.PathLike) -> Any:
    """Load JSON; malformed or missing files raise DataError naming file, line and column."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 (byte {exc.start})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}:{exc.colno}: malformed JSON: {exc.msg}") from None


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def safetensors_header(path: str | os.PathLike) -> tuple[dict, int]:
    """(header, offset of the tensor data) of a safetensors file, after checking that the file
    is whole: a missing, corrupt or truncated file raises DataError naming it and what is wrong
    (instead of the safetensors library's traceback)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            prefix = fh.read(8)
            length = int.from_bytes(prefix, "little")
            if len(prefix) < 8 or length > size - 8:
                raise DataError(f"{path}: truncated safetensors file ({size} bytes: its header does not fit)")
            header = json.loads(fh.read(length).decode("utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise DataError(f"{path}: corrupt safetensors file (its header is not JSON)") from None
    try:
        ends = [int(info["data_offsets"][1]) for name, info in header.items() if name != "__metadata__"]
    except (AttributeError, KeyError, IndexError, TypeError, ValueError):
        raise DataError(f"{path}: corrupt safetensors file (malformed tensor entries in its header)") from None
    expected = 8 + length + max(ends, default=0)
    if size < expected:
        raise DataError(f"{path}: truncated safetensors file ({size} bytes, its header promises {expected})")
    if size > expected:
        raise DataError(f"{path}: corrupt safetensors file ({size - expected} bytes after the last tensor)")
    return header, 8 + length


def tree_hash(root: str | os.PathLike, exclude: tuple[str, ...] = ("manifest.json",)) -> str:
    """sha256 over (relative path, file hash) of every file below root, in sorted order.

    Snakemake's `.snakemake_timestamp` marker is runner bookkeeping, not content (it is in
    .dvcignore for the same reason).
    """
    root = Path(root)
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel in exclude or path.name == ".snakemake_timestamp":
            continue
        h.update(f"{rel}\0{sha256_file(path)}\n".encode())
    return h.hexdigest()


def write_manifest(root: str | os.PathLike, kind: str, params: dict, counts: dict) -> dict:
    """Write `root/manifest.json`: what produced the artifact and a hash of its content.

    No timestamps or host names, so identical params give identical bytes.
    """
    manifest = {
        "kind": kind,
        "code_version": __version__,
        "params": params,
        "counts": counts,
        "content_sha256": tree_hash(root),
    }
    write_json(Path(root) / "manifest.json", manifest)
    return manifest


def resolve_inside(root: str | os.PathLike, relative: str, *, where: str) -> Path:
    """Join a dataset-relative path to its root, refusing absolute paths and `..` escapes."""
    root = Path(root).resolve()
    candidate = (root / relative).resolve()
    if not candidate.is_relative_to(root):
        raise DataError(f"{where}: path {relative!r} escapes the data root {root}")
    return candidate


def progress(iterable=None, **kwargs):
    """A tqdm bar on stderr; in log files (not a terminal) it updates every 10 s, not 10×/s."""
    import sys

    from tqdm import tqdm

    return tqdm(iterable, mininterval=0.1 if sys.stderr.isatty() else 10.0, file=sys.stderr, **kwargs)


def rounded(obj: Any, digits: int = 6) -> Any:
    """Round every float in a nested structure (metrics read better, diff cleanly)."""
    if isinstance(obj, float):
        return round(obj, digits)
    if isinstance(obj, dict):
        return {k: rounded(v, digits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [rounded(v, digits) for v in obj]
    return obj


class Tee:
    """A stream that also writes everything into a log file (progress bars and messages alike)."""

    def __init__(self, stream, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.stream, self.file = stream, open(path, "w", encoding="utf-8")

    def write(self, text: str) -> int:
        self.file.write(text)
        self.file.flush()
        return self.stream.write(text)

    def __getattr__(self, name):
        return getattr(self.stream, name)


def check_tracked_by_dvc(paths, what: str) -> None:
    """Under `dvc repro` (DVC sets DVC_ROOT), refuse to read a file outside the project's results
    that dvc.yaml does not list as a dep: dvc.yaml names such files literally (imported splits'
    sources, external weights, a local LM), so it must be regenerated when the params naming them
    change, or DVC would not notice a changed file. `what` says whose file it is."""
    root = os.environ.get("DVC_ROOT")
    if not root or not (Path(root) / "dvc.yaml").is_file():
        return
    text = (Path(root) / "dvc.yaml").read_text(encoding="utf-8")
    for path in paths:
        if str(path) not in text:
            raise DataError(f"dvc.yaml does not track {path} ({what}); regenerate it: "
                            "python -m clipdistill.stages dvc-yaml --out dvc.yaml")
