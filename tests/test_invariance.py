"""Invariance sweeps (Fig. 5) on a tiny net: transformations, distances and probabilities against plain loops."""

from __future__ import annotations

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
from deconvviz.analysis.base import ResultFolderError
from deconvviz.analysis.invariance import feature_distance, sweep, transform
from deconvviz.cli import app
from deconvviz.io.atomic import MARKER

LABELS = [f"class {i}" for i in range(5)]


@pytest.fixture(scope="module")
def tiny64() -> dv.LoadedModel:
    spec = dv.ModelSpec(
        name="tiny64",
        builder=lambda: make_tiny_vgg(dtype=torch.float64),
        preprocessing=dv.Preprocessing(size=32),
        aliases=TINY_ALIASES,
        labels=LABELS,
    )
    return dv.load_model(spec)


@pytest.fixture(scope="module")
def pictures() -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    return [torch.randn(1, 3, 32, 32, generator=generator, dtype=torch.float64) for _ in range(2)]


# ------------------------------------------------------------------------------------------ transformations


def test_integer_translation_shifts_rows_and_fills_with_zero() -> None:
    x = torch.randn(1, 3, 12, 10, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    moved = transform(x, "translate", [3, -2, 0])
    expected_down = torch.zeros_like(x)
    expected_down[..., 3:, :] = x[..., :-3, :]
    expected_up = torch.zeros_like(x)
    expected_up[..., :-2, :] = x[..., 2:, :]
    # Sampling positions are computed in float64 and land on pixel centres up to ~1e-15, so bilinear weights
    # differ from 0/1 by that much: a tolerance of 1e-12 (times the values, which are ~1) covers it.
    torch.testing.assert_close(moved[0:1], expected_down, rtol=0, atol=1e-12)
    torch.testing.assert_close(moved[1:2], expected_up, rtol=0, atol=1e-12)
    torch.testing.assert_close(moved[2:3], x, rtol=0, atol=1e-12)


def test_quarter_turn_is_rot90_and_unit_scale_is_identity() -> None:
    x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    turned = transform(x, "rotate", [90.0, 0.0])
    # Counter-clockwise on screen; float64 sin/cos of 90 degrees are 1e-16 off exact, hence the tolerance.
    torch.testing.assert_close(turned[0:1], torch.rot90(x, 1, dims=(2, 3)), rtol=0, atol=1e-12)
    torch.testing.assert_close(turned[1:2], x, rtol=0, atol=1e-12)
    torch.testing.assert_close(transform(x, "scale", [1.0]), x, rtol=0, atol=1e-12)


def test_scaling_keeps_the_centre_and_fills_with_zero() -> None:
    x = torch.ones(1, 3, 16, 16, dtype=torch.float64)
    small = transform(x, "scale", [0.5])[0, 0]
    assert float(small[0, 0]) == 0.0
    assert float(small[-1, -1]) == 0.0
    assert torch.all(small[6:10, 6:10] == 1.0)  # the centre stays where it was
    assert torch.equal(small, small.flip(0))
    assert torch.equal(small, small.flip(1))


def test_sweep_includes_both_ends_and_refuses_empty_ranges() -> None:
    assert sweep(-60, 60, 5) == (-60.0, -30.0, 0.0, 30.0, 60.0)
    # the original is always among the values where the range holds it, so every curve passes through 0
    assert sweep(0.5, 1.7, 5, "scale") == (0.5, 0.8, 1.0, 1.1, 1.4, 1.7)
    assert sweep(-60, 60, 4, "translate") == (-60.0, -20.0, 0.0, 20.0, 60.0)
    assert sweep(10, 60, 3, "translate") == (10.0, 35.0, 60.0)  # no original inside: nothing added
    assert sweep(0, 360, 4, "rotate") == (0.0, 120.0, 240.0, 360.0)
    with pytest.raises(dv.AnalysisError, match="empty"):
        sweep(5, 5, 3, "translate")
    with pytest.raises(dv.AnalysisError, match="empty"):
        sweep(60, -60, 3, "translate")
    with pytest.raises(dv.AnalysisError, match="at least 2"):
        sweep(0, 1, 1)
    with pytest.raises(dv.AnalysisError, match="positive"):
        sweep(0, 2, 3, "scale")


def test_feature_distance_normalisations_by_hand() -> None:
    ref = torch.tensor([3.0, 4.0], dtype=torch.float64)  # length 5
    rows = torch.tensor([[6.0, 8.0], [0.0, 5.0]], dtype=torch.float64)
    # unit: (0.6, 0.8) vs (0.6, 0.8) -> 0; vs (0, 1) -> sqrt(0.36 + 0.04)
    unit = feature_distance(ref, rows, "unit")
    assert unit.tolist() == pytest.approx([0.0, math.sqrt(0.4)], abs=1e-15)
    assert feature_distance(ref, rows, "none").tolist() == pytest.approx([5.0, math.sqrt(9 + 1)], abs=1e-15)
    assert feature_distance(ref, rows, "relative").tolist() == pytest.approx([1.0, math.sqrt(10) / 5], abs=1e-15)


# -------------------------------------------------------------------------------------------- brute force


def _brute_force(model: torch.nn.Module, x: torch.Tensor, kind: str, values: tuple[float, ...], nodes: list[str]):
    """Each transformed image alone through the plain model, features caught by forward hooks."""
    modules = dict(model.named_modules())
    distances = {node: [] for node in nodes}
    logits = []

    def features(image: torch.Tensor) -> tuple[dict[str, np.ndarray], np.ndarray]:
        caught: dict[str, np.ndarray] = {}
        handles = [
            modules[node].register_forward_hook(
                lambda _m, _i, out, node=node: caught.__setitem__(node, out.detach().clone().numpy().ravel())
            )
            for node in nodes
        ]
        try:
            with torch.no_grad():
                out = model(image).numpy()[0]
        finally:
            for handle in handles:
                handle.remove()
        return caught, out

    reference, _ = features(x)
    for value in values:
        caught, out = features(transform(x, kind, [value]))
        for node in nodes:
            a, b = reference[node], caught[node]
            a_unit = a / math.sqrt(float(np.sum(a * a)))
            b_unit = b / math.sqrt(float(np.sum(b * b)))
            distances[node].append(math.sqrt(float(np.sum((a_unit - b_unit) ** 2))))
        logits.append(out)
    return distances, logits


def _softmax(row: np.ndarray) -> np.ndarray:
    top = max(row)
    exps = [math.exp(v - top) for v in row]
    total = sum(exps)
    return np.array([e / total for e in exps])


def test_distances_and_probabilities_equal_one_image_at_a_time(tiny64, pictures) -> None:
    state = ModelState.of(tiny64.module)
    result = dv.invariance(
        pictures, tiny64, layers=["conv1", "conv3"], steps=5, translate=(-6, 6), scale=(0.6, 1.4), batch_size=7
    )
    state.assert_same(tiny64.module)
    assert result.layers == ("conv1", "conv3")
    assert result.nodes == ("features.1", "features.6")
    assert result.transforms == ("translate", "scale", "rotate")
    for i, x in enumerate(pictures):
        with torch.no_grad():
            original = tiny64.module(x).numpy()[0]
        top = int(np.argmax(original))
        assert np.sort(original)[-1] - np.sort(original)[-2] > 1e-6  # a clear top-1, no near tie
        assert result.classes is not None
        assert result.classes[i] == (top, LABELS[top])
        for kind in result.transforms:
            distances, logits = _brute_force(tiny64.module, x, kind, result.values[kind], ["features.1", "features.6"])
            for layer, node in zip(result.layers, ("features.1", "features.6"), strict=True):
                # float64 throughout; the batched run sums in another order, so agreement to ~1e-12.
                np.testing.assert_allclose(
                    result.distances[kind][layer][i].numpy(), distances[node], rtol=0, atol=1e-10
                )
            probabilities = [_softmax(row)[top] for row in logits]
            assert result.probabilities is not None
            np.testing.assert_allclose(result.probabilities[kind][i].numpy(), probabilities, rtol=0, atol=1e-12)


def test_batch_size_does_not_change_the_numbers(tiny64, pictures) -> None:
    kwargs = {"layers": "conv2,pool2", "steps": 4, "rotate": None, "target": 2}
    one = dv.invariance(pictures, tiny64, batch_size=1, **kwargs)
    many = dv.invariance(pictures, tiny64, batch_size=64, **kwargs)
    assert one.transforms == many.transforms == ("translate", "scale")
    assert one.classes == ((2, "class 2"), (2, "class 2"))
    for kind in one.transforms:
        for layer in one.layers:
            torch.testing.assert_close(one.distances[kind][layer], many.distances[kind][layer], rtol=0, atol=1e-12)
        torch.testing.assert_close(one.probabilities[kind], many.probabilities[kind], rtol=0, atol=1e-12)


def test_distance_is_zero_at_the_identity(tiny64, pictures) -> None:
    result = dv.invariance(pictures[:1], tiny64, steps=3, translate=(-4, 4), scale=None, rotate=(0, 360))
    for layer in result.layers:
        assert float(result.distances["translate"][layer][0, 1]) < 1e-12  # the middle value is 0 pixels
        assert float(result.distances["rotate"][layer][0, 0]) < 1e-12
        assert float(result.distances["translate"][layer][0, 0]) > 1e-3  # and moving does change the features


def test_the_example_pictures_spread_over_the_values(tiny64, pictures) -> None:
    from deconvviz.analysis.invariance import example_values

    assert example_values((-30, 0, 30), 5) == [-30, 0, 30]  # fewer steps than examples: each value once
    assert example_values(tuple(range(4)), 5) == [0, 1, 2, 3]
    assert example_values(tuple(range(9)), 5) == [0, 2, 4, 6, 8]
    result = dv.invariance(pictures[:1], tiny64, layers=["conv1"], steps=3, translate=(-6, 6), scale=None, rotate=None)
    shown = result.examples["translate"]
    assert len(shown) == 3
    assert not np.array_equal(shown[0], shown[1])  # -6, 0, 6: not -6, -6, 0
    assert not np.array_equal(shown[1], shown[2])


def test_a_model_without_class_scores_has_no_probabilities() -> None:
    spec = dv.ModelSpec(
        name="convs",
        builder=lambda: torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 4, 3)),
        preprocessing=dv.Preprocessing(size=16),
    )
    result = dv.invariance(torch.randn(1, 3, 16, 16), dv.load_model(spec), steps=3, scale=None, rotate=None)
    assert result.probabilities is None
    assert result.classes is None
    _fig, axes = result.figure()
    assert axes.shape == (1, 1 + len(result.layers))
    with pytest.raises(dv.AnalysisError, match=r"^model 'convs' gives no class scores, so there is no class") as info:
        dv.invariance(torch.randn(1, 3, 16, 16), dv.load_model(spec), steps=3, scale=None, rotate=None, target=3)
    assert "\n" not in str(info.value)


@pytest.mark.slow  # draws and encodes the whole figure twice: some 5 s
def test_figure_manifest_and_inline_png(tiny64, pictures, tmp_path: Path) -> None:
    result = dv.invariance(pictures, tiny64, steps=3)
    _fig, axes = result.figure()
    assert axes.shape == (3, 1 + 2 + 1)  # examples, two layers, probability
    assert result._repr_png_().startswith(b"\x89PNG")
    folder = result.save(tmp_path / "inv", arguments={"steps": 3})
    assert sorted(p.name for p in folder.iterdir()) == [MARKER, "figure.png", "manifest.json"]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["tool"] == "deconvviz"
    assert manifest["kind"] == "invariance"
    assert manifest["arguments"] == {"steps": 3}
    assert manifest["transforms"]["scale"]["values"] == list(result.values["scale"])
    low = result.layers[0]
    assert manifest["transforms"]["rotate"]["distances"][low] == result.distances["rotate"][low].tolist()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("not ours")
    with pytest.raises(ResultFolderError, match="not written by deconvviz"):
        result.save(tmp_path / "other")
    assert result.save(folder) == folder  # an earlier result is replaced


def test_bad_input_is_refused(tiny64, pictures) -> None:
    with pytest.raises(dv.AnalysisError, match="empty"):
        dv.invariance(pictures, tiny64, translate=(10, 10))
    with pytest.raises(dv.AnalysisError, match="no transformation"):
        dv.invariance(pictures, tiny64, translate=None, scale=None, rotate=None)
    with pytest.raises(dv.AnalysisError, match="no images"):
        dv.invariance([], tiny64)
    with pytest.raises(dv.AnalysisError, match="out of range"):
        dv.invariance(pictures, tiny64, target=7, steps=2)
    with pytest.raises(dv.AnalysisError, match="unknown class"):
        dv.invariance(pictures, tiny64, target="cat", steps=2)
    with pytest.raises(ValueError, match="conv9"):
        dv.invariance(pictures, tiny64, layers=["conv9"])


# ------------------------------------------------------------------------------------------------ the CLI

MODEL = "tiny-invariance"


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    register_tiny_model(MODEL)
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    paths = []
    for name in ("a.png", "b.png"):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(folder / name)
        paths.append(folder / name)
    return paths


def test_cli_writes_the_figure_and_manifest(photos, tmp_path: Path) -> None:
    out = tmp_path / "inv"
    args = ["invariance", *map(str, photos), "--model", MODEL, "--device", "cpu", "--steps", "3", "-o", str(out)]
    result = CliRunner().invoke(app, [*args, "--translate", "-4:4", "--rotate", "off", "-l", "conv1", "-l", "conv2"])
    assert result.exit_code == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "figure.png", "manifest.json"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert [layer["layer"] for layer in manifest["layers"]] == ["conv1", "conv2"]  # a repeated -l adds a layer
    assert list(manifest["transforms"]) == ["translate", "scale"]
    assert manifest["transforms"]["translate"]["values"] == [-4.0, 0.0, 4.0]
    assert "translate:" in result.stdout


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--translate", "5:5"], "empty"),
        (["--scale", "2:1"], "empty"),
        (["--rotate", "abc"], "START:END"),
        (["--translate", "off", "--scale", "off", "--rotate", "off"], "no transformation"),
        (["--layers", "conv9"], "conv9"),
    ],
)
def test_cli_refuses_bad_input_in_one_line(photos, tmp_path: Path, option: list[str], message: str) -> None:
    out = tmp_path / "inv"
    args = ["invariance", str(photos[0]), "--model", MODEL, "--device", "cpu", "-o", str(out), *option]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error:")
    assert message in lines[0]
    assert not out.exists()
    assert not any(p.name.startswith(".inv") for p in tmp_path.iterdir())


def test_cli_refuses_a_missing_picture_and_an_existing_folder(photos, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["invariance", str(tmp_path / "nope.png"), "--model", MODEL, "-o", str(tmp_path / "x")]
    )
    assert result.exit_code == 2
    assert "nope.png" in result.stderr
    assert not (tmp_path / "x").exists()
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "mine.txt").write_text("keep")
    result = CliRunner().invoke(app, ["invariance", str(photos[0]), "--model", MODEL, "-o", str(tmp_path / "taken")])
    assert result.exit_code == 2
    assert "not written by deconvviz" in result.stderr
    assert [p.name for p in (tmp_path / "taken").iterdir()] == ["mine.txt"]
