"""The strongest activations of every channel across a folder of images (Zeiler & Fergus, Fig. 2).

A scan streams the folder through the model in batches and keeps, for every chosen channel of every chosen
layer, the ``k`` strongest activations seen so far: each image contributes its strongest unit per channel,
so the ``k`` hits of a channel come from ``k`` different images, as in the paper's figures. Memory holds
one batch of activations plus ``k`` numbers per channel, whatever the folder's size.

Each kept activation is then projected down from its own image (through that image's own pooling
switches), batched across images, and both the reconstruction and the image are cropped to the unit's
receptive field: the paper's reconstruction-beside-patch grids.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from deconvviz.errors import DeconvVizError

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure
    from PIL.Image import Image

    from deconvviz.deconvnet import DeconvNet

Progress = Callable[[str, int, int], None]
"""``progress(stage, done, total)``; stages are ``"scan"`` and ``"project"``."""

SCHEMA_VERSION = 1


class SearchError(DeconvVizError, ValueError):
    """A folder, layer or channel choice that a top-k search cannot work with."""


def find_images(folder: str | Path) -> list[Path]:
    """Every image file under ``folder`` (recursively), in a stable order (sorted relative paths).

    Raises:
        SearchError: the folder does not exist, is not a folder, or holds no image files.
    """
    from deconvviz.images import IMAGE_SUFFIXES

    root = Path(folder)
    if not root.exists():
        raise SearchError(f"folder not found: {str(root)!r}")
    if not root.is_dir():
        raise SearchError(f"not a folder: {str(root)!r} (give a folder of images)")
    paths = sorted(
        (p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
        key=lambda p: p.relative_to(root).as_posix(),
    )
    if not paths:
        suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
        raise SearchError(f"no images in {str(root)!r} (looked recursively for {suffixes})")
    return paths


# ------------------------------------------------------------------------------------------------ scanning


class _Images(torch.utils.data.Dataset):
    """Images of a folder, preprocessed; an unreadable file yields its error instead of a tensor."""

    def __init__(self, paths: Sequence[Path], preprocess: Callable[[Path], Tensor]) -> None:
        self.paths = list(paths)
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, Tensor | None, str | None]:
        try:
            return index, self.preprocess(self.paths[index]), None
        except (DeconvVizError, OSError, ValueError) as exc:
            return index, None, str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _collate(
    items: list[tuple[int, Tensor | None, str | None]],
) -> tuple[list[int], Tensor | None, list[tuple[int, str]]]:
    good = [(i, x) for i, x, _ in items if x is not None]
    bad = [(i, err or "unreadable") for i, x, err in items if x is None]
    batch = torch.stack([x for _, x in good]) if good else None
    return [i for i, _ in good], batch, bad


class TopKTracker:
    """Streaming top-k per channel: ``k`` best (value, image, position) triples, one hit per image.

    Ties keep the earlier image, so a scan in a fixed order is deterministic.

    Args:
        channels: number of tracked channels.
        k: how many activations to keep per channel.
        map_shape: spatial shape of the layer's maps (to turn flat positions into rows and columns).
    """

    def __init__(self, channels: int, k: int, map_shape: Sequence[int] = ()) -> None:
        self.k = k
        self.map_shape = tuple(int(n) for n in map_shape)
        self.values = torch.full((channels, k), -math.inf, dtype=torch.float64)
        self.images = torch.full((channels, k), -1, dtype=torch.long)
        self.positions = torch.zeros((channels, k), dtype=torch.long)  # flat index into the map

    def update(self, activations: Tensor, images: Tensor) -> None:
        """Offer a batch: ``activations`` ``(B, channels, ...)`` and the image index of each row ``(B,)``."""
        batch, channels = activations.shape[:2]
        flat = activations.detach().reshape(batch, channels, -1)
        best, where = flat.max(dim=2)  # per image and channel: its strongest unit
        values = torch.cat([self.values, best.t().to("cpu", torch.float64)], dim=1)
        image_ids = torch.cat([self.images, images.to("cpu").expand(channels, batch)], dim=1)
        positions = torch.cat([self.positions, where.t().to("cpu")], dim=1)
        order = torch.sort(values, dim=1, descending=True, stable=True).indices[:, : self.k]
        self.values = values.gather(1, order)
        self.images = image_ids.gather(1, order)
        self.positions = positions.gather(1, order)


# ------------------------------------------------------------------------------------------------- results


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
    """

    value: float
    image: str
    position: tuple[int, int]
    box: tuple[int, int, int, int]
    reconstruction: Tensor = field(repr=False)
    patch: Tensor = field(repr=False)


@dataclass(frozen=True)
class TopKResult:
    """The top-k activations of the chosen channels of each layer across a folder, with projections.

    Attributes:
        model: name of the model.
        folder: the scanned folder.
        layers: the layers as asked for (aliases or node names).
        nodes: the node name of each layer.
        k: hits kept per channel.
        images: every image that was scanned, relative to ``folder``.
        skipped: ``(image, error)`` for every file that could not be read.
        hits: ``hits[layer][channel]``: the hits of that channel, strongest first (fewer than ``k`` when the
            folder has fewer readable images).
        to_image: the model's input-space -> PIL conversion, for display.
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

    def _hits(self, layer: str, channel: int) -> tuple[TopKHit, ...]:
        per_layer = self._layer(layer)
        if channel not in per_layer:
            raise SearchError(f"channel {channel} of {layer!r} was not searched; searched: {sorted(per_layer)}")
        return per_layer[channel]

    def reconstruction_rgb(self, layer: str, channel: int, rank: int, scale: str | None = None) -> Any:
        """A hit's cropped reconstruction as an ``(h, w, 3)`` uint8 array (scaled as :func:`deconvviz.viz.to_rgb`)."""
        from deconvviz.viz import to_rgb

        return to_rgb(self._hits(layer, channel)[rank].reconstruction, scale)

    def patch_pil(self, layer: str, channel: int, rank: int) -> Image:
        """A hit's image patch as a PIL image."""
        from deconvviz.viz import input_to_pil

        return input_to_pil(self._hits(layer, channel)[rank].patch, self.to_image)

    def figure(self, layer: str, channel: int, *, scale: str | None = None, size: float = 1.3) -> tuple[Figure, Any]:
        """The paper's layout for one channel: a grid of reconstructions beside a grid of the image patches.

        Returns:
            ``(figure, axes)`` with axes of shape ``(rows, 2 * columns)``; the figure is not shown.
        """
        from matplotlib.figure import Figure

        hits = self._hits(layer, channel)
        side = self.grid_side
        rows = max(1, math.ceil(self.k / side))
        fig = Figure(figsize=(size * 2 * side + 0.3, size * rows + 0.5))
        axes = fig.subplots(
            rows, 2 * side + 1, squeeze=False, gridspec_kw={"width_ratios": [1] * side + [0.15] + [1] * side}
        )
        for ax in axes.flat:
            ax.axis("off")
        for rank, _hit in enumerate(hits):
            r, c = divmod(rank, side)
            axes[r, c].imshow(self.reconstruction_rgb(layer, channel, rank, scale))
            axes[r, side + 1 + c].imshow(self.patch_pil(layer, channel, rank))
        fig.suptitle(f"{layer} channel {channel}: top {len(hits)} of {len(self.images)} images", fontsize=9)
        fig.subplots_adjust(wspace=0.05, hspace=0.05, left=0.01, right=0.99, bottom=0.01, top=0.9)
        keep = [c for c in range(2 * side + 1) if c != side]
        return fig, axes[:, keep]

    def to_dict(self) -> dict[str, Any]:
        """Everything but the pixels, JSON-ready."""
        return {
            "schema_version": SCHEMA_VERSION,
            "model": self.model,
            "folder": self.folder,
            "k": self.k,
            "layers": [
                {
                    "layer": layer,
                    "node": node,
                    "channels": {
                        str(channel): [
                            {"value": h.value, "image": h.image, "position": list(h.position), "box": list(h.box)}
                            for h in hits
                        ]
                        for channel, hits in self.hits[layer].items()
                    },
                }
                for layer, node in zip(self.layers, self.nodes, strict=True)
            ],
            "images": list(self.images),
            "skipped": [{"image": image, "error": error} for image, error in self.skipped],
        }

    def save(self, directory: str | Path, *, scale: str | None = None) -> Path:
        """Write one figure per layer and channel (PNG) and ``topk.json`` into ``directory``; return it."""
        from deconvviz.viz import figure_png

        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        for layer in self.layers:
            for channel in self.hits[layer]:
                fig, _ = self.figure(layer, channel, scale=scale)
                (out / f"{_safe(layer)}_ch{channel:04d}.png").write_bytes(figure_png(fig))
        (out / "topk.json").write_text(json.dumps(self.to_dict(), indent=2))
        return out

    def __repr__(self) -> str:
        counts = ", ".join(f"{layer}: {len(self.hits[layer])} channels" for layer in self.layers)
        return f"TopKResult(model={self.model!r}, images={len(self.images)}, k={self.k}, {counts})"


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in name)


# ------------------------------------------------------------------------------------------------- top_k


@dataclass
class ScanResult:
    """The first half of a top-k search: the folder streamed through the model, strongest hits tracked.

    Attributes:
        loaded: the loaded model.
        net: its deconvnet.
        root: the scanned folder.
        paths: every image file found, in scan order.
        names: those paths relative to ``root``.
        layers: the layers as asked for.
        nodes: their node names.
        trackers: per layer, the kept hits of its selected channels.
        selected: per layer, the selected channels (tracker row ``i`` is channel ``selected[layer][i]``).
        skipped: ``(image, error)`` for every unreadable file.
    """

    loaded: Any
    net: DeconvNet
    root: Path
    paths: list[Path]
    names: list[str]
    layers: list[str]
    nodes: list[str]
    trackers: dict[str, TopKTracker]
    selected: dict[str, list[int]]
    skipped: list[tuple[str, str]]


def scan(
    model: Any,
    folder: str | Path,
    layers: Sequence[str] | None = None,
    k: int = 9,
    channels: int | Sequence[int] | None = None,
    *,
    batch_size: int = 8,
    device: str | torch.device | None = None,
    workers: int = 0,
    progress: Progress | None = None,
) -> ScanResult:
    """Stream a folder through the model and keep each channel's ``k`` strongest activations (no projection).

    Arguments are those of :func:`top_k`. Memory holds one batch of activations and the kept hits.
    """
    from deconvviz.deconvnet import DeconvNet

    loaded = _loaded(model, device)
    net = DeconvNet(loaded)
    if k < 1:
        raise SearchError(f"k must be at least 1, got {k}")
    if batch_size < 1:
        raise SearchError(f"batch_size must be at least 1, got {batch_size}")
    chosen_layers = list(layers) if layers else list(loaded.layers) or net.layers
    nodes = [net.resolve(layer) for layer in chosen_layers]  # unknown names fail here, before any work
    root = Path(folder)
    paths = find_images(root)
    names = [p.relative_to(root).as_posix() for p in paths]

    def prepare(path: Path) -> Tensor:
        from deconvviz.images import load_image

        return loaded.preprocess(load_image(path))[0].cpu()

    loader = torch.utils.data.DataLoader(
        _Images(paths, prepare), batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=_collate
    )
    trackers: dict[str, TopKTracker] = {}
    selected: dict[str, list[int]] = {}
    skipped: list[tuple[str, str]] = []
    done = 0

    def track(layer: str, act: Tensor, index: Tensor) -> None:
        if layer not in trackers:
            selected[layer] = _select_channels(channels, act.shape[1], layer)
            trackers[layer] = TopKTracker(len(selected[layer]), k, act.shape[2:])
        chosen = selected[layer]
        if len(chosen) != act.shape[1] or chosen != list(range(act.shape[1])):  # no copy when all are kept
            act = act.index_select(1, torch.tensor(chosen, device=act.device))
        trackers[layer].update(act, index)

    for indices, batch, bad in loader:
        skipped.extend((names[i], error) for i, error in bad)
        done += len(indices) + len(bad)
        if batch is not None:
            index = torch.tensor(indices)

            def visit(layer: str, act: Tensor, index: Tensor = index) -> None:
                track(layer, act, index)

            # Each layer is folded into its tracker as soon as it is computed, then released.
            net.visit_activations(batch, chosen_layers, visit)
        if progress is not None:
            progress("scan", done, len(paths))
    if not trackers:
        raise SearchError(f"none of the {len(paths)} image files in {str(root)!r} could be read")
    return ScanResult(loaded, net, root, paths, names, chosen_layers, nodes, trackers, selected, skipped)


def top_k(
    model: Any,
    folder: str | Path,
    layers: Sequence[str] | None = None,
    k: int = 9,
    channels: int | Sequence[int] | None = None,
    *,
    batch_size: int = 8,
    device: str | torch.device | None = None,
    workers: int = 0,
    progress: Progress | None = None,
) -> TopKResult:
    """Find the ``k`` strongest activations of each channel across a folder and project each one.

    Args:
        model: a registered model name (``"vgg16"``) or a loaded model (:func:`deconvviz.load_model`).
        folder: a folder of images, scanned recursively (jpg, png, webp, bmp, tiff). Unreadable files are
            skipped and listed in the result.
        layers: layer names or aliases; default: every aliased layer of the model.
        k: activations kept per channel (9 in the paper).
        channels: which channels: a count ``n`` (the first ``n``), a list of indices, or None for all.
        batch_size: images per forward pass.
        device: where to run (default: where the model is).
        workers: DataLoader worker processes that read and preprocess images.
        progress: called as ``progress(stage, done, total)`` while scanning and projecting.

    Returns:
        A :class:`TopKResult`.

    Raises:
        SearchError: missing/empty folder, no readable image, bad ``k`` or channels.
        LayerNotFoundError: an unknown layer.

    Example:
        >>> result = dv.top_k("vgg16", "photos/", layers=["conv5_3"], k=9, channels=16)  # doctest: +SKIP
        >>> fig, axes = result.figure("conv5_3", 3)  # doctest: +SKIP
    """
    found = scan(
        model, folder, layers, k, channels, batch_size=batch_size, device=device, workers=workers, progress=progress
    )
    loaded = found.loaded
    return TopKResult(
        model=str(getattr(loaded, "name", type(loaded.module).__name__)),
        folder=str(found.root),
        layers=tuple(found.layers),
        nodes=tuple(found.nodes),
        k=k,
        images=tuple(found.names),
        skipped=tuple(found.skipped),
        hits=_project_hits(found, batch_size, progress),
        to_image=getattr(loaded, "to_image", None),
    )


def _loaded(model: Any, device: str | torch.device | None) -> Any:
    from deconvviz.models import load_model

    if isinstance(model, str):
        return load_model(model, device=device or "cpu")
    if not hasattr(model, "preprocess") or not hasattr(model, "module"):
        raise SearchError(
            "top_k needs a model that knows its preprocessing: a registered name or deconvviz.load_model(...)"
        )
    if device is not None:
        model.module.to(device)
    return model


def _select_channels(channels: int | Sequence[int] | None, count: int, layer: str) -> list[int]:
    if channels is None:
        return list(range(count))
    if isinstance(channels, int):
        if channels < 1:
            raise SearchError(f"channels must be at least 1, got {channels}")
        return list(range(min(channels, count)))
    chosen = list(channels)
    bad = [c for c in chosen if not 0 <= c < count]
    if bad:
        raise SearchError(
            f"channel {bad[0]} is out of range for layer {layer!r}, which has {count} channels (0-{count - 1})"
        )
    return chosen


def _project_hits(
    found: ScanResult, batch_size: int, progress: Progress | None
) -> dict[str, dict[int, tuple[TopKHit, ...]]]:
    """Project every kept activation from its own image, batched over images, and crop it."""
    from deconvviz.images import load_image
    from deconvviz.receptive import receptive_fields

    net, loaded, paths, names = found.net, found.loaded, found.paths, found.names
    layers, trackers, selected = found.layers, found.trackers, found.selected

    fields = receptive_fields(net, layers)  # only these: geometry elsewhere in the model does not matter
    total = sum(int((trackers[layer].images >= 0).sum()) for layer in layers)
    done = 0
    result: dict[str, dict[int, tuple[TopKHit, ...]]] = {}
    for layer in layers:
        tracker = trackers[layer]
        field_ = fields[layer]
        width = tracker.map_shape[1] if len(tracker.map_shape) == 2 else 1
        wanted: dict[int, list[tuple[int, int, int, int]]] = {}  # image -> (slot, channel, flat position, rank)
        for slot, channel in enumerate(selected[layer]):
            for rank in range(tracker.k):
                image = int(tracker.images[slot, rank])
                if image >= 0:
                    wanted.setdefault(image, []).append((slot, channel, int(tracker.positions[slot, rank]), rank))
        per_channel: dict[int, dict[int, TopKHit]] = {c: {} for c in selected[layer]}
        images = sorted(wanted)
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            x = torch.stack([loaded.preprocess(load_image(paths[i]))[0] for i in chunk])
            units, meta = [], []
            for local, image in enumerate(chunk):
                for slot, channel, flat, rank in wanted[image]:
                    row, col = divmod(flat, width)
                    units.append((local, channel, row, col))
                    meta.append((image, slot, channel, rank, row, col))
            projected = net.project_units(x, layer, units).cpu()
            x_cpu = x.cpu()
            for (image, slot, channel, rank, row, col), recon, unit in zip(meta, projected, units, strict=True):
                local = unit[0]
                top, left, bottom, right = field_.box(row, col, x_cpu.shape[-2:])
                per_channel[channel][rank] = TopKHit(
                    value=float(tracker.values[slot, rank]),
                    image=names[image],
                    position=(row, col),
                    box=(top, left, bottom, right),
                    reconstruction=recon[:, top:bottom, left:right].clone(),
                    patch=x_cpu[local, :, top:bottom, left:right].clone(),
                )
            done += len(units)
            if progress is not None:
                progress("project", done, total)
        result[layer] = {c: tuple(hits[r] for r in sorted(hits)) for c, hits in per_channel.items()}
    return result


__all__ = ["ScanResult", "SearchError", "TopKHit", "TopKResult", "TopKTracker", "find_images", "scan", "top_k"]
