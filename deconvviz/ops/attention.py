"""Attention-style ops: softmax weights, maxima over a dimension, products of tensors.

Attention blocks in CNNs (squeeze-and-excitation's relatives: split attention, selective kernels, global
context, CBAM, self-attention over positions) are built from a few ops beyond those of a plain CNN:

* **softmax**: its output weights other features (attention maps, split / selective-kernel weights). Under
  deconvnet and guided backpropagation it is a gate, held at its forward value like a sigmoid gate, so the
  reconstruction follows the feature path; under the gradient it passes its exact vector-Jacobian product
  ``y * (g - sum(g * y))``.
* **amax, max, min over a dimension**: the signal goes to the element that was picked (``amax`` splits it
  evenly among equal maxima, as its gradient does); ``torch.max(x, dim)`` returns ``(values, indices)`` and is
  mirrored through its indexing.
* **matmul, bmm, mm, einsum**: with one signal-carrying factor the op is linear in it and mirrors to its
  adjoint (the other factor a constant); with two, by the product rule (each factor's signal times the
  other's forward value), exactly as ``x * y`` is.
* **scaled dot-product attention**: its attention weights are held (deconvnet, guided), so the signal goes to
  the values alone; under the gradient, its exact vector-Jacobian product.

Each is exact under the gradient (the tests hold it to autograd).
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from typing_extensions import override

from deconvviz.core.capture import Call, TensorMeta
from deconvviz.ops.base import HeldRule, MirrorContext, Rule, SavingRule, first_tensor_arg, local_vjp
from deconvviz.ops.fallback import held_attention
from deconvviz.ops.geometry import GeometryContext, ReceptiveField, along_dims, whole_image
from deconvviz.ops.registry import define

METHODS = ("deconvnet", "guided", "gradient")


def _arg(args: Sequence[Any], kwargs: dict[str, Any], i: int, name: str, default: Any = None) -> Any:
    return args[i] if len(args) > i else kwargs.get(name, default)


def _softmax_dim(module: nn.Module | None, args: Sequence[Any], kwargs: dict[str, Any], rank: int) -> int:
    """The dimension a softmax normalises over (torch's implicit choice when none is given)."""
    dim = module.dim if isinstance(module, nn.Softmax) else _arg(args, kwargs, 1, "dim")
    if dim is None:
        dim = 0 if rank in (0, 1, 3) else 1
    return int(dim) % max(rank, 1)


class SoftmaxRule(HeldRule):
    """Softmax: a gate held at its forward value (``hold``), or its exact vector-Jacobian product.

    Args:
        hold: True for deconvnet and guided (no signal back), False for the gradient.
    """

    op_kind = "softmax"

    @override
    def save(self, call: Call, out: Any) -> Any:
        return None if self.hold else (out, _softmax_dim(call.module, call.args, call.kwargs, out.dim()))

    @override
    def mirror(self, ctx: MirrorContext, signal: Tensor) -> Sequence[Tensor | None]:
        if self.hold:
            return [None]
        out, dim = ctx.saved
        y = ctx.per_seed(out).to(signal.dtype)
        product = signal * y
        return [product - y * product.sum(dim=dim, keepdim=True)]


def _dims(value: Any, rank: int) -> list[int] | None:
    if value is None:
        return None
    items = [value] if isinstance(value, int) else list(value)
    return sorted(int(d) % rank for d in items)


class AmaxRule(SavingRule):
    """``amax`` / ``amin`` over dimensions: the signal goes to the picked elements, split evenly among ties."""

    op_kind = "maximum"

    @override
    def save(self, call: Call, out: Any) -> Any:
        x = first_tensor_arg(call)
        dims = _dims(_arg(call.args, call.kwargs, 1, "dim", ()), x.dim()) or list(range(x.dim()))
        keep = out
        if not _arg(call.args, call.kwargs, 2, "keepdim", False):
            for d in dims:
                keep = keep.unsqueeze(d)
        return x == keep, dims

    @override
    def mirror(self, ctx: MirrorContext, signal: Tensor) -> Sequence[Tensor | None]:
        picked, dims = ctx.saved
        if 0 in dims:
            raise ctx.unsupported("a reduction over the batch dimension")
        mask = ctx.per_seed(picked).to(signal.dtype)
        if not _arg(ctx.args, ctx.kwargs, 2, "keepdim", False):
            for d in dims:
                signal = signal.unsqueeze(d)
        return [signal * mask / mask.sum(dim=dims, keepdim=True)]


class MaxRule(SavingRule):
    """``torch.max`` / ``torch.min`` (function or method).

    Over a dimension (``torch.max(x, 1)``, returning ``(values, indices)``) the values' signal goes back to
    the picked index of each row. The element-wise form (``torch.max(a, b)``) and the full reduction are
    mirrored by their exact vector-Jacobian product at the forward values.
    """

    op_kind = "maximum"

    @override
    def save(self, call: Call, out: Any) -> Any:
        dim = _arg(call.args, call.kwargs, 1, "dim")
        if isinstance(dim, int) and isinstance(out, tuple):
            return "index", out[1], dim
        return "values", [a for a in (*call.args, *call.kwargs.values()) if isinstance(a, Tensor)]

    @override
    def mirror(self, ctx: MirrorContext, signal: Any) -> Sequence[Any]:
        kind, *saved = ctx.saved
        if kind == "values":
            carried = [v for v, a in zip(saved[0], _tensor_args(ctx), strict=False) if isinstance(a, TensorMeta)]
            return local_vjp(ctx.op, ctx.args, ctx.kwargs, [ctx.per_seed(v) for v in carried], signal)
        indices, dim = saved
        values = signal[0] if isinstance(signal, list | tuple) else signal
        shape = ctx.input_shape(0)
        dim = dim % len(shape)
        if dim == 0:
            raise ctx.unsupported("a reduction over the batch dimension")
        if values is None:
            return [None]
        index = ctx.per_seed(indices)
        if not _arg(ctx.args, ctx.kwargs, 2, "keepdim", False):
            values, index = values.unsqueeze(dim), index.unsqueeze(dim)
        return [values.new_zeros(shape).scatter_add_(dim, index, values)]


def _tensor_args(ctx: MirrorContext) -> list[Any]:
    """The op's tensor arguments (stand-ins included), in the order :meth:`MaxRule.forward` saved them."""
    return [a for a in (*ctx.args, *ctx.kwargs.values()) if isinstance(a, Tensor | TensorMeta)]


class ProductRule(Rule):
    """``matmul``, ``bmm``, ``mm``, ``einsum``: the adjoint in a single signal-carrying factor, else the product rule.

    With one factor that depends on the image the op is linear in it, and its adjoint is taken by autograd at
    zeros (a linear map's adjoint does not depend on where it is taken), so no forward value is kept. With
    two, each factor's signal is the incoming signal times the other's forward value (the exact
    vector-Jacobian product); under deconvnet and guided a held attention map then stops its own branch.
    """

    op_kind = "product"

    @override
    def needs_values(self, carried: int) -> bool:
        return carried > 1

    @override
    def mirror(self, ctx: MirrorContext, signal: Tensor) -> Sequence[Tensor | None]:
        if len(ctx.inputs) == 1:
            zeros = signal.new_zeros(ctx.input_shape(0))
            return local_vjp(ctx.op, ctx.args, ctx.kwargs, [zeros], signal)
        return ctx.vjp(signal)


class AttentionRule(HeldRule):
    """``F.scaled_dot_product_attention``: the attention weights held (the values carry the signal), or exact.

    Args:
        hold: True for deconvnet and guided, False for the gradient.
    """

    op_kind = "attention"
    role_when_held = "held_attention"
    needs_inputs = True

    @override
    def mirror(self, ctx: MirrorContext, signal: Tensor) -> Sequence[Tensor | None]:
        values = [ctx.value(i) for i in range(len(ctx.inputs))]
        op = held_attention if self.hold else ctx.op
        return local_vjp(op, ctx.args, ctx.kwargs, values, signal)


def _held_weights(ctx: GeometryContext) -> ReceptiveField:
    """Scaled dot-product attention mixes every position of the sequence it attends over."""
    return whole_image(ctx)


define(
    [nn.Softmax, F.softmax, torch.softmax, "softmax"],
    SoftmaxRule(),
    methods={"gradient": SoftmaxRule(hold=False)},
    geometry=along_dims,
)
define([torch.amax, torch.amin, "amax", "amin"], AmaxRule(), geometry=along_dims)
define([torch.max, torch.min, "max", "min"], MaxRule(), geometry=along_dims)
define(
    [torch.matmul, operator.matmul, "matmul", torch.bmm, "bmm", torch.mm, "mm", torch.einsum],
    ProductRule(),
    geometry=whole_image,
)
define(
    [F.scaled_dot_product_attention],
    AttentionRule(),
    methods={"gradient": AttentionRule(hold=False)},
    geometry=_held_weights,
)


class MultiheadAttentionRule(HeldRule):
    """``nn.MultiheadAttention`` over a flattened feature map: attention weights held, or its exact gradient.

    Under deconvnet and guided backpropagation the attention weights ``A`` (a softmax) are held at their forward
    values, so the module is linear in its values: the signal at the output goes back through the output
    projection, ``Aᵀ`` per head and the value projection to the value input; the queries and keys get none.
    That is a few matrix products per seed, where autograd would re-run the module. Under the gradient, and for
    the forms this rule does not spell out (sequence-first inputs, separate query/key/value dimensions,
    ``bias_k``, ``add_zero_attn``, masks), it is the module's exact vector-Jacobian product: the weights are
    then not held.

    Args:
        hold: True for deconvnet and guided, False for the gradient.
    """

    op_kind = "attention"
    role_when_held = None  # the fallback does not hold a module's attention: inside an opaque block it is exact
    needs_inputs = True

    @staticmethod
    def _simple(module: nn.MultiheadAttention, args: Sequence[Any], kwargs: dict[str, Any]) -> bool:
        extra = {k: v for k, v in kwargs.items() if v is not None and k not in ("need_weights", "average_attn_weights")}
        return (
            module._qkv_same_embed_dim
            and module.batch_first  # the engine's seeds run along dim 0, which must be the batch
            and module.bias_k is None
            and not module.add_zero_attn
            and len(args) == 3
            and not extra
        )

    @override
    def save(self, call: Call, out: Any) -> Any:
        module = call.module
        if not self.hold or not isinstance(module, nn.MultiheadAttention):
            return None
        if not self._simple(module, call.args, call.kwargs):
            return None
        query, key = call.args[0], call.args[1]
        embed, heads = module.embed_dim, module.num_heads
        weight, bias = module.in_proj_weight, module.in_proj_bias
        q = F.linear(query, weight[:embed], None if bias is None else bias[:embed])
        k = F.linear(key, weight[embed : 2 * embed], None if bias is None else bias[embed : 2 * embed])
        batch, length, source = q.shape[0], q.shape[1], k.shape[1]
        q = q.reshape(batch, length, heads, -1).transpose(1, 2)
        k = k.reshape(batch, source, heads, -1).transpose(1, 2)
        return torch.softmax(q @ k.transpose(-2, -1) / (q.shape[-1] ** 0.5), dim=-1)

    @override
    def needs_values(self, carried: int) -> bool:
        return True

    @override
    def mirror(self, ctx: MirrorContext, signal: Any) -> Sequence[Any]:
        module = ctx.module
        assert isinstance(module, nn.MultiheadAttention)
        if ctx.saved is None:  # the exact vector-Jacobian product
            values = [ctx.value(i) for i in range(len(ctx.inputs))]
            return local_vjp(ctx.op, ctx.args, ctx.kwargs, values, signal)
        g = signal[0] if isinstance(signal, list | tuple) else signal
        if g is None:
            return [None] * len(ctx.inputs)
        weights = ctx.per_seed(ctx.saved).to(g.dtype)  # (K, heads, L, S)
        embed, heads = module.embed_dim, module.num_heads
        batch, length = g.shape[0], g.shape[1]
        g = g @ module.out_proj.weight.to(g.dtype)
        g = g.reshape(batch, length, heads, -1).transpose(1, 2)
        values = (weights.transpose(-2, -1) @ g).transpose(1, 2).reshape(batch, weights.shape[-1], embed)
        values = values @ module.in_proj_weight[2 * embed :].to(g.dtype)
        # the value input is the third argument; queries and keys get no signal through held weights
        carried = [isinstance(a, TensorMeta) for a in ctx.args]
        out: list[Tensor | None] = []
        for i, is_input in enumerate(carried):
            if is_input:
                out.append(values if i == 2 else None)
        return out


define(
    [nn.MultiheadAttention],
    MultiheadAttentionRule(),
    methods={"gradient": MultiheadAttentionRule(hold=False)},
    geometry=whole_image,  # every position attends to every other
)

__all__ = ["AmaxRule", "AttentionRule", "MaxRule", "MultiheadAttentionRule", "ProductRule", "SoftmaxRule"]
