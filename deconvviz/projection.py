"""The result of a projection: reconstructions in input space plus what was seeded."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from torch import Tensor

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    from matplotlib.figure import Figure
    from PIL.Image import Image

Normalize = Literal["contrast", "minmax"]


@dataclass(frozen=True)
class Projection:
    """Reconstructions of seeded activations, one per seed, in the model's input space.

    In a notebook a projection shows itself as its figure (the input beside every reconstruction).

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
        channel_order: the colour order of the model's input channels (``"RGB"`` or ``"BGR"``); pictures are
            always shown in RGB.
        boxes: the input-space receptive field ``(top, left, bottom, right)`` of each seeded unit, if known
            (None entries for whole-map seeds).

    Example:
        >>> p = dv.DeconvNet(model).project(x, "conv5_3", top=9)  # doctest: +SKIP
        >>> p.to_pil(0).save("strongest.png")  # doctest: +SKIP
        >>> fig, axes = p.figure()  # doctest: +SKIP
        >>> p.save("out/conv5_3")  # doctest: +SKIP
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
    channel_order: str = "RGB"
    boxes: tuple[tuple[int, int, int, int] | None, ...] | None = None

    def __len__(self) -> int:
        return int(self.image.shape[0])

    def __repr__(self) -> str:
        return (
            f"Projection(layer={self.layer!r}, node={self.node!r}, channels={list(self.channels)}, "
            f"mode={self.mode!r}, image={tuple(self.image.shape)})"
        )

    def _index(self, i: int) -> int:
        from deconvviz.render import RenderError

        if isinstance(i, bool) or not isinstance(i, int) or not -len(self) <= i < len(self):
            raise RenderError(f"reconstruction index {i!r} is out of range: this projection has {len(self)}")
        return i

    def rgb(self, i: int = 0, normalize: Normalize = "contrast") -> np.ndarray:
        """Reconstruction ``i`` as a displayable ``(H, W, 3)`` uint8 RGB array (see :func:`render.to_rgb`).

        Args:
            i: which reconstruction (0 is the first seed, for ``top=`` the strongest).
            normalize: ``"contrast"`` (the paper's per-image contrast normalisation) or ``"minmax"``.

        Returns:
            ``(H, W, 3)`` uint8 array.
        """
        from deconvviz.render import to_rgb

        return to_rgb(self.image[self._index(i)], normalize=normalize, channel_order=self.channel_order)

    def to_pil(self, i: int = 0, normalize: Normalize = "contrast") -> Image:
        """Reconstruction ``i`` as an RGB PIL image (see :meth:`rgb`)."""
        from PIL import Image as PILImage

        return PILImage.fromarray(self.rgb(i, normalize))

    def input_pil(self) -> Image | None:
        """The projected input image as an RGB PIL image, or None if it was not kept."""
        from deconvviz.render import input_to_pil

        if self.input is None:
            return None
        return input_to_pil(self.input, self.to_image, self.channel_order)

    def figure(self, **kwargs: Any) -> tuple[Figure, Any]:
        """A matplotlib figure: the input beside every reconstruction, each labelled.

        Args:
            **kwargs: options of :func:`deconvviz.render.projection_figure` (``normalize``, ``columns``,
                ``overlay_input``, ``box``, ``title``, ...).

        Returns:
            ``(figure, axes)``; the figure is returned, never shown.
        """
        from deconvviz.render import projection_figure

        return projection_figure(self, **kwargs)

    def _repr_png_(self) -> bytes:
        from deconvviz.render import figure_png

        fig, _ = self.figure(box=self.boxes is not None)
        return figure_png(fig)

    def save(
        self,
        directory: str | Path,
        normalize: Normalize = "contrast",
        *,
        summary: bool = False,
        overlay_input: bool = False,
    ) -> list[Path]:
        """Write one PNG per reconstruction into ``directory`` (created if missing); return their paths.

        Files are named ``{layer}_{rank:02d}_ch{channel:04d}.png``; each is written atomically.

        Args:
            directory: where to write.
            normalize: ``"contrast"`` or ``"minmax"``.
            summary: also write the summary figure as ``{layer}.png``.
            overlay_input: draw the reconstructions over the input.

        Returns:
            The paths written.
        """
        from deconvviz.render import save_projection

        return save_projection(
            self, Path(directory), normalize, summary=summary, overlay_input=overlay_input, box=self.boxes is not None
        )
