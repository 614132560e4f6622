"""How a scan over a data set runs.

One options object serves :func:`~deconvviz.top_k`, the scan, the report and the command line (which hands
it on to every process it starts under ``torchrun``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

from deconvviz.io.sources import SearchError


@dataclass(frozen=True)
class ScanOptions:
    """The options of a scan, checked once, when made.

    Attributes:
        layers: layer names or aliases; None for the defaults (see :func:`deconvviz.core.layers.scan_layers`).
        k: activations kept per channel (9 in the paper).
        channels: which channels are tracked: a count ``n`` (the first ``n``), a list of indices, or None for all.
        batch_size: images per forward pass.
        workers: DataLoader worker processes that read and preprocess images.
        limit: scan only the first ``limit`` images.
        sample: scan a random ``sample`` of the images, drawn with ``seed`` (kept in their order).
        seed: the seed of ``sample``.
        resume: go on from the saved state of an interrupted scan with the same options.
        save_every: seconds between two saves of the scan state (0: after every batch).
    """

    layers: tuple[str, ...] | None = None
    k: int = 9
    channels: int | tuple[int, ...] | None = None
    batch_size: int = 8
    workers: int = 0
    limit: int | None = None
    sample: int | None = None
    seed: int = 0
    resume: bool = False
    save_every: float = 60.0

    def __post_init__(self) -> None:
        if self.layers is not None:
            object.__setattr__(self, "layers", tuple(self.layers) or None)
        if self.channels is not None and not isinstance(self.channels, int):
            object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        if self.k < 1:
            raise SearchError(f"k must be at least 1, got {self.k}")
        if self.batch_size < 1:
            raise SearchError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.workers < 0:
            raise SearchError(f"workers must be 0 or more, got {self.workers}")
        if self.save_every < 0:
            raise SearchError(f"save_every must be 0 or more seconds, got {self.save_every}")

    @classmethod
    def of(cls, layers: Sequence[str] | None = None, **options: Any) -> ScanOptions:
        """The options from keyword arguments (those of :func:`deconvviz.top_k`); others are refused."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - names)
        if unknown:
            raise TypeError(f"unknown scan option(s): {', '.join(unknown)}")
        return cls(layers=None if layers is None else tuple(layers), **options)

    def but(self, **changes: Any) -> ScanOptions:
        """A copy with ``changes``, checked again."""
        return replace(self, **changes)

    def argv(self) -> list[str]:
        """The command line's flags for these options (``deconvviz report``), for the processes of ``torchrun``."""
        args = ["--top", str(self.k), "--batch-size", str(self.batch_size), "--seed", str(self.seed)]
        args += ["--save-every", str(self.save_every)]
        args += ["--layers", ",".join(self.layers)] if self.layers else []
        args += ["--limit", str(self.limit)] if self.limit is not None else []
        args += ["--sample", str(self.sample)] if self.sample is not None else []
        args += ["--resume"] if self.resume else []
        return args
