"""Ops that move values around without changing them: concatenation, reshapes, indexing, identities.

Each mirrors to its exact adjoint: a permutation to the inverse permutation, a split to the concatenation of
the pieces' signals (zeros where none arrives), interpolation and padding to autograd's adjoint of the op.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from typing_extensions import override

from deconvviz.core.capture import TensorMeta, TupleMeta
from deconvviz.ops.base import MirrorContext, Rule, local_vjp
from deconvviz.ops.geometry import GeometryContext, ReceptiveField, keeps_positions, pointwise, single, whole_image
from deconvviz.ops.registry import OPS, define


class CatRule(Rule):
    """Concatenation mirrors to splitting the signal into the pieces each input contributed."""

    op_kind = "concat split"

    @override
    def mirror(self, ctx: MirrorContext, signal: Tensor) -> Sequence[Tensor | None]:
        tensors = ctx.args[0] if ctx.args else ctx.kwargs["tensors"]
        dim = ctx.args[1] if len(ctx.args) > 1 else ctx.kwargs.get("dim", 0)
        dim = dim % len(ctx.output.shape)
        if dim == 0:
            raise ctx.unsupported("concatenation along the batch dimension")
        sizes = [t.shape[dim] for t in tensors]
        pieces = signal.split(sizes, dim=dim)
        return [piece for t, piece in zip(tensors, pieces, strict=True) if isinstance(t, TensorMeta)]


class ReshapeRule(Rule):
    """Flatten, view and reshape mirror to reshaping the signal back to the input's shape."""

    op_kind = "reshape"

    @override
    def mirror(self, ctx: MirrorContext, signal: Tensor) -> Sequence[Tensor | None]:
        if ctx.output.shape[0] != ctx.inputs[0].shape[0] or len(ctx.output.shape) == 0:
            raise ctx.unsupported("a reshape that mixes the batch dimension into the features")
        return [signal.reshape(ctx.input_shape(0))]


class GetItemRule(Rule):
    """Basic indexing (``x[:, :3]``, ``x[..., 1:]``) mirrors to writing the signal back into a zero tensor."""

    op_kind = "index"

    @override
    def mirror(self, ctx: MirrorContext, signal: Tensor) -> Sequence[Tensor | None]:
        source, index = ctx.args[0], ctx.args[1]
        if isinstance(source, TupleMeta) and isinstance(index, int):  # one piece of a chunk / split / unbind
            pieces: list[Tensor | None] = [None] * len(source.items)
            pieces[index] = signal
            return [pieces]  # type: ignore[list-item]
        if not isinstance(source, TensorMeta):
            raise ctx.unsupported("indexing into something other than a tensor")
        parts = index if isinstance(index, tuple) else (index,)
        if any(part is None or isinstance(part, Tensor | list) for part in parts):
            raise ctx.unsupported("advanced indexing (tensors, lists or None in the index)")
        leading = parts[0] if parts else slice(None)
        keeps_batch = leading is Ellipsis or (isinstance(leading, slice) and leading == slice(None))
        if not keeps_batch:
            raise ctx.unsupported("indexing that selects along the batch dimension")
        out = signal.new_zeros(ctx.input_shape(0))
        out[index] = signal
        return [out]


class IdentityRule(Rule):
    """Ops that are the identity at inference (dropout, ``Identity``, ``contiguous``) pass the signal on."""

    op_kind = "identity"

    @override
    def mirror(self, ctx: MirrorContext, signal: Tensor) -> Sequence[Tensor | None]:
        return [signal]


def _arg(ctx: MirrorContext | GeometryContext, i: int, name: str, default: Any = None) -> Any:
    return ctx.args[i] if len(ctx.args) > i else ctx.kwargs.get(name, default)


def _batch_stays(ctx: MirrorContext, dims: Sequence[int]) -> None:
    rank = len(ctx.inputs[0].shape)
    if any(d % rank == 0 for d in dims):
        raise ctx.unsupported("an op that moves the batch dimension")


class PermuteRule(Rule):
    """``permute`` mirrors to the inverse permutation."""

    op_kind = "permute"

    @override
    def mirror(self, ctx: MirrorContext, signal: Tensor) -> Sequence[Tensor | None]:
        rest = ctx.args[1:]
        dims = rest[0] if len(rest) == 1 and isinstance(rest[0], tuple | list) else rest or ctx.kwargs["dims"]
        rank = len(dims)
        dims = [d % rank for d in dims]
        if dims[0] != 0:
            raise ctx.unsupported("a permutation that moves the batch dimension")
        inverse = [0] * rank
        for i, d in enumerate(dims):
            inverse[d] = i
        return [signal.permute(inverse)]


class TransposeRule(Rule):
    """``transpose`` / ``swapaxes`` mirror to the same transposition (channel shuffles among them)."""

    op_kind = "transpose"

    @override
    def mirror(self, ctx: MirrorContext, signal: Tensor) -> Sequence[Tensor | None]:
        a, b = _arg(ctx, 1, "dim0"), _arg(ctx, 2, "dim1")
        _batch_stays(ctx, [a, b])
        return [signal.transpose(a, b)]


class SplitRule(Rule):
    """``chunk`` / ``split`` / ``unbind`` mirror to joining the pieces' signals (zeros for pieces without one).

    Args:
        stack: the pieces were taken by ``unbind`` (one index each), so they are stacked back.
    """

    op_kind = "join"

    def __init__(self, stack: bool = False) -> None:
        self.stack = stack

    @override
    def mirror(self, ctx: MirrorContext, signal: Tensor) -> Sequence[Tensor | None]:
        out = ctx.output
        if not isinstance(out, TupleMeta):
            raise ctx.unsupported("a split whose result is not a tuple of tensors")
        dim = _arg(ctx, 1, "dim", 0) if self.stack else _arg(ctx, 2, "dim", 0)
        _batch_stays(ctx, [dim])
        count = ctx.sample.shape[0]
        pieces = [
            piece if piece is not None else signal_like(signal, count, item.shape if item is not None else ())
            for piece, item in zip(signal, out.items, strict=True)
        ]
        return [torch.stack(pieces, dim=dim) if self.stack else torch.cat(pieces, dim=dim)]


def signal_like(signals: Any, count: int, shape: Sequence[int]) -> Tensor:
    """Zeros shaped like one forward tensor for ``count`` seeds, on the device and dtype of the other signals."""
    like = next(s for s in signals if s is not None)
    return like.new_zeros((count, *shape[1:]))


class StackRule(Rule):
    """``stack`` mirrors to unbinding the signal into its inputs' signals."""

    op_kind = "unstack"

    @override
    def mirror(self, ctx: MirrorContext, signal: Tensor) -> Sequence[Tensor | None]:
        tensors = ctx.args[0] if ctx.args else ctx.kwargs["tensors"]
        dim = _arg(ctx, 1, "dim", 0)
        if dim % len(ctx.output.shape) == 0:
            raise ctx.unsupported("stacking along the batch dimension")
        pieces = signal.unbind(dim)
        return [piece for t, piece in zip(tensors, pieces, strict=True) if isinstance(t, TensorMeta)]


class LinearAdjointRule(Rule):
    """A linear op of one input (interpolation, padding, ``expand``) mirrors to its adjoint, from autograd.

    The adjoint of a linear map does not depend on where it is taken, so no forward value is kept: the
    vector-Jacobian product is taken at zeros of the input's shape.
    """

    op_kind = "adjoint"

    @override
    def mirror(self, ctx: MirrorContext, signal: Tensor) -> Sequence[Tensor | None]:
        if len(ctx.inputs) != 1:
            raise ctx.unsupported("a linear op of more than one input-dependent tensor")
        zeros = signal.new_zeros(ctx.input_shape(0))
        return local_vjp(ctx.op, ctx.args, ctx.kwargs, [zeros], signal)


def _pad(ctx: GeometryContext) -> ReceptiveField:
    module = ctx.module
    pad: Any = getattr(module, "padding", None) if module is not None else _arg(ctx, 1, "pad")
    if isinstance(pad, int):
        pad = (pad,) * 4
    pad = tuple(pad)
    if len(pad) not in (2, 4):
        raise ctx.unsupported(f"padding {pad!r} of more than the last two dimensions")
    left, top = pad[0], pad[2] if len(pad) == 4 else 0
    return single(ctx).through(1, 1, (top, left))


def _cat(ctx: GeometryContext) -> ReceptiveField:
    dim = ctx.args[1] if len(ctx.args) > 1 else ctx.kwargs.get("dim", 0)
    if all(f.whole_image for f in ctx.inputs):
        return ReceptiveField.whole()
    if dim not in (1, -3):  # only a channel concatenation keeps positions aligned
        raise ctx.unsupported(
            f"concatenation along dim {dim!r} of spatial maps; only channel concatenation (dim=1) is supported"
        )
    return pointwise(ctx)


define([torch.cat, torch.concat, torch.concatenate], CatRule(), geometry=_cat)
define(
    [
        torch.flatten,
        nn.Flatten,
        torch.reshape,
        "flatten",
        "view",
        "reshape",
        "squeeze",
        "unsqueeze",
        "view_as",
        "reshape_as",
    ],
    ReshapeRule(),
    geometry=keeps_positions,
)
define([torch.squeeze, torch.unsqueeze], geometry=keeps_positions)
define(
    [
        nn.Dropout,
        nn.Dropout2d,
        nn.AlphaDropout,
        nn.FeatureAlphaDropout,
        nn.Identity,
        F.dropout,
        F.dropout2d,
        "contiguous",
        "clone",
        torch.clone,
        "type_as",
        "to",
        "float",
        "double",
    ],
    IdentityRule(),
    geometry=pointwise,
)
define([operator.getitem], GetItemRule())
define([torch.permute, "permute"], PermuteRule(), geometry=pointwise)
define([torch.transpose, torch.swapaxes, "transpose", "swapaxes"], TransposeRule(), geometry=pointwise)
define([torch.chunk, torch.split, "chunk", "split"], SplitRule())
define([torch.unbind, "unbind"], SplitRule(stack=True))
define([torch.stack], StackRule())
define([F.interpolate, nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d], LinearAdjointRule())
# A 1-D convolution (ECA's channel attention runs one over the pooled channels) is linear in its input: its
# adjoint is the transposed convolution with the same weights, no bias, as for Conv2d.
define([nn.Conv1d, F.conv1d], LinearAdjointRule(), geometry=whole_image)
# ``expand`` broadcasts a map over new or unit dimensions: each output position reads the same input position
define(["expand", "expand_as"], LinearAdjointRule(), geometry=pointwise)
define(
    [F.pad, nn.ZeroPad2d, nn.ConstantPad2d, nn.ReflectionPad2d, nn.ReplicationPad2d],
    LinearAdjointRule(),
    geometry=_pad,
)


def _stochastic_depth_rules(ops: Any) -> None:
    """Torchvision's StochasticDepth is the identity in eval mode (the capture always runs in eval mode)."""
    define([ops.StochasticDepth, ops.stochastic_depth], IdentityRule(), geometry=pointwise)


OPS.defer("torchvision.ops", _stochastic_depth_rules)  # when a model has imported torchvision's ops
