"""Mirror rules of modern CNN ops, checked against values worked out by hand on tiny inputs (float64).

Each net applies one op to the image itself; seeding the whole map makes the seed the op's output, so the
projection is the rule applied to that output, element by element: deconvnet ``relu(g)``, guided
``relu(g) * f'(x)``, gradient ``g * f'(x)``, with ``f'`` written out here in closed form.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import deconvviz as dv

X = torch.tensor([[[[-3.5, -1.5, -0.25, 0.5, 2.0, 7.0]]]], dtype=torch.float64)


def _sigmoid(x: Tensor) -> Tensor:
    return 1 / (1 + torch.exp(-x))


def _phi(x: Tensor) -> Tensor:  # the standard normal density and distribution function
    return torch.exp(-(x**2) / 2) / math.sqrt(2 * math.pi)


def _cdf(x: Tensor) -> Tensor:
    return 0.5 * (1 + torch.erf(x / math.sqrt(2)))


# name -> (forward as the net applies it, forward in closed form, derivative in closed form)
ACTIVATIONS: dict[str, tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]] = {
    "ReLU6": (nn.ReLU6(), lambda x: x.clamp(0, 6), lambda x: ((x > 0) & (x < 6)).double()),
    "hardtanh_": (
        lambda x: F.hardtanh(x, -1.0, 1.0, inplace=True),
        lambda x: x.clamp(-1, 1),
        lambda x: ((x > -1) & (x < 1)).double(),
    ),
    "LeakyReLU": (
        nn.LeakyReLU(0.1),
        lambda x: torch.where(x > 0, x, 0.1 * x),
        lambda x: torch.where(x > 0, torch.ones_like(x), torch.full_like(x, 0.1)),
    ),
    "ELU": (
        nn.ELU(),
        lambda x: torch.where(x > 0, x, torch.exp(x) - 1),
        lambda x: torch.where(x > 0, 1.0, torch.exp(x)),
    ),
    "GELU": (nn.GELU(), lambda x: x * _cdf(x), lambda x: _cdf(x) + x * _phi(x)),
    "silu": (
        F.silu,
        lambda x: x * _sigmoid(x),
        lambda x: _sigmoid(x) * (1 + x * (1 - _sigmoid(x))),
    ),
    "Hardswish": (
        nn.Hardswish(inplace=True),
        lambda x: x * (x + 3).clamp(0, 6) / 6,
        lambda x: torch.where(x < -3, 0.0, torch.where(x > 3, 1.0, (2 * x + 3) / 6)).double(),
    ),
    "Softplus": (nn.Softplus(), lambda x: torch.log1p(torch.exp(x)), _sigmoid),
    "Mish": (
        nn.Mish(),
        lambda x: x * torch.tanh(torch.log1p(torch.exp(x))),
        lambda x: (
            torch.tanh(torch.log1p(torch.exp(x))) + x * _sigmoid(x) * (1 - torch.tanh(torch.log1p(torch.exp(x))) ** 2)
        ),
    ),
}


class Apply(nn.Module):
    def __init__(self, fn: Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        self.fn = fn if isinstance(fn, nn.Module) else None
        self._fn = fn

    def forward(self, x: Tensor) -> Tensor:
        y = x * 1.0  # the op's input is an intermediate, as in a network
        return self.fn(y) if self.fn is not None else self._fn(y)


def _project(model: nn.Module, method: str) -> Tensor:
    net = dv.DeconvNet(model)
    layer = net.layers[-1]
    return net.project(X.clone(), layer=layer, channel=0, mode="map", method=method).image[0]


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_rectifiers_by_hand(name: str, unchanged) -> None:
    module, forward, slope = ACTIVATIONS[name]
    model = Apply(module).eval()
    state = unchanged(model)
    g = forward(X)  # the whole map seeds the activation itself
    expected = {"deconvnet": g.clamp(min=0), "guided": g.clamp(min=0) * slope(X), "gradient": g * slope(X)}
    for method, want in expected.items():
        got = _project(model, method)
        torch.testing.assert_close(got, want[0], rtol=1e-12, atol=1e-12, msg=f"{name} {method}")
    state.assert_same(model)


class Gate(nn.Module):
    """``x * sigmoid(x)`` written out, and a squeeze-and-excitation scale ``x * hardsigmoid(mean(x))``."""

    def __init__(self, squeeze: bool) -> None:
        super().__init__()
        self.squeeze = squeeze

    def forward(self, x: Tensor) -> Tensor:
        x = x * 1.0
        if self.squeeze:
            return x * F.hardsigmoid(x.mean((2, 3), keepdim=True))
        return x * torch.sigmoid(x)


def test_gate_is_held_for_deconvnet_and_guided_and_differentiated_for_gradient() -> None:
    s = _sigmoid(X)
    g = X * s
    held = g * s  # the signal goes back along the feature path only, scaled by the gate's forward value
    for method in ("deconvnet", "guided"):
        torch.testing.assert_close(_project(Gate(squeeze=False), method), held[0], rtol=1e-12, atol=1e-12)
    exact = g * (s + X * s * (1 - s))
    torch.testing.assert_close(_project(Gate(squeeze=False), "gradient"), exact[0], rtol=1e-12, atol=1e-12)


def test_squeeze_excitation_scale_is_held_for_deconvnet_and_guided() -> None:
    m = X.mean()  # -> 0.708333...; hardsigmoid = m / 6 + 1/2 inside (-3, 3)
    h = m / 6 + 0.5
    g = X * h
    for method in ("deconvnet", "guided"):
        torch.testing.assert_close(_project(Gate(squeeze=True), method), (g * h)[0], rtol=1e-12, atol=1e-12)
    # the gradient adds the gate's own path: d/dx_i sum_j g_j x_j h(m) = g_i h + h'(m) sum_j g_j x_j / n, where
    # h'(m) = 1/6; torch's hard-sigmoid backward uses the float32 value of 1/6 in every dtype
    one_sixth = float(torch.tensor(1.0, dtype=torch.float32) / 6)
    exact = g * h + one_sixth * (g * X).sum() / X.numel()
    torch.testing.assert_close(_project(Gate(squeeze=True), "gradient"), exact[0], rtol=1e-12, atol=1e-12)


class Norm(nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.norm = nn.LayerNorm(6) if kind == "layer" else nn.GroupNorm(1, 1)
        with torch.no_grad():
            self.norm.weight.fill_(1.5)
            self.norm.bias.fill_(-0.25)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x * 1.0)


@pytest.mark.parametrize("kind", ["layer", "group"])
def test_per_sample_statistics_are_held_for_deconvnet_and_guided(kind: str) -> None:
    model = Norm(kind).double().eval()
    mean, var = X.mean(), X.var(unbiased=False)
    sigma = torch.sqrt(var + 1e-5)
    xhat = (X - mean) / sigma
    g = 1.5 * xhat - 0.25
    for method in ("deconvnet", "guided"):
        torch.testing.assert_close(_project(model, method), (g * 1.5 / sigma)[0], rtol=1e-12, atol=1e-12)
    # the exact vjp of a normalisation over all n elements: (w g - mean(w g) - xhat mean(w g xhat)) / sigma
    wg = 1.5 * g
    exact = (wg - wg.mean() - xhat * (wg * xhat).mean()) / sigma
    torch.testing.assert_close(_project(model, "gradient"), exact[0], rtol=1e-10, atol=1e-12)


class Shuffle(nn.Module):
    """ShuffleNet's channel shuffle over 2 groups of 3 channels."""

    def forward(self, x: Tensor) -> Tensor:
        x = x * 1.0
        n, c, h, w = x.shape
        x = x.view(n, 2, c // 2, h, w)
        x = torch.transpose(x, 1, 2).contiguous()
        return x.view(n, c, h, w)


@pytest.mark.parametrize("method", ["deconvnet", "guided", "gradient"])
def test_channel_shuffle_sends_each_channel_back_where_it_came_from(method: str) -> None:
    x = torch.arange(1.0, 7.0, dtype=torch.float64).reshape(1, 6, 1, 1)
    net = dv.DeconvNet(Shuffle())
    # the output's channels are the input's 0, 3, 1, 4, 2, 5: output channel 1 comes from input channel 3
    for out_channel, in_channel in enumerate([0, 3, 1, 4, 2, 5]):
        p = net.project(x, layer=net.layers[-1], channel=out_channel, method=method)
        expected = torch.zeros(6, 1, 1, dtype=torch.float64)
        expected[in_channel] = in_channel + 1.0
        assert torch.equal(p.image[0], expected)


class FunctionalBatchNorm(nn.Module):
    """Batch norm called as a function with running statistics, as fused norm-and-activation layers do.

    ``eps`` is a power of two taken off the variances, so that ``var + eps`` is exactly 4 and 0.25 (torch
    2.11 refuses ``eps=0``).
    """

    EPS = 2.0**-20

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.5, -1.0], dtype=torch.float64))
        self.register_buffer("var", torch.tensor([4.0 - self.EPS, 0.25 - self.EPS], dtype=torch.float64))
        self.weight = nn.Parameter(torch.tensor([2.0, 3.0], dtype=torch.float64))
        self.bias = nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))

    def forward(self, x: Tensor) -> Tensor:
        return F.batch_norm(x * 1.0, self.mean, self.var, self.weight, self.bias, self.training, 0.1, self.EPS)


@pytest.mark.parametrize("method", ["deconvnet", "guided", "gradient"])
def test_functional_batch_norm_is_its_per_channel_scale(method: str) -> None:
    x = torch.tensor([[[[1.0, -3.0]], [[0.5, 2.0]]]], dtype=torch.float64)
    net = dv.DeconvNet(FunctionalBatchNorm())
    # output: channel 0 (x - 0.5) / 2 * 2 + 1 = [1.5, -2.5]; channel 1 (x + 1) / 0.5 * 3 - 2 = [7, 16]
    # scale: weight / sqrt(var) = [1, 6]
    p = net.project(x, layer=net.layers[-1], channel=[0, 1], mode="map", method=method)
    assert torch.equal(p.image[0], torch.tensor([[[1.5, -2.5]], [[0.0, 0.0]]], dtype=torch.float64))
    assert torch.equal(p.image[1], torch.tensor([[[0.0, 0.0]], [[42.0, 96.0]]], dtype=torch.float64))


class BatchStatistics(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return F.batch_norm(x * 1.0, None, None, training=True)


def test_functional_batch_norm_with_batch_statistics_is_refused(unchanged) -> None:
    model = BatchStatistics()
    state = unchanged(model)
    net = dv.DeconvNet(model)
    with pytest.raises(dv.UnsupportedOpError, match="batch statistics"):
        net.project(torch.ones(1, 2, 1, 2, dtype=torch.float64), layer=net.layers[-1], channel=0)
    state.assert_same(model)


class FusedNorm(nn.BatchNorm2d):
    """A batch norm fused with its activation, as timm's ``BatchNormAct2d``: ``act(drop(bn(x)))``."""

    def __init__(self, channels: int, act: nn.Module) -> None:
        super().__init__(channels)
        self.drop, self.act = nn.Identity(), act

    def forward(self, x: Tensor) -> Tensor:
        batch = self.training or self.running_var is None  # no running statistics: the batch's own
        x = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, batch, 0.0, self.eps)
        return self.act(self.drop(x))


class TwistedNorm(FusedNorm):
    """Holds a batch norm and an activation but computes something else with them."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x) * 2


def _fused_net(act: nn.Module, norm: type[FusedNorm] = FusedNorm) -> nn.Sequential:
    torch.manual_seed(3)
    net = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), norm(6, act), nn.Conv2d(6, 6, 3, padding=1), norm(6, nn.Identity())
    )
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, FusedNorm):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(-1.5, 1.5)  # negative scales too
                module.bias.uniform_(-0.5, 0.5)
    return net.eval().double()


@pytest.mark.parametrize(
    "act", [nn.SiLU(), nn.ReLU(inplace=True), nn.Hardswish(), nn.GELU(), nn.Tanh()], ids=lambda a: type(a).__name__
)
def test_a_fused_batch_norm_kept_whole_mirrors_as_its_parts(act: nn.Module, monkeypatch, unchanged) -> None:
    from reference import method_reference, relative_error

    from deconvviz.core import graph as graph_module
    from deconvviz.methods import get_method
    from deconvviz.ops.norm import NormActRule

    net = _fused_net(act)
    x = torch.randn(1, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    state = unchanged(net)
    whole = {}
    for kept in (True, False):  # kept whole, as timm asks for its own, and traced through
        monkeypatch.setattr(graph_module, "_timm_helpers", lambda kept=kept: ([FusedNorm] if kept else [], []))
        deconv = dv.DeconvNet(net)
        nodes = [n for n in deconv.graph.nodes if n.op == "call_module"]
        if kept:
            assert [type(get_method().for_node(n, deconv.graph.module(n))).__name__ for n in nodes[1::2]] == [
                "NormActRule",
                "NormActRule",
            ]
            assert isinstance(get_method("guided").for_node(nodes[1], net[1]), NormActRule)
        field = dv.receptive_field(deconv, "3")  # two 3x3 convolutions; the fused norms change nothing
        assert (field.size, field.stride, field.offset) == ((5, 5), (1, 1), (-2, -2))
        for method in ("deconvnet", "guided", "gradient"):
            p = deconv.project(x, "3", channel=[0, 5], mode="map", method=method)
            whole[kept, method] = p.image
            seeds = torch.zeros(2, 6, 8, 8, dtype=torch.float64)
            activation = net(x)
            seeds[0, 0], seeds[1, 5] = activation[0, 0], activation[0, 5]
            expected = method_reference(net, x, "3", seeds, method)
            assert relative_error(p.image, expected) <= 1e-12, (method, kept)
    for method in ("deconvnet", "guided", "gradient"):
        assert relative_error(whole[True, method], whole[False, method]) <= 1e-12
    state.assert_same(net)


def test_a_fused_batch_norm_that_computes_something_else_is_refused(monkeypatch) -> None:
    from deconvviz.core import graph as graph_module

    monkeypatch.setattr(graph_module, "_timm_helpers", lambda: ([TwistedNorm], []))
    net = _fused_net(nn.SiLU(), TwistedNorm)
    x = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    refusal = r"node '1': TwistedNorm .* does not compute act\(drop\(bn\(x\)\)\)"
    with pytest.raises(dv.UnsupportedOpError, match=refusal):
        dv.DeconvNet(net).project(x, "3", top=1)


def test_a_fused_batch_norm_with_batch_statistics_is_refused(monkeypatch) -> None:
    from deconvviz.core import graph as graph_module

    monkeypatch.setattr(graph_module, "_timm_helpers", lambda: ([FusedNorm], []))
    net = _fused_net(nn.SiLU())
    net[1].running_mean = net[1].running_var = None
    x = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    with pytest.raises(dv.UnsupportedOpError, match="batch norm without running statistics depends on the batch"):
        dv.DeconvNet(net).project(x, "3", top=1, method="guided")
