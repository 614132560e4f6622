"""``deconvviz explore``: the command that starts the explorer (registered in :mod:`deconvviz.cli`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from deconvviz.cli.options import DEFAULT_MODEL, DebugOption, DeviceOption, ModelChoice, err, model_options, reported

LOOPBACK = ("127.0.0.1", "localhost", "::1")
DEFAULT_PORT = 8765
"""The port tried first when none is given (a fixed port keeps permalinks valid from one launch to the next)."""


@model_options
def explore_command(
    images: Annotated[
        list[Path] | None,
        typer.Argument(
            metavar="[IMAGES]",
            help="A folder of pictures (scanned recursively), a text file of picture paths, or picture files. "
            "Without it the page starts empty and takes uploads.",
            show_default=False,
        ),
    ] = None,
    model: ModelChoice = DEFAULT_MODEL,
    report: Annotated[
        Path | None,
        typer.Option(
            "--report",
            help="A `deconvviz report` folder: its top-k hits fill the top-9 panel instead of a background scan "
            "(and its folder is explored when IMAGES is not given).",
            show_default=False,
        ),
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(
            "--port", min=0, max=65535, help=f"The port; 0 picks a free one. Default: {DEFAULT_PORT}, else a free one."
        ),
    ] = None,
    host: Annotated[
        str, typer.Option("--host", help="The address to listen on; 127.0.0.1 keeps the explorer to this machine.")
    ] = "127.0.0.1",
    no_browser: Annotated[bool, typer.Option("--no-browser", help="Do not open a browser.")] = False,
    device: DeviceOption = "auto",
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            help="The secret every request must carry (default: a random one per launch).",
            show_default=False,
        ),
    ] = None,
    cache: Annotated[
        int | None,
        typer.Option(
            "--cache",
            min=0,
            help="MiB of captures kept in memory (default: an eighth of the machine's memory, at most 4096).",
            show_default=False,
        ),
    ] = None,
    upload_limit: Annotated[int, typer.Option("--upload-limit", min=1, help="The largest upload, in MiB.")] = 32,
    debug: DebugOption = False,
) -> None:
    """Explore a network in the browser: click any channel or unit and see what it responds to, live.

    Pick a picture and a layer, see every channel's activation map, click a channel or a unit to see it projected
    to pixels beside its receptive field, and its top 9 over the folder.

    Prints one line, `deconvviz explore: http://127.0.0.1:PORT/?token=TOKEN`, then serves until Ctrl-C.
    """
    import sys

    with reported(debug):
        if host not in LOOPBACK:
            err(
                f"warning: listening on {host}, not 127.0.0.1: other machines that can reach it may connect "
                "(each request still needs the token)"
            )
        if token is not None and len(token) < 8:
            raise ValueError("--token must be at least 8 characters; leave it out for a random one")
        from deconvviz.explore.engine import Explorer
        from deconvviz.explore.pictures import picture_source
        from deconvviz.explore.server import Server

        source = picture_source(list(images)) if images else None  # a bad path fails before the model loads
        explorer = Explorer(
            model.load(device),
            source,
            device=device,
            report=report,
            cache_bytes=None if cache is None else cache << 20,
            upload_limit=upload_limit << 20,
        )
        try:
            try:
                server = Server(explorer, host, DEFAULT_PORT if port is None else port, token=token)
            except OSError:
                if port is not None:
                    raise
                server = Server(explorer, host, 0, token=token)  # the usual port is taken: any free one
        except BaseException:
            explorer.close()
            raise
    sys.stdout.write(f"deconvviz explore: {server.url}\n")
    sys.stdout.flush()
    if not no_browser:
        import threading
        import webbrowser

        threading.Thread(target=webbrowser.open, args=(server.url,), daemon=True).start()
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
    err("deconvviz explore: stopped")


__all__ = ["explore_command"]
