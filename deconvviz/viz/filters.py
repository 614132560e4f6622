"""A layer's filters as an image grid: the paper's Fig. 2, layer 1 (the first convolution's learned filters).

Filters of a layer that sees the image (3 colour channels, or 1) are pictures in their own right: each is
shown as a small RGB patch, scaled on its own the paper's way (zero at mid-grey, its largest weight
magnitude at black or white), pixels enlarged as sharp squares, in a grid in channel order (filter ``i``
is output channel ``i``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from torch import Tensor, nn

from deconvviz.errors import RenderError
from deconvviz.viz.pictures import enlarge, mosaic
from deconvviz.viz.scaling import to_rgb
from deconvviz.viz.wrap import check_layout

if TYPE_CHECKING:  # pragma: no cover
    from deconvviz.core.deconvnet import DeconvNet
    from deconvviz.models.session import Session
    from deconvviz.models.specs import LoadedModel
    from deconvviz.viz.canvas import Figure


@dataclass(frozen=True)
class Filters:
    """The weights of one convolution, ready to draw.

    Attributes:
        layer: the layer as asked for.
        module: the qualified name of the ``nn.Conv2d`` whose weights these are.
        weight: ``(out, in, kh, kw)`` weights, detached, on the CPU.
        channel_order: the model's colour order, so filters are drawn in RGB.
    """

    layer: str
    module: str
    weight: Tensor
    channel_order: str = "RGB"

    SCALING: ClassVar[str] = "each filter scaled on its own: zero is mid-grey, its largest |weight| black or white"
    """How the filters are drawn, for a caption."""

    @property
    def description(self) -> str:
        """``conv1_1 (features.0): 64 filters of 3x3x3``: the layer, its convolution and the filters' shape."""
        out, inputs, kh, kw = (int(n) for n in self.weight.shape)
        return f"{self.layer} ({self.module}): {out} filters of {kh}x{kw}x{inputs}"

    def grid(self, *, columns: int | None = None, cell: int = 24) -> np.ndarray:
        """All filters as one ``(H, W, 3)`` uint8 picture, ``columns`` per row (default: about square)."""
        check_layout(columns)
        if isinstance(cell, bool) or not isinstance(cell, int) or cell < 1:
            raise RenderError(f"cell must be a whole number of pixels of at least 1, got {cell!r}")
        count = int(self.weight.shape[0])
        columns = columns or math.ceil(math.sqrt(count))
        tiles = [enlarge(to_rgb(w, "max", self.channel_order), cell) for w in self.weight]
        return mosaic(tiles, columns, gap=2, fill=255)

    def figure(self, *, columns: int | None = None, size: float = 7.0) -> tuple[Figure, Any]:
        """The grid as a matplotlib figure, titled with the layer; returned, never shown."""
        from deconvviz.viz.canvas import Figure

        check_layout(size=size)  # and the grid checks the columns
        picture = self.grid(columns=columns)
        height, width = picture.shape[:2]
        fig = Figure(figsize=(size, size * height / width + 0.6), layout="constrained")
        ax = fig.subplots()
        ax.imshow(picture, interpolation="nearest")
        ax.axis("off")
        fig.suptitle(self.description, fontsize=10)
        fig.supxlabel(self.SCALING, fontsize=7)
        return fig, ax

    def _repr_png_(self) -> bytes:
        from deconvviz.analysis.base import figure_bytes

        return figure_bytes(self.figure()[0])


def _conv_behind(net: DeconvNet, layer: str) -> tuple[str, nn.Conv2d]:
    """The convolution that computes ``layer``, or the nearest one before it on a single-input path."""
    graph = net.graph
    node: Any = graph.node(layer, net.aliases)
    seen = 0
    while node is not None and seen < 64:
        module = graph.module(node)
        if isinstance(module, nn.Conv2d):
            return str(node.target), module
        inputs = [n for n in node.all_input_nodes if n in graph.carries]
        node = inputs[0] if len(inputs) == 1 else None
        seen += 1
    raise RenderError(f"layer {layer!r} is not computed by a convolution (nor right after one); give a conv layer")


def first_convolution(net: DeconvNet) -> str:
    """The layer of the model's first convolution, by its alias when it has one (VGG16: ``conv1_1``).

    Raises:
        RenderError: the model has no convolution.
    """
    graph = net.graph
    for layer in net.layers:
        node = graph.node(layer, net.aliases)
        if isinstance(graph.module(node), nn.Conv2d):
            # its own alias, or that of the op right after it (VGG16's conv1_1 names the ReLU)
            named = [a for a in net.aliases if graph.node(a, net.aliases) is node]
            after = [a for a in net.aliases if node in graph.node(a, net.aliases).all_input_nodes]
            return (named or after or [layer])[0]
    raise RenderError(f"{type(net.model).__name__} has no convolution whose filters could be drawn")


def layer_filters(net: DeconvNet, layer: str | None = None) -> Filters:
    """The filters of the convolution behind ``layer`` (``conv1_1`` names VGG16's first ReLU: its conv is used).

    Args:
        net: the deconvnet of the model.
        layer: a layer alias or node name; default: the model's first convolution.

    Raises:
        LayerNotFoundError: an unknown layer.
        RenderError: no convolution computes the layer, or its filters do not see the picture's colours
            (more than 3 input channels: project such a layer with ``render`` instead).
    """
    layer = layer if layer is not None else first_convolution(net)
    name, conv = _conv_behind(net, layer)
    weight = conv.weight.detach().to("cpu").float()
    inputs = int(weight.shape[1])
    if inputs not in (1, 3):
        raise RenderError(
            f"the filters of {layer!r} ({name}) see {inputs} feature maps, not the picture's colours, so they are "
            "not pictures; draw a first-layer convolution (e.g. conv1_1) or project this layer with `render`"
        )
    return Filters(layer=layer, module=name, weight=weight, channel_order=net.channel_order)


def filters(model: str | LoadedModel | Session = "vgg16", layer: str | None = None) -> Filters:
    """A model's learned filters, ready to draw (what ``deconvviz filters`` writes); a notebook shows the grid.

    Args:
        model: a model name, a loaded model or a :class:`~deconvviz.models.session.Session`.
        layer: a layer alias or node name; default: the model's first convolution. A ReLU's alias (VGG16's
            ``conv1_1``) names the convolution before it.

    Returns:
        The :class:`Filters`: ``.figure(columns=...)``, ``.grid()`` as an ``(H, W, 3)`` uint8 picture.

    Raises:
        LayerNotFoundError: an unknown layer; RenderError: a layer whose filters do not see the picture's colours.

    Example:
        >>> dv.filters("squeezenet1_1").figure(columns=8)  # doctest: +SKIP
    """
    from deconvviz.models.session import session

    return layer_filters(session(model, device="cpu").net, layer)
