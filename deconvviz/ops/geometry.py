"""Receptive fields and the geometry of ops: how each op changes the window a unit sees.

A receptive field is described per spatial dimension by three integers, in input pixels:

* ``size``: the height (width) of one unit's window;
* ``stride`` (the *jump*): how far the window moves from one unit to the next along a row (column);
* ``offset``: the input coordinate where the window of the first unit (row 0, col 0) starts. It is negative
  when the layers below pad their input, because the window then starts in the padding.

Unit ``(row, col)`` therefore sees the input rows ``offset[0] + row * stride[0]`` up to, but not including,
``offset[0] + row * stride[0] + size[0]`` (and the same for columns with index 1). :meth:`ReceptiveField.box`
gives that box, clipped to the image. VGG16's ``conv5_3`` has ``size=(196, 196)``, ``stride=(16, 16)`` and
``offset=(-90, -90)``: unit (0, 0) sees rows -90..105, i.e. rows 0..105 of the image.

The box holds every input pixel the unit can depend on, hence every non-zero pixel of its deconvnet
projection. It is computed from the traced graph, op by op: convolutions and pooling widen and stride the
window (kernel, stride, padding, dilation), element-wise and channel-wise ops (ReLU, batch norm, dropout)
keep it, ops that merge branches (``+``, ``torch.cat``) take the enclosing box of their inputs' windows, and
after a global or adaptive pooling, a reshape (flatten) or a fully connected layer every unit sees the whole
image. Dilated windows are described by their enclosing box. The box depends on the layers alone, not on the
image size, so near the bottom and right borders it can reach over a few pixels that a strided layer dropped
(its last window did not fit); the clipped box is still the patch to show.

How an op changes the field is looked up in a registry keyed like the mirror rules (module class, function,
or tensor method name). Register the geometry of your own layer with :func:`register_geometry`:

    >>> import deconvviz as dv
    >>> from deconvviz.ops.geometry import pointwise, window
    >>> dv.register_geometry(MyBlurPool, window(3, stride=2, padding=1))  # doctest: +SKIP
    >>> dv.register_geometry(MyActivation, pointwise)  # doctest: +SKIP
"""

from __future__ import annotations

import inspect
import operator
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from torch import nn

from deconvviz.errors import DeconvVizError, UnsupportedOpError
from deconvviz.ops.registry import OPS, GeometryView, OpKey

Pair = tuple[int, int]
Box = tuple[int, int, int, int]
"""``(top, left, bottom, right)`` in input pixels; bottom and right are exclusive."""

_Sliceable = TypeVar("_Sliceable")


class ReceptiveFieldError(DeconvVizError, ValueError):
    """A unit position or image size that a receptive field cannot be applied to."""


class UnknownGeometryError(UnsupportedOpError):
    """An op on the path from the input to a layer whose receptive-field geometry is not known."""


def _pair(value: Any, what: str) -> Pair:
    if isinstance(value, int) and not isinstance(value, bool):
        return (value, value)
    try:
        a, b = value
        return (int(a), int(b))
    except (TypeError, ValueError):
        raise ReceptiveFieldError(f"{what} must be an int or a pair of ints, got {value!r}") from None


# ---------------------------------------------------------------------------------------- receptive field


@dataclass(frozen=True)
class ReceptiveField:
    """The input-space window seen by the units of one layer (see the module docstring for the convention).

    Attributes:
        size: ``(height, width)`` of one unit's window in input pixels; None when every unit sees the whole
            image (after global or adaptive pooling, a flatten or a fully connected layer).
        stride: ``(rows, cols)`` the window moves per unit (the "jump"); None for whole-image fields.
        offset: ``(top, left)`` input coordinate where unit (0, 0)'s window starts; negative where it starts
            in the padding. None for whole-image fields.

    Example:
        >>> rf = ReceptiveField(size=(40, 40), stride=(4, 4), offset=(-18, -18))
        >>> rf.box(0, 0, (224, 224))
        (0, 0, 22, 22)
        >>> rf.box(0, 0, (224, 224), clip=False)
        (-18, -18, 22, 22)
    """

    size: Pair | None
    stride: Pair | None
    offset: Pair | None

    def __post_init__(self) -> None:
        given = [v is not None for v in (self.size, self.stride, self.offset)]
        if any(given) and not all(given):
            raise ReceptiveFieldError("give size, stride and offset together, or none of them for the whole image")
        if self.size is not None and self.stride is not None and self.offset is not None:
            size, stride, offset = (
                _pair(self.size, "size"),
                _pair(self.stride, "stride"),
                _pair(self.offset, "offset"),
            )
            if min(size) < 1 or min(stride) < 1:
                raise ReceptiveFieldError(f"size and stride must be positive, got size={size}, stride={stride}")
            object.__setattr__(self, "size", size)
            object.__setattr__(self, "stride", stride)
            object.__setattr__(self, "offset", offset)

    def __repr__(self) -> str:
        if self.whole_image:
            return "ReceptiveField(whole image)"
        return f"ReceptiveField(size={self.size}, stride={self.stride}, offset={self.offset})"

    @classmethod
    def identity(cls) -> ReceptiveField:
        """The field of the input itself: every pixel sees only itself."""
        return cls(size=(1, 1), stride=(1, 1), offset=(0, 0))

    @classmethod
    def whole(cls) -> ReceptiveField:
        """The field of a layer whose every unit sees the whole image."""
        return cls(size=None, stride=None, offset=None)

    @property
    def whole_image(self) -> bool:
        """True when every unit sees the whole image."""
        return self.size is None

    def box(self, row: int, col: int, image_size: Sequence[int], *, clip: bool = True) -> Box:
        """The input box ``(top, left, bottom, right)`` seen by unit ``(row, col)``; bottom and right exclusive.

        Args:
            row: the unit's row in the layer's feature map (0 for layers without a spatial map).
            col: the unit's column.
            image_size: ``(height, width)`` of the input image; a longer shape such as a batch's
                ``(N, C, H, W)`` uses its last two entries.
            clip: clip the box to the image (the default). Unclipped, the box may start before 0 or end past
                the image where the window reaches into the padding.

        Returns:
            ``(top, left, bottom, right)``; ``image[..., top:bottom, left:right]`` is the patch. For a
            whole-image field, the whole image. A clipped box of a unit that lies wholly in the padding is
            empty (``top == bottom`` or ``left == right``).

        Raises:
            ReceptiveFieldError: a negative or non-integer position, or an image size that is not two
                positive integers.
        """
        height, width = _image_size(image_size)
        row, col = _index(row, "row"), _index(col, "col")
        if self.size is None or self.stride is None or self.offset is None:
            return (0, 0, height, width)
        top = self.offset[0] + row * self.stride[0]
        left = self.offset[1] + col * self.stride[1]
        bottom, right = top + self.size[0], left + self.size[1]
        if not clip:
            return (top, left, bottom, right)
        top, bottom = min(max(top, 0), height), min(max(bottom, 0), height)
        left, right = min(max(left, 0), width), min(max(right, 0), width)
        return (top, left, max(bottom, top), max(right, left))

    def center(self, row: int, col: int, image_size: Sequence[int]) -> tuple[float, float]:
        """The ``(y, x)`` centre of unit ``(row, col)``'s unclipped window, in input pixel coordinates.

        Pixel ``i`` spans ``[i, i + 1)``, so the centre of a window ``[a, b)`` is ``(a + b) / 2``; for a
        whole-image field it is the image's centre.
        """
        top, left, bottom, right = self.box(row, col, image_size, clip=False)
        return ((top + bottom) / 2, (left + right) / 2)

    def crop(self, image: _Sliceable, row: int, col: int) -> _Sliceable:
        """The patch of ``image`` seen by unit ``(row, col)``: ``image[..., top:bottom, left:right]``.

        Args:
            image: a tensor or array whose last two dimensions are height and width (``(C, H, W)``,
                ``(N, C, H, W)`` or ``(H, W)``).
            row: the unit's row.
            col: the unit's column.

        Returns:
            The clipped patch, a view of ``image``.

        Raises:
            ReceptiveFieldError: ``image`` has fewer than two dimensions.
        """
        shape = getattr(image, "shape", None)
        if shape is None or len(shape) < 2:
            raise ReceptiveFieldError(
                f"crop needs a tensor or array with height and width as its last dimensions, got {type(image).__name__}"
            )
        top, left, bottom, right = self.box(row, col, tuple(shape))
        return image[..., top:bottom, left:right]  # type: ignore[index]

    def through(
        self,
        kernel: int | Sequence[int],
        stride: int | Sequence[int] | None = 1,
        padding: int | Sequence[int] | str = 0,
        dilation: int | Sequence[int] = 1,
    ) -> ReceptiveField:
        """The field after a sliding-window op (convolution, pooling) applied to a map with this field.

        Args:
            kernel: window size, int or ``(h, w)``.
            stride: window step; None means the kernel size (the pooling default).
            padding: zeros added before the first row and column (``"same"`` and ``"valid"`` as for
                ``nn.Conv2d``); padding after the last row or column does not move any window.
            dilation: spacing of the kernel's taps; the field is the enclosing box of the dilated window.

        Returns:
            The output's receptive field.

        Raises:
            ReceptiveFieldError: a parameter that is not an int, a pair of ints, or a known padding string.
        """
        if self.size is None or self.stride is None or self.offset is None:
            return self
        k = _pair(kernel, "kernel")
        s = k if stride is None or (not isinstance(stride, int) and len(stride) == 0) else _pair(stride, "stride")
        d = _pair(dilation, "dilation")
        if isinstance(padding, str):
            if padding == "valid":
                p: Pair = (0, 0)
            elif padding == "same":  # torch pads (total // 2) before, the rest after
                p = ((d[0] * (k[0] - 1)) // 2, (d[1] * (k[1] - 1)) // 2)
            else:
                raise ReceptiveFieldError(f"padding must be an int, a pair, 'same' or 'valid', got {padding!r}")
        else:
            p = _pair(padding, "padding")
        size = tuple(self.size[i] + d[i] * (k[i] - 1) * self.stride[i] for i in range(2))
        jump = tuple(self.stride[i] * s[i] for i in range(2))
        offset = tuple(self.offset[i] - p[i] * self.stride[i] for i in range(2))
        return ReceptiveField(size=(size[0], size[1]), stride=(jump[0], jump[1]), offset=(offset[0], offset[1]))

    @classmethod
    def enclosing(cls, fields: Iterable[ReceptiveField]) -> ReceptiveField:
        """The field of a unit that merges the same position of several maps: the box around their windows.

        Raises:
            ReceptiveFieldError: no fields, or maps whose windows move by different strides (their boxes are
                not a window sliding by one stride).
        """
        fields = list(fields)
        if not fields:
            raise ReceptiveFieldError("the enclosing field of no fields is undefined")
        if any(f.whole_image for f in fields):
            return cls.whole()
        spans = [_spans(f) for f in fields]
        strides = {stride for stride, _, _ in spans}
        if len(strides) > 1:
            raise ReceptiveFieldError(f"cannot merge maps whose units move by different strides {sorted(strides)}")
        start = [min(offset[i] for _, offset, _ in spans) for i in range(2)]
        end = [max(offset[i] + size[i] for _, offset, size in spans) for i in range(2)]
        return cls(size=(end[0] - start[0], end[1] - start[1]), stride=spans[0][0], offset=(start[0], start[1]))


def _spans(field: ReceptiveField) -> tuple[Pair, Pair, Pair]:
    """``(stride, offset, size)`` of a field that is not the whole image."""
    if field.size is None or field.stride is None or field.offset is None:
        raise ReceptiveFieldError("a whole-image field has no window")
    return field.stride, field.offset, field.size


def _index(value: Any, name: str) -> int:
    """A unit index: a non-negative integer (Python, NumPy or a 0-d integer tensor)."""
    try:
        index = operator.index(value) if not isinstance(value, bool) else -1
    except TypeError:
        index = -1
    if index < 0:
        raise ReceptiveFieldError(f"{name} must be a non-negative int (a unit's index), got {value!r}")
    return index


def _image_size(image_size: Sequence[int]) -> Pair:
    try:
        dims = [int(v) for v in tuple(image_size)[-2:]]
    except (TypeError, ValueError):
        dims = []
    if len(dims) != 2 or min(dims) < 1 or len(tuple(image_size)) < 2:
        raise ReceptiveFieldError(f"image_size must be (height, width) of positive ints, got {image_size!r}")
    return (dims[0], dims[1])


# ------------------------------------------------------------------------------------------------ registry


@dataclass
class GeometryContext:
    """What a geometry function knows about the op whose receptive field it computes.

    Attributes:
        name: the node's qualified name.
        module: the module for ``call_module`` nodes, else None.
        args: the op's positional arguments; inputs that depend on the image are replaced by their
            :class:`ReceptiveField`, parameters and buffers read from the model by their value, other
            computed values are left as ``torch.fx.Node``.
        kwargs: keyword arguments, likewise.
        inputs: the fields of the op's image-dependent inputs, in argument order.
        op: what the node calls: the module, the function, or the tensor method's name.
    """

    name: str
    module: nn.Module | None
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    inputs: list[ReceptiveField]
    op: Any = None
    shapes: Callable[[], tuple[list[tuple[int, ...] | None], tuple[int, ...] | None] | None] | None = None

    @property
    def input_shapes(self) -> list[tuple[int, ...] | None] | None:
        """The shapes of the op's image-dependent inputs in a probe forward pass, when one is available."""
        found = self.shapes() if self.shapes is not None else None
        return None if found is None else found[0]

    @property
    def output_shape(self) -> tuple[int, ...] | None:
        """The shape of the op's output in a probe forward pass, when one is available."""
        found = self.shapes() if self.shapes is not None else None
        return None if found is None else found[1]

    def bind(self, signature: Callable[..., Any]) -> dict[str, Any]:
        """Name the op's arguments by matching them to ``signature`` (defaults filled in)."""
        try:
            bound = inspect.signature(signature).bind(*self.args, **self.kwargs)
        except TypeError as exc:
            raise self.unsupported(f"its arguments do not match {signature.__name__}: {exc}") from None
        bound.apply_defaults()
        return dict(bound.arguments)

    def unsupported(self, why: str) -> UnknownGeometryError:
        """An error for a case this op's geometry cannot describe, naming the node."""
        return UnknownGeometryError(f"cannot compute the receptive field at node {self.name!r}: {why}")


Geometry = Callable[[GeometryContext], ReceptiveField]
"""Maps an op's context (with its inputs' fields) to the field of its output."""

GeometryKey = OpKey

GEOMETRIES = GeometryView()
"""Every op's receptive-field geometry."""


def register_geometry(target: GeometryKey, geometry: Geometry | None = None) -> Any:
    """Register how an op changes the receptive field: for a module class, a function, or a method name.

    Keys work as for :func:`deconvviz.register_rule`; a later registration replaces an earlier one, and a
    module class inherits the geometry of its nearest registered base class. Ready-made geometries live in
    ``deconvviz.ops.geometry``: ``pointwise`` (element-wise and channel-wise ops, and merges of branches),
    ``whole_image`` (every unit sees the whole image) and ``window(kernel, stride, padding, dilation)``
    (a sliding window with fixed parameters).

    Args:
        target: ``nn.Module`` subclass, function (``torch.cat``), or tensor method name (``"view"``).
        geometry: a function ``GeometryContext -> ReceptiveField``. Leave it out to use
            ``register_geometry`` as a decorator.

    Returns:
        The geometry (or, as a decorator, the decorated function).

    Example:
        >>> from deconvviz.ops.geometry import window
        >>> register_geometry(MyBlurPool, window(3, stride=2, padding=1))  # doctest: +SKIP
        >>> @register_geometry(MyConv)  # doctest: +SKIP
        ... def my_conv(ctx):
        ...     m = ctx.module
        ...     return ctx.inputs[0].through(m.kernel_size, m.stride, m.padding)
    """
    if geometry is None:

        def decorator(fn: Geometry) -> Geometry:
            register_geometry(target, fn)
            return fn

        return decorator
    if not callable(geometry):
        raise TypeError(f"a geometry must be a function GeometryContext -> ReceptiveField, got {geometry!r}")
    OPS.set_geometry(target, geometry)
    return geometry


def get_geometry(target: GeometryKey) -> Geometry | None:
    """The geometry registered for ``target``; for a module class, the nearest registered base class's."""
    return OPS.geometry(target)


def pointwise(ctx: GeometryContext) -> ReceptiveField:
    """Each output position depends on the same position of every input: the box around their windows."""
    try:
        return ReceptiveField.enclosing(ctx.inputs)
    except ReceptiveFieldError as exc:
        raise ctx.unsupported(str(exc)) from None


def whole_image(ctx: GeometryContext) -> ReceptiveField:
    """Every unit of the output sees the whole image (global pooling, flatten, fully connected layers)."""
    return ReceptiveField.whole()


def along_dims(ctx: GeometryContext) -> ReceptiveField:
    """An op over some dimensions (a reduction, a softmax): positions are kept when it leaves height and width alone.

    The dimensions are read from the module's ``dim`` or the call's second argument (``dim``). With the input's
    shape from a probe pass, positions are kept when no dimension reduced is one of the last two (height,
    width) nor the batch; without it only ``dim=1`` (the channels of an ``(N, C, H, W)`` map) counts.
    """
    module = ctx.module
    dim = getattr(module, "dim", None) if module is not None else None
    if module is None:
        dim = ctx.args[1] if len(ctx.args) > 1 else ctx.kwargs.get("dim")
    if isinstance(dim, ReceptiveField) or (dim is not None and not isinstance(dim, int | tuple | list)):
        return pointwise(ctx)  # torch.max(a, b): element-wise
    shapes = ctx.input_shapes
    if shapes and shapes[0] is not None and len(shapes[0]) >= 3:
        rank = len(shapes[0])
        items = list(range(rank)) if dim is None else [dim] if isinstance(dim, int) else list(dim)
        dims = {int(d) % rank for d in items}
        if dims and 0 not in dims and all(d < rank - 2 for d in dims):
            return pointwise(ctx)
        return ReceptiveField.whole()
    if dim == 1 or (isinstance(dim, tuple | list) and list(dim) == [1]):
        return pointwise(ctx)
    return ReceptiveField.whole()


def keeps_positions(ctx: GeometryContext) -> ReceptiveField:
    """A reshape: positions are kept when the last two dimensions (height, width) stay as they are.

    ``(N, C, H, W) -> (N, r, C / r, H, W)`` (split attention's radix) and back keep every position; a flatten
    or a view that merges height and width makes every unit see the whole image. Without a probe pass's
    shapes, the whole image.
    """
    shapes, out = ctx.input_shapes, ctx.output_shape
    if shapes and shapes[0] is not None and out is not None:
        source = shapes[0]
        if len(source) >= 4 and len(out) >= 4 and source[0] == out[0] and source[-2:] == out[-2:]:
            return pointwise(ctx)
    return ReceptiveField.whole()


def window(
    kernel: int | Sequence[int],
    stride: int | Sequence[int] | None = None,
    padding: int | Sequence[int] | str = 0,
    dilation: int | Sequence[int] = 1,
) -> Geometry:
    """A geometry for a sliding-window op with fixed parameters (stride None means the kernel size)."""

    def geometry(ctx: GeometryContext) -> ReceptiveField:
        return single(ctx).through(kernel, stride, padding, dilation)

    return geometry


def single(ctx: GeometryContext) -> ReceptiveField:
    """The field of an op's one image-dependent input (an error if it has several)."""
    if len(ctx.inputs) != 1:
        raise ctx.unsupported(f"expected one input that depends on the image, found {len(ctx.inputs)}")
    return ctx.inputs[0]


def register_all(targets: Iterable[OpKey], geometry: Geometry) -> None:
    """Register ``geometry`` for every target."""
    for target in targets:
        OPS.set_geometry(target, geometry)
