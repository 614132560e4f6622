"""EfficientNet-Lite0: the converter on a fake file, TensorFlow padding, the engine on it, and (with the network)
the real registry wheel classifying the example photos."""

from __future__ import annotations

import io
import math
from pathlib import Path

import pytest
import torch
from reference import feature_map, method_reference, relative_error, unit_seeds

import deconvviz as dv
from deconvviz.models import architectures, specs, zoo
from deconvviz.models.weights import cache, converters, sources

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
CAT_CLASSES = {"tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"}


def _fake_pth(seed: int = 0, drop: str | None = None, add: str | None = None) -> tuple[bytes, dict[str, torch.Tensor]]:
    """A random EfficientNet-Lite0 state dict saved under the ``efficientnet_pytorch`` names, and its tensors."""
    generator = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        shapes = {k: (v.shape, v.dtype) for k, v in architectures.EfficientNetLite0().state_dict().items()}
    ours = {
        k: torch.randn(shape, generator=generator) if dtype.is_floating_point else torch.tensor(7)
        for k, (shape, dtype) in shapes.items()
    }
    theirs = {}
    for source, target in converters.efficientnet_lite0_keys().items():
        for key, value in ours.items():
            if key.startswith(target + ".") and key.count(".") == target.count(".") + 1:
                theirs[source + key[len(target) :]] = value
    if drop:
        del theirs[drop]
    if add:
        theirs[add] = torch.zeros(1)
    buffer = io.BytesIO()
    torch.save(theirs, buffer)
    return buffer.getvalue(), ours


def test_converter_renames_every_tensor_and_the_model_loads_it_strictly() -> None:
    payload, ours = _fake_pth()
    state = converters.convert_efficientnet_lite0_pth(io.BytesIO(payload))
    assert set(state) == set(ours)
    for key, value in ours.items():
        assert torch.equal(state[key], value), key
    model = architectures.EfficientNetLite0()
    sources.load_strict(model, state, "fake file")
    assert torch.equal(model.features[3][1].depthwise.conv.weight, ours["features.3.1.depthwise.conv.weight"])
    assert torch.equal(model.classifier[1].bias, ours["classifier.1.bias"])
    assert len(state) == 296  # as many tensors as the real file holds


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"drop": "_blocks.7._bn1.running_var"}, "no '_blocks.7._bn1.running_var'"),
        ({"add": "_blocks.0._se_reduce.weight"}, "does not: _blocks.0._se_reduce.weight"),
    ],
)
def test_converter_refuses_other_networks(kwargs: dict[str, str], message: str) -> None:
    payload, _ = _fake_pth(**kwargs)
    with pytest.raises(sources.WeightsFormatError, match=message):
        converters.convert_efficientnet_lite0_pth(io.BytesIO(payload))


def test_converter_refuses_a_file_that_is_not_a_state_dict() -> None:
    with pytest.raises(sources.WeightsFormatError, match="not a PyTorch state dict"):
        converters.convert_efficientnet_lite0_pth(io.BytesIO(b"plain bytes"))


def test_tensorflow_same_padding_by_hand() -> None:
    # total = (ceil(n / s) - 1) * s + k - n, the extra pixel at the bottom and right
    assert architectures._same_padding(3, 2, 224) == (0, 1, 0, 1)
    assert architectures._same_padding(5, 2, 56) == (1, 2, 1, 2)
    assert architectures._same_padding(3, 2, 225) == (1, 1, 1, 1)
    assert architectures._same_padding(5, 1, 14) == (2, 2, 2, 2)
    model = architectures.EfficientNetLite0()
    assert isinstance(model.features[0].pad, torch.nn.ZeroPad2d)
    assert model.features[0].pad.padding == (0, 1, 0, 1)
    assert model.features[3][0].depthwise.pad.padding == (1, 2, 1, 2)
    assert model.features[4][1].depthwise.conv.padding == (1, 1)
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 1000)


def _strided_sizes(model: torch.nn.Module, side: int) -> list[tuple[int, int, int]]:
    """``(input side, stride, output side)`` of every convolution block, for a ``side`` x ``side`` input."""
    seen: list[tuple[int, int, int]] = []

    def hook(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        seen.append((inputs[0].shape[-1], module.conv.stride[0], output.shape[-1]))

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, architectures._ConvBNAct)]
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, side, side))
    for handle in handles:
        handle.remove()
    return seen


@pytest.mark.parametrize("side", [224, 225, 240, 300])
def test_built_for_its_input_size_every_block_gives_tensorflows_output_size(side: int) -> None:
    # TensorFlow's 'same' padding makes every convolution's output ceil(n / stride), whatever n is
    seen = _strided_sizes(architectures.EfficientNetLite0(size=side), side)
    assert len(seen) > 40
    assert all(out == math.ceil(n / stride) for n, stride, out in seen), seen
    if side != 224:  # the pads worked out for 224 do not fit: the check above can fail
        fixed = _strided_sizes(architectures.EfficientNetLite0(), side)
        assert any(out != math.ceil(n / stride) for n, stride, out in fixed)


def test_load_model_builds_a_sized_architecture_for_the_preprocessing_size() -> None:
    made: list[int] = []

    def build(size: int) -> torch.nn.Module:
        made.append(size)
        return architectures.EfficientNetLite0(classes=3, size=size)

    spec = dv.ModelSpec(name="sized", builder=build, preprocessing=specs.EFFICIENTNET_IMAGENET, sized=True)
    assert dv.load_model(spec).preprocessing.size == 224
    loaded = dv.load_model(spec, size=240)
    assert made == [224, 240]
    assert loaded.preprocessing.size == 240
    assert loaded.module.features[0].pad.padding == architectures._same_padding(3, 2, 240)


def test_spec_aliases_and_preprocessing() -> None:
    spec = zoo.resolve_spec("efficientnet_lite0")
    assert spec.weights is converters.EFFICIENTNET_LITE0
    assert dict(spec.aliases) == architectures.EFFICIENTNET_LITE0_ALIASES
    assert spec.preprocessing.mean == (127.0, 127.0, 127.0)
    assert spec.preprocessing.std == (128.0, 128.0, 128.0)
    a = architectures.EFFICIENTNET_LITE0_ALIASES
    assert (a["stage1"], a["stage2"], a["stage3"]) == ("features.0.act", "features.1.0.project.bn", "features.2.1.add")
    assert (a["stage7"], a["stage8"], a["stage9"]) == ("features.6.3.add", "features.7.0.project.bn", "features.8.act")


@pytest.mark.slow
@pytest.mark.parametrize("method", ["deconvnet", "guided", "gradient"])
def test_deepest_stage_matches_the_reference(method: str, unchanged) -> None:
    torch.manual_seed(0)
    model = architectures.EfficientNetLite0().eval().double()
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    state = unchanged(model)
    net = dv.DeconvNet(model, aliases=architectures.EFFICIENTNET_LITE0_ALIASES)
    p = net.project(x, "stage9", channel=[0, 640, 1279], method=method)
    activation = feature_map(model, x, "features.8")
    expected = method_reference(
        model, x, "features.8", unit_seeds(activation, list(p.channels), list(p.positions)), method
    )
    assert expected.abs().max() > 0
    assert relative_error(p.image, expected) <= 1e-6
    state.assert_same(model)


@pytest.fixture(scope="module")
def lite0_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The registry wheel fetched and converted once, into a fresh cache."""
    folder = tmp_path_factory.mktemp("dvcache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DECONVVIZ_CACHE", str(folder))
        converters.EFFICIENTNET_LITE0.load()
    return folder


@pytest.mark.network
def test_real_wheel_is_pinned_cached_and_hash_checked(lite0_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DECONVVIZ_CACHE", str(lite0_cache))
    source = converters.EFFICIENTNET_LITE0
    assert sorted(p for p in lite0_cache.rglob("*") if p.is_file()) == [source.converted_path(), source.wheel_path()]
    assert cache.file_sha256(source.wheel_path()) == source.sha256
    assert cache.state_dict_hash(source.load()) == source.state_sha256


@pytest.mark.network
@pytest.mark.slow
def test_real_weights_classify_the_example_photos(lite0_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DECONVVIZ_CACHE", str(lite0_cache))
    m = dv.load_model("efficientnet_lite0")
    cat = m.classify(EXAMPLES / "cat.jpg", top=3)
    assert cat[0].label in CAT_CLASSES, cat
    assert sum(p.probability for p in cat if p.label in CAT_CLASSES) > 0.8, cat
    coffee = m.classify(EXAMPLES / "coffee.jpg", top=3)
    assert coffee[0].label == "espresso", coffee
    assert coffee[0].probability > 0.8, coffee
    rocket = m.classify(EXAMPLES / "rocket.jpg", top=3)
    assert rocket[0].label in {"missile", "projectile", "space shuttle"}, rocket
    assert sum(p.probability for p in rocket if p.label in {"missile", "projectile"}) > 0.4, rocket
    # trained first-layer filters are smooth: neighbouring taps correlate (random ones do not)
    w = m.module.features[0].conv.weight.detach()
    assert torch.corrcoef(torch.stack([w[..., :-1].reshape(-1), w[..., 1:].reshape(-1)]))[0, 1] > 0.1
    # four of the 32 stem filters are dead (zero weights): the paper's Fig. 6 diagnosis finds them
    assert dv.filters(m).dead() == [11, 16, 28, 31]
    assert torch.equal(w[[11, 16, 28, 31]].abs().amax((1, 2, 3)) < 1e-6, torch.ones(4, dtype=torch.bool))
