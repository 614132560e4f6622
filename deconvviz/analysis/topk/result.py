"""The result of a top-k search: per layer and channel the strongest hits, each with its reconstruction and patch."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from torch import Tensor

from deconvviz.analysis.base import viz
from deconvviz.io.atomic import stage_folders
from deconvviz.io.jsonstream import Streamed, iter_json
from deconvviz.io.manifest import header
from deconvviz.io.names import NameMap
from deconvviz.io.sources import ImageSource, SearchError

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure
    from PIL.Image import Image


@dataclass(frozen=True)
class TopKHit:
    """One kept activation with its projection and image patch, cropped to the unit's receptive field.

    Attributes:
        value: the activation.
        image: path of the source image, relative to the scanned folder.
        position: ``(row, col)`` of the unit in the layer's map.
        box: ``(top, left, bottom, right)`` of its receptive field in the preprocessed image, clipped.
        reconstruction: ``(C, h, w)`` projection cropped to ``box``, input space.
        patch: ``(C, h, w)`` the preprocessed image cropped to ``box``, input space.
        edge: the unit's receptive field reaches past the picture, into the padding (``box`` is clipped); such
            a unit may answer the picture's border rather than anything in it. Figures and pages mark it ``edge``.
    """

    value: float
    image: str
    position: tuple[int, int]
    box: tuple[int, int, int, int]
    reconstruction: Tensor = field(repr=False)
    patch: Tensor = field(repr=False)
    edge: bool = False


@dataclass(frozen=True)
class TopKResult:
    """The top-k activations of the chosen channels of each layer across a data set, with projections.

    Attributes:
        model: name of the model.
        folder: where the images came from (the scanned folder, the list file, or the data set's class).
        layers: the layers as asked for (aliases or node names).
        nodes: the node name of each layer.
        k: hits kept per channel.
        images: the name of every image that was scanned (relative to ``folder``, or ``#index`` in a data set).
        skipped: ``(image, error)`` for every file that could not be read.
        hits: ``hits[layer][channel]``: the hits of that channel, strongest first: its activations above 0, one
            per picture (fewer than ``k`` when it fires on fewer pictures; none for a channel that never fires).
        to_image: the model's input-space -> PIL conversion, for display.
        source: the scanned images (to read an image again by its name).
        method: the reverse pass that made the reconstructions (``"deconvnet"``, ``"guided"``, ``"gradient"``).
        inside: whether only units whose receptive field lies wholly inside the picture were ranked.
        everywhere: with ``inside``, the layers none of whose units lies inside, ranked over all their units.
    """

    model: str
    folder: str
    layers: tuple[str, ...]
    nodes: tuple[str, ...]
    k: int
    images: tuple[str, ...]
    skipped: tuple[tuple[str, str], ...]
    hits: dict[str, dict[int, tuple[TopKHit, ...]]] = field(repr=False)
    to_image: Callable[[Tensor], Any] | None = field(default=None, repr=False, compare=False)
    source: ImageSource | None = field(default=None, repr=False, compare=False)
    method: str = "deconvnet"
    inside: bool = False
    everywhere: tuple[str, ...] = ()

    kind: ClassVar[str] = "topk"

    @property
    def readable(self) -> int:
        """How many of the scanned images could be read (``images`` less ``skipped``)."""
        return len(self.images) - len(self.skipped)

    @property
    def grid_side(self) -> int:
        """Columns of the square-ish grid that shows ``k`` hits (3 for the paper's 9)."""
        return max(1, math.ceil(math.sqrt(self.k)))

    def channels(self, layer: str) -> list[int]:
        """The channels kept for ``layer``."""
        return list(self._layer(layer))

    def _layer(self, layer: str) -> dict[int, tuple[TopKHit, ...]]:
        if layer not in self.hits:
            raise SearchError(f"layer {layer!r} was not searched; searched: {', '.join(self.layers)}")
        return self.hits[layer]

    def channel_hits(self, layer: str, channel: int) -> tuple[TopKHit, ...]:
        """The hits of one channel, strongest first."""
        per_layer = self._layer(layer)
        if channel not in per_layer:
            raise SearchError(f"channel {channel} of {layer!r} was not searched; searched: {sorted(per_layer)}")
        return per_layer[channel]

    def reconstruction_rgb(self, layer: str, channel: int, rank: int, scale: str | None = None) -> Any:
        """A hit's cropped reconstruction as an ``(h, w, 3)`` uint8 array (scaled as :func:`deconvviz.viz.to_rgb`)."""
        return viz().to_rgb(self.channel_hits(layer, channel)[rank].reconstruction, scale)

    def patch_pil(self, layer: str, channel: int, rank: int) -> Image:
        """A hit's image patch as a PIL image."""
        return viz().input_to_pil(self.channel_hits(layer, channel)[rank].patch, self.to_image)

    def figure(self, layer: str, channel: int, *, scale: str | None = None, size: float = 1.3) -> tuple[Figure, Any]:
        """The paper's layout for one channel: a grid of reconstructions beside a grid of the image patches.

        Each reconstruction is labelled with its activation, each patch with its picture's file name. Only hits
        where the channel fires are drawn: on a picture where its map is all zero, the position of the maximum
        is no hit (:attr:`hits` keeps them, with a value of 0).

        Returns:
            ``(figure, axes)`` with axes of shape ``(rows, 2 * columns)``, as many rows as the hits drawn need;
            the figure is not shown.
        """
        return viz().topk_figure(self, layer, channel, scale=scale, size=size)

    def _repr_html_(self) -> str:
        """An overview for notebooks: per layer, each channel's strongest hit above the patch it came from."""
        return viz().topk_overview(self)

    def to_dict(self, *, stream: bool = False) -> dict[str, Any]:
        """Everything but the pixels, JSON-ready; per channel, the hits where it fires (an activation above 0).

        Args:
            stream: give the large parts (the layers' hits, the images, the skipped ones) as :class:`Streamed`
                arrays and objects, made one item at a time as :func:`iter_json` writes them, so that a report of
                millions of hits never holds all their dicts at once. ``iter_json`` writes the same text for both.
        """

        def hits(layer: str) -> Iterator[tuple[str, list[dict[str, Any]]]]:
            for channel, kept in self.hits[layer].items():
                yield (
                    str(channel),
                    [
                        {
                            "value": h.value,
                            "image": h.image,
                            "position": list(h.position),
                            "box": list(h.box),
                            "edge": h.edge,
                        }
                        for h in kept
                        if h.value > 0  # a map of zeros has an argmax too: that is no hit
                    ],
                )

        def layers() -> Iterator[dict[str, Any]]:
            for layer, node in zip(self.layers, self.nodes, strict=True):
                channels = Streamed(functools.partial(hits, layer), pairs=True)
                yield {"layer": layer, "node": node, "channels": channels if stream else channels.materialize()}

        def skipped() -> Iterator[dict[str, str]]:
            return ({"image": image, "error": error} for image, error in self.skipped)

        parts = {
            "layers": Streamed(layers),
            "images": Streamed(lambda: iter(self.images)),
            "skipped": Streamed(skipped),
        }
        return {
            **header("topk", stamped=False),
            "model": self.model,
            "folder": self.folder,
            "k": self.k,
            "method": self.method,
            "inside": self.inside,
            "everywhere": list(self.everywhere),
            **{name: part if stream else part.materialize() for name, part in parts.items()},
        }

    def save(self, directory: str | Path, *, scale: str | None = None) -> Path:
        """Write one figure per layer and channel (PNG) and ``topk.json`` as the folder ``directory``; return it.

        The folder is written as every result folder is (see :mod:`deconvviz.io`): whole or not at all, replacing
        an earlier result but never a folder deconvviz did not write.
        """
        out = Path(directory)
        names = NameMap(fallback="layer")
        with stage_folders([out], kind="topk", replace=True) as (staging,):
            for layer in self.layers:
                stem = names.add(layer)
                for channel in self.hits[layer]:
                    fig, _ = self.figure(layer, channel, scale=scale)
                    (staging / f"{stem}_ch{channel:04d}.png").write_bytes(viz().figure_png(fig))
            with (staging / "topk.json").open("w", encoding="utf-8") as handle:
                handle.writelines(iter_json(self.to_dict(stream=True), indent=2))
        return out

    def __repr__(self) -> str:
        counts = ", ".join(f"{layer}: {len(self.hits[layer])} channels" for layer in self.layers)
        return f"TopKResult(model={self.model!r}, images={len(self.images)}, k={self.k}, {counts})"
