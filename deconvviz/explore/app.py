"""The explorer's HTTP app: one page and a small JSON/PNG API over :class:`~deconvviz.explore.engine.Explorer`.

Starlette gives the routing, the multipart parser and a test client; nothing here runs the model itself.
Every request passes :class:`Guard` first: the ``Host`` header must name the address served (against DNS
rebinding), and every page and API request must carry the launch's token (``?token=``, which the page then keeps in
an HttpOnly SameSite=Strict cookie, or ``Authorization: token TOKEN``, as Jupyter's server takes it). Every
answer carries a Content-Security-Policy that lets the page load from this server only. Bad input is a 4xx
with ``{"error": "<one line>"}``, the line the command line prints for the same mistake.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from deconvviz.errors import DeconvVizError, first_line
from deconvviz.explore.engine import Explorer
from deconvviz.explore.pictures import ExploreError, UploadTooLargeError, mebibytes
from deconvviz.explore.topk import topk_status
from deconvviz.explore.worker import Busy, Stopped, Superseded
from deconvviz.methods import get_method

HERE = Path(__file__).resolve().parent
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
FORM_SLACK = 64 << 10
"""Bytes a multipart form may add around the uploaded file (boundaries, part headers)."""
PAGE_SIZE = 48
"""Thumbnails per page of the strip."""

_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors {ancestors}"
)
_NOTEBOOK_ANCESTORS = (
    "'self' http://localhost:* http://127.0.0.1:* https://localhost:* https://127.0.0.1:* vscode-webview:"
)


@dataclass
class Settings:
    """How the app checks and answers requests.

    Attributes:
        token: the launch's secret.
        host: the address bound (``127.0.0.1`` unless told otherwise).
        port: the port served (set once bound; 0 before).
        embeddable: let notebook pages on this machine show the page in a frame (``dv.explore``).
    """

    token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    host: str = "127.0.0.1"
    port: int = 0
    embeddable: bool = False

    @property
    def cookie(self) -> str:
        """The name of the cookie that keeps the token (one per port: several explorers may run at once)."""
        return f"deconvviz-explore-{self.port}"

    def allowed_host(self, header: str) -> bool:
        """Whether a ``Host`` header names this server: a loopback name or the bound address, with our port."""
        name, port = _split_host(header)
        if name is None or (self.port and port != self.port):
            return False
        if name in LOOPBACK_NAMES or name == self.host.lower().strip("[]"):
            return True
        if self.host in ("0.0.0.0", "::", ""):  # every interface: any address literal, never a DNS name
            try:
                ipaddress.ip_address(name)
            except ValueError:
                return False
            return True
        return False


def _split_host(header: str) -> tuple[str | None, int | None]:
    text = header.strip().lower()
    if not text:
        return None, None
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            return None, None
        name, rest = text[1:end], text[end + 1 :]
        port_text = rest[1:] if rest.startswith(":") else ""
    else:
        name, _, port_text = text.partition(":")
    if port_text and not port_text.isdigit():
        return None, None
    return name, int(port_text) if port_text else 80


def _error(message: str, status: int) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class Guard:
    """ASGI middleware: the Host check, the token, and the security headers on every answer."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Check the request, then hand it on with the security headers added to the answer."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        path = scope["path"]
        refusal: Response | None = None
        set_cookie = False
        if not self.settings.allowed_host(headers.get("host", "")):
            refusal = _error(
                f"refused: Host {headers.get('host', '')!r} is not the address this explorer serves "
                f"(open the address `deconvviz explore` printed)",
                403,
            )
        elif not path.startswith("/static/") and path != "/favicon.ico":
            query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
            given = (query.get("token") or [None])[0]
            auth = headers.get("authorization", "")
            if given is None and auth.lower().startswith("token "):
                given = auth[6:].strip()
            from_query = given is not None and "token" in query
            if given is None:
                cookie: SimpleCookie = SimpleCookie()
                try:
                    cookie.load(headers.get("cookie", ""))
                except Exception:  # a malformed cookie header counts as none
                    cookie = SimpleCookie()
                morsel = cookie.get(self.settings.cookie)
                given = morsel.value if morsel is not None else None
            if given is None:
                refusal = _error(
                    "no token: open the address `deconvviz explore` printed (it ends in ?token=...), or send "
                    "the header `Authorization: token TOKEN`",
                    401,
                )
            elif not secrets.compare_digest(given.encode(), self.settings.token.encode()):
                refusal = _error("wrong token: open the address `deconvviz explore` printed for this launch", 403)
            else:
                set_cookie = from_query and path == "/"

        extra = self._headers(set_cookie)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        if refusal is not None:
            await refusal(scope, receive, send_with_headers)
            return
        await self.app(scope, receive, send_with_headers)

    def _headers(self, set_cookie: bool) -> list[tuple[bytes, bytes]]:
        ancestors = _NOTEBOOK_ANCESTORS if self.settings.embeddable else "'self'"
        out = [
            (b"content-security-policy", _CSP.format(ancestors=ancestors).encode()),
            (b"x-content-type-options", b"nosniff"),
            (b"referrer-policy", b"no-referrer"),
            (b"cache-control", b"no-store"),
        ]
        if set_cookie:
            # SameSite=None would be needed for a cross-site frame; Strict keeps the token to this site's own pages.
            value = f"{self.settings.cookie}={self.settings.token}; Path=/; HttpOnly; SameSite=Strict"
            out.append((b"set-cookie", value.encode()))
        return out


def create_app(explorer: Explorer, settings: Settings | None = None) -> Starlette:
    """The Starlette app serving ``explorer``.

    Args:
        explorer: what to serve.
        settings: token, address and framing (a random token on 127.0.0.1 by default).

    Returns:
        The ASGI app (wrapped in :class:`Guard`).
    """
    settings = settings or Settings()
    templates = Jinja2Templates(directory=str(HERE / "templates"))  # autoescapes .html templates

    async def on_model(request: Request, run: Callable[[], Any]) -> Any:
        """Run ``run`` on the model worker; a newer request of the same page drops this one if it still waits."""
        client = request.query_params.get("client") or None
        seq_text = request.query_params.get("seq") or "0"
        seq = int(seq_text) if seq_text.isdigit() else 0
        future = explorer.worker.submit(run, client, seq)
        return await asyncio.wrap_future(future)

    def answering(handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        async def wrapped(request: Request) -> Response:
            try:
                return await handler(request)
            except Superseded as exc:
                return _error(first_line(exc), 429)
            except (Busy, Stopped) as exc:
                response = _error(first_line(exc), 503)
                response.headers["retry-after"] = "1"
                return response
            except (DeconvVizError, ValueError) as exc:
                return _error(first_line(exc), int(getattr(exc, "status", 400)))
            except MemoryError:
                return _error("out of memory; close other work or start the explorer with a smaller --cache", 503)
            except Exception as exc:  # torch's own failures (out of memory on a GPU, ...): not the request's fault
                import traceback

                traceback.print_exc()  # on the server's stderr; the page gets one line
                return _error(f"the server failed: {first_line(exc)}", 500)

        return wrapped

    def png(data: bytes) -> Response:
        return Response(data, media_type="image/png")

    def query(request: Request, name: str) -> str | None:
        return request.query_params.get(name)

    async def page(request: Request) -> Response:
        config = {
            "model": explorer.session.name,
            "methods": ["deconvnet", "guided", "gradient"],
            "scales": ["robust", "max", "minmax"],
            "pageSize": PAGE_SIZE,
            "uploadLimit": explorer.upload_limit,
            "folder": explorer.source.description if explorer.source is not None else None,
        }
        return templates.TemplateResponse(
            request, "index.html", {"model": explorer.session.name, "config": json.dumps(config)}
        )

    async def images(request: Request) -> Response:
        offset = parse_int(query(request, "offset") or "0", "offset")
        limit_text = query(request, "limit")
        limit = parse_int(limit_text, "limit") if limit_text else None
        if offset < 0 or (limit is not None and limit < 0):
            raise ExploreError("offset and limit must be 0 or more")
        around = query(request, "image")
        if around is not None:  # the page of `limit` pictures that holds this one (the strip opens on it)
            if limit is None:
                raise ExploreError("give limit=N with image=ID: the page of N pictures that holds the picture")
            offset = explorer.page_of(around, limit)
        listed = await run_in_threadpool(explorer.images, offset, limit)
        headers = {"x-total-count": str(len(explorer.order)), "x-offset": str(offset)}
        return JSONResponse(listed, headers=headers)

    async def upload(request: Request) -> Response:
        kind = request.headers.get("content-type", "")
        if not kind.startswith("multipart/form-data"):
            raise ExploreError("send the picture as multipart/form-data, in the field `file`")
        limit = explorer.upload_limit
        declared = request.headers.get("content-length", "")
        too_large = UploadTooLargeError(
            f"the upload is over the limit of {mebibytes(limit)}; send a smaller picture or start the explorer "
            "with a larger --upload-limit"
        )
        if declared.isdigit() and int(declared) > limit + FORM_SLACK:
            raise too_large
        chunks, total = [], 0
        async for chunk in request.stream():
            total += len(chunk)
            if total > limit + FORM_SLACK:
                raise too_large
            chunks.append(chunk)
        body = b"".join(chunks)

        async def stream() -> Any:
            yield body

        parser = MultiPartParser(request.headers, stream(), max_files=1, max_fields=8)
        parser.spool_max_size = limit + FORM_SLACK  # the file stays in memory: it is decoded before it is kept
        try:
            form = await parser.parse()
        except MultiPartException as exc:
            raise ExploreError(f"cannot read the upload ({exc.message}); send one picture in the field `file`") from exc
        item = form.get("file")
        if not isinstance(item, UploadFile):
            raise ExploreError("send the picture as multipart/form-data, in the field `file`")
        data = await item.read()
        await form.close()
        entry = await run_in_threadpool(explorer.upload, data, item.filename or "upload")
        return JSONResponse(entry, status_code=201)

    async def layers(request: Request) -> Response:
        listed = explorer.layers_known or await on_model(request, explorer.layers)
        return JSONResponse(listed)

    def unit_arguments(request: Request) -> tuple[str, str, int]:
        image = explorer.picture(query(request, "image") or "").id  # a picture's name works as well as its id
        layer = query(request, "layer") or ""
        explorer.resolve(layer)
        return image, layer, parse_int(query(request, "channel"), "channel")

    def method_of(request: Request) -> str:
        return get_method(query(request, "method") or None).name

    async def activations(request: Request) -> Response:
        image = explorer.picture(query(request, "image") or "").id  # a picture's name works as well as its id
        layer = query(request, "layer") or ""
        explorer.resolve(layer)
        method = method_of(request)
        return JSONResponse(await on_model(request, lambda: explorer.activations(image, layer, method)))

    async def activation_png(request: Request) -> Response:
        image, layer, channel = unit_arguments(request)
        kept = explorer.cached(image, layer)
        if kept is not None:  # the page asked for the activations first: no model work, no queue
            return png(await run_in_threadpool(explorer.activation_png, image, layer, channel, kept))
        return png(await on_model(request, lambda: explorer.activation_png(image, layer, channel)))

    async def unit(request: Request) -> Response:
        image, layer, channel = unit_arguments(request)
        position = parse_position(query(request, "position"))
        method = method_of(request)
        return JSONResponse(await on_model(request, lambda: explorer.unit(image, layer, channel, position, method)))

    async def projection(request: Request) -> Response:
        from deconvviz.viz.scaling import Scaling

        image, layer, channel = unit_arguments(request)
        position = parse_position(query(request, "position"))
        method = method_of(request)
        scale = Scaling.of(query(request, "scale") or None).name
        return png(
            await on_model(request, lambda: explorer.projection_png(image, layer, channel, position, method, scale))
        )

    async def steps(request: Request) -> Response:
        image, layer, channel = unit_arguments(request)
        position = parse_position(query(request, "position"))
        method = method_of(request)
        return JSONResponse(
            await on_model(request, lambda: explorer.steps_list(image, layer, channel, position, method))
        )

    async def step_png(request: Request) -> Response:
        from deconvviz.viz.scaling import Scaling

        image, layer, channel = unit_arguments(request)
        position = parse_position(query(request, "position"))
        method = method_of(request)
        scale = Scaling.of(query(request, "scale") or None).name
        step = parse_int(query(request, "step"), "step")
        return png(
            await on_model(request, lambda: explorer.step_png(image, layer, channel, step, position, method, scale))
        )

    async def picture(request: Request) -> Response:
        image = explorer.picture(query(request, "image") or "").id  # a picture's name works as well as its id
        size_text = query(request, "size")
        if size_text:
            size = parse_int(size_text, "size")
            return png(await run_in_threadpool(explorer.thumbnail_png, image, size))
        return png(await run_in_threadpool(explorer.input_png, image))

    def occluder(request: Request) -> tuple[str, str, int, int | None, int | None]:
        image, layer, channel = unit_arguments(request)
        size, stride = (query(request, name) for name in ("size", "stride"))
        return (
            image,
            layer,
            channel,
            parse_int(size, "size") if size else None,
            parse_int(stride, "stride") if stride else None,
        )

    async def occlusion(request: Request) -> Response:
        from deconvviz.explore.occlude import occlusion_map

        arguments = occluder(request)
        return JSONResponse(await on_model(request, lambda: occlusion_map(explorer, *arguments)))

    async def occlusion_png(request: Request) -> Response:
        from deconvviz.explore.occlude import occlusion_png

        arguments = occluder(request)
        return png(await on_model(request, lambda: occlusion_png(explorer, *arguments)))

    async def topk(request: Request) -> Response:
        layer = query(request, "layer") or ""
        channel = parse_int(query(request, "channel"), "channel")
        method = method_of(request)
        return JSONResponse(await run_in_threadpool(explorer.topk, layer, channel, method))

    async def status(request: Request) -> Response:
        cache = explorer.cache
        return JSONResponse(
            {
                "model": explorer.session.name,
                "images": len(explorer.order),
                "cache": {"bytes": cache.bytes, "limit": cache.limit, "entries": len(cache)},
                "pending": explorer.worker.pending,
                "scan": topk_status(explorer),
            }
        )

    async def favicon(request: Request) -> Response:
        return Response(status_code=204)

    async def not_found(request: Request, exc: Exception) -> Response:
        path = request.url.path
        shown = path if len(path) <= 120 else path[:100] + "..."  # a long address is not echoed whole
        return _error(f"no such address: {shown}; the API is under /api/ (see docs/explorer.md)", 404)

    async def not_allowed(request: Request, exc: Exception) -> Response:
        return _error(f"{request.method} is not allowed on {request.url.path}", 405)

    routes = [
        Route("/", answering(page)),
        Route("/favicon.ico", favicon),
        Route("/api/images", answering(images), methods=["GET"]),
        Route("/api/images", answering(upload), methods=["POST"]),
        Route("/api/layers", answering(layers)),
        Route("/api/activations", answering(activations)),
        Route("/api/activations.png", answering(activation_png)),
        Route("/api/unit", answering(unit)),
        Route("/api/projection.png", answering(projection)),
        Route("/api/steps", answering(steps)),
        Route("/api/steps.png", answering(step_png)),
        Route("/api/image.png", answering(picture)),
        Route("/api/occlusion", answering(occlusion)),
        Route("/api/occlusion.png", answering(occlusion_png)),
        Route("/api/topk", answering(topk)),
        Route("/api/status", answering(status)),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    app = Starlette(routes=routes, exception_handlers={404: not_found, 405: not_allowed})
    app.state.explorer = explorer
    app.state.settings = settings
    return Guard(app, settings)  # type: ignore[return-value]


def parse_position(text: str | None) -> tuple[int, int] | None:
    """``"R,C"`` as ``(R, C)``; None for no text."""
    if text is None or text == "":
        return None
    parts = text.split(",")
    if len(parts) != 2 or not all(p.strip().lstrip("-").isdigit() for p in parts):
        raise ExploreError(f"position must be ROW,COL (two whole numbers), got {text!r}")
    return int(parts[0]), int(parts[1])


def parse_int(text: str | None, name: str) -> int:
    """A required whole-number query parameter."""
    if text is None or text == "":
        raise ExploreError(f"give {name}=N (a whole number)")
    if not text.strip().lstrip("-").isdigit():
        raise ExploreError(f"{name} must be a whole number, got {text!r}")
    return int(text)


__all__ = ["Guard", "Settings", "create_app"]
