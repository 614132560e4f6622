"""Do the pictures depend on the model? Cascading and independent randomisation (Adebayo et al., NeurIPS 2018).

Adebayo et al. ("Sanity Checks for Saliency Maps") and Nie et al. (ICML 2018) showed that guided backprop
and deconvnet pictures can look almost the same when a network's top layers are re-initialised: such
pictures partly reconstruct the image rather than explain the unit. This check makes that visible for a
user's own model and image. On a copy of the model (the caller's is never touched), the weights of the
layers that feed the chosen unit are replaced by random ones, one layer at a time from the top down, and
after each step the same unit is projected again with each reverse pass (``mode="independent"``: one layer
randomised at a time, the others trained, so each layer's own share shows). Each reconstruction is compared
with the one from the trained model:

* Spearman rank correlation of the absolute values (summed over colour channels), as in the paper;
* the same without absolute values (the values summed over colour channels), the paper's second rank score:
  a map of the same smooth outline filled with other signs scores high above and near 0 here (the gradient's
  magnitude falls off from the middle of a unit's receptive field whatever the weights, Luo et al. 2016);
* SSIM (Wang et al., 2004: 11x11 Gaussian window, sigma 1.5, K1 = 0.01, K2 = 0.03) between the maps of
  absolute values, each scaled to 0..1 by its own maximum.

All three are taken within the box that the projected units' receptive fields cover together: outside it every
reconstruction is 0, and blank borders would count as agreement whatever the weights (at a shallow layer,
almost the whole picture).

Scores that stay near 1 while the weights are destroyed mean the picture does not depend on what was
learned. A second number, per reverse pass, is the mean pairwise rank correlation between the whole-map
reconstructions of several channels of the trained model for the same image: near 1, the channels' pictures
all show the image rather than what each unit detects.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn

from deconvviz.analysis.base import AnalysisError, AnalysisResult
from deconvviz.analysis.progress import ProgressOption, reporting
from deconvviz.core.deconvnet import DeconvNet
from deconvviz.core.layers import default_layers
from deconvviz.core.receptive import receptive_field
from deconvviz.errors import DeconvVizError, deprecated
from deconvviz.methods import PRESETS, get_method
from deconvviz.models.session import session

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from deconvviz.models.session import Session
    from deconvviz.models.specs import LoadedModel


# ------------------------------------------------------------------------------------------------ scores


def _ranks(values: Tensor) -> Tensor:
    """1-based ranks of a 1-D tensor, ties sharing their average rank (float64)."""
    order = torch.sort(values, stable=True).indices
    _, inverse, counts = torch.unique_consecutive(values[order], return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).to(torch.float64)
    average = ends - (counts.to(torch.float64) - 1) / 2  # mean of the 1-based positions start+1 .. end
    ranks = torch.empty_like(values, dtype=torch.float64)
    ranks[order] = average[inverse]
    return ranks


def spearman(a: Tensor, b: Tensor) -> float:
    """Spearman rank correlation of two equally sized tensors (flattened; ties get average ranks).

    Returns:
        The correlation, or NaN when either tensor is constant (its ranks carry no order).
    """
    x = _ranks(a.detach().reshape(-1).to(torch.float64).cpu())
    y = _ranks(b.detach().reshape(-1).to(torch.float64).cpu())
    x, y = x - x.mean(), y - y.mean()
    scale = float(x.norm() * y.norm())
    return float((x * y).sum()) / scale if scale > 0 else math.nan


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> Tensor:
    offsets = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(offsets**2) / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(a: Tensor, b: Tensor, *, data_range: float = 1.0, window: int = 11, sigma: float = 1.5) -> float:
    """Structural similarity of two 2-D maps (Wang et al., 2004), the mean over every full window position.

    Local means, variances and covariance are weighted by a ``window x window`` Gaussian of ``sigma``;
    ``C1 = (0.01 L)^2``, ``C2 = (0.03 L)^2`` with ``L = data_range``. Maps smaller than the window use a window
    of their smaller side.
    """
    x = a.detach().to(torch.float64).cpu()
    y = b.detach().to(torch.float64).cpu()
    if x.dim() != 2 or x.shape != y.shape:
        raise AnalysisError(f"ssim compares two 2-D maps of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    size = min(window, *x.shape)
    w = _gaussian_window(size, sigma)[None, None]
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2

    def blur(t: Tensor) -> Tensor:
        return torch.nn.functional.conv2d(t[None, None], w)[0, 0]

    mx, my = blur(x), blur(y)
    vx = blur(x * x) - mx * mx
    vy = blur(y * y) - my * my
    cxy = blur(x * y) - mx * my
    index = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return float(index.mean())


def saliency_map(reconstruction: Tensor) -> Tensor:
    """``(C, H, W)`` -> ``(H, W)`` float64: absolute values summed over colour channels."""
    return reconstruction.detach().to(torch.float64).abs().sum(dim=0)


def signed_spearman(reference: Tensor, other: Tensor) -> float:
    """Spearman rank correlation of two reconstructions ``(C, H, W)``, their values summed over colour, signs kept."""
    return spearman(reference.detach().to(torch.float64).sum(dim=0), other.detach().to(torch.float64).sum(dim=0))


def compare(reference: Tensor, other: Tensor) -> tuple[float, float]:
    """``(spearman of |values|, ssim)`` between two reconstructions ``(C, H, W)``; NaN where one is blank."""
    a, b = saliency_map(reference), saliency_map(other)
    rho = spearman(a, b)
    top_a, top_b = float(a.max()), float(b.max())
    if top_a <= 0 or top_b <= 0:
        return rho, math.nan
    return rho, ssim(a / top_a, b / top_b)


def mean_pairwise_correlation(reconstructions: Tensor) -> float:
    """Mean Spearman correlation of |values| over every pair of reconstructions ``(K, C, H, W)``.

    Pairs with a blank reconstruction (NaN) are left out; NaN when no pair is left.
    """
    maps = [saliency_map(r) for r in reconstructions]
    scores = [spearman(maps[i], maps[j]) for i in range(len(maps)) for j in range(i + 1, len(maps))]
    scores = [s for s in scores if not math.isnan(s)]
    return sum(scores) / len(scores) if scores else math.nan


# ------------------------------------------------------------------------------------------------ result


@dataclass(frozen=True)
class SanityResult(AnalysisResult):
    """Reconstructions of one unit as the model's layers are randomised from the top down, with scores.

    Attributes:
        model: the model's name.
        layer: the layer as asked for; ``node`` its node name.
        channel: the projected unit's channel; ``position`` its ``(row, col)``; ``value`` its activation in the
            trained model (the seed's value at every step).
        methods: the reverse passes, one row each.
        steps: a label per column: ``"trained"``, then the layer randomised at that step (cumulative in the
            cascading mode, that layer alone in the independent one).
        randomised: per step, every module random at that step (top down).
        units: per step, the ``(row, col)`` projected: the trained unit's, or where randomisation has
            silenced it (activation 0), the nearest unit of the same channel that is still active.
        reconstructions: per method, ``(steps, C, H, W)`` reconstructions in the model's input space.
        spearman: per method, ``(steps,)`` float64 rank correlation of |values| with the trained model's.
        signed: per method, ``(steps,)`` float64 rank correlation of the values themselves (signs kept) with
            the trained model's; empty in a result made without it.
        ssim: per method, ``(steps,)`` float64 SSIM with the trained model's.
        channel_correlation: per method, the mean pairwise rank correlation between the whole-map
            reconstructions of ``channels_compared`` in the trained model.
        channels_compared: the channels of that comparison.
        box: ``(top, left, bottom, right)``, the input pixels any of the projected units can reach under any of
            the reverse passes (their receptive fields together); the scores compare the reconstructions there,
            and the figure shows that part. None: the whole picture.
        seed: the random seed of the new weights.
        mode: ``"cascading"`` (from the top layer down, each step keeping the layers above random) or
            ``"independent"`` (one layer at a time).
        input: the image as the model saw it, ``(H, W, 3)`` uint8.
        channel_order: the model's colour order, for display.
    """

    kind: ClassVar[str] = "sanity"

    model: str
    layer: str
    node: str
    channel: int
    position: tuple[int, int] | None
    value: float
    methods: tuple[str, ...]
    steps: tuple[str, ...]
    randomised: tuple[tuple[str, ...], ...]
    units: tuple[tuple[int, int] | None, ...]
    reconstructions: dict[str, Tensor] = field(repr=False)
    spearman: dict[str, Tensor] = field(repr=False)
    ssim: dict[str, Tensor] = field(repr=False)
    channel_correlation: dict[str, float]
    channels_compared: tuple[int, ...]
    seed: int
    input: np.ndarray | None = field(default=None, repr=False, compare=False)
    channel_order: str = "RGB"
    box: tuple[int, int, int, int] | None = None
    signed: dict[str, Tensor] = field(default_factory=dict, repr=False)
    mode: str = "cascading"

    def __repr__(self) -> str:
        return (
            f"SanityResult(model={self.model!r}, layer={self.layer!r}, channel={self.channel}, "
            f"position={self.position}, methods={list(self.methods)}, steps={len(self.steps)}, mode={self.mode!r})"
        )

    def _manifest(self) -> dict[str, Any]:
        def number(v: float) -> float | None:
            return None if math.isnan(v) else v

        return {
            "model": self.model,
            "layer": self.layer,
            "node": self.node,
            "channel": self.channel,
            "position": None if self.position is None else list(self.position),
            "value": self.value,
            "seed": self.seed,
            "mode": self.mode,
            "box": None if self.box is None else list(self.box),
            "scores": "spearman: rank correlation of |values| (summed over colour); signed: rank correlation of the "
            "values (summed over colour, signs kept); ssim: Gaussian 11x11, sigma 1.5; all within box (the units' "
            "receptive fields together)",
            "steps": [
                {
                    "label": label,
                    "randomised": list(modules),
                    "unit": None if unit is None else list(unit),
                    **{
                        method: {
                            "spearman": number(float(self.spearman[method][i])),
                            **({"signed": number(float(self.signed[method][i]))} if method in self.signed else {}),
                            "ssim": number(float(self.ssim[method][i])),
                        }
                        for method in self.methods
                    },
                }
                for i, (label, modules, unit) in enumerate(zip(self.steps, self.randomised, self.units, strict=True))
            ],
            "channel_correlation": {
                "channels": list(self.channels_compared),
                **{m: number(v) for m, v in self.channel_correlation.items()},
            },
        }

    def summary(self) -> str:
        """One line per method: the scores at the step that changes the picture most, and the channels' correlation.

        Cascading: the last step, every layer random. Independent: the layer whose randomisation alone changes the
        picture most (a blank picture first, then the lowest rank correlation).
        """
        if len(self.steps) < 2:
            return f"no layer with weights feeds {self.layer}: nothing to randomise"
        lines = []
        for method in self.methods:
            rank = [float(v) for v in self.spearman[method]]
            step = len(rank) - 1
            if self.mode == "independent" and len(rank) > 1:
                step = min(range(1, len(rank)), key=lambda i: (not math.isnan(rank[i]), rank[i], i))
            rho, s = rank[step], float(self.ssim[method][step])
            r = self.channel_correlation.get(method, math.nan)
            signs = f" (signs kept {float(self.signed[method][step]):.2f})" if method in self.signed else ""
            scores = (
                "blank (no signal reaches the input)"
                if math.isnan(rho)
                else f"rank correlation {rho:.2f}{signs}, SSIM {s:.2f}"
            )
            which = (
                ("the one layer randomised" if len(self.steps) == 2 else f"all {len(self.steps) - 1} layers randomised")
                if self.mode == "cascading"
                else f"{self.steps[step]} alone randomised changes it most"
            )
            moved, unit = "", self.units[step]
            if unit is not None and unit != self.units[0]:
                moved = f" (of unit ({unit[0]}, {unit[1]}): randomisation silenced the trained one)"
            lines.append(f"{method}: {which}: {scores}{moved}; channels' mean pairwise correlation {r:.2f}")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------------- api


def _parameterised(net: Any, layer: str) -> list[str]:
    """Names of the modules with their own parameters that the layer depends on, from the top down."""
    graph = net.graph
    target = graph.node(layer, net.aliases)
    names = []
    for node in graph.ancestors([target]):
        module = graph.module(node)
        if module is not None and any(True for _ in module.parameters(recurse=False)):
            names.append(str(node.target))
    return list(reversed(list(dict.fromkeys(names))))


def randomise(module: nn.Module, generator: torch.Generator) -> None:
    """Replace a module's own parameters by Gaussian noise of each tensor's own standard deviation."""
    with torch.no_grad():
        for p in module.parameters(recurse=False):
            spread = float(p.detach().float().std()) if p.numel() > 1 else float(p.detach().abs().max())
            noise = torch.randn(p.shape, generator=generator, dtype=torch.float64) * spread
            p.copy_(noise.to(dtype=p.dtype, device=p.device))


def _restore(module: nn.Module, weights: list[Tensor]) -> None:
    """Put a module's own parameters back as they were before :func:`randomise`."""
    with torch.no_grad():
        for p, kept in zip(module.parameters(recurse=False), weights, strict=True):
            p.copy_(kept)


def sanity(
    image: str | os.PathLike[str] | Any,
    model: str | LoadedModel | Session = "vgg16",
    *,
    layer: str | None = None,
    channel: int | None = None,
    method: Sequence[str] | str | None = None,
    seed: int = 0,
    compare_channels: int = 8,
    device: str | None = "auto",
    progress: ProgressOption = None,
    methods: Sequence[str] | str | None = None,
    mode: str = "cascading",
) -> SanityResult:
    """Cascading (or independent) randomisation of the weights under one unit, and how its reconstruction changes.

    The unit is the chosen channel's strongest activation in the trained model (default: the strongest
    channel). At every step the same unit is projected, seeded with its trained activation value, so only the
    weights differ; where randomisation has silenced it (guided and gradient passes give nothing through a
    unit whose ReLU is off), the nearest active unit of the same channel is projected instead (recorded in
    ``units``). New weights are Gaussian with each tensor's own standard deviation, drawn from a generator
    seeded with ``seed`` (the global random state is not used), on a deep copy of the model.

    Args:
        image: a picture file, a PIL image or a preprocessed ``(1, C, H, W)`` tensor.
        model: a model name, a loaded model or a :class:`~deconvviz.models.session.Session`.
        layer: the layer (name or alias); default: the deepest of :func:`~deconvviz.core.layers.default_layers`
            (``conv5_3`` for VGG16).
        channel: the channel; default: the one with the strongest activation.
        method: the reverse pass, or several to compare, one row each (default: ``deconvnet``, ``guided`` and
            ``gradient``), as ``method=`` names the reverse pass in every other call.
        seed: seed of the random weights.
        compare_channels: how many of the layer's strongest channels enter the mean pairwise correlation.
        device: where to run a model given by name.
        progress: ``progress(done, total, what)`` once before the work and after each step (the channels'
            comparison, the trained model, then each layer randomised), ``"bar"`` for a tqdm bar, or None
            (see :mod:`deconvviz.analysis.progress`).
        methods: the earlier spelling of ``method`` (warns once).
        mode: ``"cascading"``: layer after layer from the top down, the layers above staying random (Adebayo et
            al.'s main test); ``"independent"``: one layer at a time, every other layer trained.

    Returns:
        A :class:`SanityResult`.

    Raises:
        AnalysisError: a bad option; MethodError: an unknown method; LayerNotFoundError, SeedError as for
            projections.

    Example:
        >>> r = dv.sanity("cat.jpg", "vgg16", layer="conv5_3")  # doctest: +SKIP
        >>> print(r.summary())  # doctest: +SKIP
    """
    if methods is not None:
        deprecated("sanity(methods=...)", "sanity(method=...)")
        method = method if method is not None else methods
    chosen = list(PRESETS) if method is None else [method] if isinstance(method, str) else list(method)
    if not chosen:
        raise AnalysisError("no methods given; choose from deconvnet, guided and gradient")
    names = list(dict.fromkeys(get_method(m).name for m in chosen))  # unknown: fails here; a repeat counts once
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise AnalysisError(f"seed must be a whole number, got {seed!r}")
    if isinstance(compare_channels, bool) or not isinstance(compare_channels, int) or compare_channels < 2:
        raise AnalysisError(f"compare_channels must be at least 2, got {compare_channels!r}")
    if mode not in ("cascading", "independent"):
        raise AnalysisError(f"mode must be 'cascading' or 'independent', got {mode!r}")
    current = session(model, device=device)
    x = current.preprocess(image)
    net = current.net
    target = layer if layer is not None else default_layers(net, x)[-1]
    node = net.resolve(target)
    act = net.activations(x, [target])[target]
    if act.dim() < 2:
        raise AnalysisError(f"layer {target!r} has no channels to project")
    width = int(act.shape[1])
    strength = act[0].reshape(width, -1).amax(dim=1)
    if channel is None:
        channel = int(torch.sort(strength, descending=True, stable=True).indices[0])
    elif isinstance(channel, bool) or not isinstance(channel, int) or not 0 <= channel < width:
        raise AnalysisError(
            f"channel {channel!r} is out of range for layer {target!r} (0-{width - 1}); choose one in that range"
        )
    plane = act[0, channel].reshape(-1)
    flat = int(plane.argmax())
    spatial = tuple(act.shape[2:])
    cols = spatial[1] if len(spatial) == 2 else 1
    position = (flat // cols, flat % cols) if spatial else None
    value = float(plane[flat])
    seeds = torch.zeros_like(act[:1])
    seeds.view(1, width, -1)[0, channel, flat] = value

    order = _parameterised(net, target)  # the copy below has the same modules under the same names
    total = len(order) + 2  # the channels' comparison, the trained model, then one step per randomised layer
    with reporting(progress, "sanity") as report:
        report(0, total, "starting")
        # The channels' whole-map reconstructions in the trained model, for the mean pairwise correlation.
        compared = [int(c) for c in torch.sort(strength, descending=True, stable=True).indices[:compare_channels]]
        maps = torch.zeros((len(compared), *act.shape[1:]), dtype=act.dtype, device=act.device)
        for i, c in enumerate(compared):
            maps[i, c] = act[0, c]
        correlation = {m: mean_pairwise_correlation(net.project_seeds(x, target, maps, method=m).cpu()) for m in names}
        report(1, total, "channels compared")

        copied = copy.deepcopy(net.model)  # every randomisation happens on this copy
        twin = DeconvNet(copied, aliases=net.aliases)
        modules = dict(copied.named_modules())
        generator = torch.Generator().manual_seed(seed)
        labels = ["trained"]
        randomised: list[tuple[str, ...]] = [()]
        images: dict[str, list[Tensor]] = {m: [twin.project_seeds(x, target, seeds, method=m)[0].cpu()] for m in names}
        units: list[tuple[int, int] | None] = [position]
        report(2, total, "trained")
        for i, name in enumerate(order):
            # independent mode: this layer's trained weights, put back once its step is projected
            trained = (
                [p.detach().clone() for p in modules[name].parameters(recurse=False)] if mode == "independent" else None
            )
            randomise(modules[name], generator)
            labels.append(_label(name, net.aliases))
            randomised.append(tuple(order[: i + 1]) if mode == "cascading" else (name,))
            moved = _nearest_live(twin.activations(x, [target])[target][0, channel], flat, cols)
            step_seeds = torch.zeros_like(seeds)
            step_seeds.view(1, width, -1)[0, channel, moved] = value
            units.append((moved // cols, moved % cols) if spatial else None)
            for m in names:
                images[m].append(twin.project_seeds(x, target, step_seeds, method=m)[0].cpu())
            if trained is not None:
                _restore(modules[name], trained)
            report(i + 3, total, f"randomised {labels[-1]}")
    stacks = {m: torch.stack(images[m]) for m in names}
    # Outside the units' receptive fields every reconstruction is 0: compared there, two blank borders would
    # agree perfectly whatever the weights. The scores compare the part any unit can reach.
    box = _reach(net, target, names, units, (int(x.shape[-2]), int(x.shape[-1])))
    top, left, bottom, right = box if box is not None else (0, 0, *x.shape[-2:])
    cut = {m: stacks[m][..., top:bottom, left:right] for m in names}
    rho = {m: torch.tensor([compare(cut[m][0], r)[0] for r in cut[m]], dtype=torch.float64) for m in names}
    sim = {m: torch.tensor([compare(cut[m][0], r)[1] for r in cut[m]], dtype=torch.float64) for m in names}
    signed = {m: torch.tensor([signed_spearman(cut[m][0], r) for r in cut[m]], dtype=torch.float64) for m in names}
    picture = None
    try:
        import numpy as np

        from deconvviz.viz.render import input_to_pil

        picture = np.asarray(
            input_to_pil(x.detach().cpu(), getattr(current.model, "to_image", None), current.channel_order)
        )
    except (DeconvVizError, ValueError, TypeError):  # the picture is for the figure only
        picture = None
    return SanityResult(
        model=current.name,
        layer=target,
        node=node,
        channel=channel,
        position=position,
        value=value,
        methods=tuple(names),
        steps=tuple(labels),
        randomised=tuple(randomised),
        units=tuple(units),
        reconstructions=stacks,
        spearman=rho,
        ssim=sim,
        channel_correlation=correlation,
        channels_compared=tuple(compared),
        seed=seed,
        input=picture,
        channel_order=current.channel_order,
        box=box,
        signed=signed,
        mode=mode,
    )


def _reach(
    net: DeconvNet,
    layer: str,
    methods: Sequence[str],
    units: Sequence[tuple[int, int] | None],
    size: tuple[int, int],
) -> tuple[int, int, int, int] | None:
    """The box around every pixel the ``units`` can reach under ``methods``; None when that is the whole picture."""
    boxes = []
    for method in methods:
        field = receptive_field(net, layer, method=method)
        placed = [unit for unit in units if unit is not None]
        if field.whole_image or len(placed) < len(units):
            return None
        boxes += [field.box(row, col, size) for row, col in placed]
    top, left = min(b[0] for b in boxes), min(b[1] for b in boxes)
    bottom, right = max(b[2] for b in boxes), max(b[3] for b in boxes)
    if (top, left, bottom, right) == (0, 0, *size) or bottom <= top or right <= left:
        return None
    return (top, left, bottom, right)


def _nearest_live(plane: Tensor, flat: int, cols: int) -> int:
    """``flat`` if that unit of ``plane`` is active, else the nearest active one (row-major on ties)."""
    values = plane.reshape(-1)
    if float(values[flat]) > 0:
        return flat
    live = torch.nonzero(values > 0).reshape(-1)
    if live.numel() == 0:
        return flat
    rows, columns = live // cols, live % cols
    distance = (rows - flat // cols) ** 2 + (columns - flat % cols) ** 2
    return int(live[int(torch.argmin(distance))])  # argmin returns the first, i.e. row-major, on ties


def _label(module: str, aliases: dict[str, str]) -> str:
    """A module's name for a column title: the alias of the layer that follows it, if there is one."""
    for alias, node in aliases.items():
        prefix, _, last = node.rpartition(".")
        if prefix == module.rpartition(".")[0] and last.isdigit() and module.rpartition(".")[2].isdigit():
            if int(last) == int(module.rpartition(".")[2]) + 1:  # conv at features.N, its ReLU alias at N + 1
                return f"{alias}"
    return module


__all__ = [
    "SanityResult",
    "compare",
    "mean_pairwise_correlation",
    "randomise",
    "sanity",
    "signed_spearman",
    "spearman",
    "ssim",
]
