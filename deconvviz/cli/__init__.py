"""The ``deconvviz`` command line: a thin typer app over the public Python API.

Only typer and the lazily loaded :mod:`deconvviz` package are imported up front, so ``deconvviz --help`` and
``deconvviz --version`` answer without loading torch or matplotlib; each command imports what it needs.
The commands live by family in :mod:`deconvviz.cli.models`, :mod:`deconvviz.cli.render` and
:mod:`deconvviz.cli.analyses`; what they share is in :mod:`deconvviz.cli.options`.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import Annotated, Any

import typer

import deconvviz
from deconvviz.cli.analyses import (
    correspondence_command,
    discrimination_command,
    evolution_command,
    filters_command,
    invariance_command,
    occlusion_command,
    sanity_command,
)
from deconvviz.cli.models import layers_command, models_command
from deconvviz.cli.options import DebugOption, OneLineErrors, state
from deconvviz.cli.render import render_command, report_command
from deconvviz.cli.steps import steps_command
from deconvviz.explore.command import explore_command

app = typer.Typer(
    cls=OneLineErrors,
    name="deconvviz",
    help=(
        "See what a convolutional network has learned: project its activations back to pixels with the "
        "deconvnet of Zeiler & Fergus (2014)."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"deconvviz {deconvviz.__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option("--version", "-V", callback=_version, is_eager=True, help="Print the version and exit."),
    ] = False,
    debug: DebugOption = False,
) -> None:
    """See what a convolutional network has learned (Zeiler & Fergus deconvnet projections)."""
    state.debug = debug


COMMANDS: dict[str, Callable[..., Any]] = {
    "models": models_command,
    "layers": layers_command,
    "filters": filters_command,
    "render": render_command,
    "report": report_command,
    "invariance": invariance_command,
    "evolution": evolution_command,
    "sanity": sanity_command,
    "occlusion": occlusion_command,
    "correspondence": correspondence_command,
    "discrimination": discrimination_command,
    "steps": steps_command,
    "explore": explore_command,
}
"""Every command by its name, in the order ``deconvviz --help`` lists them."""

for _name, _command in COMMANDS.items():
    app.command(_name)(_command)


def main() -> None:
    """Run the command line (the ``deconvviz`` entry point)."""
    # torch and matplotlib leave some half a million long-lived objects, which every full collection walks
    # again (about 0.5 s of a render); a command's work makes little cyclic garbage, so full collections come
    # a hundred times less often here. Only the oldest generation's threshold changes.
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, 1000)
    app(prog_name="deconvviz")
