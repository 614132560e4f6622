"""A layer's filters as an image grid: the paper's Fig. 2, layer 1 (the first convolution's learned filters).

Filters of a layer that sees the image (3 colour channels, or 1) are pictures in their own right: each is
shown as a small RGB patch, scaled on its own the paper's way (zero at mid-grey, its largest weight
magnitude at black or white), pixels enlarged as sharp squares, in a grid in channel order (filter ``i``
is output channel ``i``).

The paper also reads what is wrong with a first layer off its filters (Section 4.1, Fig. 6): "a mix of
extremely high and low frequency information, with little coverage of the mid frequencies", "dead" filters,
and, from the large stride, aliasing in the layer above. :meth:`Filters.summary` measures the same: each
filter's norm against the median (dead, or dominating), its peak spatial frequency (where the power of its
zero-padded Fourier transform, the colour channels' summed, is highest), and the share of the filters' power above
the Nyquist frequency of the convolution's stride, which the stride folds back onto lower frequencies.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
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
        stride: the convolution's stride ``(rows, columns)``.
        dilation: the convolution's dilation ``(rows, columns)``.
    """

    layer: str
    module: str
    weight: Tensor
    channel_order: str = "RGB"
    stride: tuple[int, int] = (1, 1)
    dilation: tuple[int, int] = (1, 1)

    BANDS: ClassVar[tuple[float, float]] = (1 / 8, 1 / 4)
    """The peak frequencies (cycles per pixel) between low, mid and high."""

    DEAD: ClassVar[float] = 0.01
    """A filter whose norm is under this share of the median norm is dead."""

    DOMINANT: ClassVar[float] = 10.0
    """A filter whose norm is over this many times the median norm dominates."""

    SCALING: ClassVar[str] = "each filter scaled on its own: zero is mid-grey, its largest |weight| black or white"
    """How the filters are drawn, for a caption."""

    def __repr__(self) -> str:
        return f"Filters({self.description})"

    @property
    def description(self) -> str:
        """``conv1_1 (features.0): 64 filters of 3x3x3``: the layer, its convolution and the filters' shape."""
        out, inputs, kh, kw = (int(n) for n in self.weight.shape)
        named = self.layer if self.layer == self.module else f"{self.layer} ({self.module})"
        return f"{named}: {out} filters of {kh}x{kw}x{inputs}"

    def norms(self) -> Tensor:
        """Each filter's L2 norm (float64)."""
        return self.weight.double().flatten(1).norm(dim=1)

    def dead(self) -> list[int]:
        """The filters whose norm is under :data:`DEAD` of the median norm (flat grey in the grid)."""
        norms = self.norms()
        return [i for i, n in enumerate(norms.tolist()) if n < self.DEAD * float(norms.median())]

    def dominant(self) -> list[int]:
        """The filters whose norm is over :data:`DOMINANT` times the median norm."""
        norms = self.norms()
        return [i for i, n in enumerate(norms.tolist()) if n > self.DOMINANT * float(norms.median())]

    def power(self) -> tuple[Tensor, Tensor, Tensor]:
        """Each filter's power spectrum, the colour channels' summed: ``(power (out, n, n), fy (n,), fx (n,))``.

        The filter (its taps spread by the dilation) is zero-padded to ``n x n`` (at least 64, and four times
        its extent) before the 2-D Fourier transform; ``fy`` and ``fx`` are the frequencies of the rows and
        columns of ``power`` in cycles per pixel, in ``[-0.5, 0.5)``. Computed once per ``Filters`` (the
        diagnosis reads it twice); each call returns copies.
        """
        power, fy, fx = self._spectrum
        return power.clone(), fy.clone(), fx.clone()

    @cached_property
    def _spectrum(self) -> tuple[Tensor, Tensor, Tensor]:
        """:meth:`power`, computed once."""
        import torch

        weight = self.weight.double()
        out, inputs, kh, kw = (int(n) for n in weight.shape)
        dy, dx = self.dilation
        extent = ((kh - 1) * dy + 1, (kw - 1) * dx + 1)
        n = max(64, 4 * max(extent))
        padded = torch.zeros(out, inputs, n, n, dtype=torch.float64)
        padded[:, :, : extent[0] : dy, : extent[1] : dx] = weight
        power = torch.fft.fft2(padded).abs().square().sum(1)
        frequencies = torch.fft.fftfreq(n, dtype=torch.float64)
        return power, frequencies, frequencies

    def frequencies(self) -> Tensor:
        """Each filter's peak spatial frequency: where its power is highest, in cycles per pixel.

        0 is a colour blob or a smooth ramp, 0.5 a pattern that flips sign from pixel to pixel; NaN for a dead
        filter (:meth:`dead`), whose spectrum is rounding noise.
        """
        power, fy, fx = self.power()
        radius = (fy[:, None].square() + fx[None, :].square()).sqrt().flatten()
        peak = radius[power.flatten(1).argmax(1)]
        peak[self.dead()] = float("nan")
        return peak

    def aliased(self) -> Tensor:
        """Each filter's share of power above the Nyquist frequency of the stride (0 at stride 1; NaN for zero)."""
        power, folded = self._folded()
        return folded.sum((1, 2)) / power.sum((1, 2))

    def aliasing(self) -> float:
        """The share of all the filters' power above the Nyquist frequency of the stride."""
        power, folded = self._folded()
        total = float(power.sum())
        return float(folded.sum()) / total if total > 0 else 0.0

    def _folded(self) -> tuple[Tensor, Tensor]:
        """:meth:`power`, and the part of it above the Nyquist frequency of the stride along either axis."""
        power, fy, fx = self.power()
        above = (fy.abs() > 0.5 / self.stride[0])[:, None] | (fx.abs() > 0.5 / self.stride[1])[None, :]
        return power, power * above

    def summary(self) -> str:
        """What the paper reads off a first layer (Fig. 6), in one line: ``64 filters: `` and :meth:`diagnosis`."""
        return f"{int(self.weight.shape[0])} filters: {self.diagnosis()}"

    def diagnosis(self) -> str:
        """The paper's reading of the filters: :meth:`summary` without the count in front.

        Dead and dominating filters, how the peak frequencies spread over low, mid and high, and the share of
        power the stride aliases.
        """
        peaks = self.frequencies()
        low, high = self.BANDS
        bands = [
            int((peaks < low).sum()),
            int(((peaks >= low) & (peaks < high)).sum()),
            int((peaks >= high).sum()),
        ]
        stride = "x".join(str(s) for s in dict.fromkeys(self.stride))
        if max(self.stride) == 1:
            folded = "stride 1 keeps every position, so nothing aliases"
        else:
            nyquist = " and ".join(f"1/{2 * s}" for s in dict.fromkeys(self.stride))
            folded = (
                f"{100 * self.aliasing():.0f} % of their power lies above stride {stride}'s Nyquist frequency "
                f"({nyquist} cycle per pixel) and aliases"
            )
        dead = len(self.dead())
        return (
            f"{dead} dead, {len(self.dominant())} dominating (norm under 1/100 or over 10x the "
            f"median); peak frequency{' of the others' if dead else ''}: low {bands[0]}, mid {bands[1]}, high "
            f"{bands[2]} (under 1/8, to 1/4, over 1/4 cycle per pixel); {folded}"
        )

    def grid(self, *, columns: int | None = None, cell: int = 24) -> np.ndarray:
        """All filters as one ``(H, W, 3)`` uint8 picture, ``columns`` per row (default: about square)."""
        check_layout(columns)
        if isinstance(cell, bool) or not isinstance(cell, int) or cell < 1:
            raise RenderError(f"cell must be a whole number of pixels of at least 1, got {cell!r}")
        count = int(self.weight.shape[0])
        columns = columns or math.ceil(math.sqrt(count))
        dead = set(self.dead())  # flat mid-grey: scaled on its own, a near-zero filter's rounding noise would show
        tiles = [
            enlarge(to_rgb(w * 0 if i in dead else w, "max", self.channel_order), cell)
            for i, w in enumerate(self.weight)
        ]
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
        dead = self.dead()
        flat = f"; {len(dead)} dead (norm under 1/100 of the median) flat grey: {_listed(dead)}" if dead else ""
        fig.supxlabel(self.SCALING + flat, fontsize=7)
        return fig, ax

    def _repr_png_(self) -> bytes:
        from deconvviz.analysis.base import figure_bytes

        return figure_bytes(self.figure()[0])


def _listed(indices: list[int], most: int = 8) -> str:
    """``3, 7, 12`` (the first ``most``, then how many more)."""
    shown = ", ".join(str(i) for i in indices[:most])
    return shown + (f" and {len(indices) - most} more" if len(indices) > most else "")


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
            f"not pictures; draw a first-layer convolution (this model's is {first_convolution(net)!r}) or project "
            "this layer with `render`"
        )
    return Filters(
        layer=layer,
        module=name,
        weight=weight,
        channel_order=net.channel_order,
        stride=(int(conv.stride[0]), int(conv.stride[1])),
        dilation=(int(conv.dilation[0]), int(conv.dilation[1])),
    )


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
