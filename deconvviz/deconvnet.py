"""The mirrored deconvnet of Zeiler & Fergus (2014), attached to any torch.fx-traceable CNN.

Projection of an activation back to pixel space: capture one forward pass (activations, max-pooling
switches, shapes), keep the chosen activation(s) as the seed with every other activation of the layer set
to zero, and walk the graph backwards applying each op's mirror rule (unpool with the switches, rectify,
filter with the transposed weights). All seeds share one capture pass; they go down the mirror in batches
sized for the device (see ``DeconvNet``'s ``max_batch`` and docs/architecture.md).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, fx, nn

from deconvviz import capture as _capture
from deconvviz import rules as _rules
from deconvviz.errors import DeconvVizError, UnsupportedOpError
from deconvviz.graph import Graph, evaluating, trace
from deconvviz.projection import Projection

Mode = Literal["max", "map"]


class SeedError(DeconvVizError, ValueError):
    """A channel, position, mode or input that does not fit the layer being projected."""


Unit = tuple[int, int, int, int]
"""A single activation: ``(sample, channel, row, col)``; row and col are 0 for layers without a spatial map."""


class DeconvNet:
    """A deconvnet attached to a model: projects chosen activations back to the input space.

    Args:
        model: an ``nn.Module`` that torch.fx can trace (or a loaded model from :func:`deconvviz.load_model`,
            whose layer aliases and image conversion are then used). It is never modified: training flags are
            restored after each call and no hooks are attached.
        aliases: extra layer names, alias -> qualified node name (``{"conv5_3": "features.29"}``).
            A loaded model also brings its colour order (``preprocessing.channel_order``) for display.
        max_batch: most seeds mirrored together in one batched pass (all seeds always share one capture pass).
            None picks per device: 64 on a GPU, where wide batches keep it busy; 1 on a CPU, where large
            transposed convolutions are memory-bound (per-seed cost grows with the batch) and a single seed's
            pass only filters its receptive-field cone, which makes one seed at a time the fastest schedule.

    Raises:
        TraceError: the model cannot be traced.

    Example:
        >>> net = DeconvNet(torchvision.models.vgg16().eval())  # doctest: +SKIP
        >>> p = net.project(x, layer="features.29", top=9)  # doctest: +SKIP
        >>> p.image.shape  # doctest: +SKIP
        torch.Size([9, 3, 224, 224])
    """

    def __init__(self, model: Any, *, aliases: Mapping[str, str] | None = None, max_batch: int | None = None) -> None:
        to_image: Callable[[Tensor], Any] | None = None
        channel_order = "RGB"
        if not isinstance(model, nn.Module) and isinstance(getattr(model, "module", None), nn.Module):
            loaded = model
            model = loaded.module
            aliases = {**dict(getattr(loaded, "layers", {}) or {}), **dict(aliases or {})}
            to_image = getattr(loaded, "to_image", None)
            order = getattr(getattr(loaded, "preprocessing", None), "channel_order", "RGB")
            channel_order = (
                order.upper() if isinstance(order, str) and sorted(order.upper()) == ["B", "G", "R"] else "RGB"
            )
        if max_batch is not None and max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.model: nn.Module = model
        self.aliases: dict[str, str] = dict(aliases or {})
        self.max_batch = max_batch
        self._to_image = to_image
        self.channel_order = channel_order
        self._graph: Graph | None = None
        self._graph_version = -1
        self._leaf_types: frozenset[type] = frozenset()
        self._current()

    def __repr__(self) -> str:
        return f"DeconvNet({type(self.model).__name__}, {len(self.layers)} projectable layers)"

    def _chunk(self, device: torch.device) -> int:
        """Seeds per mirrored pass on ``device`` (see ``max_batch``)."""
        if self.max_batch is not None:
            return self.max_batch
        return 64 if device.type == "cuda" else 1

    # ------------------------------------------------------------------------------------------ graph

    def _current(self) -> Graph:
        """The traced graph, traced again if a rule was registered for a module class since."""
        version = _rules.RULES.version
        if self._graph is not None and version == self._graph_version:
            return self._graph
        leaf_types = frozenset(_rules.leaf_types())
        used = {type(m) for m in self.model.modules()}
        if self._graph is None or (leaf_types & used) != (self._leaf_types & used):
            self._graph = trace(self.model, sorted(leaf_types, key=lambda t: t.__qualname__))
        self._leaf_types = leaf_types
        self._graph_version = version
        return self._graph

    def _rule(self, graph: Graph, node: fx.Node) -> _rules.Rule | None:
        return _rules.RULES.for_node(node, graph.module(node))

    def _missing_rule(self, graph: Graph, node: fx.Node) -> UnsupportedOpError:
        op, key = graph.describe(node)
        return UnsupportedOpError(
            f"no mirror rule for {op} at node {graph.names[node]!r}; register one with "
            f"deconvviz.register_rule({key}, rule) (see deconvviz.Rule)"
        )

    @property
    def graph(self) -> Graph:
        """The traced graph of the model (traced again if a rule registered since makes a module a leaf)."""
        return self._current()

    @property
    def layers(self) -> list[str]:
        """Qualified names of the layers that can be projected, from input to output."""
        graph = self._current()
        ok: dict[fx.Node, bool] = {graph.input: True}
        names = []
        for node in graph.nodes:
            if node not in graph.carries or node is graph.input or node.op == "output":
                continue
            parents = [a for a in node.all_input_nodes if a in graph.carries]
            ok[node] = self._rule(graph, node) is not None and all(ok.get(a, False) for a in parents)
            if ok[node]:
                names.append(graph.names[node])
        return names

    def resolve(self, layer: str) -> str:
        """The qualified node name of a layer name or alias.

        Raises:
            LayerNotFoundError: unknown name (the message lists close matches).
        """
        graph = self._current()
        return graph.names[graph.node(layer, self.aliases)]

    def _target(self, graph: Graph, layer: str) -> fx.Node:
        node = graph.node(layer, self.aliases)
        if node not in graph.carries or node is graph.input:
            raise SeedError(f"layer {layer!r} does not depend on the input image, so it cannot be projected")
        for ancestor in graph.ancestors([node]):
            if ancestor in graph.carries and ancestor is not graph.input and self._rule(graph, ancestor) is None:
                raise self._missing_rule(graph, ancestor)
        return node

    def _forward_rules(self, graph: Graph, nodes: Sequence[fx.Node]) -> dict[fx.Node, _rules.Rule]:
        found: dict[fx.Node, _rules.Rule] = {}
        for ancestor in graph.ancestors(nodes):
            if ancestor in graph.carries and ancestor is not graph.input:
                rule = self._rule(graph, ancestor)
                if rule is not None:
                    found[ancestor] = rule
        return found

    # ------------------------------------------------------------------------------------------ input

    def _input(self, x: Any, *, single: bool) -> Tensor:
        if not isinstance(x, Tensor):
            raise SeedError(f"expected the input as a tensor (N, C, H, W), got {type(x).__name__}")
        if x.dim() != 4 or (single and x.shape[0] != 1):
            want = "(1, C, H, W)" if single else "(N, C, H, W)"
            raise SeedError(f"expected one preprocessed image batch of shape {want}, got {tuple(x.shape)}")
        reference: Tensor | None = next(iter(self.model.parameters()), None)
        if reference is None:
            reference = next(iter(self.model.buffers()), None)
        if reference is not None and reference.is_floating_point():
            x = x.to(device=reference.device, dtype=reference.dtype)
        return x

    def activations(self, x: Tensor, layers: Sequence[str]) -> dict[str, Tensor]:
        """Activations of ``layers`` for a batch ``x`` (one forward pass, stopped at the deepest layer).

        Args:
            x: ``(N, C, H, W)`` in the model's input space.
            layers: layer names or aliases.

        Returns:
            ``{layer: tensor}`` on the model's device, keyed as given.
        """
        graph = self._current()
        x = self._input(x, single=False)
        nodes = [graph.node(name, self.aliases) for name in layers]
        with torch.inference_mode(), evaluating(self.model):
            result = _capture.run(graph, x, nodes, self._forward_rules(graph, nodes), record=False)
        return {name: result.activations[node] for name, node in zip(layers, nodes, strict=True)}

    def visit_activations(self, x: Tensor, layers: Sequence[str], visit: Callable[[str, Tensor], None]) -> None:
        """Run ``x`` once and call ``visit(layer, activation)`` as soon as each layer is computed.

        Unlike :meth:`activations`, nothing is kept: each activation is released once later ops are done with
        it, so a scan over many layers holds little more than a plain forward pass. ``visit`` must not keep a
        reference to the tensor for later use; copy what it needs.

        Args:
            x: ``(N, C, H, W)`` in the model's input space.
            layers: layer names or aliases (each visited once, under the first name given for its node).
            visit: called in execution order.
        """
        graph = self._current()
        x = self._input(x, single=False)
        nodes = [graph.node(name, self.aliases) for name in layers]
        named: dict[fx.Node, list[str]] = {}
        for name, node in zip(layers, nodes, strict=True):
            named.setdefault(node, []).append(name)

        def emit(node: fx.Node, value: Tensor) -> None:
            for name in named[node]:
                visit(name, value)

        with torch.inference_mode(), evaluating(self.model):
            _capture.run(graph, x, nodes, self._forward_rules(graph, nodes), record=False, emit=emit)

    # ------------------------------------------------------------------------------------- projection

    def project(
        self,
        x: Tensor,
        layer: str,
        channel: int | Sequence[int] | None = None,
        *,
        mode: Mode = "max",
        position: tuple[int, int] | None = None,
        top: int | None = None,
    ) -> Projection:
        """Project activations of one layer back to the input space.

        Args:
            x: one preprocessed image, ``(1, C, H, W)`` in the model's input space (moved to the model's
                device and dtype if needed).
            layer: qualified node name (``"features.29"``) or alias (``"conv5_3"``).
            channel: a channel index, or a list of them (one reconstruction each, batched).
            mode: ``"max"`` seeds the strongest activation of each channel; ``"map"`` the whole feature map.
            position: ``(row, col)`` to seed that unit of each channel instead of the strongest.
            top: instead of ``channel``, the ``top`` channels with the strongest activations, strongest first.

        Returns:
            A :class:`Projection` with one reconstruction per seed.

        Raises:
            LayerNotFoundError: unknown layer (close names are listed).
            SeedError: channel or position out of range, a bad mode, or a malformed input.
            UnsupportedOpError: an op between the input and the layer has no mirror rule.
        """
        if mode not in ("max", "map"):
            raise SeedError(f"mode must be 'max' or 'map', got {mode!r}")
        if position is not None and mode == "map":
            raise SeedError("position= seeds one unit; it cannot be combined with mode='map'")
        graph = self._current()
        node = self._target(graph, layer)
        x = self._input(x, single=True)
        with torch.inference_mode(), evaluating(self.model):
            cap = _capture.run(graph, x, [node], self._forward_rules(graph, [node]))
            act = cap.activations[node]
            if not isinstance(act, Tensor) or act.dim() < 2:
                raise SeedError(f"layer {layer!r} has no channel dimension to seed")
            channels = _channels(act, channel, top, layer)
            units, values = _units(act, channels, mode, position, layer)
            chunk = self._chunk(act.device)
            images = [
                self._mirror_chunk(graph, cap, node, act, units[i : i + chunk], mode)
                for i in range(0, len(units), chunk)
            ]
            image = torch.cat(images).detach().cpu()
        return Projection(
            image=image,
            layer=layer,
            node=graph.names[node],
            channels=tuple(channels),
            positions=tuple(None if mode == "map" or act.dim() < 4 else (u[2], u[3]) for u in units),
            activations=values.detach().cpu(),
            mode=mode,
            input=x.detach().cpu(),
            to_image=self._to_image,
            channel_order=self.channel_order,
        )

    def project_units(self, x: Tensor, layer: str, units: Sequence[Unit]) -> Tensor:
        """Project single activations of a batch of images, each through its own image's switches.

        This is the batched primitive behind the top-k search: ``x`` holds N images, and every unit
        ``(sample, channel, row, col)`` is seeded with its own activation value and mirrored through the
        pooling switches recorded for image ``sample``.

        Args:
            x: ``(N, C, H, W)`` preprocessed images.
            layer: layer name or alias.
            units: the activations to project.

        Returns:
            ``(len(units), C, H, W)`` reconstructions, detached, on the model's device.
        """
        graph = self._current()
        node = self._target(graph, layer)
        x = self._input(x, single=False)
        with torch.inference_mode(), evaluating(self.model):
            cap = _capture.run(graph, x, [node], self._forward_rules(graph, [node]))
            act = cap.activations[node]
            for unit in units:
                _check_unit(act, unit, layer)
            chunk = self._chunk(act.device)
            chunks = [
                self._mirror_chunk(graph, cap, node, act, list(units[i : i + chunk]), "max")
                for i in range(0, len(units), chunk)
            ]
            if not chunks:
                return x.new_zeros((0, *x.shape[1:]))
            return torch.cat(chunks).detach()

    def _mirror_chunk(
        self,
        graph: Graph,
        cap: _capture.Capture,
        node: fx.Node,
        act: Tensor,
        units: Sequence[Unit],
        mode: Mode,
    ) -> Tensor:
        seeds = _seeds(act, units, mode)
        sample = torch.tensor([u[0] for u in units], dtype=torch.long, device=act.device)
        return self._mirror(graph, cap, node, seeds, sample)

    def _mirror(self, graph: Graph, cap: _capture.Capture, node: fx.Node, seeds: Tensor, sample: Tensor) -> Tensor:
        """Walk from ``node`` back to the input, applying each op's mirror rule to the batched signal."""
        order = [n for n in graph.ancestors([node]) if n in graph.carries]
        signals: dict[fx.Node, Tensor] = {node: seeds}
        result: Tensor | None = None
        for current in reversed(order):
            signal = signals.pop(current, None)
            if signal is None:
                continue
            if current is graph.input:
                result = signal
                continue
            record = cap.records[current]
            rule = self._rule(graph, current)
            assert rule is not None  # checked by _target
            ctx = _rules.MirrorContext(
                name=graph.names[current],
                module=graph.module(current),
                args=record.args,
                kwargs=record.kwargs,
                inputs=record.inputs,
                output=record.output,
                saved=record.saved,
                sample=sample,
                _capture_batch=cap.batch,
            )
            outputs = list(rule.mirror(ctx, signal))
            if len(outputs) != len(record.inputs):
                raise UnsupportedOpError(
                    f"the mirror rule {type(rule).__name__} returned {len(outputs)} signals for node "
                    f"{ctx.name!r}, which has {len(record.inputs)} input(s) that depend on the image"
                )
            for parent, meta, out in zip(record.input_nodes, record.inputs, outputs, strict=True):
                if out is None:
                    continue
                expected = (signal.shape[0], *meta.shape[1:])
                if tuple(out.shape) != expected:
                    raise UnsupportedOpError(
                        f"the mirror rule {type(rule).__name__} returned shape {tuple(out.shape)} for an "
                        f"input of node {ctx.name!r}; expected {expected}"
                    )
                previous = signals.get(parent)
                signals[parent] = out if previous is None else previous + out
        if result is None:  # no path carried any signal (every seed was zero or blocked)
            result = seeds.new_zeros((seeds.shape[0], *cap.input_shape[1:]))
        return result


def _channels(act: Tensor, channel: int | Sequence[int] | None, top: int | None, layer: str) -> list[int]:
    count = act.shape[1]
    if channel is not None and top is not None:
        raise SeedError("give either channel= or top=, not both")
    if top is not None:
        if isinstance(top, bool) or not isinstance(top, int) or not 1 <= top <= count:
            raise SeedError(f"top must be between 1 and {count} for layer {layer!r}, got {top!r}")
        strength = act[0].reshape(count, -1).amax(dim=1)
        # A stable sort keeps equal activations in channel order, so results are reproducible.
        order = torch.sort(strength, descending=True, stable=True).indices[:top]
        return [int(c) for c in order]
    if channel is None:
        raise SeedError("choose what to project: channel=<index or list> or top=<count>")
    chosen = [channel] if isinstance(channel, int) else list(channel)
    if not chosen:
        raise SeedError("channel= is an empty list")
    for c in chosen:
        if isinstance(c, bool) or not isinstance(c, int) or not 0 <= c < count:
            raise SeedError(
                f"channel {c!r} is out of range for layer {layer!r}, which has {count} channels (0-{count - 1})"
            )
    return chosen


def _units(
    act: Tensor, channels: Sequence[int], mode: Mode, position: tuple[int, int] | None, layer: str
) -> tuple[list[Unit], Tensor]:
    spatial = tuple(act.shape[2:])
    if len(spatial) > 2:
        raise SeedError(f"layer {layer!r} has {len(spatial)} spatial dimensions; deconvviz seeds 2-D maps")
    height, width = ((*spatial, 1, 1))[:2] if spatial else (1, 1)
    planes = act[0, list(channels)].reshape(len(channels), -1)
    if position is not None:
        if len(position) != 2 or not spatial:
            raise SeedError(f"position must be (row, col) on a layer with a 2-D map; layer {layer!r} has none")
        row, col = int(position[0]), int(position[1])
        if not (0 <= row < height and 0 <= col < width):
            raise SeedError(f"position {(row, col)} is outside the {height}x{width} map of layer {layer!r}")
        flat = torch.full((len(channels),), row * width + col, dtype=torch.long, device=act.device)
        values = planes.gather(1, flat[:, None])[:, 0]
    else:  # the strongest unit of each channel (for mode="map", where its value labels the map)
        values, flat = planes.max(dim=1)
    units = [(0, int(c), int(f) // width, int(f) % width) for c, f in zip(channels, flat.tolist(), strict=True)]
    return units, values


def _check_unit(act: Tensor, unit: Unit, layer: str) -> None:
    sample, channel, row, col = unit
    height, width = ((*tuple(act.shape[2:]), 1, 1))[:2]
    if not (0 <= sample < act.shape[0] and 0 <= channel < act.shape[1] and 0 <= row < height and 0 <= col < width):
        raise SeedError(f"unit {unit} is outside layer {layer!r} of shape {tuple(act.shape)}")


def _seeds(act: Tensor, units: Sequence[Unit], mode: Mode) -> Tensor:
    """Seed tensors: each unit's own activation (or its channel's whole map), zero everywhere else."""
    count = len(units)
    seeds = act.new_zeros((count, *act.shape[1:]))
    flat = seeds.view(count, act.shape[1], -1)
    source = act.reshape(act.shape[0], act.shape[1], -1)
    for i, (sample, channel, row, col) in enumerate(units):
        if mode == "map":
            flat[i, channel] = source[sample, channel]
        else:
            index = row * (act.shape[3] if act.dim() == 4 else 1) + col
            flat[i, channel, index] = source[sample, channel, index]
    return seeds
