"""The shape of the package: the front ends and the simulator import nothing from the control
plane, and no module imports itself back (an import circle), even through a lazy import.

The imports are read with ``ast`` from the source files, not by importing them, so that an
import inside a function (the usual way a circle is held open) counts like any other. Imports
under ``if TYPE_CHECKING:`` are names for the type checker only: they count for the control
plane rule (a front end must not even know the daemon's type) and not for circles (a dataclass
and the class it points to may name each other)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
#: Packages that are given what they need (``ioband.core.driver``, a narrow host object) and
#: must not reach into the daemon's package.
NO_CONTROL = ("ioband.nbd", "ioband.fuse", "ioband.sim")


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted((SRC / "ioband").rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, typing_only: bool = False) -> Iterator[tuple[ast.stmt, bool]]:
    """Every import statement, and whether it is under ``if TYPE_CHECKING:``."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node, typing_only
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                yield from _imports(ast.Module(body=[child], type_ignores=[]), True)
            for child in node.orelse:
                yield from _imports(ast.Module(body=[child], type_ignores=[]), typing_only)
        else:
            yield from _imports(node, typing_only)


def imported(name: str, path: Path, known: dict[str, Path]) -> Iterator[tuple[str, bool]]:
    """The modules of the package that ``name`` imports (with ``from P import m``: module
    ``P.m`` when ``m`` is one, else ``P``), each with whether only the type checker sees it."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))
    for node, typing_only in _imports(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                for alias in node.names
            ]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                yield target, typing_only


def graph(type_imports: bool) -> dict[str, set[str]]:
    known = modules()
    return {
        name: {
            t for t, typing_only in imported(name, path, known) if type_imports or not typing_only
        }
        for name, path in known.items()
    }


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_circle_in_the_package():
    assert circles(graph(type_imports=False)) == []


def test_front_ends_and_simulator_import_nothing_from_control():
    bad = [
        f"{name} imports {target}"
        for name, targets in graph(type_imports=True).items()
        if name.startswith(NO_CONTROL)
        for target in sorted(targets)
        if target == "ioband.control" or target.startswith("ioband.control.")
    ]
    assert bad == []


def test_the_walker_sees_lazy_and_type_checking_imports(tmp_path):
    """The checks above are only as good as the walker: a circle held open by an import inside
    a function is found, and a ``TYPE_CHECKING`` import is told apart."""
    pkg = tmp_path / "p"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from p.b import f\n")
    (pkg / "b.py").write_text("def f():\n    from p import a\n")
    (pkg / "c.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import p.a\n"
    )
    known = {
        "p": pkg / "__init__.py",
        "p.a": pkg / "a.py",
        "p.b": pkg / "b.py",
        "p.c": pkg / "c.py",
    }
    edges = {name: {t for t, _ in imported(name, path, known)} for name, path in known.items()}
    assert circles(edges) == [["p.a", "p.b"]]
    assert list(imported("p.c", known["p.c"], known)) == [("p.a", True)]
