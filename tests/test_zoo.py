"""Every CNN family of torchvision's classification zoo projects its last feature map under all three methods.

Random weights (``weights=None``), float64, each model at about the smallest input it accepts. ``gradient``
must equal plain autograd (the unit's gradient times its activation, as the seed carries the activation);
``deconvnet`` and ``guided`` must equal an autograd reference that swaps the backward of every rectifying
activation and detaches gates and per-sample statistics (``tests/reference.py``), which neither traces the
model nor uses any of deconvviz's rules.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import torchvision
from reference import feature_map, method_reference, relative_error, unit_seeds
from torch import nn

import deconvviz as dv

TOLERANCE = 1e-6
METHODS = ("deconvnet", "guided", "gradient")

M = torchvision.models

# name -> (builder, input side, the submodule whose output is the last feature map before global pooling)
ZOO: dict[str, tuple[Callable[[], nn.Module], int, str]] = {
    "alexnet": (lambda: M.alexnet(weights=None), 63, "features"),
    "vgg11": (lambda: M.vgg11(weights=None), 32, "features"),
    "resnet18": (lambda: M.resnet18(weights=None), 32, "layer4"),
    "resnext50_32x4d": (lambda: M.resnext50_32x4d(weights=None), 32, "layer4"),
    "wide_resnet50_2": (lambda: M.wide_resnet50_2(weights=None), 32, "layer4"),
    "densenet121": (lambda: M.densenet121(weights=None), 32, "features"),
    "googlenet": (lambda: M.googlenet(weights=None, aux_logits=False, init_weights=True), 32, "inception5b"),
    "inception_v3": (lambda: M.inception_v3(weights=None, aux_logits=False, init_weights=True), 75, "Mixed_7c"),
    "mobilenet_v2": (lambda: M.mobilenet_v2(weights=None), 32, "features"),
    "mobilenet_v3_small": (lambda: M.mobilenet_v3_small(weights=None), 32, "features"),
    "mobilenet_v3_large": (lambda: M.mobilenet_v3_large(weights=None), 32, "features"),
    "shufflenet_v2_x0_5": (lambda: M.shufflenet_v2_x0_5(weights=None), 32, "conv5"),
    "mnasnet0_5": (lambda: M.mnasnet0_5(weights=None), 32, "layers"),
    "efficientnet_b0": (lambda: M.efficientnet_b0(weights=None), 32, "features"),
    "efficientnet_v2_s": (lambda: M.efficientnet_v2_s(weights=None), 32, "features"),
    "regnet_x_400mf": (lambda: M.regnet_x_400mf(weights=None), 32, "trunk_output"),
    "regnet_y_400mf": (lambda: M.regnet_y_400mf(weights=None), 32, "trunk_output"),
    "convnext_tiny": (lambda: M.convnext_tiny(weights=None), 32, "features"),
    "squeezenet1_1": (lambda: M.squeezenet1_1(weights=None), 32, "features"),
}

# Small and quick, with hard swish and squeeze-and-excitation behind a hard-sigmoid gate: the fast suite runs it,
# the rest sit behind the slow marker.
FAST = {"mobilenet_v3_small"}


def _randomised(model: nn.Module) -> nn.Module:
    """Batch-norm statistics and affine parameters away from their identity initialisation."""
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(module.weight.shape, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(module.bias.shape, generator=generator) * 0.1)
    return model


@pytest.fixture(
    scope="module",
    params=[name if name in FAST else pytest.param(name, marks=pytest.mark.slow) for name in ZOO],
)
def zoo_model(request: pytest.FixtureRequest) -> tuple[str, nn.Module, torch.Tensor, str]:
    builder, side, module = ZOO[request.param]
    torch.manual_seed(0)
    model = _randomised(builder()).eval().double()
    x = torch.randn(1, 3, side, side, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    return request.param, model, x, module


def _check(name: str, model: nn.Module, x: torch.Tensor, module: str, method: str, **project: Any) -> None:
    net = dv.DeconvNet(model)
    p = net.project(x, layer=module, method=method, **project)
    assert p.method == method
    assert p.image.dtype == torch.float64
    assert p.image.shape == (len(p.channels), *x.shape[1:])
    activation = feature_map(model, x, module)
    assert torch.equal(net.activations(x, [module])[module], activation)
    mode = project.get("mode", "max")
    positions = [None] * len(p.channels) if mode == "map" else list(p.positions)
    seeds = unit_seeds(activation, list(p.channels), positions)
    if mode != "map":  # one non-zero per seed: the unit's own activation
        assert torch.equal(p.activations, seeds.flatten(1).sum(1))
    expected = method_reference(model, x, module, seeds, method)
    assert expected.abs().max() > 0, f"{name}: the reference reconstruction is blank"
    error = relative_error(p.image, expected)
    assert error <= TOLERANCE, f"{name} {module} {method}: relative error {error:.2e}"


@pytest.mark.parametrize("method", METHODS)
def test_last_feature_map_matches_the_reference(zoo_model, method: str, unchanged) -> None:
    name, model, x, module = zoo_model
    state = unchanged(model)
    count = feature_map(model, x, module).shape[1]
    _check(name, model, x, module, method, channel=[0, count // 2, count - 1])
    state.assert_same(model)


def test_whole_map_matches_the_reference_and_errors_leave_the_model_alone(zoo_model, unchanged) -> None:
    name, model, x, module = zoo_model
    state = unchanged(model)
    _check(name, model, x, module, "guided", top=1, mode="map")
    net = dv.DeconvNet(model)
    with pytest.raises(ValueError, match="channel"):
        net.project(x, layer=module, channel=10**6, method="guided")
    with pytest.raises(ValueError, match="unknown method"):
        net.project(x, layer=module, channel=0, method="no-such-method")
    state.assert_same(model)
