"""The way down, step by step: the signal after each mirrored op of a projection, from the seed to the pixels.

``DeconvNet.project(..., steps=True)`` fills :attr:`deconvviz.Projection.steps` with a :class:`ProjectionSteps`:
one :class:`Step` per node the reverse walk visits, in the walk's order. A step holds the signal at the output of
its node once every op that reads that node has been mirrored, which is exactly the vector-Jacobian product of
the seed at that node under the method's rules. Its first step is the seed itself; its last is the signal at the
input, the reconstruction. Each step names the op(s) whose mirror made it (for a chain, the op just above) and
what that op does (``"unpool"``, ``"rectify"``, ``"transposed convolution"``, ...); an unpooling step also keeps
the switches it was unpooled with. A node whose output is a tuple of tensors (``split``, ``chunk``) has no step
of its own: its pieces' signals go on to the op that made the tuple.

Memory: the steps of a VGG16 projection at ``conv3_3`` take about 80 MB per seed in float32, so by default only
the first seed's steps are kept; ask for more with ``steps="all"`` or a list of seed indices. They are copied to
the CPU, in the dtype of the projection, as the walk goes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, fx

from deconvviz.core.capture import Capture
from deconvviz.core.graph import Graph
from deconvviz.core.seeds import SeedError
from deconvviz.methods import RuleSet

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

    from deconvviz.core.projection import Projection

StepsChoice = bool | int | str | Sequence[int]
"""Which seeds' steps to keep: False (none), True (the first seed), an index, a list of indices, or ``"all"``."""


@dataclass(frozen=True)
class Step:
    """The signal at one node of the way down.

    Attributes:
        index: the step's place, 0 for the seed.
        node: the node whose output the signal is at (the input placeholder for the last step).
        alias: the node's layer alias (``"conv3_3"``), if the model has one for it.
        ops: the node(s) whose mirror made this signal: the op just above in a chain, several where branches
            join (their signals are summed); empty for the seed.
        kinds: what each of ``ops`` did, in the same order (``"unpool"``, ``"rectify"``, ``"mask"``,
            ``"transposed convolution"``, ``"norm"``, ``"add"``, ``"concat split"``, ``"reshape"``, ...).
        shape: the signal's shape for one seed (``(C, H, W)`` for a feature map).
        signal: ``(S, *shape)``: the signal of each kept seed (see :attr:`ProjectionSteps.seeds`), on the CPU.
        switches: for an unpooling step, ``(S, C, H_out, W_out)``: for every pooled unit, the flat index
            ``row * W + col`` into this step's ``(H, W)`` plane where unpooling put its value; else None.
    """

    index: int
    node: str
    alias: str | None
    ops: tuple[str, ...]
    kinds: tuple[str, ...]
    shape: tuple[int, ...]
    signal: Tensor = field(repr=False)
    switches: Tensor | None = field(default=None, repr=False)

    @property
    def kind(self) -> str:
        """What made this signal, in words: ``"seed"``, one op's kind, or ``"sum"`` where branches join."""
        if not self.kinds:
            return "seed"
        return self.kinds[0] if len(self.kinds) == 1 else "sum"

    @property
    def name(self) -> str:
        """The node as labels show it: its alias where it has one, else its node name."""
        return self.alias or self.node

    def switch_mask(self, i: int = 0) -> Tensor | None:
        """For an unpooling step, ``(C, H, W)`` booleans: True where a switch of kept seed ``i`` points, else None.

        Every other position of the unpooled signal is zero (unpooling does not interpolate).
        """
        if self.switches is None:
            return None
        channels, height, width = self.shape[0], self.shape[-2], self.shape[-1]
        mask = torch.zeros(channels, height * width, dtype=torch.bool)
        mask.scatter_(1, self.switches[i].reshape(channels, -1), True)
        return mask.view(channels, height, width)


@dataclass(frozen=True)
class ProjectionSteps:
    """The steps of a projection, from the seed (first) down to the input (last); see the module docstring.

    Iterating gives the :class:`Step` objects; ``len`` is their count; ``steps[i]`` is step ``i``.

    Attributes:
        steps: the steps, seed first, input last.
        seeds: which seeds of the projection the signals belong to (rows of ``Projection.image``), in the order
            of each step's ``signal`` rows.
        layer: the layer as asked for; node: its node name.
        method: the reverse pass.
        channels: the seeded channel of each kept seed.
        positions: the seeded unit ``(row, col)`` of each kept seed (None for whole-map seeds).
        aliases: node name -> layer alias, for the nodes of the walk that have one (labels use them).
        projection: the projection the steps belong to (for the last column of the figure: the
            reconstruction as :func:`deconvviz.viz.to_rgb` shows it, and the input).

    Example:
        >>> p = net.project(x, "conv3_3", channel=12, steps=True)  # doctest: +SKIP
        >>> [(s.name, s.kind, s.shape) for s in p.steps][:3]  # doctest: +SKIP
        [('conv3_3', 'seed', (256, 56, 56)), ('features.13', 'transposed convolution', (256, 56, 56)), ...]
        >>> fig, axes = p.steps.figure()  # doctest: +SKIP
    """

    steps: tuple[Step, ...]
    seeds: tuple[int, ...]
    layer: str
    node: str
    method: str
    channels: tuple[int, ...]
    positions: tuple[tuple[int, int] | None, ...]
    aliases: dict[str, str] = field(default_factory=dict)
    projection: Projection | None = field(default=None, repr=False, compare=False)

    def __iter__(self) -> Iterator[Step]:
        return iter(self.steps)

    def __len__(self) -> int:
        return len(self.steps)

    def __getitem__(self, i: int) -> Step:
        return self.steps[i]

    def __repr__(self) -> str:
        return (
            f"ProjectionSteps(layer={self.layer!r}, method={self.method!r}, seeds={list(self.seeds)}, "
            f"{len(self)} steps: {' -> '.join(s.kind for s in self.steps)})"
        )

    def name_of(self, node: str) -> str:
        """A node as labels show it: its layer alias where it has one, else its node name."""
        return self.aliases.get(node, node)

    def before(self, step: Step | int) -> Step | None:
        """The step whose signal went into the op that made ``step`` (None for the seed, or where branches join).

        For a rectifying step, ``before(step).signal - step.signal`` is what the rectification cut.
        """
        current = self.steps[step] if isinstance(step, int) else step
        if len(current.ops) != 1:
            return None
        return next((s for s in self.steps if s.node == current.ops[0]), None)

    def to_dict(self) -> dict[str, Any]:
        """The steps without their tensors, JSON-ready: what a page needs to list and label them."""
        return {
            "layer": self.layer,
            "node": self.node,
            "method": self.method,
            "seeds": list(self.seeds),
            "channels": list(self.channels),
            "positions": [None if p is None else list(p) for p in self.positions],
            "steps": [
                {
                    "index": s.index,
                    "node": s.node,
                    "alias": s.alias,
                    "name": s.name,
                    "kind": s.kind,
                    "ops": list(s.ops),
                    "op_names": [self.name_of(o) for o in s.ops],
                    "kinds": list(s.kinds),
                    "shape": list(s.shape),
                }
                for s in self.steps
            ],
        }

    def figure(self, **kwargs: Any) -> tuple[Figure, Any]:
        """The steps drawn left to right, seed to input (see :func:`deconvviz.viz.steps.steps_figure`).

        Returns:
            ``(figure, axes)``; the figure is returned, never shown.
        """
        from deconvviz.viz.steps import steps_figure

        return steps_figure(self, **kwargs)

    def save(self, directory: str | Path, *, arguments: dict[str, Any] | None = None, **options: Any) -> Path:
        """Write the figure, one PNG per step and a manifest into the folder ``directory``, atomically.

        Args:
            directory: the result folder (an earlier deconvviz result there is replaced).
            arguments: how the steps were asked for, recorded in the manifest.
            **options: ``seed``, ``scale``, ``channels``, ``columns``, ``only`` (see
                :func:`deconvviz.viz.steps.save_steps`).

        Returns:
            The folder's path.
        """
        from deconvviz.viz.steps import save_steps

        return save_steps(self, Path(directory), arguments=arguments, **options)

    def _repr_png_(self) -> bytes:
        from deconvviz.viz.results import png_of

        return png_of(self.figure()[0])


def chosen_seeds(steps: StepsChoice, count: int) -> list[int]:
    """The seed indices whose steps are kept, for ``count`` seeds.

    Raises:
        SeedError: an index out of range or a value that is not a choice.
    """
    if steps is False or count == 0:
        return []
    if steps is True:
        return [0]
    if isinstance(steps, str):
        if steps != "all":
            raise SeedError(f"steps takes True, 'all', a seed index or a list of them; got {steps!r}")
        return list(range(count))
    wanted = [steps] if isinstance(steps, int) else list(steps)
    if not wanted or any(isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < count for i in wanted):
        raise SeedError(f"steps must pick seeds among 0..{count - 1}, got {steps!r}")
    return sorted(set(wanted))


def join_steps(projection: Projection, parts: Sequence[tuple[int, ProjectionSteps]]) -> ProjectionSteps:
    """The steps of several one-seed projections of the same layer as the steps of ``projection``'s seeds.

    Args:
        projection: the projection the steps belong to.
        parts: ``(seed index in projection, steps of a projection of that seed alone)``, one per kept seed.

    Returns:
        One :class:`ProjectionSteps` whose signals have one row per part, in order.
    """
    first = parts[0][1]
    steps = []
    for k, step in enumerate(first.steps):
        pieces = [p.steps[k] for _, p in parts]
        switches = None if step.switches is None else torch.cat([q.switches for q in pieces])  # type: ignore[misc]
        steps.append(replace(step, signal=torch.cat([q.signal for q in pieces]), switches=switches))
    seeds = tuple(i for i, _ in parts)
    return ProjectionSteps(
        steps=tuple(steps),
        seeds=seeds,
        layer=projection.layer,
        node=projection.node,
        method=projection.method,
        channels=tuple(projection.channels[i] for i in seeds),
        positions=tuple(projection.positions[i] for i in seeds),
        aliases=dict(first.aliases),
        projection=projection,
    )


class StepRecorder:
    """Collects the steps of the seeds kept, chunk by chunk of a projection's walks (the walk's observer).

    Args:
        graph: the traced model; capture: the capture pass; rules: the rule set of the call.
        aliases: alias -> node name, to label nodes.
        keep: the global indices of the seeds whose steps are kept.
    """

    def __init__(
        self, graph: Graph, capture: Capture, rules: RuleSet, aliases: dict[str, str], keep: Sequence[int]
    ) -> None:
        self.graph = graph
        self.capture = capture
        self.rules = rules
        self.keep = list(keep)
        self._alias: dict[str, str] = {}
        for alias, name in aliases.items():
            self._alias.setdefault(name, alias)
        self._order: list[fx.Node] = []
        self._reached: dict[fx.Node, None] = {}  # every node the walk passed, in its order, tuple-valued ones too
        self._signals: dict[fx.Node, list[Tensor]] = {}
        self._rows: Tensor | None = None
        self._samples: list[Tensor] = []

    def observer(self, start: int, sample: Tensor) -> Any:
        """The observer for the walk of seeds ``start .. start + len(sample) - 1`` (None when none is kept)."""
        rows = [i - start for i in self.keep if start <= i < start + sample.shape[0]]
        if not rows:
            return None
        index = torch.tensor(rows, dtype=torch.long, device=sample.device)
        self._samples.append(sample.index_select(0, index).cpu())

        def observe(node: fx.Node, signal: Any) -> None:
            self._reached[node] = None
            if not isinstance(signal, Tensor):  # a tuple-valued node (split pieces) hands its pieces on as they are
                return
            if node not in self._signals:
                self._order.append(node)
                self._signals[node] = []
            self._signals[node].append(signal.index_select(0, index.to(signal.device)).detach().cpu())

        return observe

    def result(self, projection: Projection) -> ProjectionSteps:
        """The steps collected, as a result tied to ``projection`` (whose image is the last step)."""
        graph, records = self.graph, self.capture.records
        sample = torch.cat(self._samples) if self._samples else torch.zeros(0, dtype=torch.long)
        steps: list[Step] = []
        for node in self._order:
            signal = torch.cat(self._signals[node])
            # the ops whose mirror made this signal: a tuple-valued op (multi-head attention) is one though it is
            # no step of its own
            ops = [c for c in self._reached if c in records and node in records[c].input_nodes]
            kinds = []
            switches = None
            for op in ops:
                rule = self.rules.for_node(op, graph.module(op))
                kinds.append(getattr(rule, "op_kind", "op"))
            if len(ops) == 1 and kinds[0] == "unpool" and isinstance(records[ops[0]].saved, Tensor):
                saved = records[ops[0]].saved
                switches = saved.index_select(0, sample.to(saved.device)).detach().cpu()
            steps.append(
                Step(
                    index=len(steps),
                    node=graph.names[node],
                    alias=self._alias.get(graph.names[node]),
                    ops=tuple(graph.names[o] for o in ops),
                    kinds=tuple(kinds),
                    shape=tuple(signal.shape[1:]),
                    signal=signal,
                    switches=switches,
                )
            )
        if not steps or steps[-1].node != graph.names[graph.input]:  # nothing reached the input: all zero
            image = projection.image[list(self.keep)]
            steps.append(
                Step(len(steps), graph.names[graph.input], None, (), (), tuple(image.shape[1:]), image.clone())
            )
        return ProjectionSteps(
            steps=tuple(steps),
            seeds=tuple(self.keep),
            layer=projection.layer,
            node=projection.node,
            method=projection.method,
            channels=tuple(projection.channels[i] for i in self.keep),
            positions=tuple(projection.positions[i] for i in self.keep),
            aliases={graph.names[n]: self._alias[graph.names[n]] for n in self._order if graph.names[n] in self._alias},
            projection=projection,
        )


__all__ = ["ProjectionSteps", "Step", "StepRecorder", "StepsChoice", "chosen_seeds", "join_steps"]
