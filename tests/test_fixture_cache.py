"""The mutation-testing fixture cache (tests/fixture_cache.py): a stored build is reused only by
sessions whose mutant cannot have run while it was built, an edit misses, a build is checked
against its declared modules, and nothing changes outside mutation runs."""

import importlib
import sys
from pathlib import Path

import pytest

import fixture_cache as FC
from conftest import WORLD_MODULES, synth_world, world_recipe

MUTANT_ELSEWHERE = "toypkg.other.x_f__mutmut_3"


@pytest.fixture
def toypkg(tmp_path, monkeypatch):
    """A package `toypkg` with a module that writes the fixture (`make`), one it calls (`helper`)
    and one it never runs (`other`)."""
    pkg = tmp_path / "src" / "toypkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "make.py").write_text("from toypkg import helper\n\n"
                                 "def make(dest, calls):\n"
                                 "    calls.append(dest)\n"
                                 "    dest.mkdir(parents=True, exist_ok=True)\n"
                                 "    (dest / 'value.txt').write_text(helper.value() + str(len(calls)))\n")
    (pkg / "helper.py").write_text("def value():\n    return 'built '\n")
    (pkg / "other.py").write_text("def f():\n    return 1\n")
    monkeypatch.syspath_prepend(str(pkg.parent))
    yield pkg
    for name in [m for m in sys.modules if m == "toypkg" or m.startswith("toypkg.")]:
        del sys.modules[name]


class Toy:
    """materialise over toypkg, counting the builds."""

    def __init__(self, pkg: Path, root: Path, modules=("toypkg.make", "toypkg.helper")):
        self.pkg, self.root, self.calls = pkg, root, []
        self.upstream = FC.Recipe("up", frozenset({"toypkg.up_module"}), "u", ())
        self.recipe = FC.Recipe("toy", frozenset(modules), "size=3", (pkg / "make.py",), (self.upstream,))
        self.make = importlib.import_module("toypkg.make").make

    def get(self, dest: Path, mutant: str | None, recipe: FC.Recipe | None = None) -> str:
        env = {FC.CACHE_ENV: str(self.root)} | ({FC.MUTANT_ENV: mutant} if mutant is not None else {})
        FC.materialise(recipe or self.recipe, dest, lambda d: self.make(d, self.calls), env, self.pkg)
        return (dest / "value.txt").read_text()

    def stored(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir()) if self.root.exists() else []


def test_a_clean_build_is_stored_and_reused_by_a_mutant_outside_its_dependencies(toypkg, tmp_path):
    toy = Toy(toypkg, tmp_path / "cache")
    assert toy.get(tmp_path / "clean", mutant="") == "built 1"
    assert len(toy.calls) == 1 and len(toy.stored()) == 1 and toy.stored()[0].startswith("toy-")
    assert toy.get(tmp_path / "stats", mutant="stats") == "built 1"  # mutmut's stats run reuses it too
    # mutmut records each mutant's result beside the module (make.py.meta): not a source edit
    (toypkg / "make.py.meta").write_text('{"exit_code_by_key": {"toypkg.make.x_make__mutmut_1": 1}}')
    FC._package_digest.cache_clear()
    assert toy.get(tmp_path / "mutant", mutant=MUTANT_ELSEWHERE) == "built 1"
    assert len(toy.calls) == 1, "a stored build was rebuilt"
    # the session gets its own copy: writing into it leaves the stored build as it was
    (tmp_path / "mutant" / "value.txt").write_text("changed by a test")
    assert toy.get(tmp_path / "again", mutant=MUTANT_ELSEWHERE) == "built 1"


def test_a_mutant_session_without_a_stored_build_builds_and_stores_nothing(toypkg, tmp_path):
    toy = Toy(toypkg, tmp_path / "cache")
    assert toy.get(tmp_path / "a", mutant=MUTANT_ELSEWHERE) == "built 1"
    assert toy.stored() == [], "only clean runs store (their builds are checked against the declaration)"


@pytest.mark.parametrize("mutated", ["toypkg.make", "toypkg.helper", "toypkg.up_module"])
def test_a_mutant_in_a_declared_dependency_is_rebuilt_and_never_stored(toypkg, tmp_path, mutated):
    """Its own modules and its upstream fixture's: the stored build would hide the mutant."""
    toy = Toy(toypkg, tmp_path / "cache")
    toy.get(tmp_path / "clean", mutant="")
    stored = toy.stored()
    assert toy.get(tmp_path / "mutant", mutant=f"{mutated}.x_make__mutmut_7") == "built 2"
    assert toy.get(tmp_path / "method", mutant=f"{mutated}.xǁCǁm__mutmut_1") == "built 3"
    assert toy.stored() == stored
    assert toy.get(tmp_path / "clean_again", mutant="") == "built 1", "a mutant's build replaced the stored one"


def test_the_forced_fail_run_counts_as_a_mutant_of_every_mutated_module(toypkg, tmp_path):
    toy = Toy(toypkg, tmp_path / "cache")
    toy.get(tmp_path / "clean", mutant="")
    assert toy.get(tmp_path / "fail", mutant="fail") == "built 1"  # no module mutated yet
    (toypkg / "helper.py").write_text((toypkg / "helper.py").read_text() + "x = 1  # type: ignore # mutmut generated\n")
    FC._package_digest.cache_clear()
    stored = toy.stored()
    assert FC.mutated_modules(toypkg) == {"toypkg.helper"}
    assert toy.get(tmp_path / "fail_mutated", mutant="fail") == "built 2"
    assert toy.stored() == stored, "a build under the forced-fail run was stored"


@pytest.mark.parametrize("edit", ["package source", "package data file", "build file", "params", "upstream"])
def test_an_edit_misses_the_stored_build(toypkg, tmp_path, edit):
    toy = Toy(toypkg, tmp_path / "cache")
    toy.get(tmp_path / "clean", mutant="")
    recipe = toy.recipe
    if edit == "package source":
        (toypkg / "other.py").write_text("def f():\n    return 2\n")  # even a module the build does not run
        FC._package_digest.cache_clear()
    elif edit == "package data file":
        (toypkg / "configs.json").write_text("{}")
        FC._package_digest.cache_clear()
    elif edit == "build file":
        recipe = FC.Recipe("toy", recipe.modules, recipe.params, (toypkg / "other.py",), recipe.upstream)
    elif edit == "params":
        recipe = FC.Recipe("toy", recipe.modules, "size=4", recipe.files, recipe.upstream)
    else:
        upstream = FC.Recipe("up", toy.upstream.modules, "u2", ())
        recipe = FC.Recipe("toy", recipe.modules, recipe.params, recipe.files, (upstream,))
    assert toy.get(tmp_path / "edited", mutant=MUTANT_ELSEWHERE, recipe=recipe) == "built 2"
    toy.get(tmp_path / "edited_clean", mutant="", recipe=recipe)
    assert len(toy.stored()) == 2


def test_a_build_running_undeclared_code_is_refused_and_not_stored(toypkg, tmp_path):
    toy = Toy(toypkg, tmp_path / "cache", modules=("toypkg.make",))  # it also runs toypkg.helper
    with pytest.raises(FC.UndeclaredDependency, match=r"'toy'.*\['toypkg.helper'\]"):
        toy.get(tmp_path / "clean", mutant="")
    assert toy.stored() == []


def test_outside_mutation_runs_it_only_builds(toypkg, tmp_path):
    toy = Toy(toypkg, tmp_path / "cache")
    assert toy.get(tmp_path / "a", mutant=None) == "built 1"  # make test, CI: no MUTANT_UNDER_TEST
    assert toy.get(tmp_path / "b", mutant=None) == "built 2"
    assert toy.stored() == []
    FC.materialise(toy.recipe, tmp_path / "c", lambda d: toy.make(d, toy.calls), {FC.MUTANT_ENV: ""}, toypkg)
    assert len(toy.calls) == 3 and toy.stored() == []  # mutmut without the cache folder named


def test_the_smoke_world_build_runs_only_its_declared_modules(tmp_path, smoke_params):
    """The declaration of a real recipe checked by the trace (the teacher's and the store's are
    checked the same way by every stored build of a mutation run)."""
    env = {FC.CACHE_ENV: str(tmp_path / "cache"), FC.MUTANT_ENV: ""}
    recipe = world_recipe("smoke_data", smoke_params)
    FC.materialise(recipe, tmp_path / "world", lambda d: synth_world(smoke_params, d, ["clip_eval"]), env)
    assert (tmp_path / "world" / "clip_eval").is_dir() and len(list((tmp_path / "cache").iterdir())) == 1
    short = FC.Recipe("short", WORLD_MODULES - {"clipdistill.data.render"}, recipe.params, recipe.files)
    with pytest.raises(FC.UndeclaredDependency, match="clipdistill.data.render"):
        FC.materialise(short, tmp_path / "again", lambda d: synth_world(smoke_params, d, ["clip_eval"]), env)


def test_mutation_sessions_order_tests_by_their_stats_run_time(tmp_path):
    stats = tmp_path / "mutmut-stats.json"
    stats.write_text('{"duration_by_test": {"tests/t.py::slow": 9.0, "tests/t.py::fast": 0.1}}')
    on = {FC.CACHE_ENV: "/somewhere", FC.MUTANT_ENV: "m.x_f__mutmut_1"}
    assert FC.stats_run_durations(on, stats) == {"tests/t.py::slow": 9.0, "tests/t.py::fast": 0.1}
    assert FC.stats_run_durations({FC.MUTANT_ENV: "m.x_f__mutmut_1"}, stats) == {}
    assert FC.stats_run_durations({FC.CACHE_ENV: "/somewhere"}, stats) == {}
