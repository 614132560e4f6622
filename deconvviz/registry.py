"""The op registry (kept importable here; it lives in :mod:`deconvviz.ops.registry`)."""

from __future__ import annotations

from deconvviz.ops.registry import OPS, OpEntry, OpKey, OpTable

__all__ = ["OPS", "OpEntry", "OpKey", "OpTable"]
