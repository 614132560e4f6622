"""Mirror rules (kept importable here; they live in :mod:`deconvviz.ops`, one module per kind of op)."""

from __future__ import annotations

from deconvviz.ops import get_rule, register_rule
from deconvviz.ops.activation import ReLURule
from deconvviz.ops.arith import AddRule, MeanRule, ScaleRule
from deconvviz.ops.base import MirrorContext, Rule
from deconvviz.ops.conv import Conv2dRule, LinearRule, conv2d_transpose
from deconvviz.ops.norm import BatchNormRule
from deconvviz.ops.pool import AdaptiveAvgPool2dRule, AdaptiveMaxPool2dRule, AvgPool2dRule, MaxPool2dRule, unpool
from deconvviz.ops.registry import OpKey as RuleKey
from deconvviz.ops.shape import CatRule, GetItemRule, IdentityRule, ReshapeRule

__all__ = [
    "AdaptiveAvgPool2dRule",
    "AdaptiveMaxPool2dRule",
    "AddRule",
    "AvgPool2dRule",
    "BatchNormRule",
    "CatRule",
    "Conv2dRule",
    "GetItemRule",
    "IdentityRule",
    "LinearRule",
    "MaxPool2dRule",
    "MeanRule",
    "MirrorContext",
    "ReLURule",
    "ReshapeRule",
    "Rule",
    "RuleKey",
    "ScaleRule",
    "conv2d_transpose",
    "get_rule",
    "register_rule",
    "unpool",
]
