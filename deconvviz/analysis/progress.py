"""How an analysis reports its progress: one callback shape for all of them.

Every analysis (:func:`~deconvviz.sanity`, :func:`~deconvviz.invariance`, :func:`~deconvviz.evolution`,
:func:`~deconvviz.occlusion`, :func:`~deconvviz.correspondence`, :func:`~deconvviz.discrimination`) takes
``progress=``, either

* a callable ``progress(done, total, what)``: called once with ``done == 0`` before the work starts, then after
  each step, with the same ``total`` every time (the number of steps is known before the first) and ``done``
  rising to ``total``; ``what`` says what the step was (a checkpoint's name, a layer randomised, an image);
* ``"bar"``: a progress bar from ``tqdm.auto`` (a widget in Jupyter, text in a terminal), when tqdm is installed;
* or None: silence.

The shape is :data:`deconvviz.viz.folders.Progress`'s (``render_images``). :func:`~deconvviz.top_k` reports in
stages instead (``progress(stage, done, total)``), as its two passes differ in length.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Literal, TypeAlias

from deconvviz.analysis.base import AnalysisError

Progress: TypeAlias = Callable[[int, int, str], None]
"""``progress(done, total, what)``: ``done`` of ``total`` steps, ``total`` known from the first call."""

ProgressOption: TypeAlias = Progress | Literal["bar"] | None
"""What ``progress=`` takes: a :data:`Progress` callable, ``"bar"`` (tqdm) or None."""


def _silent(done: int, total: int, what: str) -> None:
    """Report nothing."""


def _takes_three(callback: Callable[..., Any]) -> bool:
    """Whether ``callback`` can be called with three positional arguments (True when it cannot be told)."""
    try:
        inspect.signature(callback).bind(0, 0, "")
    except TypeError:
        try:
            inspect.signature(callback).bind(0, 0)
        except TypeError:
            return True  # neither binds: let the call itself raise the caller's error
        return False
    except ValueError:  # a builtin without a signature
        return True
    return True


@contextmanager
def reporting(progress: ProgressOption, description: str) -> Iterator[Progress]:
    """The :data:`Progress` callable behind a ``progress=`` option, closed (a bar) when the work ends.

    Args:
        progress: the caller's option (see the module docstring). A callable of two arguments
            ``(done, total)``, the earlier shape, still works, with a ``DeprecationWarning``.
        description: the bar's label.

    Yields:
        A callable ``(done, total, what)``.

    Raises:
        AnalysisError: ``"bar"`` without tqdm installed, or an option that is neither callable nor ``"bar"``.
    """
    if progress is None:
        yield _silent
        return
    if isinstance(progress, str):
        if progress != "bar":
            raise AnalysisError(f"progress takes a callable (done, total, what), 'bar' or None; got {progress!r}")
        try:
            from tqdm.auto import tqdm
        except ImportError:
            raise AnalysisError("progress='bar' needs tqdm: pip install tqdm (or pass a callable)") from None
        bar: Any = None
        try:

            def show(done: int, total: int, what: str) -> None:
                nonlocal bar
                if bar is None:
                    bar = tqdm(total=total, desc=description, leave=False)
                bar.n = done
                bar.set_postfix_str(what, refresh=False)
                bar.refresh()

            yield show
        finally:
            if bar is not None:
                bar.close()
        return
    if not callable(progress):
        raise AnalysisError(f"progress takes a callable (done, total, what), 'bar' or None; got {progress!r}")
    if _takes_three(progress):
        yield progress
        return
    warnings.warn(
        "a progress callback of two arguments (done, total) is deprecated; take three: (done, total, what)",
        DeprecationWarning,
        stacklevel=4,
    )
    two: Callable[[int, int], None] = progress  # type: ignore[assignment]

    def adapted(done: int, total: int, what: str) -> None:
        two(done, total)

    yield adapted


Staged: TypeAlias = Callable[[str, int, int], None]
"""``progress(stage, done, total)``: :func:`~deconvviz.top_k`'s shape, one count per stage."""


@contextmanager
def staged(progress: Staged | Literal["bar"] | None, description: str) -> Iterator[Staged | None]:
    """The ``(stage, done, total)`` callable behind :func:`~deconvviz.top_k`'s ``progress=``.

    That is the caller's own callable, None, or for ``"bar"`` one tqdm bar per stage (closed when the work ends).

    Raises:
        AnalysisError: ``"bar"`` without tqdm installed, or an option that is neither callable nor ``"bar"``.
    """
    if progress is None or (callable(progress) and not isinstance(progress, str)):
        yield progress
        return
    if progress != "bar":
        raise AnalysisError(f"progress takes a callable (stage, done, total), 'bar' or None; got {progress!r}")
    try:
        from tqdm.auto import tqdm
    except ImportError:
        raise AnalysisError("progress='bar' needs tqdm: pip install tqdm (or pass a callable)") from None
    bars: dict[str, Any] = {}
    try:

        def show(stage: str, done: int, total: int) -> None:
            bar = bars.get(stage)
            if bar is None:
                bar = bars[stage] = tqdm(total=total, desc=f"{description} {stage}", leave=False)
            bar.n = done
            bar.refresh()

        yield show
    finally:
        for bar in bars.values():
            bar.close()


__all__ = ["Progress", "ProgressOption", "Staged", "reporting", "staged"]
