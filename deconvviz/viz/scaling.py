"""Display scaling: how a signed reconstruction becomes an 8-bit picture. The one definition every picture uses.

A reconstruction lives in the model's input space: signed values around zero, mostly zero outside the seeded
unit's receptive field, and heavy-tailed inside it (at VGG16's conv3_3 the single largest magnitude is tens of
times the 99.5th percentile). Three scalings are offered, by name:

- ``"robust"`` (the default): zero is mid-grey; the value that reaches black or white is the 97th percentile
  of the per-pixel magnitude (the largest ``|value|`` over the colour channels) taken over the
  reconstruction's *support* (the pixels that are not zero). About 3 % of the support saturates; the rest
  keeps its contrast instead of being squeezed towards grey by a few extreme pixels.
- ``"max"``: per-picture contrast normalisation: zero is mid-grey and the single largest magnitude
  reaches black or white (nothing saturates; deep layers come out mostly grey).
- ``"minmax"``: a plain linear stretch of the smallest value to black and the largest to white (zero is not
  kept at grey).

``"contrast"``, the name ``"max"`` had before, is still accepted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from deconvviz.errors import RenderError

Scale = Literal["robust", "max", "minmax"]
SCALES: tuple[str, ...] = ("robust", "max", "minmax")
"""The named scalings, the default first."""
DEFAULT_SCALE = "robust"
ROBUST_PERCENTILE = 97.0
"""The percentile of per-pixel magnitude over the support that ``"robust"`` maps to black and white."""
SUPPORT_TOLERANCE = 1e-6
"""A pixel is in the support when its magnitude exceeds this fraction of the largest one (float noise is not)."""
_ALIASES = {"contrast": "max"}

_DESCRIPTIONS = {
    "robust": "zero is mid-grey; the {p:g}th percentile of |value| over the reconstruction's support reaches "
    "black or white (about {s:g}% of the support saturates)",
    "max": "zero is mid-grey; the largest |value| reaches black or white (nothing saturates)",
    "minmax": "the smallest value is black, the largest white (a linear stretch; zero is not kept at grey)",
}


@dataclass(frozen=True)
class Scaling:
    """A display scaling, by name (see the module's description).

    Attributes:
        name: ``"robust"``, ``"max"`` or ``"minmax"``.
        percentile: for ``"robust"``, the percentile of per-pixel magnitude over the support that reaches
            black or white (0 < percentile <= 100; 100 is ``"max"``).

    Example:
        >>> Scaling.of("robust").name
        'robust'
        >>> Scaling.of("contrast").name  # the old name of "max"
        'max'
    """

    name: str = DEFAULT_SCALE
    percentile: float = ROBUST_PERCENTILE

    def __post_init__(self) -> None:
        if self.name not in SCALES:
            raise RenderError(f"scale must be one of {', '.join(SCALES)}; got {self.name!r}")
        if isinstance(self.percentile, bool) or not 0 < float(self.percentile) <= 100:
            raise RenderError(f"the robust scale's percentile must be in (0, 100], got {self.percentile!r}")

    @classmethod
    def of(cls, value: str | Scaling | None) -> Scaling:
        """A scaling from its name (``None`` is the default); a :class:`Scaling` is returned as it is.

        Raises:
            RenderError: an unknown name.
        """
        if value is None:
            return cls()
        if isinstance(value, Scaling):
            return value
        if not isinstance(value, str):
            raise RenderError(f"scale must be one of {', '.join(SCALES)}; got {value!r}")
        name = value.strip().lower()
        return cls(name=_ALIASES.get(name, name))

    def describe(self) -> str:
        """One sentence saying how values map to grey levels, for pages and figure captions."""
        return _DESCRIPTIONS[self.name].format(p=self.percentile, s=round(100 - self.percentile, 1))

    def to_dict(self) -> dict[str, Any]:
        """The scaling for a manifest: name, percentile (robust only) and the description."""
        found: dict[str, Any] = {"name": self.name}
        if self.name == "robust":
            found["percentile"] = float(self.percentile)
        found["description"] = self.describe()
        return found

    def range(self, image: Tensor) -> tuple[float, float]:
        """The values that become black and white for ``image`` (``(C, H, W)``, any colour order).

        Returns:
            ``(low, high)``; ``low == high`` for a blank image (shown all grey).
        """
        x = _finite(image)
        if self.name == "minmax":
            return float(x.min()), float(x.max())
        magnitude = x.abs().amax(dim=0)
        peak = float(magnitude.max())
        if peak <= 0:
            return 0.0, 0.0
        scale = peak
        if self.name == "robust" and self.percentile < 100:
            inside = magnitude[magnitude > peak * SUPPORT_TOLERANCE]
            scale = float(torch.quantile(inside, float(self.percentile) / 100.0))
            if scale <= 0:  # cannot happen for a non-empty support; guards against a degenerate quantile
                scale = peak
        return -scale, scale


def _finite(image: Tensor) -> Tensor:
    return torch.nan_to_num(image.detach().to("cpu", torch.float64), nan=0.0, posinf=0.0, neginf=0.0)


def support(image: Tensor) -> Tensor:
    """The pixels a reconstruction reaches: ``(H, W)`` booleans, True where some channel is not (nearly) zero.

    Args:
        image: ``(C, H, W)``.
    """
    magnitude = _finite(image).abs().amax(dim=0)
    return magnitude > float(magnitude.max()) * SUPPORT_TOLERANCE


def rgb_first(x: Tensor, channel_order: str) -> Tensor:
    """Reorder a ``(3, H, W)`` tensor from the model's colour order to red-green-blue.

    Raises:
        RenderError: ``channel_order`` is not a permutation of ``"RGB"``.
    """
    order = channel_order.upper() if isinstance(channel_order, str) else ""
    if sorted(order) != ["B", "G", "R"]:
        raise RenderError(f"channel_order must be a permutation of 'RGB' such as 'RGB' or 'BGR', got {channel_order!r}")
    if order == "RGB":
        return x
    return x[[order.index(c) for c in "RGB"]]


def to_rgb(image: Tensor, scale: str | Scaling | None = None, channel_order: str = "RGB") -> np.ndarray:
    """Make a reconstruction displayable: ``(C, H, W)`` signed values -> ``(H, W, 3)`` uint8 RGB.

    Args:
        image: ``(C, H, W)`` reconstruction (1 or 3 channels; other counts show their mean).
        scale: ``"robust"`` (default), ``"max"`` (each picture by its largest value), ``"minmax"``, or a
            :class:`Scaling`.
        channel_order: the model's colour order (``"RGB"`` or ``"BGR"``); the result is always RGB.

    Returns:
        ``(H, W, 3)`` uint8 array.

    Raises:
        RenderError: a bad ``scale`` or ``channel_order``, or not a single image.

    Example:
        >>> to_rgb(torch.zeros(3, 2, 2))[0, 0].tolist()
        [128, 128, 128]
    """
    scaling = Scaling.of(scale)
    if not isinstance(image, Tensor) or image.dim() != 3:
        shape = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
        raise RenderError(f"expected one image (C, H, W), got {shape}")
    x = _finite(image)
    if x.shape[0] == 3:
        x = rgb_first(x, channel_order)
    elif x.shape[0] != 1:
        x = x.mean(dim=0, keepdim=True)
    low, high = scaling.range(x)
    if high <= low:
        out = torch.full_like(x, 0.5)
    elif scaling.name == "minmax":
        out = (x - low) / (high - low)
    else:  # symmetric: zero is exactly mid-grey
        out = 0.5 + 0.5 * x / high
    out = out.clamp(0, 1)
    if out.shape[0] == 1:
        out = out.expand(3, -1, -1)
    return (out.permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)
