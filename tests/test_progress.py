"""Every long analysis reports progress the same way: ``progress(done, total, what)`` with a total known up front."""

from __future__ import annotations

import itertools
import json
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import make_tiny_vgg, register_tiny_model
from PIL import Image
from typer.testing import CliRunner

import deconvviz as dv
from deconvviz.analysis.base import AnalysisError
from deconvviz.analysis.progress import reporting
from deconvviz.cli import app

MODEL = "tiny-progress"
Calls = list[tuple[int, int, str]]


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    register_tiny_model(MODEL)
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(3)
    paths = []
    for i in range(3):
        path = folder / f"photo{i}.png"
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def _check(calls: Calls, total: int) -> None:
    """Called first with 0, always with the same total, ``done`` rising by steps to that total."""
    assert calls, "progress was never called"
    assert {t for _, t, _ in calls} == {total}
    done = [d for d, _, _ in calls]
    assert done[0] == 0
    assert done[-1] == total
    assert all(a < b for a, b in itertools.pairwise(done))
    assert all(isinstance(what, str) and what for _, _, what in calls)


def _recorder() -> tuple[Calls, Callable[[int, int, str], None]]:
    calls: Calls = []
    return calls, lambda done, total, what: calls.append((done, total, what))


def test_sanity_counts_the_comparison_the_trained_model_and_each_layer(photos: list[Path]) -> None:
    calls, progress = _recorder()
    result = dv.sanity(photos[0], MODEL, layer="conv3", method=["deconvnet"], device="cpu", progress=progress)
    _check(calls, len(result.steps) + 1)  # one step per column, and the channels' comparison
    assert calls[-1][2] == f"randomised {result.steps[-1]}"


def test_invariance_counts_every_transformed_picture(photos: list[Path]) -> None:
    calls, progress = _recorder()
    dv.invariance(photos[:2], MODEL, steps=3, batch_size=4, device="cpu", progress=progress)
    # per picture: the original and 3 transformations of 3 steps, the scale's with 1 added (0.5, 1, 1.1, 1.7)
    _check(calls, 2 * (1 + 3 + 4 + 3))
    assert len(calls) == 1 + 6  # the start, then 22 runs in batches of 4


def test_evolution_counts_checkpoints(photos: list[Path], tmp_path: Path) -> None:
    paths = []
    for seed in (1, 2, 3):
        paths.append(tmp_path / f"epoch{seed}.pt")
        torch.save(make_tiny_vgg(seed).state_dict(), paths[-1])
    calls, progress = _recorder()
    dv.evolution(paths, photos[0].parent, MODEL, layer="conv3", channels=2, device="cpu", progress=progress)
    _check(calls, 3)
    assert sorted(what for _, _, what in calls[1:]) == ["epoch1", "epoch2", "epoch3"]


def test_occlusion_counts_positions(photos: list[Path]) -> None:
    calls, progress = _recorder()
    result = dv.occlusion(photos[0], MODEL, occluder=8, stride=8, batch_size=5, device="cpu", progress=progress)
    _check(calls, int(result.activation.numel()))  # one per occluder position


def test_correspondence_counts_images(photos: list[Path], tmp_path: Path) -> None:
    parts = tmp_path / "parts.json"
    boxes = {p.name: {"eye": [4, 4, 12, 12], "nose": [20, 24, 30, 32]} for p in photos}
    parts.write_text(json.dumps({"parts": ["eye", "nose"], "images": boxes}))
    calls, progress = _recorder()
    dv.correspondence(photos, parts, MODEL, random=1, device="cpu", progress=progress)
    _check(calls, 3)
    assert [what for _, _, what in calls[1:]] == [p.name for p in photos]


def test_a_two_argument_callback_still_works_and_warns(photos: list[Path]) -> None:
    seen: list[tuple[int, int]] = []
    with pytest.warns(DeprecationWarning, match="three"):
        dv.occlusion(photos[0], MODEL, occluder=8, stride=16, device="cpu", progress=lambda d, t: seen.append((d, t)))
    assert seen[0][0] == 0
    assert seen[-1][0] == seen[-1][1]


def test_bar_uses_tqdm_and_closes_it(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[Any] = []

    class FakeBar:
        def __init__(self, *, total: int, desc: str, leave: bool) -> None:
            self.total, self.desc, self.n, self.closed, self.shown = total, desc, 0, False, []
            made.append(self)

        def set_postfix_str(self, text: str, refresh: bool) -> None:
            self.what = text

        def refresh(self) -> None:
            self.shown.append(self.n)

        def close(self) -> None:
            self.closed = True

    fake = types.ModuleType("tqdm.auto")
    fake.tqdm = FakeBar  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tqdm.auto", fake)
    with reporting("bar", "sanity") as report:
        for done in range(4):
            report(done, 3, "step")
    assert len(made) == 1
    assert (made[0].total, made[0].desc, made[0].shown, made[0].closed) == (3, "sanity", [0, 1, 2, 3], True)


def test_bar_without_tqdm_and_bad_options_fail_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)  # import fails
    with pytest.raises(AnalysisError, match="pip install tqdm"), reporting("bar", "x"):
        pass
    with pytest.raises(AnalysisError, match="'bar' or None"), reporting("bars", "x"):  # type: ignore[arg-type]
        pass
    with pytest.raises(AnalysisError, match="'bar' or None"), reporting(3, "x"):  # type: ignore[arg-type]
        pass


def test_cli_sanity_bar_has_a_known_total(photos: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The bar the command draws (on a terminal, forced) counts to N/N, never N/?."""
    from deconvviz.cli import options

    made: list[Any] = []
    drawn = options.progress_bars

    def bars(transient: bool, enabled: bool = True) -> Any:
        made.append(drawn(transient=transient, enabled=enabled))
        return made[-1]

    monkeypatch.setattr(options, "progress_bars", bars)
    monkeypatch.setenv("FORCE_COLOR", "1")  # rich draws as on a terminal
    result = CliRunner().invoke(
        app, ["sanity", str(photos[0]), "--model", MODEL, "--layer", "conv3", "--out", str(tmp_path / "s")]
    )
    assert result.exit_code == 0, result.output
    (task,) = made[0].tasks
    assert task.completed == task.total == 5  # the comparison, trained, three randomised layers
    assert "5/5" in result.stderr
    assert "/?" not in result.stderr


def test_plain_progress_lines_where_no_bar_is_drawn(capsys) -> None:
    from deconvviz.cli.options import PlainProgress

    now = [0.0]
    plain = PlainProgress({"scan": "scanning pictures"}, every=30.0, clock=lambda: now[0])
    for done, at in ((0, 0.0), (100, 10.0), (1200, 31.0), (1300, 40.0), (50_000, 41.0), (50_000, 42.0)):
        now[0] = at
        plain("scan", done, 50_000)
    plain("project", 0, 0)  # a stage of unknown size: no share
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        "scanning pictures: 0 of 50,000 (0%)",  # the start
        "scanning pictures: 1,200 of 50,000 (2%)",  # 30 s later, not before
        "scanning pictures: 50,000 of 50,000 (100%)",  # the end, once
        "project: 0 of 0",
    ]
