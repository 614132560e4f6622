"""DeconvNet: values worked out by hand, equivalences between code paths, manners toward the model, errors."""

from __future__ import annotations

import re
import warnings

import pytest
import torch
import torch.nn.functional as F
import torchvision
from conftest import make_tiny_vgg
from reference import deconv_reference, relative_error, unit_seeds
from torch import nn
from torchvision.models.feature_extraction import get_graph_node_names

import deconvviz as dv
from deconvviz.core.deconvnet import SeedError
from deconvviz.core.graph import LayerNotFoundError
from deconvviz.ops.pool import MaxPool2dRule
from deconvviz.ops.registry import OPS
from deconvviz.ops.shape import IdentityRule


@pytest.fixture
def restore_rules():
    """Put the op registry back as it was after a test that registers rules globally."""
    saved = OPS.snapshot()
    yield
    OPS.restore(saved)


# ------------------------------------------------------------------------------------------ worked by hand


class HandNet(nn.Module):
    """1 channel: conv 2x2 (no bias) -> ReLU -> max-pool 2x2 stride 2 on a 5x5 input."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 2, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(2, 2)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([[[[1.0, -1.0], [0.0, 2.0]]]]))

    def forward(self, x):
        return self.pool(self.relu(self.conv(x)))


HAND_INPUT = torch.tensor(
    [
        [1.0, 0.0, 2.0, 1.0, 0.0],
        [0.0, 3.0, 0.0, 0.0, 1.0],
        [1.0, 0.0, 1.0, 2.0, 0.0],
        [0.0, 1.0, 0.0, 1.0, 3.0],
        [2.0, 0.0, 1.0, 0.0, 1.0],
    ]
).view(1, 1, 5, 5)


def test_hand_worked_projection() -> None:
    # conv[i, j] = x[i, j] - x[i, j+1] + 2 x[i+1, j+1]:
    #   row 0:  1-0+6=7   0-2+0=-2  2-1+0=1   1-0+2=3
    #   row 1:  0-3+0=-3  3-0+2=5   0-0+4=4   0-1+0=-1
    #   row 2:  1-0+2=3   0-1+0=-1  1-2+2=1   2-0+6=8
    #   row 3:  0-1+0=-1  1-0+2=3   0-1+0=-1  1-3+2=0
    # ReLU, then 2x2 pooling: top-left window {7,0,0,5} -> 7 at (0,0); top-right {1,3,4,0} -> 4 at (1,2);
    # bottom-left {3,0,0,3} -> 3 at (2,0) (first maximum); bottom-right {1,8,0,0} -> 8 at (2,3).
    net = dv.DeconvNet(HandNet().eval())
    activation = net.activations(HAND_INPUT, ["pool"])["pool"]
    assert activation.flatten().tolist() == [7.0, 4.0, 3.0, 8.0]

    p = net.project(HAND_INPUT, layer="pool", channel=0)  # the strongest unit: 8 at pool (1, 1)
    assert p.positions == ((1, 1),)
    assert p.activations.tolist() == [8.0]
    # Unpooled to conv (2, 3), rectified (8 > 0), then the transposed 2x2 filter puts 8 * w at rows 2-3, cols 3-4.
    expected = torch.zeros(1, 1, 5, 5)
    expected[0, 0, 2:4, 3:5] = 8.0 * torch.tensor([[1.0, -1.0], [0.0, 2.0]])
    assert torch.equal(p.image, expected)

    whole = net.project(HAND_INPUT, layer="pool", channel=0, mode="map")
    expected = torch.zeros(1, 1, 5, 5)
    for value, (r, c) in [(7.0, (0, 0)), (4.0, (1, 2)), (3.0, (2, 0)), (8.0, (2, 3))]:
        expected[0, 0, r : r + 2, c : c + 2] += value * torch.tensor([[1.0, -1.0], [0.0, 2.0]])
    assert torch.equal(whole.image, expected)


class OverlapNet(nn.Module):
    """Identity 1x1 conv -> ReLU -> 3x3 max-pool with stride 2: neighbouring windows overlap."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 1, bias=False)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(3, 2)
        with torch.no_grad():
            self.conv.weight.fill_(1.0)

    def forward(self, x):
        return self.pool(self.relu(self.conv(x)))


def test_overlapping_windows_sum_where_they_share_an_argmax() -> None:
    # A 5x5 input whose maximum 9 sits in the centre: all four 3x3 windows (stride 2) pick it.
    x = torch.ones(1, 1, 5, 5)
    x[0, 0, 2, 2] = 9.0
    net = dv.DeconvNet(OverlapNet().eval())
    p = net.project(x, layer="pool", channel=0, mode="map")
    expected = torch.zeros(1, 1, 5, 5)
    expected[0, 0, 2, 2] = 4 * 9.0  # four pooled values, each 9, all routed to the same input location
    assert torch.equal(p.image, expected)

    # An overwriting unpool (F.max_unpool2d) keeps only one of the four: the sum is what makes the difference.
    _, switches = F.max_pool2d(x, 3, 2, return_indices=True)
    overwritten = F.max_unpool2d(torch.full((1, 1, 2, 2), 9.0), switches, 3, 2, output_size=(5, 5))
    assert overwritten[0, 0, 2, 2] == 9.0
    assert not torch.equal(p.image, overwritten)


def test_overlapping_pool_on_alexnet_differs_from_an_overwriting_unpool() -> None:
    torch.manual_seed(0)
    model = torchvision.models.alexnet(weights=None).eval().double()
    x = torch.randn(1, 3, 96, 96, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    layer = "features.5"  # after the second 3x3/2 pooling
    summed = dv.DeconvNet(model).project(x, layer=layer, top=4, mode="map")

    class OverwriteUnpool(MaxPool2dRule):
        def mirror(self, ctx, signal):
            size = ctx.inputs[0].shape[-2:]
            return [F.max_unpool2d(signal, ctx.per_seed(ctx.saved), 3, 2, output_size=size)]

    overwriting = dv.get_method("deconvnet").with_rules({nn.MaxPool2d: OverwriteUnpool()})
    overwritten = dv.DeconvNet(model).project(
        x, layer=layer, channel=list(summed.channels), mode="map", method=overwriting
    )
    assert relative_error(overwritten.image, summed.image) > 1e-3


# ---------------------------------------------------------------------------------------------- code paths


def test_batched_equals_one_by_one_and_chunking_changes_nothing(image_16) -> None:
    model = make_tiny_vgg(dtype=torch.float64)
    x = image_16.double()
    net = dv.DeconvNet(model)
    for layer in ["features.3", "features.7", "classifier.1"]:
        batched = net.project(x, layer=layer, channel=[0, 2, 1, 3])
        for i, c in enumerate(batched.channels):
            single = net.project(x, layer=layer, channel=c)
            assert relative_error(batched.image[i], single.image[0]) <= 1e-12
            assert batched.positions[i] == single.positions[0]
        for max_batch in (3, 64):  # chunks of three, and all four seeds in one mirrored pass
            chunked = dv.DeconvNet(model, max_batch=max_batch).project(x, layer=layer, channel=[0, 2, 1, 3])
            assert relative_error(chunked.image, batched.image) <= 1e-12


def test_top_k_picks_the_strongest_channels_in_order(image_16) -> None:
    # float64: the ranking must not hinge on a float32 near-tie between channels that another CPU's kernels flip
    net = dv.DeconvNet(make_tiny_vgg(dtype=torch.float64))
    image_16 = image_16.double()
    activation = net.activations(image_16, ["features.6"])["features.6"][0]
    strength = activation.flatten(1).amax(1)
    p = net.project(image_16, layer="features.6", top=3)
    assert list(p.channels) == strength.argsort(descending=True)[:3].tolist()
    assert torch.equal(p.activations, strength[list(p.channels)])
    assert p.image.shape == (3, 3, 16, 16)
    ranked = strength.sort(descending=True).values
    assert (ranked[:3] - ranked[1:4]).min() > 1e-6 * ranked[0], "test data has a near-tie among the top channels"


def test_whole_map_is_the_sum_of_its_units_where_the_mirror_is_linear() -> None:
    # Down from the first pooling of AlexNet the signal stays non-negative, so the ReLU mirror is the identity
    # and the deconvnet is linear: projecting a map equals summing the projections of its units.
    torch.manual_seed(0)
    model = torchvision.models.alexnet(weights=None).eval().double()
    x = torch.randn(1, 3, 80, 80, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    net = dv.DeconvNet(model)
    activation = net.activations(x, ["features.2"])["features.2"]
    channel = int(activation[0].flatten(1).amax(1).argmax())
    whole = net.project(x, layer="features.2", channel=channel, mode="map")
    rows, cols = activation.shape[-2:]
    units = torch.stack(
        [
            net.project(x, layer="features.2", channel=channel, position=(r, c)).image[0]
            for r in range(rows)
            for c in range(cols)
        ]
    )
    assert relative_error(whole.image[0], units.sum(0)) <= 1e-12


def test_whole_map_is_the_sum_of_its_units_for_every_linear_rule() -> None:
    # With ReLU mirrored as the identity, the whole mirror is linear at any depth: this checks the other
    # rules (transposed convs, unpooling, batch norm, residual adds, concatenation) for linearity.
    linear = dv.get_method().with_rules({nn.ReLU: IdentityRule()}, name="linear")
    torch.manual_seed(0)
    for builder, layer in [
        (torchvision.models.resnet18, "layer2.0.relu_1"),
        (torchvision.models.squeezenet1_1, "features.4.cat"),
    ]:
        model = builder(weights=None).eval().double()
        x = torch.randn(1, 3, 64, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
        net = dv.DeconvNet(model)
        activation = net.activations(x, [layer])[layer]
        whole = net.project(x, layer=layer, channel=1, mode="map", method=linear)
        rows, cols = activation.shape[-2:]
        total = sum(
            net.project(x, layer=layer, channel=1, position=(r, c), method=linear).image[0]
            for r in range(rows)
            for c in range(cols)
        )
        assert relative_error(whole.image[0], total) <= 1e-10, layer


def test_project_units_uses_each_images_own_switches() -> None:
    # A batch of two and a batch of one run different convolution kernels: float64, so that a max-pool switch
    # cannot flip between the two and the reconstructions agree to rounding.
    generator = torch.Generator().manual_seed(7)
    batch = torch.randn(2, 3, 16, 16, generator=generator, dtype=torch.float64)
    net = dv.DeconvNet(make_tiny_vgg(dtype=torch.float64))
    first = net.project(batch[:1], layer="features.7", channel=[1, 5])
    second = net.project(batch[1:], layer="features.7", channel=[2])
    units = [(0, 1, *first.positions[0]), (1, 2, *second.positions[0]), (0, 5, *first.positions[1])]
    projected = net.project_units(batch, "features.7", units)
    assert relative_error(projected[0], first.image[0]) <= 1e-12
    assert relative_error(projected[1], second.image[0]) <= 1e-12
    assert relative_error(projected[2], first.image[1]) <= 1e-12


def test_layers_are_torchvision_node_names_in_order() -> None:
    model = torchvision.models.resnet18(weights=None).eval()
    layers = dv.DeconvNet(model).layers
    expected = [name for name in get_graph_node_names(model)[1] if name != "x"]
    assert layers == expected
    vgg = torchvision.models.vgg16(weights=None).eval()
    assert dv.DeconvNet(vgg).layers[:5] == ["features.0", "features.1", "features.2", "features.3", "features.4"]


class _Shared(nn.Module):
    """One module called twice, ops whose names end in digits, and repeats of each: the naming's corner cases."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_1 = nn.Conv2d(3, 3, 1)
        self.act = nn.ReLU()
        self.body = nn.Sequential(nn.Conv2d(3, 3, 1), nn.ReLU())

    def forward(self, x):
        a = self.act(self.conv_1(x))
        b = self.act(self.body(a) + a)  # the same ReLU again, then an add
        c = torch.relu(b) + torch.relu(a) + torch.relu(b)
        return torch.cat([c, a], 1).flatten(1)


@pytest.mark.parametrize(
    "build",
    [
        lambda: torchvision.models.resnet18(weights=None),
        lambda: torchvision.models.efficientnet_b0(weights=None),  # torchvision.ops' StochasticDepth
        lambda: torchvision.models.densenet121(weights=None),
        lambda: torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=False),
        _Shared,
    ],
    ids=["resnet18", "efficientnet_b0", "densenet121", "googlenet", "shared"],
)
def test_node_names_are_those_torchvisions_tracer_gives(build) -> None:
    import math

    from torchvision.models.feature_extraction import NodePathTracer

    from deconvviz.core.graph import trace

    ours = trace(build().eval())
    model = build().eval()  # a fresh one: tracing stores tensor constants on the model it traces
    tracer = NodePathTracer(autowrap_modules=(math, torchvision.ops))
    theirs = tracer.trace(model)
    assert [ours.names[n] for n in ours.graph.nodes] == [tracer.node_to_qualname.get(n, n.name) for n in theirs.nodes]


def test_aliases_resolve_like_node_names(tiny_vgg, image_16) -> None:
    net = dv.DeconvNet(tiny_vgg, aliases={"conv2_1": "features.6"})
    assert net.resolve("conv2_1") == "features.6"
    by_alias = net.project(image_16, layer="conv2_1", channel=3)
    by_name = net.project(image_16, layer="features.6", channel=3)
    assert by_alias.layer == "conv2_1"
    assert by_alias.node == "features.6"
    assert torch.equal(by_alias.image, by_name.image)


def test_works_in_inference_mode_without_autograd(tiny_vgg, image_16) -> None:
    net = dv.DeconvNet(tiny_vgg)
    with torch.inference_mode():
        p = net.project(image_16, layer="features.7", top=2)
    assert p.image.grad_fn is None
    assert not p.image.requires_grad
    outside = net.project(image_16, layer="features.7", top=2)
    assert torch.equal(p.image, outside.image)


def test_captured_activation_is_not_overwritten_by_an_in_place_relu(tiny_vgg, image_16) -> None:
    # features.0 (a conv) feeds ReLU(inplace=True): its captured output must keep its negative values.
    net = dv.DeconvNet(tiny_vgg)
    captured = net.activations(image_16, ["features.0", "features.2"])  # the ReLU runs between the two
    with torch.no_grad():
        direct = tiny_vgg.features[0](image_16)
    assert torch.equal(captured["features.0"], direct)
    assert (direct < 0).any()
    p = net.project(image_16, layer="features.0", channel=0, mode="map")
    expected = deconv_reference(tiny_vgg, image_16, "features.0", unit_seeds(direct, [0], [None]))
    # float32 on both sides, no pooling: the transposed convolution and autograd's convolution backward are
    # different kernels, so they agree to float32 rounding (a few ulps of 2**-24 per output), not bit for bit.
    assert relative_error(p.image, expected) <= 1e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_runs_in_the_models_dtype(dtype) -> None:
    model = make_tiny_vgg(dtype=dtype)
    p = dv.DeconvNet(model).project(torch.randn(1, 3, 16, 16), layer="features.7", top=2)
    assert p.image.dtype == dtype
    assert p.activations.dtype == dtype


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(image_16) -> None:
    cpu = make_tiny_vgg(dtype=torch.float64)
    gpu = make_tiny_vgg(dtype=torch.float64).cuda()
    a = dv.DeconvNet(cpu).project(image_16.double(), layer="features.7", top=4)
    b = dv.DeconvNet(gpu).project(image_16.double().cuda(), layer="features.7", top=4)
    assert b.image.device.type == "cpu"  # results come back as CPU tensors
    assert torch.allclose(a.image, b.image, atol=1e-10)


# ------------------------------------------------------------------------------------- manners and errors


def test_model_unchanged_after_success_and_after_errors(unchanged, image_16) -> None:
    model = make_tiny_vgg()
    model.train()  # deconvviz runs in eval mode and must hand the training flag back
    model.features[1].register_forward_hook(lambda *_: None)  # a user's own hook stays, and only it
    state = unchanged(model)
    net = dv.DeconvNet(model)
    net.project(image_16, layer="features.7", top=3)
    net.activations(image_16, ["features.3"])
    state.assert_same(model)
    for bad in [
        dict(layer="features.77", channel=0),
        dict(layer="features.7", channel=99),
        dict(layer="features.7", channel=0, position=(50, 0)),
    ]:
        with pytest.raises(ValueError, match=r"unknown layer|out of range|outside"):
            net.project(image_16, **bad)
        state.assert_same(model)
    with pytest.raises(SeedError):
        net.project(torch.randn(2, 3, 16, 16), layer="features.7", channel=0)
    state.assert_same(model)


def test_eval_mode_is_used_even_for_a_model_in_training_mode(image_16) -> None:
    model = make_tiny_vgg()
    reference = dv.DeconvNet(model).project(image_16, layer="classifier.1", channel=2)
    model.train()  # dropout would change the output in training mode
    again = dv.DeconvNet(model).project(image_16, layer="classifier.1", channel=2)
    assert torch.equal(reference.image, again.image)
    assert model.training


def test_unknown_layer_lists_close_names(tiny_vgg, image_16) -> None:
    net = dv.DeconvNet(tiny_vgg, aliases={"conv1_1": "features.1"})
    with pytest.raises(LayerNotFoundError, match=r"unknown layer 'features\.8'.*features\.") as info:
        net.project(image_16, layer="features.8", channel=0)
    assert isinstance(info.value, ValueError)
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="conv1_1"):
        net.project(image_16, layer="conv1_2", channel=0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(channel=8), r"channel 8 is out of range .* 8 channels \(0-7\)"),
        (dict(channel=-1), "channel -1 is out of range"),
        (dict(channel=[1, 40]), "channel 40 is out of range"),
        (dict(top=9), "top must be between 1 and 8"),
        (dict(top=0), "top must be between 1 and 8"),
        (dict(channel=1, top=2), "either channel= or top="),
        (dict(), "choose what to project"),
        (dict(channel=0, position=(4, 0)), r"position \(4, 0\) is outside the 4x4 map"),
        (dict(channel=0, mode="mean"), "mode must be 'max' or 'map'"),
        (dict(channel=0, mode="map", position=(0, 0)), "cannot be combined"),
    ],
)
def test_bad_seeds_are_value_errors(tiny_vgg, image_16, kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        dv.DeconvNet(tiny_vgg).project(image_16, layer="features.7", **kwargs)


def test_raw_pixels_and_non_finite_inputs_are_refused_in_one_line(tiny_vgg, image_16) -> None:
    net = dv.DeconvNet(tiny_vgg)
    raw = (image_16.clamp(0, 1) * 255).to(torch.uint8)
    with pytest.raises(SeedError, match=r"^expected a preprocessed float input, got a uint8 tensor .*preprocess"):
        net.project(raw, "features.7", top=1)
    for bad in (float("nan"), float("inf")):
        x = image_16.clone()
        x[0, 1, 3, 4] = bad
        with pytest.raises(SeedError, match=r"^the input holds NaN or infinite values"):
            net.project(x, "features.7", top=1)
        with pytest.raises(SeedError, match="NaN or infinite"):
            net.activations(x.expand(2, -1, -1, -1), ["features.7"])


class Erf(nn.Module):
    """An activation written with an op deconvviz has no rule for."""

    def forward(self, x):
        return x + torch.erf(x)


class WithErf(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3)
        self.act = Erf()
        self.conv2 = nn.Conv2d(2, 2, 1)

    def forward(self, x):
        return self.conv2(self.act(self.conv(x)))


class PassThrough(dv.Rule):
    def mirror(self, ctx, signal):
        return [signal]


def test_op_without_rule_is_mirrored_by_autograd_and_warns_once(unchanged, image_16) -> None:
    from deconvviz.ops import fallback

    model = WithErf().eval().double()
    x = image_16.double()
    state = unchanged(model)
    net = dv.DeconvNet(model)
    assert net.layers == ["conv", "act.erf", "act.add", "conv2"]  # nothing after erf is lost
    assert net.mirrors() == {"conv": "rule", "act.erf": "autograd", "act.add": "rule", "conv2": "rule"}
    fallback._WARNED.discard(torch.erf)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        p = net.project(x, layer="conv2", channel=0, method="gradient")
        net.project(x, layer="conv2", channel=1, method="gradient")
    caught = [w for w in caught if issubclass(w.category, fallback.FallbackWarning)]
    assert re.search(r"function torch\.erf .*'act\.erf'.*register_rule", str(caught[0].message))
    assert len(caught) == 1
    assert "\n" not in str(caught[0].message)
    # the gradient through erf is autograd's exactly
    leaf = x.clone().requires_grad_(True)
    out = model(leaf)
    seed = torch.zeros_like(out)
    row, col = p.positions[0]
    seed[0, 0, row, col] = out[0, 0, row, col]
    (expected,) = torch.autograd.grad(out, leaf, seed.detach())
    assert torch.allclose(p.image, expected, rtol=1e-10, atol=1e-12)
    state.assert_same(model)

    # A rule set with a rule for the module class makes it one opaque node, mirrored by that rule; the
    # default rule set (and so the default trace) is not affected.
    with_erf = dv.get_method().with_rules({Erf: PassThrough()}, name="erf-pass")
    assert "act" in net.layers_for(with_erf)
    assert "conv2" in net.layers_for(with_erf)
    p = net.project(x, layer="conv2", channel=0, method=with_erf)
    assert p.image.shape == (1, 3, 16, 16)
    assert p.method == "erf-pass"
    assert net.mirrors(with_erf)["act"] == "rule"
    state.assert_same(model)


def test_a_globally_registered_rule_joins_every_method(image_16, restore_rules) -> None:
    net = dv.DeconvNet(WithErf().eval())

    @dv.register_rule(Erf)
    class Registered(PassThrough):
        pass

    for method in dv.list_methods():
        assert "conv2" in net.layers_for(method)
        assert net.project(image_16, layer="conv2", channel=0, method=method).image.shape == (1, 3, 16, 16)
    assert isinstance(dv.get_rule(Erf, "guided"), Registered)


def test_untraceable_model_is_a_trace_error() -> None:
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 3)

        def forward(self, x):
            if x.sum() > 0:  # control flow on a tensor value cannot be traced
                return self.conv(x)
            return x

    with pytest.raises(dv.TraceError, match=r"cannot trace Branchy with torch\.fx") as info:
        dv.DeconvNet(Branchy().eval())
    assert "\n" not in str(info.value)


def test_a_broken_custom_rule_is_reported(tiny_vgg, image_16) -> None:
    class Wrong(dv.Rule):
        def mirror(self, ctx, signal):
            return [signal[..., :-1]]

    broken = dv.get_method().with_rules({nn.MaxPool2d: Wrong()})
    with pytest.raises(dv.UnsupportedOpError, match=r"returned shape .* expected"):
        dv.DeconvNet(tiny_vgg).project(image_16, layer="features.7", channel=0, method=broken)


def test_a_loaded_model_brings_aliases_image_conversion_and_colour_order(tiny_vgg, image_16) -> None:
    from types import SimpleNamespace

    def to_image(x):
        return "picture"

    loaded = SimpleNamespace(
        module=tiny_vgg,
        layers={"conv1": "features.1"},
        to_image=to_image,
        preprocessing=SimpleNamespace(channel_order="bgr"),
    )
    p = dv.DeconvNet(loaded).project(image_16, layer="conv1", channel=0)
    assert p.node == "features.1"
    assert p.channel_order == "BGR"
    assert p.to_image is to_image
    assert dv.DeconvNet(tiny_vgg).project(image_16, layer="features.1", channel=0).channel_order == "RGB"


class SharedStorage(nn.Module):
    """A ReLU whose input is still alive through a view: rectifying in place would corrupt the view."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        a = self.conv(x)
        view = a.flatten(1)  # shares a's storage
        return torch.cat([self.relu(a).flatten(1), view], dim=1)


def test_in_place_rectification_never_touches_a_tensor_that_is_still_read(image_16) -> None:
    torch.manual_seed(0)
    model = SharedStorage().eval()
    with torch.no_grad():
        conv = model.conv(image_16)
        expected = torch.cat([torch.relu(conv).flatten(1), conv.flatten(1)], dim=1)
    net = dv.DeconvNet(model)
    got = net.activations(image_16, ["cat"])["cat"]
    assert torch.equal(got, expected)
    assert (got[:, got.shape[1] // 2 :] < 0).any()  # the view kept its negative values
    assert torch.equal(image_16, image_16.clone())  # and the caller's input is never rectified


def test_visit_activations_sees_every_layer_once_in_order(tiny_vgg, image_16) -> None:
    net = dv.DeconvNet(tiny_vgg, aliases={"conv1": "features.1"})
    layers = ["features.6", "conv1", "features.0", "classifier.1"]
    kept = net.activations(image_16, layers)
    seen: list[tuple[str, torch.Tensor]] = []
    net.visit_activations(image_16, layers, lambda name, act: seen.append((name, act.clone())))
    assert [name for name, _ in seen] == ["features.0", "conv1", "features.6", "classifier.1"]
    for name, act in seen:
        assert torch.equal(act, kept[name]), name


def test_an_input_the_model_refuses_is_one_line_naming_the_node() -> None:
    net = dv.DeconvNet(make_tiny_vgg())
    wrong = (
        (torch.randn(1, 1, 32, 32), "features.0", "to have 3 channels"),
        (torch.randn(1, 3, 1, 1), "features.4", "too small"),
    )
    for x, node, said in wrong:
        with pytest.raises(
            dv.ForwardError, match=rf"^the model's forward pass fails at node '{node}' on an input"
        ) as info:
            net.project(x, net.layers[-1], top=1)
        assert said in str(info.value)
        assert "\n" not in str(info.value)
        if x.shape[1] != 3:  # no size would do: the fix is the input the model takes
            assert "give it the input it takes" in str(info.value)
            continue
        # too small: the message names the smallest side the model runs on, found by trying
        found = re.search(r"the smallest square input it runs on is (\d+) px: --size \1 \(or more\)", str(info.value))
        assert found, str(info.value)
        side = int(found.group(1))
        net.project(torch.randn(1, 3, side, side), net.layers[-1], top=1)
        with pytest.raises(dv.ForwardError):
            net.project(torch.randn(1, 3, side - 1, side - 1), net.layers[-1], top=1)


def test_finding_the_smallest_side_leaves_a_training_model_as_it_was() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(4), nn.MaxPool2d(4))
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(dv.ForwardError, match=r"the smallest square input it runs on is 16 px"):
        dv.DeconvNet(model).project(torch.randn(1, 3, 8, 8), "4", top=1)
    assert model.training
    assert model[1].training
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key  # the probing passes moved no running statistics


@pytest.mark.parametrize("model", ["vgg16", None, 3])
def test_deconvnet_of_something_else_than_a_module_is_one_line(model: object) -> None:
    with pytest.raises(dv.TraceError, match=r"^DeconvNet takes a torch\.nn\.Module or a loaded model, got") as info:
        dv.DeconvNet(model)
    if model == "vgg16":
        assert "deconvviz.DeconvNet(deconvviz.load_model('vgg16'))" in str(info.value)


def test_an_unknown_layer_is_named_with_the_models_name() -> None:
    from conftest import register_tiny_model

    register_tiny_model("tiny-named")
    with pytest.raises(LayerNotFoundError, match=r"unknown layer 'conv9' for tiny-named: did you mean"):
        dv.DeconvNet(dv.load_model("tiny-named")).project(torch.rand(1, 3, 32, 32), "conv9", top=1)
    with pytest.raises(LayerNotFoundError, match=r"unknown layer 'conv9' for TinyVGG: "):  # a bare module: its class
        dv.DeconvNet(make_tiny_vgg()).project(torch.rand(1, 3, 32, 32), "conv9", top=1)


def test_one_layer_name_alone_is_one_layer() -> None:
    from deconvviz.analysis.topk.options import ScanOptions

    net = dv.DeconvNet(make_tiny_vgg())
    x = torch.randn(1, 3, 32, 32)
    layer = net.layers[-1]
    assert list(net.activations(x, layer)) == [layer]
    seen: list[str] = []
    net.visit_activations(x, layer, lambda name, _a: seen.append(name))
    assert seen == [layer]
    assert ScanOptions.of(layer).layers == (layer,)


def test_seed_arguments_of_the_wrong_kind_and_the_models_return_are_one_line(tmp_path) -> None:
    net = dv.DeconvNet(make_tiny_vgg())
    x = torch.randn(1, 3, 32, 32)
    layer = net.layers[-1]  # the classifier: no map
    conv = [name for name, act in net.activations(x, net.layers).items() if act.dim() == 4][-1]
    with pytest.raises(SeedError, match=r"position= seeds a unit of a 2-D map, and layer .* has none; leave it out"):
        net.project(x, layer, channel=0, position=(0, 0))
    for kwargs, said in (
        ({"channel": 1.5}, "channel= takes a channel index or a list of them, got 1.5"),
        ({"channel": "a"}, "channel= takes a channel index or a list of them, got 'a'"),
        ({"channel": 0, "position": 3}, "position= takes two numbers, (row, col) of a unit in the layer's map, got 3"),
        (
            {"channel": 0, "position": (1, 2, 3)},
            "position= takes two numbers, (row, col) of a unit in the layer's map, got (1, 2, 3)",
        ),
        ({"channel": 0, "position": (1.5, 2)}, "position= takes whole numbers (row, col), got (1.5, 2)"),
        ({"channel": [0, 2.0]}, "channel= takes whole channel indices, got 2.0; give an int or a list of ints"),
        ({"channel": torch.tensor(99)}, f"channel 99 is out of range for layer {layer!r}"),
    ):
        with pytest.raises(SeedError) as info:
            net.project(x, conv, **kwargs)
        assert str(info.value).startswith(said.replace(repr(layer), repr(conv)))
    # a tensor or NumPy index (``acts.argmax()``) is a channel, a tensor pair a position
    act = net.activations(x, conv)[conv]
    strongest = act[0].amax(dim=(1, 2)).argmax()
    assert net.project(x, conv, channel=strongest).channels == (int(strongest),)
    assert net.project(x, conv, channel=strongest.numpy()).channels == (int(strongest),)
    assert net.project(x, conv, channel=torch.tensor([2, 0])).channels == (2, 0)
    assert net.project(x, conv, channel=0, position=torch.tensor([1, 0])).positions == ((1, 0),)
    for name, said in ((None, "got None: give one name"), (3, "got 3: write '3'"), ([layer], "give one name")):
        with pytest.raises(LayerNotFoundError, match="a layer is named by a string") as info:
            net.project(x, name, top=1)  # type: ignore[arg-type]
        assert said in str(info.value)
    with pytest.raises(LayerNotFoundError, match="the model's input and its return are not layers"):
        net.project(x, "output", channel=0)
    in_the_way = tmp_path / "file"
    in_the_way.write_text("x")
    with pytest.raises(dv.OutputError, match=r"is a file, not a folder; choose a folder"):
        net.project(x, layer, top=1).save(in_the_way)
    with pytest.raises(dv.OutputError) as info:  # the file in the way is named, not the folder below it
        net.project(x, layer, top=1).save(in_the_way / "below")
    assert f"{str(in_the_way)!r} is a file, not a folder" in str(info.value)


def test_layers_that_hold_their_channels_last_are_not_offered() -> None:
    from conftest import ChannelsLastBlock

    from deconvviz.core.layers import channels_last, default_layers, layer_names

    net = dv.DeconvNet(ChannelsLastBlock().eval())
    last = channels_last(net)
    assert last == {"permute", "norm", "mlp", "act"}
    assert set(net.layers) >= last  # still projectable by node name, as the tensor's dimension 1
    assert not set(layer_names(net)) & last
    x = torch.rand(1, 3, 16, 16)
    assert default_layers(net, x) == ["add", "head"]  # the block's output, channels first again
    assert net.activations(x, ["add"])["add"].shape == (1, 8, 16, 16)
    from deconvviz.core.layers import choose_layers

    with pytest.warns(UserWarning, match="layer 'norm' holds its channels last .* project the block's output"):
        assert choose_layers(net, "add,norm", x) == ["add", "norm"]  # named: given, and told what it is


class _GatedNet(nn.Module):
    """Two stages, each a convolution and a squeeze-and-excitation gate, then a classifier on a pooled 1x1 map."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.squeeze = nn.AdaptiveAvgPool2d(1)
        self.excite = nn.Conv2d(8, 8, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.norm = nn.BatchNorm2d(8)  # on the 1x1 map below the pooling, as ConvNeXt's head normalises
        self.fc = nn.Linear(8, 3)

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.excite(self.squeeze(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.gate(torch.relu(self.conv1(x)))
        x = self.gate(torch.relu(self.conv2(x)))
        return self.fc(self.norm(self.pool(x)).flatten(1))


def test_default_layers_end_stages_and_skip_gates_branches_and_pooled_maps() -> None:
    from conftest import ChannelsLastBlock

    from deconvviz.core.layers import after_global_pool, default_layers, through_layers

    block = dv.DeconvNet(ChannelsLastBlock().eval())
    # the skip connection bypasses the block's inside: only the stem, the sum and what follows are on every path
    assert through_layers(block) == {"stem", "add", "pool", "head", "flatten"}
    gated = dv.DeconvNet(_GatedNet().eval())
    x = torch.rand(1, 3, 16, 16)
    through = through_layers(gated)
    assert {"mul", "mul_1", "relu", "relu_1"} <= through
    assert not {"excite", "sigmoid", "squeeze"} & through  # a gate's branch is one of two paths
    assert {"norm", "flatten", "fc"} <= after_global_pool(gated)
    assert "mul" not in after_global_pool(gated)  # the gated map itself is not pooled
    # without these rules the 1x1 maps of the gates and of the head would alternate with the 8x8 ones
    assert default_layers(gated, x) == ["mul", "mul_1"]


class _Residual(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x)


def test_a_stage_ends_at_its_own_output_not_at_the_next_stages_expansion() -> None:
    from deconvviz.core.layers import default_layers

    features = nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()),  # 0: the stem, 16x16
        nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU()),  # 1: the first stage's output, 16x16
        nn.Sequential(  # 2: an inverted residual's expansion (still 16x16), then its strided depthwise convolution
            nn.Conv2d(4, 12, 1), nn.ReLU(), nn.Conv2d(12, 12, 3, stride=2, padding=1, groups=12), nn.Conv2d(12, 8, 1)
        ),
        _Residual(8),  # 3: the second stage's output, 8x8
        nn.Conv2d(8, 8, 3),  # 4: an unpadded convolution trims 8x8 to 6x6 without a stride: the same stage
    )
    model = nn.Sequential(features, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5)).eval()
    net = dv.DeconvNet(model)
    # the expansion (0.2.1) is the last layer at 16x16, but the first stage's own output (0.1.1) ends that stage
    assert default_layers(net, torch.rand(1, 3, 16, 16)) == ["0.1.1", "0.4"]
