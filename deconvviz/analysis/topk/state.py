"""A scan's resumable state: the per-channel top-k kept so far and how many of the process's batches are done.

The state is written every few seconds (atomically: a temporary file in the same folder, flushed to disk,
then renamed over the old one), so that a scan stopped by a crash, Ctrl-C or a kill goes on from its last
state and ends with exactly the result of an uninterrupted run: the images are read in a fixed order in
fixed batches, and the top-k after a batch is the same whether it was kept in memory or read back.

Each state carries the fingerprint of what produced it (model and its weights, layers, channels, ``k``, batch
size, the image list, the process's rank and the number of processes); a state from anything else is refused.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from deconvviz.analysis.topk.options import RandomChannels, ScanOptions
from deconvviz.io.atomic import atomic_file, clean_stale_temporaries, mark
from deconvviz.io.manifest import SCHEMA_VERSION, header, schema_version
from deconvviz.io.sources import SearchError

if TYPE_CHECKING:  # pragma: no cover
    from deconvviz.analysis.topk.distributed import Ranks
    from deconvviz.io.sources import ImageSource


class StateError(SearchError):
    """A saved scan state that does not belong to this scan, or cannot be read."""


@dataclass
class ScanState:
    """What a scan needs to go on where it stopped.

    Attributes:
        fingerprint: what produced it (see :func:`fingerprint`).
        batches_done: how many of this process's batches are folded into the trackers.
        trackers: per layer ``{"values", "images", "positions", "map_shape"}``.
        selected: per layer, the tracked channels.
        skipped: ``(image index, error)`` for every unreadable image so far.
        finished: the whole shard is done.
    """

    fingerprint: dict[str, Any]
    batches_done: int
    trackers: dict[str, dict[str, Any]] = field(default_factory=dict)
    selected: dict[str, list[int]] = field(default_factory=dict)
    skipped: list[tuple[int, str]] = field(default_factory=list)
    finished: bool = False


def parameters_digest(module: torch.nn.Module) -> str:
    """A digest of a module's parameters and buffers (names, shapes, dtypes and every byte)."""
    h = hashlib.blake2b(digest_size=16)
    for name, tensor in module.state_dict().items():
        t = tensor.detach()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        if t.numel():
            h.update(t.to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def state_file(folder: str | Path, rank: int, world: int) -> Path:
    """The state file of process ``rank`` of ``world`` inside ``folder``."""
    return Path(folder) / f"scan-{rank}-of-{world}.state"


def save_state(path: Path, state: ScanState) -> None:
    """Write ``state`` to ``path`` atomically (a reader sees the old state or the new one, never half of one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    mark(path.parent, "scan-state")  # deconvviz's own: removed when done, never scanned as pictures
    payload = {
        **header("scan-state", stamped=False),
        "fingerprint": state.fingerprint,
        "batches_done": state.batches_done,
        "trackers": state.trackers,
        "selected": state.selected,
        "skipped": [list(item) for item in state.skipped],
        "finished": state.finished,
    }
    with atomic_file(path, durable=True) as temporary, temporary.open("wb") as handle:
        torch.save(payload, handle)


def load_state(path: Path, expected: dict[str, Any]) -> ScanState | None:
    """The state saved at ``path`` (None when there is none), checked against the fingerprint ``expected``.

    Raises:
        StateError: the file is unreadable, or it was written by a scan with other arguments or another model.
    """
    clean_stale_temporaries(path.parent)  # a save cut short by a kill leaves its temporary behind
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file: torch raises many kinds
        raise StateError(f"cannot read the scan state {str(path)!r} ({exc}); remove it to start again") from exc
    if not isinstance(payload, dict) or schema_version(payload) != SCHEMA_VERSION:
        raise StateError(f"{str(path)!r} is not a scan state of this deconvviz version; remove it to start again")
    saved = payload.get("fingerprint", {})
    for key, value in expected.items():
        if saved.get(key) != value:
            raise StateError(
                f"the saved scan state {str(path)!r} is from another scan ({key}: {_short(saved.get(key))} there, "
                f"{_short(value)} now); give that scan's arguments to go on from it, or remove it to start again"
            )
    return ScanState(
        fingerprint=saved,
        batches_done=int(payload["batches_done"]),
        trackers=payload["trackers"],
        selected={layer: list(chosen) for layer, chosen in payload["selected"].items()},
        skipped=[(int(i), str(e)) for i, e in payload["skipped"]],
        finished=bool(payload["finished"]),
    )


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def tracker_state(values: Tensor, images: Tensor, positions: Tensor, map_shape: tuple[int, ...]) -> dict[str, Any]:
    """A tracker's tensors as they are saved (on the CPU)."""
    return {
        "values": values.to("cpu"),
        "images": images.to("cpu"),
        "positions": positions.to("cpu"),
        "map_shape": list(map_shape),
    }


__all__ = [
    "ScanState",
    "StateError",
    "load_state",
    "parameters_digest",
    "save_state",
    "scan_fingerprint",
    "state_file",
    "tracker_state",
]


def scan_fingerprint(
    loaded: Any, nodes: Sequence[str], options: ScanOptions, source: ImageSource, ranks: Ranks
) -> dict[str, Any]:
    """What a saved scan state must match to be resumed.

    The model and its weights, the scan's arguments, the images and the processes. ``inside`` is there only when
    set, so that states saved before the option stay resumable.
    """
    channels = options.tracked
    if isinstance(channels, RandomChannels):
        chosen: Any = f"{channels} (seed {options.seed})"  # another seed draws other channels
    else:
        chosen = channels if channels is None or isinstance(channels, int) else list(channels)
    fingerprint = {
        "model": str(getattr(loaded, "name", type(loaded.module).__name__)),
        "weights": str(getattr(loaded, "weights", "")),
        "parameters": parameters_digest(loaded.module),
        "layers": list(nodes),
        "k": options.k,
        "channels": chosen,
        "batch size": options.batch_size,
        "images": f"{len(source)} from {source.description} ({source.digest()})",
        "processes": ranks.world,
        "rank": ranks.rank,
    }
    if options.inside:
        fingerprint["inside"] = True
    return fingerprint
