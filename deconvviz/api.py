"""One-call helpers over the engine: a projection for a notebook, a folder of pictures for a set of photos.

:func:`visualize` loads a model by name (once per session), reads and preprocesses a picture, projects the
chosen channels of one layer and returns the :class:`~deconvviz.projection.Projection` (which shows itself
as a figure in Jupyter). :func:`render_images` does the same for several photos and layers and writes PNGs,
one summary figure per layer and a ``manifest.json`` per photo, atomically: each photo's folder appears
complete or not at all. The command line's ``render`` is a thin layer over it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deconvviz.errors import DeconvVizError
from deconvviz.io import NameMap, OutputError, check_target, stage_folders

if TYPE_CHECKING:  # pragma: no cover
    from PIL.Image import Image
    from torch import Tensor

    from deconvviz.deconvnet import DeconvNet
    from deconvviz.methods import RuleSet
    from deconvviz.models import LoadedModel
    from deconvviz.projection import Projection
    from deconvviz.viz import RenderOptions

MANIFEST = "manifest.json"
OVERVIEW = "overview.png"
MANIFEST_SCHEMA = 1
DEFAULT_MODEL = "vgg16"
DEFAULT_TOP = 9
MAX_SIZE = 2048
"""The largest ``size`` accepted: at 2048 px one of VGG16's first activations already takes 1 GB in float32, and
the reverse pass holds one such tensor per reconstruction."""

Progress = Callable[[int, int, str], None]
"""``progress(done, total, what)``: called as work advances (``done`` of ``total`` steps)."""


class DeviceError(DeconvVizError, ValueError):
    """A device name that is malformed or not available on this machine."""


# ------------------------------------------------------------------------------------------ models


def resolve_device(device: str | None) -> str:
    """The torch device to use: ``"auto"`` (or None) picks ``"cuda"`` when available, else ``"cpu"``.

    Raises:
        DeviceError: an unknown device, or CUDA asked for on a machine without it.
    """
    import torch

    name = (device or "auto").strip().lower()
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(name)
    except RuntimeError as exc:
        raise DeviceError(f"unknown device {device!r}; use cpu, cuda, cuda:N or auto") from exc
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {device!r} asked for, but CUDA is not available here; use --device cpu")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise DeviceError(f"device {device!r} does not exist: this machine has {torch.cuda.device_count()} GPU(s)")
    elif parsed.type not in ("cpu", "mps"):
        raise DeviceError(f"unsupported device {device!r}; use cpu, cuda, cuda:N or auto")
    return name


@dataclass
class Session:
    """A loaded model together with its deconvnet, ready to project pictures.

    Attributes:
        model: the loaded model (see :func:`deconvviz.load_model`).
        net: the deconvnet attached to it.
    """

    model: LoadedModel
    net: DeconvNet

    @property
    def name(self) -> str:
        """The model's name."""
        return str(getattr(self.model, "name", type(self.model.module).__name__))

    @property
    def channel_order(self) -> str:
        """The colour order of the model's input channels (``"RGB"`` unless the preprocessing says otherwise)."""
        return _channel_order(self.model)

    def preprocess(self, image: str | os.PathLike[str] | Image | Tensor, *, full_image: bool = False) -> Tensor:
        """A picture (path, PIL image, or an already preprocessed ``(1, C, H, W)`` tensor) as model input."""
        import torch

        if isinstance(image, torch.Tensor):
            return image
        if isinstance(image, str | os.PathLike):
            from deconvviz.images import load_image

            image = load_image(image)
        return self.model.preprocess(image, full_image=full_image)


_SESSIONS: OrderedDict[tuple[Any, ...], Session] = OrderedDict()
_SESSIONS_LOCK = threading.Lock()
_SESSIONS_KEPT = 2


def session(
    model: str | LoadedModel | Session = DEFAULT_MODEL, *, device: str | None = "auto", size: int | None = None
) -> Session:
    """A model and its deconvnet, loaded once: later calls with the same name, device and size reuse them.

    Args:
        model: a model name (``"vgg16"``, ``"resnet18:torchvision"``, ``"pkg.module:function"``, see
            :func:`deconvviz.list_models`), an already loaded model, or a session.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``; used when ``model`` is a name.
        size: the side of the square pictures are resized and cropped to, instead of the model's own.

    Returns:
        The :class:`Session`.

    Raises:
        DeconvVizError: unknown model, weights that cannot be had, a bad device or size.
    """
    from deconvviz.deconvnet import DeconvNet

    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise DeconvVizError(f"size must be a positive number of pixels, got {size!r}")
    if size is not None and size > MAX_SIZE:
        raise DeconvVizError(
            f"size {size} is more than {MAX_SIZE} pixels (memory grows with the square of the size); "
            "choose a smaller --size"
        )
    if isinstance(model, Session):
        if size is None or size == model.model.preprocessing.size:
            return model
        model = model.model
    if not isinstance(model, str):
        if size is not None and size != model.preprocessing.size:
            before = model.preprocessing
            resize = None if before.resize is not None and before.resize < size else before.resize
            model = dataclasses.replace(model, preprocessing=dataclasses.replace(before, size=size, resize=resize))
        return Session(model=model, net=DeconvNet(model))
    from deconvviz import models as _models

    resolved = resolve_device(device)
    spec = next((s for s in _models.list_models() if s.name == model), None)
    key = (model, resolved, size, id(spec))
    with _SESSIONS_LOCK:
        found = _SESSIONS.get(key)
        if found is not None:
            _SESSIONS.move_to_end(key)
            return found
    loaded = _models.load_model(model, device=resolved, size=size)
    made = Session(model=loaded, net=DeconvNet(loaded))
    with _SESSIONS_LOCK:
        _SESSIONS[key] = made
        while len(_SESSIONS) > _SESSIONS_KEPT:
            _SESSIONS.popitem(last=False)
    return made


def _channel_order(model: Any) -> str:
    order = getattr(getattr(model, "preprocessing", None), "channel_order", "RGB")
    return order.upper() if isinstance(order, str) and sorted(order.upper()) == ["B", "G", "R"] else "RGB"


# ------------------------------------------------------------------------------------------ layers


def _is_pool(net: DeconvNet, node: str) -> bool:
    from torch import nn

    module = dict(net.model.named_modules()).get(node)
    pools = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
    return isinstance(module, pools) or "pool" in node.rsplit(".", 1)[-1].lower()


def layer_names(net: DeconvNet) -> list[str]:
    """The layers worth offering by name, input to output: aliases if the model has them, else node names.

    Only projectable layers are listed; an alias is listed once even when several aliases name one node.
    """
    projectable = net.layers
    if not net.aliases:
        return projectable
    order = {name: i for i, name in enumerate(projectable)}
    named = [(alias, node) for alias, node in net.aliases.items() if node in order]
    seen: set[str] = set()
    result = []
    for alias, node in sorted(named, key=lambda pair: order[pair[1]]):
        if node not in seen:
            seen.add(node)
            result.append(alias)
    return result


def default_layers(net: DeconvNet, x: Tensor, limit: int = 6) -> list[str]:
    """A sensible set of layers to look at: the last non-pooling layer at each resolution.

    For VGG16 with its aliases this is ``conv1_2, conv2_2, conv3_3, conv4_3, conv5_3``, the five blocks'
    last (rectified) convolutions; other models get the end of each of their stages.

    Args:
        net: the deconvnet.
        x: a ``(1, C, H, W)`` input, used to learn each layer's output size.
        limit: the most layers returned (the deepest are kept).
    """
    candidates = [name for name in layer_names(net) if not _is_pool(net, net.resolve(name))]
    if not candidates:
        return layer_names(net)[-1:]
    shapes = {name: tuple(act.shape) for name, act in net.activations(x, candidates).items()}
    spatial = [name for name in candidates if len(shapes[name]) == 4]
    if not spatial:
        return candidates[-1:]
    chosen: list[str] = []
    for name, following in zip(spatial, [*spatial[1:], None], strict=True):
        if following is None or shapes[following][2:] != shapes[name][2:]:
            chosen.append(name)
    return chosen[-limit:]


SCAN_LAYERS = ("conv2_2", "conv3_3", "conv4_3", "conv5_3")
"""Default layers of a scan over a data set (``top_k`` and ``report``) where the model has these aliases."""


def scan_layers(net: DeconvNet, x: Tensor) -> list[str]:
    """The default layers of a scan over a data set (:func:`deconvviz.top_k` and the report, alike).

    ``conv2_2, conv3_3, conv4_3, conv5_3`` where the model has these aliases (VGG16: one per block from the
    second on, as in the paper's Fig. 2), else the deepest four of :func:`default_layers`.

    Args:
        net: the deconvnet.
        x: a ``(1, C, H, W)`` input, used to learn each layer's output size.
    """
    if all(name in net.aliases for name in SCAN_LAYERS):
        return list(SCAN_LAYERS)
    return default_layers(net, x)[-4:]


def choose_layers(net: DeconvNet, layers: str | Sequence[str] | None, x: Tensor) -> list[str]:
    """The layers to render: None -> :func:`default_layers`; ``"all"`` -> :func:`layer_names`; else as given.

    Names may be node names or aliases; a comma-separated string is split.

    Raises:
        LayerNotFoundError: an unknown name (close names are suggested).
    """
    if layers is None:
        return default_layers(net, x)
    names = [layers] if isinstance(layers, str) else list(layers)
    flat = [part.strip() for name in names for part in name.split(",") if part.strip()]
    if not flat:
        return default_layers(net, x)
    if any(name.lower() == "all" for name in flat):
        return layer_names(net)
    for name in flat:
        net.resolve(name)
    return list(dict.fromkeys(flat))


# ------------------------------------------------------------------------------------------ notebook


def receptive_boxes(net: DeconvNet, projection: Projection) -> tuple[tuple[int, int, int, int] | None, ...] | None:
    """The input-space box of each seeded unit of a projection, or None when it cannot be worked out.

    Whole-map seeds have no single box (None entries); layers whose units see the whole image, or whose
    geometry is not known, give None.
    """
    found = _geometry(net, projection)
    return None if found is None else found[0]


def _geometry(
    net: DeconvNet, projection: Projection
) -> tuple[tuple[tuple[int, int, int, int] | None, ...], tuple[bool | None, ...]] | None:
    """Each seeded unit's clipped box and whether its whole field lies inside the picture."""
    from deconvviz.choose import inside_flags
    from deconvviz.receptive import receptive_fields

    if projection.input is None:
        return None
    size = (int(projection.input.shape[-2]), int(projection.input.shape[-1]))
    try:
        fields = receptive_fields(net, [projection.node], method=projection.method)
        field = fields[projection.node]
    except (DeconvVizError, KeyError, ValueError):
        return None
    if field.whole_image:  # every unit sees everything: a box says nothing
        return None
    boxes: list[tuple[int, int, int, int] | None] = []
    for position in projection.positions:
        if position is None:
            boxes.append(None)
            continue
        box = field.box(position[0], position[1], size)
        boxes.append(tuple(int(v) for v in box))  # type: ignore[arg-type]
    return tuple(boxes), inside_flags(field, projection.positions, size)


def project(
    current: Session,
    x: Tensor,
    layer: str,
    *,
    top: int | None = None,
    channel: int | Sequence[int] | None = None,
    mode: str = "max",
    position: tuple[int, int] | None = None,
    width: int | None = None,
    inside: bool | None = None,
    method: str | RuleSet | None = None,
) -> Projection:
    """Project one layer for a session, with the model's colour order and the seeded units' boxes filled in.

    Args:
        current: the session.
        x: ``(1, C, H, W)`` preprocessed picture.
        layer: layer alias or node name.
        top: the strongest channels to project, clamped to the layer's channel count.
        channel: instead of ``top``, the channel(s) to project.
        mode: ``"max"`` or ``"map"``.
        position: ``(row, col)`` to seed instead of the strongest unit.
        width: the layer's channel count, if already known (saves a forward pass when clamping ``top``).
        inside: seed each channel's strongest unit among those whose receptive field lies wholly inside the
            picture (and rank ``top`` by them), see :mod:`deconvviz.choose`. None: on for ``top``, off for
            chosen channels; never for ``position`` or ``mode="map"``.
        method: the reverse pass: ``"deconvnet"`` (Zeiler & Fergus, the default), ``"guided"`` (guided
            backpropagation), ``"gradient"``, another registered name or a rule set (see
            :meth:`deconvviz.DeconvNet.project`).

    Returns:
        The :class:`~deconvviz.projection.Projection`; ``prefer_inside`` says whether units were chosen inside.
    """
    from deconvviz.choose import project_inside

    if channel is None and top is None:
        top = DEFAULT_TOP
    if top is not None and channel is None and isinstance(top, int) and not isinstance(top, bool) and top > 0:
        if width is None:
            width = _widths(current.net, x, [layer])[layer]
        if width:
            top = min(top, width)
    prefer = (channel is None) if inside is None else inside
    result = None
    if prefer and mode == "max" and position is None:
        chosen = None if channel is None else ([channel] if isinstance(channel, int) else list(channel))
        if chosen is None or all(isinstance(c, int) and not isinstance(c, bool) for c in chosen):
            if chosen is not None:  # the same one-line error as the plain path's
                _check_channels({layer: width or _widths(current.net, x, [layer])[layer]}, chosen)
            result = project_inside(current, x, layer, chosen, top, method=method)
    if result is None:
        result = current.net.project(
            x,
            layer,
            channel,
            mode=mode,  # type: ignore[arg-type]
            position=position,
            top=top,
            method=method,
        )
    found = _geometry(current.net, result)
    if found is None:
        return result
    return dataclasses.replace(result, boxes=found[0], inside=found[1])


def _widths(net: DeconvNet, x: Tensor, layers: Sequence[str]) -> dict[str, int]:
    """The channel count of each layer (0 for a layer without a channel dimension), from one forward pass."""
    return {name: int(a.shape[1]) if a.dim() >= 2 else 0 for name, a in net.activations(x, layers).items()}


def _check_channels(widths: dict[str, int], channels: Sequence[int]) -> None:
    from deconvviz.deconvnet import SeedError

    for layer, width in widths.items():
        for c in channels:
            if not 0 <= c < width:
                raise SeedError(
                    f"channel {c} is out of range for layer {layer!r}, which has {width} channels (0-{width - 1}); "
                    "choose smaller channel numbers or other layers"
                )


def visualize(
    image: str | os.PathLike[str] | Image | Tensor,
    model: str | LoadedModel | Session = DEFAULT_MODEL,
    layer: str | None = None,
    *,
    top: int | None = DEFAULT_TOP,
    channel: int | Sequence[int] | None = None,
    mode: str = "max",
    position: tuple[int, int] | None = None,
    device: str | None = "auto",
    size: int | None = None,
    full_image: bool = False,
    inside: bool | None = None,
    target_class: str | int | None = None,
    method: str | RuleSet | None = None,
) -> Projection:
    """Project a picture's strongest channels of one layer back to pixels, in one call.

    The model is loaded once per session and kept for later calls. In Jupyter the returned projection
    shows itself as a figure; ``p.figure()`` returns that figure, ``p.to_pil(i)`` one reconstruction,
    ``p.save(folder)`` writes them all.

    Args:
        image: a picture file, a PIL image, or an already preprocessed ``(1, C, H, W)`` tensor.
        model: a model name (see :func:`deconvviz.list_models`), a loaded model, or a :class:`Session`.
        layer: layer alias or node name; default: the deepest of :func:`default_layers`
            (``conv5_3`` for VGG16).
        top: the number of strongest channels to project (clamped to the layer's channel count).
        channel: instead of ``top``, the channel(s) to project.
        mode: ``"max"`` (each channel's strongest unit) or ``"map"`` (its whole feature map).
        position: ``(row, col)`` of the unit to seed in each channel, instead of the strongest.
        device: ``"cpu"``, ``"cuda"`` or ``"auto"`` when ``model`` is a name.
        size: resize and centre-crop the picture to ``size x size`` instead of the model's own size.
        full_image: keep the whole picture instead of resizing and centre-cropping it to the model's size.
        inside: prefer units whose receptive field lies wholly inside the picture (None: on for ``top``,
            off for chosen channels; see :func:`project`).
        target_class: instead of a layer, project a class score of a classifier: ``"auto"`` (the top-1
            class), a class index or a class name (see :func:`deconvviz.choose.project_class`).
        method: the reverse pass: ``"deconvnet"`` (Zeiler & Fergus, the default), ``"guided"`` (guided
            backpropagation) or ``"gradient"`` (see ``docs/rules.md``), another registered name, or a rule set.

    Returns:
        The :class:`~deconvviz.projection.Projection` (``.method`` names the reverse pass).

    Raises:
        DeconvVizError: bad picture, unknown model or layer, channel out of range, a class for a model
            without a classifier, an unknown method (one-line messages).

    Example:
        >>> p = dv.visualize("examples/cat.jpg", model="vgg16", layer="conv5_3", top=9)  # doctest: +SKIP
        >>> fig, axes = p.figure()  # doctest: +SKIP
    """
    current = session(model, device=device, size=size)
    x = current.preprocess(image, full_image=full_image)
    if target_class is not None:
        from deconvviz.choose import project_class

        return project_class(current, x, target_class, method=method)
    chosen = layer if layer is not None else default_layers(current.net, x)[-1]
    if channel is not None:
        top = None
    return project(
        current, x, chosen, top=top, channel=channel, mode=mode, position=position, inside=inside, method=method
    )


# ------------------------------------------------------------------------------------------ folders


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
    """

    layer: str
    node: str
    channels: tuple[int, ...]
    activations: tuple[float, ...]
    files: tuple[Path, ...]
    summary: Path


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
        if deepest is not None and deepest.channels:
            text += f"; {deepest.layer} strongest ch {deepest.channels[0]} (a={deepest.activations[0]:.3g})"
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


def library_versions() -> dict[str, str]:
    """Versions of deconvviz, torch, torchvision, matplotlib and Python, for manifests."""
    import matplotlib
    import torch
    import torchvision

    from deconvviz import __version__

    return {
        "deconvviz": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "matplotlib": matplotlib.__version__,
        "python": platform.python_version(),
    }


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
        "tool": "deconvviz",
        "schema": MANIFEST_SCHEMA,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": library_versions(),
        "image": str(image),
        "model": current.name,
        "weights": str(getattr(current.model, "weights", "")),
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


def _render_one(
    current: Session,
    image: Path,
    x: Tensor,
    layers: Sequence[str],
    staging: Path,
    final: Path,
    options: dict[str, Any],
    look: RenderOptions,
    widths: dict[str, int],
    step: Callable[[str], None],
) -> tuple[RenderedImage, dict[str, Any]]:
    from deconvviz import render as _render
    from deconvviz.viz.figures import base_picture

    rendered: list[RenderedLayer] = []
    projections: list[Projection] = []
    views: list[list[list[int] | None]] = []
    targets: list[str | None] = [*layers, *([None] if options.get("class") is not None else [])]
    for layer in targets:
        if layer is None:  # the class score, after the layers
            from deconvviz.choose import project_class

            result = project_class(current, x, options["class"], method=options["method"])
            layer = "class"
            name = result.label or layer
        else:
            result = project(
                current,
                x,
                layer,
                top=options["top"],
                channel=options["channels"],
                mode=options["mode"],
                width=widths[layer],
                inside=options["inside"],
                method=options["method"],
            )
            name = result.layer if result.layer == result.node else f"{result.layer} ({result.node})"
        folder = staging / _render.safe_name(layer)
        folder.mkdir()
        base = base_picture(result) if look.overlay else None
        files, boxes = [], []
        for i, name in enumerate(_render.projection_filenames(result)):
            picture, box = _render.view_file(result, i, look, base)
            files.append(_render.save_image(picture, folder / name))
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
            )
        )
        projections.append(result)
        views.append(boxes)
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
    target_class: str | int | None = None,
    progress: Progress | None = None,
    method: str | None = None,
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
    name get distinct folders (``cat``, ``cat-2``, ...). A result folder written earlier by deconvviz is
    replaced; any other folder of that name, there at the start or made while the run goes on, is left
    alone and the run is refused.

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
        target_class: also project a class score of a classifier (``"auto"`` for the top-1 class, an index or
            a name) into ``class/`` and ``class.png``.
        progress: called after each layer of each picture (see :data:`Progress`).
        method: the reverse pass by its registered name: ``"deconvnet"`` (the default), ``"guided"`` or
            ``"gradient"``; recorded in each manifest.

    Returns:
        One :class:`RenderedImage` per picture.

    Raises:
        ImageError: a missing or unreadable picture (checked before any work).
        OutputError: ``out`` cannot be written, or holds a folder deconvviz did not write.
        DeconvVizError: unknown model or layer, channel out of range, ...
    """
    from deconvviz.images import load_image
    from deconvviz.methods import get_method
    from deconvviz.viz import RenderOptions

    look = RenderOptions.build(options)
    rules = get_method(method)  # an unknown method fails before any work
    if not images:
        raise OutputError("no images given; pass at least one picture file")
    if channels is not None and not list(channels):
        channels = None
    if mode not in ("max", "map"):
        raise DeconvVizError(f"mode must be 'max' or 'map', got {mode!r}")
    paths = [Path(image) for image in images]
    pictures = [load_image(path) for path in paths]  # every picture is checked before anything is written
    out_path = Path(out)
    finals = _targets(paths, out_path)
    for final in finals:  # a folder deconvviz did not write is refused before the model loads
        check_target(final, replace=True)
    current = session(model, device=device, size=size)
    inputs = [current.preprocess(picture, full_image=full_image) for picture in pictures]
    chosen = choose_layers(current.net, layers, inputs[0])
    widths = _widths(current.net, inputs[0], chosen)
    if channels is not None:
        _check_channels(widths, [int(c) for c in channels])
    arguments: dict[str, Any] = {
        "model": current.name,
        "layers": chosen,
        "top": None if channels is not None else top,
        "channels": None if channels is None else [int(c) for c in channels],
        "mode": mode,
        "size": size,
        "full_image": full_image,
        "inside": inside,
        "class": target_class,
        "method": rules.name,
        "scale": look.scaling.name,
        "overlay": look.overlay,
        "box": look.box,
        "crop": look.crop,
    }
    if target_class is not None:  # a model without a classifier, or an unknown class, fails before any work
        from deconvviz.choose import resolve_class

        resolve_class(current, inputs[0], target_class)
    total = len(paths) * (len(chosen) + (1 if target_class is not None else 0))
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
            result, _ = _render_one(current, path, x, chosen, staging, final, arguments, look, widths, step)
            results.append(result)
    return results
