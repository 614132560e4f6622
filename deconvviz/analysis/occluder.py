"""Where the occluder goes and how a sweep runs: the grid of positions, batches of them, the memory given back.

Shared by :func:`deconvviz.occlusion` and the explorer's occlusion panel (:mod:`deconvviz.explore.occlude`). The
occluder is centred on each ``stride`` cell's centre and clipped to the image at the borders, so a map of
``ceil(H / stride)`` rows lies exactly over the image.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from deconvviz.analysis.base import AnalysisError

if TYPE_CHECKING:  # pragma: no cover
    from torch import Tensor

    from deconvviz.core.incremental import IncrementalOcclusion


class OcclusionError(AnalysisError):
    """Bad occlusion options: an occluder larger than the image, a stride of 0, an unknown class."""


def positions_per_batch(x: Tensor) -> int:
    """The occluder positions one pass takes by default: 64 on a GPU, 16 on the CPU."""
    return 64 if x.device.type == "cuda" else 16


def sweep(
    engine: IncrementalOcclusion, grid: Sequence[tuple[int, int]], batch_size: int
) -> Iterator[tuple[int, list[tuple[int, int]], dict[Any, Any]]]:
    """Run the occluder over ``grid`` (``(row, col)`` positions) ``batch_size`` at a time.

    Yields:
        ``(done, chunk, values)`` per batch: the positions done so far, the batch's positions and
        :meth:`IncrementalOcclusion.run`'s values for it. Freed memory is given back every 4 batches.
    """
    for n, start in enumerate(range(0, len(grid), batch_size)):
        chunk = list(grid[start : start + batch_size])
        yield min(start + batch_size, len(grid)), chunk, engine.run(chunk)
        if n % 4 == 3:
            _give_back_freed_memory()


def _give_back_freed_memory() -> None:
    """Return the C heap's freed memory to the system (glibc's ``malloc_trim``).

    Each batch of a sweep allocates patches of other sizes, and glibc keeps the freed ones in pieces too small to
    reuse, so without a trim a long sweep's resident memory grows with its positions (about 0.5 MB per position
    for SqueezeNet on the CPU) although nothing is kept. Elsewhere than glibc this does nothing.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim() -> Any:
    """The C library's ``malloc_trim`` (glibc), looked up once (finding the library may run ``ldconfig``), or None."""
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def occluder_grid(
    height: int, width: int, size: int, stride: int
) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """The occluder's rows and columns per grid position: centred on each ``stride`` cell, clipped.

    Args:
        height: image height.
        width: image width.
        size: occluder side in pixels.
        stride: pixels between positions.

    Returns:
        ``(rows, cols)``: ``[top, bottom)`` per grid row and ``[left, right)`` per grid column.

    Raises:
        OcclusionError: a size or stride that is not a positive integer, or an occluder larger than the image.
    """
    for name, value in (("size", size), ("stride", stride)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise OcclusionError(f"the occluder {name} must be a positive number of pixels, got {value!r}")
    if size > min(height, width):
        raise OcclusionError(
            f"the occluder ({size} px) is larger than the {height}x{width} image; choose an occluder size of "
            f"{min(height, width)} px or less"
        )

    def spans(length: int) -> list[tuple[int, int]]:
        out = []
        for k in range(-(-length // stride)):
            top = k * stride + stride // 2 - size // 2
            out.append((max(0, top), min(length, top + size)))
        return out

    return spans(height), spans(width)


__all__ = ["OcclusionError", "occluder_grid", "positions_per_batch", "sweep"]
