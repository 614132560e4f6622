"""Figures of occlusion and correspondence results. Results call these from ``figure()``; they never show a figure."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib
import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

    from deconvviz.analysis.correspondence import CorrespondenceResult
    from deconvviz.analysis.occlusion import OcclusionResult

from deconvviz.viz.html import activation_text
from deconvviz.viz.wrap import WIDTH

_OTHER = (0.75, 0.75, 0.75, 1.0)


def _extent(result: OcclusionResult) -> tuple[float, float, float, float]:
    """Map cells span ``stride`` pixels each, starting at the image's top-left corner."""
    rows, cols = result.grid
    return (0.0, float(cols * result.stride), float(rows * result.stride), 0.0)


def _image_axes(ax: Any, result: OcclusionResult) -> None:
    height, width = result.picture.shape[:2]
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.set_xticks([])
    ax.set_yticks([])


def _colorbar(fig: Figure, ax: Any, image: Any) -> None:
    bar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.03)
    bar.ax.tick_params(labelsize=7)


def occlusion_figure(result: OcclusionResult, *, size: float = 2.6, legend: int = 8) -> tuple[Figure, Any]:
    """The image and the paper's four occlusion panels, in one row or, wider than a notebook, in two.

    One row where it fits :data:`~deconvviz.viz.wrap.WIDTH`; else the image, (a) and (b) above (c) and (d).

    (a) the strongest feature map's total activation per occluder position; (b) that map's strongest unit
    projected to pixels (its receptive field outlined, with the unit's box also drawn on the image);
    (c) the probability of the correct class per position; (d) the most probable class per position, with a
    legend of the classes it shows beside it, in a margin as wide as its longest label.
    Without a classifier, (c) and (d) are replaced by a note saying why. With other pictures
    (``result.others``), a band underneath shows the map's strongest units in them, each projection beside the
    patch it came from.

    Args:
        result: the occlusion result.
        size: inches per panel.
        legend: most classes named in (d)'s legend; the rest are grey.

    Returns:
        ``(figure, axes)``: the image's and the panels' axes, in order (the other pictures' axes are
        ``figure.axes`` after them).
    """
    from matplotlib.patches import Patch, Rectangle

    panels = 5 if result.has_classifier else 4
    shown = result.legend()[:legend]
    total = int(result.labels.numel()) if result.labels is not None else 1
    entries = [f"{_short(name)} ({_share(count, total)})" for _, name, count in shown]
    if len(result.legend()) > len(shown):
        entries.append("other classes")
    # (d)'s legend gets a right margin of its own: 7-pt text is about 0.055 inch a character, plus the swatch.
    key = (0.5 + 0.055 * max(len(e) for e in entries)) if entries else 0.0
    width = size * panels + 1.2 + key
    from deconvviz.viz.canvas import Figure

    one_row = width <= WIDTH
    if not one_row:  # two rows; (d)'s legend takes the cell after it
        width = size * 3 + 1.2 + max(0.0, key - size)
    cell = _others_cell(result, width, size)  # the band of other pictures, sized by the figure's own width
    band = 0.0 if result.others_folder is None else cell + 0.7
    if one_row:
        fig = Figure(figsize=(width, size * 1.45 + band))
        axes = fig.subplots(1, panels, squeeze=False)[0]
        edge = 1 - (key + 0.1) / width
    else:
        fig = Figure(figsize=(width, size * 2.6 + band))
        grid = fig.subplots(2, 3, squeeze=False)
        axes = np.array([*grid[0], *grid[1, : panels - 3]], dtype=object)
        for spare in grid[1, panels - 3 :]:
            spare.set_visible(False)
        edge = 1 - (max(0.0, key - size) + 0.1) / width
    extent = _extent(result)
    box = None
    if result.projection is not None and result.projection.boxes:
        box = result.projection.boxes[0]

    ax = axes[0]
    ax.imshow(result.picture)
    if box is not None:
        top, left, bottom, right = box
        ax.add_patch(Rectangle((left, top), right - left, bottom - top, fill=False, color="black", lw=1.5))
    ax.set_title("input image", fontsize=9)
    _image_axes(ax, result)

    ax = axes[1]
    im = ax.imshow(result.activation.numpy(), extent=extent, interpolation="nearest", cmap="viridis")
    _image_axes(ax, result)
    ax.set_title(f"(a) {result.layer} map {result.channel}:\ntotal activation", fontsize=9)
    _colorbar(fig, ax, im)

    ax = axes[2]
    if result.projection is not None:
        ax.imshow(result.projection.rgb(0))
        if box is not None:
            top, left, bottom, right = box
            ax.add_patch(Rectangle((left, top), right - left, bottom - top, fill=False, color="black", lw=1.5))
    _image_axes(ax, result)
    where = " inside" if result.projection is not None and result.projection.prefer_inside else ""  # field inside
    ax.set_title(f"(b) map {result.channel}'s strongest unit{where},\nprojected ({result.method})", fontsize=9)

    if result.has_classifier:
        assert result.probability is not None
        assert result.labels is not None
        ax = axes[3]
        im = ax.imshow(result.probability.numpy(), extent=extent, interpolation="nearest", cmap="magma", vmin=0)
        _image_axes(ax, result)
        ax.set_title(f"(c) p({_short(result.target_label)})", fontsize=9)
        _colorbar(fig, ax, im)

        ax = axes[4]
        palette = matplotlib.colormaps["tab10" if len(shown) <= 10 else "tab20"]
        colours = {cls: palette(i % palette.N) for i, (cls, _, _) in enumerate(shown)}
        labels = result.labels.numpy()
        rgba = np.zeros((*labels.shape, 4))
        for r in range(labels.shape[0]):
            for c in range(labels.shape[1]):
                rgba[r, c] = colours.get(int(labels[r, c]), _OTHER)
        ax.imshow(rgba, extent=extent, interpolation="nearest")
        _image_axes(ax, result)
        ax.set_title("(d) most probable class", fontsize=9)
        handles = [Patch(color=colours[cls], label=entry) for (cls, _, _), entry in zip(shown, entries, strict=False)]
        if len(entries) > len(shown):
            handles.append(Patch(color=_OTHER, label=entries[-1]))
        ax.legend(handles=handles, loc="center left", bbox_to_anchor=(1.03, 0.5), fontsize=7, frameon=False)
    else:
        ax = axes[3]
        ax.axis("off")
        ax.text(
            0.0,
            0.5,
            "(c), (d): no classifier\n\n" + _wrap(result.missing or "", 34),
            fontsize=8,
            va="center",
            ha="left",
            transform=ax.transAxes,
        )
    title = f"{result.model}: occluder {result.size} px, stride {result.stride}"
    if result.target_label is not None:
        title += f"; class {result.target} '{_short(result.target_label)}'"
    height = float(fig.get_size_inches()[1])
    fig.suptitle(title, fontsize=10, y=1 - 0.1 / height, va="top")
    fig.subplots_adjust(
        left=0.02, right=edge, top=1 - 0.75 / height, bottom=(band + 0.05) / height, wspace=0.3, hspace=0.3
    )
    if band:
        _draw_others(fig, result, cell)
    return fig, axes


_GAP = 0.3  # inches between two of the other pictures


def _others_cell(result: OcclusionResult, width: float, size: float) -> float:
    """The side, in inches, of each picture in the band of other pictures (0 without any)."""
    count = len(result.others)
    return min(size * 0.6, (width - 0.3 - _GAP * (count - 1)) / (2 * count)) if count else 0.0


def _draw_others(fig: Figure, result: OcclusionResult, cell: float) -> None:
    """The band of other pictures: per picture, the map's strongest unit there projected, beside its patch."""
    from deconvviz.viz.scaling import to_rgb

    width, height = (float(v) for v in fig.get_size_inches())
    channel_order = result.projection.channel_order if result.projection is not None else "RGB"
    count = len(result.others)
    folder = _short(Path(result.others_folder or "").name or result.others_folder, 24)
    title = (
        f"(b) map {result.channel} in other pictures: its {count} strongest units in the {result.others_scanned} "
        f"others of {folder}"
        if count
        else f"(b) map {result.channel} does not fire in the {result.others_scanned} other pictures of {folder}"
    )
    fig.text(0.15 / width, (cell + 0.5) / height, title, fontsize=9, va="bottom")
    for i, other in enumerate(result.others):
        left = 0.15 + i * (2 * cell + _GAP)
        for j, picture in enumerate((to_rgb(other.reconstruction, None, channel_order), other.patch)):
            ax = fig.add_axes(((left + j * (cell + 0.02)) / width, 0.35 / height, cell / width, cell / height))
            ax.imshow(picture)
            ax.set_anchor("E" if j == 0 else "W")  # a field cut by the border: the pair still meets in the middle
            ax.set_xticks([])
            ax.set_yticks([])
        caption = f"{_short(Path(other.image).name)}  a={activation_text(other.value)}"
        fig.text((left + cell) / width, 0.3 / height, caption, fontsize=7, ha="center", va="top")


def _share(count: int, total: int) -> str:
    """A share of the positions as a percentage that never rounds a few positions away ("<1%", ">99%")."""
    share = count / total
    if 0 < share < 0.005:
        return "<1%"
    if 0.995 <= share < 1:
        return ">99%"
    return f"{share:.0%}"


def _short(name: str | None, length: int = 28) -> str:
    name = name or ""
    return name if len(name) <= length else name[: length - 1] + "…"


def _wrap(text: str, width: int) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width))


def correspondence_figure(result: CorrespondenceResult, *, size: float = 1.0) -> tuple[Figure, Any]:
    """Mean Δ ± std per part and layer as grouped bars, with the random-box baseline hatched.

    Args:
        result: the correspondence result.
        size: scale of the figure.

    Returns:
        ``(figure, axes)``.
    """
    rows = result.rows  # the random baseline only when it was drawn (random=0 draws none)
    layers = list(result.layers)
    from deconvviz.viz.canvas import Figure

    # wider with each bar, up to a notebook's width
    fig = Figure(figsize=(min(WIDTH, size * (2.2 + 1.1 * len(layers) * len(rows) * 0.45)), size * 3.4))
    ax = fig.subplots()
    width = 0.8 / len(rows)
    palette = matplotlib.colormaps["tab10"]
    for i, part in enumerate(rows):
        means = [result.mean(part, layer) for layer in layers]
        # no error bar where one image pair gives the value: it has no spread to show
        stds = [
            result.std(part, layer) if result.distances[(part, layer)].numel() > 1 else float("nan") for layer in layers
        ]
        positions = np.arange(len(layers)) + (i - (len(rows) - 1) / 2) * width
        colour = (0.6, 0.6, 0.6, 1.0) if part == "random" else palette(i % 10)
        ax.bar(
            positions,
            means,
            width * 0.92,
            yerr=stds,
            capsize=3,
            color=colour,
            hatch="//" if part == "random" else None,
            edgecolor="white" if part != "random" else "black",
            label=part,
        )
    ax.set_xticks(np.arange(len(layers)), layers)
    ax.set_ylabel("Δ (mean Hamming distance of sign(ε))", fontsize=9)
    ax.set_title(
        f"{result.model}: correspondence over {len(result.images)} images (lower = parts matched)", fontsize=10
    )
    ax.legend(fontsize=8, frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    return fig, ax


__all__ = ["correspondence_figure", "occlusion_figure"]
