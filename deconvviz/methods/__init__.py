"""Reverse passes as rule sets chosen per call: deconvnet (the default), guided backpropagation, the gradient.

A :class:`RuleSet` is a frozen mapping from op to mirror rule. The three named presets are read out of the
op registry (:data:`deconvviz.ops.registry.OPS`) when they are used, so rules registered with
:func:`deconvviz.register_rule` are part of them. A set of your own is made from a preset and registered by
name, once, as Zennit registers its composites::

    >>> import deconvviz as dv
    >>> mine = dv.get_method("guided").with_rules({nn.SiLU: MyRule()}, name="mine")  # doctest: +SKIP
    >>> dv.register_method(mine)  # doctest: +SKIP
    >>> net.project(x, "conv5_3", top=9, method="mine")  # doctest: +SKIP

The methods differ only at the rectifying activations (see ``docs/rules.md``): with ``g`` the signal
arriving from above and ``f'(x)`` the activation's local derivative, deconvnet passes ``relu(g)``, guided
backpropagation ``relu(g) * f'(x)`` and the gradient ``g * f'(x)``. Max-pooling unpools by the switches in all
three. Under deconvnet and guided, gates (``x * sigmoid(z)``) and per-sample statistics are held at their
forward values.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from types import MappingProxyType
from typing import Any

from torch import fx, nn

from deconvviz.errors import DeconvVizError
from deconvviz.ops.activation import GateRule, RectifierRule, SmoothRule
from deconvviz.ops.base import Rule
from deconvviz.ops.fallback import FallbackRule
from deconvviz.ops.norm import NormActRule, fused_parts
from deconvviz.ops.registry import OPS, OpKey, inherits

DEFAULT_METHOD = "deconvnet"
PRESETS = ("deconvnet", "guided", "gradient")
"""The reverse passes deconvviz ships, the paper's first."""


class MethodError(DeconvVizError, ValueError):
    """An unknown reverse-pass name, or a rule set that cannot be registered."""


class RuleSet(Mapping[Any, Rule]):
    """A frozen mapping from op (module class, function, tensor method name) to its mirror rule.

    A module class also finds the rule of its nearest base class in the set, unless it overrides
    ``forward``. Build one from a preset with :meth:`with_rules`; a set never changes once made.

    An opaque submodule without a rule in the set (one torch.fx could not trace into, or a ``torch.nn``
    module deconvviz knows no rule for) is mirrored by autograd over that submodule with the rules of the
    set's ``kind`` applied inside it (:class:`deconvviz.ops.fallback.FallbackRule`).

    Args:
        name: what the set is called in manifests and messages.
        rules: the mapping.
        kind: the reverse pass the set follows where it has no rule (``"deconvnet"``, ``"guided"`` or
            ``"gradient"``): what opaque submodules apply inside them.
    """

    def __init__(self, name: str, rules: Mapping[Any, Rule], *, kind: str = "deconvnet") -> None:
        if kind not in PRESETS:
            raise MethodError(f"kind must be one of {', '.join(PRESETS)}, got {kind!r}")
        for key, rule in rules.items():
            if not isinstance(rule, Rule):
                raise MethodError(f"the rule for {key!r} in rule set {name!r} is not a deconvviz.Rule")
        self._name = name
        self.kind = kind
        self._rules: Mapping[Any, Rule] = MappingProxyType(dict(rules))
        self._fallback = FallbackRule(kind, self._rules.items())
        self._cache: dict[Any, Rule | None] = {}

    @property
    def name(self) -> str:
        """The set's name (``"deconvnet"``)."""
        return self._name

    def __getitem__(self, key: Any) -> Rule:
        return self._rules[key]

    def __iter__(self) -> Iterator[Any]:
        return iter(self._rules)

    def __len__(self) -> int:
        return len(self._rules)

    def __repr__(self) -> str:
        return f"RuleSet({self._name!r}, {len(self)} ops)"

    def __hash__(self) -> int:
        return id(self)

    def __eq__(self, other: object) -> bool:
        return self is other

    def rule(self, target: Any) -> Rule | None:
        """The rule for ``target``; for a module class, that of its nearest base in the set."""
        try:
            return self._cache[target]
        except KeyError:
            pass
        except TypeError:  # unhashable
            return None
        found: Rule | None = None
        if isinstance(target, type):
            for cls in target.__mro__:
                if cls in self._rules:
                    found = self._rules[cls] if inherits(target, cls) else None
                    break
        else:
            found = self._rules.get(target)
        self._cache[target] = found
        return found

    def for_node(self, node: fx.Node, module: nn.Module | None) -> Rule | None:
        """The rule for a graph node: by its module's class for ``call_module`` nodes, else by its target.

        Any op without a rule (module, function or tensor method) gets the autograd fallback.
        """
        if module is None:
            return self.rule(node.target) or self._fallback
        return self.rule(type(module)) or self._fused(module) or self._fallback

    def mirrored_by_rule(self, node: fx.Node, module: nn.Module | None) -> bool:
        """Whether a node is mirrored by a rule of its own (False: by the autograd fallback)."""
        return not isinstance(self.for_node(node, module), FallbackRule)

    def _fused(self, module: nn.Module) -> Rule | None:
        """The rule of a batch norm fused with an element-wise activation (:class:`NormActRule`), if it is one."""
        parts = fused_parts(module)
        if parts is None:
            return None
        act = parts[0]
        key = ("fused", type(module), type(act))
        if key in self._cache:
            return self._cache[key]
        found: Rule | None = None
        if isinstance(act, nn.Identity):
            found = NormActRule(None, saves=False)
        else:
            rule = self.rule(type(act))
            if isinstance(rule, RectifierRule | GateRule | SmoothRule):
                saves = not (
                    (isinstance(rule, RectifierRule) and rule.method == "deconvnet")
                    or (isinstance(rule, GateRule) and rule.hold)
                )
                found = NormActRule(rule, saves=saves)
        self._cache[key] = found
        return found

    def is_leaf(self, cls: type) -> bool:
        """Whether module class ``cls`` is kept as one opaque node when a call uses this set.

        A class has to be a leaf when the set holds a rule for it; classes from ``torch.nn`` are leaves
        anyway (torch.fx does not trace into them), as are classes registered as leaves in the op registry.
        """
        entry = OPS.entry(cls)
        if entry is not None and entry.leaf is not None:
            return entry.leaf
        return self.rule(cls) is not None

    def keeps_whole(self, module: nn.Module) -> bool:
        """Whether ``module`` is kept as one node: a leaf class (:meth:`is_leaf`) or a fused batch norm with a rule."""
        return self.is_leaf(type(module)) or self._fused(module) is not None

    def with_rules(self, rules: Mapping[OpKey, Rule], *, name: str | None = None) -> RuleSet:
        """A new set: this one with ``rules`` added or replaced.

        Args:
            rules: op -> rule.
            name: the new set's name (by default this set's name with ``+``).
        """
        return RuleSet(name or f"{self._name}+", {**self._rules, **rules}, kind=self.kind)


_METHODS: dict[str, RuleSet | Callable[[], RuleSet]] = {}


def _preset(method: str) -> Callable[[], RuleSet]:
    built: list[tuple[int, RuleSet]] = []  # (registry version, set): rebuilt only after a registration

    def build() -> RuleSet:
        if built and built[0][0] == OPS.version:
            return built[0][1]
        rules: dict[Any, Rule] = {}
        for key, entry in OPS.items():
            rule = entry.rule(method)
            if rule is not None:
                rules[key] = rule
        found = RuleSet(method, rules, kind=method)
        built[:] = [(OPS.version, found)]
        return found

    return build


for _name in PRESETS:
    _METHODS[_name] = _preset(_name)


def register_method(rules: RuleSet, *, replace: bool = False) -> RuleSet:
    """Register a rule set under its name, so that ``method="<name>"`` chooses it (also on the command line).

    Args:
        rules: the set (see :meth:`RuleSet.with_rules`).
        replace: allow replacing a set registered earlier under the same name (never a preset).

    Returns:
        The set.

    Raises:
        MethodError: the name is taken (or is a preset's), or ``rules`` is not a :class:`RuleSet`.
    """
    if not isinstance(rules, RuleSet):
        raise MethodError(f"register_method takes a deconvviz.RuleSet, got {type(rules).__name__}")
    if rules.name in PRESETS or (rules.name in _METHODS and not replace):
        raise MethodError(f"a method named {rules.name!r} is already registered; pick another name")
    _METHODS[rules.name] = rules
    return rules


def list_methods() -> list[str]:
    """Names of the registered reverse passes, the presets first."""
    return [*PRESETS, *sorted(n for n in _METHODS if n not in PRESETS)]


def get_method(method: str | RuleSet | None = None) -> RuleSet:
    """The rule set for a call: a registered name, a :class:`RuleSet` as given, or the default (deconvnet).

    Raises:
        MethodError: an unknown name (the message lists the known ones).
    """
    if method is None:
        method = DEFAULT_METHOD
    if isinstance(method, RuleSet):
        return method
    found = _METHODS.get(method) if isinstance(method, str) else None
    if found is None:
        known = ", ".join(repr(m) for m in list_methods())
        raise MethodError(f"unknown method {method!r}: choose one of {known}")
    return found if isinstance(found, RuleSet) else found()


__all__ = [
    "DEFAULT_METHOD",
    "PRESETS",
    "MethodError",
    "RuleSet",
    "get_method",
    "list_methods",
    "register_method",
]
