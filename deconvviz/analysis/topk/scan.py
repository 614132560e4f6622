"""The strongest activations of every channel across a folder of images (Zeiler & Fergus, Fig. 2).

A scan streams the folder through the model in batches and keeps, for every chosen channel of every chosen
layer, the ``k`` strongest activations seen so far: each image contributes its strongest unit per channel,
so the ``k`` hits of a channel come from ``k`` different images, as in the paper's figures. Memory holds
one batch of activations plus ``k`` numbers per channel, whatever the folder's size.

Each kept activation is then projected down from its own image (through that image's own pooling
switches), batched across images with one capture per image for all the layers it is needed at, and both
the reconstruction and the image are cropped to the unit's receptive field: the paper's
reconstruction-beside-patch grids.

Images come from a folder tree, a text file of paths or a torch Dataset (:mod:`deconvviz.io.sources`). A scan can
save its state at intervals and resume from it (:mod:`deconvviz.analysis.topk.state`), and under ``torchrun`` it is
spread over the processes (:mod:`.distributed`): each scans its share of the batches, the top-k are
merged with collectives, the projections are shared out and rank 0 gets the result.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor

from deconvviz.analysis.choose import inside_flags, inside_mask
from deconvviz.analysis.progress import staged
from deconvviz.analysis.topk import distributed
from deconvviz.analysis.topk.distributed import Ranks
from deconvviz.analysis.topk.keep import keep_strongest
from deconvviz.analysis.topk.options import ScanOptions, select_channels
from deconvviz.analysis.topk.result import TopKHit, TopKResult
from deconvviz.analysis.topk.state import ScanState, load_state, save_state, scan_fingerprint, state_file
from deconvviz.analysis.topk.tracker import TopKTracker
from deconvviz.core.deconvnet import DeconvNet
from deconvviz.core.layers import SCAN_LAYERS, scan_layers
from deconvviz.core.receptive import receptive_fields
from deconvviz.core.seeds import index_tensor
from deconvviz.errors import DeconvVizError, deprecated
from deconvviz.io.sources import Data, ImageSource, SearchError, image_source
from deconvviz.methods import get_method
from deconvviz.models.session import Session
from deconvviz.models.zoo import LoadedModel, load_model, registered_names

if TYPE_CHECKING:  # pragma: no cover
    from deconvviz.core.deconvnet import DeconvNet

Progress = Callable[[str, int, int], None]
"""``progress(stage, done, total)``; stages are ``"scan"`` and ``"project"``."""


# ------------------------------------------------------------------------------------------------ scanning


class _Images(torch.utils.data.Dataset):
    """Images of a source, preprocessed; an unreadable one yields its error instead of a tensor."""

    def __init__(self, source: ImageSource, preprocess: Callable[[Any], Tensor]) -> None:
        self.source = source
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> tuple[int, Tensor | None, str | None]:
        try:
            return index, self.source.prepare(index, self.preprocess), None
        except (DeconvVizError, OSError, ValueError) as exc:
            return index, None, str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _collate(
    items: list[tuple[int, Tensor | None, str | None]],
) -> tuple[list[int], Tensor | None, list[tuple[int, str]]]:
    good = [(i, x) for i, x, _ in items if x is not None]
    bad = [(i, err or "unreadable") for i, x, err in items if x is None]
    batch = torch.stack([x for _, x in good]) if good else None
    return [i for i, _ in good], batch, bad


# ------------------------------------------------------------------------------------------------- results


# ------------------------------------------------------------------------------------------------- top_k


@dataclass
class ScanResult:
    """The first half of a top-k search: the images streamed through the model, strongest hits tracked.

    Under torch.distributed the trackers and ``skipped`` are already merged over all processes.

    Attributes:
        loaded: the loaded model.
        net: its deconvnet.
        source: the scanned images.
        layers: the layers as asked for.
        nodes: their node names.
        trackers: per layer, the kept hits of its selected channels.
        selected: per layer, the selected channels (tracker row ``i`` is channel ``selected[layer][i]``).
        skipped: ``(image, error)`` for every unreadable image, in scan order.
        resumed: images of this process's shard that were taken from a saved state instead of being read again.
        ranks: this process's place among the scanning processes.
        inside: whether only units whose receptive field lies wholly inside the picture were ranked.
        everywhere: with ``inside``, the layers none of whose units lies wholly inside the picture, which were
            ranked over all their units all the same.
    """

    loaded: Any
    net: DeconvNet
    source: ImageSource
    layers: list[str]
    nodes: list[str]
    trackers: dict[str, TopKTracker]
    selected: dict[str, list[int]]
    skipped: list[tuple[str, str]]
    resumed: int = 0
    ranks: Ranks = field(default_factory=Ranks)
    inside: bool = False
    everywhere: tuple[str, ...] = ()

    @property
    def names(self) -> list[str]:
        """The name of every image, in scan order."""
        return self.source.names

    @property
    def paths(self) -> list[Path] | None:
        """The image files, where the images are files."""
        return self.source.paths


def default_scan_layers(net: DeconvNet, source: ImageSource, preprocess: Callable[[Any], Tensor]) -> list[str]:
    """The layers a scan looks at when none are given: :func:`deconvviz.core.layers.scan_layers` (as the report does).

    Those are ``conv2_2, conv3_3, conv4_3, conv5_3`` where the model has these aliases; else the first readable
    image tells each layer's size and the deepest four of the default layers are taken.

    Raises:
        SearchError: no image of ``source`` can be read (only asked where the model has no such aliases).
    """
    if all(name in net.aliases for name in SCAN_LAYERS):  # no picture needed
        return list(SCAN_LAYERS)
    return scan_layers(net, first_readable(source, preprocess))


def first_readable(source: ImageSource, preprocess: Callable[[Any], Tensor]) -> Tensor:
    """The first image of ``source`` that can be read, preprocessed, as a batch of one (to learn layer sizes).

    Raises:
        SearchError: no image can be read.
    """
    first: str | None = None
    for index in range(len(source)):
        try:
            return source.prepare(index, preprocess)[None]
        except (DeconvVizError, OSError) as exc:
            first = first or f"{source.names[index]}: {str(exc).strip().splitlines()[0] if str(exc).strip() else exc}"
            continue
    raise SearchError(unreadable(len(source), source.description, first))


def unreadable(count: int, description: str, first: str | None) -> str:
    """The one line for a data set none of whose pictures could be read, with the first reason."""
    why = f" (the first: {first})" if first else ""
    return (
        f"none of the {count} images of {description!r} could be read{why}; give pictures deconvviz can read "
        "(jpg, png, webp, bmp, tiff)"
    )


def scan(
    data: Data,
    model: Any = "vgg16",
    layers: Sequence[str] | None = None,
    k: int = 9,
    channels: int | str | Sequence[int] | None = None,
    *,
    batch_size: int = 8,
    device: str | torch.device | None = None,
    workers: int = 0,
    progress: Progress | None = None,
    limit: int | None = None,
    sample: int | None = None,
    seed: int = 0,
    state: str | Path | None = None,
    resume: bool = False,
    save_every: float = 60.0,
    inside: bool = False,
) -> ScanResult:
    """Stream the images through the model and keep each channel's ``k`` strongest activations (no projection).

    Arguments are those of :func:`top_k`. Memory holds one batch of activations and the kept hits.
    """
    data, model = _data_first(data, model, "scan")
    options = ScanOptions.of(
        layers,
        k=k,
        channels=channels,
        batch_size=batch_size,
        workers=workers,
        limit=limit,
        sample=sample,
        seed=seed,
        resume=resume,
        save_every=save_every,
        inside=inside,
    )
    found = run_scan(model, data, options, device=device, progress=progress, state=state)
    return found if options.strongest is None else keep_strongest(found, options.strongest)


def run_scan(
    model: Any,
    data: Data,
    options: ScanOptions,
    *,
    device: str | torch.device | None = None,
    progress: Progress | None = None,
    state: str | Path | None = None,
) -> ScanResult:
    """:func:`scan` with its options in one object (:class:`~deconvviz.analysis.topk.options.ScanOptions`)."""
    layers, k, channels, batch_size = options.layers, options.k, options.tracked, options.batch_size
    # bad input fails before the model loads
    source = image_source(data, limit=options.limit, sample=options.sample, seed=options.seed)
    loaded = _loaded(model, device)
    where = _device_of(loaded)
    ranks = distributed.setup(where)
    net = DeconvNet(loaded)
    chosen_layers = list(layers) if layers else default_scan_layers(net, source, loaded.preprocess)
    nodes = [net.resolve(layer) for layer in chosen_layers]  # unknown names fail here, before any work
    mine = distributed.batches(len(source), batch_size, ranks)
    total = sum(len(b) for b in mine)

    trackers: dict[str, TopKTracker] = {}
    selected: dict[str, list[int]] = {}
    skipped: list[tuple[int, str]] = []
    start = 0
    path = state_file(state, ranks.rank, ranks.world) if state is not None else None
    fingerprint = scan_fingerprint(loaded, nodes, options, source, ranks) if path is not None else {}
    if path is not None and options.resume:
        saved = load_state(path, fingerprint)
        if saved is not None:
            trackers = {layer: TopKTracker.from_state(t, where) for layer, t in saved.trackers.items()}
            selected, skipped, start = saved.selected, saved.skipped, saved.batches_done
    resumed = sum(len(b) for b in mine[:start])

    def save(done_batches: int) -> None:
        assert path is not None
        saved = ScanState(
            fingerprint=fingerprint,
            batches_done=done_batches,
            trackers={layer: tracker.state() for layer, tracker in trackers.items()},
            selected=selected,
            skipped=skipped,
            finished=done_batches == len(mine),
        )
        save_state(path, saved)

    prepare = host_preprocess(loaded)

    picks: dict[str, Tensor] = {}  # per layer, its selected channels on the device, made once
    fields = receptive_fields(net, chosen_layers) if options.inside else {}
    masks: dict[str, Tensor | None] = {}  # per layer, its units inside the picture (None: every unit counts)
    outside: set[str] = set()  # layers with a map none of whose units lies inside: every unit counts there
    image_size: tuple[int, int] = (0, 0)

    def inside(layer: str, map_shape: Sequence[int], size: Sequence[int], device: torch.device) -> Tensor | None:
        # judged by the deconvnet's receptive fields, the paper's (a gradient's may be the whole picture)
        if layer not in masks:
            mask = inside_mask(fields[layer], map_shape, size) if len(map_shape) == 2 else None
            if mask is not None and not bool(mask.any()):
                outside.add(layer)
            masks[layer] = None if mask is None or layer in outside else mask.to(device)
        return masks[layer]

    def track(layer: str, act: Tensor, index: Tensor) -> None:
        if layer not in trackers:
            # a random draw is keyed by the node, so that a layer named by alias or by node gets the same channels
            node = nodes[chosen_layers.index(layer)]
            selected[layer] = select_channels(channels, act.shape[1], layer, options.seed, node)
            trackers[layer] = TopKTracker(len(selected[layer]), k, act.shape[2:], device=act.device)
        chosen = selected[layer]
        if len(chosen) != act.shape[1] or chosen != list(range(act.shape[1])):  # no copy when all are kept
            if layer not in picks:
                picks[layer] = index_tensor(chosen, act.device)
            act = act.index_select(1, picks[layer])
        if options.inside:
            mask = inside(layer, act.shape[2:], image_size, act.device)
            if mask is not None:  # a unit that sees past the picture never ranks: -inf is no hit
                act = act.masked_fill(~mask, -math.inf)
        trackers[layer].update(act, index)

    on_gpu = where.type == "cuda"
    loader = torch.utils.data.DataLoader(
        _Images(source, prepare),
        batch_sampler=mine[start:],
        num_workers=options.workers,
        collate_fn=_collate,
        pin_memory=on_gpu,  # page-locked batches: the copy to the GPU overlaps the next batch's reading
    )
    done, last_save, kept = resumed, time.monotonic(), start > 0
    if progress is not None and done:
        progress("scan", done, total)
    for step, (indices, batch, bad) in enumerate(loader, start=start + 1):
        skipped.extend(bad)
        done += len(indices) + len(bad)
        if batch is not None:
            index = index_tensor(indices, where)
            x = batch.to(where, non_blocking=on_gpu)
            image_size = (int(x.shape[-2]), int(x.shape[-1]))

            def visit(layer: str, act: Tensor, index: Tensor = index) -> None:
                track(layer, act, index)

            # Each layer is folded into its tracker as soon as it is computed, then released.
            net.visit_activations(x, chosen_layers, visit)
        # The first save comes after save_every seconds (a short scan leaves no state behind), then one every
        # save_every seconds and one at the end, so that a crash while projecting need not scan again.
        if path is not None and (time.monotonic() - last_save >= options.save_every or (step == len(mine) and kept)):
            save(step)
            kept, last_save = True, time.monotonic()
        if progress is not None:
            progress("scan", done, total)
    if ranks.spread:
        trackers, selected, skipped = _merge_ranks(trackers, selected, skipped, chosen_layers, ranks, k)
    if not trackers:
        first = min(skipped) if skipped else None
        raise SearchError(
            unreadable(len(source), source.description, f"{source.names[first[0]]}: {first[1]}" if first else None)
        )
    names = source.names
    everywhere: tuple[str, ...] = ()
    if options.inside:  # also for a scan resumed after its last batch: the geometry alone decides
        size = image_size if image_size != (0, 0) else _input_size(loaded)
        for layer in chosen_layers:
            if size is not None and layer in trackers:
                inside(layer, trackers[layer].map_shape, size, where)
        everywhere = tuple(layer for layer in chosen_layers if layer in outside)
    return ScanResult(
        loaded,
        net,
        source,
        chosen_layers,
        nodes,
        trackers,
        selected,
        [(names[i], error) for i, error in sorted(skipped)],
        resumed=resumed,
        ranks=ranks,
        inside=options.inside,
        everywhere=everywhere,
    )


def _merge_ranks(
    trackers: dict[str, TopKTracker],
    selected: dict[str, list[int]],
    skipped: list[tuple[int, str]],
    layers: Sequence[str],
    ranks: Ranks,
    k: int,
) -> tuple[dict[str, TopKTracker], dict[str, list[int]], list[tuple[int, str]]]:
    """Every process's top-k merged into one, on every process (tensors through all_gather)."""
    # A process whose shard held no readable image has no tracker yet: it learns the shapes from the others.
    shapes = {layer: (selected[layer], t.map_shape) for layer, t in trackers.items()}
    known: dict[str, tuple[list[int], tuple[int, ...]]] = {}
    for theirs in distributed.all_gather_objects(shapes, ranks):
        for layer, shape in theirs.items():
            known.setdefault(layer, shape)
    merged: dict[str, TopKTracker] = {}
    merged_selected: dict[str, list[int]] = {}
    for layer in dict.fromkeys(layers):
        if layer not in known:
            continue
        chosen, map_shape = known[layer]
        own = trackers.get(layer) or TopKTracker(len(chosen), k, map_shape, device=ranks.device)
        parts = []
        values = distributed.all_gather(own.values, ranks)
        images = distributed.all_gather(own.images, ranks)
        positions = distributed.all_gather(own.positions, ranks)
        for v, i, p in zip(values, images, positions, strict=True):
            part = TopKTracker(len(chosen), k, map_shape, device=v.device)
            part.values, part.images, part.positions = v, i, p
            parts.append(part)
        merged[layer] = TopKTracker.merged(parts)
        merged_selected[layer] = list(chosen)
    everything = [item for theirs in distributed.all_gather_objects(skipped, ranks) for item in theirs]
    return merged, merged_selected, sorted(everything)


def top_k(
    data: Data,
    model: Any = "vgg16",
    layers: Sequence[str] | None = None,
    k: int = 9,
    channels: int | str | Sequence[int] | None = None,
    *,
    batch_size: int = 8,
    device: str | torch.device | None = None,
    workers: int = 0,
    progress: Progress | Literal["bar"] | None = None,
    limit: int | None = None,
    sample: int | None = None,
    seed: int = 0,
    state: str | Path | None = None,
    resume: bool = False,
    save_every: float = 60.0,
    method: str | None = None,
    inside: bool = False,
) -> TopKResult:
    """Find the ``k`` strongest activations of each channel across a data set and project each one.

    Under ``torchrun`` every process calls this with the same arguments: each scans its share of the batches
    (batch ``b`` goes to rank ``b % world``), the top-k are merged with torch.distributed collectives (ties go
    to the earlier image, exactly as in one process), and the projections are shared out by image. Rank 0
    returns the whole result; the other ranks return it without hits (``hits`` maps each layer to ``{}``).

    Args:
        data: a folder of images, scanned recursively (jpg, png, webp, bmp, tiff; ImageNet's class folders
            work as they are), a text file of image paths (one per line, relative to the file), or a
            ``torch.utils.data.Dataset`` of PIL images, input-space tensors or ``(image, target)`` pairs.
            Unreadable images are skipped and listed in the result.
        model: a registered model name (``"vgg16"``, the default), a loaded model (:func:`deconvviz.load_model`)
            or a session (:func:`deconvviz.models.session.session`).
        layers: layer names or aliases; default: ``conv2_2, conv3_3, conv4_3, conv5_3`` where the model has these
            aliases (VGG16), else the deepest four of :func:`deconvviz.core.layers.default_layers` (as the report).
        k: activations kept per channel (9 in the paper).
        channels: which channels: a count ``n`` or ``"strongest<n>"`` (the ``n`` whose strongest activation over
            the data set is highest, strongest first), ``"first<n>"`` (the first ``n`` by index), ``"random<n>"``
            (``n`` drawn with ``seed``, by index: the paper's Fig. 2 shows a random subset), a list of indices, or
            None or ``"all"`` for every channel.
        batch_size: images per forward pass.
        device: where to run (default: where the model is).
        workers: DataLoader worker processes that read and preprocess images.
        progress: called as ``progress(stage, done, total)`` while scanning and projecting (this process's share),
            or ``"bar"`` for a progress bar per stage (tqdm).
        limit: scan only the first ``limit`` images.
        sample: scan a random ``sample`` of the images, drawn with ``seed`` (kept in their order).
        seed: the seed of ``sample`` and of ``"random<n>"`` channels.
        state: a folder for the resumable scan state (one file per process), written once the scan has run
            ``save_every`` seconds, then every ``save_every`` seconds and when it is done; None keeps no state.
        resume: go on from the state saved in ``state`` (the result is exactly that of an uninterrupted run).
            A state from other arguments or another model is refused.
        save_every: seconds between two saves of the state (0: after every batch).
        method: the reverse pass that projects the hits, by its registered name: ``"deconvnet"`` (the default),
            ``"guided"`` or ``"gradient"`` (see ``docs/rules.md``). The scan itself does not depend on it.
        inside: rank only units whose receptive field lies wholly inside the picture (no hit then answers the zero
            padding at its border); a layer none of whose units lies inside keeps them all
            (:attr:`TopKResult.everywhere` names it).

    Returns:
        A :class:`TopKResult`.

    Raises:
        SearchError: missing/empty folder or list, no readable image, bad ``k``, channels, limit or sample.
        MethodError: an unknown method (before any work).
        StateError: ``resume`` with a state from another scan.
        LayerNotFoundError: an unknown layer.

    Example:
        >>> result = dv.top_k("photos/", "vgg16", layers=["conv5_3"], k=9, channels=16)  # doctest: +SKIP
        >>> fig, axes = result.figure("conv5_3", result.channels("conv5_3")[0])  # doctest: +SKIP
    """
    data, model = _data_first(data, model, "top_k")
    method = get_method(method).name  # an unknown method fails before the scan
    with staged(progress, "top-k") as report:
        found = scan(
            data,
            model,
            layers,
            k,
            channels,
            batch_size=batch_size,
            device=device,
            workers=workers,
            progress=report,
            limit=limit,
            sample=sample,
            seed=seed,
            state=state,
            resume=resume,
            save_every=save_every,
            inside=inside,
        )
        return result_of(found, k, batch_size, report, method=method)


def _looks_like_model(value: Any) -> bool:
    if isinstance(value, torch.nn.Module) or (hasattr(value, "module") and hasattr(value, "preprocess")):
        return True
    if hasattr(value, "net") and hasattr(value, "model"):  # a session
        return True
    if isinstance(value, str) and not Path(value).exists():
        return value in registered_names() or ":" in value
    return False


def _data_first(data: Any, model: Any, name: str) -> tuple[Any, Any]:
    """``(data, model)``, also from a call written in the earlier order ``name(model, data)`` (warned once)."""
    if _looks_like_model(data) and not _looks_like_model(model):
        deprecated(f"{name}(model, data)", f"{name}(data, model) as every other call does")
        return model, data
    return data, model


def silent_channels(found: ScanResult) -> dict[str, list[int]]:
    """Per layer, the scanned channels that never fired on the data set: no activation above 0 anywhere.

    A channel silent over a large data set is a "dead" feature for it. Under torch.distributed every process
    holds the same merged trackers, so every process finds the same channels.
    """
    silent = {}
    for layer, tracker in found.trackers.items():
        best = tracker.values[:, 0].to("cpu").tolist()
        silent[layer] = sorted(found.selected[layer][row] for row, value in enumerate(best) if not value > 0)
    return silent


def result_of(
    found: ScanResult, k: int, batch_size: int, progress: Progress | None = None, *, method: str | None = None
) -> TopKResult:
    """The :class:`TopKResult` of a finished scan: its kept hits projected (shared out over the processes)."""
    loaded = found.loaded
    return TopKResult(
        model=str(getattr(loaded, "name", type(loaded.module).__name__)),
        folder=found.source.description,
        layers=tuple(found.layers),
        nodes=tuple(found.nodes),
        k=k,
        images=tuple(found.names),
        skipped=tuple(found.skipped),
        hits=project_hits(found, batch_size, progress, method=method),
        to_image=getattr(loaded, "to_image", None),
        source=found.source,
        method=get_method(method).name,
        inside=found.inside,
        everywhere=found.everywhere,
    )


def host_preprocess(loaded: Any) -> Callable[[Any], Tensor]:
    """The model's preprocessing, leaving each picture on the host.

    A loaded model's ``preprocess`` puts the picture on the model's device; the scan instead reads pictures on
    the host (in DataLoader workers, which must not touch CUDA) and moves each batch to the device once, whole.
    """
    if isinstance(loaded, LoadedModel):
        return loaded.preprocessing
    return loaded.preprocess


def _device_of(loaded: Any) -> torch.device:
    reference = next(iter(loaded.module.parameters()), None)
    return reference.device if reference is not None else torch.device("cpu")


def _loaded(model: Any, device: str | torch.device | None) -> Any:
    if isinstance(model, str):
        return load_model(model, device=distributed.rank_device(str(device or "cpu")))
    if isinstance(model, Session):
        model = model.model
    if not hasattr(model, "preprocess") or not hasattr(model, "module"):
        raise SearchError(
            "top_k needs a model that knows its preprocessing: a registered name or deconvviz.load_model(...)"
        )
    if device is None:
        return model
    target = torch.device(distributed.rank_device(str(device)))
    here, original = _device_of(model), model.module
    if here.type == target.type and (target.index is None or here.index == target.index):
        return model
    if not dataclasses.is_dataclass(model) or isinstance(model, type):
        raise SearchError(f"the model is on {here}, not {target}: move it there first or leave out device")
    # The caller's model stays where it is: the scan runs on a copy on the device asked for.
    return dataclasses.replace(model, module=copy.deepcopy(original).to(target), device=target)


def _input_size(loaded: Any) -> tuple[int, int] | None:
    """The side of the model's square input, as its preprocessing makes it (None for a model without one)."""
    side = getattr(getattr(loaded, "preprocessing", None), "size", None)
    return None if side is None else (int(side), int(side))


_Want = tuple[str, int, int, int, int]  # (layer, tracker row, channel, flat position, rank)


def project_hits(
    found: ScanResult, batch_size: int, progress: Progress | None = None, *, method: str | None = None
) -> dict[str, dict[int, tuple[TopKHit, ...]]]:
    """Project every kept activation above 0 from its own image with ``method``; crop it to the unit's field.

    The images holding kept hits are taken in index order in batches of ``batch_size``; each batch is
    captured once for all the layers it has hits at. Under torch.distributed, batch ``b`` is projected by
    rank ``b % world`` and rank 0 collects the hits (the other ranks get ``{}`` per layer).
    """
    net, loaded, source, ranks = found.net, found.loaded, found.source, found.ranks
    layers, trackers, selected = list(dict.fromkeys(found.layers)), found.trackers, found.selected
    # only these: geometry elsewhere in the model does not matter; fields follow the method's reverse pass
    fields = receptive_fields(net, layers, method=method)
    wanted: dict[int, list[_Want]] = {}  # image -> what to project from it
    values = {layer: trackers[layer].values.to("cpu") for layer in layers}
    for layer in layers:
        tracker = trackers[layer]
        images, positions = tracker.images.to("cpu").tolist(), tracker.positions.to("cpu").tolist()
        fired = (values[layer] > 0).tolist()  # a map of zeros has an argmax too: that is no hit, and not projected
        for slot, channel in enumerate(selected[layer]):
            for rank in range(tracker.k):
                image = images[slot][rank]
                if image >= 0 and fired[slot][rank]:
                    wanted.setdefault(image, []).append((layer, slot, channel, positions[slot][rank], rank))
    ordered = sorted(wanted)
    chunks = [ordered[i : i + batch_size] for i in range(0, len(ordered), batch_size)][ranks.rank :: ranks.world]
    total = sum(len(wanted[i]) for chunk in chunks for i in chunk)
    where = _device_of(loaded)
    on_gpu = where.type == "cuda"
    prepare = host_preprocess(loaded)
    mine: dict[str, list[tuple[int, int, TopKHit]]] = {layer: [] for layer in layers}  # (channel, rank, hit)
    done = 0
    for chunk in chunks:
        x_cpu = torch.stack([source.prepare(i, prepare) for i in chunk])
        x = (x_cpu.pin_memory() if on_gpu else x_cpu).to(where, non_blocking=on_gpu)
        units: dict[str, list[tuple[int, int, int, int]]] = {}
        meta: dict[str, list[tuple[int, int, int, int, int]]] = {}
        for local, image in enumerate(chunk):
            for layer, slot, channel, flat, rank in wanted[image]:
                width = trackers[layer].map_shape[1] if len(trackers[layer].map_shape) == 2 else 1
                row, col = divmod(flat, width)
                units.setdefault(layer, []).append((local, channel, row, col))
                meta.setdefault(layer, []).append((local, image, slot, channel, rank))
        projected = net.project_units_at(x, units, method=method)  # one capture of these images for all their layers
        for layer, recons in projected.items():
            recons = recons.cpu()
            for (local, image, slot, channel, rank), unit, recon in zip(meta[layer], units[layer], recons, strict=True):
                row, col = unit[2], unit[3]
                top, left, bottom, right = fields[layer].box(row, col, x_cpu.shape[-2:])
                hit = TopKHit(
                    value=float(values[layer][slot, rank]),
                    image=source.names[image],
                    position=(row, col),
                    box=(top, left, bottom, right),
                    reconstruction=recon[:, top:bottom, left:right].clone(),
                    patch=x_cpu[local, :, top:bottom, left:right].clone(),
                    edge=not inside_flags(fields[layer], [(row, col)], x_cpu.shape)[0],
                )
                mine[layer].append((channel, rank, hit))
            done += len(units[layer])
        if progress is not None:
            progress("project", done, total)
    result: dict[str, dict[int, tuple[TopKHit, ...]]] = {}
    for layer in layers:  # one layer at a time: rank 0 never holds more than one layer's pixels twice over
        gathered = distributed.gather_objects(mine.pop(layer), ranks)
        per_channel: dict[int, dict[int, TopKHit]] = {c: {} for c in selected[layer]}
        for part in gathered or []:
            for channel, rank, hit in part:
                per_channel[channel][rank] = hit
        result[layer] = {c: tuple(h[r] for r in sorted(h)) for c, h in per_channel.items()} if gathered else {}
    return result


__all__ = [
    "ScanResult",
    "host_preprocess",
    "project_hits",
    "result_of",
    "run_scan",
    "scan",
    "top_k",
]
