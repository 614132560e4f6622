"""Wide grids wrapped into bands of rows, so a figure keeps its panels readable at a notebook's width.

A notebook shows a figure at most about 1000 pixels wide (10 inches at matplotlib's default 100 dpi) and
shrinks a wider one to fit, shrinking its text with it. A grid of ``rows x columns`` panels whose columns
would not fit is drawn as several bands, one under the other, each holding the same rows for the next
columns: the layout of a long text wrapped into lines.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from deconvviz.errors import RenderError

if TYPE_CHECKING:  # pragma: no cover
    from deconvviz.viz.canvas import Figure

WIDTH = 10.0
"""Inches a figure may take: a notebook's width (about 1000 pixels at 100 dpi)."""


def check_layout(columns: Any = None, size: Any = 1.0) -> None:
    """Refuse a figure's ``columns`` that is not a whole number of at least 1 (or None) and a ``size`` not above 0.

    Raises:
        RenderError: naming the option and what it takes.
    """
    if columns is not None and (isinstance(columns, bool) or not isinstance(columns, int) or columns < 1):
        raise RenderError(f"columns must be a whole number of at least 1 (or None for as many as fit), got {columns!r}")
    if isinstance(size, bool) or not isinstance(size, int | float) or not math.isfinite(size) or size <= 0:
        raise RenderError(f"size must be a number of inches above 0, got {size!r}")


def columns_that_fit(panel: float, margin: float, count: int, *, width: float = WIDTH) -> int:
    """Columns per band for ``count`` ``panel``-inch columns in ``width`` inches beside ``margin`` inches.

    As few bands as fit, with the columns shared evenly among them: 15 columns of which 7 fit give bands of
    5, 5 and 5 rather than 7, 7 and a last band of one.
    """
    most = max(1, min(count, math.floor((width - margin) / panel + 1e-9)))
    return math.ceil(count / bands_of(count, most)) if count > 0 else most


def wrapped_axes(fig: Figure, rows: int, columns: int, per_band: int, *, gap: float = 0.0, **kwargs: Any) -> np.ndarray:
    """Axes for a ``rows x columns`` grid drawn in bands of ``per_band`` columns; spare cells are hidden.

    Args:
        fig: the figure to draw into.
        rows: the grid's rows (repeated in every band).
        columns: the grid's columns.
        per_band: columns per band.
        gap: height of an empty row between bands, as a share of a panel's (room for the next band's titles).
        **kwargs: passed to :meth:`~matplotlib.figure.Figure.subplots`.

    Returns:
        A ``(rows, columns)`` array of axes, indexed as the unwrapped grid: column ``c`` lies in band
        ``c // per_band``.
    """
    bands = bands_of(columns, per_band)
    spacer = gap > 0 and bands > 1
    stride = rows + int(spacer)
    heights = ([1.0] * rows + [gap]) * (bands - 1) + [1.0] * rows if spacer else [1.0] * (rows * bands)
    gridspec = {**kwargs.pop("gridspec_kw", {}), "height_ratios": heights}
    physical = fig.subplots(len(heights), min(per_band, columns), squeeze=False, gridspec_kw=gridspec, **kwargs)
    logical = np.empty((rows, columns), dtype=object)
    for c in range(columns):
        band, column = divmod(c, per_band)
        for r in range(rows):
            logical[r, c] = physical[band * stride + r, column]
    used = {id(ax) for ax in logical.flat}
    for ax in physical.flat:
        if id(ax) not in used:
            ax.set_visible(False)
    return logical


def bands_of(columns: int, per_band: int) -> int:
    """How many bands ``columns`` take at ``per_band`` a band."""
    return math.ceil(columns / per_band)


def band_start(column: int, per_band: int) -> bool:
    """Whether ``column`` opens a band (it gets the row labels)."""
    return column % per_band == 0


__all__ = ["WIDTH", "band_start", "bands_of", "columns_that_fit", "wrapped_axes"]
