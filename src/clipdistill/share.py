"""Sharing artifacts through DVC remotes, and keeping Snakemake in step with what DVC restored.

`push` uploads the DVC cache of every stage; `pull` fetches first and checks out only when
the fetch succeeded, so a bad remote never touches the workspace; `sync` makes Snakemake
agree with the pulled artifacts: DVC's hashes must match dvc.lock (else it refuses), then
`snakemake --touch` orders the output timestamps along the DAG, so `snakemake -n` has
nothing to do. Every failure is one line naming the remote.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from clipdistill.io import ClipdistillError


class ShareError(ClipdistillError):
    """A remote or sync problem, in one line."""


@dataclass(frozen=True)
class Remote:
    name: str
    url: str


def _tool(name: str) -> str:
    """The executable next to this interpreter (the project venv), else from PATH."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else (shutil.which(name) or name)


def _run(args: list[str], cwd: Path, timeout: float, env: dict | None = None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired as exc:
        raise ShareError(f"`{' '.join(args[:2])}` gave no answer within {timeout:.0f} s") from exc


def remote(project: Path, name: str | None = None) -> Remote:
    """The named remote, or the project's default one, with its URL (local paths resolved)."""
    from dvc.exceptions import NotDvcRepoError
    from dvc.repo import Repo

    try:
        with Repo(str(project)) as repo:
            config = repo.config
            remotes = {k: dict(v).get("url", "") for k, v in config["remote"].items()}
            name = name or dict(config["core"]).get("remote")
    except NotDvcRepoError as exc:
        raise ShareError(f"{project}: not a DVC project (no .dvc/)") from exc
    if name is None:
        raise ShareError("no default DVC remote; add one with `dvc remote add -d NAME URL`")
    if name not in remotes:
        raise ShareError(f"no DVC remote named {name!r}; configured: {', '.join(remotes) or 'none'}")
    return Remote(name, remotes[name])


def _cause(proc: subprocess.CompletedProcess) -> str:
    """DVC's own reason, in one line, without its boilerplate."""
    text = proc.stderr + proc.stdout
    errors = [m.strip() for m in re.findall(r"ERROR:\s*(.+)", text)]
    cause = errors[0] if errors else (text.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
    if "unexpected error" in cause:
        cause = "cannot reach it (DVC: unexpected error)"
    return re.sub(r"\s+", " ", cause).rstrip(" -")


def _local_path(r: Remote, project: Path) -> Path | None:
    """A local remote's directory (DVC's config gives it resolved; relative would be to .dvc/)."""
    if "://" in r.url:
        return None
    return Path(r.url) if Path(r.url).is_absolute() else (project / ".dvc" / r.url).resolve()


def _check_reachable(r: Remote, project: Path) -> None:
    """A local remote that is missing is an error (DVC would call it 'up to date')."""
    path = _local_path(r, project)
    if path is not None and not path.is_dir():
        raise ShareError(f"remote {r.name!r} ({r.url}): directory {path} does not exist")


def _dvc(action: str, r: Remote, project: Path, timeout: float) -> str:
    proc = _run([_tool("dvc"), action, "-r", r.name], project, timeout)
    if proc.returncode != 0:
        raise ShareError(f"remote {r.name!r} ({r.url}): {action} failed: {_cause(proc)}")
    return proc.stdout


def push(project: Path, name: str | None = None, timeout: float = 1800) -> str:
    r = remote(project, name)
    if (path := _local_path(r, project)) is not None:
        path.mkdir(parents=True, exist_ok=True)  # the default local remote is created on first push
    return _dvc("push", r, project, timeout)


def pull(project: Path, name: str | None = None, timeout: float = 1800) -> str:
    """Fetch into the cache; only then check out (a failed fetch leaves the workspace as it was)."""
    r = remote(project, name)
    _check_reachable(r, project)
    _dvc("fetch", r, project, timeout)
    proc = _run([_tool("dvc"), "checkout"], project, timeout)
    if proc.returncode != 0:
        raise ShareError(f"dvc checkout failed after fetching from {r.name!r}: {_cause(proc)}")
    return proc.stdout


def stale_stages(project: Path, timeout: float = 600) -> list[str]:
    """Stages whose workspace outputs or deps differ from dvc.lock."""
    proc = _run([_tool("dvc"), "status", "--json"], project, timeout)
    if proc.returncode != 0:
        raise ShareError(f"dvc status failed: {_cause(proc)}")
    return sorted(json.loads(proc.stdout or "{}"))


def sync(project: Path, profile: str = "workflow/profiles/default", timeout: float = 600) -> None:
    """Make Snakemake's timestamps agree with the artifacts DVC verified."""
    stale = stale_stages(project, timeout)
    if stale:
        shown = ", ".join(stale[:5]) + (f" (+{len(stale) - 5} more)" if len(stale) > 5 else "")
        raise ShareError(f"{len(stale)} stage(s) differ from dvc.lock, pull or reproduce first: {shown}")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = _run([_tool("snakemake"), "--touch", "-c1", "--workflow-profile", profile], project, timeout, env)
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        raise ShareError(f"snakemake --touch failed: {lines[-1] if lines else proc.returncode}")
