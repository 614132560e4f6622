"""The shared shape of analysis results: manifest, atomic result folder, inline PNG."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import FrozenInstanceError, dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest

from deconvviz.analysis.base import (
    MANIFEST,
    AnalysisResult,
    ResultFolderError,
    figure_bytes,
    write_result_folder,
)
from deconvviz.io.atomic import MARKER

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Scores(AnalysisResult):
    kind: ClassVar[str] = "scores"
    values: tuple[float, ...]

    def figure(self, **kwargs: Any) -> tuple[Any, Any]:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(2, 2))
        ax.plot(self.values)
        return fig, ax

    def _files(self) -> dict[str, bytes]:
        return {
            "scores.csv": "".join(f"{v}\n" for v in self.values).encode(),
            "plot.png": figure_bytes(self.figure()[0]),
        }

    def _manifest(self) -> dict[str, Any]:
        return {"values": self.values}


def test_result_is_frozen() -> None:
    result = Scores((1.0, 2.0))
    with pytest.raises(FrozenInstanceError):
        result.values = ()  # type: ignore[misc]


def test_save_writes_files_and_manifest(tmp_path: Path) -> None:
    folder = Scores((1.0, 2.5)).save(tmp_path / "out", arguments={"size": (3, 4), "path": tmp_path})
    assert sorted(p.name for p in folder.iterdir()) == sorted([MARKER, MANIFEST, "scores.csv", "plot.png"])
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest["tool"] == "deconvviz"
    assert manifest["kind"] == "scores"
    assert manifest["values"] == [1.0, 2.5]
    assert manifest["arguments"] == {"size": [3, 4], "path": str(tmp_path)}
    assert "torch" in manifest["versions"]
    assert (folder / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_save_replaces_an_earlier_result_but_not_other_folders(tmp_path: Path) -> None:
    Scores((1.0,)).save(tmp_path / "out")
    Scores((7.0,)).save(tmp_path / "out")
    assert (tmp_path / "out" / "scores.csv").read_text() == "7.0\n"
    other = tmp_path / "mine"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    with pytest.raises(ResultFolderError, match="not written by deconvviz"):
        Scores((1.0,)).save(other)
    assert sorted(p.name for p in other.iterdir()) == ["keep.txt"]


def test_failed_write_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(ResultFolderError, match="inside the result folder"):
        write_result_folder(tmp_path / "out", {"a.txt": b"1", "../escape.txt": b"2"})
    assert list(tmp_path.iterdir()) == []


def test_repr_png() -> None:
    assert Scores((1.0, 3.0))._repr_png_()[:4] == b"\x89PNG"


def test_importing_the_base_loads_no_heavy_module() -> None:
    code = "import sys, deconvviz.analysis.base; print(sorted(m for m in ('torch', 'matplotlib') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert done.stdout.strip() == "[]"
