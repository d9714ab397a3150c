"""A cross-process cache of the expensive session fixtures, on only under mutation testing (issue 23).

mutmut starts a fresh pytest session per mutant, so without it every mutant of
`distill/train.py` rebuilds the world, a 6-epoch teacher and a feature store (minutes) before
its first test. With `CLIPDISTILL_FIXTURE_CACHE` naming a folder (mutation_scores.py and
`make mutants` set it) *and* mutmut's `MUTANT_UNDER_TEST` set, a fixture is:

- built and stored when no mutant is active (mutmut's stats and clean runs): the build runs
  under a trace of the clipdistill modules whose code ran, and a module it ran but its recipe
  does not declare is an error (the declaration must be a superset of what the build uses);
- copied from the store when the active mutant's module is not among the modules its build
  depends on (its own and its upstream fixtures' declared modules): the mutated code cannot
  have run while it was built, so a fresh build in the mutant's session would run the same code;
- built afresh, and never stored, when the mutant's module is among them (the cached copy
  would hide the mutant), or when no stored copy exists.

mutmut's forced-fail run (`fail`: every mutated function raises) counts as a mutant of every
module that carries mutmut's trampolines. The key of a stored copy covers the fixture's
parameters, every file of the imported clipdistill package, the files that hold the build
code (conftest.py, this file, …) and the upstream fixtures' keys: an edit never reuses a copy.
Outside mutation runs (make test, CI) `materialise` simply builds.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

CACHE_ENV = "CLIPDISTILL_FIXTURE_CACHE"
MUTANT_ENV = "MUTANT_UNDER_TEST"
NO_MUTANT = {"", "stats"}  # mutmut's clean and stats runs: every trampoline calls the original
FORCED_FAIL = "fail"
MUTMUT_MARKER = "# mutmut generated"  # on every line mutmut adds to a mutated module
MUTMUT_RESULTS = {".meta"}  # mutmut's per-module results file, in the package folder it runs


class UndeclaredDependency(RuntimeError):
    """A fixture's build ran code of a clipdistill module its recipe does not declare."""


@dataclass(frozen=True)
class Recipe:
    """How a cached fixture is made: `modules` are the clipdistill modules whose code its build
    may run (verified on every stored build), `params` what it is made from, `files` the files
    that hold its build code, `upstream` the cached fixtures it is made from."""

    name: str
    modules: frozenset[str]
    params: str
    files: tuple[Path, ...]
    upstream: tuple[Recipe, ...] = field(default=())

    def dependencies(self) -> frozenset[str]:
        """Its own modules and those of everything upstream: a mutant in any of them may change it."""
        return self.modules.union(*(r.dependencies() for r in self.upstream))


def package_dir() -> Path:
    """The clipdistill package as imported (mutmut's mutants/src copy during mutation runs)."""
    import clipdistill

    return Path(clipdistill.__file__).resolve().parent


def _digest_files(paths) -> str:
    h = hashlib.sha256()
    for path in paths:
        h.update(Path(path).name.encode() + b"\0" + Path(path).read_bytes() + b"\0")
    return h.hexdigest()


@cache
def _package_digest(pkg: Path) -> str:
    # mutmut keeps its results beside the mutated module (train.py.meta): they change per mutant
    files = sorted(p for p in pkg.rglob("*")
                   if p.is_file() and "__pycache__" not in p.parts and p.suffix not in MUTMUT_RESULTS)
    h = hashlib.sha256()
    for p in files:
        h.update(p.relative_to(pkg).as_posix().encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def key(recipe: Recipe, pkg: Path) -> str:
    h = hashlib.sha256()
    for part in (recipe.name, recipe.params, _package_digest(pkg), _digest_files(recipe.files),
                 *(key(r, pkg) for r in recipe.upstream)):
        h.update(part.encode() + b"\0")
    return h.hexdigest()[:24]


def module_of_file(path: str, pkg: Path) -> str | None:
    """`clipdistill.a.b` for pkg/a/b.py (pkg/a/__init__.py: `clipdistill.a`); None outside pkg."""
    try:
        rel = Path(path).resolve().relative_to(pkg)
    except ValueError:
        return None
    parts = rel.with_suffix("").parts
    return ".".join((pkg.name, *(parts[:-1] if parts[-1] == "__init__" else parts)))


def mutated_modules(pkg: Path) -> set[str]:
    """The modules mutmut has rewritten (their files carry its trampolines)."""
    return {m for p in pkg.rglob("*.py") if MUTMUT_MARKER in p.read_text(encoding="utf-8")
            and (m := module_of_file(str(p), pkg))}


def altered_modules(mutant: str, pkg: Path) -> set[str]:
    """The modules whose code may differ from the source in a session testing `mutant`."""
    if mutant in NO_MUTANT:
        return set()
    if mutant == FORCED_FAIL:
        return mutated_modules(pkg)
    return {mutant.rpartition(".")[0]}  # clipdistill.distill.train.x_distill__mutmut_15


def modules_run(build: Callable[[], object], pkg: Path) -> set[str]:
    """Run `build`; the clipdistill modules whose Python code ran meanwhile (any thread)."""
    files: set[str] = set()

    def on_call(frame, event, arg):
        files.add(frame.f_code.co_filename)
        return None  # no line events: only calls are seen

    before, before_threads = sys.gettrace(), threading.gettrace()
    sys.settrace(on_call)
    threading.settrace(on_call)
    try:
        build()
    finally:
        sys.settrace(before)
        threading.settrace(before_threads)
    return {m for f in files if (m := module_of_file(f, pkg))}


def materialise(recipe: Recipe, dest: Path, build: Callable[[Path], object],
                env: Mapping[str, str] = os.environ, pkg: Path | None = None) -> Path:
    """Fill the folder `dest` with the fixture: `build(dest)`, or a copy of a stored build
    (the rules in the module docstring). Returns dest."""
    root, mutant = env.get(CACHE_ENV), env.get(MUTANT_ENV)
    if not root or mutant is None:
        build(dest)
        return dest
    pkg = pkg or package_dir()
    altered = altered_modules(mutant, pkg)
    if altered & recipe.dependencies():
        build(dest)  # the mutant may run while it is built: a stored copy would hide it
        return dest
    entry = Path(root) / f"{recipe.name}-{key(recipe, pkg)}"
    if entry.is_dir():
        shutil.copytree(entry, dest, dirs_exist_ok=True)
        return dest
    if altered:
        build(dest)  # only clean runs store (and verify the declaration)
        return dest
    ran = modules_run(lambda: build(dest), pkg)
    if undeclared := ran - recipe.modules:
        raise UndeclaredDependency(f"fixture {recipe.name!r}: its build ran {sorted(undeclared)}, not in its "
                                   f"recipe's modules: declare them (tests/conftest.py)")
    Path(root).mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{recipe.name}-", dir=root))
    shutil.copytree(dest, staging, dirs_exist_ok=True)
    try:
        staging.rename(entry)  # atomic: a reader sees the whole copy or none
    except OSError:  # another session stored it first
        shutil.rmtree(staging)
    return dest


def stats_run_durations(env: Mapping[str, str] = os.environ, stats: Path = Path("mutmut-stats.json")) -> dict[str, float]:
    """Under mutation testing with the cache on: each test's time in mutmut's stats run (mutmut
    runs pytest in its mutants/ folder, beside the file), else nothing."""
    if not env.get(CACHE_ENV) or env.get(MUTANT_ENV) is None or not stats.is_file():
        return {}
    return json.loads(stats.read_text())["duration_by_test"]
