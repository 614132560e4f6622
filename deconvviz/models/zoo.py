"""The model registry: a name becomes a :class:`~deconvviz.models.specs.LoadedModel`.

Specs live in a registry that the command line lists; :func:`load_model` turns a name into a
:class:`~deconvviz.models.specs.LoadedModel`, ready for :class:`deconvviz.DeconvNet`.

Names :func:`load_model` understands:

- a registered name: ``"vgg16"`` and ``"squeezenet1_1"`` load offline, with the original ImageNet weights read
  out of wheels on the package registry; ``"vgg16:torchvision"``, ``"alexnet:torchvision"``, ... use torchvision's;
- ``"NAME:torchvision"`` or ``"NAME:torchvision:WEIGHTS"`` for any torchvision classification model
  (``WEIGHTS`` is a member of its weights enum, ``DEFAULT`` when left out);
- ``"NAME:timm"`` (or ``"NAME.TAG:timm"``, ``"NAME:timm:TAG"``) for any model ``timm.list_models()`` knows, with
  timm's pretrained weights and data config (needs ``pip install 'deconvviz[timm]'``);
- ``"package.module:function"`` (or ``"path/to/file.py:function"``): a function that returns the user's
  ``nn.Module``, with an optional ``checkpoint`` state dict and the user's preprocessing.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import hashlib
import importlib
import importlib.util
import inspect
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deconvviz.errors import warn_caller
from deconvviz.models.architectures import (
    EFFICIENTNET_LITE0_ALIASES,
    SQUEEZENET1_1_ALIASES,
    TORCHVISION_ALIASES,
    VGG16_ALIASES,
    EfficientNetLite0,
    VGG16ConvBase,
    build_squeezenet1_1,
)
from deconvviz.models.specs import (
    CAFFE_IMAGENET,
    EFFICIENTNET_IMAGENET,
    LoadedModel,
    ModelError,
    ModelSpec,
    Preprocessing,
    UnknownModelError,
)
from deconvviz.models.timm_zoo import timm_spec
from deconvviz.models.weights.converters import DEEPSCALE_SQUEEZENET1_1, EFFICIENTNET_LITE0, OXFORD_VGG16
from deconvviz.models.weights.sources import (
    CheckpointSource,
    TorchvisionSource,
    WeightSource,
    WheelSource,
    classes_in,
    first_line,
)
from deconvviz.ops.fallback import USER_MODULE_PREFIX

__all__ = [
    "list_models",
    "load_model",
    "register_model",
    "resolve_spec",
    "torchvision_spec",
]


def _imagenet_categories() -> list[str]:
    """The 1000 ImageNet class names, in class order (the names torchvision's metadata gives them)."""
    text = (Path(__file__).with_name("imagenet_classes.txt")).read_text(encoding="utf-8")
    return text.splitlines()


# -------------------------------------------------------------------------------------------- registry

_REGISTRY: dict[str, ModelSpec] = {}


def register_model(spec: ModelSpec, replace: bool = False) -> ModelSpec:
    """Add a model to the registry, so that :func:`load_model` and the command line know it by name.

    Args:
        spec: the model.
        replace: replace a model already registered under that name instead of refusing.

    Returns:
        ``spec``.

    Raises:
        ModelError: the name is taken (and ``replace`` is False), or ``spec`` is not a ModelSpec.

    Example:
        >>> register_model(ModelSpec(name="tiny", builder=TinyNet))  # doctest: +SKIP
    """
    if not isinstance(spec, ModelSpec):
        raise ModelError(f"register_model expects a ModelSpec, got {type(spec).__name__}")
    if spec.name in _REGISTRY and not replace:
        raise ModelError(f"a model named {spec.name!r} is already registered; pass replace=True to replace it")
    _REGISTRY[spec.name] = spec
    return spec


_LISTED_TORCHVISION = ("vgg16", "squeezenet1_1", "alexnet", "resnet18")
"""torchvision models listed among the registered ones (any other works by name, ``NAME:torchvision``)."""


_LISTED: dict[str, ModelSpec] = {}  # torchvision's listed specs, once built
_BUILT_IN = 0  # how many models deconvviz itself registers (set once they are, below)


def list_models() -> list[ModelSpec]:
    """The registered models, in registration order, then a few of torchvision's (this imports torchvision)."""
    for arch in _LISTED_TORCHVISION:
        if arch not in _LISTED:
            _LISTED[arch] = torchvision_spec(arch)
    listed = [spec for spec in _LISTED.values() if spec.name not in _REGISTRY]
    registered = list(_REGISTRY.values())
    # the built-in models, then torchvision's, then those registered since (in their order)
    return [*registered[:_BUILT_IN], *listed, *registered[_BUILT_IN:]]


def registered(name: str) -> ModelSpec | None:
    """The spec registered under ``name``, if any (nothing is built or imported)."""
    return _REGISTRY.get(name)


def registered_names() -> list[str]:
    """The names :func:`list_models` gives, without importing torchvision to build its specs."""
    return list(dict.fromkeys([*_REGISTRY, *(f"{arch}:torchvision" for arch in _LISTED_TORCHVISION)]))


def _torchvision_names() -> list[str]:
    import torchvision

    return list(torchvision.models.list_models(module=torchvision.models))


def torchvision_spec(arch: str, weights: str = "DEFAULT", name: str | None = None) -> ModelSpec:
    """A spec for a torchvision classification model with one of its weights enum members.

    Args:
        arch: torchvision model name (``"vgg16"``, ``"resnet18"``, ...).
        weights: weights enum member (``"IMAGENET1K_V1"``) or ``"DEFAULT"``.
        name: the spec's name; ``"ARCH:torchvision"`` (plus ``":WEIGHTS"`` when given) by default.

    Raises:
        UnknownModelError: torchvision has no such classification model or weights.
    """
    import torchvision

    known = _torchvision_names()
    if arch not in known:
        close = difflib.get_close_matches(arch, known, n=5, cutoff=0.5)
        hint = f"did you mean {', '.join(repr(c) for c in close)}?" if close else "see torchvision.models.list_models()"
        raise UnknownModelError(f"torchvision has no classification model {arch!r}: {hint}")
    members = torchvision.models.get_model_weights(arch)
    if weights != "DEFAULT" and weights not in members.__members__:
        raise UnknownModelError(
            f"torchvision {arch} has no weights {weights!r}; choose DEFAULT or one of "
            f"{', '.join(m for m in members.__members__ if m != 'DEFAULT')}"
        )
    enum = members[weights]
    transform = enum.transforms()
    preprocessing = Preprocessing(
        mean=tuple(transform.mean),
        std=tuple(transform.std),
        scale=1.0 / 255.0,
        size=int(transform.crop_size[0]),
        resize=max(int(transform.resize_size[0]), int(transform.crop_size[0])),
        interpolation=str(getattr(transform.interpolation, "value", "bilinear")),
    )
    categories = enum.meta.get("categories")
    offline = [repr(spec.name) for spec in _REGISTRY.values() if isinstance(spec.weights, WheelSource)]
    if repr(arch) in offline:
        alternative = repr(arch)
    else:
        alternative = " or ".join([", ".join(offline[:-1]), offline[-1]] if len(offline) > 1 else offline)
    return ModelSpec(
        name=name or (f"{arch}:torchvision" if weights == "DEFAULT" else f"{arch}:torchvision:{weights}"),
        builder=lambda: torchvision.models.get_model(arch, weights=None),
        weights=TorchvisionSource(arch, weights, offline_alternative=alternative),
        preprocessing=preprocessing,
        aliases=TORCHVISION_ALIASES.get(arch, {}),
        labels=list(categories) if categories else None,
        description=f"torchvision {arch} with {enum} (downloaded into torch's cache where there is a network)",
    )


def _user_spec(name: str) -> ModelSpec:
    """A spec for ``"package.module:function"`` or ``"path/to/file.py:function"`` (or ``:SPEC``, a ModelSpec there)."""
    module_name, _, function_name = name.rpartition(":")
    module = _import_user_module(module_name, name)
    function = getattr(module, function_name, None)
    if isinstance(function, ModelSpec):  # a whole spec: its weights, preprocessing, aliases and labels come along
        # named as given, so that another process (torchrun, the explorer's worker) finds it again by that name
        return replace(function, name=name, description=function.description or f"{function.name} from {name}")
    if not callable(function):
        raise ModelError(
            f"{module_name!r} has no function {function_name!r} (from model {name!r}); name a function that "
            "builds the model, or a ModelSpec"
        )

    def build() -> nn.Module:
        try:
            built = function()
        except Exception as exc:  # the user's code may raise anything; say where it came from
            raise ModelError(f"calling {name}() failed: {type(exc).__name__}: {str(exc).strip()[:200]}") from exc
        if not isinstance(built, nn.Module):
            raise ModelError(f"{name}() returned {type(built).__name__}, expected a torch.nn.Module")
        return built

    _ASSUMED.add(name)
    return ModelSpec(name=name, builder=build, description=f"user model {name}")


_ASSUMED: set[str] = set()
"""Models named by a function, which brings no preprocessing: ImageNet's normalisation is assumed for them."""


def _file_without_function(name: str) -> str:
    """The one line for ``--model mynet.py``: which function to name, from the file's own when it imports."""
    stem = Path(name).stem
    if not Path(name).is_file():
        return f"model file {name!r} not found; give the file and the function that builds the model: '{name}:build'"
    try:
        module = _import_user_module(name, name)
    except ModelError:
        module = None
    found: list[str] = []
    for attribute, value in vars(module).items() if module is not None else ():
        if attribute.startswith("_") or not inspect.isfunction(value) or value.__module__ != module.__name__:
            continue
        signature = inspect.signature(value)
        if any(
            p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
            for p in signature.parameters.values()
        ):
            continue  # the model is built by calling the function with no arguments
        returns = signature.return_annotation
        if (
            returns is signature.empty
            or "Module" in str(returns)
            or (isinstance(returns, type) and issubclass(returns, nn.Module))
        ):
            found.append(attribute)
    if found:
        choices = ", ".join(f"'{name}:{f}'" for f in found[:5])
        return f"give the function that builds the model after a colon: {choices}"
    return f"give the function that builds the model after a colon, e.g. '{name}:build' (a function of {stem}.py)"


def _looks_like_module(text: str) -> bool:
    """A dotted module name (``pkg.nets``) or a Python file path (``nets.py``, ``code/nets.py``)."""
    return text.endswith(".py") or (bool(text) and all(part.isidentifier() for part in text.split(".")))


def _import_user_module(module_name: str, name: str) -> Any:
    path = Path(module_name)
    if module_name.endswith(".py"):
        if not path.is_file():
            raise ModelError(f"file {module_name!r} not found (from model {name!r}); check the path")
        digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]  # the same from run to run
        unique = f"{USER_MODULE_PREFIX}{path.stem}_{digest}"
        loader_spec = importlib.util.spec_from_file_location(unique, path)
        if loader_spec is None or loader_spec.loader is None:
            raise ModelError(f"cannot import {module_name!r} as a Python module (from model {name!r})")
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[unique] = module
        folder = str(path.resolve().parent)
        if folder not in sys.path:  # its neighbours import as they do when the file is run (after what is installed)
            sys.path.append(folder)
        try:
            loader_spec.loader.exec_module(module)
        except Exception as exc:  # the user's module may raise anything while it is imported
            sys.modules.pop(unique, None)
            raise ModelError(
                f"importing {module_name!r} failed: {type(exc).__name__}: {str(exc).strip()[:200]}"
            ) from exc
        return module
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ModelError(
            f"cannot import {module_name!r} for model {name!r} ({exc}); make it importable (PYTHONPATH or "
            "pip install -e .) or give a file, 'path/to/file.py:function'"
        ) from exc
    except Exception as exc:  # the user's module may raise anything while it is imported
        raise ModelError(f"importing {module_name!r} failed: {type(exc).__name__}: {str(exc).strip()[:200]}") from exc


# "NAME:SOURCE[:ARGUMENT]" names: source -> function(NAME, ARGUMENT or None, full name) -> spec
_NAMED_SOURCES: dict[str, Callable[[str, str | None, str], ModelSpec]] = {
    "torchvision": lambda arch, weights, name: torchvision_spec(
        arch, weights or "DEFAULT", name=name if weights else f"{arch}:torchvision"
    ),
    "timm": lambda arch, tag, name: timm_spec(arch, tag, name=name if tag else f"{arch}:timm"),
}


def resolve_spec(name: str) -> ModelSpec:
    """The spec for a model name (see the module docstring for the forms a name can take).

    Raises:
        UnknownModelError: nothing matches; the message lists close names.
        ModelError: a ``module:function`` that cannot be imported.
    """
    if not isinstance(name, str) or not name.strip():
        raise UnknownModelError(f"a model name must be a non-empty string, got {name!r}")
    name = name.strip()
    spec = _REGISTRY.get(name)
    if spec is not None:
        return spec
    parts = name.split(":")
    if len(parts) >= 2 and parts[1] in _NAMED_SOURCES:
        if len(parts) > 3 or not parts[0]:
            argument = "TAG" if parts[1] == "timm" else "WEIGHTS"
            raise UnknownModelError(
                f"cannot read model name {name!r}; write NAME:{parts[1]} or NAME:{parts[1]}:{argument}"
            )
        return _NAMED_SOURCES[parts[1]](parts[0], parts[2] if len(parts) == 3 else None, name)
    module_name, colon, function_name = name.rpartition(":")
    if colon and function_name.isidentifier() and _looks_like_module(module_name):
        return _user_spec(name)
    if name.endswith(".py") or (colon and not function_name and module_name.endswith(".py")):
        raise UnknownModelError(_file_without_function(module_name if colon and not function_name else name))
    candidates = list(dict.fromkeys([*_REGISTRY, *(f"{n}:torchvision" for n in _torchvision_names())]))
    close = difflib.get_close_matches(name, candidates, n=5, cutoff=0.5)
    hint = f"did you mean {', '.join(repr(c) for c in close)}?" if close else f"known: {', '.join(_REGISTRY)}"
    raise UnknownModelError(
        f"unknown model {name!r}: {hint} (any torchvision classification model works as 'NAME:torchvision', "
        "any timm model as 'NAME:timm', your own as 'package.module:function')"
    )


# ------------------------------------------------------------------------------------------------ load


def load_model(
    name: str | ModelSpec,
    *,
    device: str | torch.device | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    scale: float | None = None,
    size: int | None = None,
    resize: int | None = None,
    channel_order: str | None = None,
    labels: Sequence[str] | None = None,
    aliases: Mapping[str, str] | None = None,
) -> LoadedModel:
    """Build a model, load its weights and wrap it with its preprocessing, aliases and class names.

    Args:
        name: a registered name (``"vgg16"``), ``"NAME:torchvision[:WEIGHTS]"``, ``"NAME:timm[:TAG]"``,
            ``"package.module:function"`` or ``"path/to/file.py:function"``, or a :class:`ModelSpec`.
        device: where the module and preprocessed inputs live (``"cpu"`` by default, ``"cuda"``, ...).
        checkpoint: a state dict file to load instead of the spec's weights, strictly: saved with ``torch.save``
            (read with ``weights_only=True``; also under a ``"state_dict"`` or ``"model"`` key, with a
            ``"module."``/``"model."`` key prefix dropped when that makes the keys match) or a safetensors file.
        mean: per-channel mean, overriding the spec's; in 0..1 units when every value is at most 1 (then
            ``scale`` defaults to 1/255), else in 0..255 units (``scale`` defaults to 1).
        std: per-channel standard deviation, overriding the spec's.
        scale: factor applied to 0..255 pixel values before ``mean`` and ``std``.
        size: input size (side of the centre square), overriding the spec's.
        resize: shorter side before the crop, overriding the spec's (None keeps it, capped below by ``size``).
        channel_order: ``"RGB"`` or ``"BGR"``, overriding the spec's.
        labels: class names, overriding the spec's.
        aliases: extra layer aliases, added to the spec's.

    Returns:
        The :class:`LoadedModel`, its module in eval mode on ``device``.

    Raises:
        UnknownModelError: the name matches nothing (the message lists close names).
        WeightsUnavailableError: the weights cannot be had now (offline and not cached); the message names
            the offline alternative.
        ModelError: a bad option, device or user model.

    Example:
        >>> m = load_model("squeezenet1_1")  # doctest: +SKIP
        >>> m.classify("examples/cat.jpg", top=3)  # doctest: +SKIP
    """
    spec = name if isinstance(name, ModelSpec) else resolve_spec(name)
    target = _device(device)
    preprocessing = _override(spec.preprocessing, mean, std, scale, size, resize, channel_order)
    if checkpoint is not None:
        source: WeightSource | None = CheckpointSource(Path(checkpoint).expanduser(), classifier=spec.classifier)
    else:
        source = spec.source
    builder = functools.partial(spec.builder, size=preprocessing.size) if spec.sized else spec.builder
    if source is None:
        module = builder()
        weights = "none loaded (built-in initialisation)"
    else:
        module, weights = source.build(builder)
    if not isinstance(module, nn.Module):
        raise ModelError(f"the builder of model {spec.name!r} returned {type(module).__name__}, not an nn.Module")
    try:
        module = module.to(target).eval()
    except (RuntimeError, AssertionError) as exc:  # torch raises these for a device it was not built for
        raise ModelError(
            f"cannot move model {spec.name!r} to device {str(target)!r} "
            f"({first_line(str(exc))[:160]}); use --device cpu, or a device this torch was built for"
        ) from exc
    if spec.name in _ASSUMED and mean is None and std is None:  # said once the model is there: a failure says it all
        warn_caller(
            f"model {spec.name!r} brings no preprocessing of its own, so ImageNet's mean and std are assumed; if it "
            "was trained with others, give them (mean= and std= in Python, --mean and --std on the command line), "
            "or name a ModelSpec in that file instead of a function"
        )
    class_names = [str(label) for label in labels] if labels is not None else spec.class_names()
    if labels is None and class_names is not None and spec.classifier:
        if classes_in(module.state_dict(), spec.classifier) != len(class_names):  # a checkpoint's own classes
            class_names = None
    return LoadedModel(
        name=spec.name,
        module=module,
        spec=spec,
        weights=weights,
        layers={**spec.layer_aliases(module), **dict(aliases or {})},
        labels=class_names,
        preprocessing=preprocessing,
        device=target,
    )


def _device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cpu")
    try:
        target = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ModelError(f"unknown device {device!r}; use 'cpu', 'cuda', 'cuda:1', 'mps', ...") from exc
    if target.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device {str(target)!r} asked for, but CUDA is not available here; use 'cpu'")
    return target


def _override(
    base: Preprocessing,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    scale: float | None,
    size: int | None,
    resize: int | None,
    channel_order: str | None,
) -> Preprocessing:
    changes: dict[str, Any] = {}
    if mean is not None:
        changes["mean"] = tuple(mean)
        if scale is None:
            with contextlib.suppress(TypeError, ValueError):
                changes["scale"] = 1.0 if max(abs(float(v)) for v in mean) > 1.0 else 1.0 / 255.0
    if std is not None:
        changes["std"] = tuple(std)
    if scale is not None:
        changes["scale"] = scale
    if size is not None:
        changes["size"] = size
        if resize is None and base.resize is not None and base.resize < size:
            changes["resize"] = None
    if resize is not None:
        changes["resize"] = resize
    if channel_order is not None:
        changes["channel_order"] = channel_order
    return replace(base, **changes) if changes else base


# ------------------------------------------------------------------------------------- built-in models

register_model(
    ModelSpec(
        name="vgg16",
        builder=VGG16ConvBase,
        weights=OXFORD_VGG16,
        preprocessing=CAFFE_IMAGENET,
        aliases=VGG16_ALIASES,
        labels=None,
        description="VGG16 conv base (13 conv + 5 max-pool layers) with the original Oxford ImageNet weights; "
        "offline, no classifier",
    )
)
register_model(
    ModelSpec(
        name="squeezenet1_1",
        builder=build_squeezenet1_1,
        weights=DEEPSCALE_SQUEEZENET1_1,
        preprocessing=CAFFE_IMAGENET,
        aliases=SQUEEZENET1_1_ALIASES,
        labels=_imagenet_categories,
        description="SqueezeNet 1.1 with the original DeepScale ImageNet weights and its 1000-class classifier; "
        "offline",
    )
)
register_model(
    ModelSpec(
        name="efficientnet_lite0",
        builder=EfficientNetLite0,
        weights=EFFICIENTNET_LITE0,
        preprocessing=EFFICIENTNET_IMAGENET,
        aliases=EFFICIENTNET_LITE0_ALIASES,
        labels=_imagenet_categories,
        sized=True,
        description="EfficientNet-Lite0 (depthwise inverted residuals, ReLU6) with TensorFlow's ImageNet "
        "weights and 1000-class classifier; offline",
    )
)

_BUILT_IN = len(_REGISTRY)
