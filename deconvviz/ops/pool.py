"""Pooling: max-pooling unpools through its switches; average pooling spreads the signal (its adjoint)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from typing_extensions import override

from deconvviz.core.capture import Call
from deconvviz.errors import UnsupportedOpError
from deconvviz.ops.base import MirrorContext, Rule, first_tensor_arg
from deconvviz.ops.geometry import GeometryContext, ReceptiveField, single, whole_image
from deconvviz.ops.registry import define
from deconvviz.ops.window import WindowError, avg_pool_window, max_pool_window, register_window, window_of


def unpool(signal: Tensor, switches: Tensor, input_size: Sequence[int]) -> Tensor:
    """Undo max-pooling: send each pooled value to its recorded argmax, **summing** where windows overlap.

    Overlapping windows (3x3 pooling with stride 2, as in AlexNet and SqueezeNet) may pick the same input
    location; their signals add up, as the pooling's adjoint requires. ``F.max_unpool2d`` overwrites instead.

    Args:
        signal: ``(K, C, H_out, W_out)`` signal at the pooling output.
        switches: ``(K, C, H_out, W_out)`` argmax indices into each input plane (flattened ``H * W``).
        input_size: ``(H, W)`` of the pooling input.

    Returns:
        ``(K, C, H, W)``.
    """
    k, c = signal.shape[:2]
    height, width = int(input_size[0]), int(input_size[1])
    out = signal.new_zeros(k, c, height * width)
    out.scatter_add_(2, switches.reshape(k, c, -1), signal.reshape(k, c, -1))
    return out.view(k, c, height, width)


class MaxPool2dRule(Rule):
    """Max-pooling records its switches during capture and mirrors to unpooling with them."""

    op_kind = "unpool"

    @override
    def run(self, call: Call) -> Any:
        return call.run()  # no switches needed

    @override
    def forward(self, call: Call) -> tuple[Any, Any]:
        window = window_of(call.module if call.module is not None else call.fn, call.args, call.kwargs)
        assert window is not None
        if window.return_indices:
            raise UnsupportedOpError(
                f"cannot mirror node {call.name!r}: max-pooling with return_indices=True is not supported"
            )
        padding = window.before
        if window.pads != ((padding[0], padding[0]), (padding[1], padding[1])):
            raise UnsupportedOpError(f"cannot mirror node {call.name!r}: max-pooling with uneven padding")
        return F.max_pool2d(
            first_tensor_arg(call),
            window.kernel,
            window.stride,
            padding,
            window.dilation,
            ceil_mode=window.ceil_mode,
            return_indices=True,
        )

    @override
    def mirror(self, ctx: MirrorContext, signal: Tensor) -> Sequence[Tensor | None]:
        return [unpool(signal, ctx.per_seed(ctx.saved), ctx.inputs[0].shape[-2:])]


class AdaptiveMaxPool2dRule(MaxPool2dRule):
    """Adaptive max-pooling: switches recorded, mirrored by unpooling like :class:`MaxPool2dRule`."""

    @override
    def forward(self, call: Call) -> tuple[Any, Any]:
        module = call.module
        if isinstance(module, nn.AdaptiveMaxPool2d):
            if module.return_indices:
                raise UnsupportedOpError(
                    f"cannot mirror node {call.name!r}: AdaptiveMaxPool2d(return_indices=True) is not supported"
                )
            size: Any = module.output_size
        else:
            size = call.args[1] if len(call.args) > 1 else call.kwargs["output_size"]
        x = first_tensor_arg(call)
        # ``None`` in an output size keeps that input dimension.
        sizes = [size, size] if isinstance(size, int) or size is None else list(size)
        resolved = [int(x.shape[-2 + i]) if s is None else int(s) for i, s in enumerate(sizes)]
        out, switches = F.adaptive_max_pool2d(x, resolved, return_indices=True)
        return out, switches


def _adaptive_pool_matrix(out_size: int, in_size: int, like: Tensor) -> Tensor:
    """Row ``i`` averages input cells ``floor(i*n/m) .. ceil((i+1)*n/m) - 1``, as adaptive pooling does."""
    matrix = like.new_zeros(out_size, in_size)
    for i in range(out_size):
        start = (i * in_size) // out_size
        end = -((-(i + 1) * in_size) // out_size)
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix


class AdaptiveAvgPool2dRule(Rule):
    """Adaptive average pooling mirrors to its adjoint: each output spreads evenly over its window."""

    op_kind = "spread"

    @override
    def mirror(self, ctx: MirrorContext, signal: Tensor) -> Sequence[Tensor | None]:
        in_h, in_w = ctx.inputs[0].shape[-2:]
        out_h, out_w = signal.shape[-2:]
        rows = _adaptive_pool_matrix(out_h, in_h, signal)
        cols = _adaptive_pool_matrix(out_w, in_w, signal)
        return [rows.t() @ signal @ cols]


class AvgPool2dRule(Rule):
    """Average pooling mirrors to its adjoint: each output spreads evenly over its window."""

    op_kind = "spread"

    @override
    def mirror(self, ctx: MirrorContext, signal: Tensor) -> Sequence[Tensor | None]:
        window = window_of(ctx.op, ctx.args, ctx.kwargs)
        assert window is not None
        # The pooling's adjoint is aten's own kernel for it; an empty expanded tensor stands in for the input.
        shape = ctx.input_shape(0)
        like = signal.new_empty(()).expand(shape)
        grad = torch.ops.aten.avg_pool2d_backward(
            signal,
            like,
            list(window.kernel),
            list(window.stride),
            list(window.before),
            window.ceil_mode,
            window.count_include_pad,
            window.divisor_override,
        )
        return [grad]


def _windowed(ctx: GeometryContext) -> ReceptiveField:
    # ceil_mode only adds a last window that overhangs the input; the box is clipped to the image anyway.
    try:
        window = window_of(ctx.op, ctx.args, ctx.kwargs)
    except WindowError as exc:
        raise ctx.unsupported(str(exc)) from None
    assert window is not None
    return single(ctx).through(window.kernel, window.stride, window.before, window.dilation)


MAX_POOL: list[Any] = [nn.MaxPool2d, F.max_pool2d, torch.max_pool2d]
AVG_POOL: list[Any] = [nn.AvgPool2d, F.avg_pool2d]
define(MAX_POOL, MaxPool2dRule(), geometry=_windowed)
register_window(MAX_POOL, max_pool_window)
define([nn.AdaptiveMaxPool2d, F.adaptive_max_pool2d], AdaptiveMaxPool2dRule(), geometry=whole_image)
define([nn.AdaptiveAvgPool2d, F.adaptive_avg_pool2d], AdaptiveAvgPool2dRule(), geometry=whole_image)
define(AVG_POOL, AvgPool2dRule(), geometry=_windowed)
register_window(AVG_POOL, avg_pool_window)
