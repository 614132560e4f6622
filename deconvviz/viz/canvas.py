"""The figures deconvviz returns: matplotlib figures that show themselves as pictures in notebooks.

A figure made with ``matplotlib.figure.Figure`` (not through pyplot, so nothing is kept in pyplot's global list
and nothing is shown behind the caller's back) has no picture of its own in Jupyter unless the inline backend
was switched on (``%matplotlib inline``); it prints as ``<Figure size ... with N Axes>``. This subclass gives
it one: ``fig`` as the last line of a cell shows the figure.
"""

from __future__ import annotations

import io
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure as _Figure


class Figure(_Figure):
    """A matplotlib figure with a PNG representation for notebooks (``_repr_png_``), drawn by Agg.

    Agg is attached at once, whatever pyplot's backend, so that text can be measured (legends fitted) and the
    figure saved without a display.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        FigureCanvasAgg(self)

    def _repr_png_(self) -> bytes:
        buffer = io.BytesIO()
        self.savefig(buffer, format="png", dpi=100)
        return buffer.getvalue()
