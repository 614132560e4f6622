"""Receptive fields of a traced graph: each op's geometry (from the op registry) applied input to output.

The geometry of each op, :class:`ReceptiveField` and the helpers to describe a geometry live in
:mod:`deconvviz.ops.geometry`; this module walks a graph with them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from torch import fx

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
    from deconvviz.core.graph import Graph
    from deconvviz.deconvnet import DeconvNet


def fields_of(graph: Graph, targets: Sequence[fx.Node]) -> dict[fx.Node, ReceptiveField]:
    """The receptive field of every image-dependent node needed for ``targets``."""
    fields: dict[fx.Node, ReceptiveField] = {graph.input: ReceptiveField.identity()}
    for node in graph.ancestors(targets):
        if node in fields or node not in graph.carries or node.op == "output":
            continue
        name = graph.names[node]
        module = graph.module(node)
        geometry = GEOMETRIES.for_node(node, module)
        if geometry is None:
            op, key = graph.describe(node)
            raise UnknownGeometryError(
                f"no receptive-field geometry for {op} at node {name!r}; register one with "
                f"deconvviz.register_geometry({key}, geometry), e.g. deconvviz.receptive.pointwise for "
                "element-wise ops or deconvviz.receptive.window(kernel, stride, padding) for sliding windows"
            )

        def value(arg: fx.Node) -> Any:
            if arg in fields:
                return fields[arg]
            if arg.op == "get_attr":
                return graph.attribute(arg)
            return arg

        inputs = [fields[a] for a in graph.signal_inputs.get(node, [])]
        ctx = GeometryContext(
            name=name,
            module=module,
            args=tuple(fx.node.map_arg(node.args, value)),
            kwargs=dict(fx.node.map_arg(node.kwargs, value)),
            inputs=inputs,
            op=module if module is not None else node.target,
        )
        result = geometry(ctx)
        if not isinstance(result, ReceptiveField):
            raise UnknownGeometryError(
                f"the geometry registered for node {name!r} returned {type(result).__name__}, not a ReceptiveField"
            )
        fields[node] = result
    return fields


def _as_net(model: Any) -> DeconvNet:
    from deconvviz.deconvnet import DeconvNet

    return model if isinstance(model, DeconvNet) else DeconvNet(model)


def receptive_fields(model: Any, layers: Sequence[str] | None = None) -> dict[str, ReceptiveField]:
    """The receptive field of every projectable layer of a model (or of the layers asked for).

    Args:
        model: a :class:`~deconvviz.DeconvNet`, an ``nn.Module`` that torch.fx can trace, or a loaded model
            (anything with ``.module`` and ``.layers``), whose aliases are then understood.
        layers: layer names or aliases; by default every layer of ``DeconvNet(model).layers``.

    Returns:
        ``{layer: ReceptiveField}`` in input-to-output order, keyed by qualified node name, or as given when
        ``layers`` is given.

    Raises:
        TraceError: the model cannot be traced.
        LayerNotFoundError: an unknown layer name (the message lists close matches).
        UnknownGeometryError: an op below a layer has no registered geometry (the message says how to add one).

    Example:
        >>> fields = receptive_fields(torchvision.models.vgg16())  # doctest: +SKIP
        >>> fields["features.29"]  # doctest: +SKIP
        ReceptiveField(size=(196, 196), stride=(16, 16), offset=(-90, -90))
    """
    net = _as_net(model)
    graph = net.graph
    if layers is None:
        names = net.layers
        nodes = [graph.node(n) for n in names]
    else:
        names = list(layers)
        nodes = [graph.node(n, net.aliases) for n in names]
        for name, node in zip(names, nodes, strict=True):
            if node not in graph.carries:
                raise ReceptiveFieldError(f"layer {name!r} does not depend on the input image, so it has no field")
    fields = fields_of(graph, nodes)
    return {name: fields[node] for name, node in zip(names, nodes, strict=True)}


def receptive_field(model: Any, layer: str) -> ReceptiveField:
    """The receptive field of one layer (a qualified node name or an alias).

    Args:
        model: as for :func:`receptive_fields`.
        layer: the layer.

    Returns:
        Its :class:`ReceptiveField`.

    Example:
        >>> rf = receptive_field(torchvision.models.vgg16(), "features.29")  # doctest: +SKIP
        >>> rf.box(0, 0, (224, 224))  # doctest: +SKIP
        (0, 0, 106, 106)
    """
    return receptive_fields(model, [layer])[layer]


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
