"""``deconvviz explore``: a local page to click through any unit of a network and see what it responds to.

The explorer serves one page and a small JSON/PNG API (see ``docs/explorer.md``) over the same engine the
command line uses: pictures addressed by ids the server gives, one capture per picture and layer kept in a
byte-bounded cache, the model on one worker, stale requests dropped, the folder's top-k scanned in the
background. It binds 127.0.0.1 with a per-launch token and a Host check, as Jupyter's server does.

Modules: :mod:`~deconvviz.explore.engine` (the answers, as plain Python), :mod:`~deconvviz.explore.pictures`
(the pictures it knows and the errors a request can cause), :mod:`~deconvviz.explore.app` (the
HTTP app), :mod:`~deconvviz.explore.server` (uvicorn in this process; :func:`~deconvviz.explore.server.explore`
is ``dv.explore``), :mod:`~deconvviz.explore.command` (the command line). Nothing is imported here, so that the
command line's ``--help`` stays fast.

Example:
    >>> import deconvviz as dv
    >>> ex = dv.explore("vgg16", "photos/")  # doctest: +SKIP
    >>> ex.stop()  # doctest: +SKIP
"""

from __future__ import annotations

import sys
import types
from typing import Any


class _Package(types.ModuleType):
    """This package, callable as :func:`deconvviz.explore.server.explore`.

    ``deconvviz.explore`` names both this package and the notebook helper ``dv.explore``; once the package is
    imported (the command line imports it), Python binds the name to the package, so the package answers the call.
    """

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from deconvviz.explore.server import explore

        return explore(*args, **kwargs)


sys.modules[__name__].__class__ = _Package
