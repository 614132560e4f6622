"""Files in and out: the one atomic result writer, result names, and escaping for the report's HTML."""

from __future__ import annotations

from deconvviz.io.atomic import (
    MARKER,
    OutputError,
    atomic_file,
    check_target,
    clean_stale,
    clean_stale_temporaries,
    mark,
    owned,
    remove_owned,
    stage_folders,
    temporary_name,
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
    "clean_stale_temporaries",
    "mark",
    "owned",
    "remove_owned",
    "stage_folders",
    "temporary_name",
    "text",
    "url",
    "write_file",
]
