"""Every mirror rule against the autograd reference, on small nets built to exercise one op family each."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from reference import deconv_reference, relative_error, unit_seeds
from torch import nn

import deconvviz as dv
from deconvviz.ops import conv
from deconvviz.ops.conv import conv2d_transpose

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


def _winner_margin(windows: torch.Tensor) -> torch.Tensor:
    """Per window (last dim), the largest value minus the largest value below it (exact copies are one element)."""
    top = windows.max(dim=-1, keepdim=True).values
    below = torch.where(windows < top, windows, -torch.inf).max(dim=-1).values
    return top[..., 0] - below


def _pools_margin(model: Pools, x: torch.Tensor) -> tuple[float, float]:
    """Float64: the smallest winner margin over every window of ``Pools``' three max-pools, and the float32 error
    bound of the convolution feeding them (the pools only select values, so they add no rounding of their own)."""
    with torch.no_grad():
        pre = model.conv(x)
        # A float32 dot product of n terms is within n * 2**-24 * sum|w x| of the exact one (+1 term for the bias).
        magnitude = F.conv2d(x.abs(), model.conv.weight.abs(), padding=1) + model.conv.bias.abs()[:, None, None]
        bound = float(magnitude.max()) * 28 * 2.0**-24
        assert float(pre.min()) > bound, "a pre-activation near zero: ReLU ties and sign flips are possible"
        r = torch.relu(pre)
        channels = r.shape[1]
        first = F.unfold(F.pad(r, (1, 1, 1, 1), value=-torch.inf), 3, stride=2)  # MaxPool2d(3, 2, padding=1)
        a = model.max(r)
        assert a.shape[-1] == first.shape[-1] ** 0.5  # ceil mode adds no window at this size
        second = F.unfold(a, 2, dilation=2)  # MaxPool2d(2, stride=1, dilation=2)
        b = model.dmax(a)
        rows = b.shape[-2]
        spans = [(i * rows // 3, -(-(i + 1) * rows // 3)) for i in range(3)]  # AdaptiveMaxPool2d((3, None))
        margins = [
            _winner_margin(first.unflatten(1, (channels, 9)).transpose(2, 3)).min(),
            _winner_margin(second.unflatten(1, (channels, 4)).transpose(2, 3)).min(),
            *(_winner_margin(b[:, :, s:e, :].transpose(2, 3)).min() for s, e in spans),
        ]
    return float(min(margins)), bound


def test_float32_matches_float64_reference() -> None:
    model = _seeded(Pools())
    with torch.no_grad():
        model.conv.bias += 12  # every pre-activation positive: no ReLU zeros tied inside a pooling window
    x = torch.randn(1, 3, 19, 19, generator=torch.Generator().manual_seed(1))
    # The float32 run must take the same max-pool switches as the float64 reference, on any CPU's kernels: every
    # window's winner leads by more than twice the float32 error of the values compared.
    margin, bound = _pools_margin(copy.deepcopy(model).double(), x.double())
    assert margin > 2 * bound, f"test data has a near-tie in a pooling window: margin {margin:.1e}, bound {bound:.1e}"
    p = dv.DeconvNet(model).project(x, layer="avg", channel=[0, 1, 2, 3])
    assert p.image.dtype == torch.float32
    activation = dv.DeconvNet(model.double()).activations(x.double(), ["avg"])["avg"]
    expected = deconv_reference(model.double(), x.double(), "avg", unit_seeds(activation, [0, 1, 2, 3], p.positions))
    # Same switches, so only float32 rounding separates the two: a handful of transposed convolutions and
    # averages, each within a few hundred ulps (2**-24 ~ 6e-8); 1e-5 leaves room and still catches a wrong switch.
    assert relative_error(p.image, expected) <= 1e-5


GEOMETRIES = [
    dict(kernel=3, stride=1, padding=1, dilation=1, groups=1, size=(9, 9)),
    dict(kernel=3, stride=2, padding=1, dilation=1, groups=2, size=(10, 9)),
    dict(kernel=5, stride=3, padding="valid", dilation=1, groups=1, size=(17, 14)),
    dict(kernel=4, stride=1, padding="same", dilation=1, groups=1, size=(8, 11)),
    dict(kernel=3, stride=2, padding=2, dilation=2, groups=1, size=(13, 13)),
    dict(kernel=11, stride=4, padding=2, dilation=1, groups=1, size=(31, 35)),
]


@pytest.mark.filterwarnings("ignore:Using padding=.same. with even kernel")
@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("where", ["top-left", "bottom-right", "middle", "everywhere", "nowhere"])
def test_cropped_transposed_convolution_equals_the_full_one(monkeypatch, geometry, where) -> None:
    # Filtering only the non-zero box of a sparse signal must give exactly the full transposed convolution.
    g = dict(geometry)
    generator = torch.Generator().manual_seed(11)
    weight = torch.randn(6, 4 // g["groups"], g["kernel"], g["kernel"], generator=generator, dtype=torch.float64)
    x = torch.zeros(1, 4, *g["size"], dtype=torch.float64)
    out_shape = F.conv2d(
        x, weight, stride=g["stride"], padding=g["padding"], dilation=g["dilation"], groups=g["groups"]
    ).shape
    signal = torch.zeros(2, *out_shape[1:], dtype=torch.float64)
    rows, cols = out_shape[2], out_shape[3]
    box = {
        "top-left": (slice(0, 2), slice(0, 1)),
        "bottom-right": (slice(rows - 1, rows), slice(cols - 2, cols)),
        "middle": (slice(rows // 2, rows // 2 + 1), slice(cols // 2, cols // 2 + 1)),
        "everywhere": (slice(0, rows), slice(0, cols)),
        "nowhere": (slice(0, 0), slice(0, 0)),
    }[where]
    patch = signal[:, :, box[0], box[1]]
    signal[:, :, box[0], box[1]] = torch.randn(patch.shape, generator=generator, dtype=torch.float64)
    args = (signal, weight, g["size"], g["stride"], g["padding"], g["dilation"], g["groups"])
    monkeypatch.setattr(conv, "_CROP_BELOW", 0.0)  # never crop
    full = conv2d_transpose(*args)
    monkeypatch.setattr(conv, "_CROP_BELOW", 1.0)  # always crop
    cropped = conv2d_transpose(*args)
    assert full.shape == cropped.shape == (2, 4, *g["size"])
    assert torch.allclose(cropped, full, rtol=1e-12, atol=1e-12)
    # and both are the adjoint of the convolution: <conv(x), s> == <x, convT(s)>
    probe = torch.randn(1, 4, *g["size"], generator=generator, dtype=torch.float64)
    forward = F.conv2d(
        probe, weight, stride=g["stride"], padding=g["padding"], dilation=g["dilation"], groups=g["groups"]
    )
    assert torch.allclose(
        (forward * signal).sum(dim=(1, 2, 3)), (probe * cropped).sum(dim=(1, 2, 3)), rtol=1e-10, atol=1e-10
    )


def test_the_support_is_the_smallest_box_holding_every_non_zero() -> None:
    generator = torch.Generator().manual_seed(5)
    for _ in range(300):
        height, width = (int(n) for n in torch.randint(1, 12, (2,), generator=generator))
        signal = torch.zeros(2, 3, height, width)
        points = [
            tuple(int(torch.randint(0, n, (1,), generator=generator)) for n in (2, 3, height, width))
            for _ in range(int(torch.randint(0, 4, (1,), generator=generator)))
        ]
        for point in points:
            signal[point] = -1.5  # negative values count as much as positive ones
        rows, cols = [p[2] for p in points], [p[3] for p in points]
        expected = (min(rows), max(rows) + 1, min(cols), max(cols) + 1) if points else None
        assert conv._support(signal) == expected


def test_rules_for_an_optional_librarys_ops_wait_until_a_model_imports_it(monkeypatch) -> None:
    import sys
    import types

    from deconvviz.ops.registry import OpTable
    from deconvviz.ops.shape import IdentityRule

    table = OpTable()

    class Op(nn.Module):
        def forward(self, x):
            return x

    defined = []

    def define(module: types.ModuleType) -> None:
        defined.append(module)
        table.set_rule(module.Op, IdentityRule())

    table.defer("optional_library_for_a_test", define)
    assert table.entry(Op) is None  # not imported: nothing registered, and nothing imported to find out
    assert defined == []
    library = types.ModuleType("optional_library_for_a_test")
    library.Op = Op  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "optional_library_for_a_test", library)
    assert table.entry(Op) is not None  # imported by now: defined before the lookup
    assert table.entry(Op) is not None
    assert defined == [library]  # once

    class Mine(IdentityRule):
        pass

    fresh = OpTable()  # a registration made once the library is imported comes after the definition, and wins
    fresh.defer("optional_library_for_a_test", lambda module: fresh.set_rule(module.Op, IdentityRule()))
    fresh.set_rule(Op, Mine())
    found = fresh.entry(Op)
    assert found is not None
    assert isinstance(next(iter(found.rules.values())), Mine)
    saved = table.snapshot()
    table.restore({})
    assert table.find(Op, lambda e: bool(e.rules)) is not None  # a table put back defines it again
    table.restore(saved)
