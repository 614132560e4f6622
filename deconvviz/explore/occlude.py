"""Occlusion of one channel in the explorer: where in the picture the feature map's activation comes from.

A grey square (the model's mean colour, 0 in its input space) is slid over the picture, as in the paper's
Fig. 7 (a) and ``deconvviz occlusion``, and the channel's total activation is recorded at every position; only
what the square changes is recomputed (:mod:`deconvviz.core.incremental`). Where the page asks, the answer is
kept with the projection steps, so a second look runs no model.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from deconvviz.analysis.occluder import occluder_grid, positions_per_batch, sweep
from deconvviz.core.graph import evaluating
from deconvviz.core.incremental import IncrementalOcclusion
from deconvviz.explore.pictures import ExploreError, heat_table, png_bytes
from deconvviz.explore.topk import check_channel
from deconvviz.explore.worker import Superseded

if TYPE_CHECKING:  # pragma: no cover
    from deconvviz.explore.engine import Explorer

MOST_POSITIONS = 1024
"""The most occluder positions one request may ask for (a 32 x 32 grid), so that a request cannot hold the model
for long; the command line has no such limit."""


def occlusion_map(
    explorer: Explorer, image: str, layer: str, channel: int, size: int | None = None, stride: int | None = None
) -> dict[str, Any]:
    """The channel's total activation under the occluder at every position of the grid.

    Args:
        explorer: the explorer holding the picture and the model.
        image: the picture's id.
        layer: the layer (alias or node name).
        channel: the feature map.
        size: the occluder's side in pixels; default: a seventh of the picture's shorter side (32 at 224).
        stride: pixels between positions; default: half the occluder.

    Returns:
        ``{"layer", "node", "channel", "picture", "size", "stride", "rows", "cols", "unoccluded", "totals"}``:
        ``picture`` the model input's ``[height, width]``, ``rows`` and ``cols`` the occluder's ``[start, end)``
        per grid row and column, ``totals`` the grid of totals.

    Must run on the model worker, like :meth:`~deconvviz.explore.engine.Explorer.captured`; a newer request of
    the same page stops the sweep between batches.

    Raises:
        ExploreError: a layer without feature maps, or more than :data:`MOST_POSITIONS` positions.
        OcclusionError: an occluder larger than the picture, a size or stride below 1.
        TopKError: a channel out of range.
        Superseded: the page asked for something else while the sweep ran.
    """
    import torch

    captured = explorer.captured(image, layer)
    act = captured.activation
    if act.dim() != 4:
        raise ExploreError(
            f"occlusion follows a feature map, and layer {layer!r} has none (output {tuple(act.shape[1:])}); "
            "choose a convolutional layer"
        )
    check_channel(channel, int(act.shape[1]), layer)
    x = captured.x
    height, width = int(x.shape[-2]), int(x.shape[-1])
    size = size if size is not None else max(1, round(min(height, width) / 7))
    stride = stride if stride is not None else max(1, size // 2)
    key = ("occlusion", image, captured.node_name, channel, size, stride)
    found = explorer.steps_kept.get(key)
    if found is not None:
        return dict(found)
    rows, cols = occluder_grid(height, width, size, stride)
    if len(rows) * len(cols) > MOST_POSITIONS:
        least = math.ceil(max(height, width) / math.isqrt(MOST_POSITIONS))
        raise ExploreError(
            f"{len(rows)} x {len(cols)} occluder positions are more than the explorer's {MOST_POSITIONS}; "
            f"choose a stride of at least {least} (or run `deconvviz occlusion`)"
        )
    net = explorer.net
    node = net.graph.node(captured.node_name, net.aliases)
    grid = [(i, j) for i in range(len(rows)) for j in range(len(cols))]
    totals = []
    with torch.inference_mode(), evaluating(net.model):
        engine = IncrementalOcclusion(net.graph, x.detach(), [node], rows, cols)
        for _, _, values in sweep(engine, grid, positions_per_batch(x)):
            totals.append(engine.channel_totals(node, values[node], channel).double().cpu())
            if explorer.worker.stale():  # the page moved on: its next view waits for no sweep
                raise Superseded("a newer request from this page came; the occlusion sweep was stopped")
        unoccluded = float(engine.cached[node][0, channel].double().sum())
    answer = {
        "layer": layer,
        "node": captured.node_name,
        "channel": channel,
        "picture": [height, width],
        "size": size,
        "stride": stride,
        "rows": [list(r) for r in rows],
        "cols": [list(c) for c in cols],
        "unoccluded": unoccluded,
        "totals": torch.cat(totals).view(len(rows), len(cols)).tolist(),
    }
    explorer.steps_kept.put(key, answer, 64 * len(grid) + 1024)
    return dict(answer)


def occlusion_png(
    explorer: Explorer, image: str, layer: str, channel: int, size: int | None = None, stride: int | None = None
) -> bytes:
    """:func:`occlusion_map` as a picture the size of the model's input, each grid cell ``stride`` pixels.

    Black where hiding that part lowers the total most, pale yellow where it lowers it least (or raises it).
    """
    import numpy as np
    from PIL import Image as PILImage

    found = occlusion_map(explorer, image, layer, channel, size, stride)
    totals = np.asarray(found["totals"], dtype=np.float64)
    low, high = float(totals.min()), float(totals.max())
    scaled = (totals - low) / (high - low) if high > low else np.ones_like(totals)
    cells = heat_table()[np.clip(np.rint(scaled * 255), 0, 255).astype(np.uint8)]
    step = int(found["stride"])
    picture = cells.repeat(step, axis=0).repeat(step, axis=1)
    height, width = found["picture"]
    return png_bytes(PILImage.fromarray(np.ascontiguousarray(picture[:height, :width])))


__all__ = ["MOST_POSITIONS", "occlusion_map", "occlusion_png"]
