"""Figures of projections (built on :class:`matplotlib.figure.Figure`, returned, never shown).

Every figure, file and notebook picture of a projection is drawn from one :class:`RenderOptions` (scaling,
overlay, boxes, cropping), and every reconstruction shown goes through :func:`view`: the reconstruction at
the chosen scaling, laid over the photo if asked, and cut to its unit's receptive field when that field is
small (so a conv1 unit's 5x5 pixels are not one dot on a 224-pixel grey square).
"""

from __future__ import annotations

import dataclasses
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from deconvviz.errors import RenderError
from deconvviz.viz.html import activation_text
from deconvviz.viz.pictures import Box, crop, overlay
from deconvviz.viz.scaling import Scaling

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.text import Text

    from deconvviz.core.projection import Projection

AUTO_CROP_SHARE = 0.5
"""With ``crop=None`` a layer's reconstructions are cut to their units' receptive fields when those fields
cover less than this share of the picture."""

LABEL_KEY = "a: the seeded activation; unit (row, col): its place in the layer's feature map"


@dataclass(frozen=True)
class RenderOptions:
    """How projections are drawn: one object for every figure, file and notebook picture.

    Attributes:
        scale: the display scaling: ``"robust"`` (default), ``"max"`` (each picture by its largest value),
            ``"minmax"`` or a :class:`~deconvviz.viz.Scaling` (see :mod:`deconvviz.viz.scaling`).
        overlay: draw each reconstruction over a dimmed grey copy of the input.
        box: outline each seeded unit's receptive field on full-size views.
        crop: cut each reconstruction to its unit's receptive field and show the image patch that unit saw
            (the paper's Fig. 2): True always (when the field is known), False never, None (default) when the
            field covers less than half the picture.

    Example:
        >>> RenderOptions().scaling.name
        'robust'
        >>> RenderOptions.build(None, scale="max", crop=True).crop
        True
    """

    scale: str | Scaling = "robust"
    overlay: bool = False
    box: bool = False
    crop: bool | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "scale", Scaling.of(self.scale))

    @property
    def scaling(self) -> Scaling:
        """The display scaling as a :class:`~deconvviz.viz.Scaling`."""
        assert isinstance(self.scale, Scaling)
        return self.scale

    @classmethod
    def build(cls, options: RenderOptions | None = None, **changes: Any) -> RenderOptions:
        """``options`` (or the defaults) with some fields changed; unknown field names are an error.

        Raises:
            RenderError: a field that RenderOptions does not have.
        """
        base = options if options is not None else cls()
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(changes) - fields)
        if unknown:
            raise RenderError(f"unknown rendering option {unknown[0]!r}; the options are {', '.join(sorted(fields))}")
        return dataclasses.replace(base, **changes) if changes else base

    def to_dict(self) -> dict[str, Any]:
        """The options for a manifest (the scaling with its description)."""
        return {"scale": self.scaling.to_dict(), "overlay": self.overlay, "box": self.box, "crop": self.crop}


# ------------------------------------------------------------------------------------------------ views


def field_box(projection: Projection, i: int) -> Box | None:
    """Seed ``i``'s receptive field in the input (clipped), or None when unknown, whole-map or empty."""
    boxes = projection.boxes
    if boxes is None or i >= len(boxes) or boxes[i] is None:
        return None
    top, left, bottom, right = boxes[i]  # type: ignore[misc]
    return None if bottom <= top or right <= left else (top, left, bottom, right)


def _small_fields(projection: Projection) -> bool:
    """Whether the projection's fields are small: the largest covers less than :data:`AUTO_CROP_SHARE`."""
    height, width = (int(n) for n in projection.image.shape[-2:])
    areas = [(b[2] - b[0]) * (b[3] - b[1]) for b in (field_box(projection, i) for i in range(len(projection))) if b]
    return bool(areas) and max(areas) < AUTO_CROP_SHARE * height * width


def view_box(projection: Projection, i: int, options: RenderOptions) -> Box | None:
    """The box seed ``i`` is cut to under ``options`` (None: shown at full size).

    With ``options.crop`` None the choice is made per projection, so one layer's pictures are all cut or all
    whole: they are cut when even the largest of its seeds' (clipped) fields covers less than
    :data:`AUTO_CROP_SHARE` of the picture.
    """
    box = field_box(projection, i)
    if box is None or options.crop is False:
        return None
    if options.crop is None and not _small_fields(projection):
        return None
    return box


def base_picture(projection: Projection) -> np.ndarray | None:
    """The projected input as an ``(H, W, 3)`` uint8 array, or None when it was not kept."""
    picture = projection.input_pil()
    return None if picture is None else np.asarray(picture)


def view(projection: Projection, i: int, options: RenderOptions, base: np.ndarray | None = None) -> np.ndarray:
    """Reconstruction ``i`` as shown: scaled, over the photo if asked, cut to its field when that is small.

    Args:
        projection: the projection.
        i: which reconstruction.
        options: how to draw it.
        base: the input picture (:func:`base_picture`), needed for ``options.overlay``.

    Returns:
        ``(h, w, 3)`` uint8.
    """
    rgb = projection.rgb(i, options.scaling)
    if options.overlay and base is not None and base.shape == rgb.shape:
        rgb = overlay(rgb, base)
    return crop(rgb, view_box(projection, i, options))


def label(projection: Projection, i: int) -> str:
    """The title of reconstruction ``i``: channel, activation, and the seeded unit (row, col) if any.

    A unit whose receptive field reaches past the picture's edge (into the padding) is marked ``edge``.
    """
    if projection.label:
        return f"{projection.label}\nscore={float(projection.activations[i]):.3g}"
    text = f"ch {projection.channels[i]}  a={activation_text(float(projection.activations[i]))}"
    position = projection.positions[i] if i < len(projection.positions) else None
    if position is not None:
        text += f"\nunit ({position[0]}, {position[1]})"
        inside = projection.inside
        if inside is not None and i < len(inside) and inside[i] is False:
            text += " edge"
    return text


def _draw_box(ax: Axes, box: Box, color: str = "#ffcc00") -> None:
    from matplotlib.patches import Rectangle

    top, left, bottom, right = box
    # imshow puts pixel centres on integers, so the pixel edges sit half a unit outside.
    ax.add_patch(
        Rectangle((left - 0.5, top - 0.5), right - left, bottom - top, fill=False, edgecolor=color, linewidth=1.2)
    )


def _blank(ax: Axes) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def _mark_empty(ax: Axes, projection: Projection, i: int) -> None:
    """Say so on a panel whose reconstruction is all zero, so that it does not read as a picture of grey."""
    if bool(projection.image[i].any()):
        return
    if float(projection.activations[i]) == 0:
        text = "activation 0:\nnothing to project"
    else:
        text = f"no signal reaches\nthe input under {projection.method}"
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize=7, color="#333333")


def _show(ax: Axes, picture: np.ndarray) -> None:
    # enlarged, nearest: a cut-out of a few pixels stays a few sharp squares instead of a blur; shrunk, smoothed:
    # nearest would drop pixels, and a fine checkerboard would show as coarse blocks (aliasing)
    size = getattr(ax.figure, "get_size_inches", None)  # a subfigure has none: keep the sharp squares
    dpi = float(getattr(ax.figure, "dpi", 100.0))
    shown = ax.get_position().width * float(size()[0]) * dpi if size is not None else math.inf
    ax.imshow(picture, interpolation="antialiased" if picture.shape[1] > shown else "nearest")


def _caption(
    fig: Figure,
    projection: Projection | None,
    options: RenderOptions,
    *,
    key: bool = True,
    method: str | None = None,
    extra: str = "",
) -> Text:
    """The line under a figure: the reverse pass, what grey means, the scale.

    ``key``: explain the panels' labels (a, unit), for figures whose titles show them; ``extra``: a last clause.
    """
    method = method if method is not None else (projection.method if projection is not None else None)
    text = f"grey = 0; {options.scaling.name} scale"
    if method:
        text = f"{method} projection; {text}"
    if key and (projection is None or any(p is not None for p in projection.positions)):
        text = f"{LABEL_KEY}; {text}"
    if projection is not None and projection.prefer_inside:
        text += "; units chosen with their receptive field inside the picture"
    if extra:
        text += f"; {extra}"
    return fig.supxlabel(text, fontsize=7, color="#555555")


def _room(lines: int, points: float, pad: float = 0.0) -> float:
    """Inches of height for ``lines`` lines of ``points``-point text and ``pad`` points beside them."""
    return (lines * points * 1.2 + pad) / 72 if lines else 0.0


def _lines(text: str) -> int:
    return text.count("\n") + 1 if text else 0


def _panels(
    fig: Figure,
    rows: Sequence[tuple[float, float]],
    columns: int,
    *,
    title: Text | None,
    caption: Text | None,
    left: float = 0.0,
    gap: float = 0.08,
    side: float = 0.08,
) -> np.ndarray:
    """Axes for a grid of panels placed by hand, row by row from the top, below the title and above the caption.

    Figures of many panels are laid out here rather than by matplotlib's constrained layout, which would take as
    long as drawing them: every panel's size follows from the figure's and from the room its text takes.

    Args:
        fig: the figure.
        rows: per row, the room above its panels for their titles (inches) and the row's share of the height
            left to the panels.
        columns: panels per row.
        title: the figure's title, already set (it takes the room its lines need), or None.
        caption: the figure's caption, already set, or None.
        left: inches left of the first column (for row labels).
        gap: inches between panels.
        side: the margin at the left and the right.

    Returns:
        A ``(len(rows), columns)`` array of axes.
    """
    width, height = (float(v) for v in fig.get_size_inches())
    top = bottom = side
    if title is not None:  # a fixed margin above the title, whatever the figure's height
        title.set_y(1 - side / height)
        top += _room(_lines(title.get_text()), float(title.get_fontsize()), 6)
    if caption is not None:
        caption.set_y(side / 2 / height)
        bottom += _room(_lines(caption.get_text()), float(caption.get_fontsize()), 6)
    panel = max(0.05, (width - left - 2 * side - gap * (columns - 1)) / columns)
    free = height - top - bottom - sum(room for room, _ in rows) - gap * (len(rows) - 1)
    unit = max(0.05, free) / max(1e-9, sum(share for _, share in rows))
    axes = np.empty((len(rows), columns), dtype=object)
    y = height - top
    for r, (room, share) in enumerate(rows):
        y -= room + share * unit
        for c in range(columns):
            x = side + left + c * (panel + gap)
            axes[r, c] = fig.add_axes((x / width, y / height, panel / width, share * unit / height))
        y -= gap
    return axes


def projection_figure(
    projection: Projection,
    options: RenderOptions | None = None,
    *,
    columns: int = 5,
    size: float = 2.2,
    title: str | None = None,
    **changes: Any,
) -> tuple[Figure, Any]:
    """The input beside every reconstruction, each titled with its channel, activation and unit.

    Reconstructions whose view is cut to the receptive field (see :class:`RenderOptions`) get the image
    patch their unit saw below them, as in the paper's Fig. 2, and the input panel outlines those fields.

    Args:
        projection: what to draw.
        options: how to draw it (default :class:`RenderOptions`).
        columns: panels per row.
        size: panel size in inches.
        title: the figure's title; default: the layer (and its node name when it differs).
        **changes: fields of :class:`RenderOptions` to change (``scale=``, ``overlay=``, ``box=``, ``crop=``).

    Returns:
        ``(figure, axes)``, axes a 2-D array (with cut-out views, rows alternate reconstructions and patches);
        the figure is not shown.

    Raises:
        RenderError: a bad option.
    """
    from deconvviz.viz.canvas import Figure

    options = RenderOptions.build(options, **changes)
    if columns < 1:
        raise RenderError(f"columns must be at least 1, got {columns}")
    base = base_picture(projection)
    cut = [view_box(projection, i, options) for i in range(len(projection))]
    cropping = any(box is not None for box in cut)
    count = len(projection) + (1 if base is not None else 0)
    columns = max(1, min(columns, count))
    rows = -(-count // columns)
    per_cell = 2 if cropping else 1
    height = size * rows * per_cell * (0.8 if cropping else 1.0)
    fig = Figure(figsize=(size * columns, height + 0.6))
    if title is None:
        title = projection.layer if projection.layer == projection.node else f"{projection.layer} ({projection.node})"
        if projection.label:
            title = f"{projection.label} (class score, projected from {projection.node})"
        elif projection.mode == "map":
            title += ", whole feature maps"
    heading = fig.suptitle(title, fontsize=10)
    caption = _caption(fig, projection, options)
    labels = [label(projection, i) for i in range(len(projection))]
    lines = max([1 if base is not None else 0, *(_lines(text) for text in labels)])
    layout = [(_room(lines, 8, 8), 1.0), *([(0.0, 1.0)] if cropping else [])] * rows
    axes = _panels(fig, layout, columns, title=heading, caption=caption)
    for ax in axes.flat:
        ax.axis("off")
    cells = [(r * per_cell, c) for r in range(rows) for c in range(columns)]
    if base is not None:
        row, col = cells.pop(0)
        _show(axes[row, col], base)
        axes[row, col].set_title("input", fontsize=9)
        for box in cut:
            if box is not None:
                _draw_box(axes[row, col], box)
    for i, (row, col) in enumerate(cells[: len(projection)]):
        ax = axes[row, col]
        _show(ax, view(projection, i, options, base))
        _mark_empty(ax, projection, i)
        box = cut[i]
        if box is not None and base is not None:
            _show(axes[row + 1, col], crop(base, box))
        elif box is None and options.box:
            found = field_box(projection, i)
            if found is not None:
                _draw_box(ax, found)
        ax.set_title(labels[i], fontsize=8)
    return fig, axes


def layers_figure(
    projections: Sequence[Projection],
    options: RenderOptions | None = None,
    *,
    per_layer: int = 6,
    size: float = 1.8,
    title: str | None = None,
    **changes: Any,
) -> tuple[Figure, Any]:
    """One row per layer: the input, then that layer's first ``per_layer`` reconstructions (strongest first).

    A layer whose views are cut to receptive fields gets a second row with the image patches its units saw
    (the paper's Fig. 2 layout), and its input panel outlines the fields; whole-map or large-field layers get
    one row (the input is already in the first column).

    Args:
        projections: one projection per layer, of one picture, shallow to deep.
        options: how to draw them (default :class:`RenderOptions`).
        per_layer: reconstructions shown per row.
        size: panel size in inches.
        title: the figure's title.
        **changes: fields of :class:`RenderOptions` to change.

    Returns:
        ``(figure, axes)``, axes of shape ``(rows, per_layer + 1)``; the figure is not shown.

    Raises:
        RenderError: no projections, or a bad option.
    """
    from deconvviz.viz.canvas import Figure

    options = RenderOptions.build(options, **changes)
    if not projections:
        raise RenderError("layers_figure needs at least one projection")
    if per_layer < 1:
        raise RenderError(f"per_layer must be at least 1, got {per_layer}")
    columns = 1 + min(per_layer, max(len(p) for p in projections))
    cuts = [[view_box(p, i, options) for i in range(min(len(p), columns - 1))] for p in projections]
    doubled = [any(box is not None for box in cut) for cut in cuts]
    titled = _room(1, 7, 5)
    layout = [row for d in doubled for row in (((titled, 1.0), (0.0, 1.0)) if d else ((titled, 1.0),))]
    fig = Figure(figsize=(size * columns + 0.6, size * len(layout) * 0.95 + 0.6))
    heading = fig.suptitle(title, fontsize=11) if title is not None else None
    methods = {p.method for p in projections}
    most = max(len(p) for p in projections)
    # its panels are titled by channel and activation, whose key is a's alone
    caption = _caption(
        fig,
        None,
        options,
        key=False,
        method=methods.pop() if len(methods) == 1 else None,
        extra=(
            f"a: the seeded activation; the first {columns - 1} of up to {most} per layer"
            if most > columns - 1
            else "a: the seeded activation"
        ),
    )
    axes = _panels(fig, layout, columns, title=heading, caption=caption, left=_room(1, 10, 6))
    for ax in axes.flat:
        _blank(ax)
    row = 0
    for projection, cut, twice in zip(projections, cuts, doubled, strict=True):
        top = axes[row]
        below = axes[row + 1] if twice else None
        base = base_picture(projection)
        if base is not None:
            _show(top[0], base)
            for box in cut:
                if box is not None:
                    _draw_box(top[0], box)
        name = "class" if projection.label else projection.layer
        # a long node name shrinks to the row's height rather than run into the next row's
        room = top[0].get_position().height * float(fig.get_size_inches()[1]) * 72 * (2 if twice else 1)
        top[0].set_ylabel(name, fontsize=max(5.5, min(10.0, room / (0.62 * max(1, len(name))))))
        if twice:
            top[0].yaxis.set_label_coords(-0.08, 0.0)  # centred on the row and the patches below it
        if below is not None:
            below[0].axis("off")
        for i in range(columns - 1):
            if i >= len(cut):
                top[i + 1].axis("off")
                if below is not None:
                    below[i + 1].axis("off")
                continue
            _show(top[i + 1], view(projection, i, options, base))
            _mark_empty(top[i + 1], projection, i)
            heading = (
                projection.label or f"ch {projection.channels[i]} a={activation_text(float(projection.activations[i]))}"
            )
            top[i + 1].set_title(heading, fontsize=7, pad=2)
            if cut[i] is None and options.box:
                found = field_box(projection, i)
                if found is not None:
                    _draw_box(top[i + 1], found)
            if below is not None:
                if cut[i] is not None and base is not None:
                    _show(below[i + 1], crop(base, cut[i]))
                else:
                    below[i + 1].axis("off")
        row += 2 if twice else 1
    return fig, axes


SOFTWARE = "deconvviz"
"""The PNG ``Software`` text every figure carries: how a later run knows a file in its way is one of its own."""


def figure_png(fig: Figure, dpi: float = 100) -> bytes:
    """Encode a figure as PNG bytes (marked ``Software: deconvviz``)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, metadata={"Software": SOFTWARE})
    return buffer.getvalue()
