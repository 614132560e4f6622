"""An independent deconvnet reference, written with autograd: the test oracle of DESIGN.md.

The projection of a seed equals the vector-Jacobian product of the layer's output with the seed, computed by
autograd with every ReLU's backward replaced by a ReLU of the incoming gradient (the deconvnet rule). The
model is traced by torchvision's own feature extractor (not by deconvviz), and every ReLU node (module,
function or tensor method) is rewritten to a custom autograd function before the graph is run.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.feature_extraction import create_feature_extractor


class _DeconvReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):  # type: ignore[override]
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        return grad.clamp(min=0)


def deconv_relu(x: Tensor) -> Tensor:
    return _DeconvReLU.apply(x)


_RELU_FUNCTIONS = {F.relu, torch.relu, torch.relu_, F.relu_}
_RELU_METHODS = {"relu", "relu_"}


def _is_relu(node: torch.fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules[str(node.target)], nn.ReLU)
    if node.op == "call_function":
        return node.target in _RELU_FUNCTIONS
    return node.op == "call_method" and node.target in _RELU_METHODS


def deconv_reference(model: nn.Module, x: Tensor, layer: str, seeds: Sequence[Tensor] | Tensor) -> Tensor:
    """Projections of ``seeds`` (each shaped like one image's activation at ``layer``) by autograd.

    Returns:
        ``(K, C, H, W)``.
    """
    extractor = create_feature_extractor(copy.deepcopy(model).eval(), return_nodes={layer: "out"})
    modules = dict(extractor.named_modules())
    for node in extractor.graph.nodes:
        if _is_relu(node, modules):
            node.op, node.target, node.args, node.kwargs = "call_function", deconv_relu, (node.args[0],), {}
    extractor.graph.lint()
    extractor.recompile()
    x = x.detach().clone().requires_grad_(True)
    out = extractor(x)["out"]
    grads = []
    for seed in seeds:
        (grad,) = torch.autograd.grad(out, x, grad_outputs=seed.unsqueeze(0).to(out.dtype), retain_graph=True)
        grads.append(grad[0])
    return torch.stack(grads)


def unit_seeds(activation: Tensor, channels: Sequence[int], positions: Sequence[tuple[int, int] | None]) -> Tensor:
    """One seed per (channel, position): that unit's own activation, zero elsewhere (``activation`` is 1xCxHxW)."""
    seeds = torch.zeros((len(channels), *activation.shape[1:]), dtype=activation.dtype)
    for i, (c, pos) in enumerate(zip(channels, positions, strict=True)):
        if pos is None:
            seeds[i, c] = activation[0, c]
        elif activation.dim() == 4:
            seeds[i, c, pos[0], pos[1]] = activation[0, c, pos[0], pos[1]]
        else:
            seeds[i, c] = activation[0, c]
    return seeds


def relative_error(actual: Tensor, expected: Tensor) -> float:
    """max |actual - expected| / max |expected| (0 when both are zero)."""
    scale = expected.abs().max()
    diff = (actual.to(expected.dtype) - expected).abs().max()
    if scale == 0:
        return float(diff)
    return float(diff / scale)


__all__ = ["deconv_reference", "relative_error", "unit_seeds"]
