"""Seeds: which activations of a layer to project, and the seed tensors that start the reverse walk.

A seed is the chosen activation's own value at the chosen location(s), zero everywhere else. ``mode="max"``
seeds the strongest unit of each channel (or the unit at ``position``), ``mode="map"`` a channel's whole
feature map; ``top=k`` picks the k channels with the strongest activations. Anything else (a class score, a
hand-made pattern) can be projected as a seed tensor of the layer's shape with
:meth:`deconvviz.DeconvNet.project_seeds`.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from deconvviz.errors import DeconvVizError

Mode = Literal["max", "map"]


class SeedError(DeconvVizError, ValueError):
    """A channel, position, mode or input that does not fit the layer being projected."""


Unit = tuple[int, int, int, int]
"""A single activation: ``(sample, channel, row, col)``; row and col are 0 for layers without a spatial map."""


def check_mode(mode: str, position: tuple[int, int] | None) -> None:
    """Raise :class:`SeedError` for a mode other than max/map, or a position combined with ``mode="map"``."""
    if mode not in ("max", "map"):
        raise SeedError(f"mode must be 'max' or 'map', got {mode!r}")
    if position is not None and mode == "map":
        raise SeedError("position= seeds one unit; it cannot be combined with mode='map'")


def channels(act: Tensor, channel: int | Sequence[int] | None, top: int | None, layer: str) -> list[int]:
    """The channels to seed: those given (checked against the layer), or the ``top`` strongest, strongest first.

    Args:
        act: the layer's activation, ``(N, C, ...)``; ``top`` ranks channels of image 0.
        channel: a channel index or a list of them.
        top: how many of the strongest channels to take instead.
        layer: the layer's name, for messages.

    Raises:
        SeedError: both or neither of ``channel`` and ``top``, or a channel out of range.
    """
    count = act.shape[1]
    if channel is not None and top is not None:
        raise SeedError("give either channel= or top=, not both")
    if top is not None:
        if isinstance(top, bool) or not isinstance(top, int) or not 1 <= top <= count:
            raise SeedError(f"top must be between 1 and {count} for layer {layer!r}, got {top!r}")
        strength = act[0].reshape(count, -1).amax(dim=1)
        # A stable sort keeps equal activations in channel order, so results are reproducible.
        order = torch.sort(strength, descending=True, stable=True).indices[:top]
        return [int(c) for c in order.tolist()]  # one read from the device, not one per channel
    if channel is None:
        raise SeedError("choose what to project: channel=<index or list> or top=<count>")
    channel = _plain(channel)  # a tensor or NumPy index (``acts.argmax()``) as Python numbers
    if isinstance(channel, str) or not isinstance(channel, numbers.Integral | Sequence):
        raise SeedError(f"channel= takes a channel index or a list of them, got {channel!r}")
    chosen = [channel] if isinstance(channel, numbers.Integral) else list(channel)
    chosen = [int(c) if isinstance(c, numbers.Integral) and not isinstance(c, bool) else c for c in chosen]
    if not chosen:
        raise SeedError("channel= is an empty list")
    for c in chosen:
        if isinstance(c, bool) or not isinstance(c, int):
            raise SeedError(f"channel= takes whole channel indices, got {c!r}; give an int or a list of ints")
        if not 0 <= c < count:
            raise SeedError(channel_outside(c, count, layer))
    return chosen


def channel_outside(channel: int, count: int, layer: str) -> str:
    """The one line for a channel outside ``0..count-1``, said the same way by every front."""
    return (
        f"channel {channel!r} is out of range for layer {layer!r}, which has {count} channels (0-{count - 1}); "
        "choose one in that range"
    )


def position_outside(position: tuple[int, int], height: int, width: int, layer: str) -> str:
    """The one line for a unit's ``(row, col)`` outside a ``height x width`` map."""
    return (
        f"position {tuple(position)} is outside the {height}x{width} map of layer {layer!r}; "
        f"choose rows 0-{height - 1} and columns 0-{width - 1}"
    )


def no_map(layer: str) -> str:
    """The one line for a position given on a layer without a 2-D map."""
    return f"position= seeds a unit of a 2-D map, and layer {layer!r} has none; leave it out"


def units(
    act: Tensor, channels: Sequence[int], mode: Mode, position: tuple[int, int] | None, layer: str
) -> tuple[list[Unit], Tensor]:
    """The unit to seed in each channel of image 0 (the strongest, or the one at ``position``) and its value.

    Raises:
        SeedError: a position outside the map, or a layer with more than two spatial dimensions.
    """
    spatial = tuple(act.shape[2:])
    if len(spatial) > 2:
        raise SeedError(f"layer {layer!r} has {len(spatial)} spatial dimensions; deconvviz seeds 2-D maps")
    height, width = ((*spatial, 1, 1))[:2] if spatial else (1, 1)
    planes = act[0, list(channels)].reshape(len(channels), -1)
    if position is not None:
        position = _plain(position)
        if not isinstance(position, Sequence) or isinstance(position, str) or len(position) != 2:
            raise SeedError(f"position= takes two numbers, (row, col) of a unit in the layer's map, got {position!r}")
        if not spatial:
            raise SeedError(no_map(layer))
        if not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in position):
            raise SeedError(f"position= takes whole numbers (row, col), got {tuple(position)!r}")
        row, col = int(position[0]), int(position[1])
        if not (0 <= row < height and 0 <= col < width):
            raise SeedError(position_outside((row, col), height, width, layer))
        flat = torch.full((len(channels),), row * width + col, dtype=torch.long, device=act.device)
        values = planes.gather(1, flat[:, None])[:, 0]
    else:  # the strongest unit of each channel (for mode="map", where its value labels the map)
        values, flat = planes.max(dim=1)
    units = [(0, int(c), int(f) // width, int(f) % width) for c, f in zip(channels, flat.tolist(), strict=True)]
    return units, values


def _plain(value: Any) -> Any:
    """A tensor or NumPy array or scalar as the Python number or list of its values; anything else as it is."""
    if isinstance(value, torch.Tensor) or type(value).__module__ == "numpy":
        return value.tolist()
    return value


def check_unit(act: Tensor, unit: Unit, layer: str) -> None:
    """Raise :class:`SeedError` unless ``unit`` lies inside the activation ``act`` of ``layer``."""
    sample, channel, row, col = unit
    height, width = ((*tuple(act.shape[2:]), 1, 1))[:2]
    if not (0 <= sample < act.shape[0] and 0 <= channel < act.shape[1] and 0 <= row < height and 0 <= col < width):
        raise SeedError(f"unit {unit} is outside layer {layer!r} of shape {tuple(act.shape)}")


def seed_tensor(act: Tensor, units: Sequence[Unit], mode: Mode) -> Tensor:
    """Seed tensors: each unit's own activation (or its channel's whole map), zero everywhere else."""
    count = len(units)
    seeds = act.new_zeros((count, *act.shape[1:]))
    flat = seeds.view(count, act.shape[1], -1)
    source = act.reshape(act.shape[0], act.shape[1], -1)
    for i, (sample, channel, row, col) in enumerate(units):
        if mode == "map":
            flat[i, channel] = source[sample, channel]
        else:
            index = row * (act.shape[3] if act.dim() == 4 else 1) + col
            flat[i, channel, index] = source[sample, channel, index]
    return seeds


def index_tensor(values: Sequence[int], device: torch.device | str) -> Tensor:
    """``values`` as a long tensor on ``device``, copied there without waiting for the device.

    A copy to a GPU from ordinary host memory waits until the work already queued on the stream is done; from
    page-locked memory it joins the queue, so that the host can go on queueing the next batch's work.
    """
    index = torch.tensor(list(values), dtype=torch.long)
    where = torch.device(device)
    if where.type != "cuda":
        return index.to(where)
    return index.pin_memory().to(where, non_blocking=True)
