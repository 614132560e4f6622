"""A static HTML report over a folder of images: the paper's top-k grids for chosen layers and channels.

The report is a self-contained folder that opens from disk in any browser, no server needed::

    report/
      index.html              model, weights, the first layer's filters, data set, layers (links), images
                              (links), skipped files
      filters.png             the first convolution's filters, as `deconvviz filters` draws them (when drawable)
      layers/<layer>.html     one card per channel: top-k reconstructions beside their image patches,
                              each with its activation and source image
      layers/<layer>/*.png    the cropped reconstructions and patches
      sources/*.jpg           every source image as the model saw it (preprocessed), linked from the cards
      images/<name>.html      (per-image mode) the render command's per-layer reconstructions of one image
      images/<name>/...       their PNGs
      manifest.json           schema version, library versions, arguments, per-image errors, every hit

It is written into a temporary sibling folder and renamed into place when complete: an interrupted run
leaves no half report, and an existing report is only replaced when asked (``overwrite=True``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deconvviz.analysis.topk import distributed
from deconvviz.analysis.topk.keep import keep_strongest
from deconvviz.analysis.topk.options import RandomChannels, ScanOptions, channel_spec
from deconvviz.analysis.topk.scan import (
    default_scan_layers,
    first_readable,
    result_of,
    run_scan,
    silent_channels,
)
from deconvviz.core.layers import SCAN_LAYERS, choose_layers
from deconvviz.errors import DeconvVizError
from deconvviz.io.atomic import check_target, remove_owned, stage_folders
from deconvviz.io.jsonstream import iter_json
from deconvviz.io.manifest import header, preprocessing_record
from deconvviz.io.names import NameMap, clean_name
from deconvviz.io.sources import image_source
from deconvviz.io.web import text, url
from deconvviz.methods import get_method
from deconvviz.models.session import resolve_device, session
from deconvviz.viz.html import activation_text, report_page

if TYPE_CHECKING:  # pragma: no cover
    from deconvviz.analysis.topk.result import TopKHit, TopKResult
    from deconvviz.io.sources import Data, ImageSource
    from deconvviz.models.session import Session

PAPER_LAYERS = SCAN_LAYERS
"""Default layers where the model has these aliases (VGG16): one per block from the second on (as top_k)."""

THUMBNAILS = 8
"""Channels per layer shown as thumbnails on the index page."""

SILENT_LISTED = 24
"""Silent channels listed by number on a layer page (the manifest lists them all)."""

Progress = Callable[[str, int, int], None]
"""``progress(stage, done, total)``; stages: ``"scan"``, ``"project"``, ``"write"``, ``"images"``."""


class ReportError(DeconvVizError, ValueError):
    """An output folder or option that the report cannot be written with."""


@dataclass(frozen=True)
class Report:
    """A finished report.

    Attributes:
        path: the report folder.
        index: its ``index.html``.
        images: images scanned (readable or not).
        skipped: images that could not be read.
        layers: layers in the report.
        channels: channel cards written, over all layers.
        pages: HTML pages written.
        scanned: per layer, how many channels were scanned.
        silent: per layer, the scanned channels that never fired on the images (no activation above 0).
        inside: whether only units whose receptive field lies inside the picture were ranked (and counted).
    """

    path: Path
    index: Path
    images: int
    skipped: int
    layers: tuple[str, ...]
    channels: int
    pages: int
    scanned: dict[str, int] = field(default_factory=dict)
    silent: dict[str, tuple[int, ...]] = field(default_factory=dict)
    inside: bool = False

    def summary(self) -> str:
        """One line with the counts and where the report is."""
        silent, scanned = sum(map(len, self.silent.values())), sum(self.scanned.values())
        where = " inside the picture" if self.inside else ""
        never = f"; {silent:,} of {scanned:,} channels scanned never fired{where}" if silent else ""
        return (
            f"report of {self.images} image(s) ({self.skipped} skipped), {len(self.layers)} layer(s), "
            f"{self.channels} channel(s), {self.pages} page(s){never}: {self.index}"
        )


def build_report(
    folder: Data,
    out: str | Path = "report",
    *,
    model: Any = "vgg16",
    layers: str | Sequence[str] | None = None,
    channels: int | str | Sequence[int] | None = 16,
    k: int = 9,
    device: str | None = "auto",
    per_image: bool = False,
    overwrite: bool = False,
    batch_size: int = 8,
    scale: str = "robust",
    progress: Progress | None = None,
    limit: int | None = None,
    sample: int | None = None,
    seed: int = 0,
    resume: bool = False,
    save_every: float = 60.0,
    method: str | None = None,
    inside: bool = False,
) -> Report:
    """Scan ``folder`` and write the HTML report to ``out``.

    The scan's state is saved every ``save_every`` seconds next to the report's staging folder
    (``.<out name>.scan/`` beside ``out``); after a crash, Ctrl-C or a kill the same call with ``resume=True``
    goes on from there and writes exactly the report an uninterrupted run writes. Under ``torchrun`` every
    process takes part in the scan and the projections and rank 0 writes the report.

    Args:
        folder: the images: a folder (scanned recursively, e.g. ImageNet's class folders), a text file of image
            paths, or a ``torch.utils.data.Dataset`` (unreadable images are skipped and listed).
        out: the report folder to create.
        model: a registered model name, a loaded model, or a session.
        layers: names or aliases (a list or a comma-separated string), ``"all"``, or None for the paper's layers
            (``conv2_2, conv3_3, conv4_3, conv5_3`` where the model has them, else one layer per resolution).
        channels: ``n`` (the default 16): the ``n`` channels of every layer whose strongest activation over the
            data set is highest, strongest first; ``"first<n>"`` (``"first16"``): the first ``n`` channels by index;
            ``"random<n>"``: ``n`` drawn at random with ``seed`` (the paper's Fig. 2 choice); a list of channels;
            or None (``"all"``) for all of them. The page states the choice.
        k: activations shown per channel.
        device: ``"cpu"``, ``"cuda"`` or ``"auto"`` (under torchrun, ``cuda`` is each process's own GPU).
        per_image: also render every image's per-layer reconstructions (as the render command does).
        overwrite: replace an existing report folder.
        batch_size: images per forward pass.
        scale: the display scaling: ``"robust"`` (default), ``"max"`` (each picture by its largest value) or
            ``"minmax"`` (see :mod:`deconvviz.viz.scaling`).
        progress: called as work advances.
        limit: report on the first ``limit`` images only.
        sample: report on a random ``sample`` of the images, drawn with ``seed``.
        seed: the seed of ``sample`` and of ``"random<n>"`` channels.
        resume: go on from the saved state of an interrupted run with the same arguments. Without it, a saved
            state is refused (a run would start again from nothing), unless ``overwrite`` says to start again.
        save_every: seconds between two saves of the scan state.
        method: the reverse pass that projects the hits, by its registered name: ``"deconvnet"`` (the default),
            ``"guided"`` or ``"gradient"``; recorded in the manifest.
        inside: rank only units whose receptive field lies wholly inside the picture, so that no hit answers the
            zero padding at its border (a layer none of whose units lies inside keeps them all, and says so).

    Returns:
        The :class:`Report`.

    Raises:
        ReportError: ``out`` exists (without ``overwrite``) or cannot be written.
        SearchError: a missing or empty folder, or no readable image.
        StateError: ``resume`` with the saved state of another scan.
        DeconvVizError: unknown model or layer, channel out of range, ...
    """
    from deconvviz.viz.scaling import Scaling

    scaling = Scaling.of(scale)  # a bad name fails before any work
    method = get_method(method).name  # as does an unknown method
    tracked, strongest, ranking = _channel_choice(channels, seed)
    options = ScanOptions.of(
        k=k,
        batch_size=batch_size,
        limit=limit,
        sample=sample,
        seed=seed,
        resume=resume,
        save_every=save_every,
        inside=inside,
    )
    target = Path(out)
    check_target(target, replace=overwrite, error=ReportError)
    saved = scan_state_folder(target)
    if not resume and not overwrite and saved.is_dir() and any(saved.iterdir()):  # hours of scanning: never dropped
        raise ReportError(
            f"an interrupted run's scan is saved in {str(saved)!r}; add --resume (resume=True) to go on from it, or "
            "--overwrite (overwrite=True) to start again"
        )
    # bad input fails before the model loads
    source = image_source(folder, limit=options.limit, sample=options.sample, seed=options.seed)
    if per_image and source.paths is None:
        raise ReportError("per-image pages need image files; a data set has none (leave out per_image)")
    if isinstance(model, str):
        device = distributed.rank_device(resolve_device(device))
    current = session(model, device=device)
    current.require_preprocessing(f"a report reads the pictures of {source.description!r} and needs", error=ReportError)
    chosen = _report_layers(current, layers, source)
    arguments = {
        "folder": source.description,
        "model": current.name,
        "layers": chosen,
        "channels": channels if channels is None or isinstance(channels, int | str) else list(channels),
        "ranking": ranking,
        "k": k,
        "per_image": per_image,
        "batch_size": batch_size,
        "scale": scaling.to_dict(),
        "method": method,
        "limit": limit,
        "sample": sample,
        "seed": seed,
        "inside": inside,
    }
    state = scan_state_folder(target)
    ranks = distributed.setup(_model_device(current))
    if ranks.rank == 0 and not resume:
        remove_owned(state)  # an older run's state must not be mixed into this one
    distributed.barrier(ranks)
    # the source already holds the chosen images: the scan takes them all
    scanning = options.but(layers=tuple(chosen), channels=channels, limit=None, sample=None)
    found = run_scan(current.model, source, scanning, progress=progress, state=state)
    census = _Census(
        scanned={layer: len(found.selected[layer]) for layer in found.layers},
        silent=silent_channels(found),
        inside=frozenset(layer for layer in found.layers if found.inside and layer not in found.everywhere),
    )
    if strongest is not None:
        found = keep_strongest(found, strongest)
    result = result_of(found, k, batch_size, progress, method=method)
    if ranks.rank != 0:  # rank 0 writes the report; the others wait until it is in place
        distributed.barrier(ranks)
        cards = sum(len(result.hits[x]) for x in result.layers)
        return _summary(target, result, 1 + len(result.layers) + cards, cards, census)
    try:
        with stage_folders([target], kind="report", replace=overwrite, error=ReportError, what="report") as (staging,):
            writer = _Writer(staging, result, current, scaling.name, progress, census)
            cards = writer.layer_pages(ranking)
            # channels given by index are those each picture's page shows too; else its own strongest
            given = tracked if isinstance(tracked, list) else None
            image_pages = writer.image_pages(source.paths or [], chosen, given) if per_image else []
            writer.index(image_pages, _chosen(limit, sample, seed))
            writer.manifest(arguments, image_pages)
    finally:
        distributed.barrier(ranks)
    remove_owned(state)  # the report is complete: nothing left to resume
    return _summary(target, result, 1 + len(result.layers) + cards + len(image_pages), cards, census)


_EDGE = " <span class='edge' title=\"the unit's receptive field reaches past the picture\">edge</span>"


def _channel_choice(
    channels: int | str | Sequence[int] | None, seed: int = 0
) -> tuple[int | list[int] | RandomChannels | None, int | None, str]:
    """``(channels to scan, how many strongest to keep, the sentence the pages state)``."""
    tracked, strongest = channel_spec(channels, ReportError)
    if strongest is not None:
        sentence = (
            f"Channels: the {strongest} of each layer whose strongest activation over the data set is highest "
            "(all of a layer that has fewer), strongest first."
        )
    elif isinstance(tracked, int):
        sentence = f"Channels: the first {tracked} of each layer (all of a layer that has fewer), by index."
    elif isinstance(tracked, RandomChannels):
        sentence = (
            f"Channels: {tracked.count} of each layer drawn at random with seed {seed} (all of a layer that has "
            "fewer), by index, as the paper's Fig. 2 shows a random subset."
        )
    elif tracked is None:
        sentence = "Channels: all of them, by index."
    else:
        sentence = "Channels: those chosen, in the order given."
    return (list(tracked) if isinstance(tracked, tuple) else tracked), strongest, sentence


def _where(result: TopKResult, layer: str) -> str:
    """The sentence on which units of ``layer`` were ranked, when only some were."""
    if not result.inside:
        return ""
    if layer in result.everywhere:
        return " None of this layer's units sees only the picture (each field reaches past it): all were ranked."
    return " Only units whose receptive field lies wholly inside the picture were ranked."


def scan_state_folder(target: str | Path) -> Path:
    """Where the resumable scan state of the report ``target`` is kept: ``.<name>.scan/`` beside it."""
    path = Path(target)
    return path.parent / f".{path.name}.scan"


def _model_device(current: Session) -> Any:
    import torch

    reference = next(iter(current.model.module.parameters()), None)
    return reference.device if reference is not None else torch.device("cpu")


@dataclass(frozen=True)
class _Census:
    """Per layer: how many channels were scanned, and which of them never fired on the images."""

    scanned: dict[str, int]
    silent: dict[str, list[int]]
    inside: frozenset[str] = frozenset()  # the layers ranked only over units that see nothing but the picture

    def fired(self, layer: str) -> int:
        return self.scanned[layer] - len(self.silent[layer])

    def sentence(self, layer: str, images: int) -> str:
        """What the layer page says of it."""
        silent, scanned = self.silent[layer], self.scanned[layer]
        where = " at a unit whose field lies inside the picture" if layer in self.inside else ""
        if not silent:
            return f"All {scanned} channels scanned fired{where} on these {images} images."
        listed = ", ".join(str(c) for c in silent[:SILENT_LISTED]) + (", ..." if len(silent) > SILENT_LISTED else "")
        return (
            f"{self.fired(layer)} of the {scanned} channels scanned fired{where} on these {images} images; "
            f"{len(silent)} never did (no activation above 0 {'there' if where else 'anywhere'}: {listed}; the "
            "manifest lists them all)."
        )

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {layer: {"scanned": n, "silent": self.silent[layer]} for layer, n in self.scanned.items()}


def _summary(target: Path, result: TopKResult, pages: int, cards: int, census: _Census) -> Report:
    return Report(
        path=target,
        index=target / "index.html",
        images=len(result.images),
        skipped=len(result.skipped),
        layers=result.layers,
        channels=cards,
        pages=pages,
        scanned=dict(census.scanned),
        silent={layer: tuple(channels) for layer, channels in census.silent.items()},
        inside=result.inside,
    )


def _report_layers(current: Session, layers: str | Sequence[str] | None, source: ImageSource) -> list[str]:
    if layers is None:
        return default_scan_layers(current.net, source, current.preprocess)
    return choose_layers(current.net, layers, first_readable(source, current.preprocess))


# -------------------------------------------------------------------------------------------------- pages


FILTERS = "filters.png"
"""The first layer's filters, on the report's front page (when the model has such filters to draw)."""


@dataclass(eq=False)
class _Writer:
    """Writes the pictures and pages of one report into its staging folder."""

    root: Path
    result: TopKResult
    current: Session
    scale: str
    progress: Progress | None
    census: _Census
    sources: dict[str, str] = field(default_factory=dict)
    """Each source image (relative to the data set) -> its page-relative file under ``sources/``."""
    layer_files: dict[str, str] = field(default_factory=dict)
    layer_names: NameMap = field(default_factory=lambda: NameMap(fallback="layer"))
    """One file name per layer, distinct over the report."""
    thumbnails: dict[str, list[tuple[int, str, str]]] = field(default_factory=dict)
    """Each layer -> its (channel, picture, page) thumbnails."""

    def _source(self, image: str) -> str:
        """The preprocessed view of a source image, written once under ``sources/``."""
        found = self.sources.get(image)
        if found is not None:
            return found
        source = self.result.source
        assert source is not None  # a report is built from a scan, which knows its images
        (self.root / "sources").mkdir(exist_ok=True)
        name = f"sources/{len(self.sources):05d}_{clean_name(Path(image).stem, 'image')[:40]}.jpg"
        picture = self.current.model.to_image(source.prepare(source.index(image), self.current.preprocess)[None])
        picture.convert("RGB").save(self.root / name, quality=88)
        self.sources[image] = name
        return name

    def layer_pages(self, ranking: str) -> int:
        """One page per layer and one per channel; returns the number of channel cards."""
        result = self.result
        (self.root / "layers").mkdir()
        total = sum(len(result.hits[layer]) for layer in result.layers)
        done = cards = 0
        for layer, node in zip(result.layers, result.nodes, strict=True):
            slug = self.layer_names.add(layer)
            (self.root / "layers" / slug).mkdir()
            title = f"{layer} ({node})" if layer != node else layer
            sections = []
            for channel, hits in result.hits[layer].items():
                sections.append(self._channel(layer, title, slug, channel, hits))
                cards += 1
                done += 1
                if self.progress is not None:
                    self.progress("write", done, total)
            intro = (
                f"<p class='census'>{text(self.census.sentence(layer, result.readable))}</p>"
                f"<p class='muted'>{text(ranking)}{text(_where(result, layer))} For each channel: its strongest "
                "activations over "
                f"{result.readable} images (up to {result.k}; an activation of 0 or less is no hit and is not "
                f"shown), each projected to pixels by {_by(result.method)} (left, labelled with the activation; "
                f"{text(self.scale)} scale, grey = 0) beside the image patch it came from (right). Patches are the "
                "units' receptive fields, clipped to the image; a hit marked edge comes from a unit whose field "
                "reaches past the picture into the zero padding, which it may be answering rather than the picture. "
                "Click a channel's name or a picture for the channel's own page.</p>"
            )
            page = report_page(
                f"{self.current.name}: {title}", intro + f"<div class='cards'>{''.join(sections)}</div>", "../"
            )
            (self.root / "layers" / f"{slug}.html").write_text(page, encoding="utf-8")
            self.layer_files[layer] = f"layers/{slug}.html"
        return cards

    def _channel(self, layer: str, title: str, slug: str, channel: int, hits: Sequence[TopKHit]) -> str:
        """Write a channel's pictures and page; return its card for the layer page."""
        from PIL import Image

        result = self.result
        page = f"{slug}/ch{channel:04d}.html"
        real = [(rank, hit) for rank, hit in enumerate(hits) if hit.value > 0]
        recon_cells, patch_cells, rows = [], [], []
        for rank, hit in real:
            stem = f"ch{channel:04d}_{rank}"
            Image.fromarray(result.reconstruction_rgb(layer, channel, rank, self.scale)).save(
                self.root / "layers" / slug / f"{stem}_rec.png"
            )
            result.patch_pil(layer, channel, rank).convert("RGB").save(
                self.root / "layers" / slug / f"{stem}_patch.png"
            )
            source = self._source(hit.image)
            label = text(hit.image)
            link = url(page, f"hit{rank + 1}")
            recon_cells.append(
                f"<div class='cell'><a href='{link}'><img loading='lazy' src='{url(f'{slug}/{stem}_rec.png')}' "
                f"alt='reconstruction {rank + 1}'></a>{activation_text(hit.value)}{_EDGE if hit.edge else ''}</div>"
            )
            patch_cells.append(
                f"<div class='cell'><a href='{link}' title='{label}'>"
                f"<img loading='lazy' src='{url(f'{slug}/{stem}_patch.png')}' alt='patch from {label}'>"
                f"{label}</a></div>"
            )
            top, left, bottom, right = hit.box
            rows.append(
                f"<div class='hit' id='hit{rank + 1}'><a href='{url(f'{stem}_rec.png')}'>"
                f"<img src='{url(f'{stem}_rec.png')}' alt='reconstruction {rank + 1}'></a>"
                f"<a href='{url(f'{stem}_patch.png')}'>"
                f"<img src='{url(f'{stem}_patch.png')}' alt='patch {rank + 1}'></a>"
                f"<p><b>#{rank + 1}</b> activation {activation_text(hit.value)}<br>"
                f"<a href='{url('../../' + source)}'>{label}</a><br>"
                f"unit (row {hit.position[0]}, col {hit.position[1]}), receptive field rows {top}-{bottom - 1}, "
                f"columns {left}-{right - 1} ({bottom - top} x {right - left} px)"
                f"{', clipped: it reaches past the picture' + _EDGE if hit.edge else ''}</p></div>"
            )
        count = f"{len(real)} hit{'s' if len(real) != 1 else ''} (up to {result.k} kept)" if real else "no hits"
        empty = "<p class='muted'>no image activates this channel above 0</p>" if not real else ""
        body = (
            f"<p class='muted'>{count}, over {result.readable} images; each reconstruction ({_by(result.method)}) "
            f"beside the patch it came from. <a href='{url(f'../{slug}.html', f'ch{channel}')}'>back to "
            f"{text(layer)}</a></p>"
            f"{empty}<div class='hits'>{''.join(rows)}</div>"
        )
        (self.root / "layers" / page).write_text(
            report_page(f"{self.current.name}: {title}, channel {channel}", body, "../../"), encoding="utf-8"
        )
        self.thumbnails.setdefault(layer, [])
        if real:
            self.thumbnails[layer].append(
                (channel, f"layers/{slug}/ch{channel:04d}_{real[0][0]}_rec.png", f"layers/{page}")
            )
        side = min(result.grid_side, max(1, len(real)))
        grid = f"grid-template-columns:repeat({side},var(--cell))"
        return (
            f"<div class='card' id='ch{channel}' style='--cell:108px'>"
            f"<h3><a href='{url(page)}'>channel {channel}</a> <span class='muted'>{count}</span></h3>{empty}"
            "<div class='pair'>"
            f"<div class='grid' style='{grid}'>{''.join(recon_cells)}</div>"
            f"<div class='grid' style='{grid}'>{''.join(patch_cells)}</div></div></div>"
        )

    def image_pages(
        self, paths: Sequence[Path], layers: Sequence[str], channels: Sequence[int] | None = None
    ) -> list[tuple[str, str]]:
        """Per-image pages from the render command's output; returns ``(image, page)`` pairs.

        ``channels``: those channels on every page, else each picture's strongest.
        """
        from deconvviz.viz.folders import render_images

        source = self.result.source
        names = dict(zip(source.paths or [], source.names, strict=True)) if source is not None else {}
        skipped = {image for image, _ in self.result.skipped}  # the scan already read every file
        readable = [path for path in paths if names.get(path, path.name) not in skipped]

        def step(done: int, total: int, what: str) -> None:
            if self.progress is not None:
                self.progress("images", done, total)

        from deconvviz.viz.figures import RenderOptions

        rendered = render_images(
            readable,
            self.root / "images",
            model=self.current,
            layers=list(layers),
            channels=channels,
            options=RenderOptions(scale=self.scale),
            progress=step,
            method=self.result.method,
        )
        pages = []
        for item in rendered:
            folder = item.folder.name
            name = names.get(item.image, item.image.name)
            figures = [f"<h2>all layers</h2><img src='{url(f'{folder}/{item.overview.name}')}' alt='overview'>"]
            for layer in item.layers:
                summary = layer.summary.relative_to(item.folder).as_posix()
                name_html = text(layer.layer)
                figures.append(f"<h2>{name_html}</h2><img src='{url(f'{folder}/{summary}')}' alt='{name_html}'>")
            prediction = ""
            if item.prediction is not None:
                prediction = f"<p>predicted: <b>{text(item.prediction[0])}</b> ({item.prediction[1]:.0%})</p>"
            body = prediction + f"<div class='figs'>{''.join(figures)}</div>"
            page = f"images/{folder}.html"
            (self.root / page).write_text(report_page(f"{self.current.name}: {name}", body, "../"), encoding="utf-8")
            pages.append((name, page))
        return pages

    def index(self, image_pages: Sequence[tuple[str, str]], chosen: str = "") -> None:
        """The report's front page (``chosen``: which of the folder's pictures were taken, when not all)."""
        result = self.result
        model = self.current.model
        rows = "".join(
            f"<tr><td><a href='{url(self.layer_files[layer])}'>{text(layer)}</a></td><td>{text(node)}</td>"
            f"<td>{len(result.hits[layer])}</td><td>{self.census.fired(layer)} / {self.census.scanned[layer]}</td>"
            "<td class='strip'>"
            + "".join(
                f"<a href='{url(page)}' title='channel {channel}'>"
                f"<img src='{url(picture)}' alt='channel {channel}'></a>"
                for channel, picture, page in self.thumbnails.get(layer, [])[:THUMBNAILS]
            )
            + "</td></tr>"
            for layer, node in zip(result.layers, result.nodes, strict=True)
        )
        parts = [
            "<h2>model</h2><table>"
            f"<tr><th>name</th><td>{text(self.current.name)}</td></tr>"
            f"<tr><th>weights</th><td>{text(_home_as_tilde(str(getattr(model, 'weights', ''))))}</td></tr>"
            f"<tr><th>pictures</th><td>projected by {_by(result.method)}, {text(self.scale)} scale</td></tr></table>",
            self.filters(),
            "<h2>data set</h2><table>"
            f"<tr><th>folder</th><td>{text(result.folder)}</td></tr>"
            f"<tr><th>images</th><td>{len(result.images)}, of which {len(result.images) - len(result.skipped)} "
            "could be read and were scanned</td></tr>"
            + (f"<tr><th>chosen</th><td>{text(chosen)}</td></tr>" if chosen else "")
            + f"<tr><th>skipped</th><td>{_skipped(len(result.skipped))}</td></tr>"
            f"<tr><th>top k</th><td>{result.k}</td></tr></table>",
            "<h2>layers</h2><table><tr><th>layer</th><th>node</th><th>channels shown</th>"
            "<th>fired / scanned</th>"
            f"<th>the best hit of each channel shown, in their order (click for the channel)</th></tr>{rows}</table>",
        ]
        if image_pages:
            items = "".join(f"<li><a href='{url(page)}'>{text(name)}</a></li>" for name, page in image_pages)
            parts.append(f"<h2>images</h2><ul>{items}</ul>")
        if result.skipped:
            items = "".join(
                f"<li>{text(image)}: <span class='muted'>{text(error)}</span></li>" for image, error in result.skipped
            )
            parts.append(f"<h2>skipped files</h2><ul>{items}</ul>")
        created = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        parts.append(f"<p class='muted'>made with deconvviz on {created}</p>")
        (self.root / "index.html").write_text(
            report_page(f"deconvviz report: {self.current.name}", "".join(parts), ""), encoding="utf-8"
        )

    def filters(self) -> str:
        """The first convolution's filters (the paper's Fig. 2, layer 1) as ``filters.png``, and their section.

        Empty where the model has no convolution whose filters are pictures (one that sees the colours).
        """
        from PIL import Image

        from deconvviz.viz.filters import layer_filters

        try:
            found = layer_filters(self.current.net)
        except DeconvVizError:
            return ""
        Image.fromarray(found.grid()).save(self.root / FILTERS)
        return (
            f"<h2>first-layer filters</h2><p class='filters'><img src='{FILTERS}' "
            f"alt='the {int(found.weight.shape[0])} filters of {text(found.layer)}'></p>"
            f"<p class='muted'>{text(found.description)}, {text(found.SCALING)}; dead filters flat grey: "
            f"{text(found.diagnosis())}.</p>"
        )

    def manifest(self, arguments: dict[str, Any], image_pages: Sequence[tuple[str, str]]) -> None:
        """``manifest.json``: what was run, with what, and what came out.

        The hits are written as they are turned into JSON, a channel at a time, so a report of thousands of
        channels never holds all their dicts at once; the text is that of ``json.dumps(..., indent=2)``.
        """
        data = {
            **header("report"),
            "arguments": arguments,
            "model": self.current.name,
            "weights": str(getattr(self.current.model, "weights", "")),
            "preprocessing": preprocessing_record(self.current.model),
            "pages": {
                "index": "index.html",
                "filters": FILTERS if (self.root / FILTERS).is_file() else None,
                "layers": self.layer_files,
                "images": {name: page for name, page in image_pages},
            },
            "sources": self.sources,
            "errors": [{"image": image, "error": error} for image, error in self.result.skipped],
            "channels": self.census.to_dict(),
            "topk": self.result.to_dict(stream=True),
        }
        with (self.root / "manifest.json").open("w", encoding="utf-8") as out:
            out.writelines(iter_json(data, indent=2))
            out.write("\n")


def _skipped(count: int) -> str:
    return "none" if count == 0 else f"{count} unreadable (listed below)"


def _home_as_tilde(text: str) -> str:
    """Local paths in a text as the page shows them: the home folder as ``~`` (a shared report names no home)."""
    home = str(Path.home())
    return text.replace(home + os.sep, "~" + os.sep) if home not in ("", os.sep) else text


def _by(method: str) -> str:
    """The reverse pass as the pages name it."""
    return {
        "deconvnet": "the deconvnet",
        "guided": "guided backpropagation",
        "gradient": "the gradient (times the activation)",
    }.get(method, f"the {method} reverse pass")


def _chosen(limit: int | None, sample: int | None, seed: int) -> str:
    """Which pictures of the folder a report covers, when ``limit`` or ``sample`` took some of them."""
    first = f"the first {limit}" if limit is not None else ""
    drawn = f"a random sample of {sample} (seed {seed})" if sample is not None else ""
    return " of ".join(part for part in (drawn, first) if part)
