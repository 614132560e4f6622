"""Receptive fields: published sizes, hand-worked geometry, and boxes that hold every unit's projection."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import deconvviz as dv
from deconvviz.ops import geometry
from deconvviz.ops.geometry import ReceptiveField, ReceptiveFieldError, UnknownGeometryError


def _seeded(module: nn.Module, seed: int = 0) -> None:
    """He-scaled random weights, small random biases, neutral batch-norm statistics."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.dim() > 1:
                std = math.sqrt(2.0 / (p[0].numel()))
                p.copy_(torch.randn(p.shape, generator=generator) * std)
            elif name.endswith("weight"):  # batch-norm scale
                p.copy_(torch.rand(p.shape, generator=generator) + 0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.1)
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.reset_running_stats()


def _random(builder, *, only: str | None = None) -> nn.Module:
    """A torchvision architecture with seeded random weights, built without its default initialisation.

    With ``only``, just that submodule gets real weights; the rest stays on the meta device, which is enough
    for layers below it (their forward and mirror never touch the rest).
    """
    with torch.device("meta"):
        model = builder(weights=None)
    part = model.get_submodule(only) if only else model
    part.to_empty(device="cpu")
    _seeded(part)
    return model.eval()


# ------------------------------------------------------------------------------------------- published sizes


@pytest.fixture(scope="module")
def vgg16() -> nn.Module:
    with torch.device("meta"):  # only the geometry matters
        return torchvision.models.vgg16(weights=None).eval()


@pytest.mark.parametrize(
    ("layer", "size", "stride"),
    [
        ("features.15", 40, 4),  # conv3_3
        ("features.22", 92, 8),  # conv4_3
        ("features.29", 196, 16),  # conv5_3
        ("features.30", 212, 32),  # pool5
    ],
)
def test_vgg16_matches_published_sizes(vgg16: nn.Module, layer: str, size: int, stride: int) -> None:
    rf = dv.receptive_fields(vgg16)[layer]
    assert rf.size == (size, size)
    assert rf.stride == (stride, stride)
    # VGG pads every 3x3 convolution by 1, so unit i is centred on input pixel i * stride + (stride - 1) / 2.
    assert rf.center(0, 0, (224, 224)) == ((stride - 1) / 2 + 0.5, (stride - 1) / 2 + 0.5)
    assert rf.offset is not None
    assert 2 * rf.offset[0] == stride - size


def test_every_vgg16_layer_has_a_field_and_the_head_sees_the_whole_image(vgg16: nn.Module) -> None:
    fields = dv.receptive_fields(vgg16)
    assert list(fields) == dv.DeconvNet(vgg16).layers
    assert fields["features.0"] == ReceptiveField(size=(3, 3), stride=(1, 1), offset=(-1, -1))
    for layer in ("avgpool", "flatten", "classifier.0", "classifier.6"):
        assert fields[layer].whole_image, layer
        assert fields[layer].box(0, 0, (224, 200)) == (0, 0, 224, 200)
    sizes = [fields[f"features.{i}"].size for i in range(31)]
    assert all(a is not None and b is not None and a[0] <= b[0] for a, b in itertools.pairwise(sizes))


def test_aliases_of_a_loaded_model_and_a_deconvnet_resolve(vgg16: nn.Module) -> None:
    loaded = SimpleNamespace(module=vgg16, layers={"conv5_3": "features.29"}, to_image=None)
    by_alias = dv.receptive_field(loaded, "conv5_3")
    assert by_alias == dv.receptive_field(vgg16, "features.29")
    assert dv.receptive_fields(loaded, ["conv5_3", "features.15"]).keys() == {"conv5_3", "features.15"}
    net = dv.DeconvNet(vgg16, aliases={"pool5": "features.30"})
    assert dv.receptive_field(net, "pool5").size == (212, 212)
    with pytest.raises(dv.DeconvVizError, match="conv5_3"):
        dv.receptive_field(vgg16, "conv5_3")  # a plain module knows no aliases; the message suggests names


# --------------------------------------------------------------------------------------------- hand-worked


class Tiny(nn.Module):
    """Stride, padding, pooling and dilation, with different geometry along height and width."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, 1, (3, 5), stride=(2, 1), padding=(1, 2))
        self.b = nn.AvgPool2d(2)
        self.c = nn.Conv2d(1, 1, 3, padding=2, dilation=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(self.b(self.a(x)))


def test_hand_worked_fields() -> None:
    fields = dv.receptive_fields(Tiny())
    # a: a (3, 5) window, stride (2, 1), starting 1 row / 2 cols into the padding.
    assert fields["a"] == ReceptiveField(size=(3, 5), stride=(2, 1), offset=(-1, -2))
    # b: two neighbouring a-units, one a-stride apart: 3 + 2 = 5 rows, 5 + 1 = 6 cols; stride doubles.
    assert fields["b"] == ReceptiveField(size=(5, 6), stride=(4, 2), offset=(-1, -2))
    # c: taps at b-units -2, 0, +2 (dilation 2, padding 2): 4 b-strides more, start 2 b-strides earlier.
    assert fields["c"] == ReceptiveField(size=(5 + 4 * 4, 6 + 4 * 2), stride=(4, 2), offset=(-1 - 8, -2 - 4))
    rf = fields["c"]
    assert rf.box(2, 3, (32, 20), clip=False) == (-1, 0, 20, 14)
    assert rf.box(2, 3, (32, 20)) == (0, 0, 20, 14)
    assert rf.box(7, 9, (1, 3, 32, 20)) == (19, 12, 32, 20)  # a batch shape works as the image size
    assert rf.box(20, 0, (32, 20)) == (32, 0, 32, 8)  # wholly below the image: an empty box
    image = torch.arange(32 * 20).reshape(1, 32, 20)
    assert torch.equal(rf.crop(image, 2, 3), image[..., 0:20, 0:14])


def test_through_handles_same_valid_and_default_pool_stride() -> None:
    pixel = ReceptiveField.identity()
    assert pixel.through(4, padding="same") == ReceptiveField(size=(4, 4), stride=(1, 1), offset=(-1, -1))
    assert pixel.through(3, padding="same", dilation=3) == ReceptiveField((7, 7), (1, 1), (-3, -3))
    assert pixel.through(5, stride=2, padding="valid") == ReceptiveField((5, 5), (2, 2), (0, 0))
    assert pixel.through((2, 3), stride=None) == ReceptiveField((2, 3), (2, 3), (0, 0))
    assert ReceptiveField.whole().through(3) == ReceptiveField.whole()


def test_repr_is_readable() -> None:
    assert repr(ReceptiveField((40, 40), (4, 4), (-18, -18))) == (
        "ReceptiveField(size=(40, 40), stride=(4, 4), offset=(-18, -18))"
    )
    assert repr(ReceptiveField.whole()) == "ReceptiveField(whole image)"


def test_positive_linear_net_fills_its_box_exactly() -> None:
    """With positive weights and input nothing cancels: the projection's support spans exactly the box."""
    model = Tiny().double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(1.0)
    x = torch.ones(1, 1, 28, 18, dtype=torch.float64)  # no layer drops a last row or column here
    net = dv.DeconvNet(model)
    for layer in ("a", "b", "c"):
        rf = dv.receptive_field(net, layer)
        height, width = net.activations(x, [layer])[layer].shape[-2:]
        for row, col in [(0, 0), (height - 1, width - 1), (height // 2, width // 2), (0, width - 1)]:
            image = net.project(x, layer, channel=0, position=(row, col)).image[0, 0]
            assert _support(image) == rf.box(row, col, x.shape), (layer, row, col)


# --------------------------------------------------------------------- boxes hold every projection's pixels


def _support(image: torch.Tensor) -> tuple[int, int, int, int] | None:
    """(top, left, bottom, right) around the non-zero pixels of ``(..., H, W)``, bottom and right exclusive."""
    mask = image.ne(0).reshape(-1, *image.shape[-2:]).any(0)
    if not mask.any():
        return None
    rows, cols = mask.any(1).nonzero()[:, 0], mask.any(0).nonzero()[:, 0]
    return (int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1)


class Branches(nn.Module):
    """Functional ops, 'same' padding with an even kernel, ceil-mode pooling, unequal branches merged."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.empty(6, 3, 3, 3))
        self.same = nn.Conv2d(6, 4, 4, padding="same")
        self.wide = nn.Conv2d(6, 4, (1, 5), padding=(0, 2))
        self.dilated = nn.Conv2d(8, 8, 3, padding=2, dilation=2)
        self.skip = nn.Conv2d(8, 8, 1, stride=2)
        self.down = nn.Conv2d(8, 8, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(F.conv2d(x, self.w, None, 1, 1))
        x = F.max_pool2d(x, 3, stride=2, padding=1, ceil_mode=True)
        y = torch.cat([self.same(x), self.wide(x)], dim=1)
        y = F.avg_pool2d(F.relu(self.dilated(y)), 3, stride=1, padding=1)
        return self.down(y) + self.skip(y)


ARCHITECTURES = {
    # builder, input (H, W), layers: pooling outputs, concatenations, residual additions, deep convolutions
    "branches": (Branches, (23, 19), ["max_pool2d", "cat", "avg_pool2d", "add"]),
    "alexnet": (
        lambda: _random(torchvision.models.alexnet, only="features"),
        (99, 83),
        ["features.2", "features.5", "features.10", "features.12"],
    ),
    "squeezenet1_1": (
        lambda: _random(torchvision.models.squeezenet1_1),
        (55, 47),
        ["features.2", "features.4.cat", "features.5", "features.12.cat", "classifier.1"],
    ),
    "resnet18": (
        lambda: _random(torchvision.models.resnet18),
        (64, 48),
        ["maxpool", "layer1.0.add", "layer2.0.add", "layer3.1.relu_1", "layer4.0.add"],
    ),
}


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths:UserWarning")
def test_box_holds_every_nonzero_pixel_of_a_units_projection(name: str) -> None:
    builder, (height, width), layers = ARCHITECTURES[name]
    model = builder()
    if name == "branches":
        _seeded(model)
    x = torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(1))
    net = dv.DeconvNet(model)
    fields = dv.receptive_fields(net, layers)
    for layer in layers:
        rf = fields[layer]
        assert not rf.whole_image, layer
        act = net.activations(x, [layer])[layer][0]
        rows, cols = act.shape[-2:]
        positions = {(0, 0), (0, cols - 1), (rows - 1, 0), (rows - 1, cols - 1), (rows // 2, cols // 2)}
        # at each position, the three channels most active there, so that the projections are not all zero
        units = [
            (0, int(c), row, col)
            for row, col in sorted(positions)
            for c in act[:, row, col].argsort(descending=True)[:3]
            if act[c, row, col] > 0
        ]
        images = net.project_units(x, layer, units)  # the batched path of DeconvNet.project
        projected = 0
        for (_, channel, row, col), image in zip(units, images, strict=True):
            support = _support(image)
            if support is None:
                continue
            projected += 1
            box = rf.box(row, col, x.shape)
            top, left, bottom, right = support
            inside = box[0] <= top and box[1] <= left and bottom <= box[2] and right <= box[3]
            assert inside, f"{name} {layer} unit {(channel, row, col)}: projection spans {support}, box is {box}"
        assert projected >= 5, f"{name} {layer}: too few non-zero projections to check ({projected})"


# ------------------------------------------------------------------------------------------ errors, registry


@torch.fx.wrap
def blur(x: torch.Tensor) -> torch.Tensor:
    """A user op deconvviz knows nothing about (traced as one opaque call)."""
    return F.avg_pool2d(x, 3, stride=1, padding=1)


class WithUnknownOp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(blur(self.conv(x)))


@pytest.fixture
def clean_registry() -> Iterator[None]:
    saved = geometry.GEOMETRIES.snapshot()
    yield
    geometry.GEOMETRIES.restore(saved)


def test_an_op_without_geometry_gets_one_measured_and_a_registered_one_wins(clean_registry: None) -> None:
    model = WithUnknownOp()
    net = dv.DeconvNet(model)
    # blur has neither a mirror rule nor a geometry: autograd mirrors it, and its field is measured from the
    # support of the signal one unit sends back through it
    assert net.layers == ["conv", "blur", "relu"]
    fields = dv.receptive_fields(net, ["blur", "relu"])
    assert fields["blur"] == ReceptiveField(size=(7, 7), stride=(2, 2), offset=(-2, -2))
    assert fields["relu"] == fields["blur"]
    assert net.measured() == ["blur"]

    dv.register_geometry(blur, geometry.window(3, stride=1, padding=1))
    fresh = dv.DeconvNet(model)
    assert dv.receptive_fields(fresh, ["blur"])["blur"] == fields["blur"]
    assert fresh.measured() == []


@torch.fx.wrap
def centre(x: torch.Tensor) -> torch.Tensor:
    """A user op that mixes every position (traced as one opaque call)."""
    return x - x.mean(dim=(2, 3), keepdim=True)


class Centred(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return centre(self.conv(x))


class OpaqueConv(nn.Module):
    """A convolution torch.fx cannot trace into (data-dependent branch): its geometry is measured."""

    def __init__(self, **window: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, **window)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 1e9:
            return x
        return self.conv(x)


@pytest.mark.parametrize(
    "window",
    [
        {"kernel_size": 3},  # no padding: 64 -> 62, sizes in no integer ratio
        {"kernel_size": 5, "stride": 2},  # 64 -> 30
        {"kernel_size": 7, "stride": 3, "padding": 2},  # 64 -> 21
        {"kernel_size": 3, "padding": 1},
        {"kernel_size": 2, "stride": 2},
    ],
)
def test_a_measured_window_whose_sizes_are_in_no_integer_ratio_is_found(window: dict[str, int]) -> None:
    torch.manual_seed(0)
    net = dv.DeconvNet(nn.Sequential(OpaqueConv(**window), nn.ReLU()).double().eval())
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    net.project(x, "0", top=1)  # the probe runs at the size of the last picture
    field = dv.receptive_field(net, "0")  # the opaque convolution's output (before the ReLU: no unit is 0)
    assert not field.whole_image
    for position in ((0, 0), (5, 7), (9, 3)):
        p = net.project(x, "0", channel=0, position=position, method="gradient")
        found = p.image[0].abs().sum(0).nonzero()
        support = (
            int(found[:, 0].min()),
            int(found[:, 1].min()),
            int(found[:, 0].max()) + 1,
            int(found[:, 1].max()) + 1,
        )
        assert field.box(*position, (64, 64)) == support


def test_a_field_measured_through_a_global_op_is_the_whole_image() -> None:
    net = dv.DeconvNet(Centred())
    assert dv.receptive_fields(net, ["centre"])["centre"].whole_image
    assert net.measured() == ["centre"]


def test_a_geometry_can_be_registered_with_a_decorator(clean_registry: None) -> None:
    seen = []

    @dv.register_geometry(blur)
    def geometry(ctx: geometry.GeometryContext) -> ReceptiveField:
        seen.append(ctx.name)
        return ctx.inputs[0].through(3, 1, 1)

    assert dv.receptive_field(WithUnknownOp(), "blur").size == (7, 7)
    assert seen == ["blur"]


class Mismatched(nn.Module):
    """Traces, though it could not run: geometry needs no forward pass."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 2, 3, padding=1)
        self.b = nn.Conv2d(3, 2, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.cat([self.a(x), self.b(x)], dim=2), self.a(x) + self.b(x)


def test_merges_that_break_the_sliding_window_are_refused() -> None:
    with pytest.raises(UnknownGeometryError, match=r"node 'cat'.*along dim 2"):
        dv.receptive_field(Mismatched(), "cat")
    with pytest.raises(UnknownGeometryError, match=r"node 'add'.*different strides"):
        dv.receptive_field(Mismatched(), "add")
    with pytest.raises(ReceptiveFieldError, match="different strides"):
        ReceptiveField.enclosing([ReceptiveField((3, 3), (1, 1), (0, 0)), ReceptiveField((3, 3), (2, 2), (0, 0))])


def test_bad_positions_and_sizes_are_value_errors() -> None:
    rf = ReceptiveField((3, 3), (1, 1), (-1, -1))
    with pytest.raises(ValueError, match="row must be a non-negative int"):
        rf.box(-1, 0, (8, 8))
    with pytest.raises(ValueError, match="col must be a non-negative int"):
        rf.box(0, 1.5, (8, 8))
    assert rf.box(np.int64(2), torch.tensor(3), torch.Size([1, 3, 8, 8])) == (1, 2, 4, 5)
    with pytest.raises(ValueError, match="image_size"):
        rf.box(0, 0, (8,))
    with pytest.raises(ValueError, match="size and stride must be positive"):
        ReceptiveField((0, 3), (1, 1), (0, 0))
    with pytest.raises(ValueError, match="together"):
        ReceptiveField((3, 3), None, (0, 0))


def test_model_is_left_unchanged(unchanged) -> None:
    model = torchvision.models.squeezenet1_1(weights=None).train()
    state = unchanged(model)
    dv.receptive_fields(model)
    with pytest.raises(dv.DeconvVizError):
        dv.receptive_field(model, "no_such_layer")
    state.assert_same(model)
