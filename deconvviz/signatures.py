"""Signatures of functional ops (kept importable here; they live in :mod:`deconvviz.ops.signatures`)."""

from __future__ import annotations

from deconvviz.ops.signatures import avg_pool2d, conv2d, linear, max_pool2d

__all__ = ["avg_pool2d", "conv2d", "linear", "max_pool2d"]
