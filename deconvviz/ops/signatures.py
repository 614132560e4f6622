"""Python signatures of the functional ops that traced graphs call, for naming a call's arguments.

``inspect.signature(fn).bind(*node.args, **node.kwargs)`` gives every argument its name and default; torch's
own functions do not all expose a signature that ``inspect`` can read, so they are written out here.
"""

from __future__ import annotations

from typing import Any


def conv2d(
    input: Any,
    weight: Any,
    bias: Any = None,
    stride: Any = 1,
    padding: Any = 0,
    dilation: Any = 1,
    groups: int = 1,
) -> None:
    """Signature of ``torch.nn.functional.conv2d``."""


def max_pool2d(
    input: Any,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    dilation: Any = 1,
    ceil_mode: bool = False,
    return_indices: bool = False,
) -> None:
    """Signature of ``torch.nn.functional.max_pool2d``."""


def avg_pool2d(
    input: Any,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
    divisor_override: int | None = None,
) -> None:
    """Signature of ``torch.nn.functional.avg_pool2d``."""


def linear(input: Any, weight: Any, bias: Any = None) -> None:
    """Signature of ``torch.nn.functional.linear``."""


def conv_transpose2d(
    input: Any,
    weight: Any,
    bias: Any = None,
    stride: Any = 1,
    padding: Any = 0,
    output_padding: Any = 0,
    groups: int = 1,
    dilation: Any = 1,
) -> None:
    """Signature of ``torch.nn.functional.conv_transpose2d``."""
