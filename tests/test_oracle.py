"""Projections equal the autograd deconvnet reference on real architectures (float64, random weights)."""

from __future__ import annotations

import pytest
import torch
import torchvision
from reference import deconv_reference, relative_error, unit_seeds

import deconvviz as dv

TOLERANCE = 1e-6

# (builder, input side, layers): pooling outputs, the deepest conv, concat and residual-add nodes, classifier heads.
ARCHITECTURES = {
    "vgg16": (
        torchvision.models.vgg16,
        64,
        ["features.4", "features.16", "features.29", "features.30", "classifier.0"],
    ),
    "alexnet": (
        torchvision.models.alexnet,
        96,
        ["features.2", "features.5", "features.10", "features.12", "classifier.4"],
    ),
    "squeezenet1_1": (
        torchvision.models.squeezenet1_1,
        96,
        ["features.2", "features.3.cat", "features.5", "features.12.cat", "classifier.2", "flatten"],
    ),
    "resnet18": (
        torchvision.models.resnet18,
        64,
        ["maxpool", "layer1.0.add", "layer2.0.downsample.1", "layer3.1.relu_1", "layer4.1.relu_1", "avgpool", "fc"],
    ),
}


@pytest.fixture(
    scope="module",
    # VGG16 in float64 takes most of this file's time: the complete suite runs it, the edit-test loop does not.
    params=[pytest.param(name, marks=pytest.mark.slow) if name == "vgg16" else name for name in sorted(ARCHITECTURES)],
)
def architecture(request: pytest.FixtureRequest):
    builder, side, layers = ARCHITECTURES[request.param]
    torch.manual_seed(0)
    model = builder(weights=None).eval().double()
    x = torch.randn(1, 3, side, side, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    return request.param, model, x, layers


def test_matches_reference_at_every_listed_layer(architecture) -> None:
    name, model, x, layers = architecture
    net = dv.DeconvNet(model)
    for layer in layers:
        count = net.activations(x, [layer])[layer].shape[1]
        channels = [0, count // 3, count - 1]
        p = net.project(x, layer=layer, channel=channels)
        assert p.image.dtype == torch.float64
        assert p.image.shape == (3, *x.shape[1:])
        activation = net.activations(x, [layer])[layer]
        expected = deconv_reference(model, x, layer, unit_seeds(activation, channels, list(p.positions)))
        assert expected.abs().max() > 0 or p.activations.abs().max() == 0
        error = relative_error(p.image, expected)
        assert error <= TOLERANCE, f"{name} {layer}: relative error {error:.2e}"


def test_matches_reference_for_whole_maps_and_given_units(architecture) -> None:
    name, model, x, layers = architecture
    net = dv.DeconvNet(model)
    layer = layers[len(layers) // 2]
    activation = net.activations(x, [layer])[layer]
    strongest = int(activation[0].flatten(1).amax(1).argmax())

    whole = net.project(x, layer=layer, channel=strongest, mode="map")
    expected = deconv_reference(model, x, layer, unit_seeds(activation, [strongest], [None]))
    assert relative_error(whole.image, expected) <= TOLERANCE, f"{name} {layer} map"

    if activation.dim() == 4:
        row, col = activation.shape[2] - 1, 0  # a corner unit
        unit = net.project(x, layer=layer, channel=strongest, position=(row, col))
        expected = deconv_reference(model, x, layer, unit_seeds(activation, [strongest], [(row, col)]))
        assert unit.positions == ((row, col),)
        assert relative_error(unit.image, expected) <= TOLERANCE, f"{name} {layer} unit"
