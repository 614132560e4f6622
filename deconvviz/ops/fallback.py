"""The mirror of an opaque submodule without a rule of its own: autograd over that submodule alone.

A submodule that torch.fx could not trace into (data-dependent control flow), or a ``torch.nn`` module
deconvviz has no rule for, is one node of the graph. Its mirror is the vector-Jacobian product of the
submodule at the seed's forward input, worked out by autograd, with the chosen method's rules applied
inside it: under deconvnet and guided backpropagation every rectifying activation the submodule calls
passes ``relu(g)`` (times ``f'(x)`` for guided), gates (sigmoid, hard sigmoid) are held at their forward
values and layer/group/instance norm statistics are held, exactly as the traced rules do. Under the
gradient it is plain autograd. The result is the one a full trace would give.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode
from typing_extensions import override

from deconvviz.core.capture import Call
from deconvviz.ops.base import MirrorContext, Rule, local_vjp


class _Rectified(torch.autograd.Function):
    """An activation whose backward is deconvnet's ``relu(g)`` or guided's ``relu(g) * f'(x)``."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, fn: Callable[[Tensor], Tensor], guided: bool) -> Tensor:
        ctx.fn, ctx.guided = fn, guided
        ctx.save_for_backward(x)
        return fn(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        (x,) = ctx.saved_tensors
        out = torch.relu(grad)
        if ctx.guided:
            with torch.enable_grad():
                leaf = x.detach().requires_grad_(True)
                y = ctx.fn(leaf)
                (slope,) = torch.autograd.grad(y, leaf, torch.ones_like(y))
            out = out * slope
        return out, None, None


RECTIFYING: frozenset[Any] = frozenset(
    {
        F.relu,
        F.relu_,
        torch.relu,
        torch.relu_,
        Tensor.relu,
        Tensor.relu_,
        F.relu6,
        F.hardtanh,
        F.hardtanh_,
        F.leaky_relu,
        F.leaky_relu_,
        F.prelu,
        torch.prelu,
        F.elu,
        F.elu_,
        F.selu,
        torch.selu,
        torch.selu_,
        F.celu,
        torch.celu,
        F.gelu,
        F.silu,
        F.mish,
        F.hardswish,
        F.softplus,
    }
)
"""Functions the rectifier rule applies to (modules such as ``nn.SiLU`` call them)."""

GATING: frozenset[Any] = frozenset(
    {torch.sigmoid, torch.sigmoid_, F.sigmoid, Tensor.sigmoid, Tensor.sigmoid_, F.hardsigmoid}
)
"""Functions whose output is held as a gate under deconvnet and guided."""


def _held_norm(func: Any, args: Sequence[Any], kwargs: dict[str, Any]) -> Tensor:
    """Layer, group or instance norm with its statistics detached (the forward value is unchanged)."""

    def arg(i: int, name: str, default: Any = None) -> Any:
        return args[i] if len(args) > i else kwargs.get(name, default)

    x = args[0]
    if func is F.layer_norm:
        shape = arg(1, "normalized_shape")
        count = 1 if isinstance(shape, int) else len(shape)
        dims = tuple(range(x.dim() - count, x.dim()))
        weight, bias, eps = arg(2, "weight"), arg(3, "bias"), arg(4, "eps", 1e-5)
        grouped = x
    elif func is F.group_norm:
        groups, weight, bias, eps = arg(1, "num_groups"), arg(2, "weight"), arg(3, "bias"), arg(4, "eps", 1e-5)
        grouped = x.reshape(x.shape[0], groups, -1)
        dims = (2,)
    else:  # instance norm with the sample's own statistics
        if not arg(5, "use_input_stats", True):
            return func(*args, **kwargs)
        weight, bias, eps = arg(3, "weight"), arg(4, "bias"), arg(7, "eps", 1e-5)
        grouped = x.reshape(*x.shape[:2], -1)
        dims = (2,)
    mean = grouped.mean(dim=dims, keepdim=True).detach()
    var = grouped.var(dim=dims, unbiased=False, keepdim=True).detach()
    out = ((grouped - mean) * torch.rsqrt(var + eps)).reshape(x.shape)
    if func is F.layer_norm:
        return (
            out * weight + bias
            if weight is not None and bias is not None
            else (out * weight if weight is not None else out + bias if bias is not None else out)
        )
    channels = (1, -1) + (1,) * (x.dim() - 2)
    if weight is not None:
        out = out * weight.reshape(channels)
    if bias is not None:
        out = out + bias.reshape(channels)
    return out


class MethodMode(TorchFunctionMode):
    """Apply deconvnet's or guided backpropagation's rules to the functions a submodule calls.

    Args:
        guided: guided backpropagation (``relu(g) * f'(x)``) instead of deconvnet (``relu(g)``).
    """

    def __init__(self, guided: bool) -> None:
        super().__init__()
        self.guided = guided

    def __torch_function__(
        self, func: Any, types: Any, args: Sequence[Any] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = kwargs or {}
        if func in RECTIFYING and args and isinstance(args[0], Tensor):
            rest = tuple(args[1:])

            def fn(t: Tensor) -> Tensor:
                return func(t.clone(), *rest, **kwargs)

            return _Rectified.apply(args[0], fn, self.guided)
        if func in GATING:
            return func(*args, **kwargs).detach()
        if func in (F.layer_norm, F.group_norm, F.instance_norm):
            return _held_norm(func, args, kwargs)
        return func(*args, **kwargs)


class FallbackRule(Rule):
    """Autograd over an opaque submodule, with the method's rules applied inside it (see the module docstring).

    Args:
        kind: ``"deconvnet"``, ``"guided"`` or ``"gradient"``.
    """

    op_kind = "autograd"

    needs_inputs = True

    def __init__(self, kind: str = "deconvnet") -> None:
        self.kind = kind

    @override
    def forward(self, call: Call) -> tuple[Any, Any]:
        # The submodule may work in place on its input; give it a copy unless nothing reads the input again.
        if not call.reusable and call.args and isinstance(call.args[0], Tensor):
            return call.fn(call.args[0].clone(), *call.args[1:], **call.kwargs), None
        return call.run(), None

    @override
    def run(self, call: Call) -> Any:
        return self.forward(call)[0]

    @override
    def mirror(self, ctx: MirrorContext, signal: Tensor) -> Sequence[Tensor | None]:
        values = [ctx.value(i) for i in range(len(ctx.inputs))]
        mode = None if self.kind == "gradient" else MethodMode(guided=self.kind == "guided")
        return local_vjp(ctx.op, ctx.args, ctx.kwargs, values, signal, mode=mode)


__all__ = ["GATING", "RECTIFYING", "FallbackRule", "MethodMode"]
