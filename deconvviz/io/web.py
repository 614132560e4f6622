"""One escaping path for everything that goes into the report's HTML.

Text and attribute values are escaped with every quote, so a value is inert inside single- or double-quoted
attributes; a link is a relative path whose every component is percent-encoded, so a file name can neither
end the attribute, nor start a scheme (``javascript:``), nor leave the report's folder.
"""

from __future__ import annotations

import html
from urllib.parse import quote


def text(value: object) -> str:
    """``value`` as HTML text or an attribute value (``&``, ``<``, ``>``, ``"`` and ``'`` escaped)."""
    return html.escape(str(value), quote=True)


def url(path: str, fragment: str = "") -> str:
    """A relative link to ``path`` (``/``-separated, ``..`` allowed), and to ``fragment`` in it, for an attribute.

    Example:
        >>> url("images/x'><img src=x>.html")
        'images/x%27%3E%3Cimg%20src%3Dx%3E.html'
    """
    parts = path.split("/")
    link = "/".join(part if part in ("..", ".") else quote(part, safe="") for part in parts)
    return text(link + (f"#{quote(fragment, safe='')}" if fragment else ""))


__all__ = ["text", "url"]
