"""One forward pass over a traced graph that records what the mirrored deconvnet needs.

The pass runs the graph node by node instead of the model's own ``forward``: nothing is attached to the
caller's model (no hooks to leave behind), in-place ops cannot overwrite what was captured, and the run
stops at the deepest requested layer. For every node on a signal path it keeps the argument *shapes*,
the weights and constants the op used, whatever the op's rule saved (the max-pooling switches, a ReLU's
mask) and, only for rules that ask for them (``Rule.needs_inputs``), the forward values of the op's
inputs; for the requested layers it keeps the activations themselves. Nothing else is held: the capture
saves what the chosen rule set needs, not every intermediate activation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor, fx, nn

from deconvviz.core.graph import Graph, evaluating
from deconvviz.errors import DeconvVizError, ForwardError, first_line


@dataclass(frozen=True)
class TensorMeta:
    """Shape, dtype and device of a forward tensor whose value the mirror does not keep."""

    shape: torch.Size
    dtype: torch.dtype
    device: torch.device

    @classmethod
    def of(cls, tensor: Tensor) -> TensorMeta:
        """Describe ``tensor``."""
        return cls(tensor.shape, tensor.dtype, tensor.device)


@dataclass(frozen=True)
class TupleMeta:
    """A tuple or list of forward tensors, described item by item.

    The output of ``chunk``, ``split``, ``unbind``, ``torch.max(x, dim)``, ``topk`` or ``nn.MultiheadAttention``
    (whose attention weights may be None). Its mirrored signal is a list with one entry per item (None where
    no signal arrives).
    """

    items: tuple[TensorMeta | None, ...]
    is_list: bool = False

    @classmethod
    def of(cls, values: tuple[Any, ...] | list[Any]) -> TupleMeta:
        """Describe a tuple or list of tensors (None items stay None)."""
        return cls(tuple(None if v is None else TensorMeta.of(v) for v in values), isinstance(values, list))


def _is_tensors(value: Any) -> bool:
    """A non-empty tuple or list of tensors, some items possibly None (``(output, None)``)."""
    return (
        isinstance(value, tuple | list)
        and any(isinstance(v, Tensor) for v in value)
        and all(v is None or isinstance(v, Tensor) for v in value)
    )


@dataclass
class Call:
    """One forward op as the capture pass is about to run it.

    Attributes:
        fn: what to call: the module, the function, or (for a tensor method) a function taking ``self`` first.
        args: positional arguments, with real tensors (for a tensor method, ``self`` comes first).
        kwargs: keyword arguments, with real tensors.
        module: the module for ``call_module`` nodes, else None.
        name: the node's qualified name.
        reusable: True when the first argument is an intermediate tensor that nothing reads after this op, so
            an element-wise op may overwrite it in place (saves memory traffic).
    """

    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    module: nn.Module | None
    name: str
    reusable: bool = False

    def run(self) -> Any:
        """Run the op as the model would."""
        return self.fn(*self.args, **self.kwargs)


class ForwardRule(Protocol):
    """The forward half of a mirror rule (see :class:`deconvviz.ops.base.Rule`)."""

    def needs_values(self, carried: int) -> bool:  # pragma: no cover - protocol
        """Whether to keep the forward values of the op's inputs."""
        ...

    def forward(self, call: Call) -> tuple[Any, Any]:  # pragma: no cover - protocol
        """Run the op; return ``(output, saved)``."""
        ...

    def run(self, call: Call) -> Any:  # pragma: no cover - protocol
        """Run the op without saving anything for the mirror."""
        ...


@dataclass
class NodeRecord:
    """What the mirror needs to undo one forward op.

    Attributes:
        args: positional arguments with signal-carrying tensors replaced by :class:`TensorMeta`.
        kwargs: keyword arguments, likewise.
        inputs: the :class:`TensorMeta` (or :class:`TupleMeta`) entries of ``args``/``kwargs``, in order.
        input_nodes: the node that produced each entry of ``inputs``.
        output: the op's output shape.
        saved: what the rule's ``forward`` saved.
        values: the forward values of ``inputs`` when the rule asked for them, else empty.
    """

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    inputs: list[TensorMeta | TupleMeta]
    input_nodes: list[fx.Node]
    output: TensorMeta | TupleMeta
    saved: Any
    values: list[Any] = field(default_factory=list)


@dataclass
class Capture:
    """The result of a capture pass.

    Attributes:
        activations: output of every requested node, by node.
        records: per signal-carrying node, what its mirror needs (empty when recording was off).
        batch: size of the batch that was run.
        input_shape: shape of that batch.
    """

    activations: dict[fx.Node, Tensor]
    records: dict[fx.Node, NodeRecord]
    batch: int
    input_shape: tuple[int, ...]

    def nbytes(self, model: nn.Module, x: Tensor) -> int:
        """The memory the pass holds of its own with its input ``x``: not ``model``'s weights and buffers."""
        shared = {p.untyped_storage().data_ptr() for p in model.parameters()}
        shared |= {b.untyped_storage().data_ptr() for b in model.buffers()}
        seen: set[int] = set()
        total = 0

        def visit(value: Any) -> None:
            nonlocal total
            if isinstance(value, Tensor):
                storage = value.untyped_storage()
                key = storage.data_ptr()
                if key not in seen and key not in shared:
                    seen.add(key)
                    total += storage.nbytes()
            elif isinstance(value, tuple | list):
                for item in value:
                    visit(item)
            elif isinstance(value, dict):
                for item in value.values():
                    visit(item)

        visit(x)
        visit(list(self.activations.values()))
        for record in self.records.values():
            visit([record.args, record.kwargs, record.saved, record.values])
        return total


def run(
    graph: Graph,
    x: Tensor,
    targets: Sequence[fx.Node],
    rules: Mapping[fx.Node, ForwardRule] | None = None,
    *,
    record: bool = True,
    emit: Callable[[fx.Node, Tensor], None] | None = None,
) -> Capture:
    """Run the graph on ``x`` up to ``targets`` and record what the mirror needs.

    Args:
        graph: the traced model.
        x: the input batch.
        targets: nodes whose outputs to keep; the run stops once they are computed.
        rules: rule per signal-carrying node. Nodes with a rule run through it (out of place, so in-place ops in
            the model cannot overwrite captured activations); nodes without one run as the model runs them.
        record: keep a :class:`NodeRecord` (and the rule's saved state) per node for the mirror; off when only
            activations are wanted.
        emit: instead of keeping the targets' outputs, hand each to ``emit(node, output)`` as soon as it is
            computed (it is released afterwards, so memory holds only what later ops still need).

    Returns:
        The :class:`Capture` (with no activations when ``emit`` is given).
    """
    order = graph.ancestors(targets)
    protected = set(targets)
    keep = set() if emit is not None else protected
    last_use: dict[fx.Node, fx.Node] = {}
    for node in order:
        for arg in node.all_input_nodes:
            last_use[arg] = node
    release: dict[fx.Node, list[fx.Node]] = {}
    for arg, user in last_use.items():
        if arg not in keep:
            release.setdefault(user, []).append(arg)

    env: dict[fx.Node, Any] = {}
    records: dict[fx.Node, NodeRecord] = {}
    kept: set[int] = set()  # storages of saved input values: never overwritten in place
    carries = graph.carries
    for node in order:
        if node.op == "placeholder":
            env[node] = x if node is graph.input else (node.args[0] if node.args else None)
        elif node.op == "get_attr":
            env[node] = graph.attribute(node)
        elif node.op in ("call_module", "call_function", "call_method"):
            args = fx.node.map_arg(node.args, env.__getitem__)
            kwargs = fx.node.map_arg(node.kwargs, env.__getitem__)
            module = graph.module(node)
            call = Call(_callable(node, module), tuple(args), dict(kwargs), module, graph.names[node])
            call.reusable = _reusable(node, env, last_use, protected, kept)
            rule = rules.get(node) if rules is not None and node in carries else None
            try:
                if rule is None:
                    env[node] = call.run()
                elif not record:
                    env[node] = rule.run(call)
                else:
                    output, saved = rule.forward(call)
            except (DeconvVizError, MemoryError, torch.cuda.OutOfMemoryError):
                raise
            except Exception as exc:  # the model's own code refused the input: one line, not torch's traceback
                env.clear()
                smallest = _smallest_side(graph.model, x)
                fix = (
                    f"the smallest square input it runs on is {smallest} px: --size {smallest} (or more) on the "
                    "command line, or a larger input"
                    if smallest is not None
                    else "give it the input it takes (channels, size: --size N on the command line), as the loaded "
                    "model's preprocess makes from a picture"
                )
                raise ForwardError(
                    f"the model's forward pass fails at node {graph.names[node]!r} on an input of shape "
                    f"{tuple(x.shape)} ({first_line(exc)[:200]}); {fix}"
                ) from exc
            if rule is not None and record:
                env[node] = output
                signal = set(graph.signal_inputs.get(node, ()))
                records[node] = _record(node, env, signal, output, saved, keep_values=rule.needs_values)
                for value in records[node].values:
                    for item in value if isinstance(value, tuple | list) else [value]:
                        if isinstance(item, Tensor):
                            kept.add(item.untyped_storage().data_ptr())
            if emit is not None and node in protected:
                emit(node, env[node])
        for done in release.get(node, ()):
            env.pop(done, None)

    activations = {node: env[node] for node in targets} if emit is None else {}
    return Capture(activations=activations, records=records, batch=int(x.shape[0]), input_shape=tuple(x.shape))


def _smallest_side(model: nn.Module, x: Tensor, largest: int = 1024) -> int | None:
    """The smallest side of a square input the model runs on, when ``x`` is refused for being too small.

    Found by forward passes on zeros of growing sides (doubling, then halving the gap), so only in an error's path;
    None where ``x`` is no square picture or no side up to ``largest`` runs (the input is wrong in another way).
    """
    if x.dim() != 4 or x.shape[-1] != x.shape[-2]:
        return None

    def runs(side: int) -> bool:
        try:
            with torch.no_grad(), evaluating(model):  # a model in training mode keeps its statistics
                model(x.new_zeros(1, x.shape[1], side, side))
        except Exception:
            return False
        return True

    low, high = int(x.shape[-1]), None  # low: a side known to fail
    side = max(low * 2, low + 1)
    while side <= largest:
        if runs(side):
            high = side
            break
        low, side = side, side * 2
    if high is None:
        return None
    while high - low > 1:
        middle = (low + high) // 2
        if runs(middle):
            high = middle
        else:
            low = middle
    return high


def _reusable(
    node: fx.Node,
    env: dict[fx.Node, Any],
    last_use: dict[fx.Node, fx.Node],
    protected: set[fx.Node],
    kept: set[int],
) -> bool:
    """Whether ``node`` may overwrite its first argument: nothing can observe that tensor afterwards.

    It must be an intermediate result (not the caller's input, not a parameter, not a requested layer), this
    node must be its last user and use it once, and no other live value may share its storage (a view).
    """
    first = node.args[0] if node.args else None
    if not isinstance(first, fx.Node) or first.op in ("placeholder", "get_attr") or first in protected:
        return False
    if last_use.get(first) is not node or node.all_input_nodes.count(first) != 1:
        return False
    if list(node.args).count(first) != 1 or first in node.kwargs.values():
        return False
    value = env.get(first)
    if not isinstance(value, Tensor):
        return False
    storage = value.untyped_storage().data_ptr()
    if storage in kept:
        return False
    for other_node, other in env.items():
        if other_node is not first and isinstance(other, Tensor) and other.untyped_storage().data_ptr() == storage:
            return False
    return True


def _callable(node: fx.Node, module: nn.Module | None) -> Callable[..., Any]:
    if module is not None:
        return module
    if node.op == "call_method":
        name = str(node.target)

        def method(self: Any, *args: Any, **kwargs: Any) -> Any:
            return getattr(self, name)(*args, **kwargs)

        return method
    return node.target  # type: ignore[return-value]


def _record(
    node: fx.Node,
    env: dict[fx.Node, Any],
    signal: set[fx.Node],
    output: Any,
    saved: Any,
    *,
    keep_values: Callable[[int], bool],
) -> NodeRecord:
    inputs: list[TensorMeta | TupleMeta] = []
    input_nodes: list[fx.Node] = []
    values: list[Any] = []

    def describe(arg: fx.Node) -> Any:
        value = env[arg]
        if arg in signal and (isinstance(value, Tensor) or _is_tensors(value)):
            meta = TensorMeta.of(value) if isinstance(value, Tensor) else TupleMeta.of(value)
            inputs.append(meta)
            input_nodes.append(arg)
            values.append(value)
            return meta
        return value

    args = fx.node.map_arg(node.args, describe)
    kwargs = fx.node.map_arg(node.kwargs, describe)
    out = (
        TensorMeta.of(output)
        if isinstance(output, Tensor)
        else TupleMeta.of(output)
        if _is_tensors(output)
        else TensorMeta(torch.Size(), torch.float32, torch.device("cpu"))
    )
    return NodeRecord(
        tuple(args), dict(kwargs), inputs, input_nodes, out, saved, values if keep_values(len(values)) else []
    )
