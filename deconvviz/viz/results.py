"""Every result's picture, in one place: the one seam between results (data) and drawing.

Results do not draw: their ``figure()``, ``save()`` and notebook methods call :func:`deconvviz.analysis.base.viz`,
which imports this module, and nothing else of :mod:`deconvviz.viz`. :func:`figure_of` picks the drawing by
the result's ``kind``; the drawings themselves live in :mod:`deconvviz.viz.plots` (invariance, evolution,
sanity), :mod:`deconvviz.viz.part_plots` (occlusion, correspondence) and here (a top-k channel's grid).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from deconvviz.viz.figures import figure_png
from deconvviz.viz.html import activation_text, topk_overview
from deconvviz.viz.part_plots import correspondence_figure, occlusion_figure
from deconvviz.viz.pictures import input_to_pil
from deconvviz.viz.plots import (
    discrimination_curve_figure,
    discrimination_figure,
    evolution_figure,
    invariance_figure,
    sanity_figure,
)
from deconvviz.viz.scaling import to_rgb

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

    from deconvviz.analysis.topk.result import TopKResult


def topk_figure(
    result: TopKResult, layer: str, channel: int, *, scale: str | None = None, size: float = 1.3
) -> tuple[Figure, Any]:
    """The paper's layout for one channel of a top-k search: its reconstructions beside the image patches."""
    from deconvviz.viz.canvas import Figure

    hits = result.channel_hits(layer, channel)
    fired = [hit for hit in hits if hit.value > 0]  # a map of zeros has an argmax too: that is no hit
    side = result.grid_side
    rows = max(1, math.ceil(len(fired) / side))
    fig = Figure(figsize=(size * 2 * side + 0.3, (size + 0.18) * rows + 0.5))
    axes = fig.subplots(
        rows, 2 * side + 1, squeeze=False, gridspec_kw={"width_ratios": [1] * side + [0.15] + [1] * side}
    )
    for ax in axes.flat:
        ax.axis("off")
    for rank, hit in enumerate(fired):
        r, c = divmod(rank, side)
        axes[r, c].imshow(result.reconstruction_rgb(layer, channel, rank, scale))
        axes[r, c].set_title(f"a={activation_text(hit.value)}{' edge' if hit.edge else ''}", fontsize=6, pad=2)
        axes[r, side + 1 + c].imshow(result.patch_pil(layer, channel, rank))
        axes[r, side + 1 + c].set_title(_short_name(hit.image), fontsize=6, pad=2)
    images = len(result.images)
    if not fired:
        title = f"{layer} channel {channel} fires on none of the {images} images"
    elif len(fired) < len(hits):
        title = f"{layer} channel {channel}: top {len(fired)} of {images} images (it fires on no other)"
    else:
        title = f"{layer} channel {channel}: top {len(fired)} of {images} images"
    fig.suptitle(title, fontsize=9)
    fig.subplots_adjust(wspace=0.05, hspace=0.2, left=0.01, right=0.99, bottom=0.01, top=0.9)
    keep = [c for c in range(2 * side + 1) if c != side]
    return fig, axes[:, keep]


def _short_name(name: str, most: int = 18) -> str:
    """A picture's file name for a panel's label: the name without its folders, its middle cut when long."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    return base if len(base) <= most else base[: most // 2 - 1] + "..." + base[-(most // 2 - 2) :]


FIGURES: dict[str, Callable[..., tuple[Any, Any]]] = {
    "occlusion": occlusion_figure,
    "correspondence": correspondence_figure,
    "invariance": invariance_figure,
    "evolution": evolution_figure,
    "sanity": sanity_figure,
    "discrimination": discrimination_figure,
    "discrimination-curve": discrimination_curve_figure,
    "topk": topk_figure,
}
"""The drawing of each kind of result (``result.kind``)."""


def figure_of(result: Any, *args: Any, **kwargs: Any) -> tuple[Figure, Any]:
    """The figure of any result, by its ``kind`` (see :data:`FIGURES`); returned, never shown."""
    return FIGURES[result.kind](result, *args, **kwargs)


def png_of(fig: Figure, dpi: float = 100) -> bytes:
    """A figure as PNG bytes (figures here are not pyplot's, so there is nothing to close)."""
    return figure_png(fig, dpi)


__all__ = ["FIGURES", "figure_of", "figure_png", "input_to_pil", "png_of", "to_rgb", "topk_figure", "topk_overview"]
