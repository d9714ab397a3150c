"""One state for two runners: what Snakemake finished is recorded in dvc.lock, and what DVC
restored or reproduced is up to date for Snakemake.

- `record` (Snakemake -> DVC) runs from the Snakefile's `onsuccess`/`onerror` handlers and
  from `clipdistill sync`: every stage that `dvc status` calls stale, whose outputs a finished
  Snakemake job wrote and that Snakemake would not rerun, is `dvc commit`ted, in one batch
  (one `dvc commit` per job would cost ~2 s each). A stage whose outputs or inputs changed
  after its Snakemake job is refused, never blessed.
- `sync` adds what a kill and DVC need: it removes the lock a killed Snakemake leaves behind
  and the outputs of jobs it never saw finish (so they are stale in both), records, and once
  every stage matches dvc.lock runs `snakemake --touch`, so timestamps and Snakemake's
  params/code records agree with what `dvc pull`/`checkout`/`repro`/`exp run` put there.
"""

from __future__ import annotations

import json
import os
import re
from base64 import urlsafe_b64encode
from dataclasses import dataclass, field
from pathlib import Path

from clipdistill.share import ShareError, _cause, _run, _tool

PROFILE = "workflow/profiles/default"
# Written by tools, not by stages, and excluded from DVC's hashes (.dvcignore).
_NOT_CONTENT = {".snakemake_timestamp", ".gitignore"}
_SLACK_S = 1.0  # mtime vs Snakemake's recorded start/end: file systems round timestamps


@dataclass
class Recorded:
    committed: list[str] = field(default_factory=list)  # now in dvc.lock
    pending: list[str] = field(default_factory=list)  # stale for DVC, and Snakemake would run them
    changed: dict[str, str] = field(default_factory=dict)  # stage -> why it cannot be recorded


def _env() -> dict:
    import sys

    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}


def dvc_status(project: Path, timeout: float = 600) -> dict[str, list]:
    proc = _run([_tool("dvc"), "status", "--json"], project, timeout)
    if proc.returncode != 0:
        raise ShareError(f"dvc status failed: {_cause(proc)}")
    return json.loads(proc.stdout or "{}")


def snakemake_pending(project: Path, profile: str = PROFILE, timeout: float = 600) -> set[str]:
    """Every output the default target's dry run would (re)create; incomplete ones included."""
    proc = _run([_tool("snakemake"), "-n", "--rerun-incomplete", "--workflow-profile", profile],
                project, timeout, _env())
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        raise ShareError(f"snakemake -n failed: {lines[-1] if lines else proc.returncode}")
    return {p for line in re.findall(r"^    output: (.*)$", proc.stdout, re.MULTILINE) for p in line.split(", ")}


def _stages(project: Path) -> dict[str, tuple[list[str], list[str]]]:
    """stage -> (outs, path deps), as dvc.yaml expands them."""
    from dvc.repo import Repo

    with Repo(str(project)) as repo:
        return {s.name: ([o.def_path for o in s.outs], [d.def_path for d in s.deps if not hasattr(d, "params")])
                for s in repo.index.stages}


def _metadata(project: Path, path: str) -> dict | None:
    """Snakemake's record of the job that wrote `path` (its file persistence layout)."""
    b64 = urlsafe_b64encode(path.encode()).decode()
    chunks = [b64[i:i + 254] for i in range(0, len(b64), 254)]
    rec = project / ".snakemake" / "metadata" / Path(*["@" + c for c in chunks[:-1]], chunks[-1])
    try:
        return json.loads(rec.read_text())
    except (OSError, ValueError):
        return None


def _newest_mtime(path: Path) -> float:
    if not path.is_dir():
        return path.stat().st_mtime
    newest = 0.0
    for root, dirs, files in os.walk(path):
        dirs[:] = [d for d in dirs if d != "__pycache__"]  # written by any import, not edits
        for name in files:
            if name not in _NOT_CONTENT:
                newest = max(newest, os.stat(os.path.join(root, name)).st_mtime)
    return newest


def _why_not_recordable(project: Path, outs: list[str], deps: list[str]) -> str | None:
    """None when a finished Snakemake job wrote every out and nothing changed since it started."""
    start = float("inf")
    for out in outs:
        meta = _metadata(project, out)
        if meta is None or meta.get("incomplete") or meta.get("endtime") is None:
            return f"{out} was not written by a finished Snakemake job"
        if _newest_mtime(project / out) > meta["endtime"] + _SLACK_S:
            return f"{out} changed after Snakemake wrote it"
        start = min(start, meta.get("starttime") or meta["endtime"])
    for dep in deps:
        if (project / dep).exists() and _newest_mtime(project / dep) > start + _SLACK_S:
            return f"{dep} changed after Snakemake ran the stage"
    return None


def plan(project: Path, profile: str = PROFILE, timeout: float = 1800) -> Recorded:
    """Sort DVC's stale stages: recordable (Snakemake finished them), pending, or changed since."""
    project = Path(project)
    result = Recorded()
    stale = dvc_status(project, timeout)
    if not stale:
        return result
    pending = snakemake_pending(project, profile, timeout)
    stages = _stages(project)
    for name in sorted(stale):
        outs, deps = stages.get(name, ([], []))
        if not outs or any(o in pending or not (project / o).exists() for o in outs):
            result.pending.append(name)
        elif why := _why_not_recordable(project, outs, deps):
            result.changed[name] = why
        else:
            result.committed.append(name)
    return result


def commit(project: Path, stages: list[str], timeout: float = 1800) -> None:
    """One `dvc commit` for them all; -f because their deps/params changed by design."""
    if stages:
        proc = _run([_tool("dvc"), "commit", "-f", "-q", *stages], project, timeout)
        if proc.returncode != 0:
            raise ShareError(f"dvc commit failed: {_cause(proc)}")


def record(project: Path, profile: str = PROFILE, timeout: float = 1800) -> Recorded:
    """Commit to dvc.lock every stale stage that Snakemake finished and would not rerun."""
    result = plan(project, profile, timeout)
    commit(Path(project), result.committed, timeout)
    return result


def _snakemake_alive(project: Path) -> int | None:
    """The pid of a Snakemake process working in `project`, if any (Linux /proc)."""
    here = project.resolve()
    for pid in filter(str.isdigit, os.listdir("/proc") if os.path.isdir("/proc") else []):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if any(b"snakemake" in Path(a.decode(errors="replace")).name.encode() for a in cmd[:2]) \
                    and Path(os.readlink(f"/proc/{pid}/cwd")) == here:
                return int(pid)
        except OSError:
            continue
    return None


def unlock_after_kill(project: Path, profile: str = PROFILE, timeout: float = 600) -> bool:
    """Remove the lock a killed Snakemake left; refuse while one still runs here."""
    locks = project / ".snakemake" / "locks"
    if not (locks.is_dir() and any(locks.iterdir())):
        return False
    if (pid := _snakemake_alive(project)) is not None:
        raise ShareError(f"a Snakemake run (pid {pid}) is still working in {project}; wait for it or stop it first")
    proc = _run([_tool("snakemake"), "--unlock", "--workflow-profile", profile], project, timeout, _env())
    if proc.returncode != 0:
        raise ShareError(f"snakemake --unlock failed: {_cause(proc)}")
    return True


def incomplete_outputs(project: Path) -> list[str]:
    """Outputs of jobs that started but never finished (Snakemake's incomplete markers)."""
    from base64 import urlsafe_b64decode

    root = project / ".snakemake" / "incomplete"
    found = []
    for marker in (p for p in root.rglob("*") if p.is_file()) if root.is_dir() else []:
        b64 = "".join(part.lstrip("@") for part in marker.relative_to(root).parts)
        try:
            found.append(urlsafe_b64decode(b64).decode())
        except ValueError:
            continue
    return sorted(found)


def clear_incomplete(project: Path, profile: str = PROFILE, timeout: float = 600) -> list[str]:
    """Delete what killed jobs left (Snakemake deletes them itself on a failure, not on a kill),
    so they are missing, hence stale, for both runners, and a plain `snakemake -n` works again."""
    import shutil

    paths = incomplete_outputs(project)
    for rel in paths:
        target = project / rel
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()
    if paths:
        proc = _run([_tool("snakemake"), "--cleanup-metadata", *paths, "--workflow-profile", profile],
                    project, timeout, _env())
        # It exits 1 when a killed job never got a metadata record, yet clears the markers.
        if left := set(paths) & set(incomplete_outputs(project)):
            raise ShareError(f"snakemake --cleanup-metadata left {min(left)} marked incomplete: "
                             f"{_cause(proc)}")
    return paths


def sync(project: Path, profile: str = PROFILE, timeout: float = 1800) -> Recorded:
    """Reconcile both runners; afterwards a stage is either up to date in both or stale in both."""
    project = Path(project)
    if not (project / "dvc.yaml").is_file():
        raise ShareError(f"{project}: no dvc.yaml here; run from the project root or pass --project")
    unlock_after_kill(project, profile, timeout)
    clear_incomplete(project, profile, timeout)
    done = plan(project, profile, timeout)
    if done.changed:  # refuse before writing anything
        name, why = next(iter(done.changed.items()))
        more = f" (+{len(done.changed) - 1} more)" if len(done.changed) > 1 else ""
        raise ShareError(f"{name}: {why}{more}; `dvc checkout` restores what dvc.lock records, "
                         "or rerun the stage")
    commit(project, done.committed, timeout)
    if not done.pending:
        # DVC verified every artifact: let Snakemake's timestamps and records follow.
        proc = _run([_tool("snakemake"), "--touch", "-c1", "--workflow-profile", profile], project, timeout, _env())
        if proc.returncode != 0:
            lines = (proc.stderr or proc.stdout).strip().splitlines()
            raise ShareError(f"snakemake --touch failed: {lines[-1] if lines else proc.returncode}")
    return done


def record_after_run(workflow_dir: str | Path = ".") -> None:
    """The Snakefile's onsuccess/onerror hook: never fails the run, says what it did in one line."""
    import sys
    import time

    t0 = time.monotonic()
    try:
        done = record(Path(workflow_dir))
    except Exception as exc:  # noqa: BLE001 - a hook must not turn a finished run into a failure
        print(f"clipdistill: dvc.lock not updated ({exc}); run `clipdistill sync`", file=sys.stderr)
        return
    msg = f"clipdistill: recorded {len(done.committed)} stage(s) in dvc.lock ({time.monotonic() - t0:.1f} s)"
    if done.pending:
        msg += f"; {len(done.pending)} still to run"
    if done.changed:
        msg += f"; not recorded, changed after their run: {', '.join(sorted(done.changed))}"
    print(msg, file=sys.stderr)
