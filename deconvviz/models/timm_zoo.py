"""``NAME:timm``: any model timm knows, with timm's pretrained weights, preprocessing and stage names.

timm is optional (``pip install 'deconvviz[timm]'``); it is imported only when a ``NAME:timm`` model is asked
for. A spec reads timm's pretrained configuration without building the model: the data config
(``timm.data.resolve_data_config``: input size, mean, std, interpolation, crop fraction) becomes the
:class:`~deconvviz.models.specs.Preprocessing`, so pictures are prepared as timm prepares them; the weights come
through timm's own download and cache (:class:`~deconvviz.models.weights.sources.TimmSource`); the layer aliases
``stage0`` ... ``stageN`` name the modules of the built model's ``feature_info``, in the order timm's
``out_indices`` count them.
"""

from __future__ import annotations

import difflib
import math
from typing import Any

from torch import nn

from deconvviz.models.specs import ModelError, ModelSpec, Preprocessing, UnknownModelError
from deconvviz.models.weights.sources import TimmSource

__all__ = ["INSTALL_TIMM", "feature_aliases", "timm_spec"]

INSTALL_TIMM = "pip install 'deconvviz[timm]'"
"""The command that adds timm."""

_INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos")


def _timm() -> Any:
    try:
        import timm
        import timm.data
    except ImportError as exc:
        raise ModelError(f"NAME:timm models need timm, which is not installed; install it with {INSTALL_TIMM}") from exc
    return timm


def timm_spec(arch: str, tag: str | None = None, name: str | None = None) -> ModelSpec:
    """A spec for a timm model, with timm's pretrained weights and its data config as the preprocessing.

    Args:
        arch: a name ``timm.list_models()`` knows (``"convnext_tiny"``), optionally with a pretrained tag
            (``"convnext_tiny.fb_in22k"``).
        tag: a pretrained tag (``"fb_in22k"``), the same as writing ``arch.tag``; timm's default when None.
        name: the spec's name; ``"ARCH:timm"`` by default.

    Returns:
        The spec; building it (with :func:`~deconvviz.models.zoo.load_model`) fetches the weights.

    Raises:
        ModelError: timm is not installed (the message names the command that installs it).
        UnknownModelError: timm has no such model or pretrained tag.
    """
    timm = _timm()
    from timm.models import get_pretrained_cfg, split_model_name_tag

    base, own_tag = split_model_name_tag(arch)
    if tag and own_tag:
        raise UnknownModelError(f"model {arch!r} already names a pretrained tag; leave out ':{tag}'")
    tag = tag or own_tag
    known = timm.list_models()
    if base not in known:
        close = difflib.get_close_matches(base, known, n=5, cutoff=0.6)
        hint = f"did you mean {', '.join(repr(f'{c}:timm') for c in close)}?" if close else "see timm.list_models()"
        raise UnknownModelError(f"timm has no model {base!r}: {hint}")
    full = f"{base}.{tag}" if tag else base
    try:
        cfg = get_pretrained_cfg(full, allow_unregistered=not tag)
    except RuntimeError as exc:  # an unknown pretrained tag
        tags = [n.partition(".")[2] for n in timm.list_models(base, pretrained=True) if n.partition(".")[0] == base]
        choose = f"choose one of {', '.join(tags)}" if tags else "timm has no pretrained weights for it"
        raise UnknownModelError(f"timm {base} has no pretrained tag {tag!r}; {choose}") from exc
    config: dict[str, Any] = cfg.to_dict() if cfg is not None else {}
    weights_name = f"{base}.{cfg.tag}" if cfg is not None and cfg.tag and cfg.tag != "untrained" else base
    origin = str(config.get("hf_hub_id") or config.get("url") or "")
    num_classes = int(config.get("num_classes") or 0)

    def build(**options: Any) -> nn.Module:
        return timm.create_model(weights_name, pretrained=False, **options)

    return ModelSpec(
        name=name or f"{base}:timm",
        builder=build,
        weights=TimmSource(weights_name, origin, str(config.get("hf_hub_filename") or "")),
        preprocessing=_preprocessing(timm.data.resolve_data_config({}, pretrained_cfg=config), base),
        aliases=feature_aliases,
        classifier=str(config["classifier"]) if isinstance(config.get("classifier"), str) else None,
        labels=(lambda: _labels(config)) if num_classes else None,
        description=f"timm {weights_name} (timm's pretrained weights, downloaded into its cache where there is "
        "a network)",
    )


def _preprocessing(data: dict[str, Any], base: str) -> Preprocessing:
    """The data config of timm as a :class:`Preprocessing`: resize to ``size / crop_pct``, centre crop ``size``."""
    channels, height, _width = (int(v) for v in data.get("input_size", (3, 224, 224)))
    if channels != 3:
        raise ModelError(f"timm {base} takes {channels}-channel input; deconvviz prepares 3-channel pictures")
    crop = float(data.get("crop_pct") or 1.0)
    resize = math.floor(height / crop) if crop > 0 else height
    interpolation = str(data.get("interpolation") or "bilinear")
    return Preprocessing(
        mean=data.get("mean", (0.485, 0.456, 0.406)),  # Preprocessing checks and converts them
        std=data.get("std", (0.229, 0.224, 0.225)),
        scale=1.0 / 255.0,
        size=height,
        resize=resize if resize > height else None,
        interpolation=interpolation if interpolation in _INTERPOLATIONS else "bilinear",
    )


def feature_aliases(module: nn.Module) -> dict[str, str]:
    """``stage0`` ... ``stageN`` -> the modules of a timm model's ``feature_info``, in ``out_indices`` order.

    Args:
        module: a model built by timm (others have no ``feature_info`` and get no aliases).

    Returns:
        ``{"stage0": "act1", "stage1": "layer1", ...}`` for a ResNet; empty without ``feature_info``.
    """
    info = getattr(module, "feature_info", None)
    if not isinstance(info, list | tuple):
        return {}
    names = [entry.get("module") for entry in info if isinstance(entry, dict)]
    return {f"stage{i}": str(n) for i, n in enumerate(names) if n}


def _labels(config: dict[str, Any]) -> list[str]:
    """Class names of the data set the weights were trained on, as timm knows them (ImageNet subsets)."""
    from timm.data import ImageNetInfo, infer_imagenet_subset

    subset = infer_imagenet_subset(config)
    if not subset:
        return [str(i) for i in range(int(config.get("num_classes") or 0))]
    return [description.split(",")[0].strip() for description in ImageNetInfo(subset).label_descriptions()]
