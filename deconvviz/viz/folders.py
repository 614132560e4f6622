"""Result folders for pictures: per photo, the reconstructions of several layers, summary figures and a manifest."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deconvviz.analysis.choose import (
    DEFAULT_TOP,
    channel_widths,
    check_channels,
    project_class,
    project_layers,
    resolve_class,
)
from deconvviz.core.layers import choose_layers
from deconvviz.errors import DeconvVizError, deprecated, warn_caller
from deconvviz.io.atomic import OutputError, check_target, stage_folders
from deconvviz.io.images import load_image
from deconvviz.io.manifest import MANIFEST, header, preprocessing_record
from deconvviz.io.names import NameMap
from deconvviz.methods import get_method
from deconvviz.models.session import DEFAULT_MODEL, Session, session
from deconvviz.viz.html import activation_text

if TYPE_CHECKING:  # pragma: no cover
    from torch import Tensor

    from deconvviz.core.projection import Projection
    from deconvviz.models.specs import LoadedModel
    from deconvviz.viz.figures import RenderOptions


OVERVIEW = "overview.png"


Progress = Callable[[int, int, str], None]
"""``progress(done, total, what)``: called as work advances (``done`` of ``total`` steps)."""


@dataclass(frozen=True)
class RenderedLayer:
    """What was written for one layer of one picture.

    Attributes:
        layer: the layer as asked for.
        node: its node name.
        channels: the projected channels, in order.
        activations: the seeded activation of each.
        files: the reconstruction PNGs.
        summary: the summary figure PNG.
        label: for the class score projected (``--class``), the class (``class 285: Egyptian cat``); else None.
    """

    layer: str
    node: str
    channels: tuple[int, ...]
    activations: tuple[float, ...]
    files: tuple[Path, ...]
    summary: Path
    label: str | None = None


@dataclass(frozen=True)
class RenderedImage:
    """What was written for one picture.

    Attributes:
        image: the source picture.
        folder: the folder holding its results.
        layers: one entry per layer.
        overview: one figure with a row per layer (the input and the strongest reconstructions).
        prediction: ``(label, probability)`` of the model's top class when the model classifies, else None.
    """

    image: Path
    folder: Path
    layers: tuple[RenderedLayer, ...]
    overview: Path
    prediction: tuple[str, float] | None = None

    def summary(self) -> str:
        """One line: the picture, where its results went, and the strongest unit found."""
        count = sum(len(layer.channels) for layer in self.layers)
        text = f"{self.image.name}: {len(self.layers)} layer(s), {count} reconstruction(s) -> {self.folder}"
        deepest = self.layers[-1] if self.layers else None
        if deepest is not None and deepest.label is not None:
            text += f"; {deepest.label}, score {deepest.activations[0]:.3g}, projected"
        elif deepest is not None and len(deepest.channels) == 1:
            text += f"; {deepest.layer} ch {deepest.channels[0]} (a={activation_text(deepest.activations[0])})"
        elif deepest is not None and deepest.channels:  # channels given with -c keep their order: find the strongest
            i = max(range(len(deepest.channels)), key=lambda j: deepest.activations[j])
            text += (
                f"; {deepest.layer} strongest ch {deepest.channels[i]} (a={activation_text(deepest.activations[i])})"
            )
        if self.prediction is not None:
            text += f"; predicted {self.prediction[0]!r} ({self.prediction[1]:.0%})"
        return text


def _targets(images: Sequence[Path], out: Path) -> list[Path]:
    """One result folder per picture, named after it: distinct over the run (repeats get ``-2``, ``-3``, ...)."""
    names = NameMap()
    return [out / names.add(image.stem) for image in images]


def _prediction(current: Session, x: Tensor) -> tuple[str, float] | None:
    if not getattr(current.model, "labels", None):
        return None
    try:
        best = current.model.classify(x, top=1)[0]
    except DeconvVizError:  # an output that does not match the class names: no prediction to report
        return None
    return best.label, best.probability


def _manifest(
    current: Session,
    image: Path,
    x: Tensor,
    rendered: list[RenderedLayer],
    projections: list[Projection],
    arguments: dict[str, Any],
    look: RenderOptions,
    views: list[list[list[int] | None]],
    prediction: tuple[str, float] | None,
    folder: Path,
) -> dict[str, Any]:
    return {
        **header(),
        "image": str(image),
        "model": current.name,
        "weights": str(getattr(current.model, "weights", "")),
        "preprocessing": preprocessing_record(current.model),
        "input_shape": list(x.shape),
        "arguments": arguments,
        "prediction": None if prediction is None else {"label": prediction[0], "probability": prediction[1]},
        "rendering": look.to_dict(),
        "overview": OVERVIEW,
        "layers": [
            {
                "layer": layer.layer,
                "node": layer.node,
                "mode": projection.mode,
                "label": projection.label,
                "prefer_inside": projection.prefer_inside,
                "inside": None if projection.inside is None else list(projection.inside),
                "channels": list(layer.channels),
                "activations": list(layer.activations),
                "positions": [None if p is None else list(p) for p in projection.positions],
                "boxes": None
                if projection.boxes is None
                else [None if b is None else list(b) for b in projection.boxes],
                "files": [str(f.relative_to(folder)) for f in layer.files],
                "file_boxes": boxes,
                "summary": str(layer.summary.relative_to(folder)),
            }
            for layer, projection, boxes in zip(rendered, projections, views, strict=True)
        ],
    }


def _say_if_nothing_came_back(picture: str, name: str, result: Projection) -> None:
    """Warn where a unit fires but its reconstruction is all zero: an op on the way down passed nothing back."""
    silent = [
        c
        for c, a, image in zip(result.channels, result.activations, result.image, strict=True)
        if float(a) > 0 and not bool(image.abs().max() > 0)
    ]
    if silent:
        listed = ", ".join(map(str, silent[:5])) + (", ..." if len(silent) > 5 else "")
        warn_caller(
            f"{picture}: {name} ch {listed}: the unit fires but its reconstruction is all zero, so an op on its way "
            "down passes nothing back (a gradient of zero, such as torch.floor's, or a held gate); "
            "`deconvviz steps` shows where the signal stops"
        )


def _render_one(
    current: Session,
    image: Path,
    x: Tensor,
    layers: Sequence[str],
    staging: Path,
    final: Path,
    options: dict[str, Any],
    look: RenderOptions,
    step: Callable[[str], None],
) -> tuple[RenderedImage, dict[str, Any]]:
    from deconvviz.viz import render as _render
    from deconvviz.viz.figures import base_picture

    rendered: list[RenderedLayer] = []
    projections: list[Projection] = []
    views: list[list[list[int] | None]] = []
    targets: list[str | None] = [*layers, *([None] if options.get("class") is not None else [])]
    projected = project_layers(  # one forward pass serves every layer
        current,
        x,
        layers,
        top=options["top"],
        channel=options["channels"],
        mode=options["mode"],
        inside=options["inside"],
        method=options["method"],
    )
    for layer, given in zip(targets, [*projected, None][: len(targets)], strict=True):
        if layer is None:  # the class score, after the layers
            result = project_class(current, x, options["class"], method=options["method"])
            layer = "class"
            name = result.label or layer
        else:
            assert given is not None
            result = given
            name = result.layer if result.layer == result.node else f"{result.layer} ({result.node})"
        folder = staging / _render.safe_name(layer)
        folder.mkdir()
        base = base_picture(result) if look.overlay else None
        files, boxes = [], []
        for i, filename in enumerate(_render.projection_filenames(result)):
            picture, box = _render.view_file(result, i, look, base)
            files.append(_render.save_image(picture, folder / filename))
            boxes.append(None if box is None else list(box))
        fig, _ = result.figure(look, title=f"{image.name}: {name}")
        summary = _render.save_figure(fig, staging / f"{_render.safe_name(layer)}.png")
        rendered.append(
            RenderedLayer(
                layer=layer if result.label else result.layer,
                node=result.node,
                channels=result.channels,
                activations=tuple(float(a) for a in result.activations),
                files=tuple(final / f.relative_to(staging) for f in files),
                summary=final / summary.relative_to(staging),
                label=result.label,
            )
        )
        projections.append(result)
        views.append(boxes)
        _say_if_nothing_came_back(image.name, name, result)
        step(f"{image.name} {layer}")
    if result_input := (projections[0].input_pil() if projections else None):
        _render.save_image(result_input, staging / "input.png")
    fig, _ = _render.layers_figure(projections, look, title=image.name)
    overview = _render.save_figure(fig, staging / OVERVIEW)
    prediction = _prediction(current, x)
    manifest = _manifest(current, image, x, rendered, projections, options, look, views, prediction, final)
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    done = RenderedImage(
        image=image,
        folder=final,
        layers=tuple(rendered),
        overview=final / overview.relative_to(staging),
        prediction=prediction,
    )
    return done, manifest


def _once(paths: list[Path]) -> list[Path]:
    """``paths`` with a file given again (by any spelling of its path) left out, with a warning naming it."""
    seen: set[Path] = set()
    kept: list[Path] = []
    for path in paths:
        key = path.resolve() if path.exists() else path
        if key in seen:
            warn_caller(f"{str(path)!r} is given more than once; it is rendered once")
            continue
        seen.add(key)
        kept.append(path)
    return kept


def render_images(
    images: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    model: str | LoadedModel | Session = DEFAULT_MODEL,
    layers: str | Sequence[str] | None = None,
    top: int | None = DEFAULT_TOP,
    channels: Sequence[int] | None = None,
    mode: str = "max",
    device: str | None = "auto",
    size: int | None = None,
    full_image: bool = False,
    options: RenderOptions | None = None,
    inside: bool | None = None,
    target: str | int | None = None,
    progress: Progress | None = None,
    method: str | None = None,
    target_class: str | int | None = None,
) -> list[RenderedImage]:
    """Render the reconstructions of several layers for several pictures into folders.

    Each picture gets ``out/<name>/`` with ``input.png``, one summary figure per layer (``<layer>.png``:
    the input and the reconstructions, labelled with channel and activation), one PNG per reconstruction
    (``<layer>/<rank>_ch<channel>.png``; cut to the unit's receptive field when that is small, see
    :class:`~deconvviz.viz.RenderOptions`), ``overview.png`` (a row per layer with the strongest
    reconstructions, small fields above the image patches their units saw, as in the paper's Fig. 2) and
    ``manifest.json`` (which also says how the pictures were scaled).
    Each folder is staged next to its target and all are moved into place together only when every picture
    is done (see :mod:`deconvviz.io.atomic`), so a failure leaves no partial results. Pictures with the same
    name get distinct folders (``cat``, ``cat-2``, ...); a file given twice is rendered once (with a
    warning). A result folder written earlier by deconvviz is replaced; any other folder of that name, there
    at the start or made while the run goes on, is left alone and the run is refused.

    Args:
        images: picture files.
        out: the folder that receives one result folder per picture (created if missing).
        model: a model name, a loaded model or a :class:`Session`.
        layers: layer names or aliases, ``"all"``, or None for :func:`default_layers`.
        top: the number of strongest channels per layer (clamped to each layer's channel count).
        channels: instead of ``top``, these channels in every layer.
        mode: ``"max"`` or ``"map"``.
        device: ``"cpu"``, ``"cuda"`` or ``"auto"``.
        size: resize and centre-crop pictures to ``size x size`` instead of the model's own size.
        full_image: keep each whole picture instead of resizing and centre-cropping it.
        options: how pictures are drawn (:class:`~deconvviz.viz.RenderOptions`: display scaling, overlay,
            boxes, cutting to receptive fields); default: robust scaling, small fields cut out.
        inside: prefer units whose receptive field lies wholly inside the picture (None: on for ``top``, off
            for chosen channels); recorded per layer in the manifest and marked ``edge`` in the labels.
        target: also project a class score of a classifier (``"auto"`` for the top-1 class, an index or
            a name) into ``class/`` and ``class.png``.
        progress: called after each layer of each picture (see :data:`Progress`).
        method: the reverse pass by its registered name: ``"deconvnet"`` (the default), ``"guided"`` or
            ``"gradient"``; recorded in each manifest.
        target_class: the earlier spelling of ``target`` (warns once).

    Returns:
        One :class:`RenderedImage` per picture.

    Raises:
        ImageError: a missing or unreadable picture (checked before any work).
        OutputError: ``out`` cannot be written, or holds a folder deconvviz did not write.
        DeconvVizError: unknown model or layer, channel out of range, ...
    """
    from deconvviz.viz.figures import RenderOptions

    if target_class is not None:
        deprecated("render_images(target_class=...)", "render_images(target=...)")
        target = target if target is not None else target_class
    look = RenderOptions.build(options)
    rules = get_method(method)  # an unknown method fails before any work
    if not images:
        raise OutputError("no images given; pass at least one picture file")
    if channels is not None and not list(channels):
        channels = None
    if mode not in ("max", "map"):
        raise DeconvVizError(f"mode must be 'max' or 'map', got {mode!r}")
    paths = _once([Path(image) for image in images])
    pictures = [load_image(path) for path in paths]  # every picture is checked before anything is written
    out_path = Path(out)
    finals = _targets(paths, out_path)
    for final in finals:  # a folder deconvviz did not write is refused before the model loads
        check_target(final, replace=True)
    current = session(model, device=device, size=size)
    inputs = [current.preprocess(picture, full_image=full_image) for picture in pictures]
    chosen = choose_layers(current.net, layers, inputs[0])
    if channels is not None:  # a channel out of range fails before anything is written
        check_channels(channel_widths(current.net, inputs[0], chosen), [int(c) for c in channels])
    arguments: dict[str, Any] = {
        "model": current.name,
        "layers": chosen,
        "top": None if channels is not None else top,
        "channels": None if channels is None else [int(c) for c in channels],
        "mode": mode,
        "size": size,
        "full_image": full_image,
        "inside": inside,
        "class": target,
        "method": rules.name,
        "scale": look.scaling.name,
        "overlay": look.overlay,
        "box": look.box,
        "crop": look.crop,
    }
    if target is not None:  # a model without a classifier, or an unknown class, fails before any work
        resolve_class(current, inputs[0], target)
    total = len(paths) * (len(chosen) + (1 if target is not None else 0))
    done = 0

    def step(what: str) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total, what)

    with stage_folders(finals, kind="render", replace=True) as stagings:
        if progress is not None:
            progress(0, total, "starting")
        results = []
        for path, x, staging, final in zip(paths, inputs, stagings, finals, strict=True):
            result, _ = _render_one(current, path, x, chosen, staging, final, arguments, look, step)
            results.append(result)
    return results
