"""Mirror rules: how each forward op is run during capture and undone in the reverse pass.

A rule has two halves. :meth:`Rule.forward` runs the op during the capture pass and may save what the
mirror needs (max-pooling saves its switches, a rule that asks for them gets its inputs' forward values).
:meth:`Rule.mirror` takes the signal arriving at the op's output and returns the signal for each of its
inputs, following Zeiler & Fergus (2014, section 2.1): max-pooling is undone with the recorded switches,
ReLU rectifies the signal, and a convolution is undone by the transposed convolution with the *same*
weights (no bias). Linear ops (batch norm in eval mode, average pooling, reshapes, concatenation, addition)
are undone by their exact adjoint.

Rules are registered per op in :data:`deconvviz.ops.registry.OPS` and chosen per call as a rule set
(:mod:`deconvviz.methods`). Register your own for a layer deconvviz does not know; a module class with a
rule is traced as one opaque node:

    >>> import deconvviz as dv
    >>> class Swap(dv.Rule):
    ...     def mirror(self, ctx, signal):
    ...         return [signal]
    >>> dv.register_rule(MyLayer, Swap())  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from deconvviz.core.capture import Call, TensorMeta, TupleMeta
from deconvviz.errors import UnsupportedOpError


@dataclass
class MirrorContext:
    """What a rule's :meth:`Rule.mirror` knows about the forward op it undoes.

    Attributes:
        name: the node's qualified name.
        module: the module for ``call_module`` nodes, else None.
        args: the op's positional arguments; tensors that carry signal are replaced by :class:`TensorMeta`,
            other tensors (weights, constants) are kept.
        kwargs: keyword arguments, likewise.
        inputs: the :class:`TensorMeta` of every signal-carrying tensor argument (a ``TupleMeta`` for a tuple
            of them), in argument order; :meth:`Rule.mirror` returns one signal per entry (a list for a tuple).
        output: shape of the op's output in the capture batch (a ``TupleMeta`` for a tuple of tensors).
        saved: what :meth:`Rule.forward` saved, for the whole capture batch.
        sample: for each seed in the mirrored batch, the row of the capture batch it came from.
        values: the forward values of ``inputs`` (whole capture batch) when the rule asked for them with
            :attr:`Rule.needs_inputs`, else empty; :meth:`value` picks the rows of the seeds.
        op: what the node calls: the module, the function, or the tensor method's name.
    """

    name: str
    module: nn.Module | None
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    inputs: list[Any]  # TensorMeta, or TupleMeta for a tuple of tensors
    output: Any  # likewise
    saved: Any
    sample: Tensor
    _capture_batch: int = field(default=1, repr=False)
    values: list[Tensor] = field(default_factory=list, repr=False)
    op: Any = field(default=None, repr=False)

    def vjp(self, signal: Tensor) -> list[Tensor | None]:
        """The exact gradient of this op at the seeds' forward inputs (needs :attr:`Rule.needs_inputs`)."""
        return local_vjp(self.op, self.args, self.kwargs, [self.value(i) for i in range(len(self.inputs))], signal)

    def per_seed(self, tensor: Tensor) -> Tensor:
        """Pick, for every seed, the row of a capture-batch tensor that seed belongs to.

        Raises:
            UnsupportedOpError: the tensor's first dimension is not the batch (an op on a batch regrouped into
                windows, as Swin's and MaxViT's attention do), so no row belongs to one seed.
        """
        if isinstance(tensor, tuple):  # a tuple of tensors (torch.sort's values and indices): item by item
            return rebuilt(tensor, [self.per_seed(item) if isinstance(item, Tensor) else item for item in tensor])
        if tensor.dim() == 0 or tensor.shape[0] != self._capture_batch:
            rows = tensor.shape[0] if tensor.dim() else "no"
            raise self.unsupported(
                f"its forward value has {rows} rows where the batch has {self._capture_batch} (the op works on the "
                "batch regrouped, as windowed attention does); register a mirror rule for the module that holds "
                "it (deconvviz.register_rule), or project a layer before it"
            )
        if self._capture_batch == 1:
            return tensor.expand(self.sample.shape[0], *tensor.shape[1:])
        return tensor.index_select(0, self.sample)

    def value(self, i: int = 0) -> Tensor:
        """The forward value of input ``i``, one row per seed (needs :attr:`Rule.needs_inputs`)."""
        if not self.values:
            raise self.unsupported("the rule reads its inputs' forward values but does not set needs_inputs")
        return self.per_seed(self.values[i])

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
    """Base class of mirror rules; subclass it and override :meth:`mirror` (and :meth:`forward` if needed).

    Attributes:
        needs_inputs: the capture keeps the forward values of the op's signal-carrying inputs for
            :meth:`mirror` (``ctx.value(i)``). Off by default, so a capture holds only what rules ask for.
        op_kind: what the mirror does, in a word or two, for labels of the steps of a projection
            (``"unpool"``, ``"rectify"``, ``"transposed convolution"``).
    """

    needs_inputs: bool = False
    role: str | None = None
    """What the op is to the reverse passes, for code that applies them inside an op without a rule of its own
    (:mod:`deconvviz.ops.fallback`): ``"rectifier"`` (``relu(g)``, times ``f'(x)`` for guided), ``"gate"`` (held at
    its forward value: no signal goes back), ``"held_norm"`` (per-sample statistics held), or None."""
    holds: bool = False
    """The op passes no signal to any input (a gate held at its forward value); its inputs do not widen the
    receptive field of what lies above it."""
    op_kind: str = "op"

    def needs_values(self, carried: int) -> bool:
        """Whether the capture keeps the values of this op's ``carried`` signal-carrying inputs."""
        return self.needs_inputs

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


# ------------------------------------------------------------------------------------------------ helpers


class SavingRule(Rule):
    """A rule that runs its op unchanged and keeps what :meth:`save` takes from the output for :meth:`mirror`.

    :meth:`run` (activations only, nothing to mirror) does not call :meth:`save`.
    """

    def forward(self, call: Call) -> tuple[Any, Any]:
        """Run the op, then :meth:`save` what the mirror needs."""
        out = self.run(call)
        return out, self.save(call, out)

    def run(self, call: Call) -> Any:
        """Run the op unchanged."""
        return call.run()

    def save(self, call: Call, out: Any) -> Any:
        """What :meth:`mirror` reads as ``ctx.saved``, from the call and its output (None: nothing)."""
        return None


class HeldRule(SavingRule):
    """A rule whose op is held at its forward value under deconvnet and guided (``hold``), or else mirrored exactly.

    Args:
        hold: True for deconvnet and guided (the op is a constant of the feature path), False for the gradient.
    """

    role_when_held: str | None = "gate"
    """What the op is when held (:attr:`Rule.role`): ``"gate"`` passes no signal at all (:attr:`Rule.holds`),
    ``"held_norm"`` scales it, ``"held_attention"`` passes it through the values; None: no role the fallback
    knows."""

    def __init__(self, hold: bool = True) -> None:
        self.hold = hold
        self.role = self.role_when_held if hold else None
        self.holds = hold and self.role_when_held == "gate"


def pair(value: int | Sequence[int]) -> tuple[int, int]:
    """``3 -> (3, 3)``; a pair stays a pair."""
    if isinstance(value, int):
        return (value, value)
    a, b = value
    return (int(a), int(b))


def first_tensor_arg(call: Call) -> Tensor:
    """The op's first argument (its input tensor)."""
    return call.args[0] if call.args else next(iter(call.kwargs.values()))


def reduce_to(signal: Tensor, shape: Sequence[int]) -> Tensor:
    """Sum a broadcast signal back to an operand's shape (the adjoint of broadcasting); batch dim kept."""
    target = tuple(shape[1:])
    extra = signal.dim() - 1 - len(target)
    if extra > 0:
        signal = signal.sum(dim=tuple(range(1, 1 + extra)))
    dims = tuple(i + 1 for i, n in enumerate(target) if n == 1 and signal.shape[i + 1] != 1)
    if dims:
        signal = signal.sum(dim=dims, keepdim=True)
    return signal


def meta_of(value: Any) -> bool:
    """Whether an argument of a mirrored op carries signal (is a :class:`TensorMeta`)."""
    return isinstance(value, TensorMeta)


def call_op(op: Any, args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
    """Call an op the way a graph node does: a module or function directly, a tensor method by its name."""
    if isinstance(op, str):
        first, *rest = args
        return getattr(first, op)(*rest, **kwargs)
    return op(*args, **kwargs)


def fill_metas(structure: Any, values: Iterator[Any]) -> Any:
    """``structure`` (args, nested tuples and lists) with each ``TensorMeta`` / ``TupleMeta`` replaced by a value."""
    if isinstance(structure, TensorMeta | TupleMeta):
        return next(values)
    if isinstance(structure, tuple):
        return tuple(fill_metas(s, values) for s in structure)
    if isinstance(structure, list):
        return [fill_metas(s, values) for s in structure]
    if isinstance(structure, dict):
        return {k: fill_metas(v, values) for k, v in structure.items()}
    return structure


def rebuilt(value: tuple[Any, ...], items: Sequence[Any]) -> Any:
    """A tuple of ``items`` of ``value``'s kind.

    A named tuple stays one, as torch.sort's ``(values, indices)`` does, so that ``.values`` still reads it.
    """
    kind = type(value)
    if hasattr(kind, "n_fields"):  # torch.return_types
        return kind(list(items))
    if hasattr(value, "_fields"):  # collections.namedtuple
        return kind(*items)
    return tuple(items)


def _leaf(value: Any) -> Any:
    """A fresh autograd leaf for a forward value (item by item for a tuple of tensors)."""
    if isinstance(value, list):
        return [_leaf(v) for v in value]
    if isinstance(value, tuple):
        return rebuilt(value, [_leaf(v) for v in value])
    if isinstance(value, Tensor) and (value.is_floating_point() or value.is_complex()):
        return value.detach().clone().requires_grad_(True)
    return value


def _copy(value: Any) -> Any:
    """A copy of a leaf (an op that works in place then cannot touch the leaf)."""
    if isinstance(value, tuple):
        return rebuilt(value, [_copy(v) for v in value])
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value.clone() if isinstance(value, Tensor) else value


def _flat(value: Any) -> list[Any]:
    if isinstance(value, tuple | list):
        return [item for v in value for item in _flat(v)]
    return [value]


def _pairs(out: Any, signal: Any) -> list[tuple[Tensor, Tensor]]:
    """``(output, signal)`` pairs of an op's output and its signal (item by item for a tuple output)."""
    if isinstance(out, Tensor):
        if not isinstance(signal, Tensor):
            return []
        return [(out, signal)] if out.requires_grad else []
    if isinstance(out, tuple | list) and isinstance(signal, tuple | list):
        return [p for o, s in zip(out, signal, strict=False) if s is not None for p in _pairs(o, s)]
    return []


def _regroup(template: Any, grads: Iterator[Tensor | None]) -> Any:
    if isinstance(template, tuple | list):
        return [_regroup(t, grads) for t in template]
    return next(grads)


class DetachedOutputError(RuntimeError):
    """An op whose output depends on its input where autograd cannot see it: its vector-Jacobian product is unknown."""


def _cut_off(
    op: Any, args: Sequence[Any], kwargs: dict[str, Any], leaves: list[Any], out: Any, signal: Any, mode: Any
) -> bool:
    """Whether a floating-point output that autograd sees as constant in fact changes with the op's input.

    Such an output has no gradient, yet it is not constant: the op left autograd's view (NumPy, ``.item()``), and
    a zero signal below it would be a wrong, blank picture. Checked by running the op once more on shifted
    inputs; an output that is truly constant (``zeros_like``, a frozen buffer) gives zero, as it should.
    """
    if not (isinstance(out, Tensor) and out.is_floating_point() and isinstance(signal, Tensor)):
        return False
    if not bool(signal.ne(0).any()):
        return False
    shifted = iter([_copy(leaf).detach() + 1 if isinstance(leaf, Tensor) else _copy(leaf) for leaf in leaves])
    with torch.no_grad(), mode if mode is not None else contextlib.nullcontext():
        again = call_op(op, fill_metas(tuple(args), shifted), fill_metas(dict(kwargs), shifted))
    return not (isinstance(again, Tensor) and again.shape == out.shape and torch.equal(again, out.detach()))


def local_vjp(
    op: Any,
    args: Sequence[Any],
    kwargs: dict[str, Any],
    values: Sequence[Any],
    signal: Any,
    *,
    mode: Any = None,
) -> list[Any]:
    """The vector-Jacobian product of one op at the forward values ``values`` of its signal-carrying inputs.

    ``args`` and ``kwargs`` are the op's arguments with those inputs as :class:`TensorMeta` (as a mirror rule
    sees them); ``values`` stand in for them, in order (a tuple of tensors for a ``TupleMeta``). This is the
    exact gradient of the op alone, worked out by autograd (which also runs under ``torch.inference_mode``,
    where the rest of the engine runs).

    Args:
        op: the module, function or tensor method name.
        args: its positional arguments as a rule sees them.
        kwargs: its keyword arguments likewise.
        values: the forward values, one row per seed.
        signal: the signal at the op's output (a list with one entry per item, None for none, for an op that
            returns a tuple).
        mode: a context manager active while the op runs forward (a ``TorchFunctionMode`` that swaps rules).

    Returns:
        One signal per entry of ``values`` (None where the output does not depend on it; a list per tuple).
    """
    with torch.inference_mode(False), torch.enable_grad():
        leaves = [_leaf(v) for v in values]
        # the op sees copies of the leaves, so an in-place op inside it cannot touch a leaf
        fresh = iter([_copy(leaf) for leaf in leaves])
        with mode if mode is not None else contextlib.nullcontext():
            out = call_op(op, fill_metas(tuple(args), fresh), fill_metas(dict(kwargs), fresh))
        pairs = _pairs(out, signal)
        flat = [leaf for leaf in _flat(leaves) if isinstance(leaf, Tensor) and leaf.requires_grad]
        if not pairs or not flat:
            if flat and _cut_off(op, args, kwargs, leaves, out, signal, mode):
                raise DetachedOutputError(
                    "its output changes with its input outside autograd's view: a NumPy round trip, .item() or "
                    ".detach() inside it"
                )
            return [None] * len(leaves)
        outputs = [o for o, _ in pairs]
        signals = [s.to(o.dtype).clone() for o, s in pairs]
        grads = iter(torch.autograd.grad(outputs, flat, signals, allow_unused=True))
    found = {id(leaf): next(grads) for leaf in flat}
    return _regroup(leaves, iter([found.get(id(leaf)) for leaf in _flat(leaves)]))
