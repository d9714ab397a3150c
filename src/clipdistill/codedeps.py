"""Code dependencies by construction: the project files a module can import, transitively.

Every `import` and `from ... import` anywhere in a module counts — at the top, inside
functions (lazy imports), under `if` or `try` — because any of them may run when the stage
runs. Relative imports are resolved, and importing `a.b.c` also runs `a/__init__.py` and
`a/b/__init__.py`, so those count too. Data files shipped inside a package directory (e.g.
`models/configs/*.json`) count with the package.

Two refinements, for the modules every stage imports: the lazy imports inside the params
module's section models (validators) run only when that section is loaded, so they count only
for the stages that read the section (`section_scoped`) — without it every stage would depend
on the loss code through the `distill` section's validators; and the CLI layer's lazy imports
(one per command body) count only for their own command (`shallow`, `function_imports`).

Standard library only (`ast`): nothing is imported to find what it imports.
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
def _closure(modules: tuple[str, ...], src: Path, section_scoped: tuple | None,
             shallow: tuple[str, ...]) -> tuple[Path, ...]:
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
            names = _followed(path, mod, section_scoped, shallow)
            todo.extend(n for n in names if n.split(".")[0] == mod.split(".")[0])
    return tuple(sorted(files))


def _is_shallow(module: str, shallow: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + "_") for p in shallow)


def _followed(path: Path, mod: str, section_scoped: tuple | None, shallow: tuple[str, ...]) -> set[str]:
    if _is_shallow(mod, shallow):
        return imported_names(path, mod, top_only=True)
    if section_scoped and mod == section_scoped[0]:
        _, root, sections = section_scoped
        return imported_names(path, mod, methods=False) | section_imports(path, mod, root, sections)
    return imported_names(path, mod)


def closure(modules, src: Path = SRC, section_scoped: tuple | None = None, shallow: tuple[str, ...] = ()) -> list[Path]:
    """The files of `modules` and of every project module they import, transitively, sorted.
    section_scoped=(module, root class, sections): in that module, the imports inside class
    methods count only for the models `sections` of `root` use (see the module docstring).
    shallow: modules (a name, or its `name_*` siblings) whose lazy imports are not followed —
    the CLI layer, whose command bodies import their stage (counted per command instead)."""
    missing = [m for m in modules if module_file(m, src) is None]
    if missing:
        raise ImportError(f"no module {missing[0]!r} under {src}")
    return list(_closure(tuple(sorted(modules)), Path(src), section_scoped, tuple(shallow)))


def top_level_imports(module: str, src: Path = SRC) -> set[str]:
    """Project modules that importing `module` runs (not its lazy imports inside functions).
    Used for cli.py, whose commands import their stage lazily."""
    path = module_file(module, src)
    top = module.split(".")[0]
    return {n for n in imported_names(path, module, top_only=True)
            if n.split(".")[0] == top and module_file(n, src) is not None}


def import_chain(modules, target: Path, src: Path = SRC, section_scoped: tuple | None = None,
                 shallow: tuple[str, ...] = ()) -> list[str]:
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
        for n in sorted(_followed(path, mod, section_scoped, shallow)):
            for p in _with_parents(n):
                if p.split(".")[0] == mod.split(".")[0] and p not in parent:
                    parent[p] = mod
                    queue.append(p)
    return []


def function_imports(module: str, function: str, src: Path = SRC) -> set[str]:
    """The project modules a module-level function imports in its body (lazily), and those of
    the same module's functions it calls, transitively — what running it can import."""
    path = module_file(module, src)
    tree = _parse(path)
    functions = {f.name: f for f in tree.body if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))}
    if function not in functions:
        raise LookupError(f"{path}: no function {function!r}")
    todo, seen = [function], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo += [n.func.id for n in ast.walk(functions[name]) if isinstance(n, ast.Call)
                 and isinstance(n.func, ast.Name) and n.func.id in functions]
    nodes = [imp for name in seen for imp in _imports(functions[name], in_functions=True, in_methods=True)]
    top = module.split(".")[0]
    return {n for n in _names(nodes, path, module) if n.split(".")[0] == top and module_file(n, src) is not None}
