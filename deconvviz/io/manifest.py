"""What every manifest starts with: the tool, the schema version, the time and the library versions.

Every ``manifest.json`` deconvviz writes (a render's picture folders, an analysis result, a report, a top-k
search's ``topk.json``) and the scan state begin with :func:`header`; :func:`read_manifest` reads them back,
including those of releases that wrote ``"schema"`` where ``"schema_version"`` now stands.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from deconvviz.errors import DeconvVizError

SCHEMA_VERSION = 1
"""Version of the manifests' layout; raised when keys change meaning."""

MANIFEST = "manifest.json"
"""File name of the manifest in every result folder."""


class ManifestError(DeconvVizError, ValueError):
    """A file that is not a manifest deconvviz can read."""


def _unimported_version(package: str) -> str:
    """A package's ``__version__``, read from its ``version.py`` without importing it.

    Importing torchvision takes a second or two; its ``version.py`` holds the version with its local build tag
    (``0.29.1+cu130``). Without one, the installed metadata's version.
    """
    import importlib.metadata
    import importlib.util
    import re

    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    for folder in list(spec.submodule_search_locations or []) if spec is not None else []:
        try:
            found = re.search(r"""__version__\s*=\s*['"]([^'"]+)""", (Path(folder) / "version.py").read_text())
        except (OSError, UnicodeDecodeError):
            continue  # no version.py there: the metadata says it
        if found:
            return found.group(1)
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def library_versions() -> dict[str, str]:
    """Versions of deconvviz, torch, torchvision, matplotlib and Python, for manifests."""
    import sys

    import matplotlib
    import torch

    from deconvviz import __version__

    loaded = sys.modules.get("torchvision")
    torchvision = str(loaded.__version__) if loaded is not None else _unimported_version("torchvision")
    return {
        "deconvviz": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision,
        "matplotlib": matplotlib.__version__,
        "python": platform.python_version(),
    }


def preprocessing_record(model: Any) -> dict[str, Any] | None:
    """How the model's pictures were prepared (mean, std, scale, size, ...), or None for a bare module."""
    found = getattr(model, "preprocessing", None)
    if found is None or not dataclasses.is_dataclass(found) or isinstance(found, type):
        return None
    return {key: list(value) if isinstance(value, tuple) else value for key, value in dataclasses.asdict(found).items()}


def header(kind: str | None = None, *, stamped: bool = True) -> dict[str, Any]:
    """The keys every manifest starts with.

    They are ``tool``, ``kind`` (when given) and ``schema_version``, then, for a record of a run (``stamped``),
    when it was ``created`` and the library ``versions``. Data that must compare equal from run to run (a top-k
    search's ``topk.json``, a scan state) is written unstamped.
    """
    head: dict[str, Any] = {"tool": "deconvviz"}
    if kind is not None:
        head["kind"] = kind
    head["schema_version"] = SCHEMA_VERSION
    if stamped:
        head["created"] = datetime.now(UTC).isoformat(timespec="seconds")
        head["versions"] = library_versions()
    return head


def schema_version(data: Mapping[str, Any]) -> int | None:
    """The schema version a manifest (or scan state) was written with.

    Earlier releases wrote ``schema`` (manifests) or ``version`` (scan states) where ``schema_version`` stands now.
    """
    for key in ("schema_version", "schema", "version"):
        value = data.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A manifest written by deconvviz, with ``schema_version`` filled in whichever release wrote it.

    Args:
        path: a ``manifest.json`` (or ``topk.json``), or the result folder holding ``manifest.json``.

    Returns:
        The manifest as a dict.

    Raises:
        ManifestError: the file is missing, not JSON, not deconvviz's, or of a newer schema than this release reads.
    """
    file = Path(path)
    if file.is_dir():
        file = file / MANIFEST
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ManifestError(f"no manifest at {str(file)!r}; give a folder deconvviz wrote") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{str(file)!r} is not a readable JSON manifest ({exc})") from exc
    if not isinstance(data, dict):
        raise ManifestError(f"{str(file)!r} is not a deconvviz manifest (not a JSON object)")
    version = schema_version(data)
    if version is None or ("tool" in data and data["tool"] != "deconvviz"):
        raise ManifestError(f"{str(file)!r} is not a deconvviz manifest (no schema version)")
    if version > SCHEMA_VERSION:
        raise ManifestError(
            f"{str(file)!r} has schema version {version}, newer than this deconvviz reads ({SCHEMA_VERSION}); upgrade"
        )
    data.pop("schema", None)
    data["schema_version"] = version
    return data
