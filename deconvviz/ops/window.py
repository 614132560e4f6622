"""The one description of a sliding-window op: kernel, stride, padding and dilation, read once per node.

Convolutions and pooling are written as modules (``nn.Conv2d``) or as calls (``F.conv2d(x, w, stride=2)``);
each registers a *window reader* in the op registry that turns either form into a :class:`Window`. The
receptive-field geometry, the pooling and convolution mirrors and incremental re-inference all read that
one description, so the three cannot disagree about an op's parameters.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from deconvviz.errors import UnsupportedOpError
from deconvviz.ops.registry import OPS, OpKey
from deconvviz.ops.signatures import avg_pool2d, conv2d, max_pool2d

Pair = tuple[int, int]


class WindowError(UnsupportedOpError):
    """A sliding-window op whose parameters cannot be read (a kernel computed in forward, an odd padding)."""


@dataclass(frozen=True)
class Window:
    """A sliding-window op (convolution, max or average pooling) as every reader sees it.

    Attributes:
        kind: ``"conv"``, ``"max"`` or ``"avg"``.
        kernel: ``(kh, kw)``.
        stride: ``(sh, sw)``; a pooling's default stride (the kernel) filled in.
        pads: ``((top, bottom), (left, right))`` zeros added around the input (``"same"`` resolved).
        dilation: ``(dh, dw)``.
        weight: the convolution's filters (None for pooling).
        bias: the convolution's bias, if any.
        groups: the convolution's groups.
        padding_mode: a convolution module's padding mode (``"zeros"`` for every other op).
        ceil_mode: the pooling's ceil mode.
        count_include_pad: average pooling counts the padding in each window's divisor.
        divisor_override: average pooling's fixed divisor, if any.
        return_indices: max pooling returns its switches as a second output.
    """

    kind: str
    kernel: Pair
    stride: Pair
    pads: tuple[Pair, Pair]
    dilation: Pair = (1, 1)
    weight: Tensor | None = None
    bias: Tensor | None = None
    groups: int = 1
    padding_mode: str = "zeros"
    ceil_mode: bool = False
    count_include_pad: bool = True
    divisor_override: int | None = None
    return_indices: bool = False

    @property
    def before(self) -> Pair:
        """Padding before the first row and the first column (the only padding that moves a window)."""
        return (self.pads[0][0], self.pads[1][0])

    @property
    def symmetric(self) -> bool:
        """Whether each dimension is padded equally on both sides."""
        return all(p[0] == p[1] for p in self.pads)

    def span(self, i: int) -> int:
        """Input rows (``i=0``) or columns (``i=1``) one output unit reads."""
        return self.dilation[i] * (self.kernel[i] - 1) + 1


WindowReader = Callable[[Any, tuple[Any, ...], dict[str, Any]], Window]
"""``(op, args, kwargs) -> Window``: ``op`` is the module or the function a node calls."""


def pair(value: Any) -> Pair:
    """``3 -> (3, 3)``; a pair (or a one-element sequence) stays a pair."""
    if isinstance(value, int):
        return (value, value)
    items = tuple(value)
    if len(items) == 1:
        return (int(items[0]), int(items[0]))
    a, b = items
    return (int(a), int(b))


def resolve_pads(padding: Any, kernel: Pair, dilation: Pair) -> tuple[Pair, Pair]:
    """``((top, bottom), (left, right))`` for a padding given as an int, a pair, ``"valid"`` or ``"same"``."""
    if padding == "valid":
        return ((0, 0), (0, 0))
    if padding == "same":  # torch pads (total // 2) before, the rest after
        totals = [dilation[i] * (kernel[i] - 1) for i in range(2)]
        return ((totals[0] // 2, totals[0] - totals[0] // 2), (totals[1] // 2, totals[1] - totals[1] // 2))
    if isinstance(padding, str):
        raise WindowError(f"padding must be an int, a pair, 'same' or 'valid', got {padding!r}")
    ph, pw = pair(padding)
    return ((ph, ph), (pw, pw))


_signature = functools.cache(inspect.signature)
"""The signature of one of :mod:`deconvviz.ops.signatures`' functions, read once (windows are read on every pass)."""


def _bind(signature: Callable[..., Any], args: Sequence[Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    try:
        bound = _signature(signature).bind(*args, **kwargs)
    except TypeError as exc:
        raise WindowError(f"its arguments do not match {signature.__name__}: {exc}") from None
    bound.apply_defaults()
    return dict(bound.arguments)


def _arguments(
    op: Any, module: type[nn.Module], signature: Callable[..., Any], args: Sequence[Any], kwargs: dict[str, Any]
) -> dict[str, Any]:
    """An op's arguments by the names of its functional ``signature``.

    A module's are its attributes of those names (``nn.Conv2d`` and the pooling modules keep each one); a call's
    are its arguments bound to the signature.
    """
    if isinstance(op, module):
        return {name: getattr(op, name) for name in list(_signature(signature).parameters)[1:]}
    return _bind(signature, args, kwargs)


def _pool_stride(stride: Any, kernel: Pair) -> Pair:
    return kernel if stride is None or (not isinstance(stride, int) and len(stride) == 0) else pair(stride)


def conv_window(op: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Window:
    """The window of ``nn.Conv2d`` or ``F.conv2d``."""
    a = _arguments(op, nn.Conv2d, conv2d, args, kwargs)
    weight, bias, stride, padding, dilation, groups = (
        a[name] for name in ("weight", "bias", "stride", "padding", "dilation", "groups")
    )
    mode = op.padding_mode if isinstance(op, nn.Conv2d) else "zeros"
    if not isinstance(weight, Tensor) or weight.dim() != 4:
        raise WindowError(
            "the kernel size of a convolution is read from a 4-D weight parameter; this one is computed in forward"
        )
    kernel = (int(weight.shape[-2]), int(weight.shape[-1]))
    d = pair(dilation)
    return Window(
        "conv",
        kernel,
        pair(stride),
        resolve_pads(padding, kernel, d),
        d,
        weight=weight,
        bias=bias if isinstance(bias, Tensor) else None,
        groups=int(groups),
        padding_mode=mode,
    )


def max_pool_window(op: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Window:
    """The window of ``nn.MaxPool2d`` or ``F.max_pool2d``."""
    a = _arguments(op, nn.MaxPool2d, max_pool2d, args, kwargs)
    kernel, d = pair(a["kernel_size"]), pair(a["dilation"])
    return Window(
        "max",
        kernel,
        _pool_stride(a["stride"], kernel),
        resolve_pads(a["padding"], kernel, d),
        d,
        ceil_mode=bool(a["ceil_mode"]),
        return_indices=bool(a["return_indices"]),
    )


def avg_pool_window(op: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Window:
    """The window of ``nn.AvgPool2d`` or ``F.avg_pool2d``."""
    a = _arguments(op, nn.AvgPool2d, avg_pool2d, args, kwargs)
    kernel = pair(a["kernel_size"])
    return Window(
        "avg",
        kernel,
        _pool_stride(a["stride"], kernel),
        resolve_pads(a["padding"], kernel, (1, 1)),
        ceil_mode=bool(a["ceil_mode"]),
        count_include_pad=bool(a["count_include_pad"]),
        divisor_override=a["divisor_override"],
    )


def register_window(targets: Sequence[OpKey], reader: WindowReader) -> None:
    """Register how to read the window of each of ``targets`` (module classes or functions)."""
    for target in targets:
        OPS.set_window(target, reader)


def window_of(op: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Window | None:
    """The :class:`Window` of a call, or None when the op is not a registered sliding-window op.

    Args:
        op: the module or the function a node calls (a tensor method name has no window).
        args: its positional arguments (the input may be a stand-in: only the other arguments are read).
        kwargs: its keyword arguments.

    Raises:
        WindowError: a window op whose parameters cannot be read.
    """
    reader = OPS.window(type(op) if isinstance(op, nn.Module) else op)
    return None if reader is None else reader(op, args, kwargs)


__all__ = [
    "Window",
    "WindowError",
    "WindowReader",
    "avg_pool_window",
    "conv_window",
    "max_pool_window",
    "pair",
    "register_window",
    "resolve_pads",
    "window_of",
]
