"""Exceptions raised by deconvviz.

Every error a user can cause carries a one-line message that names the problem and the fix; the CLI prints
that line and exits with status 2.
"""

from __future__ import annotations


class DeconvVizError(Exception):
    """Base class of the errors deconvviz raises for bad input or unsupported models."""


class TraceError(DeconvVizError):
    """The model could not be traced with torch.fx."""


class UnsupportedOpError(DeconvVizError):
    """An op on the path from the input to the requested layer has no mirror rule."""


class RenderError(DeconvVizError, ValueError):
    """A rendering option that does not fit what is drawn (bad scale, index, colour order, size)."""
