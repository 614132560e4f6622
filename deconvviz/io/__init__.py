"""Files in and out: the one atomic result writer, result names, and escaping for the report's HTML."""

from __future__ import annotations

from deconvviz.io.atomic import (
    MARKER,
    OutputError,
    atomic_file,
    check_target,
    clean_stale,
    mark,
    owned,
    remove_owned,
    stage_folders,
    write_file,
)
from deconvviz.io.names import NameMap, clean_name
from deconvviz.io.web import text, url

__all__ = [
    "MARKER",
    "NameMap",
    "OutputError",
    "atomic_file",
    "check_target",
    "clean_name",
    "clean_stale",
    "mark",
    "owned",
    "remove_owned",
    "stage_folders",
    "text",
    "url",
    "write_file",
]
