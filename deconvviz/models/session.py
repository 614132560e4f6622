"""The session cache: a model and its deconvnet, loaded once per name, device and size."""

from __future__ import annotations

import dataclasses
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch import nn

from deconvviz.core.deconvnet import DeconvNet
from deconvviz.errors import DeconvVizError
from deconvviz.io.images import load_image
from deconvviz.models import zoo as _models

if TYPE_CHECKING:  # pragma: no cover
    from PIL.Image import Image
    from torch import Tensor

    from deconvviz.core.deconvnet import DeconvNet
    from deconvviz.models.specs import LoadedModel


DEFAULT_MODEL = "vgg16"


MAX_SIZE = 2048
"""The largest ``size`` accepted: at 2048 px one of VGG16's first activations already takes 1 GB in float32, and
the reverse pass holds one such tensor per reconstruction."""


class DeviceError(DeconvVizError, ValueError):
    """A device name that is malformed or not available on this machine."""


def resolve_device(device: str | None) -> str:
    """The torch device to use: ``"auto"`` (or None) picks ``"cuda"`` when available, else ``"cpu"``.

    Raises:
        DeviceError: an unknown device, or CUDA asked for on a machine without it.
    """
    import torch

    name = (device or "auto").strip().lower()
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(name)
    except RuntimeError as exc:
        raise DeviceError(f"unknown device {device!r}; use cpu, cuda, cuda:N or auto") from exc
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {device!r} asked for, but CUDA is not available here; use --device cpu")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise DeviceError(f"device {device!r} does not exist: this machine has {torch.cuda.device_count()} GPU(s)")
    elif parsed.type not in ("cpu", "mps"):
        raise DeviceError(f"unsupported device {device!r}; use cpu, cuda, cuda:N or auto")
    return name


@dataclass
class Session:
    """A loaded model together with its deconvnet, ready to project pictures.

    Attributes:
        model: the loaded model (see :func:`deconvviz.load_model`).
        net: the deconvnet attached to it.
    """

    model: LoadedModel
    net: DeconvNet

    @property
    def name(self) -> str:
        """The model's name."""
        found = getattr(self.model, "name", None)
        if found is not None:
            return str(found)
        return type(getattr(self.model, "module", self.model)).__name__  # a bare nn.Module is its own module

    @property
    def channel_order(self) -> str:
        """The colour order of the model's input channels (``"RGB"`` unless the preprocessing says otherwise)."""
        return _channel_order(self.model)

    def require_preprocessing(
        self, why: str, *, instead: str = "", error: type[DeconvVizError] = DeconvVizError
    ) -> None:
        """Refuse, in one line, a bare nn.Module (no preprocessing) where picture files are to be read.

        Args:
            why: the start of the sentence, up to its verb (``"evolution reads the pictures of 'x' and needs"``).
            instead: another way out, said before the way to give the model its preprocessing.
            error: the exception class raised.
        """
        if not hasattr(self.model, "preprocess"):
            raise error(f"{why} the model's preprocessing, and the nn.Module {self.name} has none; {instead}{_GIVE}")

    def preprocess(self, image: str | os.PathLike[str] | Image | Tensor, *, full_image: bool = False) -> Tensor:
        """A picture (path, PIL image, or an already preprocessed ``(1, C, H, W)`` tensor) as model input."""
        import torch

        if isinstance(image, torch.Tensor):
            if image.dim() == 3:
                image = image.unsqueeze(0)
            if image.dim() != 4 or image.shape[0] != 1:
                raise DeconvVizError(
                    f"expected one picture, as a preprocessed (1, C, H, W) or (C, H, W) tensor, got "
                    f"{tuple(image.shape)}; pass pictures one at a time, or a batch to DeconvNet.project"
                )
            return image
        self.require_preprocessing("a picture needs", instead="pass a preprocessed (1, C, H, W) tensor, or ")
        if isinstance(image, str | os.PathLike):
            image = load_image(image)
        return self.model.preprocess(image, full_image=full_image)


_GIVE = (
    "give it its preprocessing with deconvviz.load_model(deconvviz.ModelSpec(name='mine', builder=lambda: module), "
    "mean=..., std=..., size=...)"
)


_SESSIONS: OrderedDict[tuple[Any, ...], Session] = OrderedDict()


_SESSIONS_LOCK = threading.Lock()


_SESSIONS_KEPT = 2


def session(
    model: str | LoadedModel | Session = DEFAULT_MODEL, *, device: str | None = "auto", size: int | None = None
) -> Session:
    """A model and its deconvnet, loaded once: later calls with the same name, device and size reuse them.

    Args:
        model: a model name (``"vgg16"``, ``"resnet18:torchvision"``, ``"pkg.module:function"``, see
            :func:`deconvviz.list_models`), an already loaded model, a session, or a bare ``nn.Module`` (which
            takes preprocessed tensors only: it has no preprocessing of its own).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``; used when ``model`` is a name.
        size: the side of the square pictures are resized and cropped to, instead of the model's own.

    Returns:
        The :class:`Session`.

    Raises:
        DeconvVizError: unknown model, weights that cannot be had, a bad device or size.
    """
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise DeconvVizError(f"size must be a positive number of pixels, got {size!r}")
    if size is not None and size > MAX_SIZE:
        raise DeconvVizError(
            f"size {size} is more than {MAX_SIZE} pixels (memory grows with the square of the size); "
            "choose a smaller --size"
        )
    if isinstance(model, Session):
        if size is None or size == getattr(getattr(model.model, "preprocessing", None), "size", None):
            return model
        model = model.model
    if not isinstance(model, str) and not isinstance(model, nn.Module) and not hasattr(model, "preprocess"):
        raise DeconvVizError(
            f"model must be a name, a loaded model, an nn.Module or a session, got {type(model).__name__}; "
            "load one with deconvviz.load_model(name)"
        )
    if not isinstance(model, str):
        if size is not None and not hasattr(model, "preprocessing"):
            raise DeconvVizError(f"size= needs a loaded model, got the nn.Module {type(model).__name__}; {_GIVE}")
        if size is not None and size != model.preprocessing.size:
            before = model.preprocessing
            resize = None if before.resize is not None and before.resize < size else before.resize
            model = dataclasses.replace(model, preprocessing=dataclasses.replace(before, size=size, resize=resize))
        return Session(model=model, net=DeconvNet(model))

    resolved = resolve_device(device)
    spec = _models.registered(model)  # a model registered again (replace=True) is a new session
    key = (model, resolved, size, id(spec))
    with _SESSIONS_LOCK:
        found = _SESSIONS.get(key)
        if found is not None:
            _SESSIONS.move_to_end(key)
            return found
    loaded = _models.load_model(model, device=resolved, size=size)
    made = Session(model=loaded, net=DeconvNet(loaded))
    with _SESSIONS_LOCK:
        _SESSIONS[key] = made
        while len(_SESSIONS) > _SESSIONS_KEPT:
            _SESSIONS.popitem(last=False)
    return made


def _channel_order(model: Any) -> str:
    order = getattr(getattr(model, "preprocessing", None), "channel_order", "RGB")
    return order.upper() if isinstance(order, str) and sorted(order.upper()) == ["B", "G", "R"] else "RGB"
