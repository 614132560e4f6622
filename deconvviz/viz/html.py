"""Results shown as HTML: a notebook's inline overview of a top-k search, and activations as labels."""

from __future__ import annotations

import base64
import io
from typing import TYPE_CHECKING, Any

from PIL import Image

from deconvviz.io.web import text

if TYPE_CHECKING:  # pragma: no cover
    from deconvviz.analysis.topk.result import TopKResult

OVERVIEW_CHANNELS = 8
"""Channels per layer in a :class:`~deconvviz.TopKResult`'s notebook overview."""

THUMBNAIL = 144
"""Longest side, in pixels, of a picture embedded in an overview (shown at half that, sharp on dense screens)."""


def activation_text(value: float) -> str:
    """An activation for a label: ``3,701`` or ``0.482`` (three significant digits below 1000)."""
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"


def png_data_uri(picture: Image.Image | Any, longest: int = THUMBNAIL) -> str:
    """``picture`` (PIL, or an ``(h, w, 3)`` uint8 array) as a PNG ``data:`` URI, shrunk to ``longest`` if larger."""
    image = picture if isinstance(picture, Image.Image) else Image.fromarray(picture)
    if max(image.size) > longest:
        ratio = longest / max(image.size)
        shape = (max(1, round(image.width * ratio)), max(1, round(image.height * ratio)))
        image = image.resize(shape, Image.Resampling.BOX)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def topk_overview(result: TopKResult) -> str:
    """Per layer, the first :data:`OVERVIEW_CHANNELS` channels' strongest hits, reconstruction above patch."""
    side = THUMBNAIL // 2

    def picture(image: Image.Image | Any, what: str) -> str:
        return (
            f"<img src='{png_data_uri(image)}' alt='{text(what)}' width='{side}' height='{side}' "
            "style='image-rendering:pixelated;object-fit:contain;background:#808080;display:block'>"
        )

    rows = []
    for layer in result.layers:
        channels = list(result.hits[layer].items())
        cells = []
        for channel, hits in channels[:OVERVIEW_CHANNELS]:
            if hits and hits[0].value > 0:
                body = picture(result.reconstruction_rgb(layer, channel, 0), f"{layer} channel {channel}")
                body += picture(result.patch_pil(layer, channel, 0), f"patch from {hits[0].image}")
                caption = f"ch {channel} · {activation_text(hits[0].value)}"
            else:
                body, caption = f"<div style='width:{side}px'>never fired</div>", f"ch {channel}"
            cells.append(f"<td style='text-align:center;font-size:80%'>{body}{text(caption)}</td>")
        if len(channels) > OVERVIEW_CHANNELS:
            cells.append(f"<td style='font-size:80%'>and {len(channels) - OVERVIEW_CHANNELS} more</td>")
        rows.append(f"<tr><th style='text-align:left'>{text(layer)}</th>{''.join(cells)}</tr>")
    head = (
        f"<p><b>top {result.k}</b> over {result.readable} images of {text(result.folder)} · {text(result.model)} · "
        f"{text(result.method)}: each channel's strongest hit, its reconstruction above the image patch it came "
        "from. <code>.figure(layer, channel)</code> draws a channel's whole grid.</p>"
    )
    return f"<div>{head}<table>{''.join(rows)}</table></div>"


__all__ = ["OVERVIEW_CHANNELS", "THUMBNAIL", "activation_text", "png_data_uri", "topk_overview"]
