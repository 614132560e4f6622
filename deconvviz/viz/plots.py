"""Figures of the analyses' results: built on :class:`matplotlib.figure.Figure`, returned, never shown.

Each function takes a result and returns ``(figure, axes)``; results import this module only when their
``figure()`` is called, so a result never needs matplotlib until it is drawn.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from deconvviz.viz.wrap import WIDTH, band_start, bands_of, check_layout, columns_that_fit, wrapped_axes

if TYPE_CHECKING:  # pragma: no cover
    from deconvviz.analysis.discrimination import DiscriminationCurve, DiscriminationResult
    from deconvviz.analysis.evolution import EvolutionResult
    from deconvviz.analysis.invariance import InvarianceResult
    from deconvviz.analysis.sanity import SanityResult
    from deconvviz.viz.canvas import Figure


UNITS = {"translate": "vertical translation (pixels)", "scale": "scale", "rotate": "rotation (degrees)"}
"""The horizontal axis of each transformation's plots."""


def _strip(pictures: tuple[np.ndarray, ...], gap: int = 2) -> np.ndarray:
    """Pictures side by side on white."""
    height = max(p.shape[0] for p in pictures)
    width = sum(p.shape[1] for p in pictures) + gap * (len(pictures) - 1)
    out = np.full((height, width, 3), 255, np.uint8)
    left = 0
    for p in pictures:
        out[: p.shape[0], left : left + p.shape[1]] = p
        left += p.shape[1] + gap
    return out


def invariance_figure(result: InvarianceResult, *, size: float | None = None) -> tuple[Figure, Any]:
    """Rows = transformations; columns = the first image transformed, distance per layer, class probability.

    Args:
        result: the invariance result.
        size: inches per plot; default: what fits a notebook's width (:data:`~deconvviz.viz.wrap.WIDTH`), between
            1.8 and 2.6 inches.

    Returns:
        ``(figure, axes)``: axes indexed ``[transformation, column]``.
    """
    from deconvviz.viz.canvas import Figure

    with_examples = bool(result.examples)
    columns = int(with_examples) + len(result.layers) + int(result.probabilities is not None)
    rows = len(result.transforms)
    widths = ([1.3] if with_examples else []) + [1.0] * (columns - int(with_examples))
    if size is None:
        size = min(2.6, max(1.8, (WIDTH - 0.6) / sum(widths)))
    across = min(3, len(result.images))
    key = 0.22 * -(-len(result.images) // across) + 0.1  # the legend's inches, below the plots
    height = size * 0.8 * rows + 0.9 + key
    fig = Figure(figsize=(size * sum(widths) + 0.6, height))
    axes = fig.subplots(rows, columns, squeeze=False, gridspec_kw={"width_ratios": widths})
    colours = [f"C{i}" for i in range(len(result.images))]
    for r, name in enumerate(result.transforms):
        x = np.asarray(result.values[name])
        c = 0
        if with_examples:
            ax = axes[r, 0]
            pictures = result.examples.get(name, ())
            if pictures:
                ax.imshow(_strip(pictures) if len(pictures) < 4 else _grid(pictures))
            ax.set_axis_off()
            ax.set_title(f"{result.images[0]}: {name}", fontsize=8)
            c = 1
        for layer in result.layers:
            ax = axes[r, c]
            table = result.distances[name][layer].numpy()
            for i, image in enumerate(result.images):
                ax.plot(x, table[i], color=colours[i], marker=".", markersize=3, linewidth=1, label=image)
            ax.set_title(f"{layer}: distance", fontsize=8)
            ax.set_ylim(bottom=0)
            c += 1
        if result.probabilities is not None:
            ax = axes[r, c]
            table = result.probabilities[name].numpy()
            for i, image in enumerate(result.images):
                label = image if result.classes is None else f"{image} ({result.classes[i][1]})"
                ax.plot(x, table[i], color=colours[i], marker=".", markersize=3, linewidth=1, label=label)
            ax.set_ylim(0, 1.02)
            ax.set_title("P(true class)", fontsize=8)
        for ax in axes[r, int(with_examples) :]:
            ax.set_xlabel(UNITS.get(name, name), fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
    handles, labels = axes[0, -1].get_legend_handles_labels()  # below the plots, where it hides no curve
    fig.legend(handles, labels, loc="lower center", ncol=across, fontsize=7, frameon=False)
    distance = {"unit": "between unit-length feature vectors", "relative": "relative to the original's length"}
    fig.suptitle(
        f"{result.model}: invariance (Euclidean distance {distance.get(result.normalize, 'unnormalised')})",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, key / height, 1, 0.97))
    return fig, axes


def _grid(pictures: tuple[np.ndarray, ...]) -> np.ndarray:
    from deconvviz.viz.render import mosaic

    same = all(p.shape == pictures[0].shape for p in pictures)
    if not same:
        return _strip(pictures)
    return mosaic(list(pictures), columns=math.ceil(len(pictures) / 2))


def evolution_figure(
    result: EvolutionResult, *, size: float = 1.1, scale: str | None = None, columns: int | None = None
) -> tuple[Figure, Any]:
    """Rows = channels, columns = checkpoints; each cell the strongest activation's reconstruction(s).

    Many checkpoints wrap into bands of rows, so the figure stays within a notebook's width
    (:data:`~deconvviz.viz.wrap.WIDTH`) with ``size``-inch cells.

    Args:
        result: the evolution result.
        size: inches per picture.
        scale: how reconstructions are scaled for display (see :func:`~deconvviz.viz.scaling.to_rgb`).
        columns: checkpoints per band; default: as many as fit the width.

    Returns:
        ``(figure, axes)``: axes indexed ``[channel row, checkpoint]`` whatever the wrapping.
    """
    from deconvviz.viz.canvas import Figure
    from deconvviz.viz.scaling import to_rgb

    check_layout(columns, size)
    rows, count = len(result.channels), len(result.checkpoints)
    cell = size * max(1, min(result.k, 3))
    margin = 0.9
    per = columns_that_fit(cell, margin, count) if columns is None else max(1, min(columns, count))
    bands = bands_of(count, per)
    gap = 0.3 / size  # room for the next band's checkpoint names
    height = size * (rows * bands + gap * (bands - 1)) + 0.7
    width = cell * per + margin
    fig = Figure(figsize=(width, height))
    axes = wrapped_axes(fig, rows, count, per, gap=gap)
    for c, name in enumerate(result.checkpoints):
        for r, channel in enumerate(result.channels):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            hits = result.hits[name][channel]
            if hits:
                pictures = [to_rgb(h.reconstruction, scale) for h in hits]
                ax.imshow(_strip(tuple(_pad(pictures))))
            if r == 0:
                ax.set_title(name, fontsize=7)
            if band_start(c, per):
                ax.set_ylabel(f"ch {channel}", fontsize=7)
    _frame(fig, f"{result.model}: {result.layer}, strongest activation per checkpoint", (width, height), 0.08, 0.6, 0.1)
    return fig, axes


def _frame(fig: Any, title: str, inches: tuple[float, float], hspace: float, top: float, bottom: float) -> None:
    """A grid of pictures' title and margins: ``top`` and ``bottom`` in inches of a figure of ``inches``."""
    width, height = inches
    text = fig.suptitle(title, fontsize=9, va="top")
    extra = 0.16 * text.get_text().count("\n")  # a title broken into lines on a narrow figure: room for them
    if extra:
        height += extra
        top += extra
        fig.set_figheight(height)
    text.set_y(1 - 0.15 / height)
    fig.subplots_adjust(
        wspace=0.05,
        hspace=hspace,
        left=0.5 / width,
        right=1 - 0.1 / width,
        bottom=bottom / height,
        top=1 - top / height,
    )


def _pad(pictures: list[np.ndarray]) -> list[np.ndarray]:
    """Pad pictures (crops clipped at the image border differ in size) to one size, on grey."""
    height = max(p.shape[0] for p in pictures)
    width = max(p.shape[1] for p in pictures)
    out = []
    for p in pictures:
        canvas = np.full((height, width, 3), 128, np.uint8)
        canvas[: p.shape[0], : p.shape[1]] = p
        out.append(canvas)
    return out


def sanity_figure(
    result: SanityResult, *, size: float = 1.3, scale: str | None = None, columns: int | None = None
) -> tuple[Figure, Any]:
    """Rows = reverse passes; columns = the input, then the reconstruction after each randomisation step.

    Many steps wrap into bands of rows (each band: every reverse pass, for the next steps), so the figure stays
    within a notebook's width (:data:`~deconvviz.viz.wrap.WIDTH`) with ``size``-inch panels.

    Args:
        result: the sanity result.
        size: inches per panel.
        scale: how reconstructions are scaled for display (see :func:`~deconvviz.viz.scaling.to_rgb`).
        columns: panels per band, the input included; default: as many as fit the width.

    Returns:
        ``(figure, axes)``: axes indexed ``[method row, column]`` (column 0 the input, ``s + 1`` step ``s``)
        whatever the wrapping.
    """
    from matplotlib.patches import Rectangle

    from deconvviz.viz.canvas import Figure
    from deconvviz.viz.scaling import to_rgb

    check_layout(columns, size)
    rows, steps = len(result.methods), len(result.steps)
    count = steps + 1
    margin = 0.6
    per = columns_that_fit(size, margin, count) if columns is None else max(1, min(columns, count))
    bands = bands_of(count, per)
    hspace = 0.4  # room under a panel for its scores, and above the next band's for its step names
    height = size * (1 + hspace) * rows * bands + 0.8
    width = size * per + margin
    fig = Figure(figsize=(width, height))
    axes = wrapped_axes(fig, rows, count, per)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    for r, method in enumerate(result.methods):
        correlation = result.channel_correlation.get(method)
        label = f"{method}" + ("" if correlation is None else f"\nchannels r={correlation:.2f}")
        ax = axes[r, 0]
        if result.input is not None:
            ax.imshow(result.input)
            if result.box is not None:  # the part every other panel shows
                top, left, bottom, right = result.box
                ax.add_patch(
                    Rectangle(
                        (left - 0.5, top - 0.5), right - left, bottom - top, fill=False, edgecolor="#ffcc00", lw=1.2
                    )
                )
        if r == 0:
            ax.set_title("input", fontsize=7)
        for s, step in enumerate(result.steps):
            ax = axes[r, s + 1]
            image = result.reconstructions[method][s]
            if result.box is not None:
                top, left, bottom, right = result.box
                image = image[..., top:bottom, left:right]
            if float(image.abs().max()) > 0:
                ax.imshow(to_rgb(image, scale, result.channel_order))
            else:
                ax.imshow(np.full((*image.shape[-2:], 3), 128, np.uint8))
            rho = float(result.spearman[method][s])
            ssim = float(result.ssim[method][s])
            signs = f" signed {float(result.signed[method][s]):.2f}" if method in result.signed else ""
            text = "blank (no signal)" if math.isnan(rho) else f"rank r={rho:.2f}{signs}\nSSIM={ssim:.2f}"
            ax.set_xlabel(text, fontsize=6.5)
            if r == 0:
                ax.set_title(step, fontsize=7)
        for c in range(count):
            if band_start(c, per):
                axes[r, c].set_ylabel(label, fontsize=7)
    kind = (
        "independent randomisation (one layer at a time)"
        if result.mode == "independent"
        else "cascading randomisation (top layer first)"
    )
    title = f"{result.model}: {result.layer} ch {result.channel}, {kind}"
    height += 0.2  # the last row's two lines of scores, under panels that a tall crop makes taller than wide
    fig.set_figheight(height)
    _frame(fig, title, (width, height), hspace, 0.7, 0.45)
    return fig, axes


def discrimination_figure(result: DiscriminationResult, *, size: float | None = None) -> tuple[Figure, Any]:
    """Held-out accuracy per layer (the paper's Table 7 as a curve), and each class's beside it.

    Left: the score per layer, mean ± std over the splits, against chance. Right, for up to
    :data:`CLASSES_SHOWN` classes: each class's accuracy per layer (averaged over the splits) as a grid of
    cells, which shows the classes that need depth and those any layer tells apart.

    Args:
        result: the discrimination result.
        size: the plots' height in inches; default 3.2, or taller for many classes (the width follows the
            number of layers, up to :data:`~deconvviz.viz.wrap.WIDTH`).

    Returns:
        ``(figure, axes)``: the curve's axis, and the classes' axis (None when there are too many classes).
    """
    from deconvviz.viz.canvas import Figure

    count = len(result.classes)
    per_class = count <= CLASSES_SHOWN
    height = size if size is not None else max(3.2, 0.9 + 0.17 * count) if per_class else 3.2
    curve = min(WIDTH, max(4.5, 1.1 + 0.75 * len(result.layers)))
    grid = 1.3 + 0.42 * len(result.layers) if per_class else 0.0
    fig = Figure(figsize=(min(WIDTH, curve + grid), height))
    axes = fig.subplots(1, 2, gridspec_kw={"width_ratios": [curve, grid]}) if per_class else [fig.subplots()]
    ax = axes[0]
    x = np.arange(len(result.layers))
    means = np.array([100 * result.mean(layer) for layer in result.layers])
    stds = np.array([100 * result.std(layer) for layer in result.layers]) if result.splits > 1 else None
    name = "softmax" if result.linear == "softmax" else "linear SVM"
    ax.errorbar(x, means, yerr=stds, color="C0", marker="o", markersize=4, capsize=3, linewidth=1.2, label=name)
    ax.axhline(100 * result.chance, color="0.45", linestyle="--", linewidth=1, label="chance")
    for i, value in enumerate(means):  # beside the point, clear of its error bar
        ax.annotate(f"{value:.0f}", (x[i], value), textcoords="offset points", xytext=(5, 3), ha="left", fontsize=7)
    ax.set_xticks(x, result.layers, fontsize=7, rotation=30 if len(result.layers) > 6 else 0)
    ax.set_ylim(0, 110)  # room above 100 for the values' labels
    ax.set_yticks(range(0, 101, 20))
    ax.set_ylabel("held-out accuracy (%)", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(f"mean over the {count} classes", fontsize=8)
    classes_axis = None
    if per_class:
        classes_axis = axes[1]
        table = np.array(
            [[100 * float(result.accuracies[layer][:, c].mean()) for layer in result.layers] for c in range(count)]
        )
        classes_axis.imshow(table, cmap="viridis", vmin=0, vmax=100, aspect="auto", interpolation="nearest")
        if count <= 15:
            for (r, c), value in np.ndenumerate(table):
                colour = "black" if value > 60 else "white"
                classes_axis.text(c, r, f"{value:.0f}", ha="center", va="center", fontsize=6.5, color=colour)
        classes_axis.set_xticks(x, result.layers, fontsize=7, rotation=90)
        classes_axis.set_yticks(np.arange(count), [_shortened(n) for n in result.classes], fontsize=7)
        classes_axis.set_title("each class (%)", fontsize=8)
    fig.suptitle(
        f"{result.model}: a {name} on each layer's features, {result.setting}, "
        f"{result.splits} split{'s' if result.splits != 1 else ''}",
        fontsize=9,
    )
    fig.tight_layout()
    return fig, (ax, classes_axis)


def discrimination_curve_figure(result: DiscriminationCurve, *, size: float | None = None) -> tuple[Figure, Any]:
    """Held-out accuracy against the training pictures per class, one line per layer (the paper's Fig. 9).

    Each point is the score (the mean over classes of each class's accuracy), mean ± std over the splits; the
    dashed line is chance. The horizontal axis is logarithmic when the sizes span more than ten times.

    Args:
        result: the curve.
        size: the plot's height in inches (default 3.6).

    Returns:
        ``(figure, axis)``; one line per layer, labelled with the layer.
    """
    from matplotlib import colormaps

    from deconvviz.viz.canvas import Figure

    height = size if size is not None else 3.6
    fig = Figure(figsize=(min(WIDTH, height * 1.5 + 1.6), height))
    ax = fig.subplots()
    sizes = np.array(result.sizes, dtype=float)
    colours = colormaps["viridis"](np.linspace(0.0, 0.85, len(result.layers)))
    for layer, colour in zip(result.layers, colours, strict=True):
        means = np.array([100 * r.mean(layer) for r in result.results])
        stds = np.array([100 * r.std(layer) for r in result.results]) if result.first.splits > 1 else None
        ax.errorbar(sizes, means, yerr=stds, color=colour, marker="o", markersize=3.5, capsize=2.5, label=layer)
    ax.axhline(100 * result.chance, color="0.45", linestyle="--", linewidth=1, label="chance")
    if len(sizes) > 1 and sizes[-1] > 10 * sizes[0]:
        ax.set_xscale("log")
    ax.set_xticks(sizes, [str(n) for n in result.sizes], fontsize=7)
    ax.minorticks_off()
    ax.set_ylim(0, 102)
    ax.set_yticks(range(0, 101, 20))
    ax.set_xlabel("training pictures per class", fontsize=8)
    ax.set_ylabel("held-out accuracy (%)", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    order = [labels.index(name) for name in [*result.layers, "chance"]]  # shallow to deep, then chance
    ax.legend(
        [handles[i] for i in order],
        [labels[i] for i in order],
        fontsize=7,
        loc="center left",
        bbox_to_anchor=(1.01, 0.5),
        frameon=False,
    )
    first = result.first
    name = "softmax" if first.linear == "softmax" else "linear SVM"
    fig.suptitle(
        f"{first.model}: a {name} on each layer's features, {result.setting}, "
        f"{first.splits} split{'s' if first.splits != 1 else ''}",
        fontsize=9,
    )
    fig.tight_layout()
    return fig, ax


CLASSES_SHOWN = 40
"""The most classes whose accuracies the discrimination figure shows one by one."""


def _shortened(name: str, most: int = 18) -> str:
    return name if len(name) <= most else name[: most - 1] + "…"
