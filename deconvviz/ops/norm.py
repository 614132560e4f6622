"""Normalisation: eval batch norm is a per-channel scale; per-sample statistics are held or differentiated.

Layer, group and instance norm compute their statistics from the sample itself. Under deconvnet and guided
backpropagation those statistics are held at their forward values, like eval batch norm's running ones,
so the op mirrors to a per-sample, per-element scale ``weight / sqrt(var + eps)``. Under the gradient the
statistics are differentiated too (the op's exact vector-Jacobian product).
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from typing_extensions import override

from deconvviz.core.capture import Call
from deconvviz.errors import UnsupportedOpError
from deconvviz.ops.base import HeldRule, MirrorContext, Rule, first_tensor_arg
from deconvviz.ops.geometry import Geometry, pointwise
from deconvviz.ops.registry import OPS, define


def _batch_norm_scale(module: nn.Module, name: str) -> Tensor:
    if not isinstance(module, nn.modules.batchnorm._BatchNorm) or module.running_var is None:
        raise UnsupportedOpError(
            f"cannot mirror node {name!r}: batch norm without running statistics depends on the batch; "
            "build it with track_running_stats=True"
        )
    scale = torch.rsqrt(module.running_var + module.eps)
    if module.weight is not None:
        scale = scale * module.weight
    return scale


class BatchNormRule(Rule):
    """Eval-mode batch norm is a per-channel affine map; it mirrors to the per-channel scale (no shift)."""

    op_kind = "norm"

    @override
    def mirror(self, ctx: MirrorContext, signal: Tensor) -> Sequence[Tensor | None]:
        assert ctx.module is not None
        scale = _batch_norm_scale(ctx.module, ctx.name).to(signal.dtype)
        shape = (1, -1) + (1,) * (signal.dim() - 2)
        return [signal * scale.view(shape)]


class FunctionalBatchNormRule(Rule):
    """``F.batch_norm`` with running statistics (inference): a per-channel scale, like the module's rule.

    Containers that call the function themselves (timm's ``BatchNormAct2d``, a batch norm fused with its
    activation) reach it when they are traced through.
    """

    op_kind = "norm"

    @override
    def mirror(self, ctx: MirrorContext, signal: Tensor) -> Sequence[Tensor | None]:
        a = ctx.bind(F.batch_norm)
        if a["training"] or a["running_var"] is None:
            raise ctx.unsupported("batch norm with batch statistics depends on the batch; run it with running ones")
        scale = torch.rsqrt(a["running_var"] + a["eps"])
        if a["weight"] is not None:
            scale = scale * a["weight"]
        return [signal * scale.to(signal.dtype).view((1, -1) + (1,) * (signal.dim() - 2))]


_FUSED_CHECKED: weakref.WeakSet[nn.Module] = weakref.WeakSet()
"""Fused batch norms found to compute ``act(drop(bn(x)))`` (each module checked once, the first time it runs)."""


class NormActRule(Rule):
    """A batch norm fused with its activation, kept whole (timm's ``BatchNormAct2d``: ``act(drop(bn(x)))``).

    It mirrors as its parts would, in one step: the activation's own rule (the method's), then the batch
    norm's per-channel scale; ``drop`` is the identity at inference. :class:`~deconvviz.methods.RuleSet` gives
    it to a batch norm module with ``act`` and ``drop`` submodules and no rule of its own, when the activation
    has an element-wise rule in the set (or is ``nn.Identity``); anything else gets the autograd fallback. The
    module's own output is what the capture keeps; the first time a module runs, that output is checked
    against ``act(drop(bn(x)))`` and a module that computes something else is refused.

    Args:
        act: the activation's rule, or None for ``nn.Identity``.
        saves: whether ``act`` saves anything for its mirror (``f'(x)`` or a mask) under this method.
    """

    op_kind = "norm + activation"

    def __init__(self, act: Rule | None, *, saves: bool) -> None:
        self.act, self.saves = act, saves

    @override
    def forward(self, call: Call) -> tuple[Any, Any]:
        module = call.module
        assert module is not None
        out = call.run()
        checked = module in _FUSED_CHECKED
        if checked and not self.saves:
            return out, None
        parts = fused_parts(module)
        assert parts is not None  # the rule set gives this rule only to such modules
        assert isinstance(module, nn.modules.batchnorm._BatchNorm)
        act, drop = parts
        _batch_norm_scale(module, call.name)  # refuses batch statistics in one line
        x = first_tensor_arg(call)
        z = F.batch_norm(x, module.running_mean, module.running_var, module.weight, module.bias, False, 0.0, module.eps)
        z = drop(z)
        if self.act is None:
            mine, saved = z, None
        else:
            step = Call(fn=act, args=(z,), kwargs={}, module=act, name=f"{call.name}.act", reusable=True)
            mine, saved = self.act.forward(step)
        if not checked:
            if mine.shape != out.shape or not torch.allclose(mine, out, rtol=1e-4, atol=1e-5 * float(out.abs().max())):
                raise UnsupportedOpError(
                    f"cannot mirror node {call.name!r}: {type(module).__name__} holds a batch norm and an activation "
                    "but does not compute act(drop(bn(x))); register a mirror rule for it with deconvviz.register_rule"
                )
            _FUSED_CHECKED.add(module)
        return out, saved

    @override
    def run(self, call: Call) -> Any:
        return call.run()

    @override
    def mirror(self, ctx: MirrorContext, signal: Tensor) -> Sequence[Tensor | None]:
        assert ctx.module is not None
        if self.act is not None:
            parts = fused_parts(ctx.module)
            assert parts is not None
            act = dataclasses.replace(ctx, module=parts[0], name=f"{ctx.name}.act", op=parts[0])
            (signal_in,) = self.act.mirror(act, signal)
            if signal_in is None:
                return [None]
            signal = signal_in
        scale = _batch_norm_scale(ctx.module, ctx.name).to(signal.dtype)
        return [signal * scale.view((1, -1) + (1,) * (signal.dim() - 2))]


def fused_parts(module: nn.Module) -> tuple[nn.Module, nn.Module] | None:
    """``(act, drop)`` of a batch norm fused with an activation (``act`` and ``drop`` submodules), else None.

    Only a ``drop`` that is the identity at inference (``nn.Identity``, dropout) qualifies.
    """
    act, drop = getattr(module, "act", None), getattr(module, "drop", None)
    if not isinstance(module, nn.modules.batchnorm._BatchNorm) or not isinstance(act, nn.Module):
        return None
    if not isinstance(drop, nn.Identity | nn.modules.dropout._DropoutNd):
        return None
    return act, drop


def _arguments(call: Call) -> dict[str, Any]:
    """The normalisation's parameters, whether it is a module or a function call."""
    module, args, kwargs = call.module, call.args, call.kwargs

    def arg(i: int, name: str, default: Any = None) -> Any:
        return args[i] if len(args) > i else kwargs.get(name, default)

    if isinstance(module, nn.LayerNorm):
        return {"kind": "layer", "shape": tuple(module.normalized_shape), "weight": module.weight, "eps": module.eps}
    if isinstance(module, nn.GroupNorm):
        return {"kind": "group", "groups": module.num_groups, "weight": module.weight, "eps": module.eps}
    if isinstance(module, nn.modules.instancenorm._InstanceNorm):
        stats = not (module.track_running_stats and module.running_var is not None)
        return {
            "kind": "instance",
            "weight": module.weight,
            "eps": module.eps,
            "input_stats": stats,
            "running_var": module.running_var,
        }
    fn = call.fn
    if fn is F.layer_norm:
        shape = arg(1, "normalized_shape")
        return {
            "kind": "layer",
            "shape": (shape,) if isinstance(shape, int) else tuple(shape),
            "weight": arg(2, "weight"),
            "eps": arg(4, "eps", 1e-5),
        }
    if fn is F.group_norm:
        return {"kind": "group", "groups": arg(1, "num_groups"), "weight": arg(2, "weight"), "eps": arg(4, "eps", 1e-5)}
    return {  # F.instance_norm
        "kind": "instance",
        "weight": arg(3, "weight"),
        "eps": arg(7, "eps", 1e-5),
        "input_stats": arg(5, "use_input_stats", True),
        "running_var": arg(2, "running_var"),
    }


def held_scale(call: Call) -> Tensor:
    """``weight / sqrt(var + eps)`` with the forward statistics of each sample, broadcastable to the input."""
    x = first_tensor_arg(call)
    a = _arguments(call)
    weight, eps = a["weight"], a["eps"]
    if a["kind"] == "layer":
        dims = tuple(range(x.dim() - len(a["shape"]), x.dim()))
        scale = torch.rsqrt(x.var(dim=dims, unbiased=False, keepdim=True) + eps)
        return scale * weight if weight is not None else scale
    channels = (1, -1) + (1,) * (x.dim() - 2)
    if a["kind"] == "group":
        grouped = x.reshape(x.shape[0], a["groups"], -1)
        scale = torch.rsqrt(grouped.var(dim=2, unbiased=False) + eps)  # (N, G)
        scale = scale.repeat_interleave(x.shape[1] // a["groups"], dim=1).reshape(x.shape[0], *channels[1:])
    elif a["input_stats"]:
        scale = torch.rsqrt(x.reshape(*x.shape[:2], -1).var(dim=2, unbiased=False) + eps)
        scale = scale.reshape(*x.shape[:2], *(1,) * (x.dim() - 2))
    else:
        scale = torch.rsqrt(a["running_var"] + eps).reshape(channels)
    return scale * weight.reshape(channels) if weight is not None else scale


class SampleNormRule(HeldRule):
    """Layer, group and instance norm: statistics held (deconvnet, guided) or differentiated (gradient).

    Args:
        hold: hold the statistics at their forward values (the op becomes a per-sample scale).
    """

    op_kind = "norm"
    role_when_held = "held_norm"

    def __init__(self, hold: bool = True) -> None:
        super().__init__(hold)
        self.needs_inputs = not hold

    @override
    def save(self, call: Call, out: Any) -> Any:
        return held_scale(call) if self.hold else None

    @override
    def mirror(self, ctx: MirrorContext, signal: Tensor) -> Sequence[Tensor | None]:
        if self.hold:
            scale = ctx.per_seed(ctx.saved).to(signal.dtype)
            return [signal * scale]
        return ctx.vjp(signal)


define([nn.BatchNorm1d, nn.BatchNorm2d], BatchNormRule())
define([F.batch_norm], FunctionalBatchNormRule(), geometry=pointwise)
define(
    [nn.LayerNorm, nn.GroupNorm, nn.InstanceNorm1d, nn.InstanceNorm2d, F.layer_norm, F.group_norm, F.instance_norm],
    SampleNormRule(),
    methods={"gradient": SampleNormRule(hold=False)},
    geometry=pointwise,
)
define([nn.modules.batchnorm._BatchNorm, nn.LocalResponseNorm], geometry=pointwise)


def _fused_geometry(module: nn.Module) -> Geometry | None:
    """A batch norm fused with its activation and kept whole has its activation's geometry (both element-wise)."""
    parts = fused_parts(module)
    if parts is None:
        return None
    act = parts[0]
    return pointwise if isinstance(act, nn.Identity) else OPS.geometry(type(act))


OPS.add_geometry_finder(_fused_geometry)
