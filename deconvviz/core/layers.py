"""Which layers to look at: the projectable ones by name, a sensible default set, the layers of a scan."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from deconvviz.core.graph import LayerNotFoundError, op_name
from deconvviz.errors import first_line, warn_caller

if TYPE_CHECKING:  # pragma: no cover
    from torch import Tensor

    from deconvviz.core.deconvnet import DeconvNet


def _is_pool(net: DeconvNet, node: str) -> bool:
    from torch import nn

    module = dict(net.model.named_modules()).get(node)
    pools = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
    return isinstance(module, pools) or "pool" in node.rsplit(".", 1)[-1].lower()


def alias_nodes(net: DeconvNet) -> dict[str, str]:
    """Each alias -> the node it names.

    An alias may name a node or a module (as timm's stages do); aliases that name nothing traced are left out.
    """
    found = {}
    for alias in net.aliases:
        try:
            found[alias] = net.resolve(alias)
        except LayerNotFoundError:
            continue
    return found


_TO_LAST = (0, 2, 3, 1)
_LAYOUT_ENDS = frozenset({"flatten", "reshape", "view", "mean", "sum", "amax", "squeeze", "unsqueeze"})


def _token_swap(node: Any) -> bool:
    """A ``transpose(1, 2)`` (or ``-1, -2``) of a map flattened to ``(N, C, L)``: a swap of channels and tokens."""
    if node.op not in ("call_method", "call_function") or op_name(node) != "transpose":
        return False
    dims = node.args[1:3] if len(node.args) >= 3 else (node.kwargs.get("dim0"), node.kwargs.get("dim1"))
    return {d % 3 if isinstance(d, int) else None for d in dims} == {1, 2}


def _permutation(node: Any) -> tuple[int, ...] | None:
    """The dimensions of a ``permute`` node (``x.permute(0, 2, 3, 1)``, ``torch.permute(x, [0, 2, 3, 1])``)."""
    if node.op not in ("call_method", "call_function") or op_name(node) != "permute":
        return None
    given = node.args[1:] or tuple(node.kwargs.get("dims", ()))
    dims = given[0] if len(given) == 1 and isinstance(given[0], list | tuple) else given
    return tuple(dims) if all(isinstance(d, int) for d in dims) else None


def channels_last(net: DeconvNet) -> set[str]:
    """The layers whose output holds its channels in the last dimension, ``(N, H, W, C)`` or tokens ``(N, L, C)``.

    Found from the graph alone: a ``permute(0, 2, 3, 1)`` of a channels-first map starts such a stretch (a
    ConvNeXt block's LayerNorm and pointwise Linears), ``permute(0, 3, 1, 2)`` ends it, and so do a
    ``transpose(1, 2)`` of a flattened map and the one back (a ViT's tokens); ops in between keep
    the layout, and a reshape, flatten or reduction ends what can be said of it. Seeds take dimension 1 as the
    channels, so these layers are not offered by name (:func:`layer_names`) or chosen by default; the block's
    output, back in channels-first order, is.
    """
    graph = net.graph
    last: set[Any] = set()
    for node in graph.nodes:
        if node not in graph.carries or node is graph.input or node.op == "output":
            continue
        inherited = any(parent in last for parent in graph.signal_inputs.get(node, []))
        if _token_swap(node):  # (N, C, H*W) -> (N, H*W, C), as a ViT's patch embedding: tokens, channels last
            if not inherited and any(op_name(p) == "flatten" for p in graph.signal_inputs.get(node, [])):
                last.add(node)
            continue  # inherited: back to channels first
        dims = _permutation(node)
        if dims is not None:
            if (dims == _TO_LAST and not inherited) or (inherited and dims == (0, 1, 2, 3)):
                last.add(node)
            continue
        if inherited and op_name(node) not in _LAYOUT_ENDS:
            last.add(node)
    return {graph.names[node] for node in last}


def reverse_stops(net: DeconvNet, x: Tensor, layers: Sequence[str] | None = None) -> dict[str, str]:
    """The layers whose reverse pass cannot reach the picture, each with why (one line naming the op).

    A layer's pass goes down through every op between the picture and it, so it stops where any of them can be
    mirrored neither by a rule nor by autograd (attention that regroups the batch into windows, a reshape that
    mixes the batch into the features). Passes are run from the deepest layer not yet settled, and each settles
    the layers it goes through on its way down. A plain CNN needs one pass, a CNN with gates a few per block, a
    transformer about one per layer above its first attention (each short: it stops at that attention).

    Args:
        net: the network.
        x: one preprocessed picture, ``(1, C, H, W)``, on the model's device.
        layers: the layers to settle (default: :attr:`DeconvNet.layers`).

    Returns:
        Layer -> the error's first line, for the layers that cannot be projected; empty when all can.
    """
    import torch

    from deconvviz.core import walk
    from deconvviz.errors import DeconvVizError, UnsupportedOpError

    graph = net.graph
    names = list(net.layers if layers is None else layers)
    below: dict[str, set[Any]] = {}

    def under(name: str) -> set[Any]:  # the ops the layer's pass goes through (the picture itself aside)
        if name not in below:
            found = graph.ancestors([graph.node(name, net.aliases)])
            below[name] = {node for node in found if node in graph.carries and node is not graph.input}
        return below[name]

    reached: set[str] = set()
    stops: dict[str, str] = {}
    found = net.activations(x, names)
    for name in names:
        value = found.get(name)
        if not isinstance(value, torch.Tensor) or value.dim() < 2:
            stops[name] = f"layer {name!r} has no map of channels to seed (its output is a tuple or a vector)"
    captures = net.capture_layers(x, [name for name in names if name not in stops])  # one forward pass for all
    if captures:
        graph = next(iter(captures.values())).graph  # the graph the reverse pass walks (leaves kept whole differ)
    for name in reversed(names):
        if name in reached or name in stops:
            continue
        captured = captures[name]
        seen: set[Any] = set()
        stopped = None
        try:
            with torch.inference_mode():
                walk.mirror(
                    captured.graph,
                    captured.capture,
                    captured.node,
                    torch.ones(
                        (1, *captured.activation.shape[1:]), dtype=captured.activation.dtype, device=captured.x.device
                    ),
                    torch.zeros(1, dtype=torch.long, device=captured.x.device),
                    captured.rules,
                    functools.partial(_visited, seen),
                )
        except UnsupportedOpError as exc:
            stops[name] = first_line(exc)
            stopped = graph.node(exc.node) if exc.node is not None else captured.node
        except DeconvVizError as exc:
            stops[name] = first_line(exc)
            continue
        # A layer the pass went through has the rest of this pass as its own (which ops pass no signal down, a
        # held attention map or gate, does not depend on the values): it is settled with it, unless the op the
        # pass stopped at lies below it, when its own pass says whether it gets there. A layer the pass did not
        # go through (inside such a held branch) gets a pass of its own too.
        reached.update(
            other
            for other in names
            if other not in stops
            and graph.node(other, net.aliases) in seen
            and (stopped is None or stopped not in under(other))
        )
    return {name: stops[name] for name in names if name in stops}


def _visited(seen: set[Any], node: Any, _signal: Any) -> None:
    seen.add(node)


def layer_names(net: DeconvNet) -> list[str]:
    """The layers worth offering by name, input to output: aliases if the model has them, else node names.

    Only projectable layers are listed, not those that hold their channels last (:func:`channels_last`); an
    alias is listed once even when several aliases name one node.
    """
    hidden = channels_last(net)
    projectable = [name for name in net.layers if name not in hidden]
    if not net.aliases:
        return projectable
    order = {name: i for i, name in enumerate(projectable)}
    named = [(alias, node) for alias, node in alias_nodes(net).items() if node in order]
    seen: set[str] = set()
    result = []
    for alias, node in sorted(named, key=lambda pair: order[pair[1]]):
        if node not in seen:
            seen.add(node)
            result.append(alias)
    return result


def through_layers(net: DeconvNet) -> set[str]:
    """The layers every path from the image to the model's output passes through (the graph's cut points).

    A chain's every layer is one; in a residual, branching or gated block only the block's output is (the
    skip connection bypasses the convolutions inside it, a squeeze-and-excitation gate or an Inception branch
    is one of several paths), so these are where a stage ends. Empty when the output cannot be found.
    """
    graph = net.graph
    signal = [node for node in graph.nodes if node in graph.carries or node is graph.input]
    known = set(signal)
    parents = {node: [p for p in graph.signal_inputs.get(node, []) if p in known] for node in signal}
    output = next((node for node in graph.nodes if node.op == "output"), None)
    if output is None:
        return set()
    ends = [p for p in (graph.signal_inputs.get(output) or output.all_input_nodes) if p in known]
    ahead: dict[Any, int] = {graph.input: 1}  # paths from the image to each node
    for node in signal:
        if node is not graph.input:
            ahead[node] = sum(ahead.get(p, 0) for p in parents[node])
    behind: dict[Any, int] = dict.fromkeys(signal, 0)  # paths from each node to the output
    for node in ends:
        behind[node] += 1
    for node in reversed(signal):
        for p in parents[node]:
            behind[p] += behind[node]
    total = sum(ahead.get(node, 0) for node in ends)
    if total == 0:
        return set()
    return {graph.names[node] for node in signal if node is not graph.input and ahead[node] * behind[node] == total}


def _global_pool(net: DeconvNet, node: Any) -> bool:
    """Whether a node pools each map to one value (``AdaptiveAvgPool2d(1)``, ``x.mean((2, 3), keepdim=True)``)."""
    from torch import nn

    module = net.graph.module(node)
    if isinstance(module, nn.AdaptiveAvgPool2d | nn.AdaptiveMaxPool2d):
        size = module.output_size
        return all(s == 1 for s in (size if isinstance(size, tuple) else (size,)))
    name = op_name(node)
    if name in ("adaptive_avg_pool2d", "adaptive_max_pool2d"):
        size = node.args[1] if len(node.args) > 1 else node.kwargs.get("output_size")
        return size == 1 or (isinstance(size, list | tuple) and all(s == 1 for s in size))
    if name in ("mean", "amax", "sum"):
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        return isinstance(dims, list | tuple) and {d % 4 for d in dims if isinstance(d, int)} == {2, 3}
    return False


def after_global_pool(net: DeconvNet) -> set[str]:
    """The layers whose every input was pooled to one value per map: 1x1 maps, no longer feature maps.

    The layers after a classifier's global average pooling are; a squeeze-and-excitation gate's own 1x1 branch
    is too, but not the map it multiplies.
    """
    graph = net.graph
    below: set[Any] = set()
    for node in graph.nodes:
        if node not in graph.carries or node is graph.input:
            continue
        parents = graph.signal_inputs.get(node, [])
        # every input pooled: a gate's pooled branch (squeeze-and-excitation) does not pool what it multiplies
        if parents and all(p in below or _global_pool(net, p) for p in parents):
            below.add(node)
    return {graph.names[node] for node in below}


def default_layers(net: DeconvNet, x: Tensor, limit: int = 6, *, classes: int | None = None) -> list[str]:
    """A sensible set of layers to look at: the last non-pooling layer at each resolution that ends a stage.

    For VGG16 with its aliases this is ``conv1_2, conv2_2, conv3_3, conv4_3, conv5_3``, the five blocks'
    last (rectified) convolutions; other models get the end of each of their stages: of the layers every path
    through the model passes (:func:`through_layers`: a residual block's output, not a convolution inside it,
    nor a squeeze-and-excitation gate's 1x1 map or an Inception branch), the last at each resolution.

    Args:
        net: the deconvnet.
        x: a ``(1, C, H, W)`` input, used to learn each layer's output size.
        limit: the most layers returned (the deepest are kept).
        classes: the width of the model's class scores, to leave out layers whose maps are those scores
            (:func:`score_maps`: SqueezeNet's ``conv10``), so that its deepest layer of features is chosen.
    """
    # a gate's output (a sigmoid or softmax held at its forward value) projects to nothing under deconvnet
    held = set(net.held_layers())
    candidates = [
        name for name in layer_names(net) if not _is_pool(net, net.resolve(name)) and net.resolve(name) not in held
    ]
    if not candidates:
        return layer_names(net)[-1:]
    # a node that returns a tuple (multi-head attention, torch.max over a dim) is not a layer to show
    found = net.activations(x, candidates)
    shapes = {name: tuple(act.shape) if hasattr(act, "shape") else () for name, act in found.items()}
    spatial = [name for name in candidates if len(shapes[name]) == 4]
    through, pooled = through_layers(net), after_global_pool(net)
    spatial = [name for name in spatial if net.resolve(name) not in pooled] or spatial
    spatial = [name for name in spatial if net.resolve(name) in through] or spatial
    classes = classes if classes is not None else net.classes
    if classes is not None:
        scores = set(score_maps(net, spatial, classes, {name: shapes[name][1] for name in spatial}))
        spatial = [name for name in spatial if name not in scores] or spatial
    if not spatial:
        return candidates[-1:]
    # a stage is a downsampling step (an unpadded convolution that trims a map by a few pixels starts none)
    stages: dict[tuple[int, int], list[str]] = {}
    for name in spatial:
        ratios = (int(x.shape[-2]) / shapes[name][2], int(x.shape[-1]) / shapes[name][3])
        stages.setdefault(tuple(round(math.log2(r)) for r in ratios), []).append(name)  # type: ignore[arg-type]
    depth = _depths(net)
    chosen = []
    for names in stages.values():  # the stage's end: the last of its outermost modules' outputs
        shallowest = min(depth.get(net.resolve(name), 99) for name in names)
        chosen.append([name for name in names if depth.get(net.resolve(name), 99) == shallowest][-1])
    order = {name: i for i, name in enumerate(spatial)}
    return sorted(chosen, key=order.__getitem__)[-limit:]


def _depths(net: DeconvNet) -> dict[str, int]:
    """Each node's depth in the module tree: that of the outermost module whose output it computes.

    A ResNet's ``layer1.2.relu_2`` computes ``layer1``'s output (depth 1), MobileNetV2's ``features.1.conv.2``
    that of ``features.1`` (depth 2), while the expansion ``features.2.conv.0.2`` is only ``features.2.conv.0``'s
    (depth 4): at one resolution, the stage's own output is the shallowest.
    """
    graph = net.graph
    found = {name: name.count(".") + 1 for name in graph.names.values()}
    for container, node in graph.containers.items():
        name = graph.names[node]
        found[name] = min(found.get(name, 99), container.count(".") + 1)
    return found


def score_maps(net: DeconvNet, names: Sequence[str], classes: int, channels: dict[str, int]) -> list[str]:
    """The layers among ``names`` whose channels are the model's class scores, one map per class.

    A layer is one when it has ``classes`` channels and reaches the model's output through parameter-free ops
    alone (pooling, flattening, activations): SqueezeNet's ``conv10``, the last convolution of a fully
    convolutional classifier. The paper's feature maps are below it.

    Args:
        net: the deconvnet.
        names: the layers to look at.
        classes: the width of the model's class-score output.
        channels: each layer's channel count.
    """
    graph = net.graph
    found = []
    for name in names:
        if channels.get(name) != classes:
            continue
        start = graph.node(name, net.aliases)
        seen, todo, pure = {start}, list(start.users), True
        while todo and pure:
            node = todo.pop()
            if node in seen:
                continue
            seen.add(node)
            module = graph.module(node)
            pure = module is None or next(module.parameters(recurse=True), None) is None
            todo.extend(node.users)
        if pure:
            found.append(name)
    return found


SCAN_LAYERS = ("conv2_2", "conv3_3", "conv4_3", "conv5_3")
"""Default layers of a scan over a data set (``top_k`` and ``report``) where the model has these aliases."""


def scan_layers(net: DeconvNet, x: Tensor) -> list[str]:
    """The default layers of a scan over a data set (:func:`deconvviz.top_k` and the report, alike).

    ``conv2_2, conv3_3, conv4_3, conv5_3`` where the model has these aliases (VGG16: one per block from the
    second on, as in the paper's Fig. 2), else the deepest four of :func:`default_layers`.

    Args:
        net: the deconvnet.
        x: a ``(1, C, H, W)`` input, used to learn each layer's output size.
    """
    if all(name in net.aliases for name in SCAN_LAYERS):
        return list(SCAN_LAYERS)
    return default_layers(net, x)[-4:]


def choose_layers(net: DeconvNet, layers: str | Sequence[str] | None, x: Tensor) -> list[str]:
    """The layers to render: None -> :func:`default_layers`; ``"all"`` -> the tensor layers; else as given.

    ``"all"`` is every one of :func:`layer_names` that gives a tensor.

    Names may be node names or aliases; a comma-separated string is split.

    Raises:
        LayerNotFoundError: an unknown name (close names are suggested), or names that are all empty (``","``).
    """
    if layers is None:
        return default_layers(net, x)
    names = [layers] if isinstance(layers, str) else list(layers)
    flat = [part.strip() for name in names for part in name.split(",") if part.strip()]
    if not flat:
        raise LayerNotFoundError(
            f"no layer named in {layers!r}; give layer names separated by commas, or none for the default layers"
        )
    if any(name.lower() == "all" for name in flat):
        # every layer that gives one tensor: a tuple-valued node (multi-head attention) is shown through its items
        names = layer_names(net)
        return [name for name, act in net.activations(x, names).items() if hasattr(act, "shape")]
    for name in flat:
        net.resolve(name)
    last = channels_last(net)
    for name in dict.fromkeys(flat):
        if net.resolve(name) in last:
            warn_caller(
                f"layer {name!r} holds its channels last (HxWxC, inside a block): a 'channel' there is a row of the "
                "map; project the block's output, where the channels are first"
            )
    return list(dict.fromkeys(flat))
