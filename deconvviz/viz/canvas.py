"""The figures deconvviz returns: matplotlib figures that show themselves as pictures in notebooks.

A figure made with ``matplotlib.figure.Figure`` (not through pyplot, so nothing is kept in pyplot's global list
and nothing is shown behind the caller's back) has no picture of its own in Jupyter unless the inline backend
was switched on (``%matplotlib inline``); it prints as ``<Figure size ... with N Axes>``. This subclass gives
it one: ``fig`` as the last line of a cell shows the figure.
"""

from __future__ import annotations

import io
import textwrap
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

    def draw(self, renderer: Any) -> Any:
        """Draw; a file name in a script the font lacks (Chinese, say) shows as boxes, without a warning per glyph."""
        import warnings

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"Glyph \d+ .*missing from font", category=UserWarning)
            return super().draw(renderer)

    def suptitle(self, t: str, **kwargs: Any) -> Any:
        """The figure's title, broken into lines that fit its width (a long title is not cut at the edges)."""
        return super().suptitle(self._fit(t, kwargs, "figure.titlesize"), **kwargs)

    def supxlabel(self, t: str, **kwargs: Any) -> Any:
        """The caption under the figure, broken into lines that fit its width."""
        return super().supxlabel(self._fit(t, kwargs, "figure.labelsize"), **kwargs)

    def _fit(self, text: str, kwargs: dict[str, Any], default: str) -> str:
        from matplotlib import rcParams
        from matplotlib.font_manager import FontProperties

        given = kwargs.get("fontsize", kwargs.get("size"))
        size = FontProperties(size=given if given is not None else rcParams[default]).get_size_in_points()  # type: ignore[index]
        # DejaVu Sans averages about 0.6 em per character; keep a margin at both edges
        per_line = max(16, int(0.94 * self.get_figwidth() * 72 / (0.6 * size)))
        return "\n".join(
            textwrap.fill(line, per_line, break_on_hyphens=False) or line for line in str(text).split("\n")
        )

    def _repr_png_(self) -> bytes:
        buffer = io.BytesIO()
        self.savefig(buffer, format="png", dpi=100)
        return buffer.getvalue()
