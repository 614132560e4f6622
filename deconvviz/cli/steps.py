"""``deconvviz steps``: how one reconstruction is made, the signal after every mirrored op written to a folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

import deconvviz
from deconvviz.cli.options import (
    DEFAULT_MODEL,
    ChannelOption,
    DebugOption,
    DeviceOption,
    LayerOption,
    MethodOption,
    ModelChoice,
    OutOption,
    Scale,
    ScaleOption,
    model_options,
    parse_position,
    progress_bar,
    reported,
    usage,
)


@model_options
def steps_command(
    image: Annotated[Path, typer.Argument(metavar="IMAGE", help="A picture file.", show_default=False)],
    model: ModelChoice = DEFAULT_MODEL,
    layer: LayerOption = None,
    channel: ChannelOption = None,
    position: Annotated[
        str | None,
        typer.Option(
            "--position",
            "-p",
            help="ROW,COL of the unit to seed in the channel's feature map. Default: the channel's strongest unit.",
            show_default=False,
        ),
    ] = None,
    method: MethodOption = "deconvnet",
    show_channels: Annotated[
        int, typer.Option("--show-channels", min=0, max=8, help="Also draw each step's N strongest channels.")
    ] = 0,
    only: Annotated[
        str | None,
        typer.Option(
            "--only",
            help="Draw only the steps of these kinds in the figure, comma-separated words such as "
            "unpool,transposed (with the seed and the reconstruction); every step's picture is written all the same.",
            show_default=False,
        ),
    ] = None,
    scale: ScaleOption = Scale.robust,
    out: OutOption = Path("steps"),
    device: DeviceOption = "auto",
    debug: DebugOption = False,
) -> None:
    """Show how one reconstruction is made: the signal after every mirrored op, from the seed to the pixels.

    Unpooling with the switches, rectification, the transposed filters: one column each in OUT/figure.png, seed
    to reconstruction; OUT/steps/NN-KIND-NODE.png holds each step's signal summed over channels (NODE: the op
    the step undid, as the figure's column names it) and OUT/manifest.json lists the steps (node, op, kind,
    shape, file).
    """
    with reported(debug):
        unit = parse_position(position)
        kinds = None if only is None else [word.strip() for word in only.split(",") if word.strip()]
        if kinds is not None and not kinds:
            raise usage("--only takes step kinds, comma-separated, such as unpool,transposed")
        from deconvviz.analysis.base import check_result_folder

        check_result_folder(out)  # refused before any work when it holds something deconvviz did not write
        with progress_bar("projecting step by step"):
            result = deconvviz.visualize(
                image,
                model.load(device),
                layer,
                top=None if channel is not None else 1,
                channel=channel,
                position=unit,
                device=device,
                method=method,
                steps=True,
            )
            steps = result.steps
            assert steps is not None
            if unit is not None and float(result.activations[0]) == 0:  # every step would be blank
                raise usage(
                    f"unit {unit} of channel {result.channels[0]} of {result.layer} is 0 on this picture: nothing "
                    "reaches the input; leave --position out for the channel's strongest unit"
                )
            arguments = {
                "image": str(image),
                **model.arguments(),
                "layer": result.layer,
                "channel": result.channels[0],
                "position": None if result.positions[0] is None else list(result.positions[0]),
                "method": result.method,
                "show_channels": show_channels,
                "scale": scale.value,
                "only": kinds,
            }
            folder = steps.save(out, scale=scale.value, channels=show_channels, arguments=arguments, only=kinds)
        counts: dict[str, int] = {}
        for step in steps:
            counts[step.kind] = counts.get(step.kind, 0) + 1
        made = ", ".join(f"{n} {kind}" for kind, n in counts.items())
        typer.echo(
            f"wrote {folder}/figure.png, {len(steps)} step pictures and manifest.json: {result.layer} channel "
            f"{result.channels[0]} ({made})"
        )
