"""``deconvviz render`` (pictures to PNGs) and ``deconvviz report`` (a folder to an HTML report)."""

from __future__ import annotations

import os
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

import deconvviz
from deconvviz.cli.options import (
    DEFAULT_MODEL,
    DebugOption,
    MethodOption,
    ModelChoice,
    PlainProgress,
    Scale,
    ScaleOption,
    SizeOption,
    err,
    interrupted_status,
    joined,
    model_options,
    once,
    parse_channels,
    progress_bar,
    progress_bars,
    reported,
    usage,
)


class Mode(StrEnum):
    """What to seed in each chosen channel."""

    max = "max"
    map = "map"


@model_options
def render_command(
    ctx: typer.Context,
    images: Annotated[
        list[Path],
        typer.Argument(metavar="IMAGE", help="Picture files (JPEG, PNG, WebP, BMP, TIFF).", show_default=False),
    ],
    model: ModelChoice = DEFAULT_MODEL,
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
    size: SizeOption = None,
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
    with reported(debug):
        source = ctx.get_parameter_source("top")
        channel = _channel_list(channels)
        if channel and getattr(source, "name", None) == "COMMANDLINE":
            raise usage("give either --top or --channels, not both")
        if size is not None and full_image:
            raise usage("give either --size or --full-image, not both")
        from deconvviz.viz.figures import RenderOptions

        with progress_bar("loading the model", lambda what: what) as progress:
            results = deconvviz.render_images(
                images,
                out,
                model=model.load(device, size),
                layers=layers,
                top=None if channel else top,
                channels=channel or None,
                mode=mode.value,
                device=device,
                size=size,
                full_image=full_image,
                options=RenderOptions(scale=scale.value, overlay=overlay, box=box, crop=crop),
                inside=inside,
                target=target_class,
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
                raise usage(f"--channels takes channel numbers such as 12 or 12,40; got {value!r}")
            numbers.append(int(part))
    return numbers


@model_options
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
    model: ModelChoice = DEFAULT_MODEL,
    layers: Annotated[
        list[str] | None,
        typer.Option(
            "--layers",
            "--layer",
            "-l",
            help="Aliases or node names, comma-separated or repeated, or `all`. Default: conv2_2,conv3_3,conv4_3,"
            "conv5_3 where the model has them, else one layer per resolution.",
            show_default=False,
        ),
    ] = None,
    channels: Annotated[
        list[str] | None,
        typer.Option(
            "--channels",
            "-c",
            help="N: the N channels of each layer with the strongest activations over the data set, strongest first; "
            "firstN: the first N by index; randomN: N drawn at random with --seed (the paper's Fig. 2 choice); a "
            "list of channel indices (0,5,7; one channel: 12,); or `all`.  [default: 16]",
            show_default=False,
            metavar="CHOICE",
        ),
    ] = None,
    channel: Annotated[str | None, typer.Option("--channel", hidden=True)] = None,
    top: Annotated[int, typer.Option("--top", "-k", min=1, help="Activations shown per channel.")] = 9,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="The report folder (an earlier report is replaced with --overwrite).")
    ] = Path("report"),
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
        typer.Option(
            "--sample",
            min=1,
            help="Scan a random sample of N pictures (see --seed); with --limit, a sample of the first --limit.",
            show_default=False,
        ),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="The seed of --sample and of randomN channels.")] = 0,
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
    inside: Annotated[
        bool,
        typer.Option(
            "--inside",
            help="Rank only units whose receptive field lies wholly inside the picture, so that no hit answers "
            "the zero padding at its border (a layer with no such unit keeps them all, and its page says so).",
        ),
    ] = False,
    debug: DebugOption = False,
) -> None:
    """Build a static HTML report over a folder: for each layer and channel, the strongest activations across the
    pictures, each projected to pixels beside the image patch it came from (the paper's Fig. 2).

    The report opens from disk in a browser (OUT/index.html) and comes with its PNGs and manifest.json. It is
    written into a temporary folder and renamed into place when complete. A long scan saves its state every
    --save-every seconds; after a crash, Ctrl-C or a kill, the same command with --resume goes on from there.
    """
    from deconvviz.analysis.topk import distributed

    chosen = joined(layers)
    with reported(debug):
        picked = once(channels, "--channels", "16", channel)

    if workers > 1 and not distributed.launched():
        with reported(debug):
            from deconvviz.io.sources import image_source

            image_source(folder)  # a missing or empty folder gets its one line here, before any process starts
            from deconvviz.analysis.topk.options import ScanOptions

            scanning = ScanOptions.of(
                None if chosen is None else [chosen],
                k=top,
                batch_size=batch_size,
                limit=limit,
                sample=sample,
                seed=seed,
                resume=resume,
                save_every=save_every,
                inside=inside,
            )
        argv = ["report", str(folder), *model.argv(), "--channels", picked, "--out", str(out)]
        argv += ["--device", device, "--scale", scale.value, "--method", method, *scanning.argv()]
        flags = {"--per-image": per_image, "--overwrite": overwrite, "--debug": debug}
        argv += [flag for flag, on in flags.items() if on]
        raise typer.Exit(_torchrun(workers, argv))
    lead = int(os.environ.get("RANK", "0")) == 0  # under torchrun only rank 0 talks to the user
    try:
        with reported(debug, quiet=not lead):
            chosen_channels = parse_channels(picked, ranked=True)
            from deconvviz.io.atomic import check_target
            from deconvviz.viz.report import ReportError, build_report, scan_state_folder

            check_target(out, replace=overwrite, error=ReportError)  # before the model loads, as build_report would

            if resume and lead and (overwrite or not out.exists()):  # else the refusal of the folder says it all
                saved = scan_state_folder(out)
                if not (saved.is_dir() and any(saved.iterdir())):
                    err(f"note: no saved scan in {str(saved)!r}; --resume starts from the beginning")
            labels = {
                "scan": "scanning pictures",
                "project": "projecting top activations",
                "write": "writing layer pages",
                "images": "rendering each picture",
            }
            with progress_bars(transient=False, enabled=lead) as bar:
                tasks: dict[str, Any] = {}
                plain = PlainProgress(labels) if lead and bar.disable else None  # a log file, a batch job

                def progress(stage: str, done: int, total: int) -> None:
                    if plain is not None:
                        plain(stage, done, total)
                    if stage not in tasks:
                        tasks[stage] = bar.add_task(labels.get(stage, stage), total=total)
                    bar.update(tasks[stage], completed=done, total=total)

                try:
                    report = build_report(
                        folder,
                        out,
                        model=model.load(device),
                        layers=chosen,
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
                        inside=inside,
                    )
                except KeyboardInterrupt:
                    bar.stop()  # the bars' last state on its own line, before the message
                    state = scan_state_folder(out)
                    if state.is_dir() and any(state.iterdir()):
                        err(f"interrupted; the scan so far is kept in {str(state)!r}: add --resume to go on")
                        raise typer.Exit(interrupted_status()) from None
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
