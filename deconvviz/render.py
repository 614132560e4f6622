"""Turn reconstructions into pictures: RGB arrays, PIL images and matplotlib figures (returned, never shown)."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure
    from PIL.Image import Image

    from deconvviz.projection import Projection

Normalize = Literal["contrast", "minmax"]


def to_rgb(image: Tensor, normalize: Normalize = "contrast") -> np.ndarray:
    """Make a reconstruction displayable.

    ``"contrast"`` is the paper's per-image contrast normalisation: centre on grey, scale so the largest
    magnitude reaches black or white, clip. ``"minmax"`` stretches the values linearly to 0..255 instead.

    Args:
        image: ``(C, H, W)`` reconstruction (1 or 3 channels; other counts show their mean).
        normalize: ``"contrast"`` or ``"minmax"``.

    Returns:
        ``(H, W, 3)`` uint8 array.
    """
    if image.dim() != 3:
        raise ValueError(f"expected one image (C, H, W), got shape {tuple(image.shape)}")
    x = image.detach().to("cpu", torch.float64)
    if x.shape[0] not in (1, 3):
        x = x.mean(dim=0, keepdim=True)
    if normalize == "contrast":
        scale = float(x.abs().max())
        out = 0.5 + 0.5 * x / scale if scale > 0 else torch.full_like(x, 0.5)
    elif normalize == "minmax":
        lo, hi = float(x.min()), float(x.max())
        out = (x - lo) / (hi - lo) if hi > lo else torch.full_like(x, 0.5)
    else:
        raise ValueError(f"normalize must be 'contrast' or 'minmax', got {normalize!r}")
    out = out.clamp(0, 1).expand(3, -1, -1) if out.shape[0] == 1 else out.clamp(0, 1)
    return (out.permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)


def input_to_pil(x: Tensor, to_image: Callable[[Tensor], Any] | None = None) -> Image:
    """The input image for display: through the model's inverse preprocessing if known, else min-max."""
    from PIL import Image as PILImage

    if to_image is not None:
        return to_image(x)
    return PILImage.fromarray(to_rgb(x[0] if x.dim() == 4 else x, normalize="minmax"))


def figure_png(fig: Figure) -> bytes:
    """Encode a figure as PNG bytes and release it."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def projection_figure(
    projection: Projection, *, normalize: Normalize = "contrast", columns: int = 5, size: float = 2.2
) -> tuple[Figure, Any]:
    """The input beside every reconstruction, each titled with its channel and activation.

    Returns:
        ``(figure, axes)``; the figure is not shown.
    """
    from matplotlib.figure import Figure

    count = len(projection) + (1 if projection.input is not None else 0)
    columns = max(1, min(columns, count))
    rows = -(-count // columns)
    fig = Figure(figsize=(size * columns, size * rows + 0.3))
    axes = fig.subplots(rows, columns, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    flat = list(axes.flat)
    if projection.input is not None:
        flat[0].imshow(input_to_pil(projection.input, projection.to_image))
        flat[0].set_title("input", fontsize=9)
        flat = flat[1:]
    for i, ax in enumerate(flat[: len(projection)]):
        ax.imshow(projection.rgb(i, normalize))
        ax.set_title(f"ch {projection.channels[i]}  a={float(projection.activations[i]):.3g}", fontsize=9)
    fig.suptitle(f"{projection.layer}", fontsize=10)
    return fig, axes


def save_projection(projection: Projection, directory: Path, normalize: Normalize = "contrast") -> list[Path]:
    """Write one PNG per reconstruction; return the paths."""
    directory.mkdir(parents=True, exist_ok=True)
    safe = projection.layer.replace("/", "_")
    paths = []
    for i, channel in enumerate(projection.channels):
        path = directory / f"{safe}_ch{channel:04d}_{i:02d}.png"
        projection.to_pil(i, normalize).save(path)
        paths.append(path)
    return paths
