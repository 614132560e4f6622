"""Registries keyed by the op they describe, shared by the mirror rules and the receptive-field geometries.

An op is keyed the way a traced graph names it: a module class (``nn.Conv2d``; a subclass finds its nearest
registered base), a function (``torch.cat``, ``operator.add``), or a tensor method name (``"view"``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from torch import fx, nn

OpKey = type | Callable[..., Any] | str
V = TypeVar("V")


class OpRegistry(Generic[V]):
    """A mapping from ops to values (rules, geometries), with lookup along a module class's bases.

    Args:
        what: what the values are, for error messages (``"mirror rule"``).
    """

    def __init__(self, what: str) -> None:
        self.what = what
        self._entries: dict[Any, V] = {}
        self.version = 0  # changes on every registration, so caches keyed on the registry know to look again

    def register(self, target: OpKey, value: V) -> None:
        """Set the value for ``target``, replacing an earlier one.

        Raises:
            TypeError: ``target`` is not a module class, a function or a method name.
        """
        if not isinstance(target, type | str) and not callable(target):
            raise TypeError(f"a {self.what} target must be a module class, a function or a method name, got {target!r}")
        self._entries[target] = value
        self.version += 1

    def get(self, target: Any) -> V | None:
        """The value for ``target``; for a module class, that of its nearest registered base class."""
        if isinstance(target, type):
            for cls in target.__mro__:
                found = self._entries.get(cls)
                if found is not None:
                    return found
            return None
        try:
            return self._entries.get(target)
        except TypeError:  # unhashable target
            return None

    def for_node(self, node: fx.Node, module: nn.Module | None) -> V | None:
        """The value for a graph node: by its module's class for ``call_module`` nodes, else by its target."""
        return self.get(type(module) if module is not None else node.target)

    def items(self) -> Iterator[tuple[Any, V]]:
        """Every (target, value) pair, in registration order."""
        return iter(list(self._entries.items()))

    def snapshot(self) -> dict[Any, V]:
        """A copy of the entries, for :meth:`restore`."""
        return dict(self._entries)

    def restore(self, entries: dict[Any, V]) -> None:
        """Put back entries taken by :meth:`snapshot`."""
        self._entries = dict(entries)
        self.version += 1
