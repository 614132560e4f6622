"""Which layers a reverse pass can reach the picture from, found by running passes, as ``deconvviz layers`` marks them.

A window attention of the Swin kind regroups the batch into windows, which no rule mirrors (a seed's row of the
batch is no longer one row): every layer above it is marked with the op it stops at, every layer below stays
projectable, and a plain or gated CNN (whose gates pass no signal down under the deconvnet) has none marked and
needs few passes.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import deconvviz as dv
from deconvviz.cli import app
from deconvviz.core import walk
from deconvviz.core.layers import reverse_stops
from deconvviz.errors import UnsupportedOpError


class Windows(nn.Module):
    """Attention inside 2x2 windows of the map, the windows stacked along the batch (as Swin's blocks do)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        windows = x.reshape(n, c, 2, h // 2, 2, w // 2).permute(0, 2, 4, 1, 3, 5).reshape(n * 4, c, h // 2, w // 2)
        tokens = windows.flatten(2)
        weights = torch.softmax(tokens.transpose(1, 2) @ tokens, dim=-1)
        mixed = (tokens @ weights).reshape(n, 2, 2, c, h // 2, w // 2)
        return mixed.permute(0, 3, 1, 4, 2, 5).reshape(n, c, h, w)


class Gate(nn.Module):
    """A squeeze-and-excitation gate: under the deconvnet no signal goes down its branch."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.fc = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.fc(x.mean((2, 3), keepdim=True)))


def _net(middle: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), middle, nn.Conv2d(4, 4, 3, padding=1), nn.ReLU()
    ).double()


def _x() -> torch.Tensor:
    return torch.rand(1, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


def test_the_layers_above_an_op_no_pass_mirrors_are_marked_with_it() -> None:
    net = dv.DeconvNet(_net(Windows()).eval())
    stops = reverse_stops(net, _x())
    assert {"0", "1"}.isdisjoint(stops)  # below the windows: projectable
    assert {"3", "4"} <= set(stops)
    reasons = {stops["3"], stops["4"]}
    assert len(reasons) == 1
    assert reasons.pop().startswith("cannot mirror node '2.")  # the op inside the window block it stopped at
    for layer in net.layers:  # what the marks say is what projecting them does
        act = net.activations(_x(), [layer])[layer]
        if layer in stops:
            with pytest.raises(UnsupportedOpError, match="cannot mirror node"):
                net.project_seeds(_x(), layer, torch.ones((1, *act.shape[1:]), dtype=act.dtype))
        else:
            net.project_seeds(_x(), layer, torch.ones((1, *act.shape[1:]), dtype=act.dtype))
    assert "2.softmax" not in stops  # inside the block, but its pass is held at the weights: it projects (zero)


def test_a_gated_cnn_has_no_layer_marked_and_takes_few_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    passes = []
    real = walk.mirror

    def counted(*args, **kwargs):
        passes.append(args[0].names[args[2]])
        return real(*args, **kwargs)

    monkeypatch.setattr(walk, "mirror", counted)
    net = dv.DeconvNet(_net(Gate(4)).eval())
    assert reverse_stops(net, _x()) == {}
    # The deepest layer's pass settles every layer it goes through; the gate's branch, which it does not enter
    # under the deconvnet, takes passes of its own.
    assert passes[0] == "4"
    assert len(passes) < len(net.layers) // 2


def test_the_layers_command_marks_them_none_and_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    dv.register_model(
        dv.ModelSpec(
            name="tiny-windows", builder=lambda: _net(Windows()).float(), preprocessing=dv.Preprocessing(size=8)
        ),
        replace=True,
    )
    result = CliRunner().invoke(app, ["layers", "--model", "tiny-windows"])
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    net = dv.DeconvNet(_net(Windows()).eval())
    stops = reverse_stops(net, _x())
    reach = len(net.layers) - len(stops)
    assert (
        lines[0]
        == f"tiny-windows: {reach} projectable layers for a 8x8 input, and {len(stops)} that cannot be (marked none)"
    )
    rows = {line.split()[0]: line.split() for line in lines[2:] if line.strip() and not line[0].isdigit()}
    assert rows["0"][-1] == "rule"
    assert rows["4"][-1] == "none"
    assert "marked 'none' cannot be projected" in result.stdout
    assert "the first: cannot mirror node '2." in result.stdout


class Through(nn.Module):
    """A map read back from a tuple or a complex value: ``torch.sort(...).values``, ``torch.max(x, 1).values``,
    ``torch.fft.fft2(x).real``."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "sort":
            return torch.sort(x, dim=1).values
        if self.kind == "max":
            return torch.max(x, dim=1, keepdim=True).values.expand_as(x)
        return torch.fft.fft2(x).real


@pytest.mark.parametrize("kind", ["sort", "max", "fft"])
def test_layers_after_values_or_real_are_layers_and_project_exactly(kind: str) -> None:
    model = _net(Through(kind)).eval()
    net = dv.DeconvNet(model)
    assert {"3", "4"} <= set(net.layers)  # the layers after `.values` / `.real` depend on the picture
    x = _x()
    assert reverse_stops(net, x, ["3", "4"]) == {}
    act = net.activations(x, ["4"])["4"]
    seeds = torch.zeros_like(act)
    seeds[0, 1, 3, 4] = 1.0
    found = net.project_seeds(x, "4", seeds, method="gradient")
    leaf = x.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(model(leaf)[0, 1, 3, 4], leaf)
    assert torch.allclose(found, expected, rtol=1e-9, atol=1e-12)


def test_an_unknown_name_suggests_one_in_another_case_and_an_alias_of_nothing_says_so() -> None:
    net = dv.DeconvNet(_net(nn.Identity()).eval())
    net.aliases.update({"conv1": "0", "stage0": "stem"})
    with pytest.raises(dv.DeconvVizError, match="did you mean 'conv1'"):
        net.resolve("CONV1")
    with pytest.raises(dv.DeconvVizError, match="it is an alias of 'stem', which the traced model has no") as told:
        net.resolve("stage0")
    assert "'stage0'?" not in str(told.value)  # the name refused is not offered back


class Floor(nn.Module):
    """An op whose gradient is zero wherever it is defined: nothing comes back through it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.floor(x * 4) / 4


def test_a_unit_that_fires_but_sends_nothing_back_is_named(tmp_path) -> None:
    from PIL import Image

    dv.register_model(
        dv.ModelSpec(name="tiny-floor", builder=lambda: _net(Floor()).float(), preprocessing=dv.Preprocessing(size=8)),
        replace=True,
    )
    picture = tmp_path / "a.png"
    Image.fromarray((torch.rand(8, 8, 3, generator=torch.Generator().manual_seed(2)) * 255).byte().numpy()).save(
        picture
    )
    with pytest.warns(UserWarning, match=r"a\.png: 4 ch .*: the unit fires but its reconstruction is all zero"):
        dv.render_images([picture], tmp_path / "out", model="tiny-floor", layers="4", top=2, device="cpu")


def test_the_explorer_offers_only_layers_whose_pass_reaches_the_picture(tmp_path) -> None:
    pytest.importorskip("starlette")
    from PIL import Image

    from deconvviz.explore.engine import Explorer

    dv.register_model(
        dv.ModelSpec(
            name="tiny-windows", builder=lambda: _net(Windows()).float(), preprocessing=dv.Preprocessing(size=8)
        ),
        replace=True,
    )
    Image.new("RGB", (8, 8), (90, 30, 200)).save(tmp_path / "a.png")
    explorer = Explorer("tiny-windows", tmp_path, device="cpu", scan=False, state_root=tmp_path / "state")
    try:
        offered = {layer["node"] for layer in explorer.worker.call(explorer.layers)}
    finally:
        explorer.close()
    stops = reverse_stops(dv.DeconvNet(_net(Windows()).eval()), _x())
    assert {"0", "1"} <= offered
    assert not offered & set(stops)


def test_the_layers_command_says_autograd_in_its_table_not_in_a_warning_per_op() -> None:
    dv.register_model(
        dv.ModelSpec(name="tiny-floor", builder=lambda: _net(Floor()).float(), preprocessing=dv.Preprocessing(size=8)),
        replace=True,
    )
    result = CliRunner().invoke(app, ["layers", "--model", "tiny-floor"])
    assert result.exit_code == 0, result.stderr
    assert "has no mirror rule" not in result.stderr
    assert "autograd" in result.stdout


class Fuse(nn.Module):
    """A high-resolution branch and an upsampled low-resolution one, added (as HRNet's fusions are)."""

    def __init__(self) -> None:
        super().__init__()
        self.hi = nn.Conv2d(3, 4, 3, padding=1)
        self.lo = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.out = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        low = torch.nn.functional.interpolate(torch.relu(self.lo(x)), scale_factor=2.0)
        return self.out(torch.relu(self.hi(x)) + low)


def test_the_layers_command_says_what_a_field_of_question_mark_means() -> None:
    dv.register_model(
        dv.ModelSpec(name="tiny-fuse", builder=Fuse, preprocessing=dv.Preprocessing(size=16)), replace=True
    )
    result = CliRunner().invoke(app, ["layers", "--model", "tiny-fuse"])
    assert result.exit_code == 0, result.stderr
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines()[2:] if line.startswith(" ")}
    assert rows["add"][2] == "?"
    assert "2 layer(s) with receptive field '?': it cannot be worked out there (maps of different strides" in (
        " ".join(result.stdout.split())
    )
