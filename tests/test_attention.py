"""Attention-style CNNs: every node is a layer, ops without rules go through autograd, fields follow the pass.

A small 2026-style CNN (CBAM with ``amax`` and the classic ``torch.max(x, 1)[0]``, a SiLU depthwise block,
``nn.MultiheadAttention`` over the flattened positions, softmax attention pooling) must list every node
torchvision's ``get_graph_node_names`` lists, project at its last layer under all three methods (the
gradient equal to autograd; deconvnet and guided to the autograd reference that holds gates and softmax
weights), and its crops must hold the projections. Each new rule is checked against autograd in float64.
"""

from __future__ import annotations

import operator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from reference import feature_map, method_reference, relative_error, unit_seeds
from torch import nn
from torchvision.models.feature_extraction import get_graph_node_names

import deconvviz as dv
from deconvviz.core.capture import Call, TensorMeta, TupleMeta
from deconvviz.core.seeds import SeedError
from deconvviz.methods import get_method
from deconvviz.ops import fallback
from deconvviz.ops.base import MirrorContext

METHODS = ("deconvnet", "guided", "gradient")
TOLERANCE = 1e-6


class ChannelAttention(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // 2, 1)
        self.fc2 = nn.Conv2d(channels // 2, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1))))
        peak = self.fc2(F.relu(self.fc1(x.amax(dim=(2, 3), keepdim=True))))
        return x * torch.sigmoid(avg + peak)


class SpatialAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 7, padding=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True), torch.max(x, 1, keepdim=True)[0]], 1)
        return x * torch.sigmoid(self.conv(pooled))


class CBAM(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channel = ChannelAttention(channels)
        self.spatial = SpatialAttention()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.spatial(self.channel(x))


class DepthwiseBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.expand = nn.Conv2d(channels, 2 * channels, 1)
        self.act1 = nn.SiLU()
        self.dw = nn.Conv2d(2 * channels, 2 * channels, 3, padding=1, groups=2 * channels)
        self.act2 = nn.SiLU()
        self.project = nn.Conv2d(2 * channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.project(self.act2(self.dw(self.act1(self.expand(x)))))


class PositionAttention(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.mha = nn.MultiheadAttention(channels, num_heads=2, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        seq = x.flatten(2).transpose(1, 2)
        out, _ = self.mha(seq, seq, seq)
        return x + out.transpose(1, 2).reshape(b, c, h, w)


class AttentionNet(nn.Module):
    """CBAM, a SiLU depthwise block, self-attention over positions and softmax attention pooling."""

    def __init__(self, channels: int = 8, classes: int = 5) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, channels, 3, stride=2, padding=1)
        self.relu = nn.ReLU()
        self.cbam = CBAM(channels)
        self.block = DepthwiseBlock(channels)
        self.down = nn.Conv2d(channels, channels, 3, stride=2, padding=1)
        self.attn = PositionAttention(channels)
        self.conv_last = nn.Conv2d(channels, channels, 3, padding=1)
        self.score = nn.Conv2d(channels, 1, 1)
        self.head = nn.Linear(channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block(self.cbam(self.relu(self.stem(x))))
        x = self.conv_last(self.attn(self.down(x)))
        weights = torch.softmax(self.score(x).flatten(2), dim=-1)
        pooled = (x.flatten(2) * weights).sum(-1)
        return self.head(pooled)


def make_net(seed: int = 0) -> AttentionNet:
    torch.manual_seed(seed)
    return AttentionNet().eval().double()


@pytest.fixture(scope="module")
def net_and_input() -> tuple[AttentionNet, torch.Tensor]:
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    return make_net(), x


# ------------------------------------------------------------------------------------------- the test model


def test_every_node_torchvision_lists_is_a_layer(net_and_input) -> None:
    model, _ = net_and_input
    net = dv.DeconvNet(model)
    _, names = get_graph_node_names(model)
    graph = net.graph
    by_name = {name: node for node, name in graph.names.items()}
    assert set(names) <= set(by_name)  # the same trace, the same names
    carrying = [n for n in names if by_name[n] in graph.carries and by_name[n] is not graph.input]
    assert len(carrying) > 40
    assert net.layers == carrying  # the same nodes, in the same order: nothing after an attention op is lost
    assert {"cbam.spatial.amax", "cbam.spatial.max", "cbam.spatial.getitem", "attn.mha", "conv_last", "head"} <= set(
        net.layers
    )
    mirrors = net.mirrors()
    assert mirrors["cbam.spatial.amax"] == mirrors["cbam.spatial.max"] == mirrors["softmax"] == "rule"
    assert mirrors["attn.mha"] == "rule"


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_projects_at_the_last_layer_like_the_reference(net_and_input, method: str, unchanged) -> None:
    model, x = net_and_input
    state = unchanged(model)
    net = dv.DeconvNet(model)
    for layer in ("conv_last", "head"):
        activation = feature_map(model, x, layer)
        p = net.project(x, layer=layer, channel=[0, 2, 4], method=method)
        seeds = unit_seeds(activation, list(p.channels), list(p.positions))
        expected = method_reference(model, x, layer, seeds, method)
        assert expected.abs().max() > 0
        assert relative_error(p.image, expected) <= TOLERANCE, f"{layer} {method}"
    state.assert_same(model)


def test_projecting_a_tuple_valued_layer_names_its_items(net_and_input) -> None:
    model, x = net_and_input
    with pytest.raises(SeedError, match=r"layer 'attn\.mha' returns a tuple.*'attn\.getitem_4'") as info:
        dv.DeconvNet(model).project(x, layer="attn.mha", channel=0)
    assert "\n" not in str(info.value)


def _support(image: torch.Tensor) -> tuple[int, int, int, int]:
    mask = image.abs().sum(dim=0) > 0
    rows, cols = torch.nonzero(mask.any(dim=1)).flatten(), torch.nonzero(mask.any(dim=0)).flatten()
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


def _inside(support: tuple[int, int, int, int], box: tuple[int, int, int, int]) -> bool:
    return box[0] <= support[0] and box[1] <= support[1] and support[2] <= box[2] and support[3] <= box[3]


@pytest.mark.parametrize("method", ["deconvnet", pytest.param("guided", marks=pytest.mark.slow)])
def test_held_gates_keep_the_field_local_and_crops_hold_the_projection(net_and_input, method: str) -> None:
    model, x = net_and_input
    net = dv.DeconvNet(model)
    fields = dv.receptive_fields(net, ["cbam", "block", "down", "conv_last"], method=method)
    # CBAM's gates (a global pool and a channel max) are held: the field after them is the convolutions'
    assert not fields["cbam"].whole_image
    assert fields["block"].size == (fields["cbam"].size[0] + 4, fields["cbam"].size[1] + 4)
    assert not fields["down"].whole_image
    assert fields["conv_last"].whole_image  # attention over positions mixes them, held weights or not
    for layer in ("cbam", "block", "down"):
        p = net.project(x, layer=layer, channel=[0, 3], method=method)
        for image, (row, col) in zip(p.image, p.positions, strict=True):
            box = fields[layer].box(row, col, x.shape)
            assert _inside(_support(image), box), f"{layer} {method}: support outside the crop {box}"


def test_under_the_gradient_a_gates_global_input_widens_the_field(net_and_input) -> None:
    model, _ = net_and_input
    net = dv.DeconvNet(model)
    assert dv.receptive_fields(net, ["cbam"], method="gradient")["cbam"].whole_image
    assert not dv.receptive_fields(net, ["stem"], method="gradient")["stem"].whole_image


@pytest.fixture(scope="module")
def attention_model() -> str:
    name = "tiny-attention"
    dv.register_model(
        dv.ModelSpec(
            name=name,
            builder=lambda: make_net().float(),
            preprocessing=dv.Preprocessing(size=32),
            labels=[f"class {i}" for i in range(5)],
            description="a tiny CNN with CBAM, a depthwise block and attention",
        ),
        replace=True,
    )
    return name


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (36, 36, 3), dtype=np.uint8)).save(folder / f"photo{i}.png")
    return folder


@pytest.mark.slow
def test_report_and_occlusion_run_at_the_last_layers(attention_model: str, photos, tmp_path) -> None:
    from deconvviz.analysis.choose import receptive_boxes
    from deconvviz.viz.report import build_report

    build_report(photos, tmp_path / "report", model=attention_model, layers="down,conv_last", channels=2, k=2)
    assert (tmp_path / "report" / "index.html").exists()
    for layer in ("down", "conv_last"):
        result = dv.occlusion(photos / "photo0.png", model=attention_model, layer=layer, occluder=8, stride=8)
        assert result.projection is not None
        assert result.projection.image.abs().max() > 0
    session = dv.session(attention_model, device="cpu")
    x = session.preprocess(photos / "photo1.png")
    p = session.net.project(x, layer="down", channel=[0, 1, 2])
    boxes = receptive_boxes(session.net, p)
    assert boxes is not None
    for image, box in zip(p.image, boxes, strict=True):
        assert box is not None
        assert _inside(_support(image), box)


# ------------------------------------------------------------------------------------------------ new rules


def _ctx(op, args, kwargs, inputs, output, saved, values=()) -> MirrorContext:
    return MirrorContext(
        name="op",
        module=op if isinstance(op, nn.Module) else None,
        args=args,
        kwargs=kwargs,
        inputs=inputs,
        output=output,
        saved=saved,
        sample=torch.zeros(1, dtype=torch.long),
        values=list(values),
        op=op,
    )


def _mirror(method: str, op, args: tuple, kwargs: dict, carried: list[int]):
    """Run ``op`` through its rule under ``method`` as the engine does (capture, then mirror) on ``args``."""
    rules = get_method(method)
    key = type(op) if isinstance(op, nn.Module) else op
    rule = rules.rule(key)
    assert rule is not None
    assert not isinstance(rule, fallback.FallbackRule)
    call = Call(
        op if not isinstance(op, str) else (lambda s, *a, **k: getattr(s, op)(*a, **k)),
        args,
        kwargs,
        op if isinstance(op, nn.Module) else None,
        "op",
    )
    out, saved = rule.forward(call)
    metas = [TensorMeta.of(args[i]) for i in carried]
    described = tuple(metas[carried.index(i)] if i in carried else a for i, a in enumerate(args))
    output = TupleMeta.of(out) if isinstance(out, tuple) else TensorMeta.of(out)
    values = [args[i] for i in carried] if rule.needs_values(len(carried)) else []
    return rule, out, lambda signal: rule.mirror(_ctx(op, described, kwargs, metas, output, saved, values), signal)


def _autograd(fn, args: tuple, carried: list[int], signal) -> list[torch.Tensor]:
    leaves = [a.detach().clone().requires_grad_(True) if i in carried else a for i, a in enumerate(args)]
    out = fn(*leaves)
    if isinstance(out, tuple):
        out = out[0]
    return list(torch.autograd.grad(out, [leaves[i] for i in carried], signal))


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("op", [F.softmax, torch.softmax, "softmax"])
def test_softmax_is_exact_under_the_gradient_and_held_otherwise(op) -> None:
    x = _rand(1, 4, 3, 3)
    signal = _rand(1, 4, 3, 3, seed=1)
    _, _, mirror = _mirror("gradient", op, (x, 1), {}, [0])
    (got,) = mirror(signal)
    (expected,) = _autograd(lambda t, d: torch.softmax(t, d), (x, 1), [0], signal)
    assert torch.allclose(got, expected, rtol=1e-12, atol=1e-14)
    for method in ("deconvnet", "guided"):
        rule, _, mirror = _mirror(method, op, (x, 1), {}, [0])
        assert mirror(signal) == [None]
        assert rule.holds


def test_softmax_module_reads_its_dim() -> None:
    x, signal = _rand(1, 3, 5), _rand(1, 3, 5, seed=1)
    _, _, mirror = _mirror("gradient", nn.Softmax(dim=-1), (x,), {}, [0])
    (expected,) = _autograd(lambda t: torch.softmax(t, -1), (x,), [0], signal)
    assert torch.allclose(mirror(signal)[0], expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("method", METHODS)
def test_amax_splits_the_signal_among_ties_as_autograd_does(method: str) -> None:
    x = torch.relu(_rand(1, 4, 3, 3))  # zeros: ties in every column that is all negative
    x[0, :, 0, 0] = 0.0
    signal = _rand(1, 1, 3, 3, seed=1)
    for op in (torch.amax, "amax"):
        _, _, mirror = _mirror(method, op, (x,), {"dim": 1, "keepdim": True}, [0])
        (expected,) = _autograd(lambda t: torch.amax(t, dim=1, keepdim=True), (x,), [0], signal)
        assert torch.allclose(mirror(signal)[0], expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("keepdim", [False, True])
def test_max_over_a_dim_sends_the_values_signal_to_the_picked_index(keepdim: bool) -> None:
    x = _rand(1, 4, 3, 3)
    signal = _rand(1, 3, 3, seed=1) if not keepdim else _rand(1, 1, 3, 3, seed=1)
    for op in (torch.max, torch.min, "max"):
        _, out, mirror = _mirror("deconvnet", op, (x, 1, keepdim), {}, [0])
        assert isinstance(out, tuple)
        fn = torch.min if op is torch.min else torch.max
        (expected,) = _autograd(lambda t, d, k, fn=fn: fn(t, d, k), (x, 1, keepdim), [0], signal)
        (got,) = mirror([signal, None])
        assert torch.allclose(got, expected, rtol=1e-12, atol=1e-14)


def test_elementwise_max_of_two_maps_is_exact() -> None:
    a, b, signal = _rand(1, 2, 3, 3), _rand(1, 2, 3, 3, seed=2), _rand(1, 2, 3, 3, seed=1)
    _, _, mirror = _mirror("deconvnet", torch.max, (a, b), {}, [0, 1])
    got = mirror(signal)
    expected = _autograd(torch.max, (a, b), [0, 1], signal)
    for g, e in zip(got, expected, strict=True):
        assert torch.allclose(g, e, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize(
    ("op", "fn", "args", "carried"),
    [
        (torch.matmul, torch.matmul, ("a", "b"), [0]),
        (operator.matmul, operator.matmul, ("a", "b"), [1]),
        (torch.matmul, torch.matmul, ("a", "b"), [0, 1]),
        (torch.bmm, torch.bmm, ("a", "b"), [0]),
        (torch.einsum, lambda eq, p, q: torch.einsum(eq, p, q), ("bij,bjk->bik", "a", "b"), [1]),
        (torch.einsum, lambda eq, p, q: torch.einsum(eq, p, q), ("bij,bjk->bik", "a", "b"), [1, 2]),
    ],
)
def test_products_mirror_to_their_adjoint_or_the_product_rule(op, fn, args, carried) -> None:
    values = {"a": _rand(1, 3, 4), "b": _rand(1, 4, 5, seed=2)}
    real = tuple(values.get(a, a) for a in args)
    signal = _rand(1, 3, 5, seed=1)
    _, _, mirror = _mirror("deconvnet", op, real, {}, carried)
    got = mirror(signal)
    expected = _autograd(fn, real, carried, signal)
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        assert torch.allclose(g, e, rtol=1e-12, atol=1e-14)


def test_scaled_dot_product_attention_holds_its_weights() -> None:
    q, k, v = _rand(1, 2, 4, 3), _rand(1, 2, 4, 3, seed=2), _rand(1, 2, 4, 3, seed=3)
    signal = _rand(1, 2, 4, 3, seed=1)
    _, _, mirror = _mirror("gradient", F.scaled_dot_product_attention, (q, k, v), {}, [0, 1, 2])
    expected = _autograd(F.scaled_dot_product_attention, (q, k, v), [0, 1, 2], signal)
    for g, e in zip(mirror(signal), expected, strict=True):
        assert torch.allclose(g, e, rtol=1e-10, atol=1e-12)
    _, _, mirror = _mirror("deconvnet", F.scaled_dot_product_attention, (q, k, v), {}, [0, 1, 2])
    got = mirror(signal)
    weights = torch.softmax(q @ k.transpose(-2, -1) / 3**0.5, dim=-1)
    assert got[0] is None or float(got[0].abs().max()) == 0
    assert got[1] is None or float(got[1].abs().max()) == 0
    assert torch.allclose(got[2], weights.transpose(-2, -1) @ signal, rtol=1e-10, atol=1e-12)


def _held_mha(mha: nn.MultiheadAttention, x: torch.Tensor) -> torch.Tensor:
    """Self-attention over ``(N, L, E)`` written out, its attention weights detached (held)."""
    embed, heads = mha.embed_dim, mha.num_heads
    w, b = mha.in_proj_weight, mha.in_proj_bias
    n, length = x.shape[0], x.shape[1]

    def split(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(n, length, heads, -1).transpose(1, 2)

    q, k, v = (split(F.linear(x, w[i * embed : (i + 1) * embed], b[i * embed : (i + 1) * embed])) for i in range(3))
    weights = torch.softmax(q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5, dim=-1).detach()
    return mha.out_proj((weights @ v).transpose(1, 2).reshape(n, length, embed))


def test_multihead_attention_rule_holds_its_weights_or_is_exact() -> None:
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(6, num_heads=2, batch_first=True).double().eval()
    seq = _rand(1, 5, 6)
    signal = _rand(*seq.shape, seed=1)
    for method in METHODS:
        _, _, mirror = _mirror(method, mha, (seq, seq, seq), {}, [0, 1, 2])
        got = mirror([signal, None])
        leaf = seq.clone().requires_grad_(True)
        y = mha(leaf, leaf, leaf)[0] if method == "gradient" else _held_mha(mha, leaf)
        (expected,) = torch.autograd.grad(y, leaf, signal)
        total = sum(g for g in got if g is not None)
        assert torch.allclose(total, expected, rtol=1e-10, atol=1e-12), method
        if method != "gradient":
            assert got[0] is None  # queries and keys: held weights pass nothing
            assert got[1] is None


def test_a_five_dimensional_reshape_keeps_positions() -> None:
    class Radix(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            b, c, h, w = y.shape
            split = y.reshape(b, 2, c // 2, h, w)
            # split attention: the radix branches weighted by their softmax (the softmax alone sums to 1, whose
            # gradient is zero, so the comparison would be between rounding noises)
            return (torch.softmax(split, dim=1) * split).sum(dim=1)

    model = Radix().double().eval()
    x = _rand(1, 3, 12, 12)
    net = dv.DeconvNet(model)
    net.activations(x, ["conv"])
    fields = dv.receptive_fields(net, ["reshape", "softmax", "sum"], method="gradient")
    assert fields["reshape"] == fields["softmax"] == fields["sum"] == dv.receptive_field(net, "conv")
    p = net.project(x, layer="sum", channel=[0, 1], method="gradient")
    seeds = torch.zeros(2, *model(x).shape[1:], dtype=torch.float64)
    out = model(x)
    for i, (c, (r, q)) in enumerate(zip(p.channels, p.positions, strict=True)):
        seeds[i, c, r, q] = out[0, c, r, q]
    leaf = x.clone().requires_grad_(True)
    y = model(leaf)
    expected = torch.stack([torch.autograd.grad(y, leaf, s.unsqueeze(0), retain_graph=True)[0][0] for s in seeds])
    assert relative_error(p.image, expected) <= 1e-10


# ---------------------------------------------------------------------------------------------- the fallback


@torch.fx.wrap
def swish_beta(x: torch.Tensor) -> torch.Tensor:
    """A function without a rule (traced as one call)."""
    return x * torch.sigmoid(1.5 * x)


class Odd(nn.Module):
    """A module without a rule whose class is kept whole by a rule set below."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.erf(x) * x


class FallbackNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.unfold = nn.PixelUnshuffle(2)  # a torch.nn module without a rule
        self.conv2 = nn.Conv2d(16, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = swish_beta(self.conv(x))
        y = y.logaddexp(y * 0.5)  # a tensor method without a rule
        return self.conv2(self.unfold(y))


@pytest.mark.parametrize("method", METHODS)
def test_fallback_on_a_function_a_method_and_a_module(method: str, unchanged) -> None:
    model = FallbackNet().double().eval()
    x = _rand(1, 3, 8, 8)
    state = unchanged(model)
    net = dv.DeconvNet(model)
    mirrors = net.mirrors(method)
    assert mirrors["swish_beta"] == mirrors["logaddexp"] == mirrors["unfold"] == "autograd"
    assert net.layers[-1] == "conv2"
    p = net.project(x, layer="conv2", channel=[0, 3], method=method)
    out = model(x)
    seeds = unit_seeds(out.detach(), list(p.channels), list(p.positions))
    if method == "gradient":
        leaf = x.clone().requires_grad_(True)
        y = model(leaf)
        expected = torch.stack([torch.autograd.grad(y, leaf, s.unsqueeze(0), retain_graph=True)[0][0] for s in seeds])
    else:
        expected = method_reference(model, x, "conv2", seeds, method)
    assert relative_error(p.image, expected) <= 1e-10
    state.assert_same(model)


@torch.fx.wrap
def through_numpy(x: torch.Tensor) -> torch.Tensor:
    """An op autograd cannot differentiate (it leaves torch)."""
    return torch.from_numpy(x.detach().numpy() * 2.0) if not x.requires_grad else torch.from_numpy(x.numpy())


class NumpyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(through_numpy(self.conv(x)))


def test_an_op_autograd_cannot_mirror_is_one_line_naming_node_and_op() -> None:
    net = dv.DeconvNet(NumpyNet().eval())
    assert net.layers == ["conv", "through_numpy", "relu"]
    with pytest.raises(dv.UnsupportedOpError, match=r"node 'through_numpy'.*through_numpy.*register_rule") as info:
        net.project(torch.randn(1, 3, 8, 8), layer="relu", channel=0)
    assert "\n" not in str(info.value)


class Detaching(nn.Module):
    """Leaves torch quietly: a detach before NumPy, so autograd sees a constant where the output follows its input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 1e9:  # data-dependent: torch.fx keeps the module whole
            return x
        return torch.from_numpy(np.maximum(x.detach().numpy(), 0.0))


class Constant(nn.Module):
    """An output that truly does not depend on the input: its signal below is zero, and that is right."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 1e9:
            return x
        return torch.zeros_like(x)


class Around(nn.Module):
    def __init__(self, middle: nn.Module) -> None:
        super().__init__()
        self.conv, self.middle, self.top = nn.Conv2d(3, 4, 3), middle, nn.Conv2d(4, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.top(self.middle(self.conv(x)) + 0.5)


@pytest.mark.parametrize("method", ["deconvnet", "guided", "gradient"])
def test_an_op_that_detaches_is_one_line_not_a_blank_picture(method: str) -> None:
    torch.manual_seed(0)
    x = torch.randn(1, 3, 16, 16, dtype=torch.float64)
    net = dv.DeconvNet(Around(Detaching()).double().eval())
    with pytest.raises(dv.UnsupportedOpError, match=r"node 'middle'.*outside autograd's view.*register_rule") as info:
        net.project(x, layer="top", channel=0, method=method)
    assert "\n" not in str(info.value)
    constant = dv.DeconvNet(Around(Constant()).double().eval()).project(x, layer="top", channel=0, method=method)
    assert torch.count_nonzero(constant.image) == 0  # nothing below a constant reaches the input


def test_shape_only_arguments_carry_no_signal() -> None:
    class Gate(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.fc = nn.Conv2d(4, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            g = torch.sigmoid(self.fc(y.mean((2, 3), keepdim=True))).expand_as(y)
            z = y * g.type_as(y) + y.new_zeros(y.shape)
            return z.view_as(y)

    model = Gate().double().eval()
    net = dv.DeconvNet(model)
    graph = net.graph
    assert [graph.names[n] for n in graph.signal_inputs[graph.node("expand_as")]] == ["sigmoid"]
    assert graph.node("new_zeros") not in graph.carries
    assert net.mirrors("gradient")["expand_as"] == "rule"
    x = _rand(1, 3, 6, 6)
    p = net.project(x, layer="view_as", channel=[1], method="gradient")
    out = model(x)
    seeds = unit_seeds(out.detach(), list(p.channels), list(p.positions))
    leaf = x.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(model(leaf), leaf, seeds)
    assert relative_error(p.image, expected) <= 1e-10


def test_layers_command_says_which_layers_autograd_mirrors_and_which_fields_are_measured() -> None:
    from typer.testing import CliRunner

    from deconvviz.cli import app

    dv.register_model(
        dv.ModelSpec(
            name="tiny-fallback",
            builder=lambda: FallbackNet().eval(),
            preprocessing=dv.Preprocessing(size=16),
            description="a tiny net with ops that have no rule",
        ),
        replace=True,
    )
    result = CliRunner().invoke(app, ["layers", "--model", "tiny-fallback"])
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line for line in result.stdout.splitlines()[2:] if line.strip()}
    assert rows["conv"].split()[-1] == "rule"
    assert rows["swish_beta"].split()[-1] == "autograd"
    assert "(measured)" in rows["swish_beta"]
    assert rows["unfold"].split()[-1] == "autograd"
    assert "mirrored by autograd" in result.stdout


def test_the_fallbacks_table_is_the_rule_sets() -> None:
    deconvnet = fallback.registry_table("deconvnet")
    for fn in (F.relu, F.relu_, torch.Tensor.relu, F.selu_, F.celu_, F.silu, F.gelu):
        assert deconvnet[fn] == "rectifier", fn
    for fn in (torch.sigmoid, torch.Tensor.sigmoid, F.softmax, torch.Tensor.softmax):
        assert deconvnet[fn] == "gate", fn
    assert deconvnet[F.layer_norm] == "held_norm"
    assert deconvnet[F.scaled_dot_product_attention] == "held_attention"
    assert F.softmax not in fallback.registry_table("gradient")  # the gradient holds nothing


class TopK(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(2, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values = torch.topk(self.conv(x), 2, dim=1)[0]
        left, right = torch.split(values, 1, dim=1)
        return self.conv2(torch.cat([right, left], 1))


def test_tuple_outputs_without_a_rule_are_mirrored_through_their_indexing() -> None:
    model = TopK().double().eval()
    net = dv.DeconvNet(model)
    assert net.mirrors()["topk"] == "autograd"
    assert net.layers[-1] == "conv2"
    x = _rand(1, 3, 6, 6)
    p = net.project(x, layer="conv2", channel=[0, 1], method="gradient")
    seeds = unit_seeds(model(x).detach(), list(p.channels), list(p.positions))
    leaf = x.clone().requires_grad_(True)
    y = model(leaf)
    expected = torch.stack([torch.autograd.grad(y, leaf, s.unsqueeze(0), retain_graph=True)[0][0] for s in seeds])
    assert relative_error(p.image, expected) <= 1e-10


def test_asking_for_a_tuple_valued_layer_by_name_is_one_line(net_and_input) -> None:
    from deconvviz.analysis.choose import channel_widths
    from deconvviz.core.layers import channels_last, choose_layers, default_layers

    model, x = net_and_input
    net = dv.DeconvNet(model)
    with pytest.raises(SeedError, match=r"layer 'attn\.mha' returns a tuple") as info:
        channel_widths(net, x, ["conv_last", "attn.mha"])
    assert "\n" not in str(info.value)
    assert "choose one of its items instead ('attn.getitem_4', 'attn.getitem_5')" in str(info.value)  # as DeconvNet
    chosen = default_layers(net, x)
    assert "attn.mha" not in chosen
    assert not set(chosen) & set(net.held_layers())  # a held gate's projection is blank: never a default
    assert "cbam.channel.sigmoid" in net.held_layers()
    every = choose_layers(net, "all", x)  # what render --layers all draws: the tensor layers, the tuples' items
    assert not {"attn.mha", "cbam.spatial.max"} & set(every)
    tokens = {"attn.transpose", "attn.mha", "attn.getitem_4", "attn.getitem_5"}  # (N, positions, C): channels last
    assert channels_last(net) == tokens
    assert set(every) == {n for n, a in net.activations(x, net.layers).items() if isinstance(a, torch.Tensor)} - tokens


def test_the_explorer_gives_each_method_its_own_receptive_field_boxes(
    attention_model: str, photos: Path, tmp_path: Path
) -> None:
    """A held gate keeps the deconvnet's boxes local; under the gradient its global input widens them to the image."""
    pytest.importorskip("starlette")
    from deconvviz.explore.engine import Explorer

    with Explorer(attention_model, photos, device="cpu", state_root=tmp_path / "state") as explorer:
        assert explorer.scanner.wait(120)
        image = explorer.order[0]
        held = explorer.unit(image, "cbam", 0, None, "deconvnet")
        field = dv.receptive_fields(explorer.net, ["cbam"], method="deconvnet")["cbam"]
        assert held["box"] == [int(v) for v in field.box(*held["position"], (32, 32))]
        assert explorer.unit(image, "cbam", 0, None, "gradient")["box"] is None  # the whole picture
        local = explorer.topk("cbam", 0, "deconvnet")["hits"]
        whole = explorer.topk("cbam", 0, "gradient")["hits"]
        assert local
        assert all(hit["box"] is not None for hit in local)
        assert [hit["position"] for hit in whole] == [hit["position"] for hit in local]
        assert all(hit["box"] is None for hit in whole)


def test_scanning_a_layer_that_returns_a_tuple_names_its_items(attention_model: str, photos: Path) -> None:
    from deconvviz.core.seeds import SeedError

    with pytest.raises(SeedError, match=r"returns a max, not a tensor: choose one of its items instead \('cbam"):
        dv.top_k(photos, attention_model, layers=["cbam.spatial.max"], device="cpu")


def test_a_class_from_a_model_file_is_named_as_its_file_spells_it() -> None:
    from deconvviz.ops.fallback import USER_MODULE_PREFIX, describe_op

    mine = type("Inner", (nn.Module,), {"forward": lambda self, x: x, "__module__": f"{USER_MODULE_PREFIX}mynet_0f3a"})
    assert describe_op(mine()) == ("module Inner", "Inner")  # register_rule(Inner, rule) in that file's code
    assert describe_op(nn.Conv2d(1, 1, 1))[1] == "torch.nn.modules.conv.Conv2d"
