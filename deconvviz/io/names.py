"""Result names: one way to turn a file or layer name into a file-system name, distinct over a run.

A name from outside (a picture's file name, a layer, a channel) becomes a name that is safe as one path
component on every common file system: no separators, never ``.`` or ``..`` or hidden, no control or odd
characters, not a Windows device name, of bounded length. A :class:`NameMap` hands out such names for a
whole run and never the same one twice, comparing without case (so ``Cat`` and ``cat`` do not meet on a
case-insensitive disk), whatever order the inputs come in.
"""

from __future__ import annotations

import unicodedata

MAX_LENGTH = 80
"""Characters kept of a name (a suffix for repeats comes on top)."""

_DEVICES = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)), *(f"lpt{i}" for i in range(10))}


def clean_name(text: str, fallback: str = "item") -> str:
    """``text`` as one safe path component (see the module's description); ``fallback`` when nothing is left.

    Example:
        >>> clean_name("x'><img src=x>.png"), clean_name(".."), clean_name("layer4.1/relu")
        ('x___img_src_x_.png', 'item', 'layer4.1_relu')
    """
    text = unicodedata.normalize("NFC", text)
    cleaned = "".join(c if (c.isalnum() and c.isprintable()) or c in "-_." else "_" for c in text)
    cleaned = cleaned.strip(". ")[:MAX_LENGTH].rstrip(". ")
    if not cleaned:
        return fallback
    if cleaned.split(".", 1)[0].casefold() in _DEVICES:
        cleaned = f"_{cleaned}"
    return cleaned


class NameMap:
    """Distinct safe names for the items of one run: the first keeps its cleaned name, repeats get ``-2``...

    Args:
        reserved: names already taken (compared without case).
        fallback: the name of an item whose name has nothing usable.

    Example:
        >>> names = NameMap()
        >>> [names.add(n) for n in ["cat", "cat", "cat-2", "CAT", ".."]]
        ['cat', 'cat-2', 'cat-2-2', 'CAT-3', 'image']
    """

    def __init__(self, reserved: tuple[str, ...] = (), fallback: str = "image") -> None:
        self._taken = {name.casefold() for name in reserved}
        self._fallback = fallback

    def add(self, text: str) -> str:
        """A new name for ``text``, distinct from every name handed out or reserved so far."""
        base = clean_name(text, self._fallback)
        name, number = base, 1
        while name.casefold() in self._taken:
            number += 1
            name = f"{base}-{number}"
        self._taken.add(name.casefold())
        return name


__all__ = ["MAX_LENGTH", "NameMap", "clean_name"]
