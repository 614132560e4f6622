"""Tracing and layer names (kept importable here; the code lives in :mod:`deconvviz.core.graph`)."""

from __future__ import annotations

from deconvviz.core.graph import Graph, LayerNotFoundError, evaluating, trace

__all__ = ["Graph", "LayerNotFoundError", "evaluating", "trace"]
