"""The analyses of the paper and after: filters, invariance, evolution, sanity, occlusion, correspondence,
discrimination.
"""

from __future__ import annotations

import warnings
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

import deconvviz
from deconvviz.cli.options import (
    DEFAULT_MODEL,
    ChannelOption,
    DebugOption,
    DeviceOption,
    LayerOption,
    MeanOption,
    ModelChoice,
    ModelOption,
    OutOption,
    SizeOption,
    StdOption,
    joined,
    model_options,
    once,
    parse_channels,
    parse_train,
    progress_bar,
    reported,
    usage,
)


@model_options
def filters_command(
    layer: Annotated[
        list[str] | None,
        typer.Option(
            "--layer",
            "--layers",
            "-l",
            help="A first-layer convolution (alias or node name). Default: the model's first convolution.",
            show_default=False,
        ),
    ] = None,
    model: ModelChoice = DEFAULT_MODEL,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="The PNG to write. Default: LAYER_filters.png.", show_default=False),
    ] = None,
    columns: Annotated[int | None, typer.Option(min=1, help="Filters per row (default: about square).")] = None,
    debug: DebugOption = False,
) -> None:
    """Draw a first layer's learned filters as an image grid (the paper's Fig. 2, layer 1).

    Each filter is scaled on its own: zero is mid-grey, its largest |weight| black or white. A second line says
    what the paper reads off them (Fig. 6): dead or dominating filters, how their peak frequencies spread, and the
    share of their power the convolution's stride aliases.
    """
    with reported(debug):
        from deconvviz.viz.render import safe_name, save_figure

        named = [name.strip() for name in (joined(layer) or "").split(",") if name.strip()]
        if len(named) > 1:
            raise usage(f"filters draws one layer, got {', '.join(named)}; run it once per layer")

        if out is not None:
            _check_figure_path(out)
        with progress_bar("loading the model"):
            from deconvviz.viz.filters import layer_filters

            current = deconvviz.session(model.load(), device="cpu")
            found = layer_filters(current.net, named[0] if named else None)
            target = out if out is not None else Path(f"{safe_name(found.layer)}_filters.png")
            _check_figure_path(target)  # the default name too; and --out again, after the model's loading
            fig, _ = found.figure(columns=columns)
            try:
                save_figure(fig, target)
            except FileNotFoundError as exc:
                raise usage(f"cannot write {str(target)!r}: its folder does not exist; create it first") from exc
        typer.echo(f"{current.name} {found.description} -> {target}")
        typer.echo(found.summary())


def _check_figure_path(path: Path) -> None:
    """Refuse, before any work, a figure's path that is not a ``.png``, is a folder, or holds a file of another's."""
    from deconvviz.viz.render import replaceable_figure

    if path.is_dir():
        raise usage(f"--out {str(path)!r} is a folder; give the PNG's file name (e.g. {str(path / 'filters.png')!r})")
    if path.suffix.lower() != ".png":
        raise usage(f"--out writes a PNG; give a file name ending in .png, not {str(path)!r}")
    if not replaceable_figure(path):
        raise usage(
            f"{str(path)!r} exists and is not a figure deconvviz wrote; choose another --out, or remove it first"
        )


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
        example = {"translate": "-60:60", "scale": "0.5:1.7", "rotate": "0:360"}.get(name, "-60:60")
        raise usage(f"--{name} takes START:END (e.g. {example}) or 'off'; got {text!r}") from None
    return start, end


def _check_out(out: Path) -> None:
    """Refuse, before any work, an output folder that holds something deconvviz did not write."""
    from deconvviz.analysis.base import check_result_folder

    check_result_folder(out)


_EVOLUTION_CHANNELS = (
    "The N strongest channels of the trained model (the last checkpoint), firstN for the first N by index, randomN "
    "for N drawn at random (seed 0), a list (0,5,7), or `all`; one row each."
)


class Distance(StrEnum):
    """How invariance distances are normalised."""

    unit = "unit"
    relative = "relative"
    none = "none"


@model_options
def invariance_command(
    images: Annotated[
        list[Path], typer.Argument(metavar="IMAGE", help="Picture files; one curve per picture.", show_default=False)
    ],
    model: ModelChoice = DEFAULT_MODEL,
    layers: Annotated[
        list[str] | None,
        typer.Option(
            "--layers",
            "--layer",
            "-l",
            help="Layers to compare, low to high, comma-separated or repeated. Default: the first of the model's "
            "default layers and its output (e.g. conv1 and the class scores for squeezenet1_1).",
            show_default=False,
        ),
    ] = None,
    translate: Annotated[
        str, typer.Option(help="Vertical translation START:END in pixels (positive moves down), or off.")
    ] = "-60:60",
    scale: Annotated[str, typer.Option(help="Scale START:END about the centre (1 = original), or off.")] = "0.5:1.7",
    rotate: Annotated[str, typer.Option(help="Rotation START:END in degrees, counter-clockwise, or off.")] = "0:360",
    steps: Annotated[
        int,
        typer.Option(
            min=2, max=1000, help="Values per transformation, both ends included (and the original, if missed)."
        ),
    ] = 13,
    target: Annotated[
        str | None,
        typer.Option(
            "--class",
            "--target",
            help="The true class (index or name) for every picture. Default: each picture's top-1.",
        ),
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
    with reported(debug):
        ranges = {
            "translate": _parse_range(translate, "translate"),
            "scale": _parse_range(scale, "scale"),
            "rotate": _parse_range(rotate, "rotate"),
        }
        _check_out(out)
        with progress_bar("running transformed pictures") as progress:
            result = deconvviz.invariance(
                images,
                model.load(device),
                layers=joined(layers),
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
                **model.arguments(),
                "layers": list(result.layers),
                **{k: None if v is None else list(v) for k, v in ranges.items()},
                "steps": steps,
                "target": target,
                "normalize": normalize.value,
            }
            folder = result.save(out, arguments=arguments)
        typer.echo(f"wrote {folder}/figure.png and manifest.json: {len(images)} picture(s), {steps} steps")
        typer.echo(result.summary())


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
    mean: MeanOption = None,
    std: StdOption = None,
    channels: Annotated[
        list[str] | None,
        typer.Option(
            "--channels", "-c", help=_EVOLUTION_CHANNELS + "  [default: 8]", show_default=False, metavar="CHOICE"
        ),
    ] = None,
    k: Annotated[
        int, typer.Option("--top", "--k", "-k", min=1, help="Strongest activations per channel and checkpoint.")
    ] = 1,
    size: SizeOption = None,
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
    with reported(debug):
        chosen = parse_channels(once(channels, "--channels", "8"), ranked=True)
        choice = ModelChoice(model, mean=mean, std=std)  # no --checkpoint: the checkpoints are the arguments
        _check_out(out)
        with progress_bar("scanning checkpoints", lambda name: f"scanned {name}", len(checkpoints)) as progress:
            result = deconvviz.evolution(
                checkpoints,
                data,
                choice.load(device, size),
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
                **choice.arguments(),
                "channels": channels,
                "k": k,
                "size": size,
            }
            folder = result.save(out, arguments=arguments)
        typer.echo(f"wrote {folder}/figure.png and manifest.json")
        typer.echo(result.summary())


@model_options
def sanity_command(
    image: Annotated[Path, typer.Argument(metavar="IMAGE", help="A picture file.", show_default=False)],
    model: ModelChoice = DEFAULT_MODEL,
    layer: LayerOption = None,
    channel: ChannelOption = None,
    method: Annotated[
        list[str] | None,
        typer.Option(
            "--method",
            help="A reverse pass (several: repeat it, or separate them with commas). Default: deconvnet, guided, "
            "gradient.",
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the random weights.")] = 0,
    independent: Annotated[
        bool,
        typer.Option(
            "--independent",
            help="Randomise one layer at a time, the others trained, instead of cascading from the top down.",
        ),
    ] = False,
    out: OutOption = Path("sanity"),
    device: DeviceOption = "auto",
    debug: DebugOption = False,
) -> None:
    """Sanity check by cascading randomisation (Adebayo et al. 2018): on a copy of the model, randomise the
    weights from the top layer down and project the same unit after each step with each reverse pass
    (--independent: one layer at a time).

    Writes OUT/figure.png (rows: reverse passes; columns: the reconstruction after each step, with its rank
    correlation and SSIM to the trained model's, both within the units' receptive fields) and OUT/manifest.json,
    and prints the scores once every layer is random and the mean pairwise correlation between channels: near 1,
    the pictures show the image.
    """
    with reported(debug):
        _check_out(out)
        with progress_bar("loading the model", lambda what: f"randomising and projecting: {what}") as progress:
            result = deconvviz.sanity(
                image,
                model.load(device),
                layer=layer,
                channel=channel,
                method=[m.strip() for given in method or () for m in given.split(",") if m.strip()] or None,
                seed=seed,
                device=device,
                progress=progress,
                mode="independent" if independent else "cascading",
            )
            arguments = {
                "image": str(image),
                **model.arguments(),
                "layer": result.layer,
                "channel": result.channel,
            }
            arguments.update(methods=list(result.methods), seed=seed, mode=result.mode)
            folder = result.save(out, arguments=arguments)
        typer.echo(f"wrote {folder}/figure.png and manifest.json: {result.layer} channel {result.channel}")
        typer.echo(result.summary())


@model_options
def occlusion_command(
    images: Annotated[
        list[Path],
        typer.Argument(metavar="IMAGE", help="Picture files (JPEG, PNG, WebP, BMP, TIFF).", show_default=False),
    ],
    model: ModelChoice = DEFAULT_MODEL,
    layer: Annotated[
        str | None,
        typer.Option(
            "--layer",
            "-l",
            help="The layer whose strongest feature map is followed (panels a, b). Default: the model's deepest "
            "default layer of features (conv5_3 for VGG16, fire9 for squeezenet1_1, not its class-score maps).",
            show_default=False,
        ),
    ] = None,
    channel: Annotated[
        int | None,
        typer.Option(
            "--channel",
            "-c",
            min=0,
            help="The feature map followed (panels a, b). Default: the layer's strongest on the picture.",
        ),
    ] = None,
    occluder: Annotated[
        int | None, typer.Option("--occluder", help="Side of the grey occluder, in pixels.  [default: 32]")
    ] = None,
    size: Annotated[int | None, typer.Option("--size", hidden=True)] = None,
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
        Path, typer.Option("--out", "-o", help="Folder for the results; each picture gets `OUT/<picture name>/`.")
    ] = Path("deconvviz-occlusion"),
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N, or auto (cuda when available).")] = "auto",
    batch_size: Annotated[
        int | None,
        typer.Option("--batch-size", min=1, help="Occluder positions per pass (default 16 on CPU, 64 on GPU)."),
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option(
            "--data",
            "-d",
            help="Other pictures (a folder, scanned recursively, or a text file of paths): the followed map's "
            "strongest units in them are projected under (b), as in the paper.",
            show_default=False,
        ),
    ] = None,
    top: Annotated[
        int, typer.Option("--top", "-k", min=1, help="How many of those other pictures are shown (with --data).")
    ] = 3,
    debug: DebugOption = False,
) -> None:
    """Slide a grey square over each picture (the paper's Fig. 7): (a) the strongest feature map's total
    activation per position, (b) its strongest unit projected to pixels, (c) the correct class's probability,
    (d) the most probable class. With --data, (b) also shows that map's strongest units in other pictures.

    Only the part of each layer that the occluder reaches is recomputed, so the sweep costs a fraction of
    re-running the network per position, with the same result. Models without a classifier get (a) and (b).
    Each picture's folder (occlusion.png, CSV grids, projection.png, manifest.json) appears only when complete.
    """
    with reported(debug):
        if size is not None:  # the earlier name; every other command's --size is the input picture's side
            if occluder is not None and occluder != size:
                raise usage(f"--occluder {occluder} and --size {size} name the same thing; give --occluder alone")
            warnings.warn(
                "occlusion --size is the occluder's side for this release only; write --occluder "
                f"{size} (--size will be the input picture's side, as in the other commands)",
                FutureWarning,
                stacklevel=1,
            )
        sweep: dict[str, Any] = {
            "layer": layer,
            "channel": channel,
            "occluder": occluder if occluder is not None else (size if size is not None else 32),
            "stride": stride,
            "target": target,
            "method": method,
        }
        others: dict[str, Any] = {} if data is None else {"data": str(data), "k": top}
        with progress_bar("loading the model", _occluding) as progress:
            jobs = deconvviz.occlusion_jobs(
                images, out, model=model.load(device), device=device, progress=progress, **sweep, **others
            )
            written = []
            for image, folder, job in jobs:
                result = job.run(batch_size=batch_size, progress=progress, image=str(image))
                written.append((result.save(folder, arguments={**model.arguments(), **sweep, **others}), result))
        typer.echo(f"wrote {len(written)} result folder(s) under {out}")
        for folder, result in written:
            typer.echo(f"{folder}: {result.summary()}")


def _occluding(what: str) -> str:
    """The occlusion bar's text: the other pictures being scanned, or the picture being occluded."""
    return "scanning the other pictures" if what == "other pictures" else f"occluding {Path(what).name}"


@model_options
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
    model: ModelChoice = DEFAULT_MODEL,
    layers: Annotated[
        list[str] | None,
        typer.Option(
            "--layers",
            "--layer",
            "-l",
            help="Aliases or node names, comma-separated or repeated. Default: the two deepest default layers.",
        ),
    ] = None,
    random: Annotated[
        int, typer.Option("--random", help="Random boxes of each part's size drawn per image for the baseline.")
    ] = 5,
    seed: Annotated[int, typer.Option(help="Seed of the random boxes.")] = 0,
    out: OutOption = Path("deconvviz-correspondence"),
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N, or auto (cuda when available).")] = "auto",
    debug: DebugOption = False,
) -> None:
    """Occlude the same part in every picture and measure how consistently the features change (the paper's
    Table 1): Delta per part and layer, mean ± std over image pairs, with random boxes as the baseline.

    Lower than random means the network relates that part across the pictures. Writes table.txt, delta.csv,
    correspondence.png and manifest.json into OUT, and prints the table.
    """
    with reported(debug):
        deconvviz.check_result_folder(out)
        with progress_bar("loading the model", lambda what: "occluding parts") as progress:
            options: dict[str, Any] = {"layers": joined(layers), "random": random, "seed": seed}
            loaded = model.load(device)
            result = deconvviz.correspondence(images, parts, loaded, device=device, progress=progress, **options)
            folder = result.save(out, arguments={"parts": str(parts), **model.arguments(), **options})
        typer.echo(result.table())
        typer.echo(f"wrote {folder}")


class Linear(StrEnum):
    """The linear model of the discrimination analysis."""

    softmax = "softmax"
    svm = "svm"


@model_options
def discrimination_command(
    data: Annotated[
        Path,
        typer.Argument(
            metavar="DATA",
            help="A folder with one sub-folder of pictures per class, any folder of pictures with --labels, or a "
            "text file of picture paths (each picture's class: the folder it lies in).",
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
            help="Aliases or node names, comma-separated or repeated. Default: the default layers.",
        ),
    ] = None,
    labels: Annotated[
        Path | None,
        typer.Option(
            "--labels",
            help="A file of 'picture,class' lines (picture: its path in DATA or its file name), instead of the "
            "class folders.",
            show_default=False,
        ),
    ] = None,
    linear: Annotated[
        Linear, typer.Option("--linear", help="softmax (the paper's Softmax) or svm (linear SVMs, one per class).")
    ] = Linear.softmax,
    train: Annotated[
        str | None,
        typer.Option(
            "--train",
            metavar="N[,N...]",
            help="Training pictures per class; the rest test. Default: half the smallest class. Several, "
            "comma-separated (1,5,10), draw accuracy against them (the paper's Fig. 9), tested on the same pictures.",
            show_default=False,
        ),
    ] = None,
    per_class: Annotated[
        int | None,
        typer.Option(
            "--per-class", min=1, help="Use at most this many pictures of each class (a seeded random choice)."
        ),
    ] = None,
    splits: Annotated[int, typer.Option("--splits", min=1, help="Random train/test splits averaged over.")] = 5,
    grid: Annotated[
        int, typer.Option("--grid", min=1, help="Each feature map is averaged over GRID x GRID cells.")
    ] = 2,
    l2: Annotated[
        float | None,
        typer.Option(
            "--l2", help="The L2 penalty. Default: chosen per split by cross-validation on the training pictures."
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the splits and the cross-validation folds.")] = 0,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Pictures per forward pass.")] = 16,
    out: OutOption = Path("deconvviz-discrimination"),
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N, or auto (cuda when available).")] = "auto",
    debug: DebugOption = False,
) -> None:
    """How discriminative each layer's features are (the paper's Table 7): a linear softmax or SVM trained on
    each layer's features of a few pictures per class, and its accuracy on the others.

    Scores are the mean over classes of each class's held-out accuracy, averaged over the splits. Writes
    table.txt, accuracy.csv, discrimination.png and manifest.json into OUT, and prints the table. With several
    --train sizes, the table and the figure show each layer's accuracy at each size.
    """
    with reported(debug):
        sizes = parse_train(train)
        deconvviz.check_result_folder(out)
        with progress_bar("loading the model", _discriminating) as progress:
            options: dict[str, Any] = {
                "layers": joined(layers),
                "labels": labels,
                "linear": linear.value,
                "train": sizes,
                "per_class": per_class,
                "splits": splits,
                "grid": grid,
                "l2": l2,
                "seed": seed,
            }
            loaded = model.load(device)
            result = deconvviz.discrimination(
                data, loaded, device=device, batch_size=batch_size, progress=progress, **options
            )
            recorded = {**options, "labels": None if labels is None else str(labels)}
            folder = result.save(out, arguments={"data": str(data), **model.arguments(), **recorded})
        typer.echo(result.table())
        typer.echo(result.summary())
        typer.echo(f"wrote {folder}")


def _discriminating(what: str) -> str:
    """The bar's text: the pictures being read, then the layer whose linear models are being fitted."""
    return what if what.startswith("fitting at ") else "reading the pictures"
