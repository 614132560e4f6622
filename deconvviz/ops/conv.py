"""Convolutions and fully connected layers: mirrored by their transpose with the same weights (no bias)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from typing_extensions import override

from deconvviz.ops.base import MirrorContext, Rule
from deconvviz.ops.geometry import GeometryContext, ReceptiveField, pointwise, single
from deconvviz.ops.registry import define
from deconvviz.ops.signatures import conv_transpose2d, linear
from deconvviz.ops.window import Window, WindowError, conv_window, register_window, window_of


class Conv2dRule(Rule):
    """A convolution mirrors to the transposed convolution with the same weights and no bias.

    The output size is made exactly the forward input size (``output_padding`` covers the rows and columns
    a strided convolution drops), and ``padding="same"``, dilation and groups are handled.
    """

    op_kind = "transposed convolution"

    @override
    def mirror(self, ctx: MirrorContext, signal: Tensor) -> Sequence[Tensor | None]:
        try:
            window = window_of(ctx.op, ctx.args, ctx.kwargs)
        except WindowError as exc:
            raise ctx.unsupported(str(exc)) from None
        assert window is not None
        assert window.weight is not None
        if window.padding_mode != "zeros":
            raise ctx.unsupported(f"Conv2d with padding_mode={window.padding_mode!r} (only 'zeros' has a mirror rule)")
        if len(ctx.inputs[0].shape) != 4:
            raise ctx.unsupported("only batched 2-D convolutions (N, C, H, W) are supported")
        return [transpose_window(signal, window, ctx.inputs[0].shape[-2:])]


_CROP_BELOW = 0.75
"""Filter only the non-zero box of a signal when it covers at most this fraction of the map."""


def _support(signal: Tensor) -> tuple[int, int, int, int] | None:
    """``(top, bottom, left, right)`` of the smallest box holding every non-zero of ``(K, C, H, W)``; None if none."""
    mask = signal.abs().amax(dim=(0, 1)) > 0
    rows, cols = mask.any(dim=1), mask.any(dim=0)
    height, width = rows.numel(), cols.numel()
    r = torch.arange(height, device=mask.device)
    c = torch.arange(width, device=mask.device)
    # the four ends in one tensor, read in one transfer: on a GPU each read of a value waits for the device
    ends = torch.stack(
        [
            torch.where(rows, r, height).amin(),
            torch.where(rows, r, -1).amax(),
            torch.where(cols, c, width).amin(),
            torch.where(cols, c, -1).amax(),
        ]
    )
    top, bottom, left, right = (int(v) for v in ends.tolist())
    return None if bottom < 0 else (top, bottom + 1, left, right + 1)


def conv2d_transpose(
    signal: Tensor,
    weight: Tensor,
    input_size: Sequence[int],
    stride: Any,
    padding: Any,
    dilation: Any,
    groups: int,
) -> Tensor:
    """Filter ``signal`` with the transpose of the convolution ``weight`` (no bias); see :func:`transpose_window`.

    Args:
        signal: ``(K, C_out, H_out, W_out)``.
        weight: ``(C_out, C_in / groups, kH, kW)``, the forward filters.
        input_size: ``(H, W)`` of the forward input; the result has exactly this size.
        stride: forward stride.
        padding: forward padding: int, pair, ``"valid"`` or ``"same"``.
        dilation: forward dilation.
        groups: forward groups.

    Returns:
        ``(K, C_in, H, W)``.
    """
    options = {"stride": stride, "padding": padding, "dilation": dilation, "groups": groups}
    window = conv_window(F.conv2d, (None, weight), options)
    return transpose_window(signal, window, input_size)


def transpose_window(signal: Tensor, window: Window, input_size: Sequence[int]) -> Tensor:
    """Filter ``signal`` with the transpose of the convolution ``window`` describes (its weight, no bias).

    Args:
        signal: ``(K, C_out, H_out, W_out)``.
        window: the forward convolution (filters ``(C_out, C_in / groups, kH, kW)``, stride, padding, dilation,
            groups).
        input_size: ``(H, W)`` of the forward input; the result has exactly this size.

    Returns:
        ``(K, C_in, H, W)``.

    A projected unit's signal is zero outside its cone (its receptive field seen from this layer); when the
    non-zero box is small enough, only that box is filtered, which gives the same result for less work.
    """
    assert window.weight is not None
    stride, dilation, groups, kernel, pads = window.stride, window.dilation, window.groups, window.kernel, window.pads
    height, width = int(input_size[0]), int(input_size[1])
    weight = window.weight
    weight = weight.to(signal.dtype)
    support = _support(signal)
    if support is None:  # nothing to filter
        return signal.new_zeros((signal.shape[0], weight.shape[1] * groups, height, width))
    r0, r1, c0, c1 = support
    if (r1 - r0) * (c1 - c0) <= _CROP_BELOW * signal.shape[2] * signal.shape[3]:
        # The signal is zero outside a box (a unit's cone below it): filter only that box and place the result.
        part = F.conv_transpose2d(signal[..., r0:r1, c0:c1], weight, stride=stride, groups=groups, dilation=dilation)
        top, left = r0 * stride[0] - pads[0][0], c0 * stride[1] - pads[1][0]
        out = signal.new_zeros((signal.shape[0], part.shape[1], height, width))
        y0, x0 = max(top, 0), max(left, 0)
        y1, x1 = min(top + part.shape[2], height), min(left + part.shape[3], width)
        if y1 > y0 and x1 > x0:
            out[..., y0:y1, x0:x1] = part[..., y0 - top : y1 - top, x0 - left : x1 - left]
        return out
    sizes = (height, width)
    covered = [
        (signal.shape[2 + i] - 1) * stride[i] + dilation[i] * (kernel[i] - 1) + 1 for i in range(2)
    ]  # padded-input rows/cols the forward windows touched
    extra = [sizes[i] + pads[i][0] + pads[i][1] - covered[i] for i in range(2)]
    if window.symmetric and all(0 <= extra[i] < max(stride[i], dilation[i]) for i in range(2)):
        return F.conv_transpose2d(
            signal,
            weight,
            stride=stride,
            padding=(pads[0][0], pads[1][0]),
            output_padding=(extra[0], extra[1]),
            groups=groups,
            dilation=dilation,
        )
    # General case: transpose without padding, then cut the padding off (and zero-fill dropped rows).
    full = F.conv_transpose2d(signal, weight, stride=stride, groups=groups, dilation=dilation)
    full = F.pad(full, (0, max(extra[1], 0), 0, max(extra[0], 0)))
    return full[..., pads[0][0] : pads[0][0] + height, pads[1][0] : pads[1][0] + width]


class LinearRule(Rule):
    """A fully connected layer mirrors to multiplication by its transposed weight (no bias)."""

    op_kind = "transposed linear"

    @override
    def mirror(self, ctx: MirrorContext, signal: Tensor) -> Sequence[Tensor | None]:
        weight = ctx.module.weight if isinstance(ctx.module, nn.Linear) else ctx.bind(linear)["weight"]
        if not isinstance(weight, Tensor):
            raise ctx.unsupported("the layer's weight depends on the input")
        return [signal @ weight.to(signal.dtype)]


def _conv2d(ctx: GeometryContext) -> ReceptiveField:
    try:
        window = window_of(ctx.op, ctx.args, ctx.kwargs)
    except WindowError as exc:
        raise ctx.unsupported(f"{exc}; register a geometry for the op with deconvviz.register_geometry") from None
    assert window is not None
    if window.padding_mode != "zeros":
        # Reflected or replicated samples stay inside a window only while the padding on each side is at most
        # half the dilated kernel; circular padding brings in the far side of the image.
        spans = [window.span(i) - 1 for i in range(2)]
        if window.padding_mode == "circular" or any(2 * max(window.pads[i]) > spans[i] for i in range(2)):
            raise ctx.unsupported(
                f"Conv2d with padding_mode={window.padding_mode!r} and padding {window.pads!r} reads pixels outside "
                "its window; register a geometry for it with deconvviz.register_geometry"
            )
    return single(ctx).through(window.kernel, window.stride, window.before, window.dilation)


define([nn.Conv2d, F.conv2d, torch.conv2d], Conv2dRule(), geometry=_conv2d)
register_window([nn.Conv2d, F.conv2d, torch.conv2d], conv_window)


class ConvTranspose2dRule(Rule):
    """A transposed convolution (an upsampling layer) mirrors to the convolution with the same weights."""

    op_kind = "convolution"

    @override
    def mirror(self, ctx: MirrorContext, signal: Tensor) -> Sequence[Tensor | None]:
        module = ctx.module
        if isinstance(module, nn.ConvTranspose2d):
            if module.padding_mode != "zeros":
                raise ctx.unsupported(f"ConvTranspose2d with padding_mode={module.padding_mode!r}")
            weight, stride, padding = module.weight, module.stride, module.padding
            dilation, groups = module.dilation, module.groups
        else:
            a = ctx.bind(conv_transpose2d)
            weight, stride, padding, dilation, groups = (
                a["weight"],
                a["stride"],
                a["padding"],
                a["dilation"],
                a["groups"],
            )
        if not isinstance(weight, Tensor):
            raise ctx.unsupported("the transposed convolution's weight depends on the input")
        out = F.conv2d(signal, weight.to(signal.dtype), None, stride, padding, dilation, groups)
        height, width = ctx.inputs[0].shape[-2:]
        return [out[..., :height, :width]]


# A fully connected layer keeps positions when it acts on channels-last maps (ConvNeXt); after a flatten or a
# global pooling its input already sees the whole image.
define([nn.Linear, F.linear], LinearRule(), geometry=pointwise)
define([nn.ConvTranspose2d, F.conv_transpose2d], ConvTranspose2dRule())
