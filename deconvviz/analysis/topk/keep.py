"""A finished scan cut down to some of its channels: the strongest, or chosen ones (its hits are kept as scanned)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from deconvviz.analysis.topk.tracker import TopKTracker
from deconvviz.io.sources import SearchError

if TYPE_CHECKING:  # pragma: no cover
    from deconvviz.analysis.topk.scan import ScanResult


def keep_strongest(found: ScanResult, count: int) -> ScanResult:
    """``found`` with only the ``count`` channels per layer whose strongest kept activation is highest.

    Channels come strongest first; on equal values the lower channel index comes first. Every process of a
    distributed scan holds the same merged trackers, so every process keeps the same channels.
    """
    order = {}
    for layer, tracker in found.trackers.items():
        best = tracker.values[:, 0].to("cpu")
        order[layer] = sorted(range(len(best)), key=lambda row: (-float(best[row]), found.selected[layer][row]))[:count]
    return _keep_rows(found, order)


def keep_channels(found: ScanResult, channels: dict[str, Sequence[int]]) -> ScanResult:
    """``found`` with only the given channels of the given layers (other layers are dropped), in that order.

    Raises:
        SearchError: a channel the scan did not track.
    """
    order = {}
    for layer, wanted in channels.items():
        rows = {channel: row for row, channel in enumerate(found.selected[layer])}
        missing = [c for c in wanted if c not in rows]
        if missing:
            raise SearchError(f"channel {missing[0]} of layer {layer!r} was not tracked by the scan")
        order[layer] = [rows[c] for c in wanted]
    return _keep_rows(found, order)


def _keep_rows(found: ScanResult, order: dict[str, list[int]]) -> ScanResult:
    """``found`` with, per layer of ``order``, only those tracker rows, in that order."""
    trackers, selected = {}, {}
    for layer, kept_rows in order.items():
        tracker = found.trackers[layer]
        rows = torch.tensor(kept_rows, dtype=torch.long, device=tracker.values.device)
        kept = TopKTracker(len(kept_rows), tracker.k, tracker.map_shape, device=tracker.values.device)
        kept.values, kept.images, kept.positions = (
            tracker.values.index_select(0, rows),
            tracker.images.index_select(0, rows),
            tracker.positions.index_select(0, rows),
        )
        trackers[layer], selected[layer] = kept, [found.selected[layer][row] for row in kept_rows]
    layers = [layer for layer in found.layers if layer in order]
    nodes = [node for layer, node in zip(found.layers, found.nodes, strict=True) if layer in order]
    return dataclasses.replace(found, layers=layers, nodes=nodes, trackers=trackers, selected=selected)


__all__ = ["keep_channels", "keep_strongest"]
