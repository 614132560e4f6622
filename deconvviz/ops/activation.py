"""Activations: where the three reverse passes differ.

With ``g`` the signal arriving at an activation's output and ``f'(x)`` its local derivative at the forward
input (Mahendran & Vedaldi 2016):

* rectifying activations (the ReLU family and its smooth variants: ReLU6/Hardtanh, LeakyReLU, PReLU, ELU,
  SELU, CELU, GELU, SiLU, Mish, Hardswish, Softplus) pass ``relu(g)`` under deconvnet (Zeiler & Fergus),
  ``relu(g) * f'(x)`` under guided backpropagation (Springenberg et al.; for ReLU ``f'(x)`` is the forward
  mask) and ``g * f'(x)`` under the gradient;
* gates (sigmoid, hard sigmoid), which scale a feature map (``x * sigmoid(z)``, squeeze-and-excitation),
  are held at their forward values under deconvnet and guided: no signal goes back through them. Under the
  gradient they pass ``g * f'(x)``;
* other smooth activations (tanh) pass ``g * f'(x)`` in every method.

``f'(x)`` is taken from autograd, once per capture, at the op's own forward input, so module parameters
(PReLU's slopes, LeakyReLU's slope, GELU's approximation) are honoured exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from typing_extensions import override

from deconvviz.core.capture import Call
from deconvviz.ops.base import HeldRule, MirrorContext, Rule, call_op, first_tensor_arg
from deconvviz.ops.geometry import pointwise
from deconvviz.ops.registry import define

METHODS = ("deconvnet", "guided", "gradient")


def _in_place(call: Call) -> bool:
    """Whether the op would overwrite its input (an ``inplace=True`` module or argument, a ``relu_`` form)."""
    if call.module is not None:
        return bool(getattr(call.module, "inplace", False))
    if call.kwargs.get("inplace"):
        return True
    name = getattr(call.fn, "__name__", "")
    return name.endswith("_") and not name.endswith("__")


def run_out_of_place(call: Call) -> Any:
    """Run an element-wise op; on a copy of its input when it works in place and the input is still read."""
    if call.reusable or not _in_place(call):
        return call.run()
    x = first_tensor_arg(call)
    args = (x.clone(), *call.args[1:]) if call.args else ()
    kwargs = dict(call.kwargs) if call.args else {k: (v.clone() if v is x else v) for k, v in call.kwargs.items()}
    return call.fn(*args, **kwargs)


def derivative(call: Call) -> Tensor:
    """``f'(x)`` of an element-wise op at its forward input, from autograd (under inference mode too)."""
    x = first_tensor_arg(call)
    with torch.inference_mode(False), torch.enable_grad():
        leaf = x.detach().clone().requires_grad_(True)
        moved = leaf.clone()  # in-place forms overwrite this copy, not the leaf
        args = (moved, *call.args[1:]) if call.args else ()
        kwargs = dict(call.kwargs) if call.args else {k: (moved if v is x else v) for k, v in call.kwargs.items()}
        out = call.fn(*args, **kwargs)
        (grad,) = torch.autograd.grad(out, leaf, torch.ones_like(out))
    return grad


class ElementwiseRule(Rule):
    """An element-wise activation, with :meth:`slope` (``f'(x)`` or None) kept for the mirror.

    It runs on a copy of its input where working in place would overwrite a value the capture still reads.
    """

    def slope(self, call: Call) -> Tensor | None:
        """``f'(x)`` at the forward input, taken before the op runs (None: not needed)."""
        return derivative(call)

    @override
    def forward(self, call: Call) -> tuple[Any, Any]:
        slope = self.slope(call)
        return run_out_of_place(call), slope

    @override
    def run(self, call: Call) -> Any:
        return run_out_of_place(call)


class RectifierRule(ElementwiseRule):
    """A rectifying activation other than ReLU: ``relu(g)``, ``relu(g) * f'(x)`` or ``g * f'(x)`` by method.

    Args:
        method: ``"deconvnet"``, ``"guided"`` or ``"gradient"``.
    """

    role = "rectifier"

    def __init__(self, method: str = "deconvnet") -> None:
        self.method = method
        # deconvnet rectifies the signal; guided also masks it where the input was cut; the gradient only masks
        self.op_kind = {"deconvnet": "rectify", "guided": "rectify + mask"}.get(method, "mask")

    @override
    def slope(self, call: Call) -> Tensor | None:
        return derivative(call) if self.method != "deconvnet" else None

    @override
    def mirror(self, ctx: MirrorContext, signal: Tensor) -> Sequence[Tensor | None]:
        if self.method == "deconvnet":
            return [torch.relu(signal)]
        slope = ctx.per_seed(ctx.saved).to(signal.dtype)  # f'(x), or ReLU's mask x > 0
        if self.method == "guided":
            return [torch.relu(signal) * slope]
        return [signal * slope]


class ReLURule(RectifierRule):
    """ReLU: deconvnet rectifies the signal (section 2.1), guided also masks it, the gradient only masks it.

    Args:
        method: ``"deconvnet"``, ``"guided"`` or ``"gradient"``.
    """

    @override
    def forward(self, call: Call) -> tuple[Any, Any]:
        # The model's own ReLU(inplace=True) could overwrite a captured activation; only a tensor that nothing
        # reads afterwards is rectified in place.
        x = first_tensor_arg(call)
        mask = (x > 0) if self.method != "deconvnet" else None
        return (torch.relu_(x) if call.reusable else torch.relu(x)), mask

    @override
    def run(self, call: Call) -> Any:
        x = first_tensor_arg(call)
        return torch.relu_(x) if call.reusable else torch.relu(x)


class GateRule(ElementwiseRule, HeldRule):
    """A gate (sigmoid, hard sigmoid): held at its forward value (no signal back) unless ``hold`` is False.

    Args:
        hold: True for deconvnet and guided (the gate is a constant of the feature path), False for the
            gradient (``g * f'(x)``).
    """

    op_kind = "gate"

    @override
    def slope(self, call: Call) -> Tensor | None:
        return None if self.hold else derivative(call)

    @override
    def mirror(self, ctx: MirrorContext, signal: Tensor) -> Sequence[Tensor | None]:
        if self.hold:
            return [None]
        return [signal * ctx.per_seed(ctx.saved).to(signal.dtype)]


class SmoothRule(ElementwiseRule):
    """A smooth activation that is neither a rectifier nor a gate (tanh): ``g * f'(x)`` in every method."""

    op_kind = "slope"

    @override
    def mirror(self, ctx: MirrorContext, signal: Tensor) -> Sequence[Tensor | None]:
        return [signal * ctx.per_seed(ctx.saved).to(signal.dtype)]


RELU: list[Any] = [nn.ReLU, F.relu, torch.relu, torch.relu_, F.relu_, "relu", "relu_"]
RECTIFIERS: list[Any] = [
    nn.ReLU6,
    nn.Hardtanh,
    nn.LeakyReLU,
    nn.PReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Hardswish,
    nn.Softplus,
    F.relu6,
    F.hardtanh,
    F.hardtanh_,
    F.leaky_relu,
    F.leaky_relu_,
    F.prelu,
    torch.prelu,
    F.elu,
    F.elu_,
    F.selu,
    F.selu_,
    torch.selu,
    torch.selu_,
    F.celu,
    F.celu_,
    torch.celu,
    F.gelu,
    F.silu,
    F.mish,
    F.hardswish,
    F.softplus,
]
GATES: list[Any] = [
    nn.Sigmoid,
    nn.Hardsigmoid,
    torch.sigmoid,
    torch.sigmoid_,
    F.sigmoid,
    F.hardsigmoid,
    "sigmoid",
    "sigmoid_",
]
SMOOTH: list[Any] = [nn.Tanh, torch.tanh, torch.tanh_, F.tanh, "tanh", "tanh_"]

define(RELU, ReLURule(), methods={m: ReLURule(m) for m in METHODS}, geometry=pointwise)
define(RECTIFIERS, RectifierRule(), methods={m: RectifierRule(m) for m in METHODS}, geometry=pointwise)
define(GATES, GateRule(), methods={"gradient": GateRule(hold=False)}, geometry=pointwise)
define(SMOOTH, SmoothRule(), geometry=pointwise)

__all__ = [
    "GATES",
    "RECTIFIERS",
    "RELU",
    "SMOOTH",
    "GateRule",
    "ReLURule",
    "RectifierRule",
    "SmoothRule",
    "call_op",
    "derivative",
    "run_out_of_place",
]
