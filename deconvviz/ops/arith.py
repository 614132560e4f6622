"""Arithmetic: sums mirror to copies, scaling by constants to the same scaling, means to spreading."""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from typing_extensions import override

from deconvviz.core.capture import Call, TensorMeta
from deconvviz.ops.base import MirrorContext, Rule, reduce_to
from deconvviz.ops.geometry import along_dims, pointwise
from deconvviz.ops.registry import define


class AddRule(Rule):
    """Addition (and subtraction) mirrors the signal to every summand (negated for the subtrahend)."""

    op_kind = "add"

    def __init__(self, sign: float = 1.0) -> None:
        self.sign = sign

    @override
    def forward(self, call: Call) -> tuple[Any, Any]:
        # Out of place, so an in-place ``+=`` or ``add_`` in the model cannot overwrite a captured activation.
        a, b = call.args[0], call.args[1] if len(call.args) > 1 else call.kwargs["other"]
        alpha = call.kwargs.get("alpha", 1)
        if alpha != 1:
            b = b * alpha
        return (a + b if self.sign > 0 else a - b), None

    @override
    def mirror(self, ctx: MirrorContext, signal: Tensor) -> Sequence[Tensor | None]:
        operands = [ctx.args[0], ctx.args[1] if len(ctx.args) > 1 else ctx.kwargs["other"]]
        scale = [1.0, self.sign * ctx.kwargs.get("alpha", 1)]
        out: list[Tensor | None] = []
        for operand, s in zip(operands, scale, strict=True):
            if isinstance(operand, TensorMeta):
                reduced = reduce_to(signal, operand.shape)
                out.append(reduced if s == 1 else reduced * s)
        return out


class ScaleRule(Rule):
    """Multiplication or division by something that does not depend on the input: a linear scale.

    A product of two input-dependent tensors (a gate ``x * sigmoid(z)``, squeeze-and-excitation) mirrors by
    the product rule, each factor's signal scaled by the other's forward value. Under deconvnet and guided
    backpropagation the gate's own branch then stops at the gate's activation, which holds it (see
    :mod:`deconvviz.ops.activation`), so the feature path alone carries the reconstruction.
    """

    op_kind = "scale"

    def __init__(self, divide: bool = False) -> None:
        self.divide = divide

    @override
    def needs_values(self, carried: int) -> bool:
        return carried > 1 and not self.divide

    @override
    def forward(self, call: Call) -> tuple[Any, Any]:
        # Out of place, so ``mul_`` in the model (timm's layer scale) cannot overwrite a captured activation.
        a, b = call.args[0], call.args[1] if len(call.args) > 1 else call.kwargs["other"]
        return (a / b if self.divide else a * b), None

    @override
    def mirror(self, ctx: MirrorContext, signal: Tensor) -> Sequence[Tensor | None]:
        a, b = ctx.args[0], ctx.args[1] if len(ctx.args) > 1 else ctx.kwargs["other"]
        if isinstance(a, TensorMeta) and isinstance(b, TensorMeta) and not self.divide:
            return [reduce_to(signal * ctx.value(1), a.shape), reduce_to(signal * ctx.value(0), b.shape)]
        if self.divide and isinstance(b, TensorMeta):
            raise ctx.unsupported("division by an input-dependent tensor is not linear")
        meta, factor = (a, b) if isinstance(a, TensorMeta) else (b, a)
        scaled = signal / factor if self.divide else signal * factor
        return [reduce_to(scaled, meta.shape)]


class MeanRule(Rule):
    """A mean (or sum) over dimensions mirrors to spreading the signal evenly back over them."""

    op_kind = "spread"

    def __init__(self, average: bool = True) -> None:
        self.average = average

    @override
    def mirror(self, ctx: MirrorContext, signal: Tensor) -> Sequence[Tensor | None]:
        shape = ctx.input_shape(0)
        dim = ctx.args[1] if len(ctx.args) > 1 else ctx.kwargs.get("dim")
        keepdim = ctx.args[2] if len(ctx.args) > 2 else ctx.kwargs.get("keepdim", False)
        dims = list(range(len(shape))) if dim is None else [dim] if isinstance(dim, int) else list(dim)
        dims = sorted(d % len(shape) for d in dims)
        if 0 in dims:
            raise ctx.unsupported("a reduction over the batch dimension")
        if not keepdim:
            for d in dims:
                signal = signal.unsqueeze(d)
        count = 1
        for d in dims:
            count *= shape[d]
        spread = signal.expand(shape)
        return [spread / count if self.average else spread.clone()]


define([operator.add, operator.iadd, torch.add, "add", "add_"], AddRule(), geometry=pointwise)
define([operator.sub, operator.isub, torch.sub, "sub", "sub_"], AddRule(sign=-1.0), geometry=pointwise)
define([operator.mul, operator.imul, torch.mul, "mul", "mul_"], ScaleRule(), geometry=pointwise)
define([operator.truediv, operator.itruediv, torch.div, "div", "div_"], ScaleRule(divide=True), geometry=pointwise)
define([torch.mean, "mean"], MeanRule(), geometry=along_dims)
define([torch.sum, "sum"], MeanRule(average=False), geometry=along_dims)
