"""Every mirror rule against the autograd reference, on small nets built to exercise one op family each."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from reference import deconv_reference, relative_error, unit_seeds
from torch import nn

import deconvviz as dv

TOLERANCE = 1e-10  # float64 throughout


def _seeded(model: nn.Module, seed: int = 0) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator, dtype=p.dtype) * 0.5)
        for name, b in model.named_buffers():
            if name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=generator, dtype=b.dtype) + 0.5)
            elif name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=generator, dtype=b.dtype))
    return model.eval()


class ConvVariants(nn.Module):
    """Strided convs whose transposes need output padding, dilation, groups, 'same' with an even kernel."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, stride=2, padding=1)  # odd input: output_padding 0; even: 1
        self.b = nn.Conv2d(4, 4, 3, padding=2, dilation=2, groups=2)
        self.c = nn.Conv2d(4, 6, 4, padding="same")  # asymmetric padding
        self.d = nn.Conv2d(6, 6, 5, stride=3, padding="valid")
        self.e = nn.Conv2d(6, 4, 1, stride=2, bias=False)

    def forward(self, x):
        return self.e(self.d(torch.relu(self.c(self.b(self.a(x))))))


class Functional(nn.Module):
    """Functional forms of the ops, parameters read through get_attr, tensor methods, constants."""

    def __init__(self) -> None:
        super().__init__()
        self.w1 = nn.Parameter(torch.empty(5, 3, 3, 3))
        self.w2 = nn.Parameter(torch.empty(4, 5, 1, 1))
        self.fc = nn.Parameter(torch.empty(7, 4 * 3 * 5 + 5))

    def forward(self, x):
        x = F.conv2d(x, self.w1, padding=1)
        x = F.relu(x, inplace=True)
        x = F.max_pool2d(x, 3, stride=2, padding=1, ceil_mode=True)
        y = F.conv2d(x, self.w2)
        y = y.relu()
        y = F.avg_pool2d(y, 3, stride=2, padding=1, ceil_mode=True, count_include_pad=False)
        y = F.adaptive_avg_pool2d(y, (3, 5))
        pooled = x.mean((2, 3))  # a global average pool written as a mean
        y = y * 0.5 - y.sum(dim=1, keepdim=True) / 4
        flat = torch.cat([y.view(y.size(0), -1), pooled], dim=1)
        return F.linear(flat, self.fc)


class Pools(nn.Module):
    """Module pools: overlapping max windows, ceil mode, dilation, adaptive max, avg with a divisor override."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.max = nn.MaxPool2d(3, stride=2, padding=1, dilation=1, ceil_mode=True)
        self.dmax = nn.MaxPool2d(2, stride=1, dilation=2)
        self.amax = nn.AdaptiveMaxPool2d((3, None))
        self.avg = nn.AvgPool2d(2, stride=1, divisor_override=3)

    def forward(self, x):
        return self.avg(self.amax(self.dmax(self.max(self.relu(self.conv(x))))))


class Branches(nn.Module):
    """Batch norm, broadcast addition, subtraction, concatenation, flatten, linear with batch norm 1d."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.left = nn.Conv2d(4, 3, 1)
        self.right = nn.Conv2d(4, 2, 3, padding=1)
        self.fc = nn.Linear(5 * 4 * 4, 6)
        self.bn1 = nn.BatchNorm1d(6)
        self.drop = nn.Dropout(0.3)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        gate = x.mean(dim=(2, 3), keepdim=True)
        x = x + gate - x[:, :1] * 0  # broadcasting in both operands of the add
        x = F.adaptive_avg_pool2d(x, 4)
        both = torch.cat((self.left(x), torch.relu(self.right(x))), 1)
        return self.drop(self.bn1(self.fc(torch.flatten(both, 1))))


CASES = {
    "conv-variants-odd": (ConvVariants, 23, ["a", "b", "c", "d", "e"]),
    "conv-variants-even": (ConvVariants, 24, ["a", "c", "e"]),
    "functional": (Functional, 17, ["max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "sub", "cat", "linear"]),
    "pools": (Pools, 19, ["max", "dmax", "amax", "avg"]),
    "branches": (Branches, 10, ["bn", "add", "sub", "cat", "fc", "bn1", "drop"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.filterwarnings("ignore:Using padding=.same. with even kernel")
def test_rule_matches_reference(case: str) -> None:
    builder, side, layers = CASES[case]
    model = _seeded(builder().double())
    x = torch.randn(1, 3, side, side, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    net = dv.DeconvNet(model)
    assert set(layers) <= set(net.layers), f"missing layers: {set(layers) - set(net.layers)}"
    for layer in layers:
        activation = net.activations(x, [layer])[layer]
        channels = list(range(activation.shape[1]))[:3]
        for mode in ("max", "map"):
            p = net.project(x, layer=layer, channel=channels, mode=mode)
            positions = list(p.positions) if mode == "max" else [None] * len(channels)
            expected = deconv_reference(model, x, layer, unit_seeds(activation, channels, positions))
            assert expected.abs().max() > 0, f"{case} {layer}: degenerate case, nothing reached the input"
            error = relative_error(p.image, expected)
            assert error <= TOLERANCE, f"{case} {layer} {mode}: relative error {error:.2e}"


def test_float32_matches_float64_reference() -> None:
    model = _seeded(Pools())
    x = torch.randn(1, 3, 19, 19, generator=torch.Generator().manual_seed(4))
    p = dv.DeconvNet(model).project(x, layer="avg", channel=[0, 1, 2, 3])
    assert p.image.dtype == torch.float32
    activation = dv.DeconvNet(model.double()).activations(x.double(), ["avg"])["avg"]
    expected = deconv_reference(model.double(), x.double(), "avg", unit_seeds(activation, [0, 1, 2, 3], p.positions))
    assert relative_error(p.image, expected) <= 1e-5
