"""How a scan over a data set runs.

One options object serves :func:`~deconvviz.top_k`, the scan, the report and the command line (which hands
it on to every process it starts under ``torchrun``).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

from deconvviz.io.sources import SearchError


@dataclass(frozen=True)
class RandomChannels:
    """``"random<n>"``: ``n`` channels of each layer drawn at random, by index.

    The paper's Fig. 2 shows "a random subset of feature maps". The draw is the same for a given ``seed`` and layer
    (node) in every run and every process.
    """

    count: int

    def __str__(self) -> str:
        return f"random{self.count}"

    def draw(self, channels: int, node: str, seed: int) -> list[int]:
        """The channels of a layer (its node name) of ``channels`` channels that ``seed`` picks (all when fewer)."""
        rng = random.Random(f"deconvviz channels {seed} {node}")  # a str seed hashes the same in every process
        return sorted(rng.sample(range(channels), min(self.count, channels)))


@dataclass(frozen=True)
class ScanOptions:
    """The options of a scan, checked once, when made.

    Attributes:
        layers: layer names or aliases; None for the defaults (see :func:`deconvviz.core.layers.scan_layers`).
        k: activations kept per channel (9 in the paper).
        channels: which channels: a count ``n`` or ``"strongest<n>"`` (the ``n`` whose strongest activation over
            the data set is highest), ``"first<n>"`` (the first ``n`` by index), ``"random<n>"`` (``n`` drawn
            with ``seed``, the paper's choice), a list of indices, or None or ``"all"`` for all of them (see
            :func:`channel_spec`).
        batch_size: images per forward pass.
        workers: DataLoader worker processes that read and preprocess images.
        limit: scan only the first ``limit`` images.
        sample: scan a random ``sample`` of the images, drawn with ``seed`` (kept in their order).
        seed: the seed of ``sample`` and of ``"random<n>"`` channels.
        resume: go on from the saved state of an interrupted scan with the same options.
        save_every: seconds between two saves of the scan state (0: after every batch).
        inside: rank only units whose receptive field (the deconvnet's) lies wholly inside the picture, so that
            no hit answers the zero padding at its border (a layer none of whose units lies inside keeps them
            all; a layer whose units see the whole picture, or that has no map, is not restricted).
    """

    layers: tuple[str, ...] | None = None
    k: int = 9
    channels: int | str | tuple[int, ...] | None = None
    batch_size: int = 8
    workers: int = 0
    limit: int | None = None
    sample: int | None = None
    seed: int = 0
    resume: bool = False
    save_every: float = 60.0
    inside: bool = False

    def __post_init__(self) -> None:
        if self.layers is not None:  # one name alone is one layer, not its letters
            layers = (self.layers,) if isinstance(self.layers, str) else tuple(self.layers)
            object.__setattr__(self, "layers", layers or None)
        if self.channels is not None and not isinstance(self.channels, int | str):
            object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        channel_spec(self.channels)  # a bad choice fails here
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
        return cls(
            layers=None if layers is None else ((layers,) if isinstance(layers, str) else tuple(layers)), **options
        )

    @property
    def tracked(self) -> int | tuple[int, ...] | RandomChannels | None:
        """The channels the scan tracks: the first ``n`` (a count), those listed, a random draw, or None for all."""
        return channel_spec(self.channels)[0]

    @property
    def strongest(self) -> int | None:
        """How many channels are kept after the scan, the strongest first; None keeps all that were tracked."""
        return channel_spec(self.channels)[1]

    def but(self, **changes: Any) -> ScanOptions:
        """A copy with ``changes``, checked again."""
        return replace(self, **changes)

    def argv(self) -> list[str]:
        """The command line's flags for these options (``deconvviz report``), for the processes of ``torchrun``."""
        args = ["--top", str(self.k), "--batch-size", str(self.batch_size), "--seed", str(self.seed)]
        args += ["--save-every", str(self.save_every)]
        args += ["--layers", ",".join(self.layers)] if self.layers else []
        if self.channels is not None:
            channels = self.channels
            args += ["--channels", ",".join(map(str, channels)) if isinstance(channels, tuple) else str(channels)]
        args += ["--limit", str(self.limit)] if self.limit is not None else []
        args += ["--sample", str(self.sample)] if self.sample is not None else []
        args += ["--resume"] if self.resume else []
        args += ["--inside"] if self.inside else []
        return args


def channel_spec(
    channels: int | str | Sequence[int] | None, error: type[Exception] = SearchError
) -> tuple[int | tuple[int, ...] | RandomChannels | None, int | None]:
    """What a choice of channels means, the same everywhere (``top_k``, ``scan``, the report, the command line).

    Args:
        channels: a count ``n`` or ``"strongest<n>"``: the ``n`` channels of each layer whose strongest activation
            over the data set is highest, strongest first; ``"first<n>"``: the first ``n`` by index;
            ``"random<n>"``: ``n`` drawn at random with the scan's seed (the paper's Fig. 2), by index; a list of
            indices, in the order given; None or ``"all"``: every channel, by index.
        error: the exception class raised for a bad choice.

    Returns:
        ``(tracked, strongest)``: the channels a scan tracks (the first ``n``, a tuple of indices, a
        :class:`RandomChannels` or None for all) and how many of them are kept afterwards, strongest first (None:
        all that were tracked).

    Raises:
        SearchError: (or ``error``) a count below 1 or a string that is none of the above.
    """
    if isinstance(channels, str):
        spec = channels.strip().lower()
        number = spec.removeprefix("first").removeprefix("strongest").removeprefix("random")
        if spec == "all":
            return None, None
        if spec != number and number.isdigit() and int(number) >= 1:
            if spec.startswith("random"):
                return RandomChannels(int(number)), None
            return (int(number), None) if spec.startswith("first") else (None, int(number))
        if spec.isdigit() and int(spec) >= 1:
            return None, int(spec)
        if number.isdigit():  # first0, strongest0, random0, 0: a count of none
            raise error(f"channels {channels!r} chooses no channel; give a count of at least 1")
        raise error(
            f"channels must be a count, 'first<N>', 'strongest<N>', 'random<N>', 'all' or a list; got {channels!r}"
        )
    if channels is None:
        return None, None
    if isinstance(channels, bool) or (isinstance(channels, int) and channels < 1):
        raise error(f"channels must be at least 1, got {channels!r}")
    if isinstance(channels, int):
        return None, channels
    return tuple(int(c) for c in channels), None


def select_channels(
    channels: int | Sequence[int] | RandomChannels | None, count: int, layer: str, seed: int = 0, node: str = ""
) -> list[int]:
    """The channels a scan tracks in a layer of ``count`` channels, for ``channels`` as :func:`channel_spec` gives it.

    Raises:
        SearchError: a count below 1, or a listed channel the layer does not have.
    """
    if channels is None:
        return list(range(count))
    if isinstance(channels, RandomChannels):
        return channels.draw(count, node or layer, seed)
    if isinstance(channels, int):
        if channels < 1:
            raise SearchError(f"channels must be at least 1, got {channels}")
        return list(range(min(channels, count)))
    chosen = list(channels)
    bad = [c for c in chosen if not 0 <= c < count]
    if bad:
        raise SearchError(
            f"channel {bad[0]} is out of range for layer {layer!r}, which has {count} channels (0-{count - 1}); "
            "choose channels in that range"
        )
    return chosen
