"""Feature evolution over training (Fig. 4) on a tiny net: the grid against a brute-force search per checkpoint."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ModelState, TinyVGG, make_tiny_vgg, register_tiny_model
from PIL import Image
from typer.testing import CliRunner

import deconvviz as dv
from deconvviz.cli import app
from deconvviz.io.atomic import MARKER

MODEL = "tiny-evolution"
LAYER = "conv3"


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    register_tiny_model(MODEL)
    folder = tmp_path_factory.mktemp("digits")
    rng = np.random.default_rng(5)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(folder / f"img{i}.png")
    return folder


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("checkpoints")
    paths = []
    for seed in (1, 2, 3):
        path = folder / f"epoch{seed}.pt"
        torch.save(make_tiny_vgg(seed).state_dict(), path)
        paths.append(path)
    return paths


def _brute_force(checkpoint: Path, data: Path, channel: int) -> tuple[float, str, tuple[int, int], torch.Tensor]:
    """Every image alone through the checkpoint's model; the channel's strongest unit, projected and cropped."""
    loaded = dv.load_model(MODEL, checkpoint=checkpoint)
    net = dv.DeconvNet(loaded)
    best: list[tuple[float, str, torch.Tensor]] = []
    for path in sorted(data.glob("*.png")):
        x = loaded.preprocess(path)
        best.append((float(net.activations(x, [LAYER])[LAYER][0, channel].max()), path.name, x))
    values = sorted((v for v, _, _ in best), reverse=True)
    assert values[0] - values[1] > 1e-3 * abs(values[0])  # a clear winner: no near tie for rounding to flip
    value, name, x = max(best, key=lambda item: item[0])
    p = net.project(x, LAYER, channel)
    row, col = p.positions[0]
    top, left, bottom, right = dv.receptive_field(net, LAYER).box(row, col, x.shape[-2:])
    return value, name, (row, col), p.image[0, :, top:bottom, left:right]


def test_grid_equals_a_brute_force_search_per_checkpoint(data: Path, checkpoints: list[Path]) -> None:
    model = dv.load_model(MODEL)
    state = ModelState.of(model.module)
    result = dv.evolution(checkpoints, data, model, layer=LAYER, channels=[0, 3, 5], batch_size=4)
    state.assert_same(model.module)  # each checkpoint went into a copy
    assert result.checkpoints == ("epoch1", "epoch2", "epoch3")
    assert result.channels == (0, 3, 5)
    assert result.images == 6
    for name, checkpoint in zip(result.checkpoints, checkpoints, strict=True):
        for channel in result.channels:
            (hit,) = result.hits[name][channel]
            value, image, position, reconstruction = _brute_force(checkpoint, data, channel)
            assert hit.image == image
            assert hit.position == position
            # float32: the scan runs images in batches, the brute force one at a time; the sums differ in order,
            # which moves values by a few ulps of their size (1e-5 relative is ~100 ulps).
            assert hit.value == pytest.approx(value, rel=1e-5)
            torch.testing.assert_close(
                hit.reconstruction, reconstruction, rtol=1e-4, atol=1e-5 * float(reconstruction.abs().max())
            )


def test_unreadable_pictures_are_named_as_left_out(data, checkpoints, tmp_path: Path) -> None:
    folder = tmp_path / "data"
    shutil.copytree(data, folder)
    (folder / "broken.png").write_bytes(b"not a picture")
    result = dv.evolution(checkpoints[:1], folder, MODEL, layer=LAYER, channels="first2", device="cpu")
    assert [Path(image).name for image, _ in result.skipped] == ["broken.png"]
    assert "1 unreadable picture(s) left out (" in result.summary()
    assert result._manifest()["skipped"][0]["error"]


def test_checkpoints_really_differ_and_k_hits_come_from_different_images(data, checkpoints) -> None:
    result = dv.evolution(checkpoints[:2], data, MODEL, layer=LAYER, channels="first2", k=3, device="cpu")
    assert result.channels == (0, 1)
    for name in result.checkpoints:
        for channel in result.channels:
            hits = result.hits[name][channel]
            assert len(hits) == 3
            assert len({h.image for h in hits}) == 3
            assert [h.value for h in hits] == sorted((h.value for h in hits), reverse=True)
    first, second = (result.hits[n][0][0] for n in result.checkpoints)
    assert (first.value, first.image) != (second.value, second.image)


def test_figure_names_columns_after_checkpoints_and_saves(data, checkpoints, tmp_path: Path) -> None:
    result = dv.evolution(checkpoints, data, MODEL, layer=LAYER, channels="first2", names=["early", "mid", "late"])
    _fig, axes = result.figure()
    assert axes.shape == (2, 3)
    assert [ax.get_title() for ax in axes[0]] == ["early", "mid", "late"]
    assert result._repr_png_().startswith(b"\x89PNG")
    folder = result.save(tmp_path / "evo")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["kind"] == "evolution"
    assert [c["name"] for c in manifest["checkpoints"]] == ["early", "mid", "late"]
    hit = result.hits["mid"][1][0]
    assert manifest["checkpoints"][1]["hits"]["1"][0] == {
        "value": hit.value,
        "image": hit.image,
        "position": list(hit.position),
        "box": list(hit.box),
    }


def test_bad_checkpoints_and_data_are_refused(data, checkpoints, tmp_path: Path) -> None:
    wide = tmp_path / "wide.pt"
    torch.save(TinyVGG(channels=8).state_dict(), wide)
    with pytest.raises(dv.AnalysisError, match=r"'wide' does not fit model .* in the checkpoint"):
        dv.evolution([checkpoints[0], wide], data, MODEL, layer=LAYER)
    other = tmp_path / "other.pt"
    torch.save(torch.nn.Linear(2, 2).state_dict(), other)
    with pytest.raises(dv.AnalysisError, match=r"keys .* missing"):
        dv.evolution([other], data, MODEL, layer=LAYER)
    junk = tmp_path / "junk.pt"
    junk.write_text("not a checkpoint")
    with pytest.raises(dv.AnalysisError, match="cannot read checkpoint"):
        dv.evolution([junk], data, MODEL, layer=LAYER)
    with pytest.raises(dv.AnalysisError, match="not found"):
        dv.evolution([tmp_path / "missing.pt"], data, MODEL, layer=LAYER)
    with pytest.raises(dv.AnalysisError, match=r"checkpoint file not found: '.*missing\.pt'"):
        dv.evolution(str(tmp_path / "missing.pt"), data, MODEL, layer=LAYER)  # one path alone: not its letters
    with pytest.raises(dv.AnalysisError, match="no checkpoints"):
        dv.evolution([], data, MODEL, layer=LAYER)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        dv.evolution(checkpoints, tmp_path / "empty", MODEL, layer=LAYER)
    with pytest.raises(ValueError, match="conv9"):
        dv.evolution(checkpoints, data, MODEL, layer="conv9")
    with pytest.raises(dv.AnalysisError, match=r"needs the model's preprocessing, and the nn\.Module TinyVGG"):
        dv.evolution(checkpoints, data, TinyVGG(), layer="features.6")  # a bare module: pictures need more


def _invoke(*args: object) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["evolution", *map(str, args)])
    return result.exit_code, result.stdout, result.stderr


def test_cli_writes_the_grid(data, checkpoints, tmp_path: Path) -> None:
    out = tmp_path / "evo"
    code, stdout, stderr = _invoke(
        *checkpoints, "--data", data, "--layer", LAYER, "--model", MODEL, "-c", "0,2", "-o", out
    )
    assert code == 0, stderr
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "figure.png", "manifest.json"]
    assert "2 channel(s) x 3 checkpoint(s)" in stdout
    assert json.loads((out / "manifest.json").read_text())["channels"] == [0, 2]
    code, _, stderr = _invoke(*checkpoints, "--data", data, "-l", LAYER, "--model", MODEL, "-c", "3", "-c", "5")
    assert code == 2  # the second would have replaced the first without a word
    assert (
        stderr.strip()
        == "error: --channels was given 2 times ('3', '5'); give it once, with one list for several: 12,40"
    )
    code, stdout, stderr = _invoke(
        *checkpoints,
        "--data",
        data,
        "--layer",
        LAYER,
        "--model",
        MODEL,
        "-c",
        "first3",
        "-o",
        out,
        "--mean",
        "0.5,0.5,0.5",
    )
    assert code == 0, stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["channels"] == [0, 1, 2]
    assert manifest["arguments"]["mean"] == "0.5,0.5,0.5"


def test_cli_refuses_bad_input_in_one_line(data, checkpoints, tmp_path: Path) -> None:
    wide = tmp_path / "wide.pt"
    torch.save(TinyVGG(channels=8).state_dict(), wide)
    (tmp_path / "empty").mkdir()
    out = tmp_path / "evo"
    cases = [
        ((wide, "--data", data), "does not fit"),
        ((*checkpoints, "--data", tmp_path / "empty"), "no images"),
        ((tmp_path / "missing.pt", "--data", data), "not found"),
        ((*checkpoints, "--data", data, "-c", "x"), "--channels"),
        ((*checkpoints, "--data", data, "-c", "first0"), "channels"),
    ]
    for args, message in cases:
        code, _, stderr = _invoke(*args, "--layer", LAYER, "--model", MODEL, "-o", out)
        assert code == 2, stderr
        lines = stderr.strip().splitlines()
        assert len(lines) == 1
        assert message in lines[0]
        assert not out.exists()


@pytest.mark.slow
def test_the_shipped_digits_example_trains_and_draws_its_evolution(tmp_path: Path) -> None:
    pytest.importorskip("sklearn")
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "digits"
    command = [sys.executable, str(root / "examples" / "digits_evolution.py"), "--out", str(out), "--epochs", "1,3"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False, cwd=root)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["epoch01.pt", "epoch03.pt"]
    manifest = json.loads((out / "evolution" / "manifest.json").read_text())
    assert manifest["layer"] == "conv3"
    assert manifest["images"] == 1797
    assert len(manifest["channels"]) == 8
    # The command line reads the same checkpoints with the example's builder as a user model.
    code, stdout, stderr = _invoke(
        *sorted((out / "checkpoints").glob("*.pt")),
        "--data",
        out / "images",
        "--layer",
        "features.7",
        "--model",
        f"{root / 'examples' / 'digits_evolution.py'}:build",
        "--size",
        "32",
        "--channels",
        "2",
        "-o",
        tmp_path / "cli",
    )
    assert code == 0, stderr
    assert "2 channel(s) x 2 checkpoint(s) (epoch01, epoch03)" in stdout


def test_a_count_of_channels_follows_the_trained_models_strongest_through_every_checkpoint(data, checkpoints) -> None:
    result = dv.evolution(checkpoints[:2], data, MODEL, layer=LAYER, channels=2, k=1, device="cpu")
    trained = dv.load_model(MODEL, checkpoint=checkpoints[1], device="cpu")  # the last checkpoint given
    strongest = dv.top_k(data, trained, layers=[LAYER], k=1, channels="all")
    best = sorted(strongest.hits[LAYER], key=lambda c: (-strongest.hits[LAYER][c][0].value, c))[:2]
    assert list(result.channels) == best
    for label in result.checkpoints:
        assert tuple(result.hits[label]) == result.channels
