"""deconvviz: see what a convolutional network has learned, after Zeiler & Fergus (ECCV 2014).

Public names are loaded lazily, so ``import deconvviz`` (and ``deconvviz --help``) stay fast and do not
import torch or matplotlib until a name that needs them is used.

Example:
    >>> import deconvviz as dv
    >>> net = dv.DeconvNet(model)  # doctest: +SKIP
    >>> p = net.project(x, layer="features.29", top=9)  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "DeconvNet": "deconvviz.core.deconvnet",
    "Projection": "deconvviz.core.projection",
    "ProjectionSteps": "deconvviz.core.steps",
    "Step": "deconvviz.core.steps",
    "Rule": "deconvviz.ops.base",
    "register_rule": "deconvviz.ops",
    "get_rule": "deconvviz.ops",
    "RuleSet": "deconvviz.methods",
    "MethodError": "deconvviz.methods",
    "get_method": "deconvviz.methods",
    "list_methods": "deconvviz.methods",
    "register_method": "deconvviz.methods",
    "DeconvVizError": "deconvviz.errors",
    "UnsupportedOpError": "deconvviz.errors",
    "TraceError": "deconvviz.errors",
    "ForwardError": "deconvviz.errors",
    "top_k": "deconvviz.analysis.topk.scan",
    "TopKResult": "deconvviz.analysis.topk.result",
    "build_report": "deconvviz.viz.report",
    "Report": "deconvviz.viz.report",
    "load_model": "deconvviz.models.zoo",
    "register_model": "deconvviz.models.zoo",
    "list_models": "deconvviz.models.zoo",
    "ModelSpec": "deconvviz.models.specs",
    "LoadedModel": "deconvviz.models.specs",
    "Preprocessing": "deconvviz.models.specs",
    "WeightsUnavailableError": "deconvviz.models.weights.sources",
    "load_image": "deconvviz.io.images",
    "ImageError": "deconvviz.io.images",
    "visualize": "deconvviz.api",
    "render_images": "deconvviz.viz.folders",
    "session": "deconvviz.models.session",
    "Session": "deconvviz.models.session",
    "default_layers": "deconvviz.core.layers",
    "layer_names": "deconvviz.core.layers",
    "RenderedImage": "deconvviz.viz.folders",
    "RenderedLayer": "deconvviz.viz.folders",
    "OutputError": "deconvviz.io",
    "ReceptiveField": "deconvviz.ops.geometry",
    "receptive_field": "deconvviz.core.receptive",
    "receptive_fields": "deconvviz.core.receptive",
    "register_geometry": "deconvviz.ops.geometry",
    "invariance": "deconvviz.analysis.invariance",
    "InvarianceResult": "deconvviz.analysis.invariance",
    "sanity": "deconvviz.analysis.sanity",
    "SanityResult": "deconvviz.analysis.sanity",
    "evolution": "deconvviz.analysis.evolution",
    "EvolutionResult": "deconvviz.analysis.evolution",
    "AnalysisError": "deconvviz.analysis.base",
    "AnalysisResult": "deconvviz.analysis.base",
    "occlusion": "deconvviz.analysis.occlusion",
    "OcclusionResult": "deconvviz.analysis.occlusion",
    "occlusion_jobs": "deconvviz.analysis.occlusion",
    "check_result_folder": "deconvviz.analysis.base",
    "correspondence": "deconvviz.analysis.correspondence",
    "CorrespondenceResult": "deconvviz.analysis.correspondence",
    "load_parts": "deconvviz.analysis.correspondence",
    "discrimination": "deconvviz.analysis.discrimination",
    "DiscriminationResult": "deconvviz.analysis.discrimination",
    "DiscriminationCurve": "deconvviz.analysis.discrimination",
    "explore": "deconvviz.explore.server",
    "filters": "deconvviz.viz.filters",
    "Filters": "deconvviz.viz.filters",
    "RenderError": "deconvviz.errors",
}

__all__ = ["__version__", *sorted(_EXPORTS)]

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from deconvviz.analysis.base import AnalysisError as AnalysisError
    from deconvviz.analysis.base import AnalysisResult as AnalysisResult
    from deconvviz.analysis.base import check_result_folder as check_result_folder
    from deconvviz.analysis.correspondence import CorrespondenceResult as CorrespondenceResult
    from deconvviz.analysis.correspondence import correspondence as correspondence
    from deconvviz.analysis.correspondence import load_parts as load_parts
    from deconvviz.analysis.discrimination import DiscriminationCurve as DiscriminationCurve
    from deconvviz.analysis.discrimination import DiscriminationResult as DiscriminationResult
    from deconvviz.analysis.discrimination import discrimination as discrimination
    from deconvviz.analysis.evolution import EvolutionResult as EvolutionResult
    from deconvviz.analysis.evolution import evolution as evolution
    from deconvviz.analysis.invariance import InvarianceResult as InvarianceResult
    from deconvviz.analysis.invariance import invariance as invariance
    from deconvviz.analysis.occlusion import OcclusionResult as OcclusionResult
    from deconvviz.analysis.occlusion import occlusion as occlusion
    from deconvviz.analysis.occlusion import occlusion_jobs as occlusion_jobs
    from deconvviz.analysis.sanity import SanityResult as SanityResult
    from deconvviz.analysis.sanity import sanity as sanity
    from deconvviz.analysis.topk.result import TopKResult as TopKResult
    from deconvviz.analysis.topk.scan import top_k as top_k
    from deconvviz.api import visualize as visualize
    from deconvviz.core.deconvnet import DeconvNet as DeconvNet
    from deconvviz.core.layers import default_layers as default_layers
    from deconvviz.core.layers import layer_names as layer_names
    from deconvviz.core.projection import Projection as Projection
    from deconvviz.core.receptive import receptive_field as receptive_field
    from deconvviz.core.receptive import receptive_fields as receptive_fields
    from deconvviz.core.steps import ProjectionSteps as ProjectionSteps
    from deconvviz.core.steps import Step as Step
    from deconvviz.errors import DeconvVizError as DeconvVizError
    from deconvviz.errors import ForwardError as ForwardError
    from deconvviz.errors import RenderError as RenderError
    from deconvviz.errors import TraceError as TraceError
    from deconvviz.errors import UnsupportedOpError as UnsupportedOpError
    from deconvviz.explore.server import explore as explore
    from deconvviz.io import OutputError as OutputError
    from deconvviz.io.images import ImageError as ImageError
    from deconvviz.io.images import load_image as load_image
    from deconvviz.methods import MethodError as MethodError
    from deconvviz.methods import RuleSet as RuleSet
    from deconvviz.methods import get_method as get_method
    from deconvviz.methods import list_methods as list_methods
    from deconvviz.methods import register_method as register_method
    from deconvviz.models.session import Session as Session
    from deconvviz.models.session import session as session
    from deconvviz.models.specs import LoadedModel as LoadedModel
    from deconvviz.models.specs import ModelSpec as ModelSpec
    from deconvviz.models.specs import Preprocessing as Preprocessing
    from deconvviz.models.weights.sources import WeightsUnavailableError as WeightsUnavailableError
    from deconvviz.models.zoo import list_models as list_models
    from deconvviz.models.zoo import load_model as load_model
    from deconvviz.models.zoo import register_model as register_model
    from deconvviz.ops import get_rule as get_rule
    from deconvviz.ops import register_rule as register_rule
    from deconvviz.ops.base import Rule as Rule
    from deconvviz.ops.geometry import ReceptiveField as ReceptiveField
    from deconvviz.ops.geometry import register_geometry as register_geometry
    from deconvviz.viz.filters import Filters as Filters
    from deconvviz.viz.filters import filters as filters
    from deconvviz.viz.folders import RenderedImage as RenderedImage
    from deconvviz.viz.folders import RenderedLayer as RenderedLayer
    from deconvviz.viz.folders import render_images as render_images
    from deconvviz.viz.report import Report as Report
    from deconvviz.viz.report import build_report as build_report


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'deconvviz' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    """The public names and the subpackages loaded so far, not the names this module imports for itself."""
    loaded = {k for k, v in globals().items() if getattr(v, "__name__", "").startswith("deconvviz.") and k[0] != "_"}
    return sorted(set(__all__) | {"__version__"} | {k for k in loaded if type(globals()[k]).__name__ == "module"})
