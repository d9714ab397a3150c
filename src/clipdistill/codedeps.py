"""Code dependencies by construction: the project files a module can import, transitively.

Every `import` and `from ... import` anywhere in a module counts — at the top, inside
functions (lazy imports), under `if` or `try` — because any of them may run when the stage
runs. Relative imports are resolved, and importing `a.b.c` also runs `a/__init__.py` and
`a/b/__init__.py`, so those count too. Data files shipped inside a package directory (e.g.
`models/configs/*.json`) count with the package.

One refinement, for the params module that every stage imports: the lazy imports inside its
section models' methods (validators) run only when that section is loaded, so they count only
for the stages that read the section (`section_scoped`). Without it every stage would depend
on the loss code through the `distill` section's validators.

Standard library only: the Snakefile reads this before the project's dependencies need to be
importable.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent  # the folder holding the `clipdistill` package


def module_file(name: str, src: Path = SRC) -> Path | None:
    """The file that defines module `name` (a package's `__init__.py`), or None if not in `src`."""
    base = src.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def _imports(node: ast.AST, *, in_functions: bool, in_methods: bool, in_class: bool = False):
    """Import statements under `node`. in_functions=False: not inside any function body (what
    importing the module runs); in_methods=False: not inside functions defined in a class."""
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        yield node
        return
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
        if not in_functions or (in_class and not in_methods):
            return
        in_class = False
    elif isinstance(node, ast.ClassDef):
        in_class = True
    for child in ast.iter_child_nodes(node):
        yield from _imports(child, in_functions=in_functions, in_methods=in_methods, in_class=in_class)


def _names(nodes, path: Path, name: str) -> set[str]:
    """Module names the import statements may load: for `from X import Y`, both X and X.Y (Y may
    be a submodule); relative imports resolved against module `name` (file `path`)."""
    package = name if _is_package(path) else name.rpartition(".")[0]
    names: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
            continue
        if node.level:
            parts = package.split(".")
            if node.level - 1 >= len(parts):
                raise ImportError(f"{path}: relative import beyond the top-level package")
            base = ".".join(parts[:len(parts) - (node.level - 1)])
            base = f"{base}.{node.module}" if node.module else base
        else:
            base = node.module or ""
        names.add(base)
        names.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
    return names


def _parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def imported_names(path: Path, name: str, top_only: bool = False, methods: bool = True) -> set[str]:
    """Every module name that module `name` (file `path`) may import; top_only: only what
    importing it runs; methods=False: not the imports inside class methods."""
    nodes = _imports(_parse(path), in_functions=not top_only, in_methods=methods)
    return _names(nodes, path, name)


def section_imports(path: Path, name: str, root: str, sections: tuple[str, ...]) -> set[str]:
    """The imports inside the methods of the models that the `sections` fields of class `root`
    use (their annotations, transitively, and their bases)."""
    tree = _parse(path)
    classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}

    def used_by(cls: ast.ClassDef, fields=None) -> set[str]:
        nodes = [*cls.bases] + [s.annotation for s in cls.body if isinstance(s, ast.AnnAssign)
                                and (fields is None or getattr(s.target, "id", None) in fields)]
        return {n.id for node in nodes for n in ast.walk(node) if isinstance(n, ast.Name) and n.id in classes}

    todo, seen = list(used_by(classes[root], set(sections))), set()
    while todo:
        cls = todo.pop()
        if cls not in seen:
            seen.add(cls)
            todo.extend(used_by(classes[cls]))
    nodes = [imp for cls in sorted(seen) for imp in _imports(classes[cls], in_functions=True, in_methods=True)]
    return _names(nodes, path, name)


def _with_parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def _package_data(init: Path) -> list[Path]:
    """Non-Python files of a package directory, including data sub-folders that are not
    packages themselves (those are modules with their own entries)."""
    out = []
    for path in sorted(init.parent.rglob("*")):
        rel = path.relative_to(init.parent)
        if (path.is_file() and path.suffix not in (".py", ".pyc") and "__pycache__" not in rel.parts
                and not any((init.parent.joinpath(*rel.parts[:i]) / "__init__.py").exists()
                            for i in range(1, len(rel.parts)))):
            out.append(path)
    return out


@cache
def _closure(modules: tuple[str, ...], src: Path, section_scoped: tuple | None) -> tuple[Path, ...]:
    seen: set[str] = set()
    files: set[Path] = set()
    todo = list(modules)
    while todo:
        name = todo.pop()
        for mod in _with_parents(name):
            if mod in seen:
                continue
            seen.add(mod)
            path = module_file(mod, src)
            if path is None:  # a third-party module, or an attribute named in `from X import Y`
                continue
            files.add(path)
            if _is_package(path):
                files.update(_package_data(path))
            if section_scoped and mod == section_scoped[0]:
                _, root, sections = section_scoped
                names = imported_names(path, mod, methods=False) | section_imports(path, mod, root, sections)
            else:
                names = imported_names(path, mod)
            todo.extend(n for n in names if n.split(".")[0] == mod.split(".")[0])
    return tuple(sorted(files))


def closure(modules, src: Path = SRC, section_scoped: tuple | None = None) -> list[Path]:
    """The files of `modules` and of every project module they import, transitively, sorted.
    section_scoped=(module, root class, sections): in that module, the imports inside class
    methods count only for the models `sections` of `root` use (see the module docstring)."""
    missing = [m for m in modules if module_file(m, src) is None]
    if missing:
        raise ImportError(f"no module {missing[0]!r} under {src}")
    return list(_closure(tuple(sorted(modules)), Path(src), section_scoped))


def top_level_imports(module: str, src: Path = SRC) -> set[str]:
    """Project modules that importing `module` runs (not its lazy imports inside functions).
    Used for cli.py, whose commands import their stage lazily."""
    path = module_file(module, src)
    top = module.split(".")[0]
    return {n for n in imported_names(path, module, top_only=True)
            if n.split(".")[0] == top and module_file(n, src) is not None}


def import_chain(modules, target: Path, src: Path = SRC, section_scoped: tuple | None = None) -> list[str]:
    """Why `target` is in the closure of `modules`: the shortest chain of modules leading to it
    (for error messages), or [] if it is not."""
    parent: dict[str, str | None] = {}
    queue = []
    for m in sorted(modules):
        for p in _with_parents(m):
            parent.setdefault(p, None)
            queue.append(p)
    while queue:
        mod = queue.pop(0)
        path = module_file(mod, src)
        if path is None:
            continue
        if path == target or (_is_package(path) and target in _package_data(path)):
            chain = [mod]
            while parent[chain[-1]] is not None:
                chain.append(parent[chain[-1]])
            return chain[::-1]
        if section_scoped and mod == section_scoped[0]:
            names = imported_names(path, mod, methods=False) | section_imports(path, mod, *section_scoped[1:])
        else:
            names = imported_names(path, mod)
        for n in sorted(names):
            for p in _with_parents(n):
                if p.split(".")[0] == mod.split(".")[0] and p not in parent:
                    parent[p] = mod
                    queue.append(p)
    return []


def _command_functions(tree: ast.Module) -> dict[tuple[str, ...], ast.FunctionDef]:
    """Typer commands defined in a CLI module: (group, ..., command) -> function, from
    `X.add_typer(Y, name=...)` and `@Y.command(...)` decorators."""
    groups: dict[str, tuple[str, ...]] = {}
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "add_typer"
                and node.args and isinstance(node.args[0], ast.Name)):
            name = next((k.value.value for k in node.keywords if k.arg == "name"), None)
            groups[node.args[0].id] = (getattr(node.func.value, "id", ""), name)
    def prefix(var: str) -> tuple[str, ...]:
        if var not in groups:
            return ()
        parent, name = groups[var]
        return (*prefix(parent), name)

    commands = {}
    for fn in tree.body:
        if not isinstance(fn, ast.FunctionDef):
            continue
        for dec in fn.decorator_list:
            if (isinstance(dec, ast.Call) and isinstance(dec.func, ast.Attribute) and dec.func.attr == "command"
                    and isinstance(dec.func.value, ast.Name)):
                name = dec.args[0].value if dec.args else fn.name.replace("_", "-")
                commands[(*prefix(dec.func.value.id), name)] = fn
    return commands


def command_imports(module: str, words: list[str], src: Path = SRC) -> set[str]:
    """The project modules a CLI command's body imports (lazily, inside the function), and those
    of the module's own functions it calls, transitively. `words`: the command line after the
    program name (`["vqa", "run", "--params", ...]`); the longest defined command prefix wins."""
    path = module_file(module, src)
    tree = _parse(path)
    commands = _command_functions(tree)
    found = [c for c in commands if tuple(words[:len(c)]) == c]
    if not found:
        raise LookupError(f"{path}: no command for {' '.join(words[:2])!r}")
    helpers = {f.name: f for f in tree.body if isinstance(f, ast.FunctionDef)}
    todo, seen = [commands[max(found, key=len)]], set()
    while todo:
        fn = todo.pop()
        if fn.name in seen:
            continue
        seen.add(fn.name)
        todo += [helpers[n.func.id] for n in ast.walk(fn) if isinstance(n, ast.Call)
                 and isinstance(n.func, ast.Name) and n.func.id in helpers]
    nodes = [imp for name in seen for imp in _imports(helpers[name], in_functions=True, in_methods=True)]
    top = module.split(".")[0]
    return {n for n in _names(nodes, path, module) if n.split(".")[0] == top and module_file(n, src) is not None}
