"""The notebook helpers: visualize, sessions, default layers, render_images."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_ALIASES, make_tiny_vgg, register_tiny_model
from PIL import Image

import deconvviz as dv
from deconvviz.core.layers import choose_layers
from deconvviz.models.session import DeviceError, resolve_device

MODEL = "tiny-api"
BGR_MODEL = "tiny-api-bgr"
ALIASES = TINY_ALIASES


@pytest.fixture(scope="module", autouse=True)
def tiny_models() -> None:
    register_tiny_model(MODEL, labels=False)
    register_tiny_model(BGR_MODEL, channel_order="BGR", labels=False)


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("api") / "photo.png"
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(path)
    return path


def test_visualize_returns_a_projection_of_the_deepest_default_layer(photo: Path) -> None:
    p = dv.visualize(photo, model=MODEL, device="cpu")
    assert isinstance(p, dv.Projection)
    assert p.layer == "conv3"
    assert p.node == "features.6"
    assert len(p) == 8  # top=9, clamped to the layer's 8 channels
    assert p.image.shape == (8, 3, 32, 32)
    assert p.input is not None
    assert p.input.shape == (1, 3, 32, 32)
    assert p.channel_order == "RGB"
    assert p.prefer_inside  # top= prefers units whose receptive field lies inside the picture
    # with units anywhere, the same projection as the engine gives for the same input
    anywhere = dv.visualize(photo, model=MODEL, device="cpu", inside=False)
    current = dv.session(MODEL, device="cpu")
    x = current.preprocess(photo)
    direct = dv.DeconvNet(make_tiny_vgg()).project(x, "features.6", top=8)
    assert anywhere.channels == direct.channels
    torch.testing.assert_close(anywhere.image, direct.image)
    # inside: each unit is projected by the engine at the position chosen
    assert p.positions[0] is not None
    one = dv.DeconvNet(make_tiny_vgg()).project(x, "features.6", channel=p.channels[0], position=p.positions[0])
    torch.testing.assert_close(p.image[:1], one.image)


def test_visualize_options(photo: Path) -> None:
    p = dv.visualize(photo, model=MODEL, layer="conv1", channel=[2, 0], device="cpu")
    assert p.channels == (2, 0)
    p = dv.visualize(photo, model=MODEL, layer="conv2", top=2, mode="map", device="cpu")
    assert p.mode == "map"
    assert len(p) == 2
    assert p.positions == (None, None)
    p = dv.visualize(photo, model=MODEL, layer="conv2", channel=1, position=(3, 4), device="cpu")
    assert p.positions == ((3, 4),)
    p = dv.visualize(Image.open(photo), model=MODEL, layer="conv1", top=1, device="cpu", size=20)
    assert p.image.shape[-2:] == (20, 20)
    p = dv.visualize(photo, model=MODEL, layer="conv1", top=1, device="cpu", full_image=True)
    assert p.image.shape[-2:] == (32, 40)


def test_visualize_accepts_a_preprocessed_tensor_and_a_loaded_model(photo: Path) -> None:
    loaded = dv.load_model(MODEL)
    x = loaded.preprocess(photo)
    p = dv.visualize(x, model=loaded, layer="conv2", top=3)
    q = dv.visualize(photo, model=MODEL, layer="conv2", top=3, device="cpu")
    assert p.channels == q.channels
    torch.testing.assert_close(p.image, q.image)


def test_visualize_refuses_a_batch_and_a_bare_module_in_one_line(photo: Path) -> None:
    loaded = dv.load_model(MODEL)
    x = loaded.preprocess(photo)
    p = dv.visualize(x[0], model=loaded, layer="conv2", top=3)  # (C, H, W) is one picture too
    torch.testing.assert_close(p.image, dv.visualize(x, model=loaded, layer="conv2", top=3).image)
    with pytest.raises(dv.DeconvVizError, match=r"expected one picture.*got \(2, 3, .*pass pictures one at a time"):
        dv.visualize(torch.cat([x, x]), model=loaded, layer="conv2", top=3)
    bare = dv.visualize(x, model=loaded.module, layer=loaded.layers["conv2"], top=3)  # a bare module takes a tensor
    torch.testing.assert_close(bare.image, p.image)
    with pytest.raises(dv.DeconvVizError, match=r"the nn\.Module TinyVGG has none; pass a preprocessed") as info:
        dv.visualize(photo, model=loaded.module, layer=loaded.layers["conv2"], top=3)  # but cannot read a picture
    assert "\n" not in str(info.value)
    assert "deconvviz.load_model(deconvviz.ModelSpec(" in str(info.value)


def test_results_are_ordinary_tensors(photo: Path) -> None:
    loaded = dv.load_model(MODEL)
    x = loaded.preprocess(photo)
    net = dv.DeconvNet(loaded)
    p = net.project(x, "conv2", top=2)
    made = [
        p.image,
        p.activations,
        net.activations(x, ["conv2"])["conv2"],
        net.project_units(x, "conv2", [(0, 0, 1, 1)]),
    ]
    for t in made:
        assert not t.is_inference()
        t -= t.min()  # in place, as a notebook does to show it
    assert (p.image * torch.ones(1, requires_grad=True)).sum().requires_grad


def test_boxes_hold_every_non_zero_pixel_of_their_reconstruction(photo: Path) -> None:
    p = dv.visualize(photo, model=MODEL, layer="conv3", top=8, device="cpu")
    assert p.boxes is not None
    assert len(p.boxes) == len(p)
    checked = 0
    for i, box in enumerate(p.boxes):
        assert box is not None
        top, left, bottom, right = box
        support = p.image[i].abs().sum(0) > 0
        inside = torch.zeros_like(support)
        inside[top:bottom, left:right] = True
        assert not (support & ~inside).any()
        checked += int(bool(support.any()))
    assert checked >= 4  # channels that did fire (a silent channel projects to nothing)
    assert dv.visualize(photo, model=MODEL, layer="conv3", top=2, mode="map", device="cpu").boxes == (None, None)


def test_bgr_models_are_drawn_in_rgb(photo: Path) -> None:
    rgb = dv.visualize(photo, model=MODEL, layer="conv1", top=2, device="cpu")
    bgr = dv.visualize(photo, model=BGR_MODEL, layer="conv1", top=2, device="cpu")
    assert bgr.channel_order == "BGR"
    # the BGR model sees the picture with its channels swapped; its picture of the input is still the photo
    assert np.asarray(bgr.input_pil()).shape == (32, 32, 3)
    assert np.array_equal(np.asarray(bgr.input_pil()), np.asarray(rgb.input_pil()))
    swapped = dataclasses.replace(bgr, channel_order="RGB")
    assert np.array_equal(bgr.rgb(0), swapped.rgb(0)[..., ::-1])


def test_sessions_are_reused(photo: Path) -> None:
    a = dv.session(MODEL, device="cpu")
    assert dv.session(MODEL, device="cpu") is a
    assert dv.session(a) is a
    other = dv.session(MODEL, device="cpu", size=16)
    assert other is not a
    assert other.preprocess(photo).shape[-1] == 16
    resized = dv.session(a, size=24)
    assert resized.preprocess(photo).shape[-1] == 24
    assert a.preprocess(photo).shape[-1] == 32  # the original is untouched


def test_default_layers_end_each_stage() -> None:
    current = dv.session(MODEL, device="cpu")
    x = torch.zeros(1, 3, 32, 32)
    assert dv.default_layers(current.net, x) == ["conv2", "conv3"]
    assert dv.layer_names(current.net) == ["conv1", "conv2", "pool1", "conv3", "pool2"]
    plain = dv.DeconvNet(make_tiny_vgg())  # no aliases: node names
    assert dv.default_layers(plain, x) == ["features.3", "features.6"]
    assert dv.layer_names(plain) == plain.layers


def test_choose_layers() -> None:
    net = dv.session(MODEL, device="cpu").net
    x = torch.zeros(1, 3, 32, 32)
    assert choose_layers(net, None, x) == ["conv2", "conv3"]
    assert choose_layers(net, "all", x) == ["conv1", "conv2", "pool1", "conv3", "pool2"]
    assert choose_layers(net, ["conv1,features.6", "conv1"], x) == ["conv1", "features.6"]
    with pytest.raises(dv.DeconvVizError, match="did you mean 'conv3'"):
        choose_layers(net, ["conv33"], x)


@pytest.mark.parametrize(
    ("device", "message"),
    [("tpu", "unknown device"), ("cuda:7" if torch.cuda.is_available() else "cuda", "cuda")],
)
def test_bad_devices(device: str, message: str) -> None:
    if torch.cuda.is_available() and torch.cuda.device_count() > 7:
        pytest.skip("this machine has eight GPUs")
    with pytest.raises(DeviceError, match=message):
        resolve_device(device)
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")


def test_render_images_reports_what_it_wrote(photo: Path, tmp_path: Path) -> None:
    seen: list[tuple[int, int]] = []
    results = dv.render_images(
        [photo], tmp_path, model=MODEL, device="cpu", top=3, progress=lambda d, t, _: seen.append((d, t))
    )
    assert seen == [(0, 2), (1, 2), (2, 2)]
    (result,) = results
    assert result.folder == tmp_path / "photo"
    assert [layer.layer for layer in result.layers] == ["conv2", "conv3"]
    for layer in result.layers:
        assert len(layer.files) == 3
        assert all(f.is_file() for f in layer.files)
        assert layer.summary.is_file()
        assert list(layer.activations) == sorted(layer.activations, reverse=True)
    assert result.overview.is_file()
    assert result.prediction is None  # the spec has no class names
    line = result.summary()
    assert line.startswith(f"photo.png: 2 layer(s), 6 reconstruction(s) -> {tmp_path / 'photo'}")
    assert f"conv3 strongest ch {result.layers[1].channels[0]}" in line
    weak_first = list(reversed(result.layers[1].channels))  # channels given: drawn in the order given ...
    (given,) = dv.render_images(
        [photo], tmp_path / "given", model=MODEL, device="cpu", layers=["conv3"], channels=weak_first
    )
    assert list(given.layers[0].channels) == weak_first
    assert f"conv3 strongest ch {weak_first[-1]} " in given.summary()  # ... but the line names the strongest


def test_render_images_needs_pictures(tmp_path: Path) -> None:
    with pytest.raises(dv.OutputError, match="no images"):
        dv.render_images([], tmp_path, model=MODEL)


@pytest.mark.slow
@pytest.mark.network  # the quickstart loads the offline VGG16, whose weights are fetched once from the registry
def test_quickstart_runs(tmp_path: Path) -> None:
    script = Path(__file__).resolve().parents[1] / "examples" / "quickstart.py"
    done = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stderr
    out = tmp_path / "out" / "quickstart"
    assert (out / "conv5_3.png").is_file()
    assert len(list((out / "conv5_3").glob("*.png"))) == 9
    strongest = np.asarray(Image.open(out / "conv5_3_strongest.png")).astype(int)
    assert np.abs(strongest - 128).max() > 100
    assert "conv5_3 channel" in done.stdout


@pytest.mark.parametrize("method", ["guided", "gradient"])
def test_visualize_and_render_take_the_reverse_pass(photo: Path, tmp_path: Path, method: str) -> None:
    current = dv.session(MODEL, device="cpu")
    x = current.preprocess(photo)
    net = dv.DeconvNet(make_tiny_vgg())
    for inside in (False, True):
        p = dv.visualize(photo, model=MODEL, device="cpu", layer="conv2", top=3, inside=inside, method=method)
        assert p.method == method
        units = dict(zip(p.channels, p.positions, strict=True))
        for i, (channel, position) in enumerate(units.items()):
            one = net.project(x, "features.3", channel=channel, position=position, method=method)
            torch.testing.assert_close(p.image[i : i + 1], one.image)
        plain = dv.visualize(photo, model=MODEL, device="cpu", layer="conv2", top=3, inside=inside)
        assert plain.method == "deconvnet"
        assert not torch.equal(plain.image, p.image)
    (result,) = dv.render_images([photo], tmp_path, model=MODEL, device="cpu", layers=["conv2"], method=method)
    manifest = json.loads((result.folder / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["arguments"]["method"] == method
    with pytest.raises(ValueError, match="unknown method"):
        dv.visualize(photo, model=MODEL, device="cpu", method="nope")
    with pytest.raises(ValueError, match="unknown method"):
        dv.render_images([photo], tmp_path / "none", model=MODEL, device="cpu", method="nope")
    assert not (tmp_path / "none").exists()


def test_each_layer_summary_is_titled_with_the_picture_and_the_layer(
    photo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    titles: list[str] = []
    drawn = dv.Projection.figure

    def figure(self: dv.Projection, *args: object, **kwargs: object) -> tuple[object, object]:
        fig, axes = drawn(self, *args, **kwargs)
        titles.append(fig._suptitle.get_text() if fig._suptitle is not None else "")
        return fig, axes

    monkeypatch.setattr(dv.Projection, "figure", figure)
    dv.render_images([photo], tmp_path, model=MODEL, device="cpu", top=2, layers=["conv2", "conv3"])
    assert len(titles) == 2
    for title, layer in zip(titles, ["conv2", "conv3"], strict=True):
        assert title.startswith(f"photo.png: {layer}"), title  # the layer, alias first, then its node
        assert title.count(".png") == 1, title  # not a reconstruction's file name


def test_the_analyses_take_a_bare_module_and_preprocessed_tensors(photo: Path) -> None:
    module = make_tiny_vgg().eval()
    x = dv.session(MODEL, device="cpu").preprocess(photo)
    assert dv.session(module).name == "TinyVGG"  # named after its class, as it has no name of its own
    with pytest.raises(dv.DeconvVizError, match="size= needs a loaded model"):
        dv.session(dv.session(module), size=64)
    occluded = dv.occlusion(x, model=module, layer="features.6", occluder=8, stride=8)
    assert occluded.model == "TinyVGG"
    assert occluded.picture.shape == (32, 32, 3)  # drawn without the model's inverse preprocessing
    assert occluded.figure()[0] is not None
    assert dv.sanity(x, module, layer="features.6", method="deconvnet").model == "TinyVGG"
    assert dv.invariance([x], module, layers=["features.6"], steps=3).model == "TinyVGG"
    parts = {"images": {photo.name: {"eye": [0, 0, 8, 8]}}}
    with pytest.raises(dv.AnalysisError, match=r"needs the model's preprocessing, and the nn\.Module TinyVGG"):
        dv.correspondence([photo, photo], parts, model=module)


def test_visualize_refuses_top_and_channel_together() -> None:
    with pytest.raises(dv.DeconvVizError, match=r"give either top= or channel=, not both \(top=3, channel=5\)"):
        dv.visualize(Image.new("RGB", (32, 32)), MODEL, "conv1", top=3, channel=5, device="cpu")
