"""Turn reconstructions into pictures: RGB arrays, PIL images and matplotlib figures (returned, never shown).

Reconstructions live in the model's input space: signed values around zero, in the model's own colour
order. :func:`to_rgb` makes them displayable the way the paper does (per-image contrast normalisation:
centre on grey, scale by the largest magnitude, clip) or with a plain min-max stretch, and puts the
channels in red-green-blue order. Figures are built on :class:`matplotlib.figure.Figure` directly, so no
GUI backend is touched and nothing is ever shown.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import Tensor

from deconvviz.errors import DeconvVizError

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from PIL.Image import Image

    from deconvviz.projection import Projection

Normalize = Literal["contrast", "minmax"]
Box = tuple[int, int, int, int]
"""A pixel box ``(top, left, bottom, right)``, bottom and right exclusive."""

_NORMALIZE = ("contrast", "minmax")


class RenderError(DeconvVizError, ValueError):
    """A rendering option that does not fit the projection (bad normalisation, index, colour order)."""


def _check_normalize(normalize: str) -> None:
    if normalize not in _NORMALIZE:
        raise RenderError(f"normalize must be 'contrast' or 'minmax', got {normalize!r}")


def _rgb_first(x: Tensor, channel_order: str) -> Tensor:
    """Reorder a ``(3, H, W)`` tensor from the model's colour order to red-green-blue."""
    order = channel_order.upper()
    if sorted(order) != ["B", "G", "R"]:
        raise RenderError(f"channel_order must be a permutation of 'RGB' such as 'RGB' or 'BGR', got {channel_order!r}")
    if order == "RGB":
        return x
    return x[[order.index(c) for c in "RGB"]]


def to_rgb(image: Tensor, normalize: Normalize = "contrast", channel_order: str = "RGB") -> np.ndarray:
    """Make a reconstruction displayable.

    ``"contrast"`` is the paper's per-image contrast normalisation: centre on grey, scale so the largest
    magnitude (over all channels) reaches black or white, clip. Zero stays mid-grey, so what the unit
    did not see is grey. ``"minmax"`` stretches the values linearly to 0..255 instead.

    Args:
        image: ``(C, H, W)`` reconstruction (1 or 3 channels; other counts show their mean).
        normalize: ``"contrast"`` or ``"minmax"``.
        channel_order: the model's colour order (``"RGB"`` or ``"BGR"``); the result is always RGB.

    Returns:
        ``(H, W, 3)`` uint8 array.

    Raises:
        RenderError: a bad ``normalize`` or ``channel_order``, or not a single image.

    Example:
        >>> to_rgb(torch.zeros(3, 2, 2))[0, 0].tolist()
        [128, 128, 128]
    """
    _check_normalize(normalize)
    if not isinstance(image, Tensor) or image.dim() != 3:
        shape = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
        raise RenderError(f"expected one image (C, H, W), got {shape}")
    x = image.detach().to("cpu", torch.float64)
    if x.shape[0] == 3:
        x = _rgb_first(x, channel_order)
    elif x.shape[0] != 1:
        x = x.mean(dim=0, keepdim=True)
    x = torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
    if normalize == "contrast":
        scale = float(x.abs().max())
        out = 0.5 + 0.5 * x / scale if scale > 0 else torch.full_like(x, 0.5)
    else:
        lo, hi = float(x.min()), float(x.max())
        out = (x - lo) / (hi - lo) if hi > lo else torch.full_like(x, 0.5)
    out = out.clamp(0, 1)
    if out.shape[0] == 1:
        out = out.expand(3, -1, -1)
    return (out.permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)


def input_to_pil(x: Tensor, to_image: Callable[[Tensor], Any] | None = None, channel_order: str = "RGB") -> Image:
    """The input image for display: through the model's inverse preprocessing if known, else min-max.

    Args:
        x: ``(1, C, H, W)`` or ``(C, H, W)`` in the model's input space.
        to_image: the model's inverse preprocessing (input space -> RGB PIL image), if known.
        channel_order: the model's colour order, used when ``to_image`` is not known.

    Returns:
        An RGB PIL image of the input's height and width.
    """
    from PIL import Image as PILImage

    if to_image is not None:
        picture = to_image(x)
        if isinstance(picture, PILImage.Image):
            return picture.convert("RGB")
        return PILImage.fromarray(np.asarray(picture, dtype=np.uint8)).convert("RGB")
    return PILImage.fromarray(to_rgb(x[0] if x.dim() == 4 else x, "minmax", channel_order))


def overlay(reconstruction: np.ndarray, picture: np.ndarray, strength: float = 1.0) -> np.ndarray:
    """Lay a displayable reconstruction over the input picture.

    Where the reconstruction departs from grey it is shown; elsewhere a dimmed grey copy of the input shows
    through, so the structure the unit responded to appears in place on the photo.

    Args:
        reconstruction: ``(H, W, 3)`` uint8 from :func:`to_rgb`.
        picture: ``(H, W, 3)`` uint8 input picture of the same size.
        strength: how strongly the reconstruction covers the picture (0 shows only the picture).

    Returns:
        ``(H, W, 3)`` uint8 array.

    Raises:
        RenderError: the two pictures differ in size.
    """
    if reconstruction.shape != picture.shape:
        raise RenderError(
            f"cannot overlay a reconstruction of shape {reconstruction.shape} on a picture of shape {picture.shape}"
        )
    rec = reconstruction.astype(np.float64) / 255.0
    pic = picture.astype(np.float64) / 255.0
    grey = pic.mean(axis=2, keepdims=True) * 0.6 + 0.2  # dimmed, so colour in the result comes from the unit
    # departure from grey (128, the value of zero) in 8-bit steps, so exact grey has no weight
    weight = np.abs(reconstruction.astype(np.float64) - 128.0).max(axis=2, keepdims=True) / 127.0
    peak = float(weight.max())
    weight = np.sqrt(weight / peak) if peak > 0 else weight
    weight = np.clip(weight * max(0.0, strength), 0.0, 1.0)
    out = grey * (1.0 - weight) + rec * weight
    return (np.clip(out, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _draw_box(ax: Axes, box: Box, color: str = "#ffcc00") -> None:
    from matplotlib.patches import Rectangle

    top, left, bottom, right = box
    # imshow puts pixel centres on integers, so the pixel edges sit half a unit outside.
    ax.add_patch(
        Rectangle((left - 0.5, top - 0.5), right - left, bottom - top, fill=False, edgecolor=color, linewidth=1.2)
    )


def _label(projection: Projection, i: int) -> str:
    text = f"ch {projection.channels[i]}  a={float(projection.activations[i]):.3g}"
    position = projection.positions[i] if i < len(projection.positions) else None
    if position is not None:
        text += f"\n@({position[0]}, {position[1]})"
    return text


def _box(projection: Projection, i: int) -> Box | None:
    boxes = projection.boxes
    if boxes is None or i >= len(boxes) or boxes[i] is None:
        return None
    top, left, bottom, right = boxes[i]  # type: ignore[misc]
    return None if bottom <= top or right <= left else (top, left, bottom, right)


def crop(picture: np.ndarray, box: Box | None) -> np.ndarray:
    """The part of an ``(H, W, ...)`` picture inside ``box`` (the whole picture when ``box`` is None)."""
    if box is None:
        return picture
    top, left, bottom, right = box
    return picture[max(top, 0) : max(bottom, 0), max(left, 0) : max(right, 0)]


def _panel(projection: Projection, i: int, normalize: Normalize, base: np.ndarray | None, overlay_input: bool) -> Any:
    rgb = projection.rgb(i, normalize)
    if overlay_input and base is not None and base.shape == rgb.shape:
        rgb = overlay(rgb, base)
    return rgb


def _blank(ax: Axes) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def projection_figure(
    projection: Projection,
    *,
    normalize: Normalize = "contrast",
    columns: int = 5,
    size: float = 2.2,
    overlay_input: bool = False,
    box: bool = False,
    crop_to_field: bool = False,
    title: str | None = None,
) -> tuple[Figure, Any]:
    """The input beside every reconstruction, each titled with its channel and activation.

    Args:
        projection: what to draw.
        normalize: ``"contrast"`` (the paper's) or ``"minmax"``.
        columns: panels per row.
        size: panel size in inches.
        overlay_input: draw each reconstruction over a dimmed copy of the input (see :func:`overlay`).
        box: outline the receptive field of each seeded unit, when the projection knows it
            (``Projection.boxes``, filled in by :func:`deconvviz.visualize` and the CLI).
        crop_to_field: show each reconstruction cropped to its unit's receptive field, above the image patch
            the unit saw, as in the paper's Fig. 2 (when the boxes are known; the input panel then outlines
            every box).
        title: the figure's title; default: the layer (and its node name when it differs).

    Returns:
        ``(figure, axes)``, axes a 2-D array (in crop mode, rows alternate reconstructions and patches); the
        figure is not shown.

    Raises:
        RenderError: a bad option.
    """
    from matplotlib.figure import Figure

    _check_normalize(normalize)
    if columns < 1:
        raise RenderError(f"columns must be at least 1, got {columns}")
    cropping = crop_to_field and projection.boxes is not None
    picture = projection.input_pil()
    base = np.asarray(picture) if picture is not None else None
    count = len(projection) + (1 if base is not None else 0)
    columns = max(1, min(columns, count))
    rows = -(-count // columns)
    per_cell = 2 if cropping else 1
    height = size * rows * per_cell * (0.8 if cropping else 1.0)
    fig = Figure(figsize=(size * columns, height + 0.45), layout="constrained")
    axes = fig.subplots(rows * per_cell, columns, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    cells = [(r * per_cell, c) for r in range(rows) for c in range(columns)]
    if base is not None:
        row, col = cells.pop(0)
        axes[row, col].imshow(base)
        axes[row, col].set_title("input", fontsize=9)
        if cropping:
            for i in range(len(projection)):
                found = _box(projection, i)
                if found is not None:
                    _draw_box(axes[row, col], found)
    for i, (row, col) in enumerate(cells[: len(projection)]):
        rgb = _panel(projection, i, normalize, base, overlay_input)
        found = _box(projection, i)
        ax = axes[row, col]
        if cropping:
            ax.imshow(crop(rgb, found))
            if base is not None:
                axes[row + 1, col].imshow(crop(base, found))
        else:
            ax.imshow(rgb)
            if box and found is not None:
                _draw_box(ax, found)
        ax.set_title(_label(projection, i), fontsize=8)
    if title is None:
        title = projection.layer if projection.layer == projection.node else f"{projection.layer} ({projection.node})"
        if projection.mode == "map":
            title += ", whole feature maps"
    fig.suptitle(title, fontsize=10)
    return fig, axes


def layers_figure(
    projections: Sequence[Projection],
    *,
    per_layer: int = 6,
    normalize: Normalize = "contrast",
    size: float = 1.8,
    overlay_input: bool = False,
    box: bool = False,
    crop_to_field: bool = False,
    title: str | None = None,
) -> tuple[Figure, Any]:
    """One row per layer: the input, then that layer's first ``per_layer`` reconstructions (strongest first).

    Args:
        projections: one projection per layer, of one picture, shallow to deep.
        per_layer: reconstructions shown per row.
        normalize: ``"contrast"`` (the paper's) or ``"minmax"``.
        size: panel size in inches.
        overlay_input: draw each reconstruction over a dimmed copy of the input.
        box: outline each seeded unit's receptive field, when known.
        crop_to_field: each layer gets two rows, the reconstructions cropped to their units' receptive fields
            above the image patches those units saw (the paper's Fig. 2 layout); the input panel outlines the
            boxes. Layers without known boxes are shown whole.
        title: the figure's title.

    Returns:
        ``(figure, axes)``, axes of shape ``(rows, per_layer + 1)`` with one row per layer, or two in crop
        mode; the figure is not shown.

    Raises:
        RenderError: no projections, or a bad option.
    """
    from matplotlib.figure import Figure

    _check_normalize(normalize)
    if not projections:
        raise RenderError("layers_figure needs at least one projection")
    if per_layer < 1:
        raise RenderError(f"per_layer must be at least 1, got {per_layer}")
    columns = 1 + min(per_layer, max(len(p) for p in projections))
    per_row = 2 if crop_to_field else 1
    rows = len(projections) * per_row
    fig = Figure(
        figsize=(size * columns + 0.6, size * rows * (0.85 if crop_to_field else 1.0) + 0.4), layout="constrained"
    )
    axes = fig.subplots(rows, columns, squeeze=False)
    for ax in axes.flat:
        _blank(ax)
    for index, projection in enumerate(projections):
        top = axes[index * per_row]
        below = axes[index * per_row + 1] if crop_to_field else None
        cropping = crop_to_field and projection.boxes is not None
        picture = projection.input_pil()
        base = np.asarray(picture) if picture is not None else None
        if base is not None:
            top[0].imshow(base)
        top[0].set_ylabel(projection.layer, fontsize=10)
        shown = min(len(projection), columns - 1)
        if below is not None:
            below[0].axis("off")
            if cropping and base is not None:
                for i in range(shown):
                    found = _box(projection, i)
                    if found is not None:
                        _draw_box(top[0], found)
        for i, ax in enumerate(top[1:]):
            if i >= shown:
                ax.axis("off")
                if below is not None:
                    below[i + 1].axis("off")
                continue
            rgb = _panel(projection, i, normalize, base, overlay_input)
            found = _box(projection, i)
            ax.set_title(f"ch {projection.channels[i]}", fontsize=7, pad=2)
            if cropping:
                ax.imshow(crop(rgb, found))
            else:
                ax.imshow(rgb)
                if box and found is not None:
                    _draw_box(ax, found)
            if below is not None:
                if cropping and base is not None:
                    below[i + 1].imshow(crop(base, found))
                else:
                    below[i + 1].axis("off")
    if title is not None:
        fig.suptitle(title, fontsize=11)
    return fig, axes


def figure_png(fig: Figure, dpi: float = 100) -> bytes:
    """Encode a figure as PNG bytes."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def _umask() -> int:
    """The process's file-creation mask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary sibling, so a reader never sees half a file."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        Path(temporary).chmod(0o666 & ~_umask())  # mkstemp makes files private; give them the usual mode
        Path(temporary).replace(path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def save_figure(fig: Figure, path: str | Path, dpi: float = 100) -> Path:
    """Write a figure as a PNG (atomically); return the path."""
    path = Path(path)
    _write_atomic(path, figure_png(fig, dpi))
    return path


def save_image(picture: Image | np.ndarray, path: str | Path) -> Path:
    """Write a PIL image or an ``(H, W, 3)`` uint8 array as a PNG (atomically); return the path."""
    from PIL import Image as PILImage

    if isinstance(picture, np.ndarray):
        picture = PILImage.fromarray(picture)
    buffer = io.BytesIO()
    picture.save(buffer, format="png")
    path = Path(path)
    _write_atomic(path, buffer.getvalue())
    return path


def projection_filenames(projection: Projection, prefix: str = "") -> list[str]:
    """The file name of each reconstruction: ``{prefix}{rank:02d}_ch{channel:04d}.png``, strongest first."""
    return [f"{prefix}{i + 1:02d}_ch{channel:04d}.png" for i, channel in enumerate(projection.channels)]


def safe_name(name: str) -> str:
    """A layer name usable as a file name (path separators and odd characters replaced)."""
    cleaned = "".join(c if c.isalnum() or c in "._-" else "_" for c in name)
    return cleaned.strip(".") or "layer"


def save_projection(
    projection: Projection,
    directory: Path,
    normalize: Normalize = "contrast",
    *,
    summary: bool = False,
    overlay_input: bool = False,
    box: bool = False,
) -> list[Path]:
    """Write one PNG per reconstruction, named after the layer, rank and channel; return the paths.

    Args:
        projection: what to write.
        directory: created if missing.
        normalize: ``"contrast"`` or ``"minmax"``.
        summary: also write the summary figure as ``{layer}.png``.
        overlay_input: reconstructions drawn over the input (files and figure).
        box: outline receptive fields in the summary figure.

    Returns:
        The paths written, reconstructions first.
    """
    _check_normalize(normalize)
    directory.mkdir(parents=True, exist_ok=True)
    layer = safe_name(projection.layer)
    base = np.asarray(projection.input_pil()) if overlay_input and projection.input is not None else None
    paths = []
    for i, name in enumerate(projection_filenames(projection, prefix=f"{layer}_")):
        rgb = projection.rgb(i, normalize)
        if base is not None and base.shape == rgb.shape:
            rgb = overlay(rgb, base)
        paths.append(save_image(rgb, directory / name))
    if summary:
        fig, _ = projection_figure(projection, normalize=normalize, overlay_input=overlay_input, box=box)
        paths.append(save_figure(fig, directory / f"{layer}.png"))
    return paths


def mosaic(pictures: Sequence[np.ndarray], columns: int, gap: int = 2, fill: int = 255) -> np.ndarray:
    """Tile equally sized ``(H, W, 3)`` uint8 pictures into one array, row by row."""
    if not pictures:
        raise RenderError("mosaic needs at least one picture")
    height, width = pictures[0].shape[:2]
    if any(p.shape != pictures[0].shape for p in pictures):
        raise RenderError("mosaic needs pictures of one size")
    columns = max(1, min(columns, len(pictures)))
    rows = -(-len(pictures) // columns)
    out = np.full((rows * height + (rows - 1) * gap, columns * width + (columns - 1) * gap, 3), fill, np.uint8)
    for i, picture in enumerate(pictures):
        r, c = divmod(i, columns)
        out[r * (height + gap) : r * (height + gap) + height, c * (width + gap) : c * (width + gap) + width] = picture
    return out
