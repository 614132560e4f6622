"""How much a layer's features change as an image is translated, scaled and rotated (Zeiler & Fergus, Fig. 5).

For each transformation and each image, the image is transformed at a sweep of values, and for each chosen
layer the distance between the feature vector of the original and of the transformed image is measured;
where the model classifies, the probability of the true class is tracked too. Every transformed image of a
sweep goes through the network in batches, one forward pass that keeps the requested layers and the output.

Transformations act on the preprocessed image and keep it centred: vertical translation moves it down
(negative values move it up), scale zooms about the centre, rotation turns it counter-clockwise about the
centre. Uncovered pixels take the model's mean colour, which is zero after the model's normalisation.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from torch import Tensor

from deconvviz.analysis.base import AnalysisError, AnalysisResult
from deconvviz.analysis.choose import class_count, class_index
from deconvviz.analysis.progress import ProgressOption, reporting
from deconvviz.core.layers import alias_nodes, choose_layers, default_layers
from deconvviz.models.session import session

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    from PIL.Image import Image

    from deconvviz.models.session import Session
    from deconvviz.models.specs import LoadedModel

TRANSFORMS = ("translate", "scale", "rotate")
"""The transformations of the paper's Fig. 5, in its row order."""

DEFAULT_RANGES: dict[str, tuple[float, float]] = {
    "translate": (-60.0, 60.0),
    "scale": (0.5, 1.7),
    "rotate": (0.0, 360.0),
}
"""The paper's ranges: vertical translation in pixels, scale factor, rotation in degrees."""


Distance = Literal["unit", "relative", "none"]
_DISTANCES = ("unit", "relative", "none")


IDENTITY = {"translate": 0.0, "scale": 1.0, "rotate": 0.0}
"""Each transformation's value that leaves the picture as it is."""


def sweep(start: float, stop: float, steps: int, name: str = "range") -> tuple[float, ...]:
    """``steps`` evenly spaced values from ``start`` to ``stop``, both included, and the original in between.

    Where the range holds the transformation's identity (a shift or a rotation of 0, a scale of 1) and the
    steps miss it, it is added, so that every curve passes through the original picture (a distance of 0).

    Raises:
        AnalysisError: an empty range (``start >= stop``), fewer than two steps, or values that are not finite
            (a scale must also be positive).
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
        raise AnalysisError(f"steps must be a whole number of at least 2, got {steps!r}")
    if not (math.isfinite(start) and math.isfinite(stop)):
        raise AnalysisError(f"the {name} range {start}:{stop} must be two finite numbers")
    if start >= stop:
        raise AnalysisError(f"the {name} range {start:g}:{stop:g} is empty; give START:END with START below END")
    if name == "scale" and start <= 0:
        raise AnalysisError(f"the scale range {start:g}:{stop:g} must be positive (1 is the original size)")
    values = [start + (stop - start) * i / (steps - 1) for i in range(steps)]
    identity = IDENTITY.get(name)
    if identity is not None and start < identity < stop and all(abs(v - identity) > 1e-9 for v in values):
        values = sorted([*values, identity])
    return tuple(values)


def _matrix(kind: str, value: float) -> tuple[Tensor, Tensor]:
    """Where each output pixel samples the input, in pixel units about the centre: ``input = A @ out + b``.

    Pixel coordinates run x to the right and y down.
    """
    eye = torch.eye(2, dtype=torch.float64)
    if kind == "translate":  # content moves down by ``value`` pixels: output(y) = input(y - value)
        return eye, torch.tensor([0.0, -value], dtype=torch.float64)
    if kind == "scale":  # content grows by ``value`` about the centre
        return eye / value, torch.zeros(2, dtype=torch.float64)
    if kind == "rotate":  # content turns counter-clockwise on screen by ``value`` degrees
        a = math.radians(value)
        c, s = math.cos(a), math.sin(a)
        return torch.tensor([[c, -s], [s, c]], dtype=torch.float64), torch.zeros(2, dtype=torch.float64)
    raise AnalysisError(f"unknown transformation {kind!r}; use one of {', '.join(TRANSFORMS)}")


def transform(x: Tensor, kind: str, values: Sequence[float]) -> Tensor:
    """One image transformed at each value: ``(1, C, H, W)`` -> ``(len(values), C, H, W)``.

    Bilinear sampling about the image centre; pixels from outside the image are zero (the model's mean
    colour in its normalised input space).

    Args:
        x: one preprocessed image.
        kind: ``"translate"`` (pixels, positive moves the content down), ``"scale"`` (factor about the centre)
            or ``"rotate"`` (degrees, counter-clockwise).
        values: the transformation's values.
    """
    import torch.nn.functional as F

    if x.dim() != 4 or x.shape[0] != 1:
        raise AnalysisError(f"expected one preprocessed image of shape (1, C, H, W), got {tuple(x.shape)}")
    height, width = x.shape[-2:]
    # Normalised coordinates (-1..1 across the image) -> pixels about the centre: D = diag(W/2, H/2).
    to_pixels = torch.tensor([width / 2.0, height / 2.0], dtype=torch.float64)
    thetas = []
    for value in values:
        a, b = _matrix(kind, float(value))
        linear = a * to_pixels[None, :] / to_pixels[:, None]  # D^-1 A D
        thetas.append(torch.cat([linear, (b / to_pixels)[:, None]], dim=1))
    theta = torch.stack(thetas).to(device=x.device, dtype=x.dtype if x.is_floating_point() else torch.float32)
    grid = F.affine_grid(theta, [len(values), *x.shape[1:]], align_corners=False)
    return F.grid_sample(
        x.expand(len(values), *x.shape[1:]), grid, mode="bilinear", padding_mode="zeros", align_corners=False
    )


def feature_distance(reference: Tensor, features: Tensor, normalize: Distance = "unit") -> Tensor:
    """Euclidean distance between one feature vector and each row of a batch, in float64.

    Args:
        reference: the original image's features, any shape (flattened).
        features: ``(N, ...)`` the transformed images' features.
        normalize: ``"unit"``: between the vectors scaled to unit length (the default, see :func:`invariance`);
            ``"relative"``: the plain distance divided by the original's length; ``"none"``: the plain distance.

    Returns:
        ``(N,)`` float64 distances.
    """
    ref = reference.detach().reshape(1, -1).to(torch.float64)
    rows = features.detach().reshape(features.shape[0], -1).to(torch.float64)
    if normalize == "unit":
        tiny = torch.finfo(torch.float64).tiny
        ref = ref / ref.norm().clamp_min(tiny)
        rows = rows / rows.norm(dim=1, keepdim=True).clamp_min(tiny)
        return (rows - ref).norm(dim=1)
    distance = (rows - ref).norm(dim=1)
    if normalize == "relative":
        return distance / ref.norm().clamp_min(torch.finfo(torch.float64).tiny)
    if normalize == "none":
        return distance
    raise AnalysisError(f"normalize must be one of {', '.join(_DISTANCES)}, got {normalize!r}")


# ------------------------------------------------------------------------------------------------ result


@dataclass(frozen=True)
class InvarianceResult(AnalysisResult):
    """Feature distances and class probabilities over transformation sweeps (the paper's Fig. 5).

    Attributes:
        model: the model's name.
        images: a name for each image (file name, or ``image 1``, ...).
        layers: the layers as asked for, low to high.
        nodes: their node names.
        transforms: the transformations swept, in row order.
        values: per transformation, its values (pixels, factor or degrees).
        distances: ``distances[transform][layer]``: ``(images, steps)`` float64 distances to the original.
        normalize: how distances were normalised (``"unit"``, ``"relative"`` or ``"none"``).
        probabilities: per transformation, ``(images, steps)`` float64 probability of each image's class;
            None when the model has no classifier.
        classes: per image, ``(index, name)`` of the class whose probability is tracked; None without one.
        examples: per transformation, the first image at a few of the values, ``(h, w, 3)`` uint8 each.
    """

    kind: ClassVar[str] = "invariance"

    model: str
    images: tuple[str, ...]
    layers: tuple[str, ...]
    nodes: tuple[str, ...]
    transforms: tuple[str, ...]
    values: dict[str, tuple[float, ...]]
    distances: dict[str, dict[str, Tensor]] = field(repr=False)
    normalize: str
    probabilities: dict[str, Tensor] | None = field(default=None, repr=False)
    classes: tuple[tuple[int, str], ...] | None = None
    examples: dict[str, tuple[np.ndarray, ...]] = field(default_factory=dict, repr=False, compare=False)

    def _manifest(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "images": list(self.images),
            "layers": [{"layer": layer, "node": node} for layer, node in zip(self.layers, self.nodes, strict=True)],
            "normalize": self.normalize,
            "classes": None if self.classes is None else [{"index": i, "name": n} for i, n in self.classes],
            "transforms": {
                name: {
                    "values": list(self.values[name]),
                    "distances": {layer: self.distances[name][layer].tolist() for layer in self.layers},
                    "probabilities": None if self.probabilities is None else self.probabilities[name].tolist(),
                }
                for name in self.transforms
            },
        }

    def summary(self) -> str:
        """One line per transformation: the largest distance at each layer and the lowest class probability."""
        lines = []
        for name in self.transforms:
            parts = [f"{layer} distance up to {float(self.distances[name][layer].max()):.2f}" for layer in self.layers]
            if self.probabilities is not None:
                parts.append(f"P(true class) down to {float(self.probabilities[name].min()):.2f}")
            lines.append(f"{name}: " + ", ".join(parts))
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (
            f"InvarianceResult(model={self.model!r}, images={len(self.images)}, layers={list(self.layers)}, "
            f"transforms={list(self.transforms)}, normalize={self.normalize!r})"
        )


# --------------------------------------------------------------------------------------------------- api


ImageInput = str | os.PathLike[str] | Any


def _output_node(net: Any) -> str | None:
    """The node whose value the model returns, when it is one tensor that depends on the image."""
    graph = net.graph
    output = next((n for n in graph.nodes if n.op == "output"), None)
    arg = None if output is None or not output.args else output.args[0]
    if isinstance(arg, torch.fx.Node) and arg in graph.carries and arg is not graph.input:
        node = str(graph.names[arg])
        return next((alias for alias, named in alias_nodes(net).items() if named == node), node)  # VGG16: pool5
    return None


def _labels(loaded: Any) -> list[str] | None:
    labels = getattr(loaded, "labels", None)
    return list(labels) if labels else None


def invariance(
    images: ImageInput | Sequence[ImageInput],
    model: str | LoadedModel | Session = "vgg16",
    *,
    layers: Sequence[str] | str | None = None,
    translate: tuple[float, float] | None = DEFAULT_RANGES["translate"],
    scale: tuple[float, float] | None = DEFAULT_RANGES["scale"],
    rotate: tuple[float, float] | None = DEFAULT_RANGES["rotate"],
    steps: int = 13,
    target: int | str | Sequence[int | str] | None = None,
    normalize: Distance = "unit",
    batch_size: int = 16,
    device: str | None = "auto",
    examples: int = 5,
    progress: ProgressOption = None,
) -> InvarianceResult:
    """Feature distances and class probability as images are translated, scaled and rotated (Fig. 5).

    For each image and transformation the image is transformed at ``steps`` values; for each layer the
    Euclidean distance between the original's and the transformed image's feature vectors (the layer's whole
    activation, flattened) is measured, and where the model classifies, the probability of the true class.

    Distances are normalised so that curves of different images and layers share one scale: Zeiler & Fergus
    plot, per layer, the "Euclidean distance between feature vectors from the original and transformed
    images" (Fig. 5, columns 2 and 3) for layers whose vectors differ in length and magnitude by orders of
    magnitude. With ``normalize="unit"`` (the default) each feature vector is first scaled to unit Euclidean
    length, so the distance is 0 for an unchanged representation and at most 2 (at most sqrt(2) for rectified,
    non-negative features, reached when the two share no active unit), whatever the layer's size or the image's
    contrast. ``"relative"`` divides the plain distance by the length of the original's vector; ``"none"``
    gives the plain distance.

    All transformed images (and the originals) go through the network in batches of ``batch_size``: one forward
    pass per batch keeps the requested layers and the model's output, stopping there.

    Args:
        images: picture files, PIL images or preprocessed ``(1, C, H, W)`` tensors.
        model: a model name, a loaded model or a :class:`~deconvviz.models.session.Session`.
        layers: the layers compared (names or aliases, low to high); default: the first of
            :func:`~deconvviz.core.layers.default_layers` and the model's output (``conv1_2`` and pool5 for VGG16's conv
            base; ``conv1`` and the 1000 class scores for SqueezeNet), like the paper's layers 1 and 7.
        translate: ``(start, end)`` vertical translation in pixels (positive moves the content down), or None
            to skip it.
        scale: ``(start, end)`` scale factors about the centre (1 is the original size), or None.
        rotate: ``(start, end)`` counter-clockwise rotation in degrees about the centre, or None.
        steps: values per transformation, evenly spaced, both ends included; the original (a shift or rotation
            of 0, a scale of 1) is added where the range holds it and the steps miss it.
        target: the true class (an index or a class name), one for all images or one per image; default: each
            untransformed image's top-1 class. Ignored when the model has no classifier.
        normalize: ``"unit"``, ``"relative"`` or ``"none"`` (see above).
        batch_size: transformed images per forward pass.
        device: where to run a model given by name (``"cpu"``, ``"cuda"``, ``"auto"``).
        examples: how many transformed versions of the first image to keep for the figure's first column.
        progress: ``progress(done, total, what)`` once before the work and after each batch (``done`` counts
            transformed images), ``"bar"`` for a tqdm bar, or None (see :mod:`deconvviz.analysis.progress`).

    Returns:
        An :class:`InvarianceResult`.

    Raises:
        AnalysisError: no images, no transformation, an empty range, a bad option or class.
        ImageError: a missing or unreadable picture.
        LayerNotFoundError: an unknown layer.

    Example:
        >>> r = dv.invariance(["cat.jpg", "coffee.jpg"], model="squeezenet1_1")  # doctest: +SKIP
        >>> fig, axes = r.figure()  # doctest: +SKIP
        >>> r.distances["rotate"]["conv1"].shape  # doctest: +SKIP
        torch.Size([2, 13])
    """
    if normalize not in _DISTANCES:
        raise AnalysisError(f"normalize must be one of {', '.join(_DISTANCES)}, got {normalize!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise AnalysisError(f"batch_size must be a whole number of at least 1, got {batch_size!r}")
    ranges = {"translate": translate, "scale": scale, "rotate": rotate}
    values: dict[str, tuple[float, ...]] = {}
    for name in TRANSFORMS:
        span = ranges[name]
        if span is None:
            continue
        if len(span) != 2:
            raise AnalysisError(f"the {name} range must be (start, end), or None to skip it, got {span!r}")
        values[name] = sweep(float(span[0]), float(span[1]), steps, name)
    if not values:
        raise AnalysisError("no transformation to sweep; give at least one of translate, scale and rotate")
    pictures = _as_list(images)
    if not pictures:
        raise AnalysisError("no images given; pass at least one picture")
    names = _names(pictures)
    current = session(model, device=device)
    inputs = [_preprocess(current, picture) for picture in pictures]  # every picture checked before any work
    net = current.net
    out_node = _output_node(net)
    if layers is None:
        found = default_layers(net, inputs[0])
        top = out_node if out_node is not None and out_node in net.layers else found[-1]
        chosen = list(dict.fromkeys([found[0], top]))
    else:
        chosen = choose_layers(net, layers, inputs[0])
    nodes = [net.resolve(layer) for layer in chosen]
    labels = _labels(current.model)
    if target is not None and (out_node is None or not class_count(current, inputs[0])):
        raise AnalysisError(
            f"model {current.name!r} gives no class scores, so there is no class for the target to follow; "
            "leave the class out (target= in Python, --class on the command line), or use a classifier such as "
            "squeezenet1_1"
        )
    wanted = list(chosen) + ([out_node] if out_node is not None else [])

    # Every run: (image, transform or None for the original, step), in batches of transformed tensors.
    jobs: list[tuple[int, str | None, int]] = []
    for i in range(len(inputs)):
        jobs.append((i, None, 0))
        for name, vals in values.items():
            jobs.extend((i, name, s) for s in range(len(vals)))
    features: dict[tuple[int, str | None, int], dict[str, Tensor]] = {}
    references: dict[int, dict[str, Tensor]] = {}
    logits: dict[tuple[int, str | None, int], Tensor] = {}
    distances = {
        name: {layer: torch.zeros(len(inputs), len(vals), dtype=torch.float64) for layer in chosen}
        for name, vals in values.items()
    }
    classified = False

    def transformed(job: tuple[int, str | None, int]) -> Tensor:
        i, name, s = job
        return inputs[i] if name is None else transform(inputs[i], name, [values[name][s]])

    done = 0
    with reporting(progress, "invariance") as report:
        report(0, len(jobs), "starting")
        out_dims: set[int] = set()  # the output's dimensions: class scores are (N, classes)
        job: tuple[int, str | None, int]
        for start in range(0, len(jobs), batch_size):
            chunk = jobs[start : start + batch_size]
            batch = torch.cat([transformed(job) for job in chunk])
            kept: dict[str, Tensor] = {}

            def visit(layer: str, act: Tensor, kept: dict[str, Tensor] = kept) -> None:
                kept[layer] = act.detach().reshape(act.shape[0], -1).clone()
                if layer == out_node:
                    out_dims.add(act.dim())

            net.visit_activations(batch, wanted, visit)
            for row, job in enumerate(chunk):
                i, kind, s = job
                if kind is None:
                    references[i] = {layer: kept[layer][row] for layer in chosen}
                else:
                    features[job] = {layer: kept[layer][row] for layer in chosen}
                if out_node is not None:
                    logits[job] = kept[out_node][row]
            # Distances as soon as both ends are known, so features do not pile up.
            for job in [j for j in features if j[0] in references]:
                i, kind, s = job
                assert kind is not None
                for layer in chosen:
                    distances[kind][layer][i, s] = feature_distance(
                        references[i][layer], features[job][layer][None], normalize
                    )[0]
                del features[job]
            done += len(chunk)
            report(done, len(jobs), names[chunk[-1][0]])

    probabilities: dict[str, Tensor] | None = None
    classes: tuple[tuple[int, str], ...] | None = None
    first = logits.get((0, None, 0))
    if (
        first is not None
        and out_dims == {2}
        and first.numel() >= 2
        and (labels is None or len(labels) == first.numel())
    ):
        classified = True
    if classified:
        count = int(first.numel())  # type: ignore[union-attr]
        originals = [logits[(i, None, 0)] for i in range(len(inputs))]
        targets = _targets(target, len(inputs), labels, count, originals, current.name)
        classes = tuple((t, labels[t] if labels else f"class {t}") for t in targets)
        probabilities = {}
        for name, vals in values.items():
            table = torch.zeros(len(inputs), len(vals), dtype=torch.float64)
            for i in range(len(inputs)):
                for s in range(len(vals)):
                    table[i, s] = logits[(i, name, s)].to(torch.float64).softmax(0)[targets[i]]
            probabilities[name] = table
    thumbs = _examples(current, inputs[0], values, examples)
    return InvarianceResult(
        model=current.name,
        images=tuple(names),
        layers=tuple(chosen),
        nodes=tuple(nodes),
        transforms=tuple(values),
        values=values,
        distances=distances,
        normalize=normalize,
        probabilities=probabilities,
        classes=classes,
        examples=thumbs,
    )


def _targets(
    target: int | str | Sequence[int | str] | None,
    count: int,
    labels: list[str] | None,
    classes: int,
    originals: Sequence[Tensor],
    model: str,
) -> list[int]:
    """Each picture's class: the one given for all, one per picture, or (None, ``"auto"``) its top-1."""
    chosen: list[int | str | None] = (
        [target] * count if target is None or isinstance(target, int | str) else list(target)
    )
    if len(chosen) != count:
        raise AnalysisError(f"give one target class for all images or one per image ({count}), got {len(chosen)}")
    found = []
    for which, out in zip(chosen, originals, strict=True):
        index = class_index(which, labels, classes, model, AnalysisError)
        found.append(int(out.argmax()) if index is None else index)
    return found


def _as_list(images: Any) -> list[Any]:
    if isinstance(images, str | os.PathLike | Tensor) or hasattr(images, "getbands"):
        return [images]
    return list(images)


def _names(pictures: Sequence[Any]) -> list[str]:
    names = []
    for i, picture in enumerate(pictures):
        names.append(Path(picture).name if isinstance(picture, str | os.PathLike) else f"image {i + 1}")
    return names


def _preprocess(current: Any, picture: Any) -> Tensor:
    x = current.preprocess(picture)
    if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[0] != 1:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise AnalysisError(f"expected each image as one preprocessed (1, C, H, W) tensor, got {shape}")
    return x


def example_values(values: Sequence[float], count: int) -> list[float]:
    """Up to ``count`` of ``values``, evenly spread from the first to the last (all of them when fewer)."""
    n = min(count, len(values))
    return [values[round(i * (len(values) - 1) / max(1, n - 1))] for i in range(n)]


def _examples(
    current: Any, x: Tensor, values: Mapping[str, tuple[float, ...]], count: int
) -> dict[str, tuple[Any, ...]]:
    """A few transformed versions of ``x`` per transformation, as small RGB arrays for the figure."""
    import numpy as np

    from deconvviz.viz.render import input_to_pil

    if count < 1:
        return {}
    to_image = getattr(current.model, "to_image", None)
    result: dict[str, tuple[Any, ...]] = {}
    for name, vals in values.items():
        picks = example_values(vals, count)
        batch = transform(x.detach().cpu(), name, picks)
        pictures: list[Image] = [input_to_pil(t, to_image, current.channel_order) for t in batch]
        result[name] = tuple(np.asarray(p.resize((64, 64))) for p in pictures)
    return result


__all__ = ["DEFAULT_RANGES", "TRANSFORMS", "InvarianceResult", "feature_distance", "invariance", "sweep", "transform"]
