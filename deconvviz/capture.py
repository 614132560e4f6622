"""The capture pass (kept importable here; the code lives in :mod:`deconvviz.core.capture`)."""

from __future__ import annotations

from deconvviz.core.capture import Call, Capture, NodeRecord, TensorMeta, TupleMeta, run

__all__ = ["Call", "Capture", "NodeRecord", "TensorMeta", "TupleMeta", "run"]
