"""What to show: units whose receptive field lies inside the picture, and the class score of a classifier.

A unit at the border of a feature map sees mostly padding (at VGG16's conv3_3, unit (1, 0) has two thirds of
its 40x40 field outside the picture), so its reconstruction says little about the photo. For ``top=`` the
helpers here rank each channel by its strongest unit whose *whole* field lies inside the picture, and project
those units, all from one capture pass.

Deep layers see nearly the whole picture: at SqueezeNet's fire9 on a 224 px picture only the centre unit's
field fits inside, so "inside" would put every channel at that one unit and the pictures would all look alike.
Where fewer than :data:`MIN_INSIDE_SHARE` of a layer's units lie wholly inside, each channel's strongest unit
anywhere is projected instead, as in the paper (the labels mark with ``edge`` a unit whose field reaches past
the picture).
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from deconvviz.core.projection import Projection
from deconvviz.core.receptive import receptive_fields
from deconvviz.core.seeds import SeedError, check_mode
from deconvviz.core.steps import StepsChoice, chosen_seeds, join_steps
from deconvviz.errors import DeconvVizError
from deconvviz.methods import get_method

if TYPE_CHECKING:  # pragma: no cover
    from deconvviz.core.deconvnet import Captured, DeconvNet
    from deconvviz.core.projection import Projection
    from deconvviz.methods import RuleSet
    from deconvviz.models.session import Session
    from deconvviz.ops.geometry import ReceptiveField


MIN_INSIDE_SHARE = 0.25
"""The least share of a layer's units whose whole field lies inside the picture for the choice to keep to them.

VGG16 at 224 px keeps to them at conv1_1 to conv4_3 (at conv4_3, 16 x 16 of its 28 x 28 units: 33 %); at
conv5_3 (4 of 196) and SqueezeNet's fire9 (1 of 169) every channel's strongest unit anywhere is taken."""


class ClassError(DeconvVizError, ValueError):
    """A class that cannot be projected: a model without a classifier, or an unknown class."""


def inside_mask(field: ReceptiveField, map_shape: Sequence[int], image_size: Sequence[int]) -> Tensor | None:
    """``(H, W)`` booleans: True where the unit's whole receptive field lies inside the picture.

    Returns:
        The mask, or None for a layer whose units see the whole image (every unit is "inside").
    """
    if field.whole_image or field.size is None or field.stride is None or field.offset is None:
        return None
    height, width = (int(n) for n in map_shape)
    image_h, image_w = (int(n) for n in image_size[-2:])
    tops = field.offset[0] + field.stride[0] * torch.arange(height)
    lefts = field.offset[1] + field.stride[1] * torch.arange(width)
    rows = (tops >= 0) & (tops + field.size[0] <= image_h)
    cols = (lefts >= 0) & (lefts + field.size[1] <= image_w)
    return rows[:, None] & cols[None, :]


def inside_flags(
    field: ReceptiveField, positions: Sequence[tuple[int, int] | None], image_size: Sequence[int]
) -> tuple[bool | None, ...]:
    """Per position, whether the unit's whole field lies inside the picture (None for whole-map seeds)."""
    height, width = (int(n) for n in image_size[-2:])
    flags: list[bool | None] = []
    for position in positions:
        if position is None:
            flags.append(None)
            continue
        top, left, bottom, right = field.box(position[0], position[1], (height, width), clip=False)
        flags.append(top >= 0 and left >= 0 and bottom <= height and right <= width)
    return tuple(flags)


def project_inside(
    current: Session,
    x: Tensor,
    layer: str,
    channels: Sequence[int] | None,
    top: int | None,
    *,
    method: str | RuleSet | None = None,
    captured: Captured | None = None,
) -> Projection | None:
    """Project each channel's strongest unit among those whose field lies inside the picture.

    Args:
        current: the session.
        x: ``(1, C, H, W)`` preprocessed picture.
        layer: layer alias or node name.
        channels: the channels to project, or None to take the ``top`` strongest (ranked by their strongest
            inside unit).
        top: how many channels when ``channels`` is None.
        method: the reverse pass (``"deconvnet"``, the default; ``"guided"``; ``"gradient"``; see
            :meth:`deconvviz.DeconvNet.project`).
        captured: the picture's capture at ``layer`` for ``method``, when already made
            (:meth:`deconvviz.DeconvNet.capture`); default: one is made.

    Returns:
        The projection (``prefer_inside=True``), or None when the layer has no spatial map, its units see the
        whole image, or none of its units lies wholly inside the picture (then the plain strongest units are
        the honest choice).
    """
    net = current.net
    if captured is None:
        captured = net.capture(x, layer, method=method)
    node = captured.node_name
    act = captured.activation
    if act.dim() != 4:
        return None
    try:
        field = receptive_fields(net, [node], method=method)[node]
    except (DeconvVizError, KeyError, ValueError):
        return None
    mask = inside_mask(field, act.shape[2:], x.shape)
    if mask is None or float(mask.float().mean()) < MIN_INSIDE_SHARE:
        return None  # every unit sees the whole picture, or too few lie inside to tell channels apart
    planes = act[0].detach().to("cpu", torch.float64).masked_fill(~mask, float("-inf"))
    values, flat = planes.reshape(planes.shape[0], -1).max(dim=1)
    if channels is None:
        count = min(int(top or 1), planes.shape[0])
        # a stable sort keeps equal activations in channel order, so results are reproducible
        chosen = [int(c) for c in torch.sort(values, descending=True, stable=True).indices[:count]]
    else:
        chosen = [int(c) for c in channels]
        check_channels({layer: int(act.shape[1])}, chosen)
    width = int(act.shape[3])
    positions = [(int(flat[c]) // width, int(flat[c]) % width) for c in chosen]
    units = [(0, c, row, col) for c, (row, col) in zip(chosen, positions, strict=True)]
    image = captured.project_units(units).detach().cpu()
    picked = torch.tensor(chosen, device=act.device)
    seeded = act[0].reshape(act.shape[1], -1)[picked, flat.to(act.device)[picked]].detach().cpu()
    return Projection(
        image=image,
        layer=layer,
        node=node,
        channels=tuple(chosen),
        positions=tuple(positions),
        activations=seeded.clone(),
        mode="max",
        input=x.detach().cpu(),
        to_image=getattr(current.model, "to_image", None),
        channel_order=current.channel_order,
        prefer_inside=True,
        method=get_method(method).name,
    )


# ------------------------------------------------------------------------------------------------ classes


def _no_classifier(name: str) -> ClassError:
    if name == "vgg16":
        return ClassError(
            "the offline vgg16 is VGG16's convolutional base only (no classifier, so no class scores); for a class "
            "use the model squeezenet1_1 (offline) or vgg16:torchvision (needs the network once)"
        )
    return ClassError(
        f"model {name!r} has no classifier (its output is not one score per class), so there is no class score "
        "to project; project a layer, or use a classifier such as squeezenet1_1"
    )


def class_count(current: Session, x: Tensor) -> int | None:
    """How many class scores the model gives (its output is ``(1, N)``), or None when it gives no scores."""
    output = current.net.layers[-1]
    scores = current.net.activations(x, [output])[output]
    if scores.dim() != 2:
        return None
    return int(scores.shape[1])


def resolve_class(current: Session, x: Tensor, which: str | int | None = "auto") -> tuple[int, str]:
    """The class to project: ``"auto"`` (or None) the top-1 prediction, a class index, or a class name.

    An index or ``"auto"`` works for any model whose output is one score per class; a name needs the model's
    class names, and matches case-insensitively, whole or as the only class name that contains it.

    Returns:
        ``(index, name)``; the name is ``"class <index>"`` for a model without class names.

    Raises:
        ClassError: the model gives no class scores, or the class is out of range or unknown (close names listed).
    """
    labels = list(getattr(current.model, "labels", None) or [])
    count = class_count(current, x)
    if count is None:
        raise _no_classifier(current.name)
    if labels and len(labels) != count:
        labels = []  # names that do not match the output: go by index
    index = class_index(which, labels, count, current.name, ClassError)
    if index is None:
        output = current.net.layers[-1]
        index = int(current.net.activations(x, [output])[output][0].argmax())
    return index, labels[index] if labels else f"class {index}"


def class_index(
    which: str | int | None,
    labels: Sequence[str] | None,
    count: int,
    model: str,
    error: type[DeconvVizError],
) -> int | None:
    """A class given by index or name as its index; None for ``"auto"`` (or None), the top-1 prediction.

    Every analysis names classes this way: an index ``0..count-1`` (an int or its digits), or a class name,
    matched case-insensitively, whole or as the only class name that contains it.

    Args:
        which: the class as given.
        labels: the model's class names (empty or None: by index only).
        count: how many class scores the model gives.
        model: the model's name, for messages.
        error: the exception class raised.

    Raises:
        error: an index out of range, a name the model does not have (close names listed), or a name for a
            model without class names.
    """
    if which is None or (isinstance(which, str) and which.strip().lower() == "auto"):
        return None
    if isinstance(which, str) and which.strip().lstrip("-").isdigit():
        which = int(which.strip())
    if isinstance(which, int) and not isinstance(which, bool):
        if not 0 <= which < count:
            raise error(f"class {which} is out of range: {model!r} has {count} classes (0-{count - 1})")
        return which
    if not isinstance(which, str):
        raise error(f"a class is an index (0-{count - 1}), a class name or 'auto', got {which!r}")
    if not labels:
        raise error(
            f"model {model!r} has no class names, so {which!r} names no class; give the class's index "
            f"(0-{count - 1}) or 'auto'"
        )
    labels = list(labels)
    wanted = which.strip().lower()
    lowered = [label.lower() for label in labels]
    if wanted in lowered:
        return lowered.index(wanted)
    containing = [i for i, label in enumerate(lowered) if wanted in label]
    if len(containing) == 1:
        return containing[0]
    close = difflib.get_close_matches(wanted, lowered, n=3) or [lowered[i] for i in containing[:3]]
    hint = f"; did you mean {', '.join(repr(labels[lowered.index(c)]) for c in close)}?" if close else ""
    several = f" ({len(containing)} class names contain it)" if len(containing) > 1 else ""
    raise error(f"unknown class {which!r} for {model!r}{several}{hint} (or give its index, or 'auto')")


def project_class(
    current: Session, x: Tensor, which: str | int | None = "auto", *, method: str | RuleSet | None = None
) -> Projection:
    """Project a class score (the model's output for that class) back to pixels, labelled with its name.

    ``method`` is the reverse pass, as for :meth:`deconvviz.DeconvNet.project`.

    Raises:
        ClassError: see :func:`resolve_class`.
    """
    import dataclasses

    index, name = resolve_class(current, x, which)
    output = current.net.layers[-1]
    projection = current.net.project(x, output, channel=index, method=method)
    named = name != f"class {index}" or bool(getattr(current.model, "labels", None))
    return dataclasses.replace(projection, label=f"class {index}: {name}" if named else f"class {index}")


DEFAULT_TOP = 9


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
    steps: StepsChoice = False,
) -> Projection:
    """Project one layer for a session, with the model's colour order and the seeded units' boxes filled in.

    One forward pass (a capture) serves the choice of units and their reverse passes.

    Args:
        current: the session.
        x: ``(1, C, H, W)`` preprocessed picture.
        layer: layer alias or node name.
        top: the strongest channels to project, clamped to the layer's channel count.
        channel: instead of ``top``, the channel(s) to project.
        mode: ``"max"`` or ``"map"``.
        position: ``(row, col)`` to seed instead of the strongest unit.
        width: unused (the capture knows the layer's channel count); kept for earlier callers.
        inside: seed each channel's strongest unit among those whose receptive field lies wholly inside the
            picture (and rank ``top`` by them), see :mod:`deconvviz.analysis.choose`. None: on for ``top``, off for
            chosen channels; never for ``position`` or ``mode="map"``.
        method: the reverse pass: ``"deconvnet"`` (Zeiler & Fergus, the default), ``"guided"`` (guided
            backpropagation), ``"gradient"``, another registered name or a rule set (see
            :meth:`deconvviz.DeconvNet.project`).
        steps: keep the signal after every mirrored op (see :meth:`deconvviz.DeconvNet.project`).

    Returns:
        The :class:`~deconvviz.core.projection.Projection`; ``prefer_inside`` says whether units were chosen inside.
    """
    check_mode(mode, position)  # before the forward pass
    captured = current.net.capture(x, layer, method=method)
    return _project_captured(current, captured, x, top, channel, mode, position, inside, method, steps)


def project_layers(
    current: Session,
    x: Tensor,
    layers: Sequence[str],
    *,
    top: int | None = None,
    channel: int | Sequence[int] | None = None,
    mode: str = "max",
    position: tuple[int, int] | None = None,
    inside: bool | None = None,
    method: str | RuleSet | None = None,
) -> list[Projection]:
    """:func:`project` at several layers of one picture, from one forward pass that all of them share.

    Each projection is exactly what :func:`project` gives at that layer (arguments as there); the pass runs up
    to the deepest layer once instead of once per layer.

    Returns:
        One projection per layer, in the order given.
    """
    check_mode(mode, position)
    captures = current.net.capture_layers(x, layers, method=method)
    return [
        _project_captured(current, captures[layer], x, top, channel, mode, position, inside, method, False)
        for layer in layers
    ]


def _project_captured(
    current: Session,
    captured: Captured,
    x: Tensor,
    top: int | None,
    channel: int | Sequence[int] | None,
    mode: str,
    position: tuple[int, int] | None,
    inside: bool | None,
    method: str | RuleSet | None,
    steps: StepsChoice,
) -> Projection:
    """:func:`project` from the picture's capture at the layer."""
    if channel is None and top is None:
        top = DEFAULT_TOP
    if top is not None and channel is None and isinstance(top, int) and not isinstance(top, bool) and top > 0:
        top = min(top, int(captured.activation.shape[1]))
    prefer = (channel is None) if inside is None else inside
    result = None
    if prefer and mode == "max" and position is None:
        chosen = None if channel is None else ([channel] if isinstance(channel, int) else list(channel))
        if chosen is None or all(isinstance(c, int) and not isinstance(c, bool) for c in chosen):
            result = project_inside(current, x, captured.layer, chosen, top, method=method, captured=captured)
            if result is not None and steps is not False:
                result = _with_steps(current, x, result, steps)
    if result is None:
        result = captured.project(channel, mode=mode, position=position, top=top, steps=steps)  # type: ignore[arg-type]
    found = _geometry(current.net, result)
    if found is None:
        return result
    return dataclasses.replace(result, boxes=found[0], inside=found[1])


def _with_steps(current: Session, x: Tensor, result: Projection, steps: StepsChoice) -> Projection:
    """``result`` (units chosen one by one) with the steps of the seeds ``steps`` picks, one projection each."""
    parts = []
    for i in chosen_seeds(steps, len(result)):
        one = current.net.project(
            x, result.layer, result.channels[i], position=result.positions[i], method=result.method, steps=True
        )
        assert one.steps is not None
        parts.append((i, one.steps))
    return dataclasses.replace(result, steps=join_steps(result, parts))


def channel_widths(net: DeconvNet, x: Tensor, layers: Sequence[str]) -> dict[str, int]:
    """The channel count of each layer (0 for a layer without a channel dimension), from one forward pass."""
    widths: dict[str, int] = {}

    def width(name: str, a: Tensor) -> None:  # a layer that returns a tuple fails in one line naming its items
        widths[name] = int(a.shape[1]) if a.dim() >= 2 else 0

    net.visit_activations(x, layers, width)
    return {name: widths[name] for name in layers}


def check_channels(widths: dict[str, int], channels: Sequence[int]) -> None:
    """Raise a one-line :class:`~deconvviz.core.deconvnet.SeedError` for a channel outside a layer's range."""
    for layer, width in widths.items():
        for c in channels:
            if not 0 <= c < width:
                raise SeedError(
                    f"channel {c} is out of range for layer {layer!r}, which has {width} channels (0-{width - 1}); "
                    "choose smaller channel numbers or other layers"
                )
