"""Mirror rules: how each forward op is run during capture and undone in the deconvnet.

A rule has two halves. :meth:`Rule.forward` runs the op during the capture pass and may save what the
mirror needs (max-pooling saves its switches). :meth:`Rule.mirror` takes the signal arriving at the op's
output and returns the signal for each of its inputs, following Zeiler & Fergus (2014, section 2.1):
max-pooling is undone with the recorded switches, ReLU rectifies the signal, and a convolution is
undone by the transposed convolution with the *same* weights (no bias). Linear ops (batch norm in eval
mode, average pooling, reshapes, concatenation, addition) are undone by their exact adjoint.

Rules live in a registry keyed by a module class, a function, or a tensor method name. Register your own
for a layer deconvviz does not know; a module class with a rule is traced as one opaque node:

    >>> import deconvviz as dv
    >>> class Swap(dv.Rule):
    ...     def mirror(self, ctx, signal):
    ...         return [signal]
    >>> dv.register_rule(MyLayer, Swap())  # doctest: +SKIP
"""

from __future__ import annotations

import inspect
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from typing_extensions import override

from deconvviz import signatures
from deconvviz.capture import Call, TensorMeta
from deconvviz.errors import UnsupportedOpError
from deconvviz.registry import OpKey, OpRegistry

RuleKey = OpKey


@dataclass
class MirrorContext:
    """What a rule's :meth:`Rule.mirror` knows about the forward op it undoes.

    Attributes:
        name: the node's qualified name.
        module: the module for ``call_module`` nodes, else None.
        args: the op's positional arguments; tensors that carry signal are replaced by :class:`TensorMeta`,
            other tensors (weights, constants) are kept.
        kwargs: keyword arguments, likewise.
        inputs: the :class:`TensorMeta` of every signal-carrying tensor argument, in argument order;
            :meth:`Rule.mirror` returns one signal per entry.
        output: shape of the op's output in the capture batch.
        saved: what :meth:`Rule.forward` saved, for the whole capture batch.
        sample: for each seed in the mirrored batch, the row of the capture batch it came from.
    """

    name: str
    module: nn.Module | None
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    inputs: list[TensorMeta]
    output: TensorMeta
    saved: Any
    sample: Tensor
    _capture_batch: int = field(default=1, repr=False)

    def per_seed(self, tensor: Tensor) -> Tensor:
        """Pick, for every seed, the row of a capture-batch tensor that seed belongs to."""
        if self._capture_batch == 1:
            return tensor.expand(self.sample.shape[0], *tensor.shape[1:])
        return tensor.index_select(0, self.sample)

    def input_shape(self, i: int = 0) -> tuple[int, ...]:
        """Shape of input ``i`` for the mirrored batch (the seed count replaces the batch size)."""
        return (self.sample.shape[0], *self.inputs[i].shape[1:])

    def bind(self, signature: Callable[..., Any]) -> dict[str, Any]:
        """Name the op's arguments by matching them to ``signature`` (defaults filled in)."""
        bound = inspect.signature(signature).bind(*self.args, **self.kwargs)
        bound.apply_defaults()
        return dict(bound.arguments)

    def unsupported(self, why: str) -> UnsupportedOpError:
        """An error for a case this op's rule cannot mirror, naming the node."""
        return UnsupportedOpError(f"cannot mirror node {self.name!r}: {why}")


class Rule:
    """Base class of mirror rules; subclass it and override :meth:`mirror` (and :meth:`forward` if needed)."""

    def forward(self, call: Call) -> tuple[Any, Any]:
        """Run the op during capture; return ``(output, saved)``.

        The default runs the op unchanged and saves nothing. Override to record state the mirror needs,
        or to avoid in-place updates that would corrupt captured activations.
        """
        return call.run(), None

    def run(self, call: Call) -> Any:
        """Run the op when nothing is to be mirrored (activations only); defaults to :meth:`forward`'s output."""
        return self.forward(call)[0]

    def mirror(self, ctx: MirrorContext, signal: Tensor) -> Sequence[Tensor | None]:
        """Map the signal at the op's output to one signal per entry of ``ctx.inputs`` (None for none)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement mirror()")


# ---------------------------------------------------------------------------------------------- registry

RULES: OpRegistry[Rule] = OpRegistry("mirror rule")
"""Every mirror rule, by op."""


def register_rule(target: RuleKey, rule: Rule | type[Rule] | None = None) -> Any:
    """Register the mirror rule for a module class, a function, or a tensor method name.

    A later registration for the same target replaces the earlier one (that is how the built-in rules are
    overridden, for instance a ReLU rule for guided backpropagation). A module class that is not part of
    ``torch.nn`` becomes a leaf of the trace: it shows up as one node, mirrored by your rule.

    Args:
        target: ``nn.Module`` subclass, function (``torch.cat``, ``operator.add``), or method name (``"view"``).
        rule: a :class:`Rule` instance or subclass. Leave it out to use ``register_rule`` as a class decorator.

    Returns:
        The rule (or, as a decorator, the decorated class).

    Example:
        >>> @register_rule("my_method")  # doctest: +SKIP
        ... class MyRule(Rule):
        ...     def mirror(self, ctx, signal):
        ...         return [signal]
    """
    if rule is None:

        def decorator(cls: type[Rule]) -> type[Rule]:
            register_rule(target, cls)
            return cls

        return decorator
    instance = rule() if isinstance(rule, type) else rule
    if not isinstance(instance, Rule):
        raise TypeError(f"a mirror rule must be a deconvviz.Rule, got {type(instance).__name__}")
    RULES.register(target, instance)
    return rule


def get_rule(target: RuleKey) -> Rule | None:
    """The rule registered for ``target``; for a module class, the nearest registered base class's."""
    return RULES.get(target)


def leaf_types() -> list[type[nn.Module]]:
    """Module classes with a rule that torch.fx would otherwise trace through (not from ``torch.nn``)."""
    return [
        key
        for key, _ in RULES.items()
        if isinstance(key, type) and issubclass(key, nn.Module) and not key.__module__.startswith("torch.nn")
    ]


def _register_all(targets: Sequence[RuleKey], rule: Rule) -> None:
    for target in targets:
        register_rule(target, rule)


# ------------------------------------------------------------------------------------------------ helpers


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    a, b = value
    return (int(a), int(b))


def _first_tensor_arg(call: Call) -> Tensor:
    return call.args[0] if call.args else next(iter(call.kwargs.values()))


def _reduce_to(signal: Tensor, shape: Sequence[int]) -> Tensor:
    """Sum a broadcast signal back to an operand's shape (the adjoint of broadcasting); batch dim kept."""
    target = tuple(shape[1:])
    extra = signal.dim() - 1 - len(target)
    if extra > 0:
        signal = signal.sum(dim=tuple(range(1, 1 + extra)))
    dims = tuple(i + 1 for i, n in enumerate(target) if n == 1 and signal.shape[i + 1] != 1)
    if dims:
        signal = signal.sum(dim=dims, keepdim=True)
    return signal


# -------------------------------------------------------------------------------------------------- rules


class ReLURule(Rule):
    """ReLU mirrors to ReLU: the reconstruction is rectified on its way down (section 2.1)."""

    @override
    def forward(self, call: Call) -> tuple[Any, Any]:
        # The model's own ReLU(inplace=True) could overwrite a captured activation; only a tensor that nothing
        # reads afterwards is rectified in place.
        x = _first_tensor_arg(call)
        return (torch.relu_(x) if call.reusable else torch.relu(x)), None

    @override
    def mirror(self, ctx: MirrorContext, signal: Tensor) -> Sequence[Tensor | None]:
        return [torch.relu(signal)]


class Conv2dRule(Rule):
    """A convolution mirrors to the transposed convolution with the same weights and no bias.

    The output size is made exactly the forward input size (``output_padding`` covers the rows and columns
    a strided convolution drops), and ``padding="same"``, dilation and groups are handled.
    """

    @override
    def mirror(self, ctx: MirrorContext, signal: Tensor) -> Sequence[Tensor | None]:
        module = ctx.module
        if isinstance(module, nn.Conv2d):
            if module.padding_mode != "zeros":
                raise ctx.unsupported(
                    f"Conv2d with padding_mode={module.padding_mode!r} (only 'zeros' has a mirror rule)"
                )
            weight, stride, dilation, groups = module.weight, module.stride, module.dilation, module.groups
            padding: Any = module.padding
        else:
            a = ctx.bind(signatures.conv2d)
            weight, stride, dilation, groups = a["weight"], a["stride"], a["dilation"], a["groups"]
            padding = a["padding"]
        if not isinstance(weight, Tensor):
            raise ctx.unsupported("the convolution's weight depends on the input")
        if weight.dim() != 4 or len(ctx.inputs[0].shape) != 4:
            raise ctx.unsupported("only batched 2-D convolutions (N, C, H, W) are supported")
        return [conv2d_transpose(signal, weight, ctx.inputs[0].shape[-2:], stride, padding, dilation, groups)]


_CROP_BELOW = 0.75
"""Filter only the non-zero box of a signal when it covers at most this fraction of the map."""


def _support(signal: Tensor) -> tuple[int, int, int, int] | None:
    """``(top, bottom, left, right)`` of the smallest box holding every non-zero of ``(K, C, H, W)``; None if none."""
    mask = signal.abs().amax(dim=(0, 1)) > 0
    rows = torch.nonzero(mask.any(dim=1)).flatten()
    if rows.numel() == 0:
        return None
    cols = torch.nonzero(mask.any(dim=0)).flatten()
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def conv2d_transpose(
    signal: Tensor,
    weight: Tensor,
    input_size: Sequence[int],
    stride: Any,
    padding: Any,
    dilation: Any,
    groups: int,
) -> Tensor:
    """Filter ``signal`` with the transpose of the convolution ``weight`` (no bias).

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

    A projected unit's signal is zero outside its cone (its receptive field seen from this layer); when the
    non-zero box is small enough, only that box is filtered, which gives the same result for less work.
    """
    stride, dilation = _pair(stride), _pair(dilation)
    kernel = weight.shape[-2:]
    height, width = int(input_size[0]), int(input_size[1])
    pads: list[tuple[int, int]]  # (before, after) per spatial dim
    if padding == "valid":
        pads = [(0, 0), (0, 0)]
    elif padding == "same":
        pads = []
        for d, k in zip(dilation, kernel, strict=True):
            total = d * (k - 1)
            pads.append((total // 2, total - total // 2))
    else:
        ph, pw = _pair(padding)
        pads = [(ph, ph), (pw, pw)]
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
    symmetric = all(p[0] == p[1] for p in pads)
    if symmetric and all(0 <= extra[i] < max(stride[i], dilation[i]) for i in range(2)):
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

    @override
    def run(self, call: Call) -> Any:
        return call.run()  # no switches needed

    @override
    def forward(self, call: Call) -> tuple[Any, Any]:
        module = call.module
        x = _first_tensor_arg(call)
        if isinstance(module, nn.MaxPool2d):
            if module.return_indices:
                raise UnsupportedOpError(
                    f"cannot mirror node {call.name!r}: MaxPool2d(return_indices=True) is not supported"
                )
            out, switches = F.max_pool2d(
                x,
                module.kernel_size,
                module.stride,
                module.padding,
                module.dilation,
                ceil_mode=module.ceil_mode,
                return_indices=True,
            )
            return out, switches
        bound = inspect.signature(signatures.max_pool2d).bind(*call.args, **call.kwargs)
        bound.apply_defaults()
        a = dict(bound.arguments)
        if a["return_indices"]:
            raise UnsupportedOpError(
                f"cannot mirror node {call.name!r}: max_pool2d(return_indices=True) is not supported"
            )
        out, switches = F.max_pool2d(
            a["input"],
            a["kernel_size"],
            a["stride"],
            a["padding"],
            a["dilation"],
            ceil_mode=a["ceil_mode"],
            return_indices=True,
        )
        return out, switches

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
        x = _first_tensor_arg(call)
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

    @override
    def mirror(self, ctx: MirrorContext, signal: Tensor) -> Sequence[Tensor | None]:
        in_h, in_w = ctx.inputs[0].shape[-2:]
        out_h, out_w = signal.shape[-2:]
        rows = _adaptive_pool_matrix(out_h, in_h, signal)
        cols = _adaptive_pool_matrix(out_w, in_w, signal)
        return [rows.t() @ signal @ cols]


class AvgPool2dRule(Rule):
    """Average pooling mirrors to its adjoint: each output spreads evenly over its window."""

    @override
    def mirror(self, ctx: MirrorContext, signal: Tensor) -> Sequence[Tensor | None]:
        module = ctx.module
        if isinstance(module, nn.AvgPool2d):
            kernel, stride, padding = module.kernel_size, module.stride, module.padding
            ceil_mode, include_pad, divisor = (
                module.ceil_mode,
                module.count_include_pad,
                module.divisor_override,
            )
        else:
            a = ctx.bind(signatures.avg_pool2d)
            kernel, stride, padding = a["kernel_size"], a["stride"], a["padding"]
            ceil_mode, include_pad, divisor = a["ceil_mode"], a["count_include_pad"], a["divisor_override"]
        kernel = _pair(kernel)
        stride = kernel if stride is None or stride == [] else _pair(stride)
        # The pooling's adjoint is aten's own kernel for it; an empty expanded tensor stands in for the input.
        shape = ctx.input_shape(0)
        like = signal.new_empty(()).expand(shape)
        grad = torch.ops.aten.avg_pool2d_backward(
            signal, like, list(kernel), list(stride), list(_pair(padding)), ceil_mode, include_pad, divisor
        )
        return [grad]


class CatRule(Rule):
    """Concatenation mirrors to splitting the signal into the pieces each input contributed."""

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


class AddRule(Rule):
    """Addition (and subtraction) mirrors the signal to every summand (negated for the subtrahend)."""

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
                reduced = _reduce_to(signal, operand.shape)
                out.append(reduced if s == 1 else reduced * s)
        return out


class ScaleRule(Rule):
    """Multiplication or division by something that does not depend on the input: a linear scale."""

    def __init__(self, divide: bool = False) -> None:
        self.divide = divide

    @override
    def mirror(self, ctx: MirrorContext, signal: Tensor) -> Sequence[Tensor | None]:
        a, b = ctx.args[0], ctx.args[1] if len(ctx.args) > 1 else ctx.kwargs["other"]
        if isinstance(a, TensorMeta) and isinstance(b, TensorMeta):
            raise ctx.unsupported("a product of two input-dependent tensors is not linear")
        if self.divide and isinstance(b, TensorMeta):
            raise ctx.unsupported("division by an input-dependent tensor is not linear")
        meta, factor = (a, b) if isinstance(a, TensorMeta) else (b, a)
        scaled = signal / factor if self.divide else signal * factor
        return [_reduce_to(scaled, meta.shape)]


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

    @override
    def mirror(self, ctx: MirrorContext, signal: Tensor) -> Sequence[Tensor | None]:
        assert ctx.module is not None
        scale = _batch_norm_scale(ctx.module, ctx.name).to(signal.dtype)
        shape = (1, -1) + (1,) * (signal.dim() - 2)
        return [signal * scale.view(shape)]


class LinearRule(Rule):
    """A fully connected layer mirrors to multiplication by its transposed weight (no bias)."""

    @override
    def mirror(self, ctx: MirrorContext, signal: Tensor) -> Sequence[Tensor | None]:
        weight = ctx.module.weight if isinstance(ctx.module, nn.Linear) else ctx.bind(signatures.linear)["weight"]
        if not isinstance(weight, Tensor):
            raise ctx.unsupported("the layer's weight depends on the input")
        return [signal @ weight.to(signal.dtype)]


class ReshapeRule(Rule):
    """Flatten, view and reshape mirror to reshaping the signal back to the input's shape."""

    @override
    def mirror(self, ctx: MirrorContext, signal: Tensor) -> Sequence[Tensor | None]:
        if ctx.output.shape[0] != ctx.inputs[0].shape[0] or len(ctx.output.shape) == 0:
            raise ctx.unsupported("a reshape that mixes the batch dimension into the features")
        return [signal.reshape(ctx.input_shape(0))]


class GetItemRule(Rule):
    """Basic indexing (``x[:, :3]``, ``x[..., 1:]``) mirrors to writing the signal back into a zero tensor."""

    @override
    def mirror(self, ctx: MirrorContext, signal: Tensor) -> Sequence[Tensor | None]:
        source, index = ctx.args[0], ctx.args[1]
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

    @override
    def mirror(self, ctx: MirrorContext, signal: Tensor) -> Sequence[Tensor | None]:
        return [signal]


class MeanRule(Rule):
    """A mean (or sum) over dimensions mirrors to spreading the signal evenly back over them."""

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


_register_all([nn.ReLU, F.relu, torch.relu, torch.relu_, F.relu_, "relu", "relu_"], ReLURule())
_register_all([nn.Conv2d, F.conv2d], Conv2dRule())
_register_all([nn.MaxPool2d, F.max_pool2d, torch.max_pool2d], MaxPool2dRule())
_register_all([nn.AdaptiveMaxPool2d, F.adaptive_max_pool2d], AdaptiveMaxPool2dRule())
_register_all([nn.AdaptiveAvgPool2d, F.adaptive_avg_pool2d], AdaptiveAvgPool2dRule())
_register_all([nn.AvgPool2d, F.avg_pool2d], AvgPool2dRule())
_register_all([torch.cat, torch.concat, torch.concatenate], CatRule())
_register_all([operator.add, operator.iadd, torch.add, "add", "add_"], AddRule())
_register_all([operator.sub, operator.isub, torch.sub, "sub", "sub_"], AddRule(sign=-1.0))
_register_all([operator.mul, torch.mul, "mul"], ScaleRule())
_register_all([operator.truediv, torch.div, "div"], ScaleRule(divide=True))
_register_all([nn.BatchNorm1d, nn.BatchNorm2d], BatchNormRule())
_register_all([nn.Linear, F.linear], LinearRule())
_register_all(
    [torch.flatten, nn.Flatten, torch.reshape, "flatten", "view", "reshape", "squeeze", "unsqueeze"],
    ReshapeRule(),
)
_register_all(
    [
        nn.Dropout,
        nn.Dropout2d,
        nn.AlphaDropout,
        nn.Identity,
        F.dropout,
        F.dropout2d,
        "contiguous",
        "clone",
        torch.clone,
    ],
    IdentityRule(),
)
_register_all([operator.getitem], GetItemRule())
_register_all([torch.mean, "mean"], MeanRule())
_register_all([torch.sum, "sum"], MeanRule(average=False))
