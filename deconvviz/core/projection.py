"""The result of a projection: reconstructions in input space plus what was seeded.

A :class:`Projection` is data. Its picture methods (:meth:`~Projection.rgb`, :meth:`~Projection.figure`,
``_repr_png_``, :meth:`~Projection.save`) hand over to :mod:`deconvviz.viz` and :mod:`deconvviz.viz.render`,
which take results; nothing here draws.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import Tensor

from deconvviz.errors import RenderError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    from matplotlib.figure import Figure
    from PIL.Image import Image

    from deconvviz.core.steps import ProjectionSteps
    from deconvviz.viz.figures import RenderOptions
    from deconvviz.viz.scaling import Scaling


@dataclass(frozen=True)
class Projection:
    """Reconstructions of seeded activations, one per seed, in the model's input space.

    In a notebook a projection shows itself as its figure (the input beside every reconstruction).

    Attributes:
        image: ``(K, C, H, W)`` reconstructions, detached, on the CPU.
        layer: the layer as it was asked for (alias or node name).
        node: the qualified node name of that layer.
        channels: the seeded channel of each reconstruction.
        positions: the seeded unit ``(row, col)`` in the layer's feature map, per reconstruction; None for
            whole-map seeds and layers without a spatial map. Figures label it ``unit (row, col)``.
        activations: ``(K,)`` the seeded activation values (for ``mode="map"``, the map's maximum).
        mode: ``"max"`` (one unit per channel) or ``"map"`` (the whole feature map).
        input: ``(1, C, H, W)`` the image that was projected, in input space, on the CPU.
        to_image: converts an input-space tensor to a PIL image (the model's inverse preprocessing), if known.
        channel_order: the colour order of the model's input channels (``"RGB"`` or ``"BGR"``); pictures are
            always shown in RGB.
        boxes: the input-space receptive field of each seeded unit, clipped to the image, if known (None
            entries for whole-map seeds). Boxes are ``(top, left, bottom, right)``, bottom and right
            exclusive: array order (``picture[top:bottom, left:right]``), *not* PIL's ``crop`` order;
            :meth:`pil_box` gives PIL's ``(left, top, right, bottom)``.
        inside: per seeded unit, whether its whole receptive field lies inside the image (False: it reaches
            into the padding at the edge), if known.
        prefer_inside: the units were chosen among those whose receptive field lies inside the image
            (see :func:`deconvviz.visualize`).
        label: what was projected, when it is not a channel of a layer (a class score: ``"class 281 tabby"``).
        method: the reverse pass that made the reconstructions (``"deconvnet"``, ``"guided"``, ``"gradient"``).
        steps: the signal after every mirrored op, seed to input, when the projection was asked for them
            (``project(..., steps=True)``; see :class:`~deconvviz.core.steps.ProjectionSteps`), else None.

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
    inside: tuple[bool | None, ...] | None = None
    prefer_inside: bool = False
    label: str | None = None
    method: str = "deconvnet"
    steps: ProjectionSteps | None = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return int(self.image.shape[0])

    def __repr__(self) -> str:
        return (
            f"Projection(layer={self.layer!r}, node={self.node!r}, channels={list(self.channels)}, "
            f"mode={self.mode!r}, method={self.method!r}, image={tuple(self.image.shape)})"
        )

    def _index(self, i: int) -> int:
        if isinstance(i, bool) or not isinstance(i, int) or not -len(self) <= i < len(self):
            raise RenderError(f"reconstruction index {i!r} is out of range: this projection has {len(self)}")
        return i

    def pil_box(self, i: int = 0) -> tuple[int, int, int, int] | None:
        """Seed ``i``'s receptive field in PIL's ``(left, top, right, bottom)`` order, for ``Image.crop``.

        Returns:
            The box, or None when it is not known (whole-map seeds, whole-image fields).
        """
        self._index(i)
        if self.boxes is None or self.boxes[i] is None:
            return None
        top, left, bottom, right = self.boxes[i]  # type: ignore[misc]
        return (left, top, right, bottom)

    def rgb(self, i: int = 0, scale: str | Scaling | None = None) -> np.ndarray:
        """Reconstruction ``i`` as a displayable ``(H, W, 3)`` uint8 RGB array (see :func:`deconvviz.viz.to_rgb`).

        Args:
            i: which reconstruction (0 is the first seed, for ``top=`` the strongest).
            scale: ``"robust"`` (default), ``"max"`` (each picture by its largest value) or ``"minmax"``.

        Returns:
            ``(H, W, 3)`` uint8 array.
        """
        from deconvviz import viz

        return viz.to_rgb(self.image[self._index(i)], scale, channel_order=self.channel_order)

    def to_pil(self, i: int = 0, scale: str | Scaling | None = None) -> Image:
        """Reconstruction ``i`` as an RGB PIL image (see :meth:`rgb`)."""
        from PIL import Image as PILImage

        return PILImage.fromarray(self.rgb(i, scale))

    def input_pil(self) -> Image | None:
        """The projected input image as an RGB PIL image, or None if it was not kept."""
        from deconvviz import viz

        if self.input is None:
            return None
        return viz.input_to_pil(self.input, self.to_image, self.channel_order)

    def figure(self, options: RenderOptions | None = None, **kwargs: Any) -> tuple[Figure, Any]:
        """A matplotlib figure: the input beside every reconstruction, each labelled.

        Args:
            options: how to draw (:class:`deconvviz.viz.RenderOptions`).
            **kwargs: options of :func:`deconvviz.viz.projection_figure` (``columns``, ``size``, ``title``)
                and fields of ``RenderOptions`` to change (``scale``, ``overlay``, ``box``, ``crop``).

        Returns:
            ``(figure, axes)``; the figure is returned, never shown.
        """
        from deconvviz import viz

        return viz.projection_figure(self, options, **kwargs)

    def _repr_png_(self) -> bytes:
        from deconvviz import viz

        fig, _ = self.figure(box=self.boxes is not None)
        return viz.figure_png(fig)

    def save(self, directory: str | Path, options: RenderOptions | None = None, *, summary: bool = False) -> list[Path]:
        """Write one PNG per reconstruction into ``directory`` (created if missing); return their paths.

        Files are named ``{layer}_{rank:02d}_ch{channel:04d}.png``; each is written atomically and shows the
        reconstruction as figures do (see :func:`deconvviz.viz.view`).

        Args:
            directory: where to write.
            options: how to draw (:class:`deconvviz.viz.RenderOptions`).
            summary: also write the summary figure as ``{layer}.png``.

        Returns:
            The paths written.
        """
        from deconvviz.io.atomic import OutputError
        from deconvviz.viz.render import save_projection

        if not str(directory).strip():  # Path("") is the current folder: say which folder, rather than guess
            raise OutputError('an empty folder name: give the folder to write into ("." for the current one)')
        return save_projection(self, Path(directory), options, summary=summary)
