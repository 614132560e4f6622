"""The result of a projection: reconstructions in input space plus what was seeded."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from torch import Tensor

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure
    from PIL.Image import Image

Normalize = Literal["contrast", "minmax"]


@dataclass(frozen=True)
class Projection:
    """Reconstructions of seeded activations, one per seed, in the model's input space.

    Attributes:
        image: ``(K, C, H, W)`` reconstructions, detached, on the CPU.
        layer: the layer as it was asked for (alias or node name).
        node: the qualified node name of that layer.
        channels: the seeded channel of each reconstruction.
        positions: the seeded ``(row, col)`` of each reconstruction; None for whole-map seeds and layers
            without a spatial map.
        activations: ``(K,)`` the seeded activation values (for ``mode="map"``, the map's maximum).
        mode: ``"max"`` (one unit per channel) or ``"map"`` (the whole feature map).
        input: ``(1, C, H, W)`` the image that was projected, in input space, on the CPU.
        to_image: converts an input-space tensor to a PIL image (the model's inverse preprocessing), if known.
    """

    image: Tensor
    layer: str
    node: str
    channels: tuple[int, ...]
    positions: tuple[tuple[int, int] | None, ...]
    activations: Tensor
    mode: str = "max"
    input: Tensor | None = None
    to_image: Callable[[Tensor], Any] | None = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return int(self.image.shape[0])

    def __repr__(self) -> str:
        return (
            f"Projection(layer={self.layer!r}, node={self.node!r}, channels={list(self.channels)}, "
            f"mode={self.mode!r}, image={tuple(self.image.shape)})"
        )

    def rgb(self, i: int = 0, normalize: Normalize = "contrast") -> Any:
        """Reconstruction ``i`` as a displayable ``(H, W, 3)`` uint8 array (see :func:`deconvviz.render.to_rgb`)."""
        from deconvviz.render import to_rgb

        return to_rgb(self.image[i], normalize=normalize)

    def to_pil(self, i: int = 0, normalize: Normalize = "contrast") -> Image:
        """Reconstruction ``i`` as a PIL image."""
        from PIL import Image as PILImage

        return PILImage.fromarray(self.rgb(i, normalize))

    def input_pil(self) -> Image | None:
        """The projected input image as a PIL image, or None if it was not kept."""
        from deconvviz.render import input_to_pil

        if self.input is None:
            return None
        return input_to_pil(self.input, self.to_image)

    def figure(self, **kwargs: Any) -> tuple[Figure, Any]:
        """A matplotlib figure: the input beside every reconstruction, each labelled (see :func:`render.figure`)."""
        from deconvviz.render import projection_figure

        return projection_figure(self, **kwargs)

    def _repr_png_(self) -> bytes:
        from deconvviz.render import figure_png

        fig, _ = self.figure()
        return figure_png(fig)

    def save(self, directory: str | Path, normalize: Normalize = "contrast") -> list[Path]:
        """Write one PNG per reconstruction into ``directory`` (created if missing); return their paths."""
        from deconvviz.render import save_projection

        return save_projection(self, Path(directory), normalize=normalize)
