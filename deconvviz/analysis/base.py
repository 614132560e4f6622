"""The shape every analysis result shares: a frozen dataclass with a figure, a saved folder and a manifest.

An analysis (occlusion, correspondence, invariance, evolution, discrimination, sanity) is a function that
takes a model, its input(s) and options and returns a result. Results are data: detached CPU tensors, numbers
and metadata. They know how to draw themselves only through a plotting function imported when ``figure()`` is
called, so importing a result never imports matplotlib.

A result class subclasses :class:`AnalysisResult` (as a frozen dataclass) and provides:

* ``kind``: a class variable naming the analysis (``"occlusion"``), written into the manifest;
* ``figure(**kwargs) -> (Figure, Axes)``: the analysis' picture, returned and never shown;
* ``_files() -> dict[str, bytes]``: the files of its result folder other than ``manifest.json``
  (figures, CSV, JSON), by relative path (by default ``figure.png``, its figure);
* ``_manifest() -> dict``: what the manifest says about this result beyond the common keys.

and inherits ``save(directory)`` (one folder, written atomically, with ``manifest.json``), ``manifest()`` and
``_repr_png_`` (inline display in notebooks).

Example:
    >>> @dataclass(frozen=True)  # doctest: +SKIP
    ... class MyResult(AnalysisResult):
    ...     kind: ClassVar[str] = "mine"
    ...     scores: Tensor
    ...     def figure(self, **kwargs): ...
    ...     def _files(self): return {"scores.csv": b"..."}
    ...     def _manifest(self): return {"scores": self.scores.tolist()}
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, ClassVar

from deconvviz.errors import DeconvVizError
from deconvviz.io.atomic import MARKER, check_target, owned, stage_folders
from deconvviz.io.manifest import MANIFEST, header

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure


class AnalysisError(DeconvVizError, ValueError):
    """Bad input to an analysis (an option out of range, a box outside an image, an unknown class)."""


class ResultFolderError(DeconvVizError, OSError):
    """A result folder that cannot be written where it was asked for."""


@dataclass(frozen=True)
class AnalysisResult:
    """Base of the analysis results (see the module docstring for what a subclass provides)."""

    kind: ClassVar[str] = "analysis"

    def figure(self, **kwargs: Any) -> tuple[Figure, Any]:
        """The result's figure, returned and never shown (drawn by :mod:`deconvviz.viz.results`).

        Args:
            **kwargs: the drawing's options: ``size`` (inches per panel) for every kind; ``scale`` (display
                scaling of reconstructions) for evolution and sanity; ``legend`` (classes listed) for occlusion.

        Returns:
            ``(figure, axes)``.
        """
        return viz().figure_of(self, **kwargs)

    def _files(self) -> dict[str, bytes]:
        """The files of the result folder other than the manifest, by relative path: by default its figure."""
        return {"figure.png": figure_bytes(self.figure()[0])}

    def _manifest(self) -> dict[str, Any]:
        """What the manifest says about this result beyond the common keys."""
        return {}

    def manifest(self, arguments: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The manifest of the result folder: tool, schema, kind, creation time, library versions, arguments.

        Args:
            arguments: how the analysis was asked for (CLI options, function arguments), kept for the record.

        Returns:
            A JSON-serialisable dict.
        """
        return {
            **header(self.kind),
            "arguments": _jsonable(dict(arguments or {})),
            **_jsonable(self._manifest()),
        }

    def save(self, directory: str | os.PathLike[str], *, arguments: Mapping[str, Any] | None = None) -> Path:
        """Write the result into the folder ``directory``, atomically, with a ``manifest.json``.

        The files are staged in a sibling that takes the folder's place when complete, so the folder either
        holds the whole result or is left as it was. An earlier deconvviz result folder of the same name is
        replaced; any other non-empty folder, there at the start or made meanwhile, is left alone and refused.

        Args:
            directory: the result folder to create.
            arguments: recorded in the manifest (see :meth:`manifest`).

        Returns:
            The folder's path.

        Raises:
            ResultFolderError: ``directory`` exists and is not a deconvviz result folder, or cannot be written.
        """
        files = dict(self._files())
        files[MANIFEST] = (json.dumps(self.manifest(arguments), indent=2) + "\n").encode("utf-8")
        return write_result_folder(Path(directory), files, self.kind)

    def _repr_png_(self) -> bytes:
        return figure_bytes(self.figure()[0])


def viz() -> ModuleType:
    """:mod:`deconvviz.viz.results`, imported on first use: the one place where results hand over to drawing.

    Results are data; their pictures are drawn by :mod:`deconvviz.viz`, which imports matplotlib. Every
    result method that draws (``figure``, ``save``, notebook display) goes through here, so importing a
    result never imports matplotlib and nothing below :mod:`deconvviz.viz` depends on it otherwise.
    """
    return importlib.import_module("deconvviz.viz.results")


def figure_bytes(fig: Figure, dpi: float = 100) -> bytes:
    """A figure as PNG bytes; the figure is closed afterwards (for ``_files``)."""
    return viz().png_of(fig, dpi)


def text_table(head: Sequence[str], body: Sequence[Sequence[str]]) -> list[str]:
    """A table's lines as the analyses print them: columns padded to their widest cell, a rule under the head."""
    widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in [head, *body]]
    return [lines[0], "  ".join("-" * w for w in widths), *lines[1:]]


def _jsonable(value: Any) -> Any:
    """``value`` with tuples as lists and tensors / NumPy scalars as Python numbers or lists."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        return _jsonable(tolist())
    return value


def is_result_folder(folder: Path) -> bool:
    """Whether ``folder`` was written by deconvviz (it holds the marker of :mod:`deconvviz.io`; it may be replaced)."""
    return owned(folder)


def check_result_folder(folder: Path) -> None:
    """Raise :class:`ResultFolderError` now if ``folder`` could not take a result (before any work is done)."""
    check_target(folder, replace=True, error=ResultFolderError)


def write_result_folder(folder: Path, files: Mapping[str, bytes], kind: str = "analysis") -> Path:
    """Write ``files`` (relative path -> bytes) as the folder ``folder``, atomically (see :mod:`deconvviz.io`).

    Raises:
        ResultFolderError: see :meth:`AnalysisResult.save`.
    """
    for name in files:
        relative = Path(name)
        if relative.is_absolute() or ".." in relative.parts or not relative.parts or relative.name == MARKER:
            raise ResultFolderError(f"result file name {name!r} is not a path inside the result folder")
    with stage_folders([folder], kind=kind, replace=True, error=ResultFolderError) as (staging,):
        for name, data in files.items():
            path = staging / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
    return folder


__all__ = [
    "AnalysisError",
    "AnalysisResult",
    "ResultFolderError",
    "check_result_folder",
    "figure_bytes",
    "is_result_folder",
    "text_table",
    "viz",
    "write_result_folder",
]
