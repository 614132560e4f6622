"""The steps of a projection: each step's signal is the autograd vector-Jacobian product at its node (float64,
tiny nets, every method), the last one is the projection's image, unpooling puts values only at the switches,
and the figure, the saved folder and the command line work."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
from conftest import TINY_ALIASES, make_tiny_vgg, register_tiny_model
from PIL import Image
from reference import node_signals, relative_error, unit_seeds
from torch import nn
from typer.testing import CliRunner

import deconvviz as dv
from deconvviz.cli import app
from deconvviz.core.seeds import SeedError
from deconvviz.errors import RenderError

matplotlib.use("Agg")

TOLERANCE = 1e-10
METHODS = ("deconvnet", "guided", "gradient")


class Branchy(nn.Module):
    """Batch norm, overlapping max-pooling, a residual add, a concatenation and a reshape at toy size."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(3, 2, padding=1)  # overlapping windows: switches may coincide and sum
        self.inner = nn.Conv2d(4, 4, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.left = nn.Conv2d(4, 3, 1)
        self.right = nn.Conv2d(4, 2, 3, padding=1)
        self.pool2 = nn.MaxPool2d(2)
        self.head = nn.Conv2d(5, 6, 3, padding=1)
        self.relu3 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.relu(self.bn(self.stem(x))))
        x = self.relu2(self.inner(x)) + x
        x = torch.cat([self.left(x), self.right(x)], 1)
        x = self.pool2(x)
        x = x.reshape(x.shape[0], 5, -1).reshape(x.shape[0], 5, 4, 4)
        return self.relu3(self.head(x))


def make_branchy() -> Branchy:
    generator = torch.Generator().manual_seed(3)
    model = Branchy()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.5)
        model.bn.running_mean.copy_(torch.randn(4, generator=generator) * 0.2)
        model.bn.running_var.copy_(torch.rand(4, generator=generator) + 0.5)
    return model.eval().double()


NETS = {
    "tinyvgg": (lambda: make_tiny_vgg(dtype=torch.float64), "features.7", 16),
    "branchy": (make_branchy, "relu3", 16),
}


@pytest.fixture(scope="module", params=sorted(NETS))
def net_case(request: pytest.FixtureRequest):
    build, layer, side = NETS[request.param]
    model = build()
    x = torch.randn(1, 3, side, side, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    return request.param, model, x, layer


@pytest.mark.parametrize("method", METHODS)
def test_every_step_is_the_vector_jacobian_product_at_its_node(net_case, method: str) -> None:
    name, model, x, layer = net_case
    net = dv.DeconvNet(model)
    p = net.project(x, layer, channel=[0, 2, 3], method=method, steps="all")
    steps = p.steps
    assert steps is not None
    assert steps.seeds == (0, 1, 2)
    activation = net.activations(x, [layer])[layer]
    seeds = unit_seeds(activation, list(p.channels), list(p.positions))
    expected = node_signals(model, x, layer, [s.node for s in steps], seeds, method)
    for step in steps:
        assert step.signal.dtype == torch.float64
        assert step.signal.shape == (3, *step.shape)
        assert expected[step.node].abs().max() > 0 or step.signal.abs().max() == 0
        error = relative_error(step.signal, expected[step.node])
        assert error <= TOLERANCE, f"{name} {method} step {step.index} at {step.node}: relative error {error:.2e}"


def test_steps_run_from_the_seed_to_the_input_and_end_at_the_image(net_case) -> None:
    _name, model, x, layer = net_case
    net = dv.DeconvNet(model)
    p = net.project(x, layer, channel=[1, 4], steps="all")
    steps = p.steps
    assert steps is not None
    assert steps[0].kind == "seed"
    assert steps[0].node == steps.node
    assert steps[0].ops == ()
    assert steps[-1].node == "x"
    assert torch.equal(steps[-1].signal, p.image)  # exactly, not approximately
    assert [s.index for s in steps] == list(range(len(steps)))
    for step in steps[1:]:  # every op that made a signal was visited before: its output is an earlier step
        assert all(any(earlier.node == op for earlier in steps.steps[: step.index]) for op in step.ops)
    # the seed is the unit's own activation, zero elsewhere
    seed = steps[0].signal[0]
    assert int((seed != 0).sum()) == 1
    assert float(seed.max()) == pytest.approx(float(p.activations[0]))


def test_kinds_name_the_mirrored_ops() -> None:
    model = make_branchy()
    x = torch.randn(1, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    p = dv.DeconvNet(model).project(x, "relu3", channel=1, steps=True)
    assert p.steps is not None
    by_node = {s.node: s for s in p.steps}
    assert by_node["head"].kinds == ("rectify",)  # made by undoing relu3
    assert by_node["reshape_1"].kinds == ("transposed convolution",)
    assert by_node["reshape"].kinds == ("reshape",)
    assert by_node["reshape"].shape == (5, 16)
    assert by_node["cat"].kinds == ("unpool",)
    assert by_node["left"].kinds == ("concat split",)
    assert by_node["right"].ops == ("cat",)
    assert by_node["relu2"].kinds == ("add",)
    assert by_node["bn"].kinds == ("rectify",)
    assert by_node["stem"].kinds == ("norm",)
    # the sum feeds both convolutions, the pooled map the inner branch and the skip: their signals are summed
    assert by_node["add"].kind == "sum"
    assert by_node["add"].kinds == ("transposed convolution",) * 2
    assert by_node["pool"].kind == "sum"
    assert set(by_node["pool"].kinds) == {"transposed convolution", "add"}
    assert p.steps.before(by_node["pool"]) is None
    assert p.steps.before(by_node["relu"]) is by_node["pool"]
    # "sum", as the summary counts these steps, picks them for the figure too
    fig, _axes = p.steps.figure(only=["sum"], detail=False)
    assert "(4 of its" in fig._suptitle.get_text()  # the seed, the two sums, the reconstruction
    guided = dv.DeconvNet(model).project(x, "relu3", channel=1, steps=True, method="gradient")
    assert guided.steps is not None
    assert {s.node: s for s in guided.steps}["head"].kinds == ("mask",)
    assert "unpool" in repr(p.steps)
    assert p.steps.to_dict()["steps"][0]["kind"] == "seed"
    json.dumps(p.steps.to_dict())


class TokenMixer(nn.Module):
    """A convolution, multi-head attention over its positions (a tuple-valued op), another convolution."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.mix = nn.MultiheadAttention(8, 2, batch_first=True)
        self.conv = nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        n, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)
        mixed, _ = self.mix(tokens, tokens, tokens)
        return self.conv(x + mixed.transpose(1, 2).reshape(n, c, h, w))


def test_a_tuple_valued_op_names_the_step_it_makes() -> None:
    torch.manual_seed(0)
    model = TokenMixer().double().eval()
    x = torch.randn(1, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    p = dv.DeconvNet(model).project(x, "conv", channel=1, steps=True)
    assert p.steps is not None
    assert [s.kind for s in p.steps].count("seed") == 1  # only the first: every later step names what made it
    by_node = {s.node: s for s in p.steps}
    assert by_node["transpose"].ops == ("mix",)  # the attention's output is a tuple: no step of its own
    assert by_node["transpose"].kinds == ("attention",)


def test_unpooling_steps_are_zero_off_the_switches(net_case) -> None:
    _name, model, x, layer = net_case
    p = dv.DeconvNet(model).project(x, layer, channel=[0, 3], steps="all")
    assert p.steps is not None
    unpooled = [s for s in p.steps if s.kind == "unpool"]
    assert len(unpooled) == 2
    for step in unpooled:
        assert step.switches is not None
        assert step.switches.shape[:2] == (2, step.shape[0])
        before = p.steps.before(step)
        assert before is not None
        assert step.switches.shape[2:] == before.shape[1:]
        for i in range(2):
            mask = step.switch_mask(i)
            assert mask is not None
            assert mask.shape == step.shape
            assert torch.all(step.signal[i][~mask] == 0)
            # every pooled value went to its switch: the unpooled signal sums to the pooled one, per channel
            torch.testing.assert_close(step.signal[i].sum((1, 2)), before.signal[i].sum((1, 2)))
            assert bool(mask.any())
            assert not bool(mask.all())


def test_by_default_one_seed_is_kept_and_the_normal_path_is_unchanged(tiny_vgg, image_16, unchanged) -> None:
    state = unchanged(tiny_vgg)
    net = dv.DeconvNet(tiny_vgg, aliases=TINY_ALIASES)
    plain = net.project(image_16, "conv3", channel=[0, 1, 2])
    assert plain.steps is None
    p = net.project(image_16, "conv3", channel=[0, 1, 2], steps=True)
    assert torch.equal(p.image, plain.image)
    assert p.steps is not None
    assert p.steps.seeds == (0,)
    assert all(s.signal.shape[0] == 1 for s in p.steps)
    assert all(s.signal.device.type == "cpu" for s in p.steps)
    assert p.steps[0].alias == "conv3"
    assert p.steps.name_of("features.6") == "conv3"
    picked = net.project(image_16, "conv3", channel=[0, 1, 2], steps=[2])
    assert picked.steps is not None
    assert picked.steps.seeds == (2,)
    assert torch.equal(picked.steps[-1].signal, plain.image[2:])
    state.assert_same(tiny_vgg)


def test_batched_and_one_by_one_steps_agree(image_16) -> None:
    model = make_tiny_vgg()
    one = dv.DeconvNet(model, max_batch=1).project(image_16, "features.6", channel=[0, 5, 7], steps="all")
    two = dv.DeconvNet(model, max_batch=2).project(image_16, "features.6", channel=[0, 5, 7], steps="all")
    assert one.steps is not None
    assert two.steps is not None
    assert [s.node for s in one.steps] == [s.node for s in two.steps]
    for a, b in zip(one.steps, two.steps, strict=True):
        torch.testing.assert_close(a.signal, b.signal)
        assert (a.switches is None) == (b.switches is None)


@pytest.mark.parametrize("bad", ["some", 3, [0, 5], -1, []])
def test_a_bad_steps_choice_is_a_seed_error(tiny_vgg, image_16, bad) -> None:
    with pytest.raises(SeedError, match="steps"):
        dv.DeconvNet(tiny_vgg).project(image_16, "features.6", channel=[0, 1], steps=bad)


def test_long_column_titles_are_broken_into_lines_that_fit() -> None:
    from deconvviz.viz.steps import _fit

    assert _fit("conv3_2") == "conv3_2"
    assert _fit("features.12.expand1x1_activation") == "features.12.expand1x1_\nactivation"
    assert _fit("2 x transposed convolution + rectify") == "2 x transposed convolution\n+ rectify"
    for text in ("features.12.expand1x1_activation", "2 x transposed convolution + rectify", "a.b_c d" * 9):
        lines = _fit(text).split("\n")
        assert all(len(line) <= 26 for line in lines)
        joined = lines[0]
        for line in lines[1:]:  # a break after a dot or an underscore keeps it; a break at a space drops the space
            joined += line if joined.endswith((".", "_")) else " " + line
        assert joined == text


def test_the_figure_draws_every_step(tiny_vgg, image_16) -> None:
    p = dv.DeconvNet(tiny_vgg, aliases=TINY_ALIASES).project(image_16, "conv3", channel=2, steps=True)
    assert p.steps is not None
    _fig, axes = p.steps.figure(channels=2, columns=4)
    count = len(p.steps)
    bands = -(-count // 4)
    assert axes.shape == (bands * 4, 4)  # per band: sums, two channel rows, details
    titles = [ax.get_title() for ax in axes.flat]
    assert titles[0].startswith("seed\nconv3 ch 2")
    assert sum(t.startswith("unpool\npool1") for t in titles) == 1  # conv3 lies above one pooling
    assert sum("switches (o)" in t for t in titles) == 1
    assert any("what was cut" in t for t in titles)
    assert titles[(bands - 1) * 4 * 4 + (count - 1) % 4].endswith("as rendered")
    with pytest.raises(RenderError, match="seed"):
        p.steps.figure(seed=1)
    for options, needle in (
        ({"seed": "0"}, "seed '0' is out of range"),
        ({"columns": 0}, "columns must be a whole number"),
        ({"columns": "a"}, "columns must be a whole number"),
        ({"size": -1.0}, "size must be a number of inches above 0"),
        ({"channels": 1.5}, "channels must be a whole number"),
    ):
        with pytest.raises(RenderError, match=needle):
            p.steps.figure(**options)
    assert p.steps._repr_png_().startswith(b"\x89PNG")


def test_the_figure_draws_only_the_kinds_asked_for(tiny_vgg, image_16) -> None:
    p = dv.DeconvNet(tiny_vgg, aliases=TINY_ALIASES).project(image_16, "conv3", channel=2, steps=True)
    assert p.steps is not None
    fig, axes = p.steps.figure(only=["unpool"], detail=False)
    titles = [ax.get_title() for ax in axes.flat if ax.get_title()]
    assert len(titles) == 3  # the seed, the one unpooling, the reconstruction
    assert titles[0].startswith("seed")
    assert titles[1].startswith("unpool")
    assert titles[2].endswith("as rendered")
    assert f"(3 of its {len(p.steps)} steps: unpool)" in fig._suptitle.get_text()
    _fig, axes = p.steps.figure(only=["RECTIFY", "transposed"], detail=False)  # any case, any word of a kind
    kinds = [t.split("\n")[0] for t in (ax.get_title() for ax in axes.flat) if t]
    assert set(kinds[1:-1]) <= {"rectify", "transposed convolution"}
    with pytest.raises(RenderError, match=r"no step of this projection is of the kind\(s\) 'banana'; its kinds: "):
        p.steps.figure(only=["banana"])
    with pytest.raises(RenderError, match="only= takes words of step kinds"):
        p.steps.figure(only="unpool")  # type: ignore[arg-type]


def test_saved_folder_has_the_figure_a_picture_per_step_and_a_manifest(tiny_vgg, image_16, tmp_path: Path) -> None:
    p = dv.DeconvNet(tiny_vgg, aliases=TINY_ALIASES).project(image_16, "conv3", channel=2, steps=True)
    assert p.steps is not None
    folder = p.steps.save(tmp_path / "out", arguments={"channel": 2})
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["kind"] == "steps"
    assert manifest["arguments"] == {"channel": 2}
    entries = manifest["steps"]["steps"]
    assert len(entries) == len(p.steps)
    assert (folder / "figure.png").is_file()
    for entry, step in zip(entries, p.steps, strict=True):
        picture = Image.open(folder / entry["file"])
        assert picture.size[0] == step.shape[-1] * entry["enlarged"]
        assert entry["kind"] == step.kind
        assert entry["shape"] == list(step.shape)
        # the file names the op the step undid, as the figure's column does (the seed: its node)
        named = step.ops[0] if len(step.ops) == 1 else step.node
        assert entry["file"].endswith(f"-{named}.png"), (entry["file"], step)
    assert entries[-1]["file"].endswith("-features.0.png")  # the first convolution, not the input
    assert entries[-1]["picture"] == "reconstruction"


# ------------------------------------------------------------------------------------------- command line

MODEL = "tiny-steps"


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    register_tiny_model(MODEL)
    path = tmp_path_factory.mktemp("photos") / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(path)
    return path


def steps_cli(*args: object) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["steps", "--model", MODEL, "--device", "cpu", *map(str, args)])
    return result.exit_code, result.stdout, result.stderr


def test_cli_writes_the_figure_the_steps_and_a_manifest(photo: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    code, stdout, stderr = steps_cli(photo, "--layer", "conv3", "--channel", "5", "--out", out, "--show-channels", "2")
    assert code == 0, stderr
    assert "conv3 channel 5" in stdout
    assert "unpool" in stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["arguments"]["channel"] == 5
    assert manifest["steps"]["channels"] == [5]
    files = sorted(str(p.relative_to(out)) for p in (out / "steps").glob("*.png"))
    assert files == sorted(entry["file"] for entry in manifest["steps"]["steps"])
    assert (out / "figure.png").is_file()
    code, _stdout, stderr = steps_cli(photo, "--layer", "conv2", "--method", "guided", "--out", out)
    assert code == 0, stderr  # an earlier result folder is replaced
    assert json.loads((out / "manifest.json").read_text())["steps"]["method"] == "guided"


def test_cli_only_draws_those_kinds_and_writes_every_step(photo: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    code, _stdout, stderr = steps_cli(photo, "--layer", "conv3", "--channel", "5", "--only", "unpool", "--out", out)
    assert code == 0, stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["arguments"]["only"] == ["unpool"]
    assert len(list((out / "steps").glob("*.png"))) == len(manifest["steps"]["steps"])
    code, _stdout, stderr = steps_cli(photo, "--layer", "conv3", "--only", "banana", "--out", tmp_path / "none")
    assert code == 2
    assert stderr.startswith("error: no step of this projection is of the kind(s) 'banana'; its kinds: ")
    assert not (tmp_path / "none").exists()


def test_cli_seeds_the_unit_given_by_its_position(photo: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    code, _stdout, stderr = steps_cli(photo, "--layer", "conv3", "--channel", "2", "--position", "3,4", "--out", out)
    assert code == 0, stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["arguments"]["position"] == [3, 4]
    expected = dv.visualize(photo, MODEL, "conv3", channel=2, position=(3, 4), steps=True, device="cpu")
    assert expected.steps is not None
    assert expected.positions == ((3, 4),)
    assert len(manifest["steps"]["steps"]) == len(expected.steps)


def test_cli_refuses_a_unit_that_is_zero(photo: Path, tmp_path: Path) -> None:
    net = dv.DeconvNet(dv.load_model(MODEL))
    x = dv.load_model(MODEL).preprocess(photo)
    act = net.activations(x, ["conv3"])["conv3"][0]
    zeros = (act == 0).nonzero().tolist()
    assert zeros, "the tiny net's conv3 has silent units on the photo"
    channel, row, col = zeros[0]
    out = tmp_path / "out"
    code, _stdout, stderr = steps_cli(
        photo, "--layer", "conv3", "--channel", str(channel), "--position", f"{row},{col}", "--out", out
    )
    assert code == 2
    assert stderr.strip().splitlines() == [
        f"error: unit ({row}, {col}) of channel {channel} of conv3 is 0 on this picture: nothing reaches the input; "
        "leave --position out for the channel's strongest unit"
    ]
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["{missing}", "--layer", "conv3"], ["nope.jpg", "not found"]),
        (["{photo}", "--layer", "conv9"], ["conv9"]),
        (["{photo}", "--layer", "conv3", "--channel", "8"], ["channel 8", "out of range"]),
        (["{photo}", "--layer", "conv3", "--method", "magic"], ["magic"]),
        (["{photo}", "--layer", "conv3", "--position", "99,0"], ["(99, 0)", "outside the 16x16 map"]),
        (["{photo}", "--layer", "conv3", "--position", "middle"], ["--position takes ROW,COL", "middle"]),
    ],
)
def test_cli_bad_input_is_one_line(photo: Path, tmp_path: Path, args: list[str], needles: list[str]) -> None:
    out = tmp_path / "out"
    filled = [a.format(photo=photo, missing=tmp_path / "nope.jpg") for a in args]
    code, stdout, stderr = steps_cli(*filled, "--out", out)
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: "), stderr
    assert "Traceback" not in stdout + stderr
    for needle in needles:
        assert needle in lines[0]
    assert not out.exists()


def test_visualize_keeps_the_steps_of_units_chosen_inside_the_picture(photo: Path) -> None:
    p = dv.visualize(photo, MODEL, "conv3", top=3, steps="all", device="cpu")
    assert p.prefer_inside  # units chosen one by one, inside the picture: each seed's steps from its own walk
    assert p.steps is not None
    assert p.steps.seeds == (0, 1, 2)
    assert p.steps.channels == p.channels
    assert p.steps.positions == p.positions
    assert torch.equal(p.steps[-1].signal, p.image)
    first = dv.visualize(photo, MODEL, "conv3", top=3, steps=True, device="cpu")
    assert first.steps is not None
    assert first.steps.seeds == (0,)
    torch.testing.assert_close(first.steps[3].signal, p.steps[3].signal[:1])
    with pytest.raises(dv.DeconvVizError, match="class score"):
        dv.visualize(photo, MODEL, target="auto", steps=True, device="cpu")
