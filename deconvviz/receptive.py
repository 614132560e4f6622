"""Receptive fields (kept importable here; see :mod:`deconvviz.core.receptive` and :mod:`deconvviz.ops.geometry`).

Example:
    >>> import deconvviz as dv
    >>> from deconvviz.receptive import pointwise, window
    >>> dv.register_geometry(MyBlurPool, window(3, stride=2, padding=1))  # doctest: +SKIP
    >>> dv.register_geometry(MyActivation, pointwise)  # doctest: +SKIP
"""

from __future__ import annotations

from deconvviz.core.receptive import (
    GEOMETRIES,
    Box,
    Geometry,
    GeometryContext,
    ReceptiveField,
    ReceptiveFieldError,
    UnknownGeometryError,
    fields_of,
    get_geometry,
    pointwise,
    receptive_field,
    receptive_fields,
    register_geometry,
    single,
    whole_image,
    window,
)

__all__ = [
    "GEOMETRIES",
    "Box",
    "Geometry",
    "GeometryContext",
    "ReceptiveField",
    "ReceptiveFieldError",
    "UnknownGeometryError",
    "fields_of",
    "get_geometry",
    "pointwise",
    "receptive_field",
    "receptive_fields",
    "register_geometry",
    "single",
    "whole_image",
    "window",
]
