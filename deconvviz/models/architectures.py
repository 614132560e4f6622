"""Architectures deconvviz builds itself, and the layer names (aliases) that belong to each architecture.

:class:`VGG16ConvBase` (VGG16's conv base as torchvision lays it out), :class:`EfficientNetLite0` (TensorFlow's
'same' padding) and torchvision's SqueezeNet 1.1; the alias tables map the names of each architecture's paper
(``conv5_3``, ``fire9``, ``stage5``) to qualified node names.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
from torch import Tensor, nn

__all__ = [
    "ALEXNET_ALIASES",
    "EFFICIENTNET_LITE0_ALIASES",
    "EFFICIENTNET_LITE0_STAGES",
    "SQUEEZENET1_1_ALIASES",
    "TORCHVISION_ALIASES",
    "VGG16_ALIASES",
    "EfficientNetLite0",
    "VGG16ConvBase",
    "build_squeezenet1_1",
]

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


EFFICIENTNET_LITE0_STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
"""EfficientNet-Lite0's inverted-residual stages: (blocks, kernel, first stride, expansion, in, out channels)."""


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
    (:data:`EFFICIENTNET_LITE0_STAGES`),
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


class _Fire(nn.Module):
    """SqueezeNet's Fire module: a 1x1 squeeze, then 1x1 and 3x3 expands side by side, their maps concatenated."""

    def __init__(self, inplanes: int, squeeze: int, expand1x1: int, expand3x3: int) -> None:
        super().__init__()
        self.squeeze = nn.Conv2d(inplanes, squeeze, kernel_size=1)
        self.squeeze_activation = nn.ReLU(inplace=True)
        self.expand1x1 = nn.Conv2d(squeeze, expand1x1, kernel_size=1)
        self.expand1x1_activation = nn.ReLU(inplace=True)
        self.expand3x3 = nn.Conv2d(squeeze, expand3x3, kernel_size=3, padding=1)
        self.expand3x3_activation = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        """The two expands of the squeezed map, concatenated along channels."""
        x = self.squeeze_activation(self.squeeze(x))
        return torch.cat(
            [self.expand1x1_activation(self.expand1x1(x)), self.expand3x3_activation(self.expand3x3(x))], 1
        )


class SqueezeNet1_1(nn.Module):
    """SqueezeNet 1.1 (Iandola et al. 2016, the 1.1 revision), without weights.

    Its modules, parameter names and forward are laid out as torchvision's ``squeezenet1_1``'s, so that state
    dicts and traced node names are the same; built here so that the offline model does not import torchvision.

    Args:
        classes: the classifier's outputs.
    """

    def __init__(self, classes: int = 1000) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=3, stride=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True),
            _Fire(64, 16, 64, 64),
            _Fire(128, 16, 64, 64),
            nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True),
            _Fire(128, 32, 128, 128),
            _Fire(256, 32, 128, 128),
            nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True),
            _Fire(256, 48, 192, 192),
            _Fire(384, 48, 192, 192),
            _Fire(384, 64, 256, 256),
            _Fire(512, 64, 256, 256),
        )
        self.classifier = nn.Sequential(
            nn.Dropout(p=0.5), nn.Conv2d(512, classes, kernel_size=1), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1)
        )

    def forward(self, x: Tensor) -> Tensor:
        """Class scores of an image batch: the classifier's pooled maps, one score per class."""
        return torch.flatten(self.classifier(self.features(x)), 1)


def build_squeezenet1_1() -> nn.Module:
    """The SqueezeNet 1.1 architecture, without weights."""
    return SqueezeNet1_1()


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

TORCHVISION_ALIASES: dict[str, dict[str, str]] = {
    "vgg16": {**VGG16_ALIASES, "fc6": "classifier.1", "fc7": "classifier.4", "fc8": "classifier.6"},
    "squeezenet1_1": SQUEEZENET1_1_ALIASES,
    "alexnet": ALEXNET_ALIASES,
}
