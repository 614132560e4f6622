"""Which class each picture is of: class folders, a data set's targets, a list in order, or a labels file.

What :func:`deconvviz.discrimination` trains on: each picture's class as a name. Classes come from the folder
each picture lies in (ImageNet's and ImageFolder's layout), from a ``torch.utils.data.Dataset``'s ``targets``
(and ``classes``), from ``labels=`` (one class per picture in order, or a mapping from a picture's name), or
from a file of ``picture,class`` lines (ImageNet's validation set).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from deconvviz.analysis.base import AnalysisError

if TYPE_CHECKING:  # pragma: no cover
    from deconvviz.io.sources import ImageSource


class LabelError(AnalysisError):
    """Pictures whose classes cannot be told, or too few pictures per class to train and test."""


Labels = Sequence[Any] | Mapping[str, Any] | str | os.PathLike[str]
"""What ``labels=`` takes: one class per picture in order, picture name -> class, or a labels file."""


def labels_of(source: ImageSource, data: Any, labels: Labels | None) -> list[str]:
    """Each picture's class: as given, a data set's targets, or the name of the folder the picture lies in.

    Args:
        source: the pictures.
        data: what they came from (a data set's ``targets`` and ``classes`` are read).
        labels: one class per picture, in the pictures' order; a mapping from a picture's name (its path
            relative to the folder, or its file name) to its class; or a labels file of such pairs
            (:func:`read_labels`). None: the data set's targets, or the folder each picture lies in.

    Raises:
        LabelError: labels of the wrong length, a picture without a class, or a picture in no class folder.
    """
    if isinstance(labels, str | os.PathLike):
        labels = read_labels(labels)
    if isinstance(labels, Mapping):
        return _looked_up(source, labels)
    if labels is not None:
        if len(labels) != len(source):
            raise LabelError(f"{len(labels)} labels for {len(source)} pictures; give one label per picture")
        return [str(label) for label in labels]
    if source.paths is None:  # a data set: its targets
        targets = getattr(data, "targets", None)
        if targets is None:
            items = (data[i] for i in range(len(source)))
            targets = [item[1] if isinstance(item, tuple | list) and len(item) > 1 else None for item in items]
        if any(t is None for t in targets):
            raise LabelError(
                "the data set's items carry no class: give (image, target) items, a .targets list, or labels="
            )
        names = getattr(data, "classes", None)
        return [str(names[int(t)]) if names is not None else str(int(t)) for t in targets]
    if not Path(source.description).is_dir():  # a list of paths: the folder each picture lies in
        return [path.parent.name for path in source.paths]
    found = []
    for name in source.names:
        parts = PurePosixPath(name).parts
        if len(parts) < 2:
            raise LabelError(
                f"picture {name!r} lies at the top of {source.description!r}, in no class: put each class's "
                "pictures in a folder named after the class, or name each picture's class in a --labels file"
            )
        found.append(parts[0])
    return found


def read_labels(path: str | os.PathLike[str]) -> dict[str, str]:
    """A labels file: one picture and its class a line, separated by a comma or a tab (CSV quoting allowed).

    The picture is named by its path relative to the folder (as the folder lists it) or by its file name;
    blank lines and lines starting with ``#`` are skipped. A header such as ``picture,class`` names no picture
    and so does no harm.

    Raises:
        LabelError: the file cannot be read, or a line is not two fields.
    """
    where = os.fspath(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LabelError(f"labels file {where!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise LabelError(f"cannot read labels file {where!r} ({exc}); give a UTF-8 text file") from None
    lines = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    delimiter = "\t" if lines and "\t" in lines[0] else ","
    found: dict[str, str] = {}
    for number, row in enumerate(csv.reader(lines, delimiter=delimiter), start=1):
        cells = [cell.strip() for cell in row]
        if len(cells) != 2 or not all(cells):
            raise LabelError(
                f"labels file {where!r}, line {number}: expected 'picture,class', got {delimiter.join(row)!r}"
            )
        found[cells[0]] = cells[1]
    if not found:
        raise LabelError(f"labels file {where!r} names no pictures; write one 'picture,class' a line")
    return found


def _looked_up(source: ImageSource, labels: Mapping[str, Any]) -> list[str]:
    """Each picture's class from ``labels``, by its name, else by its file name."""
    found = []
    for name in source.names:
        label = labels.get(name, labels.get(PurePosixPath(name).name))
        if label is None:
            raise LabelError(f"no class for picture {name!r} in the labels; add a line '{name},CLASS'")
        found.append(str(label))
    return found


__all__ = ["LabelError", "Labels", "labels_of", "read_labels"]
