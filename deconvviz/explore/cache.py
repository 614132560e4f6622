"""A least-recently-used cache bounded in bytes: one capture per picture, layer and reverse pass."""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any

DEFAULT_FRACTION = 0.125
"""The share of the machine's memory the capture cache may use by default."""
DEFAULT_CAP = 4 << 30
"""... but never more than this by default (4 GiB)."""


def default_cache_bytes() -> int:
    """An eighth of the machine's memory, at most 4 GiB (512 MiB where the size cannot be read)."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return 512 << 20
    return int(min(total * DEFAULT_FRACTION, DEFAULT_CAP))


class ByteCache:
    """Values with a size in bytes; the least recently used go first when the total passes ``limit``.

    A value larger than the whole limit is not kept. Safe to use from several threads.

    Args:
        limit: the most bytes held.
    """

    def __init__(self, limit: int) -> None:
        if limit < 0:
            raise ValueError(f"the cache size must be 0 or more bytes, got {limit}")
        self.limit = int(limit)
        self._items: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._lock = threading.Lock()
        self.bytes = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def get(self, key: Hashable) -> Any | None:
        """The value kept under ``key`` (now the most recently used), or None."""
        with self._lock:
            found = self._items.get(key)
            if found is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return found[0]

    def find(self, match: Any) -> Any | None:
        """The most recently used value whose key satisfies ``match(key)``, or None (no use is recorded)."""
        with self._lock:
            for key in reversed(self._items):
                if match(key):
                    return self._items[key][0]
        return None

    def put(self, key: Hashable, value: Any, size: int) -> None:
        """Keep ``value`` (``size`` bytes) under ``key``, dropping the least recently used to stay in the limit."""
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.bytes -= old[1]
            if size > self.limit:
                return
            self._items[key] = (value, size)
            self.bytes += size
            while self.bytes > self.limit and self._items:
                _, (_, dropped) = self._items.popitem(last=False)
                self.bytes -= dropped

    def clear(self) -> None:
        """Drop everything."""
        with self._lock:
            self._items.clear()
            self.bytes = 0


__all__ = ["ByteCache", "default_cache_bytes"]
