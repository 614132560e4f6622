"""Figures fit a notebook's width (about 1000 px at 100 dpi) with readable panels: wide grids wrap into bands."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import make_tiny_vgg, register_tiny_model
from PIL import Image

import deconvviz as dv
from deconvviz.viz.canvas import Figure
from deconvviz.viz.wrap import columns_that_fit, wrapped_axes

MODEL = "tiny-widths"
MOST = 10.5
"""Inches: 1050 px at 100 dpi."""


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    register_tiny_model(MODEL)
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(4)
    paths = []
    for i in range(3):
        path = folder / f"photo{i}.png"
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def _inches(fig: Any, ax: Any) -> tuple[float, float]:
    """The drawn size of an axes (after imshow's aspect), in inches."""
    box = ax.get_window_extent()
    return box.width / fig.dpi, box.height / fig.dpi


def _inside(fig: Any, artist: Any) -> bool:
    box, page = artist.get_window_extent(), fig.bbox
    return bool(box.x0 >= page.x0 - 1 and box.x1 <= page.x1 + 1 and box.y0 >= page.y0 - 1 and box.y1 <= page.y1 + 1)


def test_wrapped_axes_keep_the_grid_s_indexing() -> None:
    fig = Figure(figsize=(5, 5))
    axes = wrapped_axes(fig, 2, 7, 3, gap=0.2)
    assert axes.shape == (2, 7)
    assert len({id(ax) for ax in axes.flat}) == 14
    hidden = [ax for ax in fig.axes if not ax.get_visible()]
    assert len(hidden) == 3 * 2 * 3 + 2 * 3 - 14  # 3 bands of 2 rows x 3, 2 spacer rows of 3, less the 14 used
    # column 3 opens the second band, under the first: same horizontal place as column 0, lower
    fig.draw_without_rendering()
    assert axes[0, 3].get_position().x0 == pytest.approx(axes[0, 0].get_position().x0)
    assert axes[0, 3].get_position().y0 < axes[1, 0].get_position().y0
    assert columns_that_fit(1.3, 0.6, 28) == 7
    assert columns_that_fit(1.3, 0.6, 4) == 4
    assert columns_that_fit(20.0, 0.6, 4) == 1
    assert columns_that_fit(1.3, 0.6, 15) == 5  # three even bands, not 7, 7 and 1
    assert columns_that_fit(1.3, 0.6, 8) == 4


def test_sanity_with_many_steps_wraps_to_a_notebook_s_width(photos: list[Path]) -> None:
    result = dv.sanity(photos[0], MODEL, layer="conv3", device="cpu")
    steps = len(result.steps)
    # 25 steps, as a deep model has: the same columns repeated under new names
    many = 6 * steps + 1
    labels = tuple(f"step {i}" for i in range(many))
    deep = dataclasses.replace(
        result,
        steps=labels,
        randomised=tuple(() for _ in labels),
        units=tuple(result.units[0] for _ in labels),
        reconstructions={m: r[torch.arange(many) % steps] for m, r in result.reconstructions.items()},
        spearman={m: r[torch.arange(many) % steps] for m, r in result.spearman.items()},
        ssim={m: r[torch.arange(many) % steps] for m, r in result.ssim.items()},
        signed={m: r[torch.arange(many) % steps] for m, r in result.signed.items()},
    )
    fig, axes = deep.figure()
    assert fig.get_size_inches()[0] <= MOST
    assert axes.shape == (len(result.methods), many + 1)
    fig.draw_without_rendering()
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    for label in ("input", *labels):
        assert label in titles
    for ax in axes.flat:
        width, height = _inches(fig, ax)
        assert min(width, height) >= 1.0  # 100 px a panel
        assert _inside(fig, ax)
        if ax.get_title():
            assert _inside(fig, ax.title)
    for row, method in enumerate(result.methods):
        assert method in axes[row, 0].get_ylabel()
    assert axes[0, -1].get_xlabel().startswith("rank r=")


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        ({"columns": "a"}, "columns must be a whole number of at least 1"),
        ({"columns": 0}, "columns must be a whole number of at least 1"),
        ({"columns": 2.5}, "columns must be a whole number of at least 1"),
        ({"size": 0}, "size must be a number of inches above 0"),
        ({"size": float("nan")}, "size must be a number of inches above 0"),
    ],
)
def test_a_bad_layout_option_is_a_render_error(photos: list[Path], options: dict[str, Any], needle: str) -> None:
    result = dv.sanity(photos[0], MODEL, layer="conv3", method="deconvnet", device="cpu")
    with pytest.raises(dv.RenderError, match=needle):
        result.figure(**options)
    filters = dv.filters(MODEL)
    with pytest.raises(dv.RenderError, match=needle):
        filters.figure(**options)


def test_sanity_with_few_steps_stays_one_band(photos: list[Path]) -> None:
    result = dv.sanity(photos[0], MODEL, layer="conv3", device="cpu")
    fig, axes = result.figure()
    fig.draw_without_rendering()
    tops = {round(float(ax.get_position().y1), 6) for ax in axes[0]}
    assert len(tops) == 1
    fig, axes = result.figure(columns=2)  # asked for: two panels a band
    fig.draw_without_rendering()
    assert axes[0, 2].get_position().x0 == pytest.approx(axes[0, 0].get_position().x0)


def test_evolution_with_many_checkpoints_wraps(photos: list[Path], tmp_path: Path) -> None:
    paths = []
    for seed in range(14):
        paths.append(tmp_path / f"epoch{seed:02d}.pt")
        torch.save(make_tiny_vgg(seed).state_dict(), paths[-1])
    result = dv.evolution(paths, photos[0].parent, MODEL, layer="conv3", channels=3, device="cpu")
    fig, axes = result.figure()
    assert fig.get_size_inches()[0] <= MOST
    assert axes.shape == (3, 14)
    fig.draw_without_rendering()
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    for name in result.checkpoints:
        assert name in titles
    for ax in axes.flat:
        width, height = _inches(fig, ax)
        assert max(width, height) >= 0.9  # a cell keeps about its 1.1 inches
        assert _inside(fig, ax)
        if ax.get_title():
            assert _inside(fig, ax.title)


def test_invariance_and_occlusion_defaults_fit(photos: list[Path]) -> None:
    fig, axes = dv.invariance(photos[:2], MODEL, steps=3, device="cpu").figure()
    assert fig.get_size_inches()[0] <= MOST
    fig.draw_without_rendering()
    for ax in axes[:, 1:].flat:
        width, height = _inches(fig, ax)
        assert width >= 1.5
        assert height >= 1.0
    result = dv.occlusion(photos[0], MODEL, occluder=8, stride=4, device="cpu")
    fig, axes = result.figure()
    assert fig.get_size_inches()[0] <= MOST
    assert len(axes) == 5
    fig.draw_without_rendering()
    for ax in axes:
        assert min(_inches(fig, ax)) >= 1.5
        assert _inside(fig, ax.title)
    for text in axes[4].get_legend().get_texts():
        assert _inside(fig, text)


def test_correspondence_with_many_parts_fits(photos: list[Path], tmp_path: Path) -> None:
    import json

    names = [f"part {i}" for i in range(9)]
    boxes = {p.name: {n: [2 + 3 * i, 2, 6 + 3 * i, 8] for i, n in enumerate(names)} for p in photos}
    parts = tmp_path / "parts.json"
    parts.write_text(json.dumps({"parts": names, "images": boxes}))
    fig, _ = dv.correspondence(photos, parts, MODEL, layers="conv2,conv3", random=1, device="cpu").figure()
    assert fig.get_size_inches()[0] <= MOST


@pytest.mark.parametrize("width", [2.5, 4.4, 10.0])
def test_a_long_title_and_caption_fit_a_narrow_figure(width: float) -> None:
    fig = Figure(figsize=(width, 3), layout="constrained")
    fig.subplots(1, 2)
    words = "units chosen with their receptive field inside the picture; a: the seeded activation; " * 3
    title = fig.suptitle("my_models.py:build: features.7, strongest activation per checkpoint " * 2, fontsize=10)
    caption = fig.supxlabel(words, fontsize=7)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
    for text in (title, caption):
        box = text.get_window_extent(renderer)
        assert box.x0 >= 0
        assert box.x1 <= fig.bbox.width  # not cut at either edge
    assert caption.get_text().replace("\n", " ").split() == words.split()  # every word kept
