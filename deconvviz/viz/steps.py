"""The way down, drawn: one column per step of a projection, from the seed to the reconstruction.

Each column shows the signal after one mirrored op, summed over its channels, at its own resolution (so the map
visibly grows at every unpooling); zero is white, positive red, negative blue, each column at its own scale.
Below it, where it tells something, a detail: for an unpooling step a few pooling windows of the strongest
channel with the switches marked (every other position is exactly zero); for a rectifying step what the
rectification cut. The last column is the reconstruction as :func:`deconvviz.viz.to_rgb` shows it (the same
picture ``render`` writes). :func:`save_steps` writes the figure, one PNG per step and a manifest into a result
folder, through the one atomic writer.
"""

from __future__ import annotations

import io
import math
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from deconvviz.analysis.base import AnalysisResult, figure_bytes
from deconvviz.errors import RenderError
from deconvviz.io import clean_name
from deconvviz.viz.scaling import to_rgb
from deconvviz.viz.wrap import check_layout

if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Sequence

    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from deconvviz.core.steps import ProjectionSteps, Step

CMAP = "RdBu_r"
"""Signals are drawn with zero white, positive red and negative blue."""
PERCENTILE = 99.5
"""The percentile of ``|value|`` over a map's non-zero entries that reaches full colour (a few hot spots saturate)."""
DETAIL = 8
"""Side of the detail window of an unpooling column, in positions of the unpooled map."""
COLUMNS = 9
"""Steps per band of a saved figure (VGG16's conv3_3 has 17 steps: two bands)."""
RECTIFYING = ("rectify", "rectify + mask", "mask")
"""Step kinds that cut part of the signal: their detail shows what was cut."""


def plane(signal: Tensor) -> Tensor:
    """One seed's signal as a 2-D map: summed over channels for ``(C, H, W)``, a row for a vector."""
    signal = signal.detach().to("cpu", torch.float64)
    if signal.dim() == 3:
        return signal.sum(0)
    if signal.dim() == 2:
        return signal
    return signal.reshape(1, -1)


def limit(values: Tensor) -> float:
    """The colour limit of a map: the :data:`PERCENTILE` of ``|value|`` over its non-zero entries (1 if none)."""
    magnitude = values.abs().flatten()
    magnitude = magnitude[magnitude > magnitude.max() * 1e-9] if magnitude.numel() else magnitude
    if magnitude.numel() == 0:
        return 1.0
    found = float(torch.quantile(magnitude, PERCENTILE / 100)) if magnitude.numel() > 1 else float(magnitude[0])
    return found if found > 0 else 1.0


def colour(values: Tensor, vmax: float | None = None) -> np.ndarray:
    """A map as ``(H, W, 3)`` uint8 with :data:`CMAP`, symmetric around zero (white) at ``±vmax``."""
    from matplotlib import colormaps

    vmax = limit(values) if vmax is None else vmax
    scaled = (values.numpy() / vmax).clip(-1, 1) * 0.5 + 0.5
    return (colormaps[CMAP](scaled)[..., :3] * 255).round().astype(np.uint8)


def strongest_channels(signal: Tensor, count: int) -> list[int]:
    """The ``count`` channels of a ``(C, ...)`` signal with the most ``|value|``, strongest first."""
    if signal.dim() < 2 or count <= 0:
        return []
    mass = signal.detach().abs().flatten(1).sum(1)
    return [int(c) for c in torch.argsort(mass, descending=True, stable=True)[:count] if mass[c] > 0]


def detail_window(step: Step, i: int = 0, side: int = DETAIL) -> tuple[int, int, int, int, int] | None:
    """For an unpooling step: ``(channel, top, left, bottom, right)`` of the window its detail shows.

    The strongest channel, around its largest value, with ``top`` and ``left`` even (so 2x2 pooling windows
    fall inside it whole).
    """
    if step.switches is None or step.signal.dim() != 4:
        return None
    signal = step.signal[i].detach()
    channel = strongest_channels(signal, 1)
    if not channel:
        return None
    c = channel[0]
    height, width = signal.shape[-2:]
    flat = int(signal[c].abs().argmax())
    row, col = flat // width, flat % width
    side_h, side_w = min(side, height), min(side, width)
    top = max(0, min(height - side_h, (row - side_h // 2) // 2 * 2))
    left = max(0, min(width - side_w, (col - side_w // 2) // 2 * 2))
    return c, top, left, top + side_h, left + side_w


def region(steps: ProjectionSteps, i: int = 0, pad: float = 0.15) -> tuple[int, int, int, int] | None:
    """The part of the input the reconstruction of kept seed ``i`` reaches: ``(top, left, bottom, right)``.

    The bounding box of the last step's non-zero pixels, widened by ``pad`` of its size on every side and
    clipped to the input; None when the signal has no spatial map or covers (nearly) all of it.
    """
    last = steps.steps[-1].signal[i]
    if last.dim() != 3:
        return None
    magnitude = last.detach().abs().sum(0)
    rows = torch.nonzero(magnitude.amax(1) > magnitude.max() * 1e-6).flatten()
    cols = torch.nonzero(magnitude.amax(0) > magnitude.max() * 1e-6).flatten()
    height, width = magnitude.shape
    if rows.numel() == 0:
        return None
    top, bottom, left, right = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    grow = max(2, round(pad * max(bottom - top, right - left)))
    top, left, bottom, right = (
        max(0, top - grow),
        max(0, left - grow),
        min(height, bottom + grow),
        min(width, right + grow),
    )
    if (bottom - top) * (right - left) >= 0.8 * height * width:
        return None
    return top, left, bottom, right


def scaled(
    box: tuple[int, int, int, int], source: tuple[int, int], target: tuple[int, int]
) -> tuple[int, int, int, int]:
    """``box`` in a ``source``-sized map as the box covering the same part of a ``target``-sized map."""
    top, left, bottom, right = box
    fy, fx = target[0] / source[0], target[1] / source[1]
    t, l_ = int(top * fy), int(left * fx)
    b, r = max(t + 1, math.ceil(bottom * fy)), max(l_ + 1, math.ceil(right * fx))
    return t, l_, min(b, target[0]), min(r, target[1])


def title(steps: ProjectionSteps, step: Step, i: int = 0) -> str:
    """A column's label: what the op did, which node it undid, the signal's shape (long lines broken to fit)."""
    shape = "x".join(str(n) for n in step.shape)
    if not step.ops:
        position = steps.positions[i] if i < len(steps.positions) else None
        where = "" if position is None else f" ({position[0]}, {position[1]})"
        return f"seed\n{_fit(f'{steps.name_of(step.node)} ch {steps.channels[i]}{where}')}\n{shape}"
    if len(step.ops) == 1:
        return f"{_fit(step.kind)}\n{_fit(steps.name_of(step.ops[0]))}\n{shape}"
    counts = Counter(step.kinds)  # in the order the kinds first come
    kinds = " + ".join(kind if n == 1 else f"{n} x {kind}" for kind, n in counts.items())
    return f"sum of {len(step.ops)} branches\n{_fit(kinds)}\n{shape}"


def _fit(text: str, width: int = 26) -> str:
    """``text`` broken into lines of at most about ``width`` characters, after a dot, a space or an underscore."""
    if len(text) <= width:
        return text
    lines, line = [], ""
    for piece in re.split(r"(?<=[.\s_])", text):
        if line and len((line + piece).rstrip()) > width:
            lines.append(line.rstrip())
            line = piece.lstrip()
        else:
            line += piece
    lines.append(line.rstrip())
    return "\n".join(lines)


def _blank(ax: Axes) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def _frame(ax: Axes) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_color("#bbbbbb")
        spine.set_linewidth(0.6)


def _reconstruction(steps: ProjectionSteps, i: int, scale: str | None) -> np.ndarray:
    order = steps.projection.channel_order if steps.projection is not None else "RGB"
    return to_rgb(steps.steps[-1].signal[i], scale, channel_order=order)


def _draw_unpool_detail(ax: Axes, step: Step, i: int, window: tuple[int, int, int, int, int]) -> None:
    c, top, left, bottom, right = window
    values = step.signal[i, c, top:bottom, left:right].detach().to("cpu", torch.float64)
    ax.imshow(colour(values, limit(step.signal[i, c].detach().to("cpu", torch.float64))), interpolation="nearest")
    mask = step.switch_mask(i)
    assert mask is not None
    rows, cols = torch.nonzero(mask[c, top:bottom, left:right], as_tuple=True)
    ax.scatter(cols.numpy(), rows.numpy(), s=9, facecolors="none", edgecolors="black", linewidths=0.7)
    for k in range(1, max(bottom - top, right - left)):  # the grid of positions, 2x2 windows darker
        weight, tone = (0.8, "#888888") if k % 2 == 0 else (0.3, "#cccccc")
        if k < right - left:
            ax.axvline(k - 0.5, color=tone, linewidth=weight)
        if k < bottom - top:
            ax.axhline(k - 0.5, color=tone, linewidth=weight)
    zero = int(((values == 0) & ~mask[c, top:bottom, left:right]).sum())
    switched = int(mask[c, top:bottom, left:right].sum())
    ax.set_title(f"ch {c} up close: {switched} switches (o),\nthe other {zero} positions are 0", fontsize=6.5)


def _draw_cut_detail(ax: Axes, before: Step, step: Step, i: int, crop: Any) -> None:
    cut = crop(plane(before.signal[i]) - plane(step.signal[i]))
    kept = before.signal[i].detach().to(torch.float64)
    removed = (kept - step.signal[i].detach().to(torch.float64)).abs().sum()
    share = float(removed / kept.abs().sum()) if float(kept.abs().sum()) > 0 else 0.0
    ax.imshow(colour(cut), interpolation="nearest")
    ax.set_title(f"what was cut\n{share:.0%} of |signal|" if share else "what was cut\nnothing", fontsize=6.5)


def _check_seed(steps: ProjectionSteps, seed: Any) -> None:
    """Refuse a seed index that is not one of the kept seeds'."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < len(steps.seeds):
        raise RenderError(
            f"seed {seed!r} is out of range: the steps of {len(steps.seeds)} seed(s) were kept; "
            f"choose 0-{len(steps.seeds) - 1}"
        )


def steps_figure(
    steps: ProjectionSteps,
    *,
    seed: int = 0,
    channels: int = 0,
    detail: bool = True,
    columns: int | None = None,
    zoom: bool = True,
    size: float = 1.5,
    scale: str | None = None,
    title_text: str | None = None,
    only: Sequence[str] | None = None,
) -> tuple[Figure, Any]:
    """Draw the steps of one kept seed left to right, seed first, the reconstruction last.

    Args:
        steps: the steps (``projection.steps``).
        seed: which kept seed (an index into ``steps.seeds``).
        channels: also draw each step's strongest ``channels`` channels, one row each.
        detail: draw the detail row (switches of unpooling steps, what rectification cut).
        columns: steps per band; the figure wraps into several bands (default: all in one band).
        zoom: show every column cut to the same part of the picture: the box the reconstruction reaches
            (:func:`region`), at each step's own resolution. Off: whole maps.
        size: panel size in inches.
        scale: the display scaling of the reconstruction (see :mod:`deconvviz.viz.scaling`).
        title_text: the figure's title (default: layer, channel, unit and method).
        only: draw only the steps of these kinds (words of a step's kinds, ``["unpool", "transposed"]``), and
            the seed and the reconstruction; a deep network's hundreds of steps shrink to the ones asked for.

    Returns:
        ``(figure, axes)``, axes a 2-D array: per band a row of summed maps, then ``channels`` rows, then the
        detail row; the figure is not shown.

    Raises:
        RenderError: a seed or option out of range.
    """
    from matplotlib.patches import Rectangle

    from deconvviz.viz.canvas import Figure

    _check_seed(steps, seed)
    check_layout(columns, size)
    if isinstance(channels, bool) or not isinstance(channels, int) or channels < 0:
        raise RenderError(f"channels must be a whole number of at least 0, got {channels!r}")
    drawn = shown_steps(steps, only)
    count = len(drawn)
    per_band = count if columns is None else min(columns, count)
    bands = -(-count // per_band)
    rows_per_band = 1 + channels + (1 if detail else 0)

    def has_detail(step: Step) -> bool:
        before = steps.before(step)
        cut = step.kind in RECTIFYING and before is not None and before.shape == step.shape
        return detail_window(step, seed) is not None or cut

    # a band without a close-up keeps only a sliver of its detail row, not a blank row of panels
    details = [any(has_detail(s) for s in drawn[b * per_band : (b + 1) * per_band]) for b in range(bands)]
    ratios = [r for d in details for r in [1.0] * (1 + channels) + ([1.0 if d else 0.05] if detail else [])]
    fig = Figure(figsize=(size * per_band, size * 1.45 * sum(ratios) + 0.5), layout="constrained")
    axes = fig.subplots(rows_per_band * bands, per_band, squeeze=False, gridspec_kw={"height_ratios": ratios})
    for ax in axes.flat:
        ax.axis("off")
    area = region(steps, seed) if zoom else None
    source = tuple(steps.steps[-1].shape[-2:])
    for k, step in enumerate(drawn):
        band, col = divmod(k, per_band)
        row = band * rows_per_band
        ax = axes[row, col]
        ax.axis("on")
        _frame(ax)
        signal = step.signal[seed]
        spatial = signal.dim() == 3
        box = scaled(area, source, tuple(signal.shape[-2:])) if area is not None and spatial else None  # type: ignore[arg-type]
        window = detail_window(step, seed) if detail else None
        if box is not None and window is not None:  # the part shown holds the whole close-up, so its outline does
            box = (min(box[0], window[1]), min(box[1], window[2]), max(box[2], window[3]), max(box[3], window[4]))
        top, left = (box[0], box[1]) if box is not None else (0, 0)

        def cut(picture: Any, box: tuple[int, int, int, int] | None = box) -> Any:
            return picture if box is None else picture[box[0] : box[2], box[1] : box[3]]

        if k == count - 1 and spatial and signal.shape[0] in (1, 3):
            ax.imshow(cut(_reconstruction(steps, seed, scale)), interpolation="nearest")
            ax.set_title(title(steps, step, seed) + "\nas rendered", fontsize=7)
        else:
            values = plane(signal)
            ax.imshow(colour(cut(values), limit(values)), interpolation="nearest", aspect=None if spatial else "auto")
            ax.set_title(title(steps, step, seed), fontsize=7)
            shown = box if box is not None else (0, 0, *(int(n) for n in signal.shape[-2:]))
            if window is not None and tuple(window[1:]) != tuple(shown):  # no outline where it is the whole panel
                _, w_top, w_left, w_bottom, w_right = window
                ax.add_patch(
                    Rectangle(
                        (w_left - left - 0.5, w_top - top - 0.5),
                        w_right - w_left,
                        w_bottom - w_top,
                        fill=False,
                        edgecolor="black",
                        linewidth=0.8,
                    )
                )
        for r, c in enumerate(strongest_channels(signal, channels)):
            sub = axes[row + 1 + r, col]
            sub.axis("on")
            _frame(sub)
            values = signal[c].detach().to("cpu", torch.float64)
            sub.imshow(colour(cut(values), limit(values)), interpolation="nearest")
            sub.set_title(f"ch {c}", fontsize=6.5)
        if detail:
            sub = axes[row + rows_per_band - 1, col]
            before = steps.before(step)
            if window is not None:
                sub.axis("on")
                _frame(sub)
                _draw_unpool_detail(sub, step, seed, window)
            elif step.kind in RECTIFYING and before is not None and before.shape == step.shape:
                sub.axis("on")
                _frame(sub)
                _draw_cut_detail(sub, before, step, seed, cut)
    if title_text is None:
        position = steps.positions[seed]
        unit = "" if position is None else f" unit ({position[0]}, {position[1]})"
        layer = steps.layer if steps.layer == steps.node else f"{steps.layer} ({steps.node})"
        title_text = f"The way down: {layer} channel {steps.channels[seed]}{unit}, {steps.method}"
        if count < len(steps):
            title_text += f" ({count} of its {len(steps)} steps: {', '.join(only or [])})"
    fig.suptitle(title_text, fontsize=10)
    fig.supxlabel(
        "each column: the signal after one mirrored op, summed over channels, at its own resolution and scale; "
        "white = 0, red > 0, blue < 0; last: the reconstruction as rendered",
        fontsize=7,
        color="#555555",
    )
    return fig, axes


def shown_steps(steps: ProjectionSteps, only: Sequence[str] | None) -> list[Step]:
    """The steps ``only`` asks for (a step whose kinds, or ``sum``, hold one of its words), with the seed and the last.

    Raises:
        RenderError: ``only`` that is no list of words, or words that match no step (the kinds there are named).
    """
    listed = list(steps)
    if only is None:
        return listed
    if isinstance(only, str) or not all(isinstance(word, str) and word.strip() for word in only) or not only:
        raise RenderError(f"only= takes words of step kinds such as ['unpool', 'transposed'], got {only!r}")
    words = [word.strip().lower() for word in only]

    def named(step: Step) -> set[str]:  # its ops' kinds, and "sum" where branches meet (as the summary counts)
        return {*step.kinds, step.kind}

    wanted = [k for k, step in enumerate(listed) if any(w in kind.lower() for kind in named(step) for w in words)]
    if not [k for k in wanted if 0 < k < len(listed) - 1]:
        kinds = sorted({kind for step in listed[1:-1] for kind in named(step)})
        raise RenderError(
            f"no step of this projection is of the kind(s) {', '.join(words)!r}; its kinds: {', '.join(kinds)}"
        )
    keep = sorted({0, len(listed) - 1, *wanted})
    return [listed[k] for k in keep]


def _png(picture: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="PNG")
    return buffer.getvalue()


def _enlarged(picture: np.ndarray, at_least: int = 224) -> tuple[np.ndarray, int]:
    """``picture`` repeated ``factor`` times along both axes (nearest), so its longer side reaches ``at_least``."""
    factor = max(1, -(-at_least // max(picture.shape[:2])))
    return picture.repeat(factor, axis=0).repeat(factor, axis=1), factor


def step_file(step: Step) -> str:
    """The file name of a step's picture: ``steps/NN-kind-node.png``.

    ``node`` is the op the step undid, as the figure's column names it (the seeded node for the seed; where
    branches were summed, the node they meet at).
    """
    node = step.ops[0] if len(step.ops) == 1 else step.node
    return f"steps/{step.index:02d}-{clean_name(step.kind)}-{clean_name(node)}.png"


@dataclass(frozen=True)
class StepsFolder(AnalysisResult):
    """A projection's steps as a result folder: ``figure.png``, ``steps/NN-kind-node.png`` and ``manifest.json``.

    Each step's PNG is its summed map (:func:`plane`, coloured as in the figure, enlarged by a whole factor to at
    least 224 pixels, nearest neighbour), the last one the reconstruction as rendered. The manifest lists the
    steps (:meth:`~deconvviz.core.steps.ProjectionSteps.to_dict`) with, per step, its file, the enlargement
    factor and the colour limit, so a page can list, label and page through them.
    """

    kind: ClassVar[str] = "steps"
    steps: ProjectionSteps
    seed: int = 0
    scale: str | None = None
    channels: int = 0
    columns: int | None = COLUMNS
    only: tuple[str, ...] | None = None

    def figure(self, **kwargs: Any) -> tuple[Figure, Any]:
        """The steps figure (see :func:`steps_figure`)."""
        options = {
            "seed": self.seed,
            "scale": self.scale,
            "channels": self.channels,
            "columns": self.columns,
            "only": self.only,
        }
        return steps_figure(self.steps, **{**options, **kwargs})

    def _pictures(self) -> list[tuple[np.ndarray, int, float | None]]:
        out: list[tuple[np.ndarray, int, float | None]] = []
        for k, step in enumerate(self.steps):
            signal = step.signal[self.seed]
            if k == len(self.steps) - 1 and signal.dim() == 3 and signal.shape[0] in (1, 3):
                picture, factor = _enlarged(_reconstruction(self.steps, self.seed, self.scale))
                out.append((picture, factor, None))
                continue
            values = plane(signal)
            vmax = limit(values)
            picture, factor = _enlarged(colour(values, vmax))
            out.append((picture, factor, vmax))
        return out

    def _files(self) -> dict[str, bytes]:
        fig, _ = self.figure()
        files = {"figure.png": figure_bytes(fig)}
        for step, (picture, _factor, _vmax) in zip(self.steps, self._pictures(), strict=True):
            files[step_file(step)] = _png(picture)
        return files

    def _manifest(self) -> dict[str, Any]:
        data = self.steps.to_dict()
        for entry, step, (_picture, factor, vmax) in zip(data["steps"], self.steps, self._pictures(), strict=True):
            entry["file"] = step_file(step)
            entry["enlarged"] = factor
            entry["colour_limit"] = vmax
            entry["picture"] = "reconstruction" if vmax is None else "sum over channels"
        data["figure"] = "figure.png"
        data["seed"] = self.steps.seeds[self.seed]
        data["colours"] = f"{CMAP}: white = 0, red > 0, blue < 0, full colour at ±colour_limit"
        return {"steps": data}


def save_steps(
    steps: ProjectionSteps,
    directory: Path,
    *,
    seed: int = 0,
    scale: str | None = None,
    channels: int = 0,
    columns: int | None = COLUMNS,
    arguments: dict[str, Any] | None = None,
    only: Sequence[str] | None = None,
) -> Path:
    """Write ``steps`` (one kept seed) as a result folder, atomically (see :class:`StepsFolder`).

    Args:
        steps: the steps of a projection.
        directory: the folder to create (an earlier deconvviz result there is replaced).
        seed: which kept seed.
        scale: the display scaling of the reconstruction.
        channels: also draw each step's strongest ``channels`` channels in the figure.
        columns: steps per band of the figure.
        arguments: how the steps were asked for, recorded in the manifest.
        only: draw only the steps of these kinds in the figure (see :func:`steps_figure`); every step's
            picture is written all the same.

    Returns:
        The folder's path.

    Raises:
        ResultFolderError: ``directory`` holds something deconvviz did not write.
        RenderError: ``only`` matches no step.
    """
    _check_seed(steps, seed)
    chosen = None if only is None else tuple(only)
    shown_steps(steps, chosen)  # refused before anything is written
    return StepsFolder(steps, seed, scale, channels, columns, chosen).save(directory, arguments=arguments)


__all__ = [
    "StepsFolder",
    "colour",
    "limit",
    "plane",
    "save_steps",
    "shown_steps",
    "step_file",
    "steps_figure",
    "strongest_channels",
]
