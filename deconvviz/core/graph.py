"""Trace a model with torch.fx and name its nodes the way torchvision does.

Layer names are the qualified node names that ``torchvision.models.feature_extraction.get_graph_node_names``
gives in eval mode (``features.29``, ``layer4.1.relu_1``, ``layer4.1.add``), so names a user finds in
torchvision's documentation or tools work here unchanged.
"""

from __future__ import annotations

import contextlib
import difflib
import math
import operator
import re
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

from deconvviz.errors import DeconvVizError, TraceError, first_line


class LayerNotFoundError(DeconvVizError, ValueError):
    """A layer name that is neither a node of the traced graph nor a known alias."""


# Ops that read metadata off a tensor (its shape, its rank): no signal flows through them.
_METADATA_METHODS = frozenset({"size", "dim", "numel", "ndimension", "nelement", "type", "get_device"})
_METADATA_FUNCTIONS: frozenset[Callable[..., Any]] = frozenset({getattr, len, torch.numel})
_VALUE_ATTRS = frozenset({"values", "indices", "real", "imag", "T", "mT", "H", "mH"})
"""Attributes that are a tensor's (or a named tuple's) values, not its metadata, as ``getattr`` nodes read them."""

# Arguments an op reads only for their shape, dtype or device (by position): no signal flows through them.
_SHAPE_ONLY_METHODS: dict[str, tuple[int, ...]] = {
    "expand_as": (1,),
    "type_as": (1,),
    "view_as": (1,),
    "reshape_as": (1,),
    "to": (1,),
    "new_zeros": (0,),
    "new_ones": (0,),
    "new_full": (0,),
    "new_empty": (0,),
    "new_tensor": (0,),
}
_SHAPE_ONLY_FUNCTIONS: dict[Callable[..., Any], tuple[int, ...]] = {
    torch.zeros_like: (0,),
    torch.ones_like: (0,),
    torch.empty_like: (0,),
    torch.full_like: (0,),
    torch.rand_like: (0,),
    torch.randn_like: (0,),
}


def _timm_helpers() -> tuple[list[type[nn.Module]], list[Callable[..., Any]]]:
    """Timm's own lists of modules to keep opaque and functions to keep as calls, when timm is in use."""
    if "timm" not in sys.modules:  # never imported here: timm is optional
        return [], []
    try:
        from timm.layers import get_notrace_functions, get_notrace_modules
    except ImportError:  # pragma: no cover - a timm from before these were public
        try:
            from timm.models._features_fx import get_notrace_functions, get_notrace_modules
        except ImportError:
            return [], []
    return list(get_notrace_modules()), list(get_notrace_functions())


@dataclass
class Graph:
    """A traced model: its fx graph plus the lookups the rest of deconvviz needs.

    Attributes:
        model: the traced module (the caller's, not a copy).
        graph: the fx graph.
        names: qualified name of every node (torchvision's naming).
        input: the placeholder node that receives the image batch.
        carries: nodes whose value depends on the input through tensor ops (signal-carrying nodes).
        signal_inputs: per signal-carrying node, the signal-carrying nodes whose values flow into it (an argument
            read only for its shape, as ``y`` in ``x.expand_as(y)``, carries no signal into the op).
        opaque: qualified names of submodules that torch.fx could not trace into; each is one node.
        containers: qualified name of every submodule traced through -> the node computing its output, so a
            container's own name (``features.0`` for a ``Conv2dNormActivation``) still names a layer.
        label: how messages name the model (its registered name; empty: its class).
    """

    model: nn.Module
    graph: fx.Graph
    names: dict[fx.Node, str]
    input: fx.Node
    carries: set[fx.Node] = field(default_factory=set)
    signal_inputs: dict[fx.Node, list[fx.Node]] = field(default_factory=dict)
    opaque: set[str] = field(default_factory=set)
    containers: dict[str, fx.Node] = field(default_factory=dict)
    label: str = ""
    _by_name: dict[str, fx.Node] = field(default_factory=dict, repr=False)
    _modules: dict[str, nn.Module] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._by_name = {name: node for node, name in self.names.items()}
        self._modules = dict(self.model.named_modules())
        self.carries, self.signal_inputs = _signal_nodes(self.graph, self.input)
        for node, name in self.names.items():  # the last node inside a module computes its output
            parts = name.split(".")
            for i in range(1, len(parts)):
                prefix = ".".join(parts[:i])
                if prefix in self._modules and prefix not in self._by_name and node in self.carries:
                    self.containers[prefix] = node

    @property
    def nodes(self) -> list[fx.Node]:
        """All nodes in execution (topological) order."""
        return list(self.graph.nodes)

    def module(self, node: fx.Node) -> nn.Module | None:
        """The submodule a ``call_module`` node calls, else None."""
        if node.op != "call_module":
            return None
        return self._modules[str(node.target)]

    def attribute(self, node: fx.Node) -> Any:
        """The value a ``get_attr`` node reads (a parameter, buffer or constant)."""
        value: Any = self.model
        for part in str(node.target).split("."):
            value = getattr(value, part)
        return value

    def node(self, name: str, aliases: dict[str, str] | None = None) -> fx.Node:
        """Resolve a layer name or alias to its node.

        Raises:
            LayerNotFoundError: the name is unknown; the message lists the closest names.
        """
        if not isinstance(name, str):  # None, an index, a list: named here rather than failing in a lookup
            hint = f"write {str(name)!r}" if isinstance(name, int) and not isinstance(name, bool) else "give one name"
            raise LayerNotFoundError(
                f"a layer is named by a string (a node name such as 'features.29' or an alias such as 'conv5_3'), "
                f"got {name!r}: {hint} (`deconvviz layers` or `DeconvNet.layers` lists every layer)"
            )
        aliases = aliases or {}
        target = aliases.get(name, name)
        found = self._by_name.get(target, self.containers.get(target))
        if found is not None and found.op not in ("placeholder", "output"):
            return found
        resolved = [a for a, t in aliases.items() if a != name and (t in self._by_name or t in self.containers)]
        candidates = [*resolved, *(n for n, node in self._by_name.items() if node.op not in ("placeholder", "output"))]
        lower = {c.lower(): c for c in reversed(candidates)}  # a name in another case first (FIRE9: fire9)
        matches = difflib.get_close_matches(name.lower(), list(lower), n=5, cutoff=0.5)
        close = list(dict.fromkeys(lower[c] for c in matches))
        hint = f"did you mean {', '.join(repr(c) for c in close)}?" if close else "none is close"
        if name in aliases:  # an alias the model's spec gives, for a part its traced graph does not have
            hint = f"it is an alias of {target!r}, which the traced model has no node or module of; {hint}"
        if found is not None:  # the model's input or its return: not a layer of its own
            hint = "the model's input and its return are not layers; give the node that computes it"
        raise LayerNotFoundError(
            f"unknown layer {name!r} for {self.label or type(self.model).__name__}: {hint} "
            "(`deconvviz layers` or `DeconvNet.layers` lists every layer)"
        )

    def describe(self, node: fx.Node) -> tuple[str, str]:
        """How to name a node's op in a message, and how to spell its registry key in code.

        Returns:
            ``("module Swish", "mypkg.Swish")``, ``("function torch.sigmoid", "torch.sigmoid")`` or
            ``("tensor method .view()", "'view'")``.
        """
        module = self.module(node)
        if module is not None:
            cls = type(module)
            return f"module {cls.__name__}", f"{cls.__module__}.{cls.__qualname__}"
        if node.op == "call_method":
            return f"tensor method .{node.target}()", repr(node.target)
        fn = node.target
        qual = f"{getattr(fn, '__module__', None) or 'builtins'}.{getattr(fn, '__name__', fn)}"
        return f"function {qual}", qual

    def ancestors(self, targets: Iterable[fx.Node]) -> list[fx.Node]:
        """The nodes needed to compute ``targets`` (themselves included), in execution order."""
        needed: set[fx.Node] = set()
        stack = list(targets)
        while stack:
            node = stack.pop()
            if node in needed:
                continue
            needed.add(node)
            stack.extend(node.all_input_nodes)
        return [n for n in self.graph.nodes if n in needed]


def op_name(node: fx.Node) -> str:
    """The bare name of a node's op: a tensor method's (``"permute"``) or a function's (``"adaptive_avg_pool2d"``)."""
    return str(node.target) if node.op == "call_method" else getattr(node.target, "__name__", "")


@contextlib.contextmanager
def evaluating(model: nn.Module) -> Iterator[None]:
    """Put ``model`` in eval mode for the block and restore every submodule's own flag afterwards."""
    flags = {m: m.training for m in model.modules()}
    try:
        model.eval()
        yield
    finally:
        for module, flag in flags.items():
            module.training = flag


def _signal_nodes(graph: fx.Graph, source: fx.Node) -> tuple[set[fx.Node], dict[fx.Node, list[fx.Node]]]:
    """Nodes whose value depends on ``source`` through ops that pass tensors on, and each one's signal inputs."""
    carries = {source}
    inputs: dict[fx.Node, list[fx.Node]] = {source: []}
    for node in graph.nodes:
        if node is source or node.op in ("placeholder", "get_attr", "output"):
            continue
        if _is_metadata(node):
            continue
        found = [arg for arg in _value_inputs(node) if arg in carries]
        if found:
            carries.add(node)
            inputs[node] = found
    return carries, inputs


def _value_inputs(node: fx.Node) -> list[fx.Node]:
    """The nodes whose values (not only shapes) an op reads, in first-use order."""
    positions = (
        _SHAPE_ONLY_METHODS.get(str(node.target), ())
        if node.op == "call_method"
        else _SHAPE_ONLY_FUNCTIONS.get(node.target, ())  # type: ignore[arg-type]
        if node.op == "call_function" and _hashable(node.target)
        else ()
    )
    if not positions:
        return list(node.all_input_nodes)
    kept: list[fx.Node] = []

    def keep(found: fx.Node) -> fx.Node:
        kept.append(found)
        return found

    for i, arg in enumerate(node.args):
        if i not in positions:
            fx.node.map_arg(arg, keep)
    fx.node.map_arg(node.kwargs, keep)
    return list(dict.fromkeys(kept))


def _hashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


def _is_metadata(node: fx.Node) -> bool:
    if node.op == "call_method" and node.target in _METADATA_METHODS:
        return True
    if node.op == "call_function" and node.target is getattr and len(node.args) > 1 and node.args[1] in _VALUE_ATTRS:
        return False  # torch.sort(x).values, torch.fft.fft2(x).real: the values themselves
    if node.op == "call_function" and node.target in _METADATA_FUNCTIONS:
        return True
    # getitem on something that carries no tensor signal (``x.shape[0]``) is metadata too; getitem on a
    # tensor or a tuple of tensors is decided by its input, so it is not singled out here.
    return node.op == "call_function" and node.target is operator.getitem and _is_metadata_source(node)


def _is_metadata_source(node: fx.Node) -> bool:
    first = node.args[0] if node.args else None
    return isinstance(first, fx.Node) and _is_metadata(first)


class _NamingTracer(fx.Tracer):
    """torch.fx tracing that names every node by where it runs, as ``get_graph_node_names`` names them.

    A module's call is named by the module's qualified name (``features.29``); any other op by the name of the
    module it runs in and its own (``layer4.1.add``); an op's name that already ends in ``_<n>`` loses that
    ending, and a name already given gets ``_1``, ``_2``, ... in turn (``layer4.1.relu_1``).
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._within = ""  # the qualified name of the module whose forward is being traced
        self.node_to_qualname: dict[fx.Node, str] = {}

    def call_module(self, m: nn.Module, forward: Callable[..., Any], args: Any, kwargs: Any) -> Any:
        outer, self._within = self._within, self.path_of_module(m)
        try:
            if self.is_leaf_module(m, self._within):
                return self.create_proxy("call_module", self._within, args, kwargs)
            return forward(*args, **kwargs)
        finally:
            self._within = outer

    def create_proxy(self, kind: str, target: Any, args: Any, kwargs: Any, *rest: Any, **more: Any) -> Any:
        proxy = super().create_proxy(kind, target, args, kwargs, *rest, **more)
        self.node_to_qualname[proxy.node] = self._qualname(proxy.node)
        return proxy

    def _qualname(self, node: fx.Node) -> str:
        name = self._within
        if node.op != "call_module":
            name = f"{name}.{node.name}" if name else node.name
        if re.fullmatch(r".+_[0-9]+", name):
            name = name.rsplit("_", 1)[0]
        repeat = re.compile(rf"{re.escape(name)}(_[0-9]+)?")
        for given in reversed(self.node_to_qualname.values()):  # the latest of this name says the next number
            if repeat.fullmatch(given):
                ending = given[len(name) :]
                return f"{name}_{int(ending[1:]) + 1 if ending else 1}"
        return name


class _Tracer(_NamingTracer):
    """The node naming above, plus: a submodule that torch.fx cannot trace into becomes one opaque node."""

    def __init__(self, leaf: Callable[[nn.Module], bool], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._leaf = leaf
        self.opaque: set[str] = set()

    def is_leaf_module(self, m: nn.Module, module_qualname: str) -> bool:
        if module_qualname in self.opaque or self._leaf(m):
            return True
        return bool(super().is_leaf_module(m, module_qualname))

    def call_module(self, m: nn.Module, forward: Callable[..., Any], args: Any, kwargs: Any) -> Any:
        qualname = self.path_of_module(m)
        if not qualname or self.is_leaf_module(m, qualname):
            return super().call_module(m, forward, args, kwargs)
        last = next(iter(reversed(self.graph.nodes)))
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:  # data-dependent control flow and the like: keep the submodule whole
            added = []
            node = last.next
            while node.op != "root":
                added.append(node)
                node = node.next
            for node in reversed(added):
                self.node_to_qualname.pop(node, None)
                self.graph.erase_node(node)
            self.opaque.add(qualname)
            return super().call_module(m, forward, args, kwargs)


def trace(model: nn.Module, leaf_types: Sequence[type[nn.Module]] = ()) -> Graph:
    """Trace ``model`` symbolically, keeping torch.nn modules and ``leaf_types`` as single nodes.

    Containers that only sequence other modules (torchvision's ``Conv2dNormActivation``, timm's blocks) are
    traced through. A submodule that torch.fx cannot trace into (data-dependent control flow) is kept as one
    opaque node; its mirror is worked out by autograd over that submodule alone (see
    :mod:`deconvviz.ops.fallback`). When timm is in use, the functions it publishes as calls to keep whole
    stay calls; the modules it lists as leaves for its own feature extraction are traced through where
    torch.fx can.

    Args:
        model: the network; it is not modified.
        leaf_types: extra module classes to keep opaque (those with a mirror rule in the call's rule set).

    Returns:
        The traced :class:`Graph`.

    Raises:
        TraceError: torch.fx cannot trace the model, or it does not take exactly one tensor input.
    """
    if not isinstance(model, nn.Module):
        raise TraceError(f"expected a torch.nn.Module, got {type(model).__name__}")
    # timm's list of modules to keep whole serves its feature extraction; here they are traced through where
    # torch.fx can (every convolution of a NormFreeBlock is a layer) and kept whole where it cannot.
    _, timm_functions = _timm_helpers()
    exact = set(leaf_types)
    tracer = _Tracer(
        lambda m: type(m) in exact,
        # torchvision's ops stay calls, as in its own tracing; a model that uses them has imported them
        autowrap_modules=(math, *([sys.modules["torchvision.ops"]] if "torchvision.ops" in sys.modules else [])),
        autowrap_functions=tuple(timm_functions),
    )
    try:
        # torchvision names nodes from the eval-mode graph; trace that one.
        with evaluating(model), warnings.catch_warnings():
            # torch 2.1's fx reads torch's own deprecated has_cuda, has_mps ... flags on its first trace
            warnings.filterwarnings("ignore", message=r"'has_\w+' is deprecated", category=UserWarning)
            graph = tracer.trace(model)
    except Exception as exc:  # fx raises many kinds of errors for untraceable code
        first = first_line(exc)
        raise TraceError(
            f"cannot trace {type(model).__name__} with torch.fx ({first}); its own forward must be traceable "
            "(move data-dependent code into a submodule, which is then mirrored whole, or register a mirror "
            "rule for the model's class with deconvviz.register_rule)"
        ) from exc

    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    required = [n for n in placeholders if not n.args]  # args hold a placeholder's default value
    if len(placeholders) == 0 or len(required) > 1:
        raise TraceError(
            f"{type(model).__name__}.forward must take exactly one tensor (the image batch); "
            f"it takes {len(required)} required inputs"
        )
    names = {node: tracer.node_to_qualname.get(node, node.name) for node in graph.nodes}
    return Graph(model=model, graph=graph, names=names, input=placeholders[0], opaque=set(tracer.opaque))
