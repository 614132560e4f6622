"""The package's import graph, read from the source: cycles, upward imports, re-export-only modules, sizes.

Every ``import`` and ``from ... import`` counts, function-local ones included; those under
``if TYPE_CHECKING:`` do not. Run it as a script to print the figures::

    python tests/layout.py
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass, field
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "deconvviz"
MAX_LINES = 700
# The areas below the fronts: none of them may import a front, at any depth, nor viz/ at module level.
LOWER = ("core", "ops", "methods", "models", "analysis", "io")
FRONTS = ("deconvviz.api", "deconvviz.cli", "deconvviz.explore", "deconvviz.viz.report")


@dataclass
class Module:
    name: str
    path: Path
    lines: int
    imports: dict[str, bool] = field(default_factory=dict)  # imported module -> imported at module level
    reexport_only: bool = False


def _module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.Module, name: str, is_package: bool, known: set[str]) -> dict[str, bool]:
    found: dict[str, bool] = {}

    def add(target: str, top: bool) -> None:
        if target == name or not target.startswith("deconvviz"):
            return
        found[target] = found.get(target, False) or top

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for sub in child.orelse:
                    visit(sub, top)
                continue
            inner = top and not isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            if isinstance(child, ast.Import):
                for alias in child.names:
                    add(alias.name, inner)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = name.split(".") if is_package else name.split(".")[:-1]
                    base = base[: len(base) - (child.level - 1)]
                    module = ".".join([*base, child.module] if child.module else base)
                else:
                    module = child.module or ""
                if module in known:  # `from package import x` runs the package's __init__ first
                    add(module, inner)
                for alias in child.names:
                    sub = f"{module}.{alias.name}"
                    if sub in known:
                        add(sub, inner)
            visit(child, inner)

    visit(tree, True)
    return found


def _reexport_only(tree: ast.Module) -> bool:
    """A module whose body is nothing but a docstring, imports of deconvviz's own names and ``__all__``."""
    body = list(tree.body)
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]
    own = [n for n in body if isinstance(n, ast.ImportFrom) and (n.module or "").startswith("deconvviz")]
    rest = [
        n
        for n in body
        if not (isinstance(n, ast.ImportFrom) and n.module == "__future__")
        and n not in own
        and not (isinstance(n, ast.Assign) and any(getattr(t, "id", "") == "__all__" for t in n.targets))
    ]
    return bool(own) and not rest


def read_package(root: Path = PACKAGE) -> dict[str, Module]:
    """Every module of the package with its imports of the package's own modules."""
    paths = sorted(root.rglob("*.py"))
    known = {_module_name(p, root) for p in paths}
    modules: dict[str, Module] = {}
    for path in paths:
        name = _module_name(path, root)
        source = path.read_text(encoding="utf-8")
        tree = ast.parse(source)
        module = Module(name, path, len(source.splitlines()))
        module.imports = _imports(tree, name, path.name == "__init__.py", known)
        module.reexport_only = path.name != "__init__.py" and _reexport_only(tree)
        modules[name] = module
    return modules


def cycles(modules: dict[str, Module]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def strongconnect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in modules[v].imports:
            if w not in modules:
                continue
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for v in modules:
        if v not in index:
            strongconnect(v)
    return found


def _area(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else ""


def _is_front(name: str) -> bool:
    return any(name == f or name.startswith(f + ".") for f in FRONTS)


def upward(modules: dict[str, Module]) -> list[str]:
    """Imports from core/ ops/ methods/ models/ analysis/ io/ that reach a front, or viz/ at module level."""
    found = []
    for module in modules.values():
        if _area(module.name) not in LOWER:
            continue
        for target, top in module.imports.items():
            if _is_front(target):
                found.append(f"{module.name} -> {target}")
            elif _area(target) == "viz" and top:
                found.append(f"{module.name} -> {target} (at module level)")
    return sorted(found)


def oversized(modules: dict[str, Module]) -> list[str]:
    return sorted(f"{m.name} ({m.lines} lines)" for m in modules.values() if m.lines > MAX_LINES)


def shims(modules: dict[str, Module]) -> list[str]:
    return sorted(m.name for m in modules.values() if m.reexport_only)


def main() -> None:
    modules = read_package()
    local = sum(1 for m in modules.values() for top in m.imports.values() if not top)
    flat = sorted(m.name for m in modules.values() if m.name.count(".") == 1 and m.path.name != "__init__.py")
    print(f"modules: {len(modules)}, lines: {sum(m.lines for m in modules.values())}")
    print(f"flat modules: {len(flat)} {flat}")
    print(f"function-local imports of deconvviz's own modules: {local}")
    print(f"cycles: {len(cycles(modules))}")
    for c in cycles(modules):
        print("  " + " <-> ".join(c))
    print(f"upward imports: {len(upward(modules))}")
    for u in upward(modules):
        print("  " + u)
    print(f"re-export-only modules: {shims(modules)}")
    print(f"over {MAX_LINES} lines: {oversized(modules)}")


if __name__ == "__main__":
    main()
