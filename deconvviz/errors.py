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
    """An op on the path from the input to the requested layer has no mirror rule.

    Attributes:
        node: the node the reverse pass stopped at, where known (set by the walk down the graph).
    """

    node: str | None = None


class ForwardError(DeconvVizError, ValueError):
    """The model's own forward pass refused the input (wrong channel count, a picture too small for it)."""


class RenderError(DeconvVizError, ValueError):
    """A rendering option that does not fit what is drawn (bad scale, index, colour order, size)."""


_WARNED: set[str] = set()


def first_line(exc: BaseException) -> str:
    """An error's message for a one-line report: its first line, stripped, or its type's name when it has none."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def warn_caller(message: str, category: type[Warning] = UserWarning) -> None:
    """Warn, pointing at the first line outside deconvviz that led here (the user's, not the library's)."""
    import sys
    import warnings
    from pathlib import Path

    here = Path(__file__).resolve().parent
    level, frame = 2, sys._getframe(1)
    while frame is not None and here in Path(frame.f_code.co_filename).resolve().parents:
        frame, level = frame.f_back, level + 1  # type: ignore[assignment]
    warnings.warn(message, category, stacklevel=level)


def deprecated(old: str, new: str, *, stacklevel: int = 3) -> None:
    """Say once per process, in one line, that the spelling ``old`` gives way to ``new``.

    Args:
        old: what the caller wrote (``"visualize(target_class=...)"``).
        new: what to write instead (``"visualize(target=...)"``).
        stacklevel: how far up the warning points: by default at the caller of the function that calls this.
    """
    import warnings

    if old in _WARNED:
        return
    _WARNED.add(old)
    warnings.warn(
        f"{old} is deprecated and goes in the next release; write {new}", DeprecationWarning, stacklevel=stacklevel
    )
