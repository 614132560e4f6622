"""A probe forward pass that tells the receptive-field walk what the graph alone cannot.

Two things need a forward pass: the shapes of an op's tensors (a reshape keeps positions only when height
and width stay the last two dimensions), and the geometry of an op that has none registered. That geometry
is *measured*: one unit at the centre of the op's output is seeded with random values across its channels
and mirrored through the op by the call's rule set (its rule, or the autograd fallback); the box holding the
non-zeros of the signal at each input gives the op's window (size, stride from the ratio of the sizes, or where
they are in no integer ratio the smallest stride whose output size matches, and padding from where the box
starts). Where the box covers the whole input, or no stride fits, every unit sees the whole image. Where no
signal reaches an input (a gate held at its forward value), that input does not widen the field.

The probe runs once per traced graph and rule set, on random values at the size of the last picture the
model saw (224 x 224 before any), and keeps only shapes and what the rules ask for.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, fx

from deconvviz.core import capture as _capture
from deconvviz.core import walk as _walk
from deconvviz.core.capture import TensorMeta, TupleMeta
from deconvviz.core.graph import Graph
from deconvviz.errors import first_line
from deconvviz.ops.geometry import ReceptiveField, UnknownGeometryError

if TYPE_CHECKING:  # pragma: no cover
    from deconvviz.methods import RuleSet
    from deconvviz.ops.geometry import ReceptiveField

Shapes = tuple[list[tuple[int, ...] | None], tuple[int, ...] | None]


def _shape(meta: Any) -> tuple[int, ...] | None:
    if isinstance(meta, TensorMeta):
        return tuple(meta.shape)
    if isinstance(meta, TupleMeta):
        first = next((item for item in meta.items if item is not None), None)
        return None if first is None else tuple(first.shape)
    return None


class Probe:
    """Shapes and measured geometries of a traced graph's ops, from one forward pass on random values.

    Args:
        graph: the traced model.
        rules: the call's rule set (its rules mirror the seeded unit when a geometry is measured).
        forward_rules: the rule per node for the capture pass (as :class:`~deconvviz.DeconvNet` chooses them).
        input_shape: the shape of the probe's input ``(1, C, H, W)``.
        like: a tensor whose dtype and device the probe's input takes.
    """

    def __init__(
        self,
        graph: Graph,
        rules: RuleSet,
        forward_rules: Callable[[list[fx.Node]], Mapping[fx.Node, Any]],
        input_shape: tuple[int, ...],
        like: Tensor,
    ) -> None:
        self.graph, self.rules = graph, rules
        self._forward_rules = forward_rules
        self._input_shape = input_shape
        self._like = like
        self._capture: _capture.Capture | None = None
        self.measured: set[fx.Node] = set()

    def _run(self) -> _capture.Capture:
        if self._capture is None:
            graph = self.graph
            sinks = [n for n in graph.carries if n.op != "output" and not any(u in graph.carries for u in n.users)]
            targets = [n for n in graph.nodes if n in sinks]
            generator = torch.Generator().manual_seed(0)
            x = torch.randn(self._input_shape, generator=generator, dtype=torch.float64)
            x = x.to(device=self._like.device, dtype=self._like.dtype)
            with torch.inference_mode():
                self._capture = _capture.run(graph, x, targets, self._forward_rules(targets))
        return self._capture

    def shapes(self, node: fx.Node) -> Shapes | None:
        """The shapes of ``node``'s signal-carrying inputs and of its output in the probe pass."""
        try:
            record = self._run().records.get(node)
        except Exception:  # a model that cannot run on the probe: geometries fall back to what the graph says
            return None
        if record is None:
            return None
        return [_shape(m) for m in record.inputs], _shape(record.output)

    def measure(self, node: fx.Node, inputs: list[ReceptiveField | None]) -> ReceptiveField | None:
        """The field of ``node`` measured by mirroring its centre unit; None when no signal reaches any input.

        Args:
            node: the op.
            inputs: the fields of its signal-carrying inputs, in order (None for a held input).
        """
        self.measured.add(node)
        try:
            capture = self._run()
        except Exception as exc:  # the model does not run on the probe: say so in one line
            first = first_line(exc)
            raise UnknownGeometryError(
                f"cannot measure the receptive field at node {self.graph.names[node]!r}: the model does not run on "
                f"a probe of shape {tuple(self._input_shape)} ({first}); register a geometry for the op with "
                "deconvviz.register_geometry"
            ) from exc
        record = capture.records[node]
        out = _shape(record.output)
        if out is None or len(out) != 4:
            return ReceptiveField.whole()
        rows, cols = out[-2:]
        generator = torch.Generator().manual_seed(1)
        seed = torch.zeros((1, *out[1:]), dtype=torch.float64)
        seed[0, :, rows // 2, cols // 2] = torch.randn(out[1], generator=generator, dtype=torch.float64)
        like = next((v for v in capture.activations.values() if isinstance(v, Tensor)), seed)  # not a tuple's
        seed = seed.to(device=like.device, dtype=like.dtype)
        signal: Any = seed
        if isinstance(record.output, TupleMeta):
            signal = [seed if i == 0 else None for i in range(len(record.output.items))]
        sample = torch.zeros(1, dtype=torch.long, device=like.device)
        rule = self.rules.for_node(node, self.graph.module(node))
        assert rule is not None
        with torch.inference_mode():
            back = list(rule.mirror(_walk.context(self.graph, capture, node, sample), signal))
        found: list[ReceptiveField] = []
        for field, meta, piece in zip(inputs, record.inputs, back, strict=True):
            if field is None or piece is None or not isinstance(piece, Tensor) or not isinstance(meta, TensorMeta):
                continue
            window = _window(piece, (rows, cols))
            if window == "none":
                continue
            if window == "whole":
                return ReceptiveField.whole()
            kernel, stride, padding = window
            found.append(field.through(kernel, stride, padding))
        if not found:
            return None
        return ReceptiveField.enclosing(found)


def _window(signal: Tensor, out_size: tuple[int, int]) -> Any:
    """``(kernel, stride, padding)`` from the non-zero box of one input's signal; ``"whole"`` or ``"none"``."""
    if signal.dim() != 4:
        return "whole"
    mask = signal.detach().abs().sum(dim=(0, 1)) > 0
    if not bool(mask.any()):
        return "none"
    size = (int(mask.shape[0]), int(mask.shape[1]))
    kernel, stride, padding = [], [], []
    for i in range(2):
        along = mask.any(dim=1 - i)
        hits = torch.nonzero(along).flatten()
        first, last = int(hits[0]), int(hits[-1]) + 1
        if first == 0 and last == size[i] and size[i] > 2:
            return "whole"
        if size[i] % out_size[i] == 0:
            step = size[i] // out_size[i]
        else:  # a window without padding (or with some): sizes in no integer ratio, 224 -> 222
            found = _stride(size[i], out_size[i], last - first, first)
            if found is None:
                return "whole"
            step = found
        kernel.append(last - first)
        stride.append(step)
        padding.append((out_size[i] // 2) * step - first)
    return (kernel[0], kernel[1]), (stride[0], stride[1]), (padding[0], padding[1])


def _stride(size: int, out: int, kernel: int, first: int) -> int | None:
    """The smallest stride of a ``kernel`` window that maps ``size`` inputs to ``out`` outputs (None: none does).

    The centre unit's window starts at ``first``; the output size is counted as convolutions and pooling do.
    """
    for step in range(1, size // max(out - 1, 1) + 2):
        pad = (out // 2) * step - first
        if pad >= 0 and (size + 2 * pad - kernel) // step + 1 == out:
            return step
    return None


__all__ = ["Probe"]
