"""The op registry: per op, its mirror rule(s), its receptive-field geometry and whether it is a trace leaf.

An op is keyed the way a traced graph names it: a module class (``nn.Conv2d``), a function (``torch.cat``,
``operator.add``), or a tensor method name (``"view"``). A module class also finds the entry of its nearest
registered base class, as long as it does not override ``forward`` (a subclass that computes something else,
such as a convolution that pads itself, must not inherit its base's rule).

Rules are stored per reverse pass: under ``"*"`` for a rule that every method shares (a convolution is
undone by its transpose in all of them), or under a method's name where the methods differ (the
activations). A rule set for one call (:class:`deconvviz.methods.RuleSet`) is read out of this table.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from torch import fx, nn

if TYPE_CHECKING:  # pragma: no cover
    from deconvviz.ops.base import Rule
    from deconvviz.ops.geometry import Geometry
    from deconvviz.ops.window import WindowReader

OpKey = type | Callable[..., Any] | str

ANY_METHOD = "*"
"""The method key of a rule that every reverse pass uses."""


@dataclass
class OpEntry:
    """Everything deconvviz knows about one op.

    Attributes:
        rules: mirror rule per method name (``"*"``: every method without a rule of its own).
        geometry: how the op changes the receptive field, or None if unknown.
        leaf: for a module class, whether it is kept as one opaque node of the trace even though torch.fx
            could trace through it (True for a class with a rule of its own; None: decided by its rules).
        window: for a sliding-window op (convolution, pooling), how to read its kernel, stride, padding and
            dilation from a call (see :mod:`deconvviz.ops.window`).
    """

    rules: dict[str, Rule] = field(default_factory=dict)
    geometry: Geometry | None = None
    leaf: bool | None = None
    window: WindowReader | None = None

    def rule(self, method: str) -> Rule | None:
        """The rule this op uses under ``method``."""
        return self.rules.get(method, self.rules.get(ANY_METHOD))


def check_key(target: Any, what: str) -> None:
    """Raise TypeError unless ``target`` can key the registry."""
    if not isinstance(target, type | str) and not callable(target):
        raise TypeError(f"a {what} target must be a module class, a function or a method name, got {target!r}")


def inherits(cls: type, base: type) -> bool:
    """Whether ``cls`` may use what is registered for its base class ``base``: it computes the same thing."""
    if cls is base:
        return True
    forward = getattr(cls, "forward", None)
    return forward is None or forward is getattr(base, "forward", None)


class OpTable:
    """The registry of ops (see the module docstring)."""

    def __init__(self) -> None:
        self._entries: dict[Any, OpEntry] = {}
        self._geometry_finders: list[Callable[[nn.Module], Geometry | None]] = []
        self._version = 0
        self._deferred: list[tuple[str, Callable[[Any], None]]] = []
        self._waiting: list[tuple[str, Callable[[Any], None]]] = []
        self._loading = threading.RLock()  # the explorer looks ops up from several threads
        self._running: set[tuple[str, Callable[[Any], None]]] = set()

    @property
    def version(self) -> int:
        """Bumped on every change, so tables derived from the registry know when to read it again.

        Reading it first runs the deferred definitions that are due (:meth:`defer`), as every lookup does.
        """
        self._load()
        return self._version

    @version.setter
    def version(self, value: int) -> None:
        self._version = value

    def defer(self, module: str, define: Callable[[Any], None]) -> None:
        """Call ``define(the module)`` once the module ``module`` is imported, before the next lookup or change.

        Rules for an optional library's ops (torchvision's ``StochasticDepth``) are registered this way, so that
        deconvviz never imports the library itself: a model that uses those ops has imported it. A rule the user
        registers for those ops comes after the definition, and wins.
        """
        self._deferred.append((module, define))
        self._waiting.append((module, define))
        self._load()

    def _load(self) -> None:
        """Run the deferred definitions whose modules are now imported (one thread at a time, each once)."""
        if not self._waiting:
            return
        with self._loading:  # another thread's lookup waits here until the definition is complete
            for item in list(self._waiting):
                module = sys.modules.get(item[0])
                if module is None or item in self._running or item not in self._waiting:
                    continue  # not imported yet, or being defined by this very thread (its registrations)
                self._running.add(item)
                try:
                    item[1](module)
                except AttributeError:  # the module is still being imported: the next lookup tries again
                    continue
                else:
                    self._waiting.remove(item)
                finally:
                    self._running.discard(item)

    def _entry(self, target: OpKey) -> OpEntry:
        self._load()  # a registration comes after the deferred definitions due, so that it is not overwritten
        entry = self._entries.get(target)
        if entry is None:
            entry = self._entries[target] = OpEntry()
        return entry

    def set_rule(self, target: OpKey, rule: Rule, method: str = ANY_METHOD) -> None:
        """Set the rule of ``target`` under ``method`` (``"*"``: for every method without its own)."""
        check_key(target, "mirror rule")
        self._entry(target).rules[method] = rule
        self.version += 1

    def set_geometry(self, target: OpKey, geometry: Geometry) -> None:
        """Set the receptive-field geometry of ``target``."""
        check_key(target, "geometry")
        self._entry(target).geometry = geometry
        self.version += 1

    def set_window(self, target: OpKey, reader: WindowReader) -> None:
        """Set how to read the sliding window of ``target`` (see :mod:`deconvviz.ops.window`)."""
        check_key(target, "window")
        self._entry(target).window = reader
        self.version += 1

    def add_geometry_finder(self, finder: Callable[[nn.Module], Geometry | None]) -> None:
        """Add a lookup for modules whose class has no geometry: ``finder(module)`` returns one, or None.

        An op family whose modules are recognised by their structure rather than their class (a batch norm
        fused with its activation, see :mod:`deconvviz.ops.norm`) registers one.
        """
        self._geometry_finders.append(finder)

    def set_leaf(self, target: type, leaf: bool) -> None:
        """Keep module class ``target`` opaque in the trace (or not)."""
        check_key(target, "leaf")
        self._entry(target).leaf = leaf
        self.version += 1

    def remove_rules(self, target: OpKey) -> None:
        """Forget every rule of ``target`` (its geometry stays)."""
        self._load()
        entry = self._entries.get(target)
        if entry is not None:
            entry.rules.clear()
            self.version += 1

    def entry(self, target: Any) -> OpEntry | None:
        """The entry of ``target``, exactly as registered (no lookup along base classes)."""
        self._load()
        try:
            return self._entries.get(target)
        except TypeError:  # unhashable target
            return None

    def find(self, target: Any, has: Callable[[OpEntry], bool]) -> tuple[Any, OpEntry] | None:
        """The nearest ``(key, entry)`` for ``target`` that satisfies ``has``, along a module class's bases."""
        self._load()
        if isinstance(target, type):
            for cls in target.__mro__:
                found = self._entries.get(cls)
                if found is not None and has(found):
                    return (cls, found) if inherits(target, cls) else None
            return None
        found = self.entry(target)
        return (target, found) if found is not None and has(found) else None

    def geometry(self, target: Any) -> Geometry | None:
        """The geometry for ``target`` (a module class: that of its nearest registered base)."""
        hit = self.find(target, lambda e: e.geometry is not None)
        return hit[1].geometry if hit is not None else None

    def window(self, target: Any) -> WindowReader | None:
        """How to read the sliding window of ``target`` (a module class: that of its nearest registered base)."""
        hit = self.find(target, lambda e: e.window is not None)
        return hit[1].window if hit is not None else None

    def geometry_for_node(self, node: fx.Node, module: nn.Module | None) -> Geometry | None:
        """The geometry for a graph node: by its module's class for ``call_module`` nodes, else by its target.

        A module whose class has none is offered to the geometry finders (:meth:`add_geometry_finder`).
        """
        found = self.geometry(type(module) if module is not None else node.target)
        if found is None and module is not None:
            for finder in self._geometry_finders:
                found = finder(module)
                if found is not None:
                    break
        return found

    def items(self) -> Iterator[tuple[Any, OpEntry]]:
        """Every (key, entry) pair, in registration order."""
        self._load()
        return iter(list(self._entries.items()))

    def snapshot(self) -> dict[Any, OpEntry]:
        """A deep enough copy of the table, for :meth:`restore`."""
        self._load()
        return _Snapshot(
            {k: OpEntry(dict(e.rules), e.geometry, e.leaf, e.window) for k, e in self._entries.items()},
            waiting=list(self._waiting),
        )

    def restore(self, entries: dict[Any, OpEntry]) -> None:
        """Put back a table taken by :meth:`snapshot` (deferred definitions still waiting then wait again)."""
        with self._loading:
            self._entries = {k: OpEntry(dict(e.rules), e.geometry, e.leaf, e.window) for k, e in entries.items()}
            self._waiting = list(getattr(entries, "waiting", self._deferred))
            self._version += 1

    def waiting(self) -> list[tuple[str, Callable[[Any], None]]]:
        """The deferred definitions not run yet (their modules are not imported)."""
        self._load()
        return list(self._waiting)

    def wait_again(self, waiting: list[tuple[str, Callable[[Any], None]]]) -> None:
        """Let these deferred definitions run again at the next lookup (after a part of the table is put back)."""
        with self._loading:
            self._waiting = list(dict.fromkeys([*self._waiting, *waiting]))


class _Snapshot(dict[Any, Any]):
    """A snapshot of the table, and the deferred definitions that were still waiting when it was taken."""

    def __init__(self, entries: dict[Any, Any], waiting: list[tuple[str, Callable[[Any], None]]]) -> None:
        super().__init__(entries)
        self.waiting = waiting


OPS = OpTable()
"""The one op registry of deconvviz."""


class GeometryView:
    """The geometries of :data:`OPS` seen as a registry of their own (``receptive.GEOMETRIES``)."""

    what = "geometry"

    def register(self, target: OpKey, geometry: Geometry) -> None:
        """Set the geometry of ``target``."""
        OPS.set_geometry(target, geometry)

    def get(self, target: Any) -> Geometry | None:
        """The geometry for ``target``."""
        return OPS.geometry(target)

    def for_node(self, node: fx.Node, module: nn.Module | None) -> Geometry | None:
        """The geometry for a graph node."""
        return OPS.geometry_for_node(node, module)

    def snapshot(self) -> dict[Any, Geometry | None]:
        """Every geometry, for :meth:`restore`."""
        return _Snapshot({k: e.geometry for k, e in OPS.items()}, waiting=OPS.waiting())

    def restore(self, saved: dict[Any, Geometry | None]) -> None:
        """Put back geometries taken by :meth:`snapshot` (and forget those registered since).

        A deferred definition that ran after the snapshot runs again at the next lookup, so that its geometry is
        not lost with the ones forgotten.
        """
        for key, entry in OPS.items():
            entry.geometry = saved.get(key)
        OPS.wait_again(getattr(saved, "waiting", []))
        OPS.version += 1


def define(
    targets: Iterator[OpKey] | list[OpKey] | tuple[OpKey, ...],
    rule: Rule | None = None,
    *,
    methods: dict[str, Rule] | None = None,
    geometry: Geometry | None = None,
) -> None:
    """Register an op family: one rule for every method and/or rules per method, and its geometry."""
    for target in targets:
        if rule is not None:
            OPS.set_rule(target, rule)
        for method, method_rule in (methods or {}).items():
            OPS.set_rule(target, method_rule, method)
        if geometry is not None:
            OPS.set_geometry(target, geometry)
