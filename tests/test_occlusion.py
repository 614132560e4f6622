"""Occlusion: the incremental sweep equals naive re-inference; panels match a brute-force loop; bad input.

Numerics are compared in float64, where a different summation order (a convolution run over a crop instead
of the whole map) changes results by a few ulps: 1e-9 relative leaves a wide margin and still catches any
wrong pixel, which changes values at the 1e-1 scale.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import make_tiny_vgg, register_tiny_model
from PIL import Image
from torch import nn
from typer.testing import CliRunner

import deconvviz as dv
from deconvviz.analysis.occluder import OcclusionError, occluder_grid
from deconvviz.cli import app
from deconvviz.core.graph import trace
from deconvviz.core.incremental import IncrementalOcclusion, occluded_images, run_graph
from deconvviz.io.atomic import MARKER

TOLERANCE = 1e-9


def seeded(model: nn.Module, seed: int = 0) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator, dtype=torch.float64) * 0.4)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=generator, dtype=torch.float64) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=generator, dtype=torch.float64) + 0.5)
    return model.eval()


class Overlapping(nn.Module):
    """Strided, dilated and padded convolutions, overlapping 3x3/2 max-pools (ceil mode), average pooling."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 5, stride=2, padding=2)
        self.pool1 = nn.MaxPool2d(3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=2, dilation=2)
        self.pool2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.conv3 = nn.Conv2d(6, 6, 3, padding="same")
        self.avg = nn.AvgPool2d(3, stride=1, padding=1)
        self.head = nn.Linear(6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(F.relu(self.conv1(x)))
        x = self.pool2(torch.relu(self.conv2(x)))
        x = self.avg(F.relu(self.conv3(x)))
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))


class Residual(nn.Module):
    """ResNet-style blocks: batch norm, identity and strided 1x1 shortcuts, in-place ReLUs."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(inplace=True))
        self.a = nn.Sequential(
            nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(inplace=True), nn.Conv2d(4, 4, 3, padding=1)
        )
        self.b = nn.Sequential(nn.Conv2d(4, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
        self.down = nn.Conv2d(4, 8, 1, stride=2)
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.relu(x + self.a(x))
        x = self.relu(self.b(x) + self.down(x))
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.fc(x)


class Fire(nn.Module):
    def __init__(self, cin: int, squeeze: int, expand: int) -> None:
        super().__init__()
        self.squeeze = nn.Conv2d(cin, squeeze, 1)
        self.e1 = nn.Conv2d(squeeze, expand, 1)
        self.e3 = nn.Conv2d(squeeze, expand, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.squeeze(x))
        return torch.cat([F.relu(self.e1(x)), F.relu(self.e3(x))], 1)


class Concat(nn.Module):
    """SqueezeNet's shape: fire modules (channel concatenation), functional ops, a view sized by x.size(0)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, stride=2)
        self.fire1 = Fire(6, 3, 4)
        self.fire2 = Fire(8, 3, 4)
        self.weight = nn.Parameter(torch.zeros(5, 8, 3, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv(x)), 3, 2, ceil_mode=True)
        x = self.fire2(self.fire1(x))
        x = F.conv2d(x, self.weight, None, 1, 1)
        return x.mean((2, 3)).view(x.size(0), -1)


MODELS: dict[str, Callable[[], nn.Module]] = {
    "tiny_vgg": lambda: make_tiny_vgg(dtype=torch.float64),
    "overlapping": lambda: seeded(Overlapping().double()),
    "residual": lambda: seeded(Residual().double()),
    "concat": lambda: seeded(Concat().double()),
}

# (image side, occluder size, stride): stride < size, stride = size, stride > size, an occluder as large as
# the image; every grid has clipped occluders at the borders.
SWEEPS = [(20, 6, 3), (20, 4, 4), (19, 3, 5), (13, 13, 4)]


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize(("side", "size", "stride"), SWEEPS)
def test_incremental_equals_naive_reinference_at_every_layer(name: str, side: int, size: int, stride: int) -> None:
    model = MODELS[name]()
    graph = trace(model)
    x = torch.randn(1, 3, side, side, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    nodes = [n for n in graph.nodes if n in graph.carries and n is not graph.input and n.op != "output"]
    rows, cols = occluder_grid(side, side, size, stride)
    grid = [(i, j) for i in range(len(rows)) for j in range(len(cols))]
    boxes = [(rows[i], cols[j]) for i, j in grid]
    with torch.inference_mode():
        engine = IncrementalOcclusion(graph, x, nodes, rows, cols)
        naive = run_graph(graph, occluded_images(x, boxes), nodes)
        direct = model(occluded_images(x, boxes))
        assert any(p.kind == "window" for p in engine.plans.values())
        for start in range(0, len(grid), 7):  # batches that do not divide the grid
            chunk = grid[start : start + 7]
            got = engine.run(chunk)
            for node in nodes:
                want = naive[node][start : start + len(chunk)]
                full = engine.full(node, got[node], len(chunk))
                assert full.shape == want.shape, node.name
                assert relative(full, want) <= TOLERANCE, (name, node.name)
            output = nodes[-1]
            assert (
                relative(engine.full(output, got[output], len(chunk)), direct[start : start + len(chunk)]) <= TOLERANCE
            )


def test_occluders_change_the_output_so_the_comparison_can_fail() -> None:
    model = MODELS["residual"]()
    graph = trace(model)
    x = torch.randn(1, 3, 20, 20, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    rows, cols = occluder_grid(20, 20, 6, 3)
    out = next(n for n in graph.nodes if n.op == "output").args[0]
    with torch.inference_mode():
        engine = IncrementalOcclusion(graph, x, [out], rows, cols)
        values = engine.full(out, engine.run([(0, 0), (3, 3)])[out], 2)
        assert relative(values[0], model(x)[0]) > 1e-3
        assert relative(values[0], values[1]) > 1e-3


def test_only_the_reached_region_is_recomputed() -> None:
    model = make_tiny_vgg(dtype=torch.float64)
    graph = trace(model)
    x = torch.zeros(1, 3, 32, 32, dtype=torch.float64)
    rows, cols = occluder_grid(32, 32, 4, 4)
    with torch.inference_mode():
        engine = IncrementalOcclusion(graph, x, [graph.node("features.3")], rows, cols)
    # A 4-px occluder through two 3x3 convolutions reaches 4 + 2 + 2 = 8 rows of the 32.
    assert engine.plans[graph.node("features.0")].size == (6, 6)
    assert engine.plans[graph.node("features.3")].size == (8, 8)


def test_occluder_grid_is_centred_on_cells_and_clipped() -> None:
    rows, cols = occluder_grid(20, 16, 6, 4)
    assert len(rows) == 5
    assert len(cols) == 4
    assert rows[0] == (0, 5)  # centre 2: rows -1..5, clipped
    assert rows[2] == (7, 13)
    assert rows[-1] == (15, 20)
    assert cols[-1] == (11, 16)


@pytest.mark.parametrize(
    ("size", "stride", "message"),
    [(33, 8, "larger than the 32x32 image"), (4, 0, "stride must be a positive"), (0, 4, "size must be a positive")],
)
def test_bad_occluder(size: int, stride: int, message: str) -> None:
    with pytest.raises(OcclusionError, match=message):
        occluder_grid(32, 32, size, stride)


# ------------------------------------------------------------------------------------------ the analysis

MODEL = "tiny-occlusion"


@pytest.fixture(scope="module", autouse=True)
def tiny_model() -> None:
    register_tiny_model(MODEL)


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("photos") / "noise.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(path)
    return path


def test_panels_match_a_brute_force_loop(photo: Path) -> None:
    session = dv.session(MODEL, device="cpu")
    model = session.net.model.double()
    try:
        x = session.preprocess(photo).double()
        result = dv.occlusion(x, model=session, layer="conv3", occluder=8, stride=4, batch_size=5)
        rows, cols = occluder_grid(32, 32, 8, 4)
        assert result.grid == (8, 8)
        acts = dv.DeconvNet(model).activations(x, ["features.6"])["features.6"][0]
        assert result.channel == int(acts.flatten(1).amax(1).argmax())
        with torch.inference_mode():
            top1 = int(model(x).argmax())
        assert result.target == top1
        assert result.target_label == f"class {top1}"
        compared = 0
        for i, r in enumerate(rows):
            for j, c in enumerate(cols):
                y = occluded_images(x, [(r, c)])
                with torch.inference_mode():
                    probs = model(y).softmax(1)[0]
                    feature = dv.DeconvNet(model).activations(y, ["features.6"])["features.6"][0, result.channel]
                assert abs(float(result.activation[i, j]) - float(feature.sum())) <= TOLERANCE * float(
                    feature.abs().sum()
                )
                assert abs(float(result.probability[i, j]) - float(probs[top1])) <= TOLERANCE
                first, second = probs.topk(2).values.tolist()
                if first - second > 1e-6:  # a clear winner: rounding cannot flip it
                    assert int(result.labels[i, j]) == int(probs.argmax())
                    compared += 1
        assert compared >= 0.9 * 64
        assert result.projection is not None
        assert result.projection.channels == (result.channel,)
        assert {c for c, _, _ in result.legend()} == set(result.labels.unique().tolist())
    finally:
        model.float()


def test_a_chosen_channel_is_followed_instead_of_the_strongest(photo: Path) -> None:
    session = dv.session(MODEL, device="cpu")
    x = session.preprocess(photo)
    strongest = dv.occlusion(x, model=session, layer="conv3", occluder=8, stride=8)
    chosen = (strongest.channel + 1) % 8
    result = dv.occlusion(x, model=session, layer="conv3", occluder=8, stride=8, channel=chosen)
    assert result.channel == chosen
    assert result.projection is not None
    assert result.projection.channels == (chosen,)
    rows, cols = occluder_grid(32, 32, 8, 8)
    net = dv.DeconvNet(session.net.model)
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            hidden = occluded_images(x, [(r, c)])
            total = float(net.activations(hidden, ["features.6"])["features.6"][0, chosen].double().sum())
            assert float(result.activation[i, j]) == pytest.approx(total, rel=1e-5, abs=1e-5)
    for bad in (8, -1, True, 1.5):
        with pytest.raises(OcclusionError, match="out of range for layer 'conv3', which has 8 channels"):
            dv.occlusion(x, model=session, layer="conv3", occluder=8, stride=8, channel=bad)


def test_a_given_class_by_index_or_name(photo: Path) -> None:
    by_index = dv.occlusion(photo, model=MODEL, device="cpu", occluder=8, stride=8, target=3)
    by_name = dv.occlusion(photo, model=MODEL, device="cpu", occluder=8, stride=8, target="class 3")
    assert by_index.target == by_name.target == 3
    assert torch.equal(by_index.probability, by_name.probability)


@pytest.mark.parametrize(
    ("target", "message"),
    [
        (5, r"class 5 is out of range: 'tiny-occlusion' has 5 classes \(0-4\)"),  # as render and invariance say it
        ("zebra", "unknown class 'zebra'"),
        (-1, "class -1 is out of range"),
    ],
)
def test_unknown_class(photo: Path, target: object, message: str) -> None:
    with pytest.raises(OcclusionError, match=message):
        dv.occlusion(photo, model=MODEL, device="cpu", occluder=8, stride=8, target=target)  # type: ignore[arg-type]


def test_model_without_classifier_gets_a_and_b_and_says_why(photo: Path) -> None:
    loaded = dv.load_model(MODEL, device="cpu")
    headless = dv.session(dataclasses.replace(loaded, module=loaded.module.features, labels=None, layers={}))
    result = dv.occlusion(photo, model=headless, layer="6", occluder=8, stride=8)
    assert result.probability is None
    assert result.labels is None
    assert result.missing is not None
    assert "classifier head" in result.missing
    assert result.activation.shape == (4, 4)
    _, axes = result.figure()
    assert len(axes) == 4
    assert "no classifier" in axes[3].texts[0].get_text()


def test_save_writes_the_panels_and_manifest(photo: Path, tmp_path: Path) -> None:
    result = dv.occlusion(photo, model=MODEL, device="cpu", occluder=8, stride=4)
    folder = result.save(tmp_path / "noise")
    names = sorted(p.name for p in folder.iterdir())
    assert names == [
        MARKER,
        "activation.csv",
        "labels.csv",
        "manifest.json",
        "occlusion.png",
        "probability.csv",
        "projection.png",
    ]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["kind"] == "occlusion"
    assert manifest["channel"] == result.channel
    assert manifest["target"] == result.target
    grid = np.loadtxt(folder / "probability.csv", delimiter=",")
    assert np.allclose(grid, result.probability.numpy(), rtol=0, atol=1e-15)
    assert result._repr_png_()[:4] == b"\x89PNG"


@pytest.mark.parametrize("method", ["guided", "gradient"])
def test_panel_b_uses_the_chosen_reverse_pass(photo: Path, tmp_path: Path, method: str) -> None:
    session = dv.session(MODEL, device="cpu")
    result = dv.occlusion(photo, model=session, layer="conv3", occluder=8, stride=8, method=method)
    default = dv.occlusion(photo, model=session, layer="conv3", occluder=8, stride=8)
    assert result.method == method
    assert default.method == "deconvnet"
    assert result.projection is not None
    assert default.projection is not None
    assert result.channel == default.channel
    x = session.preprocess(photo)
    want = session.net.project(x, "conv3", result.channel, method=method)
    assert result.projection.method == method
    assert torch.equal(result.projection.image, want.image)
    assert result.projection.boxes is not None
    assert result.projection.boxes == default.projection.boxes
    assert not torch.allclose(result.projection.image, default.projection.image)  # the choice shows
    assert torch.equal(result.activation, default.activation)  # panels (a), (c), (d) do not depend on it
    manifest = json.loads((result.save(tmp_path / "noise") / "manifest.json").read_text())
    assert manifest["method"] == method


def test_panel_b_projects_the_strongest_unit_whose_field_lies_inside(tmp_path: Path) -> None:
    from deconvviz.analysis.choose import inside_flags

    picture = np.zeros((40, 40, 3), np.uint8)
    picture[:6, :6] = 255  # a bright corner: the strongest units of a map sit at the border
    picture[10:30, 10:30] = np.random.default_rng(0).integers(0, 120, (20, 20, 3))
    path = tmp_path / "corner.png"
    Image.fromarray(picture).save(path)
    session = dv.session(MODEL, device="cpu")
    x = session.preprocess(path)
    result = dv.occlusion(path, model=session, layer="conv2", occluder=8, stride=8)
    assert result.projection is not None
    field = dv.receptive_field(session.net, "conv2")
    anywhere = session.net.project(x, "conv2", result.channel)
    assert inside_flags(field, anywhere.positions, x.shape) == (False,)  # the case this test is about
    assert result.projection.prefer_inside
    assert inside_flags(field, result.projection.positions, x.shape) == (True,)
    act = session.net.activations(x, ["conv2"])["conv2"][0, result.channel]
    row, col = result.projection.positions[0]  # the strongest of the units inside
    mask = torch.zeros_like(act, dtype=torch.bool)
    for r in range(act.shape[0]):
        for c in range(act.shape[1]):
            mask[r, c] = inside_flags(field, [(r, c)], x.shape)[0]
    assert float(act[row, col]) == float(act[mask].max())
    want = session.net.project(x, "conv2", result.channel, position=(row, col))
    assert torch.equal(result.projection.image, want.image)


def test_unknown_method_fails_before_any_work(photo: Path) -> None:
    with pytest.raises(dv.MethodError, match="unknown method 'nope'"):
        dv.occlusion(photo, model=MODEL, device="cpu", occluder=8, stride=8, method="nope")


def test_every_legend_label_of_panel_d_lies_inside_the_figure(photo: Path) -> None:
    result = dv.occlusion(photo, model=MODEL, device="cpu", occluder=8, stride=4)
    labels = torch.arange(64).remainder(12).view(8, 8)  # 12 classes: 8 named, the rest "other classes"
    names = {c: f"class {c} with a name as long as a dog breed's" for c in range(12)}
    crowded = dataclasses.replace(result, labels=labels, label_names=names)
    for shown in (result, crowded):
        fig, axes = shown.figure()
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
        legend = axes[4].get_legend()
        texts = [t.get_text() for t in legend.get_texts()]
        want = min(len(shown.legend()), 8) + int(len(shown.legend()) > 8)
        assert len(texts) == want
        page = fig.bbox
        for text in legend.get_texts():
            box = text.get_window_extent(renderer)
            assert page.x0 <= box.x0
            assert box.x1 <= page.x1, text.get_text()
            assert page.y0 <= box.y0
            assert box.y1 <= page.y1, text.get_text()
        panel = axes[4].get_window_extent(renderer)
        assert legend.get_window_extent(renderer).x0 >= panel.x1  # beside (d), not over it
    assert texts[-1] == "other classes"


def test_a_class_that_wins_few_positions_is_not_shown_as_none(photo: Path) -> None:
    result = dv.occlusion(photo, model=MODEL, device="cpu", occluder=8, stride=1)  # 32 x 32 = 1024 positions
    labels = torch.zeros(32, 32, dtype=torch.long)
    labels[0, 0] = 1
    _, axes = dataclasses.replace(result, labels=labels, label_names={0: "dog", 1: "cat"}).figure()
    assert [t.get_text() for t in axes[4].get_legend().get_texts()] == ["dog (>99%)", "cat (<1%)"]


def test_model_is_left_unchanged(photo: Path, unchanged: Callable[[nn.Module], object]) -> None:
    session = dv.session(MODEL, device="cpu")
    state = unchanged(session.net.model)
    dv.occlusion(photo, model=session, occluder=8, stride=8)
    with pytest.raises(OcclusionError):
        dv.occlusion(photo, model=session, occluder=8, stride=8, target=99)
    state.assert_same(session.net.model)  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def others(tmp_path_factory: pytest.TempPathFactory, photo: Path) -> Path:
    """A folder of five noise pictures, the occluded photo among them."""
    folder = tmp_path_factory.mktemp("others")
    rng = np.random.default_rng(7)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(folder / f"other{i}.png")
    (folder / photo.name).write_bytes(photo.read_bytes())
    return folder


def test_unreadable_other_pictures_are_named_as_left_out(photo: Path, others: Path, tmp_path: Path) -> None:
    folder = tmp_path / "with-a-bad-one"
    folder.mkdir()
    for path in others.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "broken.png").write_bytes(b"not a picture")
    result = dv.occlusion(photo, model=MODEL, device="cpu", occluder=8, stride=8, data=folder, k=2)
    assert [image for image, _ in result.others_skipped] == ["broken.png"]
    assert "(1 unreadable left out: broken.png)" in result.summary()
    assert result._manifest()["others"]["skipped"][0]["image"] == "broken.png"


def test_other_pictures_are_the_map_s_top_k_without_the_picture_itself(photo: Path, others: Path) -> None:
    calls: list[tuple[int, int, str]] = []
    result = dv.occlusion(
        others / photo.name,
        model=MODEL,
        device="cpu",
        occluder=8,
        stride=8,
        data=others,
        k=2,
        progress=lambda done, total, what: calls.append((done, total, what)),
    )
    assert result.others_folder == str(others)
    assert result.others_scanned == 4  # five pictures, the occluded one left out
    assert len(result.others) == 2
    assert photo.name not in {o.image for o in result.others}
    # The same as a top-k search of the map over the folder without the picture, projected the same way.
    rest = others.parent / "rest"
    rest.mkdir(exist_ok=True)
    for path in others.iterdir():
        if path.name != photo.name:
            (rest / path.name).write_bytes(path.read_bytes())
    found = dv.top_k(rest, MODEL, layers=[result.layer], k=2, channels=[result.channel], device="cpu")
    expected = found.channel_hits(result.layer, result.channel)
    assert [o.image for o in result.others] == [h.image for h in expected]
    for other, hit in zip(result.others, expected, strict=True):
        assert (other.value, other.position, other.box) == (hit.value, hit.position, hit.box)
        assert torch.equal(other.reconstruction, hit.reconstruction)
        assert other.patch.shape == (*hit.patch.shape[1:], 3)
        assert other.patch.dtype == np.uint8
    # One count of steps: the five pictures scanned, then the occluder's 16 positions.
    assert calls[0] == (0, 5 + 16, "other pictures")
    assert {total for _, total, _ in calls} == {21}
    assert [done for done, _, _ in calls] == sorted(done for done, _, _ in calls)
    assert calls[-1][:2] == (21, 21)
    fig, axes = result.figure()
    shown = [ax for ax in fig.axes if ax.get_images() and not any(ax is a for a in axes)]
    assert len(shown) == 2 * 2  # a projection and a patch per other picture
    fig.draw_without_rendering()
    assert all(ax.get_window_extent().y1 < min(a.get_window_extent().y0 for a in axes) for ax in shown)
    texts = [t.get_text() for t in fig.texts]
    assert any(t.startswith(f"(b) map {result.channel} in other pictures: its 2 strongest") for t in texts)
    silent = dataclasses.replace(result, others=())  # a map that fires in none of the other pictures
    texts = [t.get_text() for t in silent.figure()[0].texts]
    assert f"(b) map {result.channel} does not fire in the 4 other pictures of {others.name}" in texts
    manifest = result._manifest()["others"]
    assert manifest["scanned"] == 4
    assert [h["image"] for h in manifest["hits"]] == [o.image for o in result.others]


def test_other_pictures_need_a_folder_and_a_count(photo: Path, others: Path, tmp_path: Path) -> None:
    with pytest.raises(dv.DeconvVizError, match="folder not found"):
        dv.occlusion(photo, model=MODEL, device="cpu", occluder=8, stride=8, data=tmp_path / "nowhere")
    with pytest.raises(dv.AnalysisError, match="whole number of at least 1"):
        dv.occlusion(photo, model=MODEL, device="cpu", occluder=8, stride=8, data=others, k=0)
    session = dv.session(MODEL, device="cpu")
    with pytest.raises(dv.AnalysisError, match="need the model's preprocessing"):
        dv.occlusion(session.preprocess(photo), model=session.net.model, occluder=8, stride=8, data=others)


# ------------------------------------------------------------------------------------------ command line


def test_cli_writes_one_folder_per_image(photo: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app,
        [
            "occlusion",
            str(photo),
            "--model",
            MODEL,
            "--device",
            "cpu",
            "--occluder",
            "8",
            "--stride",
            "8",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.stderr
    assert (out / "noise" / "occlusion.png").is_file()
    assert "noise.png" in result.stdout
    manifest = json.loads((out / "noise" / "manifest.json").read_text())
    assert manifest["method"] == "deconvnet"


def test_cli_shows_the_map_in_other_pictures(photo: Path, others: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    picture = others / photo.name  # in the folder: left out of the other pictures
    args = ["occlusion", str(picture), "--model", MODEL, "--device", "cpu", "--occluder", "8", "--stride", "8"]
    result = CliRunner().invoke(app, [*args, "--data", str(others), "-k", "3", "--out", str(out)])
    assert result.exit_code == 0, result.stderr
    manifest = json.loads((out / "noise" / "manifest.json").read_text())
    assert manifest["arguments"]["data"] == str(others)
    assert manifest["arguments"]["k"] == 3
    assert manifest["others"]["scanned"] == 4
    assert len(manifest["others"]["hits"]) == 3
    names = [Path(h["image"]).name for h in manifest["others"]["hits"]]
    assert f"in the other pictures: {names[0]} a=" in result.stdout
    missing = CliRunner().invoke(app, [*args, "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o2")])
    assert missing.exit_code == 2
    assert len(missing.stderr.strip().splitlines()) == 1
    assert "folder not found" in missing.stderr
    assert not (tmp_path / "o2").exists()


def test_cli_method_is_passed_to_panel_b_and_recorded(photo: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["occlusion", str(photo), "--model", MODEL, "--device", "cpu", "--occluder", "8", "--stride", "8"]
    result = CliRunner().invoke(app, [*args, "--method", "guided", "--out", str(out)])
    assert result.exit_code == 0, result.stderr
    manifest = json.loads((out / "noise" / "manifest.json").read_text())
    assert manifest["method"] == "guided"
    assert manifest["arguments"]["method"] == "guided"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--occluder", "64"], "larger than the 32x32 image"),
        (["--occluder", "8", "--size", "16"], "--occluder 8 and --size 16 name the same thing"),
        (["--stride", "0"], "stride"),
        (["--class", "7"], "class 7 is out of range"),
        (["--layer", "conv9"], "unknown layer 'conv9'"),
        (["--method", "nope"], "unknown method 'nope'"),
        (["--channel", "9"], "channel 9 is out of range"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2_nothing_written(
    photo: Path, tmp_path: Path, options: list[str], message: str
) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app, ["occlusion", str(photo), "--model", MODEL, "--device", "cpu", "--out", str(out), *options]
    )
    assert result.exit_code == 2, result.stdout + result.stderr
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_the_default_layer_is_the_deepest_of_features_not_the_class_score_maps() -> None:
    from deconvviz.core.layers import default_layers, score_maps

    torch.manual_seed(0)
    model = nn.Sequential(  # a fully convolutional classifier of 5 classes, as SqueezeNet's conv10
        nn.Conv2d(3, 5, 3, padding=1),  # 0: 5 channels too, but weights follow: features
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(5, 8, 3, padding=1),
        nn.ReLU(),  # 4: the deepest features
        nn.Conv2d(8, 5, 1),
        nn.ReLU(),  # 6: one map per class, reaching the scores through pooling alone
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    ).eval()
    net = dv.DeconvNet(model)
    x = torch.rand(1, 3, 32, 32)
    assert default_layers(net, x) == ["1", "6"]
    assert score_maps(net, ["1", "4", "6"], 5, {"1": 5, "4": 8, "6": 5}) == ["6"]
    assert default_layers(net, x, classes=5) == ["1", "4"]
    result = dv.occlusion(x, model=model, occluder=8, stride=8)
    assert result.layer == "4"
    assert result.probability is not None  # the class scores still give panels (c) and (d)
    assert dv.occlusion(x, model=model, layer="6", occluder=8, stride=8).layer == "6"  # named, it is followed


def test_the_occluders_earlier_name_still_works_and_warns(photo: Path, tmp_path: Path) -> None:
    import deconvviz.errors

    deconvviz.errors._WARNED.discard("occlusion(size=...) for the occluder's side")
    with pytest.deprecated_call(match=r"occlusion\(size=\.\.\.\) for the occluder's side is deprecated"):
        old = dv.occlusion(photo, model=MODEL, device="cpu", size=8, stride=8)
    new = dv.occlusion(photo, model=MODEL, device="cpu", occluder=8, stride=8)
    assert torch.equal(old.activation, new.activation)
    with pytest.raises(OcclusionError, match="occluder=8 and size=16 name the same thing"):
        dv.occlusion(photo, model=MODEL, device="cpu", occluder=8, size=16)
    args = ["occlusion", str(photo), "--model", MODEL, "--device", "cpu", "--size", "8", "--stride", "8"]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.stderr
    assert "warning: occlusion --size is the occluder's side for this release only; write --occluder 8" in result.stderr
    assert json.loads((tmp_path / "o" / "noise" / "manifest.json").read_text())["arguments"]["occluder"] == 8
