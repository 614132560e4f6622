"""Griffe extension: docstrings written for Sphinx and doctest, read as Markdown for the reference.

A Sphinx role (``:class:`X```) whose target is a public name of the package becomes a link to that name's
entry; any other target (a private helper, the standard library) becomes plain code, so that no reference is
left dangling. An ``Example:`` section is read as Google style's ``Examples:``, so its ``>>>`` lines are
shown as code rather than read as Markdown.
"""

from __future__ import annotations

import importlib
import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:class|func|meth|attr|data|mod|exc|obj):`(~?)([^`]+)`")
_EXAMPLE = re.compile(r"^(\s*)Example:\s*$", re.MULTILINE)


def _public() -> set[str]:
    return set(importlib.import_module("deconvviz").__all__)


def rewrite(text: str, public: set[str]) -> str:
    """``text`` with each Sphinx role turned into a link (public names) or inline code (anything else)."""

    def replace(match: re.Match[str]) -> str:
        short, target = match.group(1) == "~", match.group(2)
        last = target.rsplit(".", 1)[-1]
        shown = last if short else target
        if (last in public and target in (last, f"deconvviz.{last}")) or (short and last in public):
            return f"[`{shown}`][deconvviz.{last}]"
        return f"`{shown}`"

    return _EXAMPLE.sub(r"\1Examples:", _ROLE.sub(replace, text))


class SphinxRoles(griffe.Extension):
    """Rewrites the docstrings of every object griffe loads."""

    def __init__(self) -> None:
        super().__init__()
        self._names = _public()

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        """Rewrite one object's docstring."""
        if obj.docstring is not None:
            obj.docstring.value = rewrite(obj.docstring.value, self._names)
