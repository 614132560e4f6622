"""What the paper reads off a first layer (Fig. 6): dead and dominating filters, peak frequencies, aliasing."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import register_tiny_model
from PIL import Image
from typer.testing import CliRunner

import deconvviz as dv
from deconvviz.cli import app

MODEL = "tiny-filters"


def filters(weight: torch.Tensor, stride: int = 1, dilation: int = 1) -> dv.Filters:
    return dv.Filters("conv", "conv", weight.float(), stride=(stride, stride), dilation=(dilation, dilation))


def test_a_single_tap_spreads_its_power_evenly_so_the_stride_aliases_the_share_outside_its_band() -> None:
    found = filters(torch.ones(1, 3, 1, 1), stride=2)
    # A 1x1 filter has a flat spectrum: on the 64 x 64 grid, |f| <= 1/4 holds at 33 of 64 frequencies per axis.
    assert found.aliased().item() == pytest.approx(1 - (33 / 64) ** 2, abs=1e-12)
    assert found.aliasing() == pytest.approx(1 - (33 / 64) ** 2, abs=1e-12)
    assert filters(torch.ones(1, 3, 1, 1), stride=4).aliasing() == pytest.approx(1 - (17 / 64) ** 2, abs=1e-12)


def test_stride_one_aliases_nothing() -> None:
    weight = torch.randn(5, 3, 3, 3, generator=torch.Generator().manual_seed(0))
    found = filters(weight)
    assert found.aliased().tolist() == [0.0] * 5
    assert "nothing aliases" in found.summary()


def test_peak_frequencies_of_known_patterns() -> None:
    x = torch.arange(8, dtype=torch.float64)
    weight = torch.zeros(4, 1, 8, 8, dtype=torch.float64)
    weight[0] = 1.0  # a flat patch: a blob, peak at 0
    weight[1] = torch.cos(2 * math.pi * 0.25 * x)[None, :]  # four pixels a period, along the rows
    weight[2] = torch.cos(math.pi * x)[None, :] * torch.cos(math.pi * x)[:, None]  # a checkerboard
    weight[3] = torch.cos(2 * math.pi * 0.125 * x)[:, None]  # eight pixels a period, down the columns
    peaks = filters(weight).frequencies()
    assert peaks[0].item() == 0.0
    assert peaks[1].item() == pytest.approx(0.25, abs=1 / 64)
    assert peaks[2].item() == pytest.approx(math.sqrt(0.5), abs=1e-12)
    assert peaks[3].item() == pytest.approx(0.125, abs=1 / 64)
    summary = filters(weight).summary()
    assert "low 1, mid 1, high 2" in summary


def test_dilation_spreads_the_taps() -> None:
    weight = torch.tensor([[[[1.0, -1.0]]]])  # a horizontal difference: peak at 1/2, with dilation 2 at 1/4
    assert filters(weight).frequencies().item() == pytest.approx(0.5)
    assert filters(weight, dilation=2).frequencies().item() == pytest.approx(0.25)


def test_dead_and_dominating_filters_and_how_they_are_drawn() -> None:
    weight = torch.randn(6, 3, 3, 3, generator=torch.Generator().manual_seed(1))
    weight /= weight.flatten(1).norm(dim=1)[:, None, None, None]  # unit norms
    weight[1] = 0.0
    weight[3] *= 1e-4  # rounding noise, scaled on its own, would look like a filter
    weight[4] *= 30.0
    found = filters(weight)
    assert found.dead() == [1, 3]
    assert found.dominant() == [4]
    assert torch.isnan(found.frequencies()[[1, 3]]).all()
    assert "6 filters: 2 dead, 1 dominating" in found.summary()
    assert "peak frequency of the others" in found.summary()
    grid = found.grid(columns=6, cell=6)  # 3 x 3 taps drawn 2 x 2 pixels each, tiles 2 pixels apart
    side = (grid.shape[1] - 5 * 2) // 6
    assert side == 6

    def tile(i: int) -> np.ndarray:
        return grid[:side, (side + 2) * i : (side + 2) * i + side]

    assert np.unique(tile(1).reshape(-1, 3), axis=0).tolist() == [[128, 128, 128]]  # flat mid-grey
    assert np.array_equal(tile(3), tile(1))
    assert np.unique(tile(0).reshape(-1, 3), axis=0).shape[0] > 1


def test_the_command_prints_the_diagnosis(tmp_path) -> None:
    register_tiny_model(MODEL)
    result = CliRunner().invoke(app, ["filters", "-m", MODEL, "-o", str(tmp_path / "f.png")])
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"{MODEL} conv1 (features.0): 4 filters of 3x3x3")
    assert lines[1].startswith("4 filters: 0 dead, 0 dominating")
    assert lines[1].endswith("stride 1 keeps every position, so nothing aliases")


def test_the_command_replaces_only_its_own_figure(tmp_path) -> None:
    register_tiny_model(MODEL)
    figure = tmp_path / "f.png"
    for _ in range(2):  # a second run replaces the first run's figure
        result = CliRunner().invoke(app, ["filters", "-m", MODEL, "-o", str(figure)])
        assert result.exit_code == 0, result.stderr
    photo = tmp_path / "photo.png"
    Image.new("RGB", (8, 8), (10, 200, 30)).save(photo)
    notes = tmp_path / "notes.md"
    notes.write_text("# notes")
    kept = {path: path.read_bytes() for path in (photo, notes)}
    for out, said in (
        (photo, "exists and is not a figure deconvviz wrote; choose another --out, or remove it first"),
        (notes, "--out writes a PNG; give a file name ending in .png"),
        (tmp_path / "f.jpg", "--out writes a PNG; give a file name ending in .png"),
        (tmp_path, "is a folder; give the PNG's file name"),
    ):
        result = CliRunner().invoke(app, ["filters", "-m", MODEL, "-o", str(out)])
        assert result.exit_code == 2
        assert said in result.stderr
        assert result.stderr.count("\n") == 1
    assert {path: path.read_bytes() for path in kept} == kept
    assert not (tmp_path / "f.jpg").exists()
    for layers in (["-l", "conv1", "-l", "conv2"], ["--layers", "conv1,conv2"]):
        result = CliRunner().invoke(app, ["filters", "-m", MODEL, *layers, "-o", str(tmp_path / "g.png")])
        assert result.exit_code == 2
        assert result.stderr == "error: filters draws one layer, got conv1, conv2; run it once per layer\n"
