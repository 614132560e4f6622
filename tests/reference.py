"""An independent deconvnet reference, written with autograd: the test oracle of DESIGN.md.

The projection of a seed equals the vector-Jacobian product of the layer's output with the seed, computed by
autograd with every ReLU's backward replaced by a ReLU of the incoming gradient (the deconvnet rule). The
model is traced by torchvision's own feature extractor (not by deconvviz), and every ReLU node (module,
function or tensor method) is rewritten to a custom autograd function before the graph is run.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Sequence
from typing import Any

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


class _Rectify(torch.autograd.Function):
    """A rectifying activation whose backward is deconvnet's ``relu(g)`` or guided's ``relu(g) * f'(x)``."""

    @staticmethod
    def forward(ctx, x, fn, guided):  # type: ignore[override]
        ctx.fn, ctx.guided = fn, guided
        ctx.save_for_backward(x)
        return fn(x.detach().clone())

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        if not ctx.guided:
            return grad.clamp(min=0), None, None
        with torch.enable_grad():
            leaf = x.detach().clone().requires_grad_(True)
            (slope,) = torch.autograd.grad(ctx.fn(leaf).sum(), leaf)
        return grad.clamp(min=0) * slope, None, None


# Every rectifying activation the networks under test call, in the forms that reach ``__torch_function__``.
_RECTIFIERS = {
    F.relu,
    F.relu_,
    torch.relu,
    torch.relu_,
    Tensor.relu,
    Tensor.relu_,
    F.hardtanh,
    F.hardtanh_,
    F.relu6,
    F.leaky_relu,
    F.elu,
    F.gelu,
    F.silu,
    F.mish,
    F.hardswish,
    F.softplus,
}
_GATES = {torch.sigmoid, Tensor.sigmoid, F.sigmoid, F.hardsigmoid, F.softmax, torch.softmax, Tensor.softmax}


def _layer_norm_held(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    dims = tuple(range(x.dim() - len(normalized_shape), x.dim()))
    mean = x.mean(dims, keepdim=True).detach()
    var = x.var(dims, unbiased=False, keepdim=True).detach()
    out = (x - mean) / torch.sqrt(var + eps)
    if weight is not None:
        out = out * weight
    if bias is not None:
        out = out + bias
    return out


def _group_norm_held(x, num_groups, weight=None, bias=None, eps=1e-5):
    grouped = x.reshape(x.shape[0], num_groups, -1)
    mean = grouped.mean(2, keepdim=True).detach()
    var = grouped.var(2, unbiased=False, keepdim=True).detach()
    out = ((grouped - mean) / torch.sqrt(var + eps)).reshape(x.shape)
    shape = (1, -1) + (1,) * (x.dim() - 2)
    if weight is not None:
        out = out * weight.reshape(shape)
    if bias is not None:
        out = out + bias.reshape(shape)
    return out


def _attention_held(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None):
    logits = query @ key.transpose(-2, -1) * (scale if scale is not None else query.shape[-1] ** -0.5)
    if attn_mask is not None:
        logits = logits.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else logits + attn_mask
    return torch.softmax(logits, dim=-1).detach() @ value


def _mha_held(query, key, value, embed_dim_to_check, num_heads, in_proj_weight, in_proj_bias, *args, **kwargs):
    """``F.multi_head_attention_forward`` for self-attention without masks, its attention weights detached."""
    length, n, embed = query.shape
    out_proj_weight = args[4] if len(args) > 4 else kwargs["out_proj_weight"]
    out_proj_bias = args[5] if len(args) > 5 else kwargs["out_proj_bias"]

    def split(t):
        return t.reshape(length, n * num_heads, -1).transpose(0, 1)

    w, b = in_proj_weight, in_proj_bias
    q, k, v = (
        split(F.linear(t, w[i * embed : (i + 1) * embed], b[i * embed : (i + 1) * embed]))
        for i, t in enumerate((query, key, value))
    )
    weights = torch.softmax(q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5, dim=-1).detach()
    out = (weights @ v).transpose(0, 1).reshape(length, n, embed)
    return F.linear(out, out_proj_weight, out_proj_bias), None


class _SwapRules(torch.overrides.TorchFunctionMode):
    """Rectifiers get the method's backward, gates are detached, per-sample norm statistics are detached."""

    def __init__(self, guided: bool) -> None:
        super().__init__()
        self.guided = guided

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func in _RECTIFIERS:
            kwargs.pop("inplace", None)
            x, *rest = args
            base = {F.relu_: F.relu, torch.relu_: torch.relu, Tensor.relu_: torch.relu, F.hardtanh_: F.hardtanh}
            fn = base.get(func, func)
            return _Rectify.apply(x, lambda t: fn(t, *rest, **kwargs), self.guided)
        if func in _GATES:
            return func(*args, **kwargs).detach()
        if func is F.multi_head_attention_forward:  # its softmax is called inside, out of the mode's reach
            return _mha_held(*args, **kwargs)
        if func is F.scaled_dot_product_attention:
            return _attention_held(*args, **kwargs)
        if func is F.layer_norm:
            return _layer_norm_held(*args, **kwargs)
        if func is F.group_norm:
            return _group_norm_held(*args, **kwargs)
        return func(*args, **kwargs)


class _Stop(Exception):
    pass


def _run_to(model: nn.Module, x: Tensor, module: str, mode: Any) -> Tensor:
    """The output of submodule ``module`` of a copy of ``model`` (a forward hook takes it and stops the run)."""
    copy_ = copy.deepcopy(model).eval()
    taken: list[Tensor] = []

    def hook(_module, _inputs, output):
        taken.append(output)
        raise _Stop

    copy_.get_submodule(module).register_forward_hook(hook)
    with mode, contextlib.suppress(_Stop):
        copy_(x)
    (out,) = taken
    return out


def feature_map(model: nn.Module, x: Tensor, module: str) -> Tensor:
    """The output of submodule ``module`` for ``x``, by running the model itself."""
    with torch.no_grad():
        return _run_to(model, x, module, contextlib.nullcontext())


def method_reference(model: nn.Module, x: Tensor, module: str, seeds: Tensor, method: str) -> Tensor:
    """Projections of ``seeds`` at the output of submodule ``module`` under ``method``, by autograd.

    No tracing at all: a forward hook on a copy of the model takes the submodule's output and stops the run.
    ``gradient`` is plain autograd; ``deconvnet`` and ``guided`` run the model with every rectifying
    activation's backward swapped (``relu(g)``, ``relu(g) * f'(x)``), gates (sigmoid, hard sigmoid, softmax,
    the weights of scaled dot-product attention) detached and layer/group norm statistics detached.

    Returns:
        ``(K, C, H, W)``.
    """
    x = x.detach().clone().requires_grad_(True)
    mode = contextlib.nullcontext() if method == "gradient" else _SwapRules(guided=method == "guided")
    out = _run_to(model, x, module, mode)
    grads = []
    for seed in seeds:
        (grad,) = torch.autograd.grad(out, x, grad_outputs=seed.unsqueeze(0).to(out.dtype), retain_graph=True)
        grads.append(grad[0])
    return torch.stack(grads)


def node_signals(
    model: nn.Module, x: Tensor, layer: str, nodes: Sequence[str], seeds: Tensor, method: str
) -> dict[str, Tensor]:
    """The vector-Jacobian product of ``seeds`` at ``layer`` with respect to the output of every node in ``nodes``.

    The graph is torchvision's feature extractor (not deconvviz's), run with the method's rules swapped in as in
    :func:`method_reference`; the input placeholder, when listed, is ``x`` itself.

    Returns:
        Per node, ``(K, *shape)``.
    """
    model = copy.deepcopy(model).eval()
    for module in model.modules():  # an in-place ReLU would turn a returned node's output into its own
        if getattr(module, "inplace", False):
            module.inplace = False
    extractor = create_feature_extractor(model, return_nodes=[layer])
    placeholder = next(n.name for n in extractor.graph.nodes if n.op == "placeholder")
    inner = [n for n in nodes if n != placeholder and n != layer]
    extractor = create_feature_extractor(model, return_nodes=[layer, *inner])
    x = x.detach().clone().requires_grad_(True)
    mode = contextlib.nullcontext() if method == "gradient" else _SwapRules(guided=method == "guided")
    with mode:
        outs = extractor(x)
    targets = {placeholder: x, **{n: outs[n] for n in inner}}
    wanted = [n for n in nodes if n != layer]
    found: dict[str, list[Tensor]] = {n: [] for n in wanted}
    for seed in seeds:
        grads = torch.autograd.grad(
            outs[layer],
            [targets[n] for n in wanted],
            seed.unsqueeze(0).to(x.dtype),
            retain_graph=True,
            allow_unused=True,
        )
        for n, g in zip(wanted, grads, strict=True):
            found[n].append(torch.zeros_like(targets[n][0]) if g is None else g[0])
    result = {n: torch.stack(v) for n, v in found.items()}
    if layer in nodes:
        result[layer] = seeds
    return result


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


__all__ = ["deconv_reference", "feature_map", "method_reference", "node_signals", "relative_error", "unit_seeds"]
