"""Popular timm CNNs (random weights, float64) project their last feature map under all three methods.

Skipped when timm is not installed (it is a test extra, never a requirement). The reference is the same
autograd one as the torchvision zoo's (``tests/reference.py``): it runs the model itself, so it knows nothing
of tracing, timm's lists of modules to keep whole, or deconvviz's rules.
"""

from __future__ import annotations

import pytest
import torch
from reference import feature_map, method_reference, relative_error, unit_seeds
from torch import nn

import deconvviz as dv
from deconvviz.core import graph as graph_module
from deconvviz.methods import get_method
from deconvviz.ops.fallback import FallbackRule

timm = pytest.importorskip("timm")

TOLERANCE = 1e-6
METHODS = ("deconvnet", "guided", "gradient")

MODELS = {
    "resnet18": "ReLU residual net (timm's own)",
    "efficientnet_b0": "SiLU, squeeze-and-excitation sigmoid gates, batch norm fused with its activation",
    "mobilenetv3_small_100": "hard swish, hard-sigmoid gates",
    "convnext_atto": "GELU, channels-last LayerNorm2d, layer scale",
    "regnety_002": "grouped convolutions, squeeze-and-excitation",
    "tf_efficientnet_b0": "TensorFlow 'same' padding computed from the input size: torch.fx cannot trace it whole",
    "resnest14d": "split attention: softmax over the radix, 5-D reshapes, a sum over the radix",
    "skresnet18": "selective kernel: softmax over the branches, stacked branches",
    "gcresnet33ts": "global context: softmax over positions, matmul",
    "ecaresnet26t": "efficient channel attention: Conv1d over the pooled channels, expand_as",
    "nf_resnet26": "normalizer-free blocks that timm keeps whole for its own feature extraction",
    "lambda_resnet26t": "lambda layers: softmax over positions and einsum",
}


def _build(name: str) -> tuple[nn.Module, torch.Tensor, str]:
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False).eval().double()
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    return model, x, model.feature_info[-1]["module"]


def _check(model: nn.Module, x: torch.Tensor, module: str, name: str) -> None:
    net = dv.DeconvNet(model)
    activation = feature_map(model, x, module)
    assert torch.equal(net.activations(x, [module])[module], activation)
    count = activation.shape[1]
    for method in METHODS:
        p = net.project(x, layer=module, channel=[0, count // 2, count - 1], method=method)
        seeds = unit_seeds(activation, list(p.channels), list(p.positions))
        expected = method_reference(model, x, module, seeds, method)
        assert expected.abs().max() > 0, f"{name} {method}: the reference reconstruction is blank"
        error = relative_error(p.image, expected)
        assert error <= TOLERANCE, f"{name} {module} {method}: relative error {error:.2e}"


@pytest.mark.slow
@pytest.mark.parametrize("name", list(MODELS))
def test_last_feature_map_matches_the_reference(name: str, unchanged) -> None:
    model, x, module = _build(name)
    state = unchanged(model)
    _check(model, x, module, name)
    state.assert_same(model)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(MODELS))
def test_every_node_of_a_full_trace_is_a_layer(name: str) -> None:
    from torchvision.models.feature_extraction import get_graph_node_names

    model = timm.create_model(name, pretrained=False).eval()
    net = dv.DeconvNet(model)
    graph = net.graph
    by_name = {n: node for node, n in graph.names.items()}
    whole = [graph.names[node] for node in graph.nodes if node.op == "call_module"]
    try:
        _, names = get_graph_node_names(model)
    except Exception:  # torchvision cannot trace it (tf_efficientnet_b0): compare with our own trace alone
        names = list(by_name)
    # nodes inside a module kept whole (a fused batch norm with its rule, an untraceable convolution) are that
    # module's node; every other node of the full trace is one of ours, and each one the image reaches a layer
    inside = [n for n in names if any(n.startswith(f"{w}.") for w in whole)]
    ours = [n for n in names if n not in inside]
    assert set(ours) <= set(by_name)
    carrying = [n for n in ours if by_name[n] in graph.carries and by_name[n] is not graph.input]
    layers = net.layers
    assert [n for n in layers if n in set(carrying)] == carrying
    assert {n for n in layers if n not in set(carrying)} <= set(whole)  # modules kept whole: one node each
    assert model.feature_info[-1]["module"] in net.layers or model.feature_info[-1]["module"] in graph.containers


def _fallback_modules(net: dv.DeconvNet) -> dict[str, str]:
    graph, rules = net.graph, get_method()
    found = {}
    for node in graph.nodes:
        module = graph.module(node)
        if module is not None and isinstance(rules.for_node(node, module), FallbackRule):
            found[graph.names[node]] = type(module).__name__
    return found


def test_timms_published_modules_stay_whole() -> None:
    model = timm.create_model("tf_efficientnet_b0", pretrained=False).eval()
    with pytest.raises(torch.fx.proxy.TraceError):
        torch.fx.symbolic_trace(model)
    net = dv.DeconvNet(model)
    fallback = _fallback_modules(net)
    # timm lists its 'same'-padding convolution and its fused batch norm + activation as modules to keep whole;
    # the convolution goes through the autograd fallback, the fused batch norm gets the rule of its parts
    assert fallback["conv_stem"] == "Conv2dSame"
    assert timm.layers.is_notrace_module(type(model.conv_stem))
    assert timm.layers.is_notrace_module(type(model.bn1))
    assert "bn1" in net.layers
    assert "bn1" not in fallback
    for method in METHODS:
        node = next(n for n in net.graph.nodes if net.graph.names[n] == "bn1")
        assert type(get_method(method).for_node(node, model.bn1)).__name__ == "NormActRule"


@pytest.mark.slow
def test_untraceable_submodules_go_through_the_autograd_fallback_without_timms_lists(monkeypatch, unchanged) -> None:
    # Without timm's lists, deconvviz finds by itself which submodules torch.fx cannot trace into and keeps
    # only those whole; the fused batch norms are then traced through to their F.batch_norm call.
    monkeypatch.setattr(graph_module, "_timm_helpers", lambda: ([], []))
    model, x, module = _build("tf_efficientnet_b0")
    net = dv.DeconvNet(model)
    assert set(net.graph.opaque) == {name for name, m in model.named_modules() if type(m).__name__ == "Conv2dSame"}
    assert set(_fallback_modules(net).values()) == {"Conv2dSame"}
    state = unchanged(model)
    _check(model, x, module, "tf_efficientnet_b0 without timm's lists")
    state.assert_same(model)
