"""The mirrored deconvnet of Zeiler & Fergus (2014), attached to any torch.fx-traceable CNN.

Projection of an activation back to pixel space: capture one forward pass (activations, max-pooling
switches, shapes), keep the chosen activation(s) as the seed with every other activation of the layer set
to zero, and walk the graph backwards applying each op's mirror rule (unpool with the switches, rectify,
filter with the transposed weights). All seeds share one capture pass; they go down the mirror in batches
sized for the device (see ``DeconvNet``'s ``max_batch`` and docs/architecture.md).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor, fx, nn

from deconvviz.core import capture as _capture
from deconvviz.core import seeds as _seeds
from deconvviz.core import walk as _walk
from deconvviz.core.graph import Graph, evaluating, trace
from deconvviz.core.probe import Probe
from deconvviz.core.projection import Projection
from deconvviz.core.seeds import Mode, SeedError, Unit
from deconvviz.core.steps import StepRecorder, StepsChoice, chosen_seeds
from deconvviz.errors import TraceError, UnsupportedOpError
from deconvviz.methods import RuleSet, get_method
from deconvviz.ops.base import Rule

Method = str | RuleSet
"""A reverse pass: a registered name (``"deconvnet"``, ``"guided"``, ``"gradient"``) or a :class:`RuleSet`."""


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
        self._label = ""  # how messages name the model: a loaded model's name, else its class
        self.classes: int | None = None  # how many class names the model has (a loaded model's labels)
        if not isinstance(model, nn.Module) and isinstance(getattr(model, "module", None), nn.Module):
            loaded = model
            model = loaded.module
            self._label = str(getattr(loaded, "name", "") or "")
            self.classes = len(getattr(loaded, "labels", None) or []) or None
            aliases = {**dict(getattr(loaded, "layers", {}) or {}), **dict(aliases or {})}
            to_image = getattr(loaded, "to_image", None)
            order = getattr(getattr(loaded, "preprocessing", None), "channel_order", "RGB")
            channel_order = (
                order.upper() if isinstance(order, str) and sorted(order.upper()) == ["B", "G", "R"] else "RGB"
            )
        if not isinstance(model, nn.Module):
            hint = (
                f"; load it first: deconvviz.DeconvNet(deconvviz.load_model({model!r}))"
                if isinstance(model, str)
                else ""
            )
            raise TraceError(f"DeconvNet takes a torch.nn.Module or a loaded model, got {type(model).__name__}{hint}")
        if max_batch is not None and max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.model: nn.Module = model
        self.aliases: dict[str, str] = dict(aliases or {})
        self.max_batch = max_batch
        self._to_image = to_image
        self.channel_order = channel_order
        self._graphs: dict[frozenset[type], Graph] = {}
        self._leaves: dict[RuleSet, frozenset[type]] = {}
        self._probes: dict[tuple[RuleSet, tuple[int, ...]], Probe] = {}
        self._last_shape: tuple[int, ...] | None = None
        self._graph_for(get_method())

    def __repr__(self) -> str:
        return f"DeconvNet({type(self.model).__name__}, {len(self.layers)} projectable layers)"

    def _chunk(self, device: torch.device) -> int:
        """Seeds per mirrored pass on ``device`` (see ``max_batch``)."""
        if self.max_batch is not None:
            return self.max_batch
        return 64 if device.type == "cuda" else 1

    # ------------------------------------------------------------------------------------------ graph

    def _graph_for(self, rules: RuleSet) -> Graph:
        """The model traced with the leaves ``rules`` asks for (module classes it has rules for)."""
        leaves = self._leaves.get(rules)
        if leaves is None:
            leaves = self._leaves[rules] = frozenset(
                type(m)
                for m in self.model.modules()
                if not type(m).__module__.startswith("torch.nn") and rules.keeps_whole(m)
            )
        graph = self._graphs.get(leaves)
        if graph is None:
            graph = self._graphs[leaves] = trace(self.model, sorted(leaves, key=lambda t: t.__qualname__))
            graph.label = self._label
        return graph

    def _missing_rule(self, graph: Graph, node: fx.Node, rules: RuleSet) -> UnsupportedOpError:
        op, key = graph.describe(node)
        return UnsupportedOpError(
            f"no mirror rule for {op} at node {graph.names[node]!r}; register one with "
            f"deconvviz.register_rule({key}, rule) (see deconvviz.Rule)"
        )

    @property
    def graph(self) -> Graph:
        """The traced graph of the model, as the default reverse pass traces it."""
        return self._graph_for(get_method())

    @property
    def layers(self) -> list[str]:
        """Qualified names of the layers that can be projected, from input to output."""
        return self.layers_for()

    def layers_for(self, method: Method | None = None) -> list[str]:
        """The layers that can be projected with ``method`` (by default the paper's deconvnet)."""
        rules = get_method(method)
        graph = self._graph_for(rules)
        ok: dict[fx.Node, bool] = {graph.input: True}
        names = []
        for node in graph.nodes:
            if node not in graph.carries or node is graph.input or node.op == "output":
                continue
            parents = graph.signal_inputs.get(node, [])
            ok[node] = rules.for_node(node, graph.module(node)) is not None and all(ok.get(a, False) for a in parents)
            if ok[node]:
                names.append(graph.names[node])
        return names

    def mirrors(self, method: Method | None = None) -> dict[str, str]:
        """How each projectable layer is mirrored under ``method``: ``"rule"`` or ``"autograd"``.

        ``"autograd"`` marks an op without a mirror rule of its own, mirrored by autograd over that op alone
        (exact, but slower than a rule; see :func:`deconvviz.register_rule`).
        """
        rules = get_method(method)
        graph = self._graph_for(rules)
        names = set(self.layers_for(rules))
        return {
            graph.names[node]: "rule" if rules.mirrored_by_rule(node, graph.module(node)) else "autograd"
            for node in graph.nodes
            if graph.names[node] in names
        }

    def held_layers(self, method: Method | None = None) -> list[str]:
        """Layers whose op is held at its forward value under ``method`` (gates): their projections are blank."""
        rules = get_method(method)
        graph = self._graph_for(rules)
        names = set(self.layers_for(rules))
        return [
            graph.names[n]
            for n in graph.nodes
            if graph.names[n] in names and getattr(rules.for_node(n, graph.module(n)), "holds", False)
        ]

    def field_context(self, method: Method | None = None) -> tuple[RuleSet, Graph, Probe]:
        """The rule set, the traced graph and the probe pass that receptive fields under ``method`` are read from.

        The probe (see :mod:`deconvviz.core.probe`) runs on random values at the size of the last picture this
        net saw (224 x 224 before any), once per rule set and size.
        """
        rules = get_method(method)
        graph = self._graph_for(rules)
        shape = self._last_shape or (1, self._channels(), 224, 224)
        key = (rules, shape)
        probe = self._probes.get(key)
        if probe is None:
            found: Tensor | None = next(iter(self.model.parameters()), None)
            like = found if found is not None and found.is_floating_point() else torch.zeros(())

            def forward_rules(nodes: list[fx.Node]) -> dict[fx.Node, Rule]:
                return self._forward_rules(graph, nodes, rules)

            probe = self._probes[key] = Probe(graph, rules, forward_rules, shape, like)
        return rules, graph, probe

    def measured(self, method: Method | None = None) -> list[str]:
        """Layers whose receptive-field geometry was measured (no geometry registered for their op) so far."""
        rules = get_method(method)
        graph = self._graph_for(rules)
        found: set[fx.Node] = set()
        for (owner, _), probe in self._probes.items():
            if owner is rules:
                found |= probe.measured
        return [graph.names[n] for n in graph.nodes if n in found]

    def _channels(self) -> int:
        """The input channels the first convolution expects (3 when there is none)."""
        for module in self.model.modules():
            if isinstance(module, nn.Conv2d):
                return int(module.in_channels)
        return 3

    def resolve(self, layer: str) -> str:
        """The qualified node name of a layer name or alias.

        Raises:
            LayerNotFoundError: unknown name (the message lists close matches).
        """
        graph = self.graph
        return graph.names[graph.node(layer, self.aliases)]

    def _target(self, graph: Graph, layer: str, rules: RuleSet) -> fx.Node:
        node = graph.node(layer, self.aliases)
        if node not in graph.carries or node is graph.input:
            raise SeedError(f"layer {layer!r} does not depend on the input image, so it cannot be projected")
        for ancestor in graph.ancestors([node]):
            if ancestor in graph.carries and ancestor is not graph.input:
                if rules.for_node(ancestor, graph.module(ancestor)) is None:
                    raise self._missing_rule(graph, ancestor, rules)
        return node

    def _forward_rules(self, graph: Graph, nodes: Sequence[fx.Node], rules: RuleSet) -> dict[fx.Node, Rule]:
        found: dict[fx.Node, Rule] = {}
        for ancestor in graph.ancestors(nodes):
            if ancestor in graph.carries and ancestor is not graph.input:
                rule = rules.for_node(ancestor, graph.module(ancestor))
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
        if not x.is_floating_point():
            raise SeedError(
                f"expected a preprocessed float input, got a {str(x.dtype).removeprefix('torch.')} tensor (raw pixel "
                "values?); normalise it first, as model.preprocess(picture) does"
            )
        # Checked where it costs no device synchronisation: a picture on its way from the host, or one input.
        if (single or x.device.type == "cpu") and not bool(torch.isfinite(x).all()):
            raise SeedError("the input holds NaN or infinite values; every reconstruction would be NaN")
        reference: Tensor | None = next(iter(self.model.parameters()), None)
        if reference is None:
            reference = next(iter(self.model.buffers()), None)
        if reference is not None and reference.is_floating_point():
            x = x.to(device=reference.device, dtype=reference.dtype)
        self._last_shape = (1, *tuple(x.shape[1:]))
        return x

    def activations(self, x: Tensor, layers: Sequence[str]) -> dict[str, Tensor]:
        """Activations of ``layers`` for a batch ``x`` (one forward pass, stopped at the deepest layer).

        Args:
            x: ``(N, C, H, W)`` in the model's input space.
            layers: layer names or aliases.

        Returns:
            ``{layer: tensor}`` on the model's device, keyed as given.
        """
        layers = [layers] if isinstance(layers, str) else list(layers)  # one name alone is one layer
        rules = get_method()
        graph = self._graph_for(rules)
        x = self._input(x, single=False)
        nodes = [graph.node(name, self.aliases) for name in layers]
        with torch.inference_mode(), evaluating(self.model):
            result = _capture.run(graph, x, nodes, self._forward_rules(graph, nodes, rules), record=False)
        return {name: _plain(result.activations[node]) for name, node in zip(layers, nodes, strict=True)}

    def visit_activations(self, x: Tensor, layers: Sequence[str], visit: Callable[[str, Tensor], None]) -> None:
        """Run ``x`` once and call ``visit(layer, activation)`` as soon as each layer is computed.

        Unlike :meth:`activations`, nothing is kept: each activation is released once later ops are done with
        it, so a scan over many layers holds little more than a plain forward pass. ``visit`` must not keep a
        reference to the tensor for later use; copy what it needs.

        Args:
            x: ``(N, C, H, W)`` in the model's input space.
            layers: layer names or aliases (each visited once, under the first name given for its node).
            visit: called in execution order.

        Raises:
            SeedError: a layer that returns a tuple rather than one tensor (the message names its items).
        """
        layers = [layers] if isinstance(layers, str) else list(layers)  # one name alone is one layer
        rules = get_method()
        graph = self._graph_for(rules)
        x = self._input(x, single=False)
        nodes = [graph.node(name, self.aliases) for name in layers]
        named: dict[fx.Node, list[str]] = {}
        for name, node in zip(layers, nodes, strict=True):
            named.setdefault(node, []).append(name)

        def emit(node: fx.Node, value: Tensor) -> None:
            for name in named[node]:
                visit(name, self._tensor_at(graph, node, value, name))

        with torch.inference_mode(), evaluating(self.model):
            _capture.run(graph, x, nodes, self._forward_rules(graph, nodes, rules), record=False, emit=emit)

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
        method: Method | None = None,
        steps: StepsChoice = False,
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
            method: the reverse pass: ``"deconvnet"`` (Zeiler & Fergus, the default), ``"guided"`` (guided
                backpropagation), ``"gradient"`` (the unit's exact gradient with respect to the input, times the
                seeded activation as every pass seeds it), another registered name, or a
                :class:`~deconvviz.methods.RuleSet`.
            steps: also keep the signal after every mirrored op (:attr:`Projection.steps`, a
                :class:`~deconvviz.core.steps.ProjectionSteps`): True for the first seed's steps only (they take
                tens of MB per seed at mid layers of VGG16), ``"all"`` or seed indices for more. Kept on the CPU.

        Returns:
            A :class:`Projection` with one reconstruction per seed.

        Raises:
            LayerNotFoundError: unknown layer (close names are listed).
            SeedError: channel or position out of range, a bad mode, a bad ``steps`` choice, or a malformed input.
            MethodError: an unknown method.
            UnsupportedOpError: an op between the input and the layer has no mirror rule.
        """
        _seeds.check_mode(mode, position)
        captured = self.capture(x, layer, method=method)
        return captured.project(channel, mode=mode, position=position, top=top, steps=steps)

    def capture(self, x: Tensor, layer: str, *, method: Method | None = None) -> Captured:
        """Run one picture's forward pass up to ``layer`` and keep it, to project many of its units from it.

        :meth:`project` is ``capture(x, layer, method=method).project(...)``; keeping the capture makes every
        further unit, channel or mode of the same picture and layer cost only the reverse pass.

        Args:
            x: one preprocessed image, ``(1, C, H, W)``.
            layer: qualified node name or alias.
            method: the reverse pass the capture records for (see :meth:`project`).

        Returns:
            The :class:`Captured` pass (it holds the layer's activation and what the mirror needs below it).

        Raises:
            LayerNotFoundError: unknown layer.
            SeedError: a malformed input, or a layer with no channel dimension.
            MethodError: an unknown method.
            UnsupportedOpError: an op between the input and the layer has no mirror rule.
        """
        return self.capture_layers(x, [layer], method=method)[layer]

    def capture_layers(self, x: Tensor, layers: Sequence[str], *, method: Method | None = None) -> dict[str, Captured]:
        """:meth:`capture` at several layers of one picture from one forward pass, which the captures share.

        Each capture projects exactly what :meth:`capture` at its layer alone would; the pass runs up to the
        deepest of them, so it costs one capture of that layer.

        Args:
            x: one preprocessed image, ``(1, C, H, W)``.
            layers: qualified node names or aliases.
            method: the reverse pass the captures record for.

        Returns:
            Per layer as given, its :class:`Captured`.

        Raises:
            LayerNotFoundError: an unknown layer.
            SeedError: a malformed input, or a layer with no channel dimension.
            UnsupportedOpError: an op between the input and a layer has no mirror rule.
        """
        rules = get_method(method)
        graph = self._graph_for(rules)
        nodes = {layer: self._target(graph, layer, rules) for layer in layers}
        x = self._input(x, single=True)
        targets = list(dict.fromkeys(nodes.values()))
        with torch.inference_mode(), evaluating(self.model):
            cap = _capture.run(graph, x, targets, self._forward_rules(graph, targets, rules))
        for layer, node in nodes.items():
            if self._tensor_at(graph, node, cap.activations[node], layer).dim() < 2:
                raise SeedError(f"layer {layer!r} has no channel dimension to seed")
        return {layer: Captured(self, graph, rules, node, layer, x, cap) for layer, node in nodes.items()}

    def _capture_layer(self, x: Tensor, layer: str, method: Method | None, *, single: bool) -> tuple[Captured, Tensor]:
        """A forward pass of ``x`` up to ``layer``, recorded for ``method``, and the layer's activation."""
        rules = get_method(method)
        graph = self._graph_for(rules)
        node = self._target(graph, layer, rules)
        x = self._input(x, single=single)
        with torch.inference_mode(), evaluating(self.model):
            cap = _capture.run(graph, x, [node], self._forward_rules(graph, [node], rules))
        return Captured(self, graph, rules, node, layer, x, cap), self._tensor_at(
            graph, node, cap.activations[node], layer
        )

    def _project_captured(
        self,
        captured: Captured,
        channel: int | Sequence[int] | None,
        mode: Mode,
        position: tuple[int, int] | None,
        top: int | None,
        steps: StepsChoice = False,
    ) -> Projection:
        _seeds.check_mode(mode, position)
        graph, cap, node, rules, layer, x = (
            captured.graph,
            captured.capture,
            captured.node,
            captured.rules,
            captured.layer,
            captured.x,
        )
        with torch.inference_mode(), evaluating(self.model):
            act = cap.activations[node]
            channels = _seeds.channels(act, channel, top, layer)
            units, values = _seeds.units(act, channels, mode, position, layer)
            keep = chosen_seeds(steps, len(units))
            recorder = StepRecorder(graph, cap, rules, self.aliases, keep) if keep else None
            chunk = self._chunk(act.device)
            images = [
                self._mirror_units(graph, cap, node, act, units[i : i + chunk], mode, rules, recorder, i)
                for i in range(0, len(units), chunk)
            ]
            image = torch.cat(images).detach().cpu()
        projection = Projection(
            image=_plain(image),
            layer=layer,
            node=graph.names[node],
            channels=tuple(channels),
            positions=tuple(None if mode == "map" or act.dim() < 4 else (u[2], u[3]) for u in units),
            activations=_plain(values.detach().cpu()),
            mode=mode,
            input=x.detach().cpu(),
            to_image=self._to_image,
            channel_order=self.channel_order,
            method=rules.name,
        )
        if recorder is None:
            return projection
        return replace(projection, steps=recorder.result(projection))

    def project_units(self, x: Tensor, layer: str, units: Sequence[Unit], *, method: Method | None = None) -> Tensor:
        """Project single activations of a batch of images, each through its own image's switches.

        This is the batched primitive behind the top-k search: ``x`` holds N images, and every unit
        ``(sample, channel, row, col)`` is seeded with its own activation value and mirrored through the
        pooling switches recorded for image ``sample``.

        Args:
            x: ``(N, C, H, W)`` preprocessed images.
            layer: layer name or alias.
            units: the activations to project.
            method: the reverse pass (see :meth:`project`).

        Returns:
            ``(len(units), C, H, W)`` reconstructions, detached, on the model's device.
        """
        return self.project_units_at(x, {layer: units}, method=method)[layer]

    def project_units_at(
        self, x: Tensor, units: Mapping[str, Sequence[Unit]], *, method: Method | None = None
    ) -> dict[str, Tensor]:
        """:meth:`project_units` at several layers from one capture pass over ``x``.

        Args:
            x: ``(N, C, H, W)`` preprocessed images.
            units: per layer name or alias, the activations ``(sample, channel, row, col)`` to project.
            method: the reverse pass (see :meth:`project`).

        Returns:
            Per layer, ``(len(units[layer]), C, H, W)`` reconstructions, detached, on the model's device.
        """
        rules = get_method(method)
        graph = self._graph_for(rules)
        nodes = {layer: self._target(graph, layer, rules) for layer in units}
        x = self._input(x, single=False)
        out: dict[str, Tensor] = {}
        with torch.inference_mode(), evaluating(self.model):
            targets = list(dict.fromkeys(nodes.values()))
            cap = _capture.run(graph, x, targets, self._forward_rules(graph, targets, rules))
            for layer, node in nodes.items():
                out[layer] = self._units_captured(graph, cap, node, layer, rules, x, list(units[layer]))
        return {layer: _plain(images) for layer, images in out.items()}

    def _units_captured(
        self,
        graph: Graph,
        cap: _capture.Capture,
        node: fx.Node,
        layer: str,
        rules: RuleSet,
        x: Tensor,
        units: list[Unit],
    ) -> Tensor:
        """Single units of a captured layer, each seeded with its own value, mirrored in chunks (inference mode)."""
        act = self._tensor_at(graph, node, cap.activations[node], layer)
        for unit in units:
            _seeds.check_unit(act, unit, layer)
        chunk = self._chunk(act.device)
        chunks = [
            self._mirror_units(graph, cap, node, act, units[i : i + chunk], "max", rules)
            for i in range(0, len(units), chunk)
        ]
        return torch.cat(chunks).detach() if chunks else x.new_zeros((0, *x.shape[1:]))

    def project_seeds(
        self,
        x: Tensor,
        layer: str,
        seeds: Tensor,
        *,
        sample: Sequence[int] | None = None,
        method: Method | None = None,
    ) -> Tensor:
        """Project arbitrary seed tensors of one layer (a class score, a pattern of units) to the input space.

        Args:
            x: ``(N, C, H, W)`` preprocessed images.
            layer: layer name or alias.
            seeds: ``(K, *activation.shape[1:])``: the signal to start from, one per reconstruction (for the
                paper's seeds, the activation's own value where chosen and zero elsewhere).
            sample: for each seed, the image of ``x`` whose forward pass it goes down through (default: all 0).
            method: the reverse pass (see :meth:`project`).

        Returns:
            ``(K, C, H, W)`` reconstructions, detached, on the model's device.

        Raises:
            SeedError: seeds whose shape does not match the layer, or a sample index out of range.
        """
        captured, act = self._capture_layer(x, layer, method, single=False)
        graph, node, rules, cap, x = captured.graph, captured.node, captured.rules, captured.capture, captured.x
        with torch.inference_mode(), evaluating(self.model):
            if not isinstance(seeds, Tensor) or tuple(seeds.shape[1:]) != tuple(act.shape[1:]) or seeds.dim() < 1:
                got = tuple(seeds.shape) if isinstance(seeds, Tensor) else type(seeds).__name__
                raise SeedError(
                    f"seeds for layer {layer!r} must be shaped (K, {', '.join(map(str, act.shape[1:]))}), got {got}"
                )
            rows = [0] * seeds.shape[0] if sample is None else [int(s) for s in sample]
            if len(rows) != seeds.shape[0] or any(not 0 <= r < act.shape[0] for r in rows):
                raise SeedError(f"sample must give one image index in 0..{act.shape[0] - 1} per seed, got {list(rows)}")
            seeds = seeds.to(device=act.device, dtype=act.dtype)
            chunk = self._chunk(act.device)
            index = _seeds.index_tensor(rows, act.device)
            chunks = [
                _walk.mirror(graph, cap, node, seeds[i : i + chunk], index[i : i + chunk], rules)
                for i in range(0, seeds.shape[0], chunk)
            ]
            if not chunks:
                return x.new_zeros((0, *x.shape[1:]))
            images = torch.cat(chunks).detach()
        return _plain(images)

    def _tensor_at(self, graph: Graph, node: fx.Node, value: Any, layer: str) -> Tensor:
        """The activation of a layer, or a one-line error naming its items when it returns a tuple."""
        if isinstance(value, Tensor) and value.is_complex():
            raise SeedError(f"layer {layer!r} holds complex values (an FFT's); project one that reads .real or .abs()")
        if isinstance(value, Tensor):
            return value
        items = [graph.names[u] for u in node.users if u in graph.carries]
        hint = f": choose one of its items instead ({', '.join(repr(i) for i in items)})" if items else ""
        raise SeedError(f"layer {layer!r} returns a {type(value).__name__}, not a tensor{hint}")

    def _mirror_units(
        self,
        graph: Graph,
        cap: _capture.Capture,
        node: fx.Node,
        act: Tensor,
        units: Sequence[Unit],
        mode: Mode,
        rules: RuleSet,
        recorder: StepRecorder | None = None,
        start: int = 0,
    ) -> Tensor:
        seeds = _seeds.seed_tensor(act, units, mode)
        sample = _seeds.index_tensor([u[0] for u in units], act.device)
        observe = recorder.observer(start, sample) if recorder is not None else None
        return _walk.mirror(graph, cap, node, seeds, sample, rules, observe)


@dataclass(eq=False)
class Captured:
    """One picture's forward pass up to one layer, kept so that many units can be projected from it.

    Made by :meth:`DeconvNet.capture`; :meth:`project` gives exactly what :meth:`DeconvNet.project` gives for the
    same picture, layer and method, without running the model forward again.

    Attributes:
        net: the deconvnet that made it.
        layer: the layer as asked for; ``node`` is its qualified name.
        method: the reverse pass it recorded for.
        x: the ``(1, C, H, W)`` input, on the model's device.
    """

    net: DeconvNet
    graph: Graph
    rules: RuleSet
    node: fx.Node
    layer: str
    x: Tensor
    capture: _capture.Capture

    @property
    def node_name(self) -> str:
        """The qualified node name of the layer."""
        return self.graph.names[self.node]

    @property
    def method(self) -> str:
        """The name of the reverse pass recorded for."""
        return self.rules.name

    @property
    def activation(self) -> Tensor:
        """The layer's activation, ``(1, channels, ...)``, on the model's device."""
        return self.capture.activations[self.node]

    def nbytes(self) -> int:
        """The memory this capture holds of its own (activations, switches, saved values; not the weights)."""
        return self.capture.nbytes(self.net.model, self.x)

    def project(
        self,
        channel: int | Sequence[int] | None = None,
        *,
        mode: Mode = "max",
        position: tuple[int, int] | None = None,
        top: int | None = None,
        steps: StepsChoice = False,
    ) -> Projection:
        """Project units of the captured layer (arguments as :meth:`DeconvNet.project`)."""
        return self.net._project_captured(self, channel, mode, position, top, steps)

    def project_units(self, units: Sequence[Unit]) -> Tensor:
        """Project single units ``(0, channel, row, col)`` of the captured layer, as :meth:`DeconvNet.project_units`.

        Returns:
            ``(len(units), C, H, W)`` reconstructions, detached, on the model's device.
        """
        with torch.inference_mode(), evaluating(self.net.model):
            images = self.net._units_captured(
                self.graph, self.capture, self.node, self.layer, self.rules, self.x, list(units)
            )
        return _plain(images)


def _plain(t: Any) -> Any:
    """A tensor made under ``torch.inference_mode`` as an ordinary one (a copy; anything else as it is).

    Callers may then change it in place or use it in autograd, as with any tensor they get.
    """
    if isinstance(t, Tensor) and t.is_inference():
        return t.clone()
    return t


__all__ = ["Captured", "DeconvNet", "Method", "Mode", "SeedError", "Unit"]
