"""Results shown as HTML: a notebook's inline overview of a top-k search, activations as labels, report pages."""

from __future__ import annotations

import base64
import io
from typing import TYPE_CHECKING, Any

from PIL import Image

from deconvviz.io.web import text, url

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


# ------------------------------------------------------------------------------------------- report pages

REPORT_STYLE = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#1d1d1f;background:#f5f5f7}
header{background:#1d1d1f;color:#f5f5f7;padding:14px 24px}header a{color:#9cf}
main{padding:16px 24px}h1{font-size:20px;margin:0}h2{font-size:16px;margin:24px 0 8px}
table{border-collapse:collapse;background:#fff}td,th{padding:4px 10px;border-bottom:1px solid #ddd;text-align:left}
.cards{display:flex;flex-wrap:wrap;gap:14px}
.card{background:#fff;border-radius:8px;padding:10px;box-shadow:0 1px 3px rgba(0,0,0,.12)}
.card h3{font-size:13px;margin:0 0 6px}.pair{display:flex;gap:10px}
.grid{display:grid;gap:3px}.cell{width:var(--cell);text-align:center;font-size:10px;color:#555}
.cell img{width:var(--cell);height:var(--cell);object-fit:contain;background:#808080;display:block}
.cell a{color:#555;text-decoration:none;display:block;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.figs img{max-width:100%;background:#fff;margin:6px 0;border-radius:4px}.muted{color:#777}
ul.thumbs{list-style:none;padding:0;display:flex;flex-wrap:wrap;gap:10px}ul.thumbs img{height:96px;display:block}
.hit img{image-rendering:pixelated}.edge{color:#b36b00}
.strip{white-space:nowrap}.strip img{width:56px;height:56px;object-fit:contain;background:#808080;margin-right:3px}
.hits{display:grid;grid-template-columns:repeat(auto-fill,minmax(420px,1fr));gap:14px}
.hit{background:#fff;border-radius:8px;padding:10px;display:flex;flex-wrap:wrap;gap:8px;align-items:flex-start}
.hit img{width:200px;height:200px;object-fit:contain;background:#808080;display:block}
.hit p{margin:4px 0;flex-basis:100%}
.filters img{image-rendering:pixelated;background:#fff;width:min(100%,360px)}
"""


def report_page(title: str, body: str, root: str) -> str:
    """A whole page; ``root`` leads from it to the report's folder (``""``: the index, with no link to itself)."""
    back = f"<a href='{url(root + 'index.html')}'>report index</a>" if root else ""
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<meta name='viewport' content='width=device-width, initial-scale=1'><title>{text(title)}</title>"
        f"<style>{REPORT_STYLE}</style></head><body><header><h1>{text(title)}</h1>"
        f"{back}</header><main>{body}</main></body></html>\n"
    )
