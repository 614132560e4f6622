"""Picture helpers on ``(H, W, 3)`` uint8 arrays: the input for display, overlays, crops, enlargements, mosaics.

Boxes are ``(top, left, bottom, right)`` in pixels, bottom and right exclusive, the order of array slicing
(``picture[top:bottom, left:right]``). PIL's ``Image.crop`` takes ``(left, top, right, bottom)`` instead:
:func:`pil_box` converts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from torch import Tensor

from deconvviz.errors import RenderError
from deconvviz.viz.scaling import to_rgb

if TYPE_CHECKING:  # pragma: no cover
    from PIL.Image import Image

Box = tuple[int, int, int, int]
"""A pixel box ``(top, left, bottom, right)``, bottom and right exclusive (array order, not PIL's)."""


def pil_box(box: Box) -> tuple[int, int, int, int]:
    """A ``(top, left, bottom, right)`` box in PIL's ``(left, top, right, bottom)`` order, for ``Image.crop``.

    Example:
        >>> pil_box((1, 2, 5, 9))
        (2, 1, 9, 5)
    """
    top, left, bottom, right = box
    return (left, top, right, bottom)


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


OVERLAY_FULL = 40.0
"""Departure from grey (8-bit steps) at which a reconstruction fully covers the photo in an overlay."""


def overlay(reconstruction: np.ndarray, picture: np.ndarray, strength: float = 1.0) -> np.ndarray:
    """Lay a displayable reconstruction over the input picture.

    The photo is shown in dim grey, so every colour in the result comes from the reconstruction; the
    reconstruction covers it in proportion to its departure from mid-grey (zero), fully from
    :data:`OVERLAY_FULL` grey levels on, so the structure the unit responded to stands out in place.

    Args:
        reconstruction: ``(H, W, 3)`` uint8 from :func:`deconvviz.viz.to_rgb`.
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
    grey = pic.mean(axis=2, keepdims=True) * 0.45 + 0.15  # dim and colourless: the photo is the backdrop
    # departure from grey (128, the value of zero) in 8-bit steps, so exact grey has no weight
    departure = np.abs(reconstruction.astype(np.float64) - 128.0).max(axis=2, keepdims=True)
    weight = np.clip(departure / OVERLAY_FULL * max(0.0, strength), 0.0, 1.0)
    out = grey * (1.0 - weight) + rec * weight
    return (np.clip(out, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def crop(picture: np.ndarray, box: Box | None) -> np.ndarray:
    """The part of an ``(H, W, ...)`` picture inside ``box`` (the whole picture when ``box`` is None)."""
    if box is None:
        return picture
    top, left, bottom, right = box
    return picture[max(top, 0) : max(bottom, 0), max(left, 0) : max(right, 0)]


def enlarge(picture: np.ndarray, at_least: int) -> np.ndarray:
    """Repeat every pixel an integer number of times so the shorter side is at least ``at_least`` pixels.

    Pixels stay sharp squares (no smoothing invents detail); a picture already that large is returned as is.
    """
    side = min(picture.shape[:2])
    if side <= 0 or side >= at_least:
        return picture
    factor = -(-at_least // side)
    return np.repeat(np.repeat(picture, factor, axis=0), factor, axis=1)


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
