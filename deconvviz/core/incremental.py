"""Incremental, batched re-inference of a traced CNN for many occluded copies of one image.

An occluder changes, at each layer, only the units whose receptive field it touches. The unoccluded image is
run once and every activation kept; then, for a batch of occluder positions, each op recomputes only the
region of its output that the occluder can reach (Nakandala et al., SIGMOD 2019), reading its input from the
recomputed region of the layer below where it has one and from the unoccluded activations elsewhere:

* sliding-window ops (convolution, max and average pooling) compute an output region of fixed size per layer
  (the largest any position needs, shifted inside the map at the borders, so a whole batch shares one
  shape) from an input window padded with the op's own padding value (zero, or -inf for max pooling) where
  it reaches past the map;
* element-wise and channel-wise ops and merges of branches (``+``, ``torch.cat`` along channels, batch
  norm, ReLU) run on the region that covers all their inputs' regions;
* every other op (global or adaptive pooling, flatten, the classifier, an op whose geometry is unknown) runs
  on the full, cheap tensor of the whole batch.

The result equals running the network on every occluded image (up to the rounding of a different summation
order); the tests hold it to naive re-inference.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from deconvviz.core.graph import Graph, op_name
from deconvviz.ops.geometry import GEOMETRIES, pointwise
from deconvviz.ops.window import WindowError, window_of

Interval = tuple[int, int]
"""``[start, stop)`` rows or columns; empty when ``stop <= start``."""


# ------------------------------------------------------------------------------------------- op kinds


@dataclass(frozen=True)
class _Window:
    """A sliding-window op, with what it takes to run it on a pre-padded window of its input."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]  # before the first row / column; after the last is implied by the output size
    dilation: tuple[int, int]
    fill: float  # the value the op pads with
    run: Callable[[Tensor], Tensor]  # the op on an already padded input, padding 0

    def span(self, i: int) -> int:
        """Input rows (i=0) or columns (i=1) one output unit reads."""
        return self.dilation[i] * (self.kernel[i] - 1) + 1


def _window(node: fx.Node, module: nn.Module | None, args: tuple[Any, ...], kwargs: dict[str, Any]) -> _Window | None:
    """The sliding-window description of a node, or None when it is not one this engine can crop."""
    if node.op == "call_method":
        return None
    try:
        found = window_of(module if module is not None else node.target, args, kwargs)
    except WindowError:
        return None
    if found is None:
        return None
    k, s, p, d = found.kernel, found.stride, found.before, found.dilation
    if found.kind == "conv":
        weight, bias, groups = found.weight, found.bias, found.groups
        if weight is None or found.padding_mode != "zeros":
            return None
        return _Window(k, s, p, d, 0.0, lambda x: F.conv2d(x, weight, bias, s, 0, d, groups))
    if found.kind == "max":
        if found.return_indices:
            return None
        return _Window(k, s, p, d, -math.inf, lambda x: F.max_pool2d(x, k, s, 0, d))
    # Average pooling: windows clipped by the border divide by their clipped size unless the padding counts;
    # only the case where every window divides by the full kernel can be cropped.
    if found.ceil_mode or (p != (0, 0) and not found.count_include_pad):
        return None
    divisor = found.divisor_override
    return _Window(k, s, p, (1, 1), 0.0, lambda x: F.avg_pool2d(x, k, s, 0, divisor_override=divisor))


_CATS = (torch.cat, torch.concat, torch.concatenate)


def _is_pointwise(node: fx.Node, module: nn.Module | None, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    if node.op == "call_function" and node.target in _CATS:
        dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
        return dim in (1, -3)
    return GEOMETRIES.for_node(node, module) is pointwise


def _may_write_input(node: fx.Node, module: nn.Module | None, kwargs: dict[str, Any]) -> bool:
    """Whether the op may overwrite its first argument (an in-place op)."""
    if module is not None:
        return bool(getattr(module, "inplace", False))
    if kwargs.get("inplace"):
        return True
    name = op_name(node)
    return (name.endswith("_") and not name.endswith("__")) or node.target in (
        operator.iadd,
        operator.isub,
        operator.imul,
        operator.itruediv,
    )


def _invoke(graph: Graph, node: fx.Node, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Run one op as the model does, on the given arguments (an in-place op works on a copy)."""
    module = graph.module(node)
    if type(module) is nn.ReLU and len(args) == 1 and not kwargs:
        return torch.relu(args[0])  # out of place, rather than a copy rectified in place
    if _may_write_input(node, module, kwargs) and args and isinstance(args[0], Tensor):
        args = (args[0].clone(), *args[1:])  # never let an in-place op overwrite a kept value
    if module is not None:
        return module(*args, **kwargs)
    if node.op == "call_method":
        return getattr(args[0], str(node.target))(*args[1:], **kwargs)
    return node.target(*args, **kwargs)  # type: ignore[operator]


def _execute(graph: Graph, x: Tensor, order: Sequence[fx.Node]) -> dict[fx.Node, Any]:
    """Every value of ``order`` (an execution-ordered list of nodes) for the input ``x``."""
    env: dict[fx.Node, Any] = {}
    for node in order:
        if node.op == "placeholder":
            env[node] = x if node is graph.input else (node.args[0] if node.args else None)
        elif node.op == "get_attr":
            env[node] = graph.attribute(node)
        elif node.op != "output":
            args = tuple(fx.node.map_arg(node.args, env.__getitem__))
            kwargs = dict(fx.node.map_arg(node.kwargs, env.__getitem__))
            env[node] = _invoke(graph, node, args, kwargs)
    return env


# ---------------------------------------------------------------------------------------- values


@dataclass
class _Patch:
    """The recomputed region of a ``(N, C, H, W)`` map for every position of a batch.

    ``data[b]`` holds rows ``rows[b]:rows[b] + h`` and columns ``cols[b]:cols[b] + w`` of position ``b``'s map;
    outside it the map equals the unoccluded one.
    """

    data: Tensor
    rows: list[int]  # start row per position
    cols: list[int]  # start column per position


@dataclass
class _Plan:
    """Per node, how the incremental pass computes it."""

    kind: str  # "input", "window", "pointwise", "full", "constant"
    rows: list[int] | None = None  # start row of the region, per occluder row
    cols: list[int] | None = None
    size: tuple[int, int] | None = None  # (h, w) of the region
    window: _Window | None = None


def _clip(interval: Interval, length: int) -> Interval:
    return (max(0, interval[0]), min(length, interval[1]))


def _through(interval: Interval, w: _Window, i: int, length: int) -> Interval:
    """Output units of a window op whose window meets input ``interval``, clipped to the output's ``length``."""
    a, b = interval
    if b <= a:
        return (0, 0)
    lo = -((-(a + w.padding[i] - w.span(i) + 1)) // w.stride[i])  # ceil
    hi = (b - 1 + w.padding[i]) // w.stride[i] + 1
    return _clip((lo, hi), length)


def _union(intervals: Sequence[Interval]) -> Interval:
    real = [iv for iv in intervals if iv[1] > iv[0]]
    if not real:
        return (0, 0)
    return (min(iv[0] for iv in real), max(iv[1] for iv in real))


def _starts(intervals: Sequence[Interval], length: int) -> tuple[list[int], int]:
    """A region size that holds every interval, and each interval's start shifted to keep the region inside."""
    size = max(1, *(iv[1] - iv[0] for iv in intervals)) if intervals else 1
    size = min(size, length)
    return [min(max(iv[0], 0), length - size) for iv in intervals], size


# ---------------------------------------------------------------------------------------- engine


class IncrementalOcclusion:
    """Runs a traced graph on many occluded copies of one image, recomputing only what each occluder changes.

    Args:
        graph: the traced model (in eval mode for the duration of the calls).
        x: the unoccluded ``(1, C, H, W)`` input.
        targets: nodes whose outputs are wanted for every occluded copy.
        row_boxes: the occluder's ``[top, bottom)`` rows, per occluder row (clipped to the image).
        col_boxes: the occluder's ``[left, right)`` columns, per occluder column.
        fill: the value the occluder paints (zero in a normalised input space: the mean colour).
    """

    def __init__(
        self,
        graph: Graph,
        x: Tensor,
        targets: Sequence[fx.Node],
        row_boxes: Sequence[Interval],
        col_boxes: Sequence[Interval],
        fill: float = 0.0,
    ) -> None:
        self.graph = graph
        self.x = x
        self.targets = list(targets)
        self.row_boxes = [_clip(b, int(x.shape[-2])) for b in row_boxes]
        self.col_boxes = [_clip(b, int(x.shape[-1])) for b in col_boxes]
        self.fill = fill
        self.order = graph.ancestors(self.targets)
        self.cached = self._run_unoccluded()
        self.plans = self._plan()
        self._padded: dict[tuple[fx.Node, float, int, int, int, int], Tensor] = {}
        self._last_use = self._last_users()

    # -- the unoccluded pass and the plan

    def _invoke(self, node: fx.Node, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return _invoke(self.graph, node, args, kwargs)

    def _run_unoccluded(self) -> dict[fx.Node, Any]:
        return _execute(self.graph, self.x, self.order)

    def _plan(self) -> dict[fx.Node, _Plan]:
        graph, cached = self.graph, self.cached
        plans: dict[fx.Node, _Plan] = {}
        # Affected rows / columns per occluder row / column, per node in region mode.
        rows: dict[fx.Node, list[Interval]] = {graph.input: self.row_boxes}
        cols: dict[fx.Node, list[Interval]] = {graph.input: self.col_boxes}
        height, width = int(self.x.shape[-2]), int(self.x.shape[-1])
        plans[graph.input] = _Plan("input", [b[0] for b in self.row_boxes], [b[0] for b in self.col_boxes])
        in_region = {graph.input}
        depends = {graph.input}
        for node in self.order:
            if node is graph.input or node.op in ("placeholder", "get_attr", "output"):
                continue
            parents = [a for a in node.all_input_nodes if a in depends]
            if not parents:
                plans[node] = _Plan("constant")
                continue
            depends.add(node)
            if node not in graph.carries:
                plans[node] = _Plan("full")  # metadata (sizes): evaluated on the batch's shapes
                continue
            value = cached[node]
            carried = [a for a in node.all_input_nodes if a in graph.carries]
            region = (
                isinstance(value, Tensor)
                and value.dim() == 4
                and all(a in in_region for a in carried)
                and not self._spatial_constant(node, value)
            )
            kind = "full"
            window = None
            if region:
                module = graph.module(node)
                args = tuple(fx.node.map_arg(node.args, lambda a: cached[a]))
                kwargs = dict(fx.node.map_arg(node.kwargs, lambda a: cached[a]))
                window = _window(node, module, args, kwargs) if len(carried) == 1 else None
                if window is not None and all(isinstance(cached[a], Tensor) and cached[a].dim() == 4 for a in carried):
                    kind = "window"
                elif _is_pointwise(node, module, args, kwargs) and all(
                    cached[a].shape[-2:] == value.shape[-2:] for a in carried
                ):
                    kind = "pointwise"
            if kind == "full":
                plans[node] = _Plan("full")
                continue
            out_h, out_w = int(value.shape[-2]), int(value.shape[-1])
            if kind == "window":
                assert window is not None
                parent = carried[0]
                r = [_through(iv, window, 0, out_h) for iv in rows[parent]]
                c = [_through(iv, window, 1, out_w) for iv in cols[parent]]
            else:
                r = [_union(ivs) for ivs in zip(*(rows[a] for a in carried), strict=True)]
                c = [_union(ivs) for ivs in zip(*(cols[a] for a in carried), strict=True)]
            rows[node], cols[node] = r, c
            row_starts, h = _starts(r, out_h)
            col_starts, w = _starts(c, out_w)
            plans[node] = _Plan(kind, row_starts, col_starts, (h, w), window)
            in_region.add(node)
        del height, width
        return plans

    def _spatial_constant(self, node: fx.Node, value: Tensor) -> bool:
        """Whether the op mixes in a tensor that does not depend on the image but varies over positions."""
        for arg in node.all_input_nodes:
            if arg in self.graph.carries:
                continue
            other = self.cached.get(arg)
            if isinstance(other, Tensor) and other.dim() >= 2 and tuple(other.shape[-2:]) != (1, 1):
                return True
        return False

    def _last_users(self) -> dict[fx.Node, fx.Node]:
        last: dict[fx.Node, fx.Node] = {}
        for node in self.order:
            for arg in node.all_input_nodes:
                last[arg] = node
        return last

    # -- region reads

    def _padded_cache(self, node: fx.Node, fill: float, pads: tuple[int, int, int, int]) -> Tensor:
        key = (node, fill, *pads)
        found = self._padded.get(key)
        if found is None:
            top, bottom, left, right = pads
            found = F.pad(self.cached[node], (left, right, top, bottom), value=fill)
            self._padded[key] = found
        return found

    def _read(
        self, node: fx.Node, value: Any, rows: list[int], cols: list[int], size: tuple[int, int], fill: float
    ) -> Tensor:
        """Rows ``rows[b]:rows[b]+h``, columns ``cols[b]:cols[b]+w`` of each position's map of ``node``.

        Parts of the window outside the map read ``fill``; parts outside the recomputed region read the
        unoccluded map.
        """
        h, w = size
        patch: _Patch = value
        data = patch.data
        ph, pw = int(data.shape[-2]), int(data.shape[-1])
        dr = [r - p for r, p in zip(rows, patch.rows, strict=True)]  # window start inside the patch
        dc = [c - p for c, p in zip(cols, patch.cols, strict=True)]
        if min(dr) >= 0 and max(dr) + h <= ph and min(dc) >= 0 and max(dc) + w <= pw:
            if len(set(dr)) == 1 and len(set(dc)) == 1:
                return data[:, :, dr[0] : dr[0] + h, dc[0] : dc[0] + w]
            return torch.stack([data[b, :, r : r + h, c : c + w] for b, (r, c) in enumerate(zip(dr, dc, strict=True))])
        cached = self.cached[node]
        height, width = int(cached.shape[-2]), int(cached.shape[-1])
        top, left = max(0, -min(rows)), max(0, -min(cols))
        bottom, right = max(0, max(rows) + h - height), max(0, max(cols) + w - width)
        base = self._padded_cache(node, fill, (top, bottom, left, right))[0]
        out = torch.stack(
            [base[:, r + top : r + top + h, c + left : c + left + w] for r, c in zip(rows, cols, strict=True)]
        )
        for b, (r, c) in enumerate(zip(dr, dc, strict=True)):
            # The recomputed patch, in window coordinates: rows -r .. ph - r, clipped to the window.
            i0, i1, j0, j1 = max(0, -r), min(h, ph - r), max(0, -c), min(w, pw - c)
            if i0 < i1 and j0 < j1:
                out[b, :, i0:i1, j0:j1] = data[b, :, r + i0 : r + i1, c + j0 : c + j1]
        return out

    def _full(self, node: fx.Node, value: Any, batch: int) -> Any:
        """The whole map of ``node`` for every position of the batch."""
        if not isinstance(value, _Patch):
            return value
        cached = self.cached[node]
        out = cached.expand(batch, *cached.shape[1:]).clone()
        h, w = int(value.data.shape[-2]), int(value.data.shape[-1])
        for b, (r, c) in enumerate(zip(value.rows, value.cols, strict=True)):
            out[b, :, r : r + h, c : c + w] = value.data[b]
        return out

    # -- the incremental pass

    def run(self, positions: Sequence[tuple[int, int]]) -> dict[fx.Node, Any]:
        """The targets' values for a batch of occluder positions ``(row index, col index)``.

        Returns:
            Per target node, a :class:`_Patch` for region-mode nodes (see :meth:`channel_totals` and :meth:`full`) or
            the full batched value.
        """
        batch = len(positions)
        env: dict[fx.Node, Any] = {}
        wanted = set(self.targets)
        for node in self.order:
            if node.op == "output":
                continue
            plan = self.plans.get(node)
            if plan is None or plan.kind == "constant":
                env[node] = self.cached[node]
                continue
            if plan.kind == "input":
                env[node] = self._occluded_input(positions)
            elif plan.kind in ("window", "pointwise"):
                assert plan.rows is not None
                assert plan.cols is not None
                rows = [plan.rows[p[0]] for p in positions]
                cols = [plan.cols[p[1]] for p in positions]
                env[node] = _Patch(self._region(node, plan, env, rows, cols), rows, cols)
            else:
                env[node] = self._run_full(node, env, batch)
            for arg in node.all_input_nodes:
                if self._last_use.get(arg) is node and arg not in wanted:
                    env.pop(arg, None)
        return {node: env[node] for node in self.targets}

    def _occluded_input(self, positions: Sequence[tuple[int, int]]) -> _Patch:
        """The occluder's box of each position (the rest of the image is unchanged)."""
        height, width = int(self.x.shape[-2]), int(self.x.shape[-1])
        starts_r, h = _starts(self.row_boxes, height)
        starts_c, w = _starts(self.col_boxes, width)
        rows = [starts_r[i] for i, _ in positions]
        cols = [starts_c[j] for _, j in positions]
        data = torch.stack([self.x[0, :, r : r + h, c : c + w] for r, c in zip(rows, cols, strict=True)])
        for b, (i, j) in enumerate(positions):
            (top, bottom), (left, right) = self.row_boxes[i], self.col_boxes[j]
            data[b, :, top - rows[b] : bottom - rows[b], left - cols[b] : right - cols[b]] = self.fill
        return _Patch(data, rows, cols)

    def _region(self, node: fx.Node, plan: _Plan, env: dict[fx.Node, Any], rows: list[int], cols: list[int]) -> Tensor:
        assert plan.size is not None
        h, w = plan.size
        if plan.kind == "window":
            window = plan.window
            assert window is not None
            parent = next(a for a in node.all_input_nodes if a in self.graph.carries)
            in_rows = [r * window.stride[0] - window.padding[0] for r in rows]
            in_cols = [c * window.stride[1] - window.padding[1] for c in cols]
            size = ((h - 1) * window.stride[0] + window.span(0), (w - 1) * window.stride[1] + window.span(1))
            return window.run(self._read(parent, env[parent], in_rows, in_cols, size, window.fill))

        def value(arg: fx.Node) -> Any:
            if arg in self.graph.carries:
                return self._read(arg, env[arg], rows, cols, (h, w), 0.0)
            return env[arg]

        args = tuple(fx.node.map_arg(node.args, value))
        kwargs = dict(fx.node.map_arg(node.kwargs, value))
        return self._invoke(node, args, kwargs)

    def _run_full(self, node: fx.Node, env: dict[fx.Node, Any], batch: int) -> Any:
        if node not in self.graph.carries:
            # A metadata op (``x.size(0)``): evaluate it on a stand-in with the batch's shape.
            def meta(arg: fx.Node) -> Any:
                found = env[arg]
                if isinstance(found, _Patch):
                    cached = self.cached[arg]
                    return torch.empty((batch, *cached.shape[1:]), dtype=cached.dtype, device="meta")
                return found

            args = tuple(fx.node.map_arg(node.args, meta))
            kwargs = dict(fx.node.map_arg(node.kwargs, meta))
            return self._invoke(node, args, kwargs)

        def full(arg: fx.Node) -> Any:
            return self._full(arg, env[arg], batch)

        args = tuple(fx.node.map_arg(node.args, full))
        kwargs = dict(fx.node.map_arg(node.kwargs, full))
        return self._invoke(node, args, kwargs)

    # -- reading results

    def full(self, node: fx.Node, value: Any, batch: int) -> Tensor:
        """A target's whole value for every position of a batch."""
        return self._full(node, value, batch)

    def channel_totals(self, node: fx.Node, value: Any, channel: int) -> Tensor:
        """``(B,)`` the sum of one channel's map of a 4-D target, per position of a batch."""
        cached = self.cached[node]
        if not isinstance(value, _Patch):
            return value[:, channel].flatten(1).sum(1)
        data = value.data[:, channel]
        h, w = int(data.shape[-2]), int(data.shape[-1])
        before = torch.stack(
            [cached[0, channel, r : r + h, c : c + w] for r, c in zip(value.rows, value.cols, strict=True)]
        )
        return cached[0, channel].sum() + (data - before).flatten(1).sum(1)


def occluded_images(x: Tensor, boxes: Sequence[tuple[Interval, Interval]], fill: float = 0.0) -> Tensor:
    """``(B, C, H, W)`` copies of ``x`` with each box ``((top, bottom), (left, right))`` painted ``fill``."""
    out = x.expand(len(boxes), *x.shape[1:]).clone()
    for i, ((top, bottom), (left, right)) in enumerate(boxes):
        out[i, :, max(top, 0) : bottom, max(left, 0) : right] = fill
    return out


def run_graph(graph: Graph, x: Tensor, targets: Sequence[fx.Node]) -> dict[fx.Node, Any]:
    """Run the traced graph on a batch and return the targets' values (plain re-inference)."""
    env = _execute(graph, x, graph.ancestors(targets))
    return {node: env[node] for node in targets}
