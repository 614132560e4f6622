"""Per channel, the k strongest activations seen so far, each from a different image: a scan's running state."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from deconvviz.analysis.topk.state import tracker_state


class TopKTracker:
    """Streaming top-k per channel: ``k`` best (value, image, position) triples, one hit per image.

    Ties keep the earlier image, so a scan in a fixed order is deterministic; :meth:`merged` combines the
    trackers of several shards with the same rule, so the result does not depend on how the images were split.

    Args:
        channels: number of tracked channels.
        k: how many activations to keep per channel.
        map_shape: spatial shape of the layer's maps (to turn flat positions into rows and columns).
        device: where the kept hits live (the scan's device: the batches never leave it).
    """

    def __init__(
        self, channels: int, k: int, map_shape: Sequence[int] = (), device: torch.device | str = "cpu"
    ) -> None:
        self.k = k
        self.map_shape = tuple(int(n) for n in map_shape)
        self.values = torch.full((channels, k), -math.inf, dtype=torch.float64, device=device)
        self.images = torch.full((channels, k), -1, dtype=torch.long, device=device)
        self.positions = torch.zeros((channels, k), dtype=torch.long, device=device)  # flat index into the map

    def update(self, activations: Tensor, images: Tensor) -> None:
        """Offer a batch: ``activations`` ``(B, channels, ...)`` and the image index of each row ``(B,)``."""
        batch, channels = activations.shape[:2]
        device = self.values.device
        flat = activations.detach().reshape(batch, channels, -1)
        best, where = flat.max(dim=2)  # per image and channel: its strongest unit
        values = torch.cat([self.values, best.t().to(device, torch.float64)], dim=1)
        image_ids = torch.cat([self.images, images.to(device).expand(channels, batch)], dim=1)
        positions = torch.cat([self.positions, where.t().to(device)], dim=1)
        order = torch.sort(values, dim=1, descending=True, stable=True).indices[:, : self.k]
        self.values = values.gather(1, order)
        self.images = image_ids.gather(1, order)
        self.positions = positions.gather(1, order)

    @classmethod
    def merged(cls, parts: Sequence[TopKTracker]) -> TopKTracker:
        """One tracker from trackers of disjoint image sets: strongest first, the earlier image on ties.

        That is the order a single scan over all the images in index order keeps, so a scan split over
        several processes and merged equals the scan in one process, ties included.
        """
        first = parts[0]
        values = torch.cat([p.values.to(first.values.device) for p in parts], dim=1)
        images = torch.cat([p.images.to(first.values.device) for p in parts], dim=1)
        positions = torch.cat([p.positions.to(first.values.device) for p in parts], dim=1)
        # Sort by image first (empty slots, image -1, last), then stably by value: equal values stay by image.
        key = torch.where(images < 0, torch.iinfo(torch.long).max, images)
        by_image = torch.sort(key, dim=1, stable=True).indices
        values, images, positions = (
            values.gather(1, by_image),
            images.gather(1, by_image),
            positions.gather(1, by_image),
        )
        order = torch.sort(values, dim=1, descending=True, stable=True).indices[:, : first.k]
        out = cls(values.shape[0], first.k, first.map_shape, device=first.values.device)
        out.values, out.images, out.positions = (
            values.gather(1, order),
            images.gather(1, order),
            positions.gather(1, order),
        )
        return out

    def state(self) -> dict[str, Any]:
        """The kept hits as saved in a scan state (CPU tensors)."""
        return tracker_state(self.values, self.images, self.positions, self.map_shape)

    @classmethod
    def from_state(cls, saved: dict[str, Any], device: torch.device | str = "cpu") -> TopKTracker:
        """A tracker from :meth:`state`."""
        values = saved["values"]
        out = cls(values.shape[0], values.shape[1], saved["map_shape"], device=device)
        out.values = values.to(device, torch.float64)
        out.images = saved["images"].to(device, torch.long)
        out.positions = saved["positions"].to(device, torch.long)
        return out
