"""How a layer's features develop over training (Zeiler & Fergus, Fig. 4).

For each checkpoint of one architecture (state dicts, in training order) the data set is scanned with the
streaming top-k search, and each chosen channel's strongest activation across the data set is projected to
pixels and cut to the unit's receptive field. Drawn as the paper draws it: one row per channel, one column
per checkpoint, so one sees a unit's preferred pattern appear and settle as training goes on.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor

from deconvviz.analysis.base import AnalysisError, AnalysisResult
from deconvviz.analysis.progress import ProgressOption, reporting
from deconvviz.analysis.topk.options import channel_spec
from deconvviz.analysis.topk.scan import top_k
from deconvviz.io.sources import find_images
from deconvviz.models.session import session
from deconvviz.models.weights.sources import CheckpointSource, WeightsFormatError, matching_prefix

if TYPE_CHECKING:  # pragma: no cover
    from deconvviz.analysis.topk.result import TopKHit
    from deconvviz.models.session import Session
    from deconvviz.models.specs import LoadedModel

Checkpoint = str | os.PathLike[str] | Mapping[str, Tensor]


@dataclass(frozen=True)
class EvolutionResult(AnalysisResult):
    """The strongest activations of chosen channels at each training checkpoint (the paper's Fig. 4).

    Attributes:
        model: the model's name.
        layer: the layer as asked for.
        node: its node name.
        data: the scanned folder.
        images: the number of images scanned per checkpoint.
        checkpoints: a name per checkpoint (its file name without suffix), in training order.
        channels: the channels shown, one row each.
        k: hits kept per channel and checkpoint.
        hits: ``hits[checkpoint][channel]``: the ``k`` strongest hits (value, image, unit, receptive-field box,
            cropped reconstruction and image patch), strongest first.
        to_image: the model's input-space -> picture conversion, for display.
        skipped: ``(picture, why)`` for each picture of ``data`` that could not be read (left out of the scan).
    """

    kind: ClassVar[str] = "evolution"

    model: str
    layer: str
    node: str
    data: str
    images: int
    checkpoints: tuple[str, ...]
    channels: tuple[int, ...]
    k: int
    hits: dict[str, dict[int, tuple[TopKHit, ...]]] = field(repr=False)
    to_image: Callable[[Tensor], Any] | None = field(default=None, repr=False, compare=False)
    skipped: tuple[tuple[str, str], ...] = field(default=(), repr=False)

    def _manifest(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "layer": self.layer,
            "node": self.node,
            "data": self.data,
            "images": self.images,
            "skipped": [{"image": image, "error": error} for image, error in self.skipped],
            "k": self.k,
            "channels": list(self.channels),
            "checkpoints": [
                {
                    "name": name,
                    "hits": {
                        str(channel): [
                            {"value": h.value, "image": h.image, "position": list(h.position), "box": list(h.box)}
                            for h in self.hits[name][channel]
                        ]
                        for channel in self.channels
                    },
                }
                for name in self.checkpoints
            ],
        }

    def summary(self) -> str:
        """One line: what was scanned and shown."""
        left_out = ""
        if self.skipped:
            more = ", ..." if len(self.skipped) > 1 else ""
            left_out = f"; {len(self.skipped)} unreadable picture(s) left out ({self.skipped[0][0]}{more})"
        return (
            f"{self.layer}: {len(self.channels)} channel(s) x {len(self.checkpoints)} checkpoint(s) "
            f"({', '.join(self.checkpoints)}), strongest of {self.images} image(s) each{left_out}"
        )


def _read(checkpoint: Checkpoint, name: str) -> dict[str, Tensor]:
    """A checkpoint as a state dict: a mapping, or a file as ``--checkpoint`` reads one (any wrapper, safetensors)."""
    if isinstance(checkpoint, Mapping):
        state: Any = checkpoint
        if "state_dict" in state and isinstance(state["state_dict"], Mapping):
            state = state["state_dict"]
        if not all(isinstance(v, Tensor) for v in state.values()):
            raise AnalysisError(f"checkpoint {name!r} is not a state dict (a mapping of names to tensors)")
        return dict(state)
    try:
        return CheckpointSource(Path(checkpoint)).load()
    except WeightsFormatError as exc:
        raise AnalysisError(str(exc)) from exc


def _check_fits(state: Mapping[str, Tensor], module: torch.nn.Module, name: str, model: str) -> None:
    """Refuse a state dict made for another architecture, naming the first difference."""
    expected = module.state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]!r})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]!r})")
        raise AnalysisError(
            f"checkpoint {name!r} does not fit model {model!r}: keys {', '.join(parts)}; "
            "give state dicts saved from this architecture"
        )
    for key, value in expected.items():
        if tuple(state[key].shape) != tuple(value.shape):
            raise AnalysisError(
                f"checkpoint {name!r} does not fit model {model!r}: {key!r} is {tuple(state[key].shape)} in the "
                f"checkpoint but {tuple(value.shape)} in the model; give state dicts saved from this architecture"
            )


def _names(checkpoints: Sequence[Checkpoint], names: Sequence[str] | None) -> list[str]:
    if names is not None:
        chosen = [str(n) for n in names]
        if len(chosen) != len(checkpoints):
            raise AnalysisError(f"give one name per checkpoint: {len(checkpoints)} checkpoint(s), {len(chosen)} names")
    else:
        chosen = [f"checkpoint {i + 1}" if isinstance(c, Mapping) else Path(c).stem for i, c in enumerate(checkpoints)]
    seen: dict[str, int] = {}
    unique = []
    for name in chosen:
        seen[name] = seen.get(name, 0) + 1
        unique.append(name if seen[name] == 1 else f"{name} ({seen[name]})")
    return unique


def evolution(
    checkpoints: Sequence[Checkpoint],
    data: str | os.PathLike[str],
    model: str | LoadedModel | Session = "vgg16",
    *,
    layer: str,
    channels: int | str | Sequence[int] | None = 8,
    k: int = 1,
    names: Sequence[str] | None = None,
    batch_size: int = 8,
    device: str | None = "auto",
    size: int | None = None,
    progress: ProgressOption = None,
) -> EvolutionResult:
    """Each chosen channel's strongest activation across a data set, at every training checkpoint (Fig. 4).

    The model (its architecture and preprocessing) is copied; each checkpoint is loaded into the copy, so the
    caller's model keeps its weights. Every checkpoint is checked against the architecture before any scan.
    Each scan is :func:`~deconvviz.top_k`'s streaming search (one batch in memory at a time); its hits
    are projected through their own image's pooling switches and cut to the unit's receptive field.

    Args:
        checkpoints: state dicts in training order: files saved with ``torch.save(model.state_dict(), path)``
            (or holding ``{"state_dict": ...}``), or the mappings themselves.
        data: a folder of images, scanned recursively.
        model: the architecture: a model name, a loaded model or a :class:`~deconvviz.models.session.Session`.
        layer: the layer to look at (name or alias).
        channels: a count ``n`` or ``"strongest<n>"`` (the ``n`` channels whose strongest activation over the data
            is highest in the last checkpoint, the trained model, followed through every checkpoint),
            ``"first<n>"`` (the first ``n`` by index), a list of channel indices, or None for all.
        k: hits per channel and checkpoint, each from a different image (the paper shows 1).
        names: a label per checkpoint (default: the file names without suffix).
        batch_size: images per forward pass.
        device: where to run a model given by name.
        size: the side of the square images are resized and cropped to, instead of the model's own.
        progress: ``progress(done, total, checkpoint)`` once before the first scan and after each checkpoint's,
            ``"bar"`` for a tqdm bar, or None (see :mod:`deconvviz.analysis.progress`).

    Returns:
        An :class:`EvolutionResult`.

    Raises:
        AnalysisError: no checkpoints, a checkpoint that cannot be read or was saved for another architecture.
        SearchError: a missing or empty data folder, no readable image, bad ``k`` or channels.
        LayerNotFoundError: an unknown layer.

    Example:
        >>> r = dv.evolution(["e1.pt", "e5.pt"], "digits/", "digits.py:build", layer="features.7")  # doctest: +SKIP
        >>> fig, axes = r.figure()  # doctest: +SKIP
    """
    if isinstance(checkpoints, str | os.PathLike | Mapping):  # one checkpoint alone, not its letters
        checkpoints = [checkpoints]
    if not checkpoints:
        raise AnalysisError("no checkpoints given; pass the state dicts to compare, in training order")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise AnalysisError(f"k must be a whole number of at least 1, got {k!r}")
    labels = _names(checkpoints, names)
    folder = Path(data)
    find_images(folder)  # a missing or empty folder fails now, before any checkpoint is read
    current = session(model, device=device, size=size)
    loaded = current.model
    current.require_preprocessing(f"evolution reads the pictures of {str(data)!r} and needs", error=AnalysisError)
    node = current.net.resolve(layer)  # an unknown layer fails before any work
    states = []
    for checkpoint, label in zip(checkpoints, labels, strict=True):
        state = matching_prefix(_read(checkpoint, label), loaded.module.state_dict().keys())
        _check_fits(state, loaded.module, label, current.name)
        states.append(state)
    module = copy.deepcopy(loaded.module)  # the caller's model keeps its own weights
    copied = dataclasses.replace(loaded, module=module)
    hits: dict[str, dict[int, tuple[TopKHit, ...]]] = {}
    shown: tuple[int, ...] = ()
    scanned = 0
    skipped: tuple[tuple[str, str], ...] = ()
    following: int | str | Sequence[int] | None = channels
    if channel_spec(channels)[1] is not None:
        # "the n strongest" are those of the trained model: the last checkpoint is scanned first, and the
        # channels it picks are followed through the others
        order = [len(states) - 1, *range(len(states) - 1)]
    else:
        order = list(range(len(states)))
    with reporting(progress, "evolution") as report:
        report(0, len(states), "starting")
        for done, index in enumerate(order, start=1):
            state, label = states[index], labels[index]
            with torch.no_grad():
                module.load_state_dict(state, strict=True)
            module.eval()
            found = top_k(folder, copied, [layer], k=k, channels=following, batch_size=batch_size)
            per_channel = found.hits[layer]
            following = shown = tuple(per_channel)
            hits[label] = dict(per_channel)
            scanned = len(found.images) - len(found.skipped)
            skipped = tuple((str(image), str(error)) for image, error in found.skipped)
            report(done, len(states), label)
    hits = {label: hits[label] for label in labels}  # in training order
    return EvolutionResult(
        model=current.name,
        layer=layer,
        node=node,
        data=str(data),
        images=scanned,
        checkpoints=tuple(labels),
        channels=shown,
        k=k,
        hits=hits,
        to_image=getattr(loaded, "to_image", None),
        skipped=skipped,
    )


__all__ = ["EvolutionResult", "evolution"]
