"""``NAME:timm`` models and ``--checkpoint``: timm's data config and stage names, checkpoints in every wrapping and
format, one-line errors, and the command line, all offline."""

from __future__ import annotations

import json
import sys
import textwrap
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
import torchvision
from PIL import Image
from safetensors.torch import save_file
from torch import nn
from typer.testing import CliRunner

import deconvviz as dv
from deconvviz.cli import app
from deconvviz.models.specs import ModelError, UnknownModelError
from deconvviz.models.weights.sources import WeightsFormatError, WeightsUnavailableError, matching_prefix
from deconvviz.models.zoo import resolve_spec

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
PHOTO = EXAMPLES / "cat.jpg"


@pytest.fixture(scope="module")
def timm() -> object:
    return pytest.importorskip("timm")


@pytest.fixture(scope="module")
def resnet18_state(timm: object) -> dict[str, torch.Tensor]:
    torch.manual_seed(3)
    return timm.create_model("resnet18").state_dict()  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def weights_pt(resnet18_state: dict[str, torch.Tensor], tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("checkpoints") / "weights.pt"
    torch.save(resnet18_state, path)
    return path


@pytest.fixture
def no_timm(monkeypatch: pytest.MonkeyPatch) -> None:
    """``import timm`` fails, as it does where timm is not installed."""
    for name in [n for n in sys.modules if n == "timm" or n.startswith("timm.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "timm", None)


@pytest.fixture
def offline_timm(timm: object, monkeypatch: pytest.MonkeyPatch) -> None:
    """timm's pretrained download fails as it does without a network; building without weights still works."""
    real = timm.create_model  # type: ignore[attr-defined]

    def create_model(name: str, pretrained: bool = False, **kwargs: object) -> nn.Module:
        if pretrained:
            raise OSError("An error happened while trying to locate the file on the Hub. Check your connection.")
        return real(name, pretrained=False, **kwargs)

    monkeypatch.setattr(timm, "create_model", create_model)


def one_line_error(result: object) -> str:
    assert result.exit_code == 2, result.output  # type: ignore[attr-defined]
    lines = result.stderr.strip().splitlines()  # type: ignore[attr-defined]
    assert len(lines) == 1, result.stderr  # type: ignore[attr-defined]
    assert lines[0].startswith("error: ")
    return lines[0]


# ----------------------------------------------------------------------------------------------- NAME:timm


def test_timm_spec_prepares_pictures_as_timm_does(timm: object) -> None:
    spec = resolve_spec("resnet18:timm")
    assert spec.name == "resnet18:timm"
    pre = spec.preprocessing
    # timm's resnet18 (a1_in1k): 224 px, crop_pct 0.95 -> shorter side floor(224 / 0.95) = 235, bicubic
    assert (pre.size, pre.resize, pre.interpolation) == (224, 235, "bicubic")
    assert pre.mean == pytest.approx((0.485, 0.456, 0.406))
    assert pre.std == pytest.approx((0.229, 0.224, 0.225))
    assert pre.scale == pytest.approx(1 / 255)
    assert spec.weights_source == "timm resnet18.a1_in1k pretrained (timm/resnet18.a1_in1k)"
    labels = spec.class_names()
    assert labels is not None
    assert len(labels) == 1000
    assert labels[0] == "tench"

    other = resolve_spec("cspdarknet53:timm").preprocessing  # 256 px, crop_pct 0.887, bilinear
    assert (other.size, other.resize, other.interpolation) == (256, 288, "bilinear")


def test_timm_pretrained_tags_in_either_form(timm: object) -> None:
    dotted = resolve_spec("convnext_tiny.fb_in22k:timm")
    colon = resolve_spec("convnext_tiny:timm:fb_in22k")
    for spec in (dotted, colon):
        assert spec.weights_source == "timm convnext_tiny.fb_in22k pretrained (timm/convnext_tiny.fb_in22k)"
        assert spec.preprocessing.resize == 256  # crop_pct 0.875 for this tag, 0.95 for the default one
    assert resolve_spec("convnext_tiny:timm").preprocessing.resize == 235


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("resnt18:timm", r"timm has no model 'resnt18': did you mean 'resnet18:timm'"),
        ("resnet18.nope:timm", r"timm resnet18 has no pretrained tag 'nope'; choose one of a1_in1k, .*tv_in1k"),
        ("resnet18.a1_in1k:timm:tv_in1k", r"already names a pretrained tag"),
        ("resnet18:timm:a:b", r"write NAME:timm or NAME:timm:TAG"),
    ],
)
def test_timm_names_that_do_not_resolve(timm: object, name: str, message: str) -> None:
    with pytest.raises(UnknownModelError, match=message):
        resolve_spec(name)


def test_timm_stage_aliases_come_from_feature_info(weights_pt: Path) -> None:
    m = dv.load_model("resnet18:timm", checkpoint=weights_pt, size=64)
    assert m.labels is not None
    assert m.labels[0] == "tench"  # 1000 classes, as the checkpoint has: timm's ImageNet names stay
    assert m.layers == {
        "stage0": "act1",
        "stage1": "layer1",
        "stage2": "layer2",
        "stage3": "layer3",
        "stage4": "layer4",
    }
    net = dv.DeconvNet(m)
    x = m.preprocess(PHOTO)
    deep = net.project(x, layer="stage4", top=1)
    assert net.resolve("stage4") == net.resolve("layer4") == "layer4.1.act2"
    assert tuple(deep.image.shape) == (1, 3, 64, 64)
    assert deep.image.abs().sum() > 0


def test_timm_weights_offline_are_one_line_naming_checkpoint(offline_timm: None) -> None:
    with pytest.raises(WeightsUnavailableError) as info:
        dv.load_model("resnet18:timm")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("timm weights for resnet18.a1_in1k are not in timm's cache and cannot be downloaded")
    assert "--checkpoint PATH" in message
    assert "timm.create_model('resnet18')" in message


def test_timm_weights_without_a_network_fail_at_once(timm: object, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    def no_route(*args: object, **kwargs: object) -> None:
        raise OSError(101, "Network is unreachable")

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("timm's download was tried although the Hub cannot be reached")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for proxy in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY"):
        monkeypatch.delenv(proxy, raising=False)
    monkeypatch.setattr(socket, "create_connection", no_route)
    monkeypatch.setattr(timm, "create_model", never)
    with pytest.raises(WeightsUnavailableError) as info:
        dv.load_model("resnet18:timm")
    message = str(info.value)
    assert message.startswith("timm weights for resnet18.a1_in1k are not in timm's cache and cannot be downloaded")
    assert "huggingface.co cannot be reached: Network is unreachable" in message
    assert "--checkpoint PATH" in message
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsUnavailableError, match=r"cannot be downloaded \(HF_HUB_OFFLINE is set\)"):
        dv.load_model("resnet18:timm")


def test_reachability_is_one_connection_and_not_tried_behind_a_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    from deconvviz.models.weights.sources import unreachable

    for proxy in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY"):
        monkeypatch.delenv(proxy, raising=False)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        assert unreachable(f"http://127.0.0.1:{port}/weights.pth") is None
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound, not listening: the connection is refused
        assert unreachable(f"http://127.0.0.1:{port}/weights.pth") == "127.0.0.1 cannot be reached: Connection refused"
        monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
        assert unreachable(f"http://127.0.0.1:{port}/weights.pth") is None  # the download goes through the proxy


def test_timm_model_without_pretrained_weights(timm: object) -> None:
    with pytest.raises(WeightsUnavailableError, match="timm has no pretrained weights for this model; pass"):
        dv.load_model("coatnet_0_224:timm")


def test_without_timm_one_line_names_the_install_command(no_timm: None) -> None:
    with pytest.raises(
        ModelError, match=r"need timm, which is not installed; install it with pip install 'deconvviz\[timm\]'"
    ):
        resolve_spec("resnet18:timm")


# ------------------------------------------------------------------------------------------------ checkpoints


@pytest.mark.parametrize(
    "save",
    [
        lambda state, path: torch.save(state, path),
        lambda state, path: torch.save({"state_dict": {f"model.{k}": v for k, v in state.items()}, "epoch": 3}, path),
        lambda state, path: torch.save({"model": {f"module.{k}": v for k, v in state.items()}}, path),
        lambda state, path: torch.save({"state_dict": {f"model.module.{k}": v for k, v in state.items()}}, path),
        lambda state, path: save_file(state, str(path)),
    ],
    ids=["state-dict", "lightning", "dataparallel", "both-prefixes", "safetensors"],
)
def test_timm_checkpoint_in_every_wrapping(
    resnet18_state: dict[str, torch.Tensor], tmp_path: Path, save: object
) -> None:
    path = tmp_path / "weights.ckpt"
    save(resnet18_state, path)  # type: ignore[operator]
    m = dv.load_model("resnet18:timm", checkpoint=path)
    assert m.weights == f"checkpoint {path}"
    loaded = m.module.state_dict()
    assert loaded.keys() == resnet18_state.keys()
    for key, value in resnet18_state.items():
        assert torch.equal(loaded[key], value), key


@pytest.mark.parametrize(("arch", "head"), [("resnet18", "fc"), ("convnext_atto", "head.fc")])
def test_timm_checkpoint_fine_tuned_for_other_classes(timm: object, tmp_path: Path, arch: str, head: str) -> None:
    torch.manual_seed(4)
    state = timm.create_model(arch, num_classes=7).state_dict()  # type: ignore[attr-defined]
    path = tmp_path / "finetuned.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in state.items()}}, path)
    m = dv.load_model(f"{arch}:timm", checkpoint=path, size=64)
    assert m.module.get_submodule(head).weight.shape[0] == 7
    assert torch.equal(m.module.get_submodule(head).weight, state[f"{head}.weight"])
    assert m.labels is None  # the ImageNet names are not this checkpoint's classes
    named = dv.load_model(f"{arch}:timm", checkpoint=path, size=64, labels=[f"c{i}" for i in range(7)])
    assert named.classify(PHOTO, top=1)[0].label.startswith("c")


def test_timm_training_script_checkpoint_with_its_arguments(
    resnet18_state: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    import argparse

    path = tmp_path / "checkpoint-9.pth.tar"
    torch.save({"epoch": 9, "arch": "resnet18", "state_dict": resnet18_state, "args": argparse.Namespace(lr=0.1)}, path)
    if not hasattr(torch.serialization, "safe_globals"):  # torch < 2.5 cannot allow the Namespace: one line
        with pytest.raises(WeightsFormatError, match=r"argparse\.Namespace\), which torch .* use torch 2\.5") as info:
            dv.load_model("resnet18:timm", checkpoint=path)
        assert "\n" not in str(info.value)
        return
    m = dv.load_model("resnet18:timm", checkpoint=path)
    assert torch.equal(m.module.fc.weight, resnet18_state["fc.weight"])


def test_torchvision_checkpoint_loads_without_a_download(tmp_path: Path) -> None:
    torch.manual_seed(5)
    state = torchvision.models.resnet18(weights=None).state_dict()
    path = tmp_path / "tv.safetensors"
    save_file(state, str(path), metadata={"format": "pt"})
    m = dv.load_model("resnet18:torchvision", checkpoint=path)
    assert torch.equal(m.module.conv1.weight, state["conv1.weight"])
    assert m.labels is not None
    assert len(m.labels) == 1000


def test_a_checkpoint_without_batch_norm_counters_loads_as_torch_loads_it(tmp_path: Path) -> None:
    torch.manual_seed(6)
    state = torchvision.models.resnet18(weights=None).state_dict()
    exported = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}  # as converters write
    path = tmp_path / "exported.safetensors"
    save_file(exported, str(path), metadata={"format": "pt"})
    m = dv.load_model("resnet18:torchvision", checkpoint=path)
    assert torch.equal(m.module.layer1[0].bn1.running_var, state["layer1.0.bn1.running_var"])
    torch.save(exported, tmp_path / "exported.pt")
    assert torch.equal(
        dv.load_model("resnet18:torchvision", checkpoint=tmp_path / "exported.pt").module.fc.bias, state["fc.bias"]
    )


def test_a_torchvision_checkpoint_for_other_classes_says_so(tmp_path: Path) -> None:
    path = tmp_path / "ten.pt"
    torch.save(torchvision.models.resnet18(weights=None, num_classes=10).state_dict(), path)
    with pytest.raises(WeightsFormatError) as info:
        dv.load_model("resnet18:torchvision", checkpoint=path)
    assert str(info.value) == (
        f"weights from checkpoint {path} fit ResNet but for 'fc', with 10 outputs there, 1000 here: a classifier "
        "for other classes? build one in a model file (the model f.py:build)"
    )


def test_another_first_layer_names_its_shapes_and_a_torchscript_file_is_named(tmp_path: Path) -> None:
    state = torchvision.models.resnet18(weights=None).state_dict()
    state["conv1.weight"] = torch.zeros(32, 3, 7, 7)
    path = tmp_path / "wide.pt"
    torch.save(state, path)
    with pytest.raises(WeightsFormatError) as info:  # not "a classifier for other classes?": it is the first layer
        dv.load_model("resnet18:torchvision", checkpoint=path)
    assert "conv1.weight is 32x3x7x7 there, 64x3x7x7 here" in str(info.value)
    assert "classifier" not in str(info.value)
    scripted = tmp_path / "scripted.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit's own deprecation notes
        torch.jit.save(torch.jit.script(nn.Sequential(nn.Conv2d(3, 4, 3))), scripted)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # refused before torch.load could warn about it
        with pytest.raises(WeightsFormatError, match="is a TorchScript archive, not a state dict; save its weights"):
            dv.load_model("resnet18:torchvision", checkpoint=scripted)


USER_MODULE = """
from torch import nn


def build():
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
"""


@pytest.fixture
def user_file(tmp_path: Path) -> Path:
    path = tmp_path / "mynet.py"
    path.write_text(textwrap.dedent(USER_MODULE))
    return path


def test_user_file_checkpoint_from_lightning_as_safetensors(user_file: Path, tmp_path: Path) -> None:
    state = {"0.weight": torch.randn(4, 3, 3, 3), "0.bias": torch.randn(4)}
    path = tmp_path / "lightning.safetensors"
    save_file({f"model.{k}": v for k, v in state.items()}, str(path))
    m = dv.load_model(f"{user_file}:build", checkpoint=path)
    assert torch.equal(m.module[0].weight, state["0.weight"])


def test_a_prefix_is_dropped_only_where_it_makes_keys_match() -> None:
    tensor = torch.zeros(1)
    own = ["model.0.weight", "head.weight"]  # a network whose own first module is called `model`
    assert matching_prefix({"model.0.weight": tensor, "head.weight": tensor}, own).keys() == set(own)
    assert matching_prefix({"module.model.0.weight": tensor, "module.head.weight": tensor}, own).keys() == set(own)
    kept = matching_prefix({"model.x": tensor}, ["y"])  # nothing matches either way: the state as it was
    assert list(kept) == ["model.x"]


def test_wrong_checkpoint_counts_missing_and_unexpected(
    resnet18_state: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    state = dict(resnet18_state)
    state["head.weight"] = state.pop("fc.weight")
    state["head.bias"] = state.pop("fc.bias")
    state["extra"] = torch.zeros(1)
    path = tmp_path / "other.pt"
    torch.save(state, path)
    with pytest.raises(WeightsFormatError) as info:
        dv.load_model("resnet18:timm", checkpoint=path)
    message = str(info.value)
    assert "\n" not in message
    assert "(2 missing: fc.weight, fc.bias; 3 unexpected: head.weight, head.bias, extra)" in message


def test_a_damaged_safetensors_file_is_one_line(user_file: Path, tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    save_file({"0.weight": torch.zeros(4, 3, 3, 3), "0.bias": torch.zeros(4)}, str(path))
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(WeightsFormatError, match=r"cannot read checkpoint .* as a safetensors file"):
        dv.load_model(f"{user_file}:build", checkpoint=path)


def test_evolution_reads_checkpoints_as_checkpoint_does(tmp_path: Path) -> None:
    import numpy as np
    from conftest import make_tiny_vgg, register_tiny_model
    from PIL import Image

    register_tiny_model("tiny-checkpoints")
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(2)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (36, 36, 3), dtype=np.uint8)).save(data / f"img{i}.png")
    state = make_tiny_vgg(4).state_dict()
    plain, safe, lightning = (
        tmp_path / "a" / "epoch4.pt",
        tmp_path / "b" / "epoch4.safetensors",
        tmp_path / "c" / "epoch4.ckpt",
    )
    for path in (plain, safe, lightning):
        path.parent.mkdir()
    torch.save(state, plain)
    save_file(state, str(safe))
    torch.save({"state_dict": {f"model.{k}": v for k, v in state.items()}, "epoch": 4}, lightning)
    results = [
        dv.evolution([path], data, "tiny-checkpoints", layer="conv3", channels=2, device="cpu")
        for path in (plain, safe, lightning)
    ]
    hits = [[(c, h.value, h.image, h.position) for c in r.channels for h in r.hits["epoch4"][c]] for r in results]
    assert len(hits[0]) == 2
    assert hits[0] == hits[1] == hits[2]


# ---------------------------------------------------------------------------------------------- command line


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def render(runner: CliRunner, out: Path, *args: object) -> object:
    command = ["render", str(PHOTO), "--device", "cpu", "--size", "64", "--top", "2", "--out", str(out)]
    return runner.invoke(app, [*command, *map(str, args)])


def test_cli_render_timm_with_checkpoint_offline(
    runner: CliRunner, weights_pt: Path, tmp_path: Path, offline_timm: None
) -> None:
    out = tmp_path / "out"
    result = render(runner, out, "--model", "resnet18:timm", "--checkpoint", weights_pt, "--layers", "stage3,stage4")
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    assert sorted(p.name for p in (out / "cat").glob("*.png")) == [
        "input.png",
        "overview.png",
        "stage3.png",
        "stage4.png",
    ]
    assert len(list((out / "cat" / "stage4").glob("*.png"))) == 2


def test_cli_render_timm_with_wrapped_checkpoint(
    runner: CliRunner, resnet18_state: dict[str, torch.Tensor], tmp_path: Path, offline_timm: None
) -> None:
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in resnet18_state.items()}, "epoch": 1}, path)
    out = tmp_path / "out"
    result = render(runner, out, "--model", "resnet18:timm", "--checkpoint", path, "--layers", "stage4")
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    assert (out / "cat" / "stage4.png").is_file()


def test_cli_wrong_checkpoint_is_one_line_and_status_2(runner: CliRunner, tmp_path: Path, offline_timm: None) -> None:
    path = tmp_path / "resnet34-ish.pt"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "layer9.weight": torch.zeros(1)}, path)
    out = tmp_path / "out"
    line = one_line_error(render(runner, out, "--model", "resnet18:timm", "--checkpoint", path))
    assert line.startswith(f"error: weights from checkpoint {path} do not fit ResNet (")
    assert "missing: bn1.weight" in line
    assert "1 unexpected: layer9.weight" in line
    assert not out.exists()


def test_cli_timm_weights_offline_is_one_line(runner: CliRunner, tmp_path: Path, offline_timm: None) -> None:
    line = one_line_error(render(runner, tmp_path / "out", "--model", "resnet18:timm"))
    assert "--checkpoint PATH" in line


def test_cli_without_timm_is_one_line(runner: CliRunner, tmp_path: Path, no_timm: None) -> None:
    line = one_line_error(render(runner, tmp_path / "out", "--model", "resnet18:timm"))
    assert line == (
        "error: NAME:timm models need timm, which is not installed; install it with pip install 'deconvviz[timm]'"
    )


def test_cli_checkpoint_on_every_command_that_takes_a_model(runner: CliRunner) -> None:
    commands = ("layers", "filters", "render", "report", "invariance", "sanity", "occlusion", "correspondence")
    for command in (*commands, "steps", "explore"):
        result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0
        assert "--checkpoint" in result.stdout, command


def test_cli_layers_with_checkpoint(runner: CliRunner, weights_pt: Path, offline_timm: None) -> None:
    result = runner.invoke(app, ["layers", "--model", "resnet18:timm", "--checkpoint", str(weights_pt)])
    assert result.exit_code == 0, result.output
    assert "stage4" in result.stdout


def test_cli_models_lists_the_timm_form(runner: CliRunner) -> None:
    result = runner.invoke(app, ["models"])
    assert result.exit_code == 0
    assert (
        "NAME:timm[:TAG] for any timm model (e.g. convnext_tiny:timm; pip install 'deconvviz[timm]')" in result.stdout
    )


def test_a_model_file_without_its_function_names_the_fix(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from deconvviz.cli import app

    (tmp_path / "mynet.py").write_text(
        "from torch import nn\n\n\ndef build() -> nn.Module:\n    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())\n"
        "\n\ndef helper(x):\n    return x\n\n\ndef other():\n    return nn.Conv2d(3, 3, 1)\n"
    )
    runner = CliRunner()
    result = runner.invoke(app, ["layers", "--model", str(tmp_path / "mynet.py")])
    assert result.exit_code == 2
    line = result.stderr.strip()
    assert "\n" not in line
    assert f"'{tmp_path / 'mynet.py'}:build'" in line
    assert f"'{tmp_path / 'mynet.py'}:other'" in line
    assert "helper" not in line  # it takes an argument: not a builder
    missing = runner.invoke(app, ["layers", "--model", str(tmp_path / "missing.py")])
    assert missing.exit_code == 2
    assert "not found" in missing.stderr
    assert ":build'" in missing.stderr


def test_mean_and_std_from_the_command_line_reach_the_preprocessing(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from deconvviz.cli import app
    from deconvviz.cli.options import ModelChoice

    (tmp_path / "mynet.py").write_text(
        "from torch import nn\n\n\ndef build() -> nn.Module:\n"
        "    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU())\n"
    )
    name = f"{tmp_path / 'mynet.py'}:build"
    loaded = ModelChoice(name, mean="0.25,0.5,0.75", std="2,2,2").load("cpu")
    assert tuple(loaded.preprocessing.mean) == (0.25, 0.5, 0.75)
    assert tuple(loaded.preprocessing.std) == (2.0, 2.0, 2.0)
    assert ModelChoice(name).load("cpu") == name  # nothing to change: the name, so sessions are shared
    runner = CliRunner()
    ok = runner.invoke(app, ["layers", "--model", name, "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25"])
    assert ok.exit_code == 0, ok.stderr
    half = runner.invoke(app, ["layers", "--model", name, "--mean", "0.5,0.5,0.5"])
    assert half.exit_code == 0, half.stderr
    assert half.stderr.splitlines() == ["warning: --mean without --std: the model's own std is kept; give both"]
    bad = runner.invoke(app, ["layers", "--model", name, "--mean", "half"])
    assert bad.exit_code == 2
    assert "--mean takes three numbers separated by commas" in bad.stderr
    picture = tmp_path / "p.png"
    Image.new("RGB", (40, 40), (120, 30, 200)).save(picture)
    out = tmp_path / "out"
    options = ["--mean", "0.25,0.5,0.75", "--std", "2,2,2", "--size", "32", "-l", "1", "-k", "1", "--out", str(out)]
    done = runner.invoke(app, ["render", str(picture), "--model", name, *options])
    assert done.exit_code == 0, done.stderr
    recorded = json.loads((out / "p" / "manifest.json").read_text())["preprocessing"]  # what was used, kept
    assert (recorded["mean"], recorded["std"], recorded["size"]) == ([0.25, 0.5, 0.75], [2.0, 2.0, 2.0], 32)


def test_every_command_with_a_model_takes_the_same_model_options() -> None:
    import typer

    from deconvviz.cli import COMMANDS, app
    from deconvviz.cli.options import ModelChoice

    commands: dict[str, Any] = typer.main.get_command(app).commands  # type: ignore[attr-defined]
    assert set(commands) == set(COMMANDS)
    with_model = {name for name in COMMANDS if "model" in {p.name for p in commands[name].params}}
    assert with_model >= {"layers", "filters", "render", "report", "invariance", "sanity", "occlusion"}
    assert with_model >= {"correspondence", "steps", "explore"}
    for name in with_model:
        options = {p.name: p for p in commands[name].params}
        assert {"mean", "std"} <= set(options), name
        assert ("checkpoint" in options) == (name != "evolution"), name  # evolution's checkpoints are its arguments
        assert options["model"].default == "vgg16", name
        assert "-m" in options["model"].opts, name
    choice = ModelChoice("resnet18:torchvision", Path("run/last.pt"), "0.5,0.5,0.5")
    assert choice.arguments() == {"model": "resnet18:torchvision", "checkpoint": "run/last.pt", "mean": "0.5,0.5,0.5"}
    assert choice.argv() == ["--model", "resnet18:torchvision", "--checkpoint", "run/last.pt", "--mean", "0.5,0.5,0.5"]


def test_unreadable_checkpoints_say_why_in_a_few_words(tmp_path: Path) -> None:
    state = torchvision.models.resnet18(weights=None).state_dict()
    whole = tmp_path / "whole.pt"
    torch.save(state, whole)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    code = tmp_path / "code.py"
    code.write_text("print('not weights')\n")
    pickled = tmp_path / "pickled.pt"
    torch.save({"weights": torch.zeros(1), "when": _Stamp()}, pickled)
    for path, why in (
        (cut, "the file is cut short or corrupt: not a whole torch.save file"),
        (code, "not a torch.save file of tensors"),
        (pickled, "it holds pickled objects other than tensors (test_checkpoints._Stamp), which are not read"),
    ):
        with pytest.raises(WeightsFormatError) as info:
            dv.load_model("resnet18:torchvision", checkpoint=path)
        message = str(info.value)
        assert message.startswith(f"cannot read checkpoint {str(path)!r} as a state dict ({why}")
        assert "\n" not in message
        assert "PyTorch 2.6" not in message  # torch's own paragraph is not pasted in
    with pytest.raises(WeightsFormatError, match=r"checkpoint '.*' is a folder; give the weight file in it"):
        dv.load_model("resnet18:torchvision", checkpoint=tmp_path)


class _Stamp:
    """An object a training script might pickle beside its weights."""


def test_every_command_with_a_model_sets_the_picture_size(tmp_path: Path) -> None:
    (tmp_path / "fixed.py").write_text(
        "from torch import nn\n\n\ndef build() -> nn.Module:\n"
        "    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 32 * 32, 10))\n"
    )
    name = f"{tmp_path / 'fixed.py'}:build"  # a model that takes 32 x 32 pictures only
    runner = CliRunner()
    refused = runner.invoke(app, ["layers", "--model", name])
    assert refused.exit_code == 2
    assert "--size N on the command line" in refused.stderr
    done = runner.invoke(app, ["layers", "--model", name, "--size", "32"])
    assert done.exit_code == 0, done.stderr
    assert "for a 32x32 input" in done.stdout
    for command in ("layers", "filters", "steps", "sanity", "invariance", "report", "explore", "correspondence"):
        shown = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200"})
        assert "--size" in shown.stdout, command
    occluder = runner.invoke(app, ["occlusion", "--help"], env={"COLUMNS": "200"})
    assert "Side of the grey occluder" in occluder.stdout  # its --size stays the occluder's
