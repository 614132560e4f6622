"""Receptive fields of a traced graph: each op's geometry (from the op registry) applied input to output.

The geometry of each op, :class:`ReceptiveField` and the helpers to describe a geometry live in
:mod:`deconvviz.ops.geometry`; this module walks a graph with them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from torch import fx

from deconvviz.core.deconvnet import DeconvNet
from deconvviz.ops.geometry import (
    GEOMETRIES,
    Box,
    Geometry,
    GeometryContext,
    ReceptiveField,
    ReceptiveFieldError,
    UnknownGeometryError,
    get_geometry,
    pointwise,
    register_geometry,
    single,
    whole_image,
    window,
)

if TYPE_CHECKING:  # pragma: no cover
    from deconvviz.core.deconvnet import DeconvNet
    from deconvviz.core.graph import Graph
    from deconvviz.core.probe import Probe


def fields_of(
    graph: Graph,
    targets: Sequence[fx.Node],
    *,
    rules: Any = None,
    probe: Probe | None = None,
) -> dict[fx.Node, ReceptiveField]:
    """The receptive field of every image-dependent node needed for ``targets``.

    Args:
        graph: the traced model.
        targets: the nodes whose fields are wanted.
        rules: the call's rule set (anything with ``for_node(node, module)``). Fields then follow its reverse
            pass: a node whose rule holds it at its forward value (a gate under deconvnet and guided) sends
            no signal to its inputs, so they do not widen the field of what lies above it.
        probe: a probe pass (:class:`~deconvviz.core.probe.Probe`): geometries may read shapes from it, and an op
            without a registered geometry gets one measured from it. Without it, such an op is an error.

    Raises:
        UnknownGeometryError: an op without a geometry and no probe, or a geometry that returns something else.
    """
    fields: dict[fx.Node, ReceptiveField] = {graph.input: ReceptiveField.identity()}
    held: set[fx.Node] = set()  # nodes that pass no signal down to the input
    for node in graph.ancestors(targets):
        if node in fields or node not in graph.carries or node.op == "output":
            continue
        name = graph.names[node]
        module = graph.module(node)
        parents = graph.signal_inputs.get(node, [])
        live = [a for a in parents if a not in held]
        rule = rules.for_node(node, module) if rules is not None else None
        if (parents and not live) or getattr(rule, "holds", False):
            held.add(node)
        geometry = GEOMETRIES.for_node(node, module)
        if geometry is None:
            if probe is None:
                op, key = graph.describe(node)
                raise UnknownGeometryError(
                    f"no receptive-field geometry for {op} at node {name!r}; register one with "
                    f"deconvviz.register_geometry({key}, geometry), e.g. deconvviz.ops.geometry.pointwise for "
                    "element-wise ops or deconvviz.ops.geometry.window(kernel, stride, padding) for sliding windows"
                )
            measured = probe.measure(node, [fields[a] if a not in held else None for a in parents])
            if measured is None:  # no signal reaches any input through this op
                held.add(node)
                measured = ReceptiveField.enclosing([fields[a] for a in parents])
            fields[node] = measured
            continue

        def value(arg: fx.Node) -> Any:
            if arg in fields:
                return fields[arg]
            if arg.op == "get_attr":
                return graph.attribute(arg)
            return arg

        ctx = GeometryContext(
            name=name,
            module=module,
            args=tuple(fx.node.map_arg(node.args, value)),
            kwargs=dict(fx.node.map_arg(node.kwargs, value)),
            inputs=[fields[a] for a in (live or parents)],
            op=module if module is not None else node.target,
            shapes=(lambda n=node: probe.shapes(n)) if probe is not None else None,  # type: ignore[misc]
        )
        result = geometry(ctx)
        if not isinstance(result, ReceptiveField):
            raise UnknownGeometryError(
                f"the geometry registered for node {name!r} returned {type(result).__name__}, not a ReceptiveField"
            )
        fields[node] = result
    return fields


def _as_net(model: Any) -> DeconvNet:
    return model if isinstance(model, DeconvNet) else DeconvNet(model)


def receptive_fields(
    model: Any, layers: Sequence[str] | None = None, *, method: Any = None
) -> dict[str, ReceptiveField]:
    """The receptive field of every projectable layer of a model (or of the layers asked for).

    Fields follow the reverse pass: under deconvnet and guided backpropagation a gate (squeeze-and-excitation,
    CBAM, softmax attention weights) is held at its forward value, so its global input does not widen the
    field of what it gates, and a crop holds the projection; under the gradient it does widen it. An op
    without a registered geometry gets one measured from a probe pass (see :mod:`deconvviz.core.probe`).

    Args:
        model: a :class:`~deconvviz.DeconvNet`, an ``nn.Module`` that torch.fx can trace, or a loaded model
            (anything with ``.module`` and ``.layers``), whose aliases are then understood.
        layers: layer names or aliases; by default every layer of ``DeconvNet(model).layers``.
        method: the reverse pass (``"deconvnet"``, the default, ``"guided"``, ``"gradient"``, or a rule set).

    Returns:
        ``{layer: ReceptiveField}`` in input-to-output order, keyed by qualified node name, or as given when
        ``layers`` is given.

    Raises:
        TraceError: the model cannot be traced.
        LayerNotFoundError: an unknown layer name (the message lists close matches).
        UnknownGeometryError: a registered geometry that fails (the message says how to replace it).

    Example:
        >>> fields = receptive_fields(torchvision.models.vgg16())  # doctest: +SKIP
        >>> fields["features.29"]  # doctest: +SKIP
        ReceptiveField(size=(196, 196), stride=(16, 16), offset=(-90, -90))
    """
    net = _as_net(model)
    rules, graph, probe = net.field_context(method)
    if layers is None:
        names = net.layers_for(rules)
        nodes = [graph.node(n) for n in names]
    else:
        names = list(layers)
        nodes = [graph.node(n, net.aliases) for n in names]
        for name, node in zip(names, nodes, strict=True):
            if node not in graph.carries:
                raise ReceptiveFieldError(f"layer {name!r} does not depend on the input image, so it has no field")
    fields = fields_of(graph, nodes, rules=rules, probe=probe)
    return {name: fields[node] for name, node in zip(names, nodes, strict=True)}


def receptive_field(model: Any, layer: str, *, method: Any = None) -> ReceptiveField:
    """The receptive field of one layer (a qualified node name or an alias).

    Args:
        model: as for :func:`receptive_fields`.
        layer: the layer.
        method: the reverse pass (see :func:`receptive_fields`).

    Returns:
        Its :class:`ReceptiveField`.

    Example:
        >>> rf = receptive_field(torchvision.models.vgg16(), "features.29")  # doctest: +SKIP
        >>> rf.box(0, 0, (224, 224))  # doctest: +SKIP
        (0, 0, 106, 106)
    """
    return receptive_fields(model, [layer], method=method)[layer]


__all__ = [
    "GEOMETRIES",
    "Box",
    "Geometry",
    "GeometryContext",
    "ReceptiveField",
    "ReceptiveFieldError",
    "UnknownGeometryError",
    "fields_of",
    "get_geometry",
    "pointwise",
    "receptive_field",
    "receptive_fields",
    "register_geometry",
    "single",
    "whole_image",
    "window",
]
