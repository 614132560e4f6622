"""The package's layout: imports point one way, no cycles, no re-export modules, no module over 700 lines.

The import graph is read from the source by ``tests/layout.py`` (function-local imports included, those under
``if TYPE_CHECKING:`` left out); ``python tests/layout.py`` prints it.
"""

from __future__ import annotations

import layout
import pytest


@pytest.fixture(scope="module")
def modules() -> dict[str, layout.Module]:
    return layout.read_package()


def test_no_import_cycles(modules: dict[str, layout.Module]) -> None:
    assert layout.cycles(modules) == []


def test_nothing_below_the_fronts_imports_a_front_or_viz_at_module_level(modules: dict[str, layout.Module]) -> None:
    assert layout.upward(modules) == []


def test_no_module_only_re_exports_another(modules: dict[str, layout.Module]) -> None:
    assert layout.shims(modules) == []


def test_no_module_is_over_700_lines(modules: dict[str, layout.Module]) -> None:
    assert layout.oversized(modules) == []


def test_only_the_fronts_and_the_package_basics_sit_flat(modules: dict[str, layout.Module]) -> None:
    flat = {name for name, m in modules.items() if name.count(".") == 1 and m.path.name != "__init__.py"}
    assert flat <= {"deconvviz.__main__", "deconvviz.api", "deconvviz.errors"}


def test_the_reader_sees_what_it_must(tmp_path) -> None:
    package = tmp_path / "deconvviz"
    (package / "core").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "api.py").write_text("from deconvviz.core.a import x\n\n\ndef g():\n    return x\n")
    (package / "core" / "__init__.py").write_text("")
    (package / "core" / "a.py").write_text(
        "from typing import TYPE_CHECKING\nx = 1\nif TYPE_CHECKING:\n    from deconvviz.api import y\n"
        "def f():\n    from deconvviz.core.b import z\n"
    )
    (package / "core" / "b.py").write_text("from deconvviz import api\nz = 2\n")
    (package / "core" / "c.py").write_text('"""Shim."""\nfrom deconvviz.core.a import x\n__all__ = ["x"]\n')
    found = layout.read_package(package)
    assert found["deconvviz.core.a"].imports == {"deconvviz.core.b": False}  # TYPE_CHECKING left out
    assert layout.cycles(found) == [["deconvviz.api", "deconvviz.core.a", "deconvviz.core.b"]]
    assert layout.upward(found) == ["deconvviz.core.b -> deconvviz.api"]
    assert layout.shims(found) == ["deconvviz.core.c"]
