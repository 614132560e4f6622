"""Units inside the picture, class scores, first-layer filters and one-line usage errors."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_tiny_vgg, register_tiny_model
from PIL import Image
from typer.testing import CliRunner

import deconvviz as dv
from deconvviz.analysis.choose import ClassError, inside_mask
from deconvviz.cli import app

MODEL = "tiny-choose"


@pytest.fixture(scope="module", autouse=True)
def tiny_models() -> None:
    register_tiny_model(MODEL)
    register_tiny_model("tiny-base", labels=False)
    dv.register_model(
        dv.ModelSpec(
            name="tiny-features", builder=lambda: make_tiny_vgg().features, preprocessing=dv.Preprocessing(size=32)
        ),
        replace=True,
    )


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("photo") / "photo.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path)
    return path


def test_inside_mask_marks_units_whose_whole_field_is_in_the_picture() -> None:
    field = dv.ReceptiveField(size=(5, 5), stride=(1, 1), offset=(-2, -2))  # a 5x5 field centred on its unit
    mask = inside_mask(field, (8, 8), (8, 8))
    assert mask is not None
    expected = torch.zeros(8, 8, dtype=torch.bool)
    expected[2:6, 2:6] = True  # two pixels of margin on every side
    assert torch.equal(mask, expected)
    assert inside_mask(dv.ReceptiveField.whole(), (1, 1), (8, 8)) is None


def test_top_prefers_units_inside_the_picture(photo: Path) -> None:
    p = dv.visualize(photo, MODEL, "conv3", top=3, device="cpu")
    assert p.prefer_inside
    assert p.inside is not None
    assert all(p.inside)
    anywhere = dv.visualize(photo, MODEL, "conv3", top=3, device="cpu", inside=False)
    assert not anywhere.prefer_inside
    chosen = dv.visualize(photo, MODEL, "conv3", channel=[0, 1], device="cpu")
    assert not chosen.prefer_inside  # off by default for chosen channels


def test_render_manifest_records_the_choice(photo: Path, tmp_path: Path) -> None:
    dv.render_images([photo], tmp_path, model=MODEL, layers=["conv3"], top=2, device="cpu")
    entry = json.loads((tmp_path / "photo" / "manifest.json").read_text())["layers"][0]
    assert entry["prefer_inside"] is True
    assert entry["inside"] == [True, True]


def test_class_scores_are_projected_with_their_name(photo: Path, tmp_path: Path) -> None:
    p = dv.visualize(photo, MODEL, target="class 3", device="cpu")
    assert p.label == "class 3: class 3"
    assert p.channels == (3,)
    auto = dv.visualize(photo, MODEL, target="auto", device="cpu")
    assert auto.label is not None
    with pytest.raises(ClassError, match="out of range"):
        dv.visualize(photo, MODEL, target=9, device="cpu")
    # a class index works for any model that gives one score per class; names are optional
    unnamed = dv.visualize(photo, "tiny-base", target=3, device="cpu")
    assert unnamed.label == "class 3"
    assert unnamed.channels == (3,)
    assert dv.visualize(photo, "tiny-base", target="auto", device="cpu").label.startswith("class ")
    with pytest.raises(ClassError, match="no class names, so 'cat' names no class"):
        dv.visualize(photo, "tiny-base", target="cat", device="cpu")
    with pytest.raises(ClassError, match="out of range"):
        dv.visualize(photo, "tiny-base", target=5, device="cpu")
    with pytest.raises(ClassError, match="no classifier"):
        dv.visualize(photo, "tiny-features", target="auto", device="cpu")
    with pytest.deprecated_call(match=r"visualize\(target_class=...\) is deprecated"):
        old = dv.visualize(photo, MODEL, target_class="class 3", device="cpu")
    assert old.label == p.label
    result = CliRunner().invoke(
        app, ["render", str(photo), "-m", MODEL, "-l", "conv3", "--class", "2", "-o", str(tmp_path)]
    )
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "photo" / "class.png").is_file()
    unnamed = CliRunner().invoke(
        app, ["render", str(photo), "-m", "tiny-base", "-l", "conv3", "--class", "3", "-o", str(tmp_path / "base")]
    )
    assert unnamed.exit_code == 0, unnamed.stderr  # one score per class is enough; names are optional


def test_filters_command_draws_the_first_layer(tmp_path: Path) -> None:
    out = tmp_path / "f.png"
    result = CliRunner().invoke(app, ["filters", "-m", MODEL, "--layer", "conv1", "-o", str(out)])
    assert result.exit_code == 0, result.stderr
    assert "4 filters of 3x3x3" in result.stdout
    assert Image.open(out).size[0] > 100
    default = CliRunner().invoke(app, ["filters", "-m", MODEL, "-o", str(tmp_path / "g.png")])
    assert default.exit_code == 0, default.stderr  # the model's first convolution, by its alias
    assert default.stdout.startswith(f"{MODEL} conv1 (features.0): 4 filters of 3x3x3")
    bad = CliRunner().invoke(app, ["filters", "-m", MODEL, "--layer", "conv2", "-o", str(out)])
    assert bad.exit_code == 2
    assert len(bad.stderr.strip().splitlines()) == 1
    assert "not pictures" in bad.stderr


def test_filters_in_python_are_the_command_s_and_show_in_a_notebook() -> None:
    found = dv.filters(MODEL)
    assert isinstance(found, dv.Filters)
    assert (found.layer, found.module) == ("conv1", "features.0")
    weight = dict(dv.load_model(MODEL).module.named_parameters())["features.0.weight"]
    assert torch.equal(found.weight, weight.detach().float())
    assert found.grid(columns=2).shape[1] < found.grid(columns=4).shape[1]
    assert found._repr_png_().startswith(b"\x89PNG")
    with pytest.raises(dv.RenderError, match="not pictures"):
        dv.filters(MODEL, layer="conv2")
    with pytest.raises(dv.RenderError, match="cell must be"):
        found.grid(cell=0)


def test_usage_errors_are_one_line(photo: Path) -> None:
    result = CliRunner().invoke(app, ["render", str(photo), "--mode", "mean"])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "--mode" in lines[0]


def test_a_layer_whose_fields_nearly_fill_the_picture_shows_each_channels_strongest_unit() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 7, padding=3), torch.nn.ReLU(), torch.nn.Conv2d(8, 6, 9, padding=4), torch.nn.ReLU()
    ).eval()
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    net = dv.DeconvNet(model)
    field = dv.receptive_field(net, "3")
    assert field.size == (15, 15)  # only 2 x 2 of the 16 x 16 units see no padding
    p = dv.visualize(x, model=model, layer="3", top=6)
    act = net.activations(x, ["3"])["3"][0]
    for channel, position in zip(p.channels, p.positions, strict=True):
        assert position == divmod(int(act[channel].argmax()), act.shape[-1])  # the strongest anywhere
    assert len(set(p.positions)) > 1  # not one unit for every channel
    assert p.inside is not None
    assert not all(p.inside)  # units whose field reaches past the picture say so (labelled edge)
    from deconvviz.viz.figures import label

    assert any(label(p, i).endswith(" edge") for i in range(len(p.channels)))


@pytest.mark.parametrize(
    "options",
    [
        {"top": 3},
        {"top": 99},  # clamped to each layer's channel count
        {"channel": [2, 0]},
        {"channel": [1], "inside": True},
        {"top": 2, "inside": False},
        {"top": 2, "mode": "map"},
        {"channel": 1, "position": (1, 1)},
        {"top": 2, "method": "guided"},
        {"top": 2, "method": "gradient"},
    ],
)
def test_one_pass_for_several_layers_gives_each_layer_s_own_projection(options: dict[str, object]) -> None:
    from deconvviz.analysis.choose import project, project_layers

    loaded = dv.load_model(MODEL, device="cpu")
    current = dv.session(dataclasses.replace(loaded, module=loaded.module.double()))
    # at 12 pixels conv1 and pool1 have units inside the picture, features.5 and conv3 too few of them
    x = torch.randn(1, 3, 12, 12, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    layers = ["conv3", "conv1", "pool1", "features.5"]  # any order, aliases and node names
    together = project_layers(current, x, layers, **options)  # type: ignore[arg-type]
    assert [p.layer for p in together] == layers
    for layer, joint in zip(layers, together, strict=True):
        alone = project(current, x, layer, **options)  # type: ignore[arg-type]
        assert torch.equal(joint.image, alone.image)
        assert joint.image.dtype == torch.float64
        assert torch.equal(joint.activations, alone.activations)
        for name in ("node", "channels", "positions", "boxes", "inside", "prefer_inside", "mode", "method"):
            assert getattr(joint, name) == getattr(alone, name), name
    if options == {"top": 3}:  # both choices occur
        assert [p.prefer_inside for p in together] == [False, True, True, False]


def test_one_capture_serves_each_layer_as_its_own_capture_would() -> None:
    net = dv.DeconvNet(make_tiny_vgg().double().eval())
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    shared = net.capture_layers(x, ["features.6", "features.1"])
    assert shared["features.6"].capture is shared["features.1"].capture  # one forward pass
    for layer, captured in shared.items():
        own = net.capture(x, layer)
        assert torch.equal(captured.activation, own.activation)
        assert torch.equal(captured.project(top=2).image, own.project(top=2).image)
        units = [(0, 1, 2, 3), (0, 0, 4, 4)]
        assert torch.equal(captured.project_units(units), net.project_units(x, layer, units))
    with pytest.raises(dv.DeconvVizError, match="conv9"):
        net.capture_layers(x, ["features.1", "conv9"])


def test_one_pass_serves_the_layers_of_a_residual_net() -> None:
    import torchvision

    from deconvviz.analysis.choose import project, project_layers

    torch.manual_seed(0)
    current = dv.session(torchvision.models.resnet18(weights=None).double().eval())
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    layers = dv.default_layers(current.net, x)
    assert len(layers) >= 4  # a stem and residual stages, on the trunk and inside blocks
    for joint, layer in zip(project_layers(current, x, layers, top=2), layers, strict=True):
        alone = project(current, x, layer, top=2)
        assert torch.equal(joint.image, alone.image)
        assert (joint.channels, joint.positions) == (alone.channels, alone.positions)
