"""The top-9 panel's hits: the folder's top-k scan on a background thread, or a report's manifest.

The scan is :func:`deconvviz.analysis.topk.scan.scan` (the streaming top-k of ``deconvviz report``) over every
projectable layer and channel, run between the requests' model work and saved as it goes, so that a second launch
on the same folder and model resumes it, or reuses it once finished.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deconvviz.analysis.choose import inside_flags
from deconvviz.analysis.topk.scan import _device_of
from deconvviz.analysis.topk.scan import scan as scan_folder
from deconvviz.analysis.topk.state import StateError
from deconvviz.core.seeds import channel_outside
from deconvviz.errors import DeconvVizError
from deconvviz.models.weights.sources import cache_dir

if TYPE_CHECKING:  # pragma: no cover
    from deconvviz.analysis.topk.scan import ScanResult
    from deconvviz.explore.engine import Explorer

TOP_K = 9
"""Hits per channel in the top-9 panel (the paper's nine)."""


class TopKError(DeconvVizError, ValueError):
    """A report or a layer the top-9 panel cannot read (HTTP 400)."""

    status = 400


def check_channel(channel: int, count: int, layer: str) -> None:
    """Refuse a channel outside ``0..count-1`` in the words ``deconvviz render`` uses."""
    if not 0 <= channel < count:
        raise TopKError(channel_outside(channel, count, layer))


def scan_hits(
    self: Explorer,
    found: ScanResult,
    node: str,
    channel: int,
    method: str | None = None,
    layer: str | None = None,
) -> list[dict[str, Any]]:
    """The kept hits of one channel of a scan: pictures by id, units, values, receptive-field boxes under ``method``.

    A hit's ``position`` is None on a layer without a 2-D map (a flattened or fully connected layer), as
    :meth:`Explorer.unit` gives it; messages name the layer as ``layer`` (the name the request gave), else ``node``.
    """
    name = layer or node
    tracker = found.trackers.get(node)
    if tracker is None:
        raise TopKError(f"layer {name!r} was not scanned; scanned: {', '.join(found.layers)}")
    check_channel(channel, len(found.selected[node]), name)
    row = found.selected[node].index(channel)
    values, images, positions = (t[row].tolist() for t in (tracker.values, tracker.images, tracker.positions))
    spatial = len(tracker.map_shape) == 2
    width = tracker.map_shape[1] if spatial else 1
    field_ = self._field(node, method)
    size = int(self.session.model.preprocessing.size)
    hits = []
    for rank, (value, index, flat) in enumerate(zip(values, images, positions, strict=True)):
        if index < 0 or not value > 0:  # no hit: an activation of 0 or less, as in the report
            continue
        position = divmod(int(flat), width)
        box = None if field_.whole_image else [int(v) for v in field_.box(*position, (size, size))]
        edge = box is not None and not inside_flags(field_, [position], (size, size))[0]
        picture = self.pictures[self.order[index]] if index < len(self.order) else None
        hits.append(
            {
                "rank": rank,
                "value": float(value),
                "image": picture.id if picture is not None else None,
                "name": found.source.names[index],
                "position": list(position) if spatial else None,
                "box": box,
                "edge": edge,
            }
        )
    return hits


def report_hits(
    self: Explorer, report: dict[str, Any], node: str, channel: int, name: str | None = None
) -> dict[str, Any]:
    """The hits a report kept for one channel, its pictures named by the explorer's ids where it has them.

    ``{"hits"}``, and ``"message"`` when there are none to give.

    A hit's ``position`` is None on a layer known to have no 2-D map (as :meth:`Explorer.unit` gives it); messages
    name the layer as ``name`` (the name the request gave), else ``node``.
    """
    layer = next((item for item in report["layers"] if item["node"] == node), None)
    by_name = {self.pictures[i].name: i for i in self.order}
    if layer is None:
        listed = ", ".join(item["layer"] for item in report["layers"])
        return {"hits": [], "message": f"the report has no layer {name or node!r}; it has {listed}"}
    kept = layer["channels"].get(str(channel))
    if kept is None:
        return {"hits": [], "message": f"the report did not keep channel {channel} of {name or layer['layer']!r}"}
    shape = next((item["shape"] for item in self.layers_known or [] if item["node"] == node), None)
    spatial = shape is None or len(shape) == 3
    hits = [
        {
            "rank": rank,
            "value": float(hit["value"]),
            "image": by_name.get(hit["image"]),
            "name": hit["image"],
            "position": list(hit["position"]) if spatial else None,
            "box": list(hit["box"]),
            "edge": bool(hit.get("edge", False)),  # reports written before edges were marked have none
        }
        for rank, hit in enumerate(kept)
        if float(hit["value"]) > 0
    ]
    return {"hits": hits}


def topk_answer(explorer: Explorer, layer: str, channel: int, method: str | None = None) -> dict[str, Any]:
    """What ``/api/topk`` answers (see :meth:`Explorer.topk`): the report's hits or the scan's, or its progress."""
    node = explorer.resolve(layer)
    out: dict[str, Any] = {"layer": layer, "node": node, "channel": channel, "k": TOP_K, **topk_status(explorer)}
    if explorer.report is not None:
        out["k"] = int(explorer.report.get("k") or TOP_K)  # the hits the report kept per channel
        out.update(report_hits(explorer, explorer.report, node, channel, layer))
    else:
        found = explorer.scanner.result
        out["hits"] = [] if found is None else scan_hits(explorer, found, node, channel, method, layer)
    if not out["hits"] and out["state"] == "done" and "message" not in out:
        out["message"] = (
            f"channel {channel} of {layer} never fired on the {out['total']} pictures (no activation above 0)"
        )
    return out


def topk_status(explorer: Explorer) -> dict[str, Any]:
    """Where the top-9 hits come from and how far along they are: the report read, or the folder's scan.

    ``{"source", "state", "done", "total"}`` (and ``"message"``, see :meth:`Scanner.status`); a report counts the
    pictures it scanned.
    """
    if explorer.report is None:
        return explorer.scanner.status()
    scanned = len(explorer.report.get("images") or [])
    return {"source": "report", "state": "done", "done": scanned, "total": scanned}


def read_report(folder: Path) -> dict[str, Any]:
    """The top-k part of a report's ``manifest.json`` (``{"folder", "layers": [...], ...}``)."""
    manifest = folder / "manifest.json"
    if not manifest.is_file():
        raise TopKError(f"no report at {str(folder)!r}: it holds no manifest.json; give a `deconvviz report` folder")
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
        topk = data["topk"]
        topk["layers"], topk["folder"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise TopKError(f"{str(manifest)!r} is not a deconvviz report manifest ({exc}); give a report folder") from exc
    return dict(topk)


# ------------------------------------------------------------------------------------------------ scanning


class _StopScan(Exception):
    """Raised from the scan's progress callback to end it when the explorer closes."""


class Scanner:
    """The folder's top-k scan on a background thread, resumable across launches (:func:`deconvviz.search.scan`).

    The scan state lives in ``<cache>/explore/<digest of model, weights and folder>/`` and is saved every few
    seconds, so a second launch on the same folder resumes it, or reuses it when it was finished.
    """

    SAVE_EVERY = 5.0

    def __init__(self, explorer: Explorer, root: Path | None) -> None:
        self.explorer = explorer
        self.root = root
        self.state = "none"
        self.done = 0
        self.total = len(explorer.source) if explorer.source is not None else 0
        self.error: str | None = None
        self.result: ScanResult | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.started = 0.0

    def status(self) -> dict[str, Any]:
        """``{"source": "scan", "state", "done", "total"}`` and ``"message"`` when there is something to say."""
        out: dict[str, Any] = {"source": "scan", "state": self.state, "done": self.done, "total": self.total}
        if self.state == "none":
            out["message"] = "no folder to scan: start deconvviz explore with IMAGES (a folder) for top-9 hits"
        elif self.state == "failed":
            out["message"] = self.error
        return out

    def folder(self) -> Path:
        """Where this model's and folder's scan state is kept."""
        explorer = self.explorer
        assert explorer.source is not None
        model = explorer.session.model
        key = "\0".join(
            [
                str(getattr(model, "name", "")),
                str(getattr(model, "weights", "")),
                str(Path(explorer.source.description).resolve()),
                explorer.source.digest(),
            ]
        )
        return (self.root or cache_dir() / "explore") / hashlib.blake2b(key.encode(), digest_size=10).hexdigest()

    def start(self) -> None:
        """Start the scan on its own thread."""
        self.state = "scanning"
        self.started = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="deconvviz-explore-scan", daemon=True)
        self._thread.start()

    def _progress(self, stage: str, done: int, total: int) -> None:
        if stage == "scan":
            self.done, self.total = done, total
        if self._stop.is_set():
            raise _StopScan
        self.explorer.worker.pause_for_requests()

    def _run(self) -> None:
        explorer = self.explorer
        worker = explorer.worker
        device = _device_of(explorer.session.model)
        batch = 32 if device.type == "cuda" else 4
        state = self.folder()
        scan: Callable[..., ScanResult] = scan_folder
        arguments: dict[str, Any] = {
            "k": TOP_K,
            "channels": None,
            "batch_size": batch,
            "progress": self._progress,
            "state": state,
            "resume": True,
            "save_every": self.SAVE_EVERY,
        }
        worker.model.acquire()
        try:
            try:
                arguments["layers"] = [layer["node"] for layer in explorer.layers()]  # model work: under the lock
                self.result = scan(explorer.source, explorer.session.model, **arguments)
            except StateError:  # a state from another deconvviz version or other arguments: scan afresh
                shutil.rmtree(state, ignore_errors=True)
                self.result = scan(explorer.source, explorer.session.model, **arguments)
            self.state = "done"
            self.done = self.total
        except _StopScan:
            self.state = "stopped"
        except Exception as exc:  # the page shows the one line; the explorer goes on without top-k hits
            self.state = "failed"
            text = str(exc).strip()
            self.error = f"the top-k scan failed: {text.splitlines()[0] if text else type(exc).__name__}"
        finally:
            worker.model.release()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the scan to end; whether it has."""
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True

    def stop(self) -> None:
        """Ask the scan to stop at its next batch (its saved state is kept for the next launch)."""
        self._stop.set()

    def join(self, timeout: float = 30.0) -> None:
        """Wait for a stopped scan's thread to end."""
        if self._thread is not None and threading.current_thread() is not self._thread:
            self._thread.join(timeout)
