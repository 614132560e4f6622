"""JSON written as it is made: the text of ``json.dumps``, its large parts produced one item at a time.

A manifest of millions of hits never holds all their dicts at once (see :class:`Streamed`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Streamed:
    """A JSON array (or, with ``pairs``, an object) whose items are made one at a time while it is written.

    Attributes:
        items: makes the items afresh on each call: values, or ``(key, value)`` pairs for an object.
        pairs: whether this is an object (``{key: value, ...}``) rather than an array.
    """

    items: Callable[[], Iterable[Any]]
    pairs: bool = False

    def materialize(self) -> list[Any] | dict[str, Any]:
        """The whole array or object in memory, as :func:`json.dumps` takes it."""
        return dict(self.items()) if self.pairs else list(self.items())


def iter_json(value: Any, indent: int = 2, level: int = 0) -> Iterator[str]:
    """The text of ``json.dumps(value, indent=indent)``, in pieces, with :class:`Streamed` parts made as they go.

    Arrays and objects that hold no :class:`Streamed` part are written by :func:`json.dumps` itself; only those
    holding one are walked here, with the same layout, so the text is the same byte for byte.

    Args:
        value: anything :func:`json.dumps` takes, where arrays and objects may be :class:`Streamed`.
        indent: spaces per level.
        level: the nesting level ``value`` sits at.
    """
    inner = "\n" + " " * (indent * (level + 1))
    if isinstance(value, Streamed) or (isinstance(value, dict | list | tuple) and _holds_streamed(value)):
        if isinstance(value, Streamed):
            pairs, items = value.pairs, value.items()
        elif isinstance(value, dict):
            pairs, items = True, value.items()
        else:
            pairs, items = False, value
        opening, closing = "{}" if pairs else "[]"
        empty = True
        for item in items:
            yield (opening if empty else ",") + inner
            empty = False
            if pairs:
                key, item = item
                yield json.dumps(_key(key)) + ": "
            yield from iter_json(item, indent, level + 1)
        yield opening + closing if empty else "\n" + " " * (indent * level) + closing
    else:
        yield json.dumps(value, indent=indent).replace("\n", "\n" + " " * (indent * level))


def _key(key: Any) -> str:
    """An object key as :func:`json.dumps` writes it: strings as they are; numbers, booleans and None as JSON."""
    if isinstance(key, str):
        return key
    if key is None or isinstance(key, int | float):
        return json.dumps(key)
    raise TypeError(f"keys must be str, int, float, bool or None, not {type(key).__name__}")


def _holds_streamed(value: Any) -> bool:
    if isinstance(value, Streamed):
        return True
    if isinstance(value, dict):
        return any(_holds_streamed(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(_holds_streamed(v) for v in value)
    return False


__all__ = ["Streamed", "iter_json"]
