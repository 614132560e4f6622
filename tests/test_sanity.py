"""The sanity check by cascading randomisation: scores against plain loops, the caller's model, seeds, the CLI."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_ALIASES, ModelState, make_tiny_vgg, register_tiny_model
from PIL import Image
from typer.testing import CliRunner

import deconvviz as dv
from deconvviz.analysis.sanity import (
    compare,
    mean_pairwise_correlation,
    randomise,
    signed_spearman,
    spearman,
    ssim,
)
from deconvviz.cli import app
from deconvviz.io.atomic import MARKER

MODEL = "tiny-sanity"


def _ranks_by_loop(values: list[float]) -> list[float]:
    ranks = []
    for v in values:
        below = sum(1 for w in values if w < v)
        equal = sum(1 for w in values if w == v)
        ranks.append(below + (equal + 1) / 2)
    return ranks


def _pearson(x: list[float], y: list[float]) -> float:
    mx, my = sum(x) / len(x), sum(y) / len(y)
    num = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True))
    den = math.sqrt(sum((a - mx) ** 2 for a in x) * sum((b - my) ** 2 for b in y))
    return num / den


def test_signs_kept_tell_an_outline_apart_from_its_contents() -> None:
    # One smooth outline (bright in the middle, dim at the edges) filled with independent random signs: the
    # magnitudes agree exactly, the pictures do not.
    rows = torch.linspace(-1, 1, 40, dtype=torch.float64)
    outline = torch.exp(-(rows[:, None] ** 2 + rows[None, :] ** 2) * 3).expand(3, 40, 40)
    g = torch.Generator().manual_seed(0)
    one = outline * torch.randn(3, 40, 40, generator=g, dtype=torch.float64).sign()
    two = outline * torch.randn(3, 40, 40, generator=g, dtype=torch.float64).sign()
    assert compare(one, two)[0] > 0.9
    assert abs(signed_spearman(one, two)) < 0.1
    assert signed_spearman(one, one) == pytest.approx(1.0, abs=1e-12)
    assert signed_spearman(one, -one) == pytest.approx(-1.0, abs=1e-12)


def test_spearman_with_ties_equals_a_loop_and_scipy() -> None:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 5, 60).astype(float)  # many ties, as zeros outside a receptive field give
    b = a + rng.integers(0, 3, 60)
    expected = _pearson(_ranks_by_loop(list(a)), _ranks_by_loop(list(b)))
    assert spearman(torch.tensor(a), torch.tensor(b)) == pytest.approx(expected, abs=1e-12)
    stats = pytest.importorskip("scipy.stats")
    assert spearman(torch.tensor(a), torch.tensor(b)) == pytest.approx(stats.spearmanr(a, b)[0], abs=1e-12)
    assert math.isnan(spearman(torch.zeros(5), torch.arange(5.0)))


def _ssim_by_loop(x: np.ndarray, y: np.ndarray, size: int = 11, sigma: float = 1.5) -> float:
    offsets = np.arange(size) - (size - 1) / 2
    g = np.exp(-(offsets**2) / (2 * sigma**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = 0.01**2, 0.03**2
    values = []
    for i in range(x.shape[0] - size + 1):
        for j in range(x.shape[1] - size + 1):
            px, py = x[i : i + size, j : j + size], y[i : i + size, j : j + size]
            mx, my = (w * px).sum(), (w * py).sum()
            vx, vy = (w * (px - mx) ** 2).sum(), (w * (py - my) ** 2).sum()
            cxy = (w * (px - mx) * (py - my)).sum()
            values.append(((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    return float(np.mean(values))


def test_ssim_equals_a_window_by_window_loop() -> None:
    rng = np.random.default_rng(1)
    x = rng.random((20, 17))
    y = np.clip(x + 0.2 * rng.standard_normal((20, 17)), 0, 1)
    # float64 both ways; E[x^2] - E[x]^2 against the centred sum differs by rounding only (~1e-15).
    assert ssim(torch.tensor(x), torch.tensor(y)) == pytest.approx(_ssim_by_loop(x, y), abs=1e-10)
    assert ssim(torch.tensor(x), torch.tensor(x)) == pytest.approx(1.0, abs=1e-12)


@pytest.fixture(scope="module")
def tiny() -> dv.LoadedModel:
    spec = dv.ModelSpec(
        name="tiny-sanity-64",
        builder=lambda: make_tiny_vgg(dtype=torch.float64),
        preprocessing=dv.Preprocessing(size=32),
        aliases=TINY_ALIASES,
    )
    return dv.load_model(spec)


@pytest.fixture(scope="module")
def picture() -> torch.Tensor:
    return torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(4), dtype=torch.float64)


def test_scores_equal_loops_and_the_caller_model_is_untouched(tiny, picture) -> None:
    state = ModelState.of(tiny.module)
    result = dv.sanity(picture, tiny, layer="conv3", seed=3, compare_channels=4)
    state.assert_same(tiny.module)
    assert result.methods == ("deconvnet", "guided", "gradient")
    # Top down: conv3's convolution first, then conv2's and conv1's.
    assert result.randomised[1:] == (
        ("features.5",),
        ("features.5", "features.2"),
        ("features.5", "features.2", "features.0"),
    )
    # The scores compare the part of the picture the projected units reach: their receptive fields together.
    boxes = [
        dv.receptive_field(dv.DeconvNet(tiny), "conv3", method=m).box(row, col, (32, 32))
        for m in result.methods
        for row, col in result.units
    ]
    reach = (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes))
    assert reach != (0, 0, 32, 32)  # conv3's fields are smaller than the picture: there is something to cut
    assert result.box == reach
    top, left, bottom, right = reach
    for method in result.methods:
        stack = result.reconstructions[method]
        assert stack.shape[0] == len(result.steps) == 4
        outside = stack.clone()
        outside[..., top:bottom, left:right] = 0
        assert torch.count_nonzero(outside) == 0  # nothing is lost by the cut
        for i in range(len(result.steps)):
            a = stack[0][:, top:bottom, left:right].abs().sum(0).numpy()
            b = stack[i][:, top:bottom, left:right].abs().sum(0).numpy()
            if b.max() == 0:
                assert math.isnan(float(result.spearman[method][i]))
                continue
            rho = _pearson(_ranks_by_loop(list(a.ravel())), _ranks_by_loop(list(b.ravel())))
            assert float(result.spearman[method][i]) == pytest.approx(rho, abs=1e-10)
            s = _ssim_by_loop(a / a.max(), b / b.max())
            assert float(result.ssim[method][i]) == pytest.approx(s, abs=1e-10)
            # Signs kept: the values summed over colour, not their magnitudes.
            sa = stack[0][:, top:bottom, left:right].sum(0).numpy()
            sb = stack[i][:, top:bottom, left:right].sum(0).numpy()
            signed = _pearson(_ranks_by_loop(list(sa.ravel())), _ranks_by_loop(list(sb.ravel())))
            assert float(result.signed[method][i]) == pytest.approx(signed, abs=1e-10)
        assert float(result.spearman[method][0]) == pytest.approx(1.0, abs=1e-12)
        net = dv.DeconvNet(tiny)
        maps = []
        for c in result.channels_compared:
            maps.append(net.project(picture, "conv3", c, mode="map", method=method).image[0])
        expected = mean_pairwise_correlation(torch.stack(maps))
        assert result.channel_correlation[method] == pytest.approx(expected, abs=1e-10)


def test_first_step_equals_projecting_a_hand_randomised_copy(tiny, picture) -> None:
    result = dv.sanity(picture, tiny, layer="conv3", method=["deconvnet"], seed=11)
    twin = copy.deepcopy(tiny.module)
    randomise(dict(twin.named_modules())["features.5"], torch.Generator().manual_seed(11))
    unit = result.units[1]
    p = dv.DeconvNet(twin).project(picture, "features.6", result.channel, position=unit)
    mine, theirs = result.reconstructions["deconvnet"][1], p.image[0]
    # Seeds differ only in value (the trained one against the randomised one); the deconvnet is positively
    # homogeneous in its seed, so the pictures agree once each is divided by its largest magnitude.
    torch.testing.assert_close(mine / mine.abs().max(), theirs / theirs.abs().max(), rtol=0, atol=1e-10)


def test_independent_steps_randomise_one_layer_each_as_a_hand_randomised_copy(tiny, picture) -> None:
    state = ModelState.of(tiny.module)
    result = dv.sanity(picture, tiny, layer="conv3", method=["deconvnet"], seed=11, mode="independent")
    state.assert_same(tiny.module)
    order = ["features.5", "features.2", "features.0"]
    assert result.mode == "independent"
    assert result.randomised[1:] == tuple((name,) for name in order)
    generator = torch.Generator().manual_seed(11)  # the analysis draws the layers' noise in this order
    drawn = copy.deepcopy(tiny.module)
    for i, name in enumerate(order, start=1):
        randomise(dict(drawn.named_modules())[name], generator)
        twin = copy.deepcopy(tiny.module)  # every layer trained but this one
        dict(twin.named_modules())[name].load_state_dict(dict(drawn.named_modules())[name].state_dict())
        p = dv.DeconvNet(twin).project(picture, "features.6", result.channel, position=result.units[i])
        mine, theirs = result.reconstructions["deconvnet"][i], p.image[0]
        assert theirs.abs().max() > 0  # something to compare at every step
        # As above: the seeds differ only in value, and the deconvnet is positively homogeneous in its seed.
        torch.testing.assert_close(mine / mine.abs().max(), theirs / theirs.abs().max(), rtol=0, atol=1e-10)
    cascading = dv.sanity(picture, tiny, layer="conv3", method=["deconvnet"], seed=11)
    assert torch.equal(cascading.reconstructions["deconvnet"][1], result.reconstructions["deconvnet"][1])
    assert result._manifest()["mode"] == "independent"
    assert "alone randomised changes it most" in result.summary()
    assert "independent randomisation" in result.figure()[0]._suptitle.get_text()
    with pytest.raises(dv.AnalysisError, match="mode must be"):
        dv.sanity(picture, tiny, layer="conv3", mode="random")


def test_randomisation_is_reproducible_with_a_seed(tiny, picture) -> None:
    one = dv.sanity(picture, tiny, layer="conv2", method="guided", seed=5)
    two = dv.sanity(picture, tiny, layer="conv2", method="guided", seed=5)
    other = dv.sanity(picture, tiny, layer="conv2", method="guided", seed=6)
    assert torch.equal(one.reconstructions["guided"], two.reconstructions["guided"])
    assert not torch.equal(one.reconstructions["guided"][1:], other.reconstructions["guided"][1:])
    assert torch.equal(one.reconstructions["guided"][0], other.reconstructions["guided"][0])  # trained: no noise


def test_compare_blank_is_nan() -> None:
    rho, s = compare(torch.ones(3, 4, 4), torch.zeros(3, 4, 4))
    assert math.isnan(rho)
    assert math.isnan(s)


def test_figure_manifest_and_bad_options(tiny, picture, tmp_path: Path) -> None:
    result = dv.sanity(picture, tiny, layer="conv3")
    _fig, axes = result.figure()
    assert axes.shape == (3, 1 + 4)
    folder = result.save(tmp_path / "s")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["kind"] == "sanity"
    assert [s["label"] for s in manifest["steps"]] == list(result.steps)
    for step, i in zip(manifest["steps"], range(len(result.steps)), strict=True):
        for method in result.methods:
            value = float(result.signed[method][i])
            assert step[method]["signed"] == (None if math.isnan(value) else value)
    assert "signed" in manifest["scores"]
    assert "signs kept" in result.summary()
    assert "signed" in axes[0, 1].get_xlabel()
    with pytest.raises(dv.MethodError):
        dv.sanity(picture, tiny, method=["nope"])
    with pytest.raises(dv.AnalysisError, match="out of range"):
        dv.sanity(picture, tiny, layer="conv3", channel=99)


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    register_tiny_model(MODEL)
    path = tmp_path_factory.mktemp("photo") / "p.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (36, 36, 3), dtype=np.uint8)).save(path)
    return path


def test_cli_writes_and_refuses_in_one_line(photo: Path, tmp_path: Path) -> None:
    out = tmp_path / "s"
    result = CliRunner().invoke(app, ["sanity", str(photo), "--model", MODEL, "--layer", "conv3", "-o", str(out)])
    assert result.exit_code == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "figure.png", "manifest.json"]
    assert "deconvnet: all 3 layers randomised" in result.stdout
    one = tmp_path / "one"
    args = ["sanity", str(photo), "--model", MODEL, "--layer", "conv3", "--independent", "-o", str(one)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.stderr
    assert "alone randomised changes it most" in result.stdout
    manifest = json.loads((one / "manifest.json").read_text())
    assert manifest["mode"] == manifest["arguments"]["mode"] == "independent"
    two = tmp_path / "two"  # several reverse passes: with commas as every other list option, or repeated
    args = ["sanity", str(photo), "--model", MODEL, "-l", "conv3", "--method", "guided, gradient", "-o", str(two)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.stderr
    assert json.loads((two / "manifest.json").read_text())["arguments"]["methods"] == ["guided", "gradient"]
    for args, message in ((["--method", "nope"], "nope"), (["--channel", "99"], "out of range")):
        bad = tmp_path / "bad"
        result = CliRunner().invoke(app, ["sanity", str(photo), "--model", MODEL, "-l", "conv3", "-o", str(bad), *args])
        assert result.exit_code == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1
        assert message in lines[0]
        assert not bad.exists()


@pytest.mark.slow
def test_vgg16_conv5_3_cascade_over_all_thirteen_convolutions() -> None:
    root = Path(__file__).resolve().parents[1]
    model = dv.load_model("vgg16")
    state = ModelState.of(model.module)
    result = dv.sanity(root / "examples" / "cat.jpg", model, layer="conv5_3", method=["deconvnet", "gradient"])
    state.assert_same(model.module)
    assert result.steps[:3] == ("trained", "conv5_3", "conv5_2")
    assert result.steps[-1] == "conv1_1"
    assert len(result.steps) == 14
    for method in result.methods:
        assert float(result.reconstructions[method][0].abs().max()) > 0
        assert float(result.spearman[method][0]) == pytest.approx(1.0, abs=1e-9)
    # Randomising conv5_3 alone already changes the exact gradient's picture.
    assert float(result.ssim["gradient"][1]) < 0.99


def test_the_earlier_methods_spelling_still_works_and_warns_once(picture, tiny) -> None:
    import deconvviz.errors

    deconvviz.errors._WARNED.discard("sanity(methods=...)")
    with pytest.deprecated_call(match=r"sanity\(methods=...\) is deprecated"):
        old = dv.sanity(picture, tiny, layer="conv2", methods="guided", seed=5)
    new = dv.sanity(picture, tiny, layer="conv2", method="guided", seed=5)
    assert old.methods == new.methods == ("guided",)
    assert torch.equal(old.spearman["guided"], new.spearman["guided"])


def test_the_summary_says_when_its_step_projected_another_unit(tiny, picture) -> None:
    import dataclasses

    result = dv.sanity(picture, tiny, layer="conv3", method=["deconvnet"], seed=11)
    last = len(result.steps) - 1
    other = (0, 0) if result.units[0] != (0, 0) else (1, 1)
    moved = dataclasses.replace(result, units=(*result.units[:last], other))
    assert f"(of unit {other}: randomisation silenced the trained one)" in moved.summary()
    kept = dataclasses.replace(result, units=(result.units[0],) * len(result.steps))
    assert "silenced" not in kept.summary()
