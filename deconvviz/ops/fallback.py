"""The mirror of an op without a rule of its own: autograd over that op alone.

Any node of the graph without a mirror rule -- a submodule torch.fx could not trace into, a ``torch.nn`` module,
a function or a tensor method deconvviz knows no rule for -- is mirrored by the vector-Jacobian product of
that op at the seeds' forward inputs, worked out by autograd and batched over the seeds, with the chosen
method's rules applied inside it: under deconvnet and guided backpropagation every rectifying activation it
calls passes ``relu(g)`` (times ``f'(x)`` for guided), gates (sigmoid, hard sigmoid, softmax, the weights of
scaled dot-product attention) are held at their forward values and layer/group/instance norm statistics are
held, exactly as the traced rules do. Which function plays which part is read from the call's rule set
(:attr:`~deconvviz.ops.base.Rule.role`), so the fallback and the rules cannot drift apart. Under the gradient it
is plain autograd. The result is the one a full trace would give; the first use per op type warns once.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from typing_extensions import override

from deconvviz.core.capture import Call
from deconvviz.errors import first_line
from deconvviz.ops.base import MirrorContext, Rule, local_vjp
from deconvviz.ops.registry import OPS


class _Rectified(torch.autograd.Function):
    """An activation whose backward is deconvnet's ``relu(g)`` or guided's ``relu(g) * f'(x)``."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, fn: Callable[[Tensor], Tensor], guided: bool) -> Tensor:
        ctx.fn, ctx.guided = fn, guided
        ctx.save_for_backward(x)
        return fn(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        (x,) = ctx.saved_tensors
        out = torch.relu(grad)
        if ctx.guided:
            with torch.enable_grad():
                leaf = x.detach().requires_grad_(True)
                y = ctx.fn(leaf)
                (slope,) = torch.autograd.grad(y, leaf, torch.ones_like(y))
            out = out * slope
        return out, None, None


def method_table(rules: Iterable[tuple[Any, Rule]]) -> dict[Any, str]:
    """The functions a rule set gives a role (:attr:`Rule.role`), keyed as ``__torch_function__`` sees them.

    Functions key themselves; a tensor method name (``"relu"``) keys the method (``Tensor.relu``). Module classes
    are left out: a module calls functions (``nn.SiLU`` calls ``F.silu``), and those are what a mode sees.
    """
    table: dict[Any, str] = {}
    for key, rule in rules:
        role = rule.role
        if role is None or isinstance(key, type):
            continue
        if isinstance(key, str):
            method = getattr(Tensor, key, None)
            if method is not None:
                table[method] = role
        else:
            table[key] = role
    return table


_DERIVED: dict[str, tuple[int, dict[Any, str]]] = {}


def registry_table(kind: str) -> dict[Any, str]:
    """:func:`method_table` of the op registry's rules for the reverse pass ``kind`` (re-read when it changes)."""
    found = _DERIVED.get(kind)
    if found is None or found[0] != OPS.version:
        rules = [(key, rule) for key, entry in OPS.items() if (rule := entry.rule(kind)) is not None]
        found = _DERIVED[kind] = (OPS.version, method_table(rules))
    return found[1]


def _held_norm(func: Any, args: Sequence[Any], kwargs: dict[str, Any]) -> Tensor:
    """Layer, group or instance norm with its statistics detached (the forward value is unchanged)."""

    def arg(i: int, name: str, default: Any = None) -> Any:
        return args[i] if len(args) > i else kwargs.get(name, default)

    x = args[0]
    if func is F.layer_norm:
        shape = arg(1, "normalized_shape")
        count = 1 if isinstance(shape, int) else len(shape)
        dims = tuple(range(x.dim() - count, x.dim()))
        weight, bias, eps = arg(2, "weight"), arg(3, "bias"), arg(4, "eps", 1e-5)
        grouped = x
    elif func is F.group_norm:
        groups, weight, bias, eps = arg(1, "num_groups"), arg(2, "weight"), arg(3, "bias"), arg(4, "eps", 1e-5)
        grouped = x.reshape(x.shape[0], groups, -1)
        dims = (2,)
    else:  # instance norm with the sample's own statistics
        if not arg(5, "use_input_stats", True):
            return func(*args, **kwargs)
        weight, bias, eps = arg(3, "weight"), arg(4, "bias"), arg(7, "eps", 1e-5)
        grouped = x.reshape(*x.shape[:2], -1)
        dims = (2,)
    mean = grouped.mean(dim=dims, keepdim=True).detach()
    var = grouped.var(dim=dims, unbiased=False, keepdim=True).detach()
    out = ((grouped - mean) * torch.rsqrt(var + eps)).reshape(x.shape)
    if func is F.layer_norm:
        return (
            out * weight + bias
            if weight is not None and bias is not None
            else (out * weight if weight is not None else out + bias if bias is not None else out)
        )
    channels = (1, -1) + (1,) * (x.dim() - 2)
    if weight is not None:
        out = out * weight.reshape(channels)
    if bias is not None:
        out = out + bias.reshape(channels)
    return out


def held_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> Tensor:
    """``F.scaled_dot_product_attention`` with its attention weights held (detached): a gate over the values.

    Inference only (dropout is not applied).
    """
    if enable_gqa and key.shape[-3] != query.shape[-3]:
        repeat = query.shape[-3] // key.shape[-3]
        key, value = key.repeat_interleave(repeat, dim=-3), value.repeat_interleave(repeat, dim=-3)
    factor = scale if scale is not None else 1.0 / math.sqrt(query.shape[-1])
    logits = (query @ key.transpose(-2, -1)) * factor
    if is_causal:
        length, source = query.shape[-2], key.shape[-2]
        causal = torch.ones(length, source, dtype=torch.bool, device=query.device).tril()
        logits = logits.masked_fill(~causal, float("-inf"))
    if attn_mask is not None:
        logits = logits.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else logits + attn_mask
    weights = torch.softmax(logits, dim=-1).detach()
    return weights @ value


class MethodMode(TorchFunctionMode):
    """Apply deconvnet's or guided backpropagation's rules to the functions a submodule calls.

    Args:
        guided: guided backpropagation (``relu(g) * f'(x)``) instead of deconvnet (``relu(g)``).
        table: function -> role (see :func:`method_table`); by default the op registry's, for the method.
    """

    def __init__(self, guided: bool, table: dict[Any, str] | None = None) -> None:
        super().__init__()
        self.guided = guided
        self.table = table if table is not None else registry_table("guided" if guided else "deconvnet")

    def __torch_function__(
        self, func: Any, types: Any, args: Sequence[Any] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = kwargs or {}
        try:
            role = self.table.get(func)
        except TypeError:  # unhashable
            role = None
        if role == "rectifier" and args and isinstance(args[0], Tensor):
            rest = tuple(args[1:])

            def fn(t: Tensor) -> Tensor:
                return func(t.clone(), *rest, **kwargs)

            return _Rectified.apply(args[0], fn, self.guided)
        if role == "gate":
            return func(*args, **kwargs).detach()
        if role == "held_norm" and func in (F.layer_norm, F.group_norm, F.instance_norm):
            return _held_norm(func, args, kwargs)
        if role == "held_attention":
            return held_attention(*args, **kwargs)
        return func(*args, **kwargs)


_WARNED: set[Any] = set()
"""Op types the fallback has warned about (once each)."""


class FallbackWarning(UserWarning):
    """An op without a mirror rule was mirrored by autograd over that op alone (correct, but slower)."""


USER_MODULE_PREFIX = "deconvviz_user_"
"""How the private module names of model files given by path begin (``mynet.py:build``)."""


def describe_op(op: Any) -> tuple[str, str]:
    """How to name an op in a message, and how to spell its registry key in code (``"'view'"``, ``torch.max``)."""
    if isinstance(op, nn.Module):
        cls = type(op)
        return f"module {cls.__name__}", _spelled(cls.__module__, cls.__qualname__)
    if isinstance(op, str):
        return f"tensor method .{op}()", repr(op)
    qual = _spelled(getattr(op, "__module__", None) or "builtins", str(getattr(op, "__name__", op)))
    return f"function {qual}", qual


def _spelled(module: str, name: str) -> str:
    """``module.name`` as code would import it.

    A model file given by path (``mynet.py:build``) is loaded under a private module name, so its classes are
    named as that file's own code spells them.
    """
    if module.startswith(USER_MODULE_PREFIX):
        return name
    return f"{module}.{name}"


def op_type(op: Any) -> Any:
    """The registry key of an op (a module's class, else the op itself)."""
    return type(op) if isinstance(op, nn.Module) else op


class FallbackRule(Rule):
    """Autograd over one op without a rule, with the method's rules applied inside it (see the module docstring).

    Args:
        kind: ``"deconvnet"``, ``"guided"`` or ``"gradient"``.
        rules: the rule set it serves, as ``(op, rule)`` pairs: the roles its rules give functions
            (rectifier, gate, held statistics) apply inside the op. By default the op registry's for ``kind``.
    """

    op_kind = "autograd"

    needs_inputs = True

    def __init__(self, kind: str = "deconvnet", rules: Iterable[tuple[Any, Rule]] | None = None) -> None:
        self.kind = kind
        self._table = method_table(rules) if rules is not None else None

    def mode(self) -> MethodMode | None:
        """The mode applied while the op runs under autograd (None for the gradient: plain autograd)."""
        if self.kind == "gradient":
            return None
        return MethodMode(guided=self.kind == "guided", table=self._table)

    @override
    def forward(self, call: Call) -> tuple[Any, Any]:
        # The op may work in place on its input; give it a copy unless nothing reads the input again.
        if not call.reusable and call.args and isinstance(call.args[0], Tensor) and _may_write(call):
            return call.fn(call.args[0].clone(), *call.args[1:], **call.kwargs), None
        return call.run(), None

    @override
    def run(self, call: Call) -> Any:
        return self.forward(call)[0]

    @override
    def mirror(self, ctx: MirrorContext, signal: Tensor) -> Sequence[Tensor | None]:
        values = [ctx.value(i) for i in range(len(ctx.inputs))]
        key = op_type(ctx.op)
        try:
            grads = local_vjp(ctx.op, ctx.args, ctx.kwargs, values, signal, mode=self.mode())
        except Exception as exc:  # autograd cannot differentiate it: one line naming the node and the op
            what, spelled = describe_op(ctx.op)
            first = first_line(exc)
            raise ctx.unsupported(
                f"{what} has no mirror rule and autograd cannot mirror it ({first}); register one with "
                f"deconvviz.register_rule({spelled}, rule)"
            ) from exc
        try:
            fresh = key not in _WARNED
        except TypeError:
            fresh = False
        if fresh:
            _WARNED.add(key)
            what, spelled = describe_op(ctx.op)
            warnings.warn(
                f"{what} (node {ctx.name!r}) has no mirror rule: mirrored by autograd over that op, which is "
                f"exact but slower; deconvviz.register_rule({spelled}, rule) makes it faster",
                FallbackWarning,
                stacklevel=2,
            )
        return grads


def _may_write(call: Call) -> bool:
    """Whether an op may overwrite its first argument: any module (its code is its own), an in-place function."""
    if call.module is not None:
        return True
    if call.kwargs.get("inplace"):
        return True
    name = getattr(call.fn, "__name__", "")
    return name.endswith("_") and not name.endswith("__")


__all__ = [
    "USER_MODULE_PREFIX",
    "FallbackRule",
    "FallbackWarning",
    "MethodMode",
    "describe_op",
    "held_attention",
    "method_table",
    "op_type",
    "registry_table",
]
