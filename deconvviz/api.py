"""One-call helpers over the engine: a projection for a notebook, a folder of pictures for a set of photos.

:func:`visualize` loads a model by name (once per session), reads and preprocesses a picture, projects the
chosen channels of one layer and returns the :class:`~deconvviz.core.projection.Projection` (which shows itself
as a figure in Jupyter). :func:`render_images` does the same for several photos and layers and writes PNGs,
one summary figure per layer and a ``manifest.json`` per photo, atomically: each photo's folder appears
complete or not at all. The command line's ``render`` is a thin layer over it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

from deconvviz.analysis.choose import DEFAULT_TOP, project, project_class
from deconvviz.core.layers import default_layers
from deconvviz.errors import DeconvVizError, deprecated
from deconvviz.models.session import DEFAULT_MODEL, Session, session

if TYPE_CHECKING:  # pragma: no cover
    from PIL.Image import Image
    from torch import Tensor

    from deconvviz.core.projection import Projection
    from deconvviz.core.steps import StepsChoice
    from deconvviz.methods import RuleSet
    from deconvviz.models.specs import LoadedModel


def visualize(
    image: str | os.PathLike[str] | Image | Tensor,
    model: str | LoadedModel | Session = DEFAULT_MODEL,
    layer: str | None = None,
    *,
    top: int | None = None,
    channel: int | Sequence[int] | None = None,
    mode: str = "max",
    position: tuple[int, int] | None = None,
    device: str | None = "auto",
    size: int | None = None,
    full_image: bool = False,
    inside: bool | None = None,
    target: str | int | None = None,
    method: str | RuleSet | None = None,
    steps: StepsChoice = False,
    target_class: str | int | None = None,
) -> Projection:
    """Project a picture's strongest channels of one layer back to pixels, in one call.

    The model is loaded once per session and kept for later calls. In Jupyter the returned projection
    shows itself as a figure; ``p.figure()`` returns that figure, ``p.to_pil(i)`` one reconstruction,
    ``p.save(folder)`` writes them all.

    Args:
        image: a picture file, a PIL image, or an already preprocessed ``(1, C, H, W)`` tensor.
        model: a model name (see :func:`deconvviz.list_models`), a loaded model, or a :class:`Session`.
        layer: layer alias or node name; default: the deepest of :func:`default_layers`
            (``conv5_3`` for VGG16).
        top: the number of strongest channels to project (clamped to the layer's channel count); default 9.
        channel: instead of ``top``, the channel(s) to project (giving both is refused).
        mode: ``"max"`` (each channel's strongest unit) or ``"map"`` (its whole feature map).
        position: ``(row, col)`` of the unit to seed in each channel, instead of the strongest.
        device: ``"cpu"``, ``"cuda"`` or ``"auto"`` when ``model`` is a name.
        size: resize and centre-crop the picture to ``size x size`` instead of the model's own size.
        full_image: keep the whole picture instead of resizing and centre-cropping it to the model's size.
        inside: prefer units whose receptive field lies wholly inside the picture (None: on for ``top``,
            off for chosen channels; see :func:`project`).
        target: instead of a layer, project a class score of a classifier: ``"auto"`` (the top-1 class), a
            class index or a class name (see :func:`deconvviz.analysis.choose.project_class`), as ``target``
            names the class in :func:`deconvviz.occlusion` and :func:`deconvviz.invariance`.
        method: the reverse pass: ``"deconvnet"`` (Zeiler & Fergus, the default), ``"guided"`` (guided
            backpropagation) or ``"gradient"`` (see ``docs/rules.md``), another registered name, or a rule set.
        steps: also keep the signal after every mirrored op, seed to pixels, in ``.steps`` (True: the first
            seed's; ``"all"`` or seed indices for more; see :meth:`deconvviz.DeconvNet.project`). Not for
            ``target``.
        target_class: the earlier spelling of ``target`` (warns once).

    Returns:
        The :class:`~deconvviz.core.projection.Projection` (``.method`` names the reverse pass).

    Raises:
        DeconvVizError: bad picture, unknown model or layer, channel out of range, a class for a model
            without a classifier, an unknown method (one-line messages).

    Example:
        >>> p = dv.visualize("examples/cat.jpg", model="vgg16", layer="conv5_3", top=9)  # doctest: +SKIP
        >>> fig, axes = p.figure()  # doctest: +SKIP
    """
    if target_class is not None:
        deprecated("visualize(target_class=...)", "visualize(target=...)")
        target = target if target is not None else target_class
    current = session(model, device=device, size=size)
    x = current.preprocess(image, full_image=full_image)
    if target is not None:
        if steps is not False:
            raise DeconvVizError("steps are kept for a layer's channels, not for a class score; give a layer instead")
        return project_class(current, x, target, method=method)
    chosen = layer if layer is not None else default_layers(current.net, x)[-1]
    if channel is not None and top is not None:
        raise DeconvVizError(f"give either top= or channel=, not both (top={top!r}, channel={channel!r})")
    if channel is None and top is None:
        top = DEFAULT_TOP
    return project(
        current,
        x,
        chosen,
        top=top,
        channel=channel,
        mode=mode,
        position=position,
        inside=inside,
        method=method,
        steps=steps,
    )


# ------------------------------------------------------------------------------------------ folders
