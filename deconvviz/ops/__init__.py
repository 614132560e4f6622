"""The ops deconvviz knows: per op its mirror rule(s), its receptive-field geometry and whether it is a leaf.

One registry (:data:`deconvviz.ops.registry.OPS`) holds them; the modules here fill it, by kind:
:mod:`~deconvviz.ops.conv` (convolutions, fully connected layers), :mod:`~deconvviz.ops.pool`,
:mod:`~deconvviz.ops.activation` (where the reverse passes differ), :mod:`~deconvviz.ops.norm`,
:mod:`~deconvviz.ops.shape` (reshapes, concatenation, indexing, identities), :mod:`~deconvviz.ops.arith` and
:mod:`~deconvviz.ops.attention` (softmax, maxima over a dimension, products of tensors); an op without a rule
is mirrored by :mod:`~deconvviz.ops.fallback`.
Rule sets for one call are read out of it by :mod:`deconvviz.methods`.
"""

from __future__ import annotations

from typing import Any

from deconvviz.ops import activation, arith, attention, conv, norm, pool, shape
from deconvviz.ops.base import MirrorContext, Rule
from deconvviz.ops.geometry import get_geometry, register_geometry
from deconvviz.ops.registry import ANY_METHOD, OPS, OpKey

RuleKey = OpKey


def register_rule(target: RuleKey, rule: Rule | type[Rule] | None = None, *, method: str | None = None) -> Any:
    """Register the mirror rule for a module class, a function, or a tensor method name.

    A later registration for the same target replaces the earlier one. A module class that is not part of
    ``torch.nn`` becomes a leaf of the trace whenever the rule set of a call has a rule for it: it shows up
    as one node, mirrored by your rule. Rule sets built after the registration (every named method when it
    is used, see :func:`deconvviz.methods.get_method`) include it; a :class:`~deconvviz.methods.RuleSet`
    made earlier is frozen and does not.

    Args:
        target: ``nn.Module`` subclass, function (``torch.cat``, ``operator.add``), or method name (``"view"``).
        rule: a :class:`Rule` instance or subclass. Leave it out to use ``register_rule`` as a class decorator.
        method: register the rule only for this reverse pass (``"guided"``); by default for every method
            that has no rule of its own for the op.

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
            register_rule(target, cls, method=method)
            return cls

        return decorator
    instance = rule() if isinstance(rule, type) else rule
    if not isinstance(instance, Rule):
        raise TypeError(f"a mirror rule must be a deconvviz.Rule, got {type(instance).__name__}")
    if method is None:
        OPS.remove_rules(target)  # a rule for every method replaces the per-method ones
    OPS.set_rule(target, instance, method or ANY_METHOD)
    return rule


def get_rule(target: RuleKey, method: str = "deconvnet") -> Rule | None:
    """The rule ``target`` uses under ``method``; for a module class, the nearest registered base class's."""
    hit = OPS.find(target, lambda e: e.rule(method) is not None)
    return hit[1].rule(method) if hit is not None else None


__all__ = [
    "OPS",
    "MirrorContext",
    "Rule",
    "activation",
    "arith",
    "attention",
    "conv",
    "get_geometry",
    "get_rule",
    "norm",
    "pool",
    "register_geometry",
    "register_rule",
    "shape",
]
