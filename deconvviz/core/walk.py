"""The reverse walk: from seeds at one layer back to the input, applying the rule set's mirror rule per op.

Signals that reach a node from several consumers (residual branches) are summed. The walk visits only
nodes that carry the image's signal, in reverse execution order; which rule undoes an op is decided by the
rule set passed in, so the same capture pass serves any reverse pass whose rules it recorded for.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from torch import Tensor, fx

from deconvviz.core.capture import Capture, TensorMeta, TupleMeta
from deconvviz.core.graph import Graph
from deconvviz.errors import DeconvVizError, UnsupportedOpError
from deconvviz.ops.base import MirrorContext

if TYPE_CHECKING:  # pragma: no cover
    from deconvviz.methods import RuleSet


def context(graph: Graph, capture: Capture, node: fx.Node, sample: Tensor) -> MirrorContext:
    """What the rule of ``node`` knows about its forward op, for the seeds of ``sample``."""
    record = capture.records[node]
    module = graph.module(node)
    return MirrorContext(
        name=graph.names[node],
        module=module,
        args=record.args,
        kwargs=record.kwargs,
        inputs=record.inputs,
        output=record.output,
        saved=record.saved,
        sample=sample,
        _capture_batch=capture.batch,
        values=record.values,
        op=module if module is not None else node.target,
    )


Observer = Callable[[fx.Node, Any], None]
"""``observe(node, signal)``: called with each node's complete signal (see :func:`mirror`)."""


def mirror(
    graph: Graph,
    capture: Capture,
    node: fx.Node,
    seeds: Tensor,
    sample: Tensor,
    rules: RuleSet,
    observe: Observer | None = None,
) -> Tensor:
    """Walk from ``node`` back to the input.

    Args:
        graph: the traced model.
        capture: the capture pass that recorded every op below ``node`` with the same rule set.
        node: where the seeds are.
        seeds: ``(K, *activation.shape[1:])`` signals at ``node``.
        sample: ``(K,)`` the row of the capture batch each seed belongs to.
        rules: the rule set of the call.
        observe: called with every node's signal once it is complete (every consumer's mirror has added its
            part), before the node's own rule undoes it: first the seeds at ``node``, last the reconstruction
            at the input. The signal is the walk's own tensor (a list for a tuple-valued node); copy what you
            keep.

    Returns:
        ``(K, *input.shape[1:])`` reconstructions in input space.

    Raises:
        UnsupportedOpError: a rule returned the wrong number or shape of signals.
    """
    order = [n for n in graph.ancestors([node]) if n in graph.carries]
    signals: dict[fx.Node, Any] = {node: seeds}
    result: Tensor | None = None
    for current in reversed(order):
        signal = signals.pop(current, None)
        if signal is None:
            continue
        if observe is not None:
            observe(current, signal)
        if current is graph.input:
            result = signal
            continue
        try:
            _step(graph, rules, capture, current, signal, sample, signals, seeds.shape[0])
        except UnsupportedOpError as exc:
            if exc.node is None:  # where the pass stopped, for those who look for the layers it cannot reach
                exc.node = graph.names[current]
            raise
        except (RuntimeError, ValueError, IndexError) as exc:  # a rule met a case it was not written for
            if isinstance(exc, DeconvVizError):
                raise
            text = str(exc).strip()
            failed = UnsupportedOpError(
                f"cannot mirror node {graph.names[current]!r}: its mirror rule failed here "
                f"({type(exc).__name__}: {text.splitlines()[0] if text else 'no message'}); register a mirror rule "
                "for the module that holds it (deconvviz.register_rule), or project a layer before it"
            )
            failed.node = graph.names[current]
            raise failed from exc
    if result is None:  # no path carried any signal (every seed was zero or blocked)
        result = seeds.new_zeros((seeds.shape[0], *capture.input_shape[1:]))
    return result


def _step(
    graph: Graph,
    rules: RuleSet,
    capture: Capture,
    current: fx.Node,
    signal: Any,
    sample: Tensor,
    signals: dict[fx.Node, Any],
    count: int,
) -> None:
    """Mirror one node: its signal goes down to its inputs' entries in ``signals``."""
    record = capture.records[current]
    rule = rules.for_node(current, graph.module(current))
    if rule is None:
        raise UnsupportedOpError(f"no mirror rule for node {graph.names[current]!r} in rule set {rules.name!r}")
    ctx = context(graph, capture, current, sample)
    outputs = list(rule.mirror(ctx, signal))
    if len(outputs) != len(record.inputs):
        raise UnsupportedOpError(
            f"the mirror rule {type(rule).__name__} returned {len(outputs)} signals for node "
            f"{ctx.name!r}, which has {len(record.inputs)} input(s) that depend on the image"
        )
    for parent, meta, out in zip(record.input_nodes, record.inputs, outputs, strict=True):
        if out is None:
            continue
        _check(rule, ctx.name, meta, out, count)
        signals[parent] = _add(signals.get(parent), out)


def _check(rule: Any, name: str, meta: TensorMeta | TupleMeta, out: Any, count: int) -> None:
    """Raise unless a rule's signal for one input has that input's shape (per item for a tuple)."""
    if isinstance(meta, TupleMeta):
        if not isinstance(out, list | tuple) or len(out) != len(meta.items):
            raise UnsupportedOpError(
                f"the mirror rule {type(rule).__name__} must return a list of {len(meta.items)} signals for the "
                f"tuple input of node {name!r}"
            )
        for item, piece in zip(meta.items, out, strict=True):
            if piece is not None and item is not None:
                _check(rule, name, item, piece, count)
        return
    expected = (count, *meta.shape[1:])
    if not isinstance(out, Tensor) or tuple(out.shape) != expected:
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise UnsupportedOpError(
            f"the mirror rule {type(rule).__name__} returned shape {got} for an input of node {name!r}; "
            f"expected {expected}"
        )


def _add(previous: Any, out: Any) -> Any:
    """Sum two signals for one node (item by item for tuples; None is no signal)."""
    if previous is None:
        return list(out) if isinstance(out, list | tuple) else out
    if isinstance(out, list | tuple):
        return [a if b is None else b if a is None else a + b for a, b in zip(previous, out, strict=True)]
    return previous + out
