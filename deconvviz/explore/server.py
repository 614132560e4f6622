"""Run the explorer's app with uvicorn, in this process: on the main thread (the command) or a thread (notebooks)."""

from __future__ import annotations

import asyncio
import atexit
import html
import socket
import threading
from typing import Any

from deconvviz.explore.app import Settings, create_app
from deconvviz.explore.engine import Explorer


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host``:``port`` (port 0: a free port chosen by the system).

    Raises:
        OSError: the address cannot be bound (in use, not this machine's); the message says which.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # The protocol named, not left 0: asyncio turns Nagle's algorithm off (TCP_NODELAY) only on connections whose
    # socket says IPPROTO_TCP, and with it on, every answer on a kept-alive connection waited about 40 ms for the
    # client's delayed acknowledgement.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise OSError(
            f"cannot listen on {host}:{port} ({exc.strerror or exc}); choose another --port or --host"
        ) from exc
    sock.set_inheritable(True)
    return sock


class Server:
    """An explorer served over HTTP on one socket.

    Args:
        explorer: what to serve (closed when the server stops).
        host: the address to bind; ``127.0.0.1`` keeps it to this machine.
        port: the port, 0 for a free one.
        token: the secret every request must carry (random by default).
        embeddable: let notebook pages on this machine frame the page.

    Attributes:
        url: the address to open, with the token: ``http://HOST:PORT/?token=TOKEN``.
    """

    def __init__(
        self,
        explorer: Explorer,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        token: str | None = None,
        embeddable: bool = False,
    ) -> None:
        import uvicorn

        self.explorer = explorer
        self.socket = bind(host, port)
        bound = self.socket.getsockname()[1]
        self.settings = Settings(host=host, port=int(bound), embeddable=embeddable)
        if token:
            self.settings.token = token
        self.app = create_app(explorer, self.settings)
        config = uvicorn.Config(
            self.app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=2,
            server_header=False,
        )
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None
        self._closed = False

    @property
    def port(self) -> int:
        """The port served."""
        return self.settings.port

    @property
    def url(self) -> str:
        """``http://HOST:PORT/?token=TOKEN`` (``127.0.0.1`` for a server bound to every interface)."""
        host = self.settings.host
        shown = "127.0.0.1" if host in ("0.0.0.0", "", "::") else (f"[{host}]" if ":" in host else host)
        return f"http://{shown}:{self.port}/?token={self.settings.token}"

    def run(self) -> None:
        """Serve on this thread until Ctrl-C (or :meth:`stop` from another thread), then close the explorer."""
        try:
            self._server.run(sockets=[self.socket])
        finally:
            self.close()

    def start(self) -> Server:
        """Serve on a background thread; return at once (the server answers once :meth:`started` says so)."""

        def serve() -> None:
            asyncio.run(self._server.serve(sockets=[self.socket]))

        self._thread = threading.Thread(target=serve, name="deconvviz-explore-http", daemon=True)
        self._thread.start()
        atexit.register(self.stop)  # a kernel's shutdown ends the server without waiting on it
        return self

    def wait_started(self, timeout: float = 30.0) -> bool:
        """Wait until the server accepts requests; whether it does."""
        event = threading.Event()
        for _ in range(int(timeout / 0.02)):
            if self._server.started:
                return True
            event.wait(0.02)
        return bool(self._server.started)

    def stop(self) -> None:
        """Stop serving (waiting at most a few seconds for open requests) and close the explorer."""
        self._server.should_exit = True
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(10)
        self.close()

    def close(self) -> None:
        """Close the explorer and the socket (once)."""
        if self._closed:
            return
        self._closed = True
        self.explorer.close()
        self.socket.close()


class ExplorerHandle:
    """What :func:`deconvviz.explore` returns: the running explorer, shown inline in a notebook.

    Attributes:
        url: the address with its token.
        explorer: the :class:`~deconvviz.explore.engine.Explorer` behind it.
    """

    def __init__(self, server: Server, height: int = 860) -> None:
        self._server = server
        self.url = server.url
        self.explorer = server.explorer
        self.height = height

    def stop(self) -> None:
        """Stop the server and free what it held (the model worker, the cache, the uploads' folder)."""
        self._server.stop()

    @property
    def running(self) -> bool:
        """Whether the server still runs."""
        return not self._server._closed

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<deconvviz explorer {state} at {self.url}>"

    def _repr_html_(self) -> str:
        src = html.escape(self.url, quote=True)
        return (
            f'<iframe src="{src}" width="100%" height="{int(self.height)}" style="border:1px solid #ccc" '
            f'title="deconvviz explorer"></iframe><p><a href="{src}" target="_blank">open in a new tab</a></p>'
        )


def explore(
    model: Any = "vgg16",
    images: Any = None,
    *,
    report: Any = None,
    device: str | None = "auto",
    checkpoint: Any = None,
    host: str = "127.0.0.1",
    port: int = 0,
    token: str | None = None,
    cache_bytes: int | None = None,
    height: int = 860,
) -> ExplorerHandle:
    """Start the explorer on a thread of this process and show it inline (in Jupyter, through an IFrame).

    Args:
        model: a model name, a loaded model (:func:`deconvviz.load_model`) or a session.
        images: a folder or a text file of picture paths, or picture files; None for uploads only.
        report: a ``deconvviz report`` folder whose top-k hits to show instead of scanning the folder.
        device: where the model runs.
        checkpoint: a state dict file to load into the named model.
        host: the address to bind (127.0.0.1: this machine only).
        port: the port; 0 picks a free one.
        token: the secret of this launch (random by default).
        cache_bytes: the capture cache's size in bytes.
        height: the inline frame's height in pixels.

    Returns:
        The :class:`ExplorerHandle`; ``.stop()`` ends the server (the kernel's shutdown does too).

    Example:
        >>> ex = dv.explore(model, "photos/")  # doctest: +SKIP
        >>> ex  # doctest: +SKIP
        >>> ex.stop()  # doctest: +SKIP
    """
    explorer = Explorer(model, images, device=device, checkpoint=checkpoint, report=report, cache_bytes=cache_bytes)
    try:
        server = Server(explorer, host, port, token=token, embeddable=True)
    except BaseException:
        explorer.close()
        raise
    server.start()
    server.wait_started()
    return ExplorerHandle(server, height)


__all__ = ["ExplorerHandle", "Server", "bind", "explore"]
