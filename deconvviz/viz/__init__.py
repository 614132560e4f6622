"""Everything that turns results into pictures: display scaling, picture helpers and figures.

Results (:class:`~deconvviz.Projection`, :class:`~deconvviz.TopKResult`, ...) are data and do not draw
themselves; their picture methods hand over to this package, which takes results and never the reverse.

- :mod:`deconvviz.viz.scaling`: the one definition of how signed reconstructions become grey levels
  (:func:`to_rgb`, :class:`Scaling`: ``"robust"`` by default, the paper's ``"max"``, ``"minmax"``).
- :mod:`deconvviz.viz.pictures`: the input for display, overlays, crops, enlargements, mosaics.
- :mod:`deconvviz.viz.figures`: :class:`RenderOptions` and the figures of projections.
- :mod:`deconvviz.viz.filters`: a layer's filters as an image grid (the paper's Fig. 2, layer 1).
- :mod:`deconvviz.viz.html`: results as HTML (a top-k search's inline overview in notebooks) and activations
  as labels.
"""

from __future__ import annotations

from deconvviz.errors import RenderError
from deconvviz.viz.figures import (
    AUTO_CROP_SHARE,
    RenderOptions,
    field_box,
    figure_png,
    label,
    layers_figure,
    projection_figure,
    view,
    view_box,
)
from deconvviz.viz.pictures import Box, crop, enlarge, input_to_pil, mosaic, overlay, pil_box
from deconvviz.viz.scaling import DEFAULT_SCALE, ROBUST_PERCENTILE, SCALES, Scale, Scaling, support, to_rgb

__all__ = [
    "AUTO_CROP_SHARE",
    "DEFAULT_SCALE",
    "ROBUST_PERCENTILE",
    "SCALES",
    "Box",
    "RenderError",
    "RenderOptions",
    "Scale",
    "Scaling",
    "crop",
    "enlarge",
    "field_box",
    "figure_png",
    "input_to_pil",
    "label",
    "layers_figure",
    "mosaic",
    "overlay",
    "pil_box",
    "projection_figure",
    "support",
    "to_rgb",
    "view",
    "view_box",
]
