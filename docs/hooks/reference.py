"""MkDocs hook: the API reference page, generated from the package's own list of public names.

``deconvviz._EXPORTS`` maps every public name to the module that defines it; the page gets one
mkdocstrings entry per name, under the public path (``deconvviz.DeconvNet``), so the reference follows the
code wherever a name's module moves, and a name added to the package appears here without an edit.
"""

from __future__ import annotations

import importlib
from typing import Any

from mkdocs.structure.files import File, Files

PAGE = "reference.md"

# Topics for the page, in order; a public name not listed here still gets its entry, under "More".
TOPICS: dict[str, list[str]] = {
    "The engine": [
        "DeconvNet",
        "Projection",
        "ProjectionSteps",
        "Step",
        "ReceptiveField",
        "receptive_field",
        "receptive_fields",
    ],
    "Notebook helpers and rendering": [
        "visualize",
        "render_images",
        "session",
        "Session",
        "default_layers",
        "layer_names",
        "RenderedImage",
        "RenderedLayer",
        "load_image",
        "filters",
        "Filters",
    ],
    "Top-k grids and the report": ["top_k", "TopKResult", "build_report", "Report"],
    "The explorer": ["explore"],
    "Analyses": [
        "AnalysisResult",
        "occlusion",
        "OcclusionResult",
        "occlusion_jobs",
        "correspondence",
        "CorrespondenceResult",
        "load_parts",
        "invariance",
        "InvarianceResult",
        "evolution",
        "EvolutionResult",
        "discrimination",
        "DiscriminationResult",
        "DiscriminationCurve",
        "sanity",
        "SanityResult",
        "check_result_folder",
    ],
    "Models and weights": ["load_model", "register_model", "list_models", "ModelSpec", "LoadedModel", "Preprocessing"],
    "Reverse passes and rules": [
        "RuleSet",
        "get_method",
        "list_methods",
        "register_method",
        "Rule",
        "register_rule",
        "get_rule",
        "register_geometry",
    ],
    "Errors": [
        "DeconvVizError",
        "AnalysisError",
        "ForwardError",
        "ImageError",
        "MethodError",
        "OutputError",
        "RenderError",
        "TraceError",
        "UnsupportedOpError",
        "WeightsUnavailableError",
    ],
}

INTRO = """# API reference

Every public name of `deconvviz`, from its docstring. Import the package once and reach everything through
it: `import deconvviz as dv`, then `dv.DeconvNet`, `dv.visualize`, ... (the names load lazily, so
`import deconvviz` alone does not import torch).
"""


def public_names() -> list[str]:
    """The names in ``deconvviz.__all__`` other than ``__version__``, read without importing torch."""
    package = importlib.import_module("deconvviz")
    return [name for name in package.__all__ if not name.startswith("__")]


def reference_markdown() -> str:
    """The reference page: one section per topic, one mkdocstrings entry per public name."""
    names = public_names()
    listed = {name for group in TOPICS.values() for name in group}
    topics = {title: [n for n in group if n in names] for title, group in TOPICS.items()}
    topics["More"] = [n for n in names if n not in listed]
    parts = [INTRO]
    for title, group in topics.items():
        if not group:
            continue
        parts.append(f"## {title}\n")
        parts.extend(f"::: deconvviz.{name}\n" for name in group)
    parts.append("## Version\n\n::: deconvviz.__version__\n")
    return "\n".join(parts)


def on_files(files: Files, config: Any) -> Files:
    """Add the generated reference page to the site."""
    files.append(File.generated(config, PAGE, content=reference_markdown()))
    return files
