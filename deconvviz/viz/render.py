"""Write pictures of projections to disk: PNG files of reconstructions and figures, each atomically.

The pictures themselves come from :mod:`deconvviz.viz` (the display scaling, overlays, cut-outs and figures);
this module names and writes the files. The names of :mod:`deconvviz.viz` that used to live here
(``to_rgb``, ``overlay``, ``crop``, ``mosaic``, ``input_to_pil``, ``projection_figure``, ``layers_figure``,
``figure_png``) are still importable from it.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from deconvviz.errors import RenderError
from deconvviz.io.atomic import OutputError, file_in_the_way, write_file
from deconvviz.io.names import clean_name
from deconvviz.viz.figures import (
    RenderOptions,
    base_picture,
    figure_png,
    layers_figure,
    projection_figure,
    view,
    view_box,
)
from deconvviz.viz.pictures import Box, crop, enlarge, input_to_pil, mosaic, overlay
from deconvviz.viz.scaling import to_rgb

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure
    from PIL.Image import Image

    from deconvviz.core.projection import Projection

VIEW_MIN = 112
"""Reconstruction files cut to a small receptive field are enlarged (pixels repeated) to at least this side."""

__all__ = [
    "VIEW_MIN",
    "Box",
    "RenderError",
    "RenderOptions",
    "crop",
    "figure_png",
    "input_to_pil",
    "layers_figure",
    "mosaic",
    "overlay",
    "projection_figure",
    "projection_filenames",
    "safe_name",
    "save_figure",
    "save_image",
    "save_projection",
    "to_rgb",
    "view_file",
]


def save_figure(fig: Figure, path: str | Path, dpi: float = 100) -> Path:
    """Write a figure as a PNG (atomically); return the path."""
    path = Path(path)
    write_file(path, figure_png(fig, dpi))
    return path


def replaceable_figure(path: str | Path) -> bool:
    """Whether a file may be written at ``path``: nothing is there, or a figure deconvviz wrote (its PNG mark).

    A photo, a document or a figure of another tool at a figure's path is never replaced.
    """
    from PIL import Image as PILImage

    from deconvviz.viz.figures import SOFTWARE

    path = Path(path)
    if not path.exists():
        return True
    try:
        with PILImage.open(path) as found:
            return found.format == "PNG" and getattr(found, "text", {}).get("Software") == SOFTWARE
    except (OSError, ValueError, SyntaxError):
        return False


def save_image(picture: Image | np.ndarray, path: str | Path) -> Path:
    """Write a PIL image or an ``(H, W, 3)`` uint8 array as a PNG (atomically); return the path."""
    from PIL import Image as PILImage

    if isinstance(picture, np.ndarray):
        picture = PILImage.fromarray(picture)
    buffer = io.BytesIO()
    picture.save(buffer, format="png")
    path = Path(path)
    write_file(path, buffer.getvalue())
    return path


def projection_filenames(projection: Projection, prefix: str = "") -> list[str]:
    """The file name of each reconstruction: ``{prefix}{rank:02d}_ch{channel:04d}.png``, strongest first."""
    return [f"{prefix}{i + 1:02d}_ch{channel:04d}.png" for i, channel in enumerate(projection.channels)]


def safe_name(name: str) -> str:
    """A layer name usable as a file name (see :func:`deconvviz.io.clean_name`)."""
    return clean_name(name, "layer")


def view_file(
    projection: Projection, i: int, options: RenderOptions, base: np.ndarray | None = None
) -> tuple[np.ndarray, Box | None]:
    """What a reconstruction's file shows: its :func:`~deconvviz.viz.view`, enlarged when cut to a small field.

    Returns:
        ``(picture, box)``: the ``(h, w, 3)`` uint8 picture and the input box it was cut to (None: the whole
        input). A cut-out is enlarged by repeating pixels to at least :data:`VIEW_MIN` pixels a side.
    """
    box = view_box(projection, i, options)
    picture = view(projection, i, options, base)
    return (enlarge(picture, VIEW_MIN) if box is not None else picture), box


def save_projection(
    projection: Projection,
    directory: Path,
    options: RenderOptions | None = None,
    *,
    summary: bool = False,
) -> list[Path]:
    """Write one PNG per reconstruction, named after the layer, rank and channel; return the paths.

    Args:
        projection: what to write.
        directory: created if missing.
        options: how to draw (:class:`~deconvviz.viz.RenderOptions`); files show what :func:`view_file` gives.
        summary: also write the summary figure as ``{layer}.png``.

    Returns:
        The paths written, reconstructions first.
    """
    options = RenderOptions.build(options)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as exc:
        raise OutputError(
            f"cannot write into {str(directory)!r}: {str(file_in_the_way(directory) or exc.filename)!r} is a file, "
            "not a folder; "
            "choose a folder"
        ) from exc
    layer = safe_name(projection.layer)
    base = base_picture(projection) if options.overlay else None
    paths = []
    for i, name in enumerate(projection_filenames(projection, prefix=f"{layer}_")):
        picture, _ = view_file(projection, i, options, base)
        paths.append(save_image(picture, directory / name))
    if summary:
        fig, _ = projection_figure(projection, options)
        paths.append(save_figure(fig, directory / f"{layer}.png"))
    return paths
