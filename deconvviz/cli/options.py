"""What the commands share: options, exit statuses, progress bars, and one-line error reporting.

Errors a user can cause are printed as one line on stderr with exit status 2 (``--debug`` shows the
traceback instead).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, TypeVar, cast

import typer

from deconvviz.errors import DeconvVizError, first_line

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143
"""Stopped by SIGTERM (128 + 15), after the same clean-up as for Ctrl-C."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (a kill, a batch system's time limit), raised where the program is.

    It is handled as Ctrl-C is: nothing half-written is left, a report keeps its scan, the explorer removes its
    uploads; the exit status is 143.
    """


def _terminate(signum: int, frame: Any) -> None:
    state.terminated = True
    raise Terminated


def interrupted_status() -> int:
    """The exit status of an interrupted command: 143 after SIGTERM, else 130 (Ctrl-C)."""
    return EXIT_TERMINATED if state.terminated else EXIT_INTERRUPTED


EXIT_BROKEN_PIPE = 141
"""The reader of the output went away (128 + SIGPIPE, as a shell tool killed by it)."""


# typer ships its own copy of click; its exception base is found from a public class rather than a private module
_ClickException: type[Exception] = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


class OneLineErrors(typer.core.TyperGroup):
    """Usage errors as one line on stderr and exit status 2, like every other error, instead of a boxed panel.

    A usage error is what click itself reports: a bad option value, a missing argument.
    """

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        """Run the command; a usage error or an interrupt ends in one line on stderr and its exit status.

        SIGTERM is handled as Ctrl-C is while the command runs (:class:`Terminated`).
        """
        import signal
        import threading

        _no_flag_types(self)
        before = None
        if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
            before = signal.signal(signal.SIGTERM, _terminate)
        try:
            return self._run(args, prog_name, complete_var, standalone_mode, windows_expand_args, **extra)
        finally:
            if before is not None:  # a command run inside another program (a test, a notebook) leaves it as it was
                signal.signal(signal.SIGTERM, before)

    def _run(
        self,
        args: Sequence[str] | None,
        prog_name: str | None,
        complete_var: str | None,
        standalone_mode: bool,
        windows_expand_args: bool,
        **extra: Any,
    ) -> Any:
        import sys

        state.terminated = False
        try:
            code = super().main(args, prog_name, complete_var, False, windows_expand_args, **extra)
        except _ClickException as exc:
            if not standalone_mode:
                raise
            context = getattr(exc, "ctx", None)
            command = context.command_path if context is not None else "deconvviz"
            message = str(exc.format_message()).strip()  # type: ignore[attr-defined]
            if message:  # empty when the help was shown for a bare command
                err(f"error: {message} (see `{command} --help`)")
            sys.exit(int(getattr(exc, "exit_code", EXIT_BAD_INPUT)))
        except typer.Abort:
            err("interrupted; nothing was left half-written")
            sys.exit(interrupted_status())
        if standalone_mode and isinstance(code, int) and code:
            sys.exit(code)
        return code


def _no_flag_types(command: Any) -> None:
    """Leave a flag's type out of the help (typer labels every flag ``<bool>``, as if it took a value)."""
    for param in getattr(command, "params", []):
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
    made = getattr(command, "get_help_option", None)
    if made is not None and not getattr(made, "quiet", False):  # --help, which click makes per command

        def help_option(ctx: Any) -> Any:
            option = made(ctx)
            if option is not None and option.metavar is None:
                option.metavar = ""
            return option

        help_option.quiet = True  # type: ignore[attr-defined]
        command.get_help_option = help_option
    for sub in getattr(command, "commands", {}).values():
        _no_flag_types(sub)


class Scale(StrEnum):
    """How reconstructions are made displayable (see deconvviz.viz.scaling)."""

    robust = "robust"
    max = "max"
    minmax = "minmax"


_SCALE_HELP = (
    "Display scaling. robust: zero is grey, a high percentile of |value| over the reconstruction reaches "
    "black/white (about 3% saturates); max: each picture's largest |value| reaches black/white; minmax: "
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
DebugOption = Annotated[bool, typer.Option("--debug", help="Show the full traceback of an error.")]
ModelOption = Annotated[
    str,
    typer.Option(
        "--model",
        "-m",
        help="A registered model (`deconvviz models`), NAME:torchvision[:WEIGHTS], NAME:timm, or "
        "package.module:function.",
    ),
]
CheckpointOption = Annotated[
    Path | None,
    typer.Option(
        "--checkpoint",
        help="Load these weights into --model instead of its own: a state dict saved with torch.save (also under a "
        "state_dict or model key) or a safetensors file.",
        show_default=False,
    ),
]
MeanOption = Annotated[
    str | None,
    typer.Option(
        "--mean",
        help="Per-channel mean the model's input is normalised with, e.g. 0.5,0.5,0.5 (for your own model; "
        "named models bring theirs).",
        show_default=False,
    ),
]
StdOption = Annotated[
    str | None,
    typer.Option(
        "--std",
        help="Per-channel standard deviation of the normalisation, e.g. 0.5,0.5,0.5 (with --mean).",
        show_default=False,
    ),
]
SizeOption = Annotated[
    int | None,
    typer.Option(
        min=8, help="Resize and centre-crop pictures to N x N pixels, at most 2048 (default: the model's size)."
    ),
]
OutOption = Annotated[
    Path, typer.Option("--out", "-o", help="The result folder (an earlier deconvviz result there is replaced).")
]
LayerOption = Annotated[
    str | None,
    typer.Option("--layer", "-l", help="The layer (alias or node name). Default: the model's deepest default."),
]
ChannelOption = Annotated[
    int | None, typer.Option("--channel", "-c", min=0, help="The channel. Default: the strongest.")
]
DeviceOption = Annotated[str, typer.Option(help="cpu, cuda, cuda:N, or auto (cuda when available).")]


class State:
    """What the top-level options set for every command (``deconvviz --debug ...``)."""

    debug = False
    terminated = False


state = State()


def err(message: str) -> None:
    """Print one line on stderr."""
    typer.echo(message, err=True)


def _first_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno is not None and exc.filename is not None and exc.strerror:
        return _os_error(exc)
    return first_line(exc)


def _os_error(exc: OSError) -> str:
    """The operating system's refusal of a path (``[Errno 17] File exists: 'out'``) with what to do about it."""
    path = str(exc.filename)
    if isinstance(exc, FileExistsError | NotADirectoryError):
        return f"cannot use {path!r} as a folder: a file of that name is in the way; choose another path"
    if isinstance(exc, PermissionError):
        return f"permission denied: {path!r}; choose a path you may write to (or read, for an input)"
    if isinstance(exc, FileNotFoundError):
        return f"not found: {path!r}; check the path"
    return f"{str(exc.strerror).lower()}: {path!r}; check the path"


def _one_line_warning(message: Warning | str, *args: Any, **kwargs: Any) -> None:
    err(f"warning: {_first_line(message) if isinstance(message, BaseException) else message}")


@contextlib.contextmanager
def reported(debug: bool, *, quiet: bool = False) -> Iterator[None]:
    """Turn the errors a user can cause into one line on stderr and exit status 2 (``quiet``: no line)."""
    debug = (debug or state.debug) and not quiet
    say = (lambda message: None) if quiet else err
    try:
        with warnings.catch_warnings():  # a warning is one line too (``--debug``: Python's own form)
            if not debug:
                warnings.showwarning = _one_line_warning
            yield
    except (typer.Exit, typer.Abort):
        raise
    except KeyboardInterrupt:
        say("interrupted; nothing was left half-written")
        raise typer.Exit(interrupted_status()) from None
    except BrokenPipeError:  # the reader of the output went away (`| head -1`): stop quietly, as shell tools do
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing left to flush at exit
        raise typer.Exit(EXIT_BROKEN_PIPE) from None
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


def joined(values: list[str] | None) -> str | None:
    """A repeatable option's values as one comma-separated list (``-l a -l b,c``: ``"a,b,c"``); None if absent."""
    return ",".join(values) if values else None


class UsageError(ValueError):
    """Options that contradict each other."""


def usage(message: str) -> UsageError:
    """The error for options that contradict each other (reported as one line, exit status 2)."""
    return UsageError(message)


def console(stderr: bool = False) -> Any:
    """A rich console on stdout (or stderr) for tables."""
    import sys

    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    # On a terminal rich fits tables to its width; piped output keeps one row per line for grep and friends.
    width = None if stream.isatty() else 240
    return Console(stderr=stderr, highlight=False, soft_wrap=False, width=width)


def progress_bars(transient: bool, enabled: bool = True) -> Any:
    """Rich progress bars on stderr (off when it is not a terminal), for work that draws with matplotlib.

    Figures are drawn with the Agg backend: the command line never opens a window.
    """
    os.environ.setdefault("MPLBACKEND", "Agg")
    import matplotlib

    matplotlib.use("Agg")
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.text import Text

    class Count(MofNCompleteColumn):
        """``done/total``, and nothing while the total is not known yet (loading), rather than ``0/?``."""

        def render(self, task: Any) -> Text:
            return Text("") if task.total is None else super().render(task)

    stderr_console = console(stderr=True)
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        Count(),
        TimeElapsedColumn(),
        console=stderr_console,
        transient=transient,
        disable=not (enabled and stderr_console.is_terminal),
    )


class PlainProgress:
    """Progress as plain lines on stderr where no bar is drawn (a log file, a batch job's output).

    A line when a stage starts, then at most one every ``every`` seconds, and one when the stage is done:
    ``scanning pictures: 1,200 of 50,000 (2%)``.
    """

    def __init__(
        self, labels: dict[str, str], every: float = 30.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.labels, self.every, self.clock = labels, every, clock
        self.last: dict[str, float] = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        """Report ``done`` of ``total`` in ``stage``: printed if it starts or ends the stage, or is due."""
        now = self.clock()
        finished = total > 0 and done >= total
        if stage in self.last and not finished and now - self.last[stage] < self.every:
            return
        if stage in self.last and finished and self.last[stage] == math.inf:
            return  # said once
        self.last[stage] = math.inf if finished else now
        share = f" ({done / total:.0%})" if total > 0 else ""
        err(f"{self.labels.get(stage, stage)}: {done:,} of {total:,}{share}")


@contextlib.contextmanager
def progress_bar(
    start: str, describe: Callable[[str], str] | None = None, total: int | None = None
) -> Iterator[Callable[[int, int, str], None]]:
    """One transient progress bar on stderr; gives the ``progress(done, total, what)`` an analysis reports to.

    Args:
        start: the bar's text until the first report.
        describe: the bar's text from each report's ``what`` (None keeps ``start``).
        total: the total until the first report (None: not known yet).
    """
    with progress_bars(transient=True) as bar:
        task = bar.add_task(start, total=total)

        def progress(done: int, total: int, what: str) -> None:
            text = {} if describe is None else {"description": describe(what)}
            bar.update(task, completed=done, total=total, **text)

        yield progress


@dataclass(frozen=True)
class ModelChoice:
    """The model that ``--model``, ``--checkpoint``, ``--mean`` and ``--std`` name, as a command receives it."""

    name: str = "vgg16"
    checkpoint: Path | None = None
    mean: str | None = None
    std: str | None = None
    size: int | None = None

    def load(self, device: str | None = "cpu", size: int | None = None) -> Any:
        """The name as it is when none of the others is given (so sessions are shared), else the loaded model.

        ``size``: a command's own ``--size``, for the commands that declare one (else ``self.size``).
        """
        size = size if size is not None else self.size
        if self.checkpoint is None and self.mean is None and self.std is None and self.size is None:
            return self.name
        from deconvviz.models.session import resolve_device
        from deconvviz.models.zoo import load_model

        loaded = load_model(
            self.name,
            checkpoint=self.checkpoint,
            device=resolve_device(device),
            size=size,
            mean=_numbers("--mean", self.mean),
            std=_numbers("--std", self.std),
        )
        if (self.mean is None) != (self.std is None):  # half a normalisation: say which half is the model's
            given, kept = ("--mean", "std") if self.std is None else ("--std", "mean")
            warnings.warn(f"{given} without --{kept}: the model's own {kept} is kept; give both", stacklevel=2)
        return loaded

    def arguments(self) -> dict[str, str]:
        """The options as a result's manifest records them (those given)."""
        given = {"checkpoint": self.checkpoint, "mean": self.mean, "std": self.std, "size": self.size}
        return {"model": self.name, **{key: str(value) for key, value in given.items() if value is not None}}

    def argv(self) -> list[str]:
        """The options as a command line gives them (to relaunch the command)."""
        return [word for key, value in self.arguments().items() for word in (f"--{key}", value)]


DEFAULT_MODEL = ModelChoice()
"""VGG16, the paper's network as most readers know it (``--model`` when it is not given)."""

_Command = TypeVar("_Command", bound=Callable[..., Any])


def model_options(command: _Command) -> _Command:
    """Give a command ``--model``, ``--checkpoint``, ``--mean`` and ``--std`` in place of its ``model`` parameter.

    The command declares ``model: ModelChoice = DEFAULT_MODEL`` (or another default choice) where the options
    belong in its help, and receives them as one :class:`ModelChoice`. A command without a ``size`` parameter
    of its own also gets ``--size``, the side pictures are resized and cropped to (``ModelChoice.size``).
    """
    signature = inspect.signature(command, eval_str=True)
    sized = "size" not in signature.parameters  # render's and evolution's own --size, occlusion's occluder
    parameters: list[inspect.Parameter] = []
    for parameter in signature.parameters.values():
        if parameter.name != "model":
            parameters.append(parameter)
            continue
        default = parameter.default if isinstance(parameter.default, ModelChoice) else ModelChoice()
        parameters += [
            parameter.replace(annotation=ModelOption, default=default.name),
            parameter.replace(name="checkpoint", annotation=CheckpointOption, default=None),
            parameter.replace(name="mean", annotation=MeanOption, default=None),
            parameter.replace(name="std", annotation=StdOption, default=None),
        ]
        if sized:
            parameters.append(parameter.replace(name="size", annotation=SizeOption, default=None))

    @functools.wraps(command)
    def with_model(
        *args: Any, model: str, checkpoint: Path | None, mean: str | None, std: str | None, **kwargs: Any
    ) -> Any:
        size = kwargs.pop("size", None) if sized else None
        return command(*args, model=ModelChoice(model, checkpoint, mean, std, size), **kwargs)

    with_model.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    with_model.__annotations__ = {p.name: p.annotation for p in parameters}
    return cast(_Command, with_model)


def _numbers(flag: str, text: str | None) -> tuple[float, ...] | None:
    """``0.5,0.5,0.5`` as numbers; a usage error in one line otherwise."""
    if text is None:
        return None
    try:
        values = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        values = ()
    if not values:
        raise usage(
            f"{flag} takes three numbers separated by commas, one per colour channel (0.5,0.5,0.5); got {text!r}"
        )
    return values


def parse_position(text: str | None) -> tuple[int, int] | None:
    """``--position ROW,COL``: a unit of the layer's feature map (None when not given)."""
    if text is None:
        return None
    parts = [part.strip() for part in text.split(",")]
    if len(parts) != 2 or not all(part.isdigit() for part in parts):
        raise usage(f"--position takes ROW,COL of a unit in the layer's feature map (3,7); got {text!r}")
    return int(parts[0]), int(parts[1])


def parse_train(text: str | None) -> int | list[int] | None:
    """``--train``: one size of training pictures per class (``10``), or several for a curve (``1,5,10``)."""
    if text is None:
        return None
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        values = []
    if not values or any(value < 1 for value in values):
        raise usage(
            f"--train takes training pictures per class, a positive whole number or several comma-separated "
            f"(1,5,10), got {text!r}"
        )
    return values[0] if len(values) == 1 else values


def once(values: Sequence[str] | None, flag: str, default: str, singular: str | None = None) -> str:
    """A ranked ``--channels`` given at most once (a count or a choice, not a list to add to), as one text.

    Args:
        values: each ``--channels`` given, in order.
        flag: the option's name, for messages.
        default: the text when it is not given.
        singular: what a ``--channel`` given instead said (refused: here it would read as a count).

    Raises:
        UsageError: (exit 2) the option given more than once, or ``--channel``.
    """
    if singular is not None:
        raise usage(
            f"{flag} here chooses which channels to show ({singular!r} would be the {singular} strongest); for "
            f"channel {singular} alone write {flag} {singular},"
        )
    if values and len(values) > 1:
        given = ", ".join(repr(v) for v in values)
        raise usage(f"{flag} was given {len(values)} times ({given}); give it once, with one list for several: 12,40")
    return values[0] if values else default


def parse_channels(text: str, *, ranked: bool = False) -> int | str | list[int] | None:
    """``--channels``: ``N``, ``all``, or a comma-separated list of channel indices.

    With ``ranked`` (the report's) also ``firstN``, ``strongestN`` and ``randomN``.
    """
    value = text.strip().lower()
    if value == "all":
        return None
    if ranked and value.startswith(("first", "strongest", "random")):
        return value  # the report checks the count, before any work
    parts = [part.strip() for part in value.split(",") if part.strip()]
    if not parts or not all(part.isdigit() for part in parts):
        forms = (
            "a count (16), firstN (first16), randomN (random16), a list (0,5,7) or 'all'"
            if ranked
            else "a count (16), a list (0,5,7) or 'all'"
        )
        raise usage(f"--channels takes {forms}; got {text!r}")
    numbers = [int(part) for part in parts]
    if len(numbers) == 1 and "," not in value:
        if numbers[0] < 1:
            hint = "; for channel 0 alone give a list: --channels 0," if ranked else ""
            raise usage(f"--channels takes a count of at least 1{hint}")
        return numbers[0]
    return numbers
