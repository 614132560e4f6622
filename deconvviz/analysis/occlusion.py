"""Occlusion sensitivity (Zeiler & Fergus, Fig. 7): what a classifier relies on, found by hiding parts.

A grey square (the model's mean colour: zero in its normalised input space) is slid over the image. For every
position the analysis records

* (a) the total activation of the layer's strongest feature map (chosen on the unoccluded image),
* (c) the probability of the correct class (given, or the unoccluded top-1), and
* (d) the most probable class,

and (b) projects that feature map's strongest unit whose receptive field lies inside the picture (as
``render`` chooses) back to pixels with the deconvnet; given a folder of other pictures (``data=``), the map's
strongest units in those are projected beside it, as the paper shows them (:mod:`deconvviz.analysis.others`).
Models without a classifier head (the offline VGG16 conv base) get (a) and (b) and say why (c) and (d) are
missing.

Positions form a grid with one cell per ``stride`` pixels: the occluder is centred on each cell's centre and
clipped to the image at the borders, so a map of ``ceil(H / stride)`` rows lies exactly over the image. The
network is not re-run per position: :mod:`deconvviz.core.incremental` recomputes only what each occluder
changes, for a batch of positions at once, with the same result as running every occluded copy.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from deconvviz.analysis.base import AnalysisResult, check_result_folder, figure_bytes
from deconvviz.analysis.choose import class_index, project_inside, receptive_boxes
from deconvviz.analysis.occluder import OcclusionError, occluder_grid, positions_per_batch, sweep
from deconvviz.analysis.others import OtherPicture, OtherPictures
from deconvviz.analysis.progress import ProgressOption, reporting
from deconvviz.core.deconvnet import SeedError
from deconvviz.core.graph import evaluating
from deconvviz.core.incremental import IncrementalOcclusion
from deconvviz.core.layers import default_layers
from deconvviz.core.seeds import channel_outside
from deconvviz.errors import deprecated
from deconvviz.methods import get_method
from deconvviz.models.session import session

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    from PIL.Image import Image
    from torch import Tensor

    from deconvviz.core.deconvnet import DeconvNet
    from deconvviz.core.projection import Projection
    from deconvviz.io.sources import Data
    from deconvviz.models.session import Session


@dataclass(frozen=True)
class OcclusionResult(AnalysisResult):
    """The four panels of the paper's Fig. 7 for one image.

    Attributes:
        picture: ``(H, W, 3)`` uint8, the image as the model sees it (resized and cropped).
        model: the model's name.
        layer: the layer as asked for; ``node`` is its qualified node name.
        node: the qualified node name.
        channel: the feature map followed: the layer's strongest on the unoccluded image, unless one was chosen.
        size: the occluder's side in pixels.
        stride: pixels between occluder positions.
        rows: ``[top, bottom)`` of the occluder for each row of the grid (clipped to the image).
        cols: ``[left, right)`` of the occluder for each column of the grid.
        activation: ``(R, C)`` (a): the feature map's total activation per occluder position.
        activation_unoccluded: that total without an occluder.
        projection: (b): the feature map's strongest unit projected to pixels (among the units whose field lies
            inside the picture, unless fewer than a quarter of the layer's units do: ``projection.prefer_inside``).
        method: the reverse pass that made (b): ``"deconvnet"`` (the paper's), ``"guided"``, ``"gradient"``, or
            another registered name.
        target: the class whose probability (c) shows, or None without a classifier.
        target_label: its name.
        probability: ``(R, C)`` (c): the target's probability per position, or None.
        probability_unoccluded: the target's probability without an occluder, or None.
        labels: ``(R, C)`` (d): the most probable class per position, or None.
        label_names: class index -> name for the classes in ``labels`` (and the target).
        missing: why (c) and (d) are absent, or None when they are present.
        image: where the picture came from, if a file.
        others: the map's strongest units in other pictures (``data=``), strongest first, projected with
            ``method``; empty without ``data``.
        others_skipped: ``(picture, why)`` for each picture there that could not be read (left out).
        others_folder: the folder (or list file) those came from; ``others_scanned`` how many pictures it held
            besides this one.
    """

    kind: ClassVar[str] = "occlusion"

    picture: np.ndarray = field(repr=False)
    model: str
    layer: str
    node: str
    channel: int
    size: int
    stride: int
    rows: tuple[tuple[int, int], ...]
    cols: tuple[tuple[int, int], ...]
    activation: Tensor = field(repr=False)
    activation_unoccluded: float
    projection: Projection | None = field(repr=False)
    target: int | None = None
    target_label: str | None = None
    probability: Tensor | None = field(default=None, repr=False)
    probability_unoccluded: float | None = None
    labels: Tensor | None = field(default=None, repr=False)
    label_names: dict[int, str] = field(default_factory=dict, repr=False)
    missing: str | None = None
    image: str | None = None
    method: str = "deconvnet"
    others: tuple[OtherPicture, ...] = field(default=(), repr=False)
    others_folder: str | None = None
    others_scanned: int = 0
    others_skipped: tuple[tuple[str, str], ...] = field(default=(), repr=False)

    def __repr__(self) -> str:
        rows, cols = self.grid
        target = "" if self.target is None else f", target={self.target} ({self.target_label})"
        return (
            f"OcclusionResult(model={self.model!r}, layer={self.layer!r}, channel={self.channel}, "
            f"size={self.size}, stride={self.stride}, grid={rows}x{cols}{target}, image={self.image!r})"
        )

    @property
    def grid(self) -> tuple[int, int]:
        """``(rows, cols)`` of occluder positions."""
        return (len(self.rows), len(self.cols))

    @property
    def has_classifier(self) -> bool:
        """Whether panels (c) and (d) are present."""
        return self.probability is not None

    def legend(self) -> list[tuple[int, str, int]]:
        """The classes of the label map (d) with how many positions each wins, most frequent first."""
        if self.labels is None:
            return []
        values, counts = self.labels.flatten().unique(return_counts=True)
        pairs = sorted(zip(values.tolist(), counts.tolist(), strict=True), key=lambda p: (-p[1], p[0]))
        return [(int(v), self.label_names.get(int(v), f"class {v}"), int(c)) for v, c in pairs]

    def summary(self) -> str:
        """One line: the image, the strongest map, the target's probability range, and the map's other pictures."""
        name = Path(self.image).name if self.image else "image"
        text = f"{name}: {self.layer} channel {self.channel}, total activation {self.activation_unoccluded:.4g}"
        if self.probability is not None and self.target is not None:
            low = float(self.probability.min())
            text += f"; p({self.target_label}) {self.probability_unoccluded:.3f} unoccluded, {low:.3f} at the lowest"
        elif self.missing:
            text += f"; {self.missing}"
        if self.others_folder is not None:
            found = ", ".join(f"{Path(o.image).name} a={o.value:.3g}" for o in self.others)
            text += f"; in the other pictures: {found}" if found else "; it fires in none of the other pictures"
            if self.others_skipped:
                more = ", ..." if len(self.others_skipped) > 1 else ""
                text += f" ({len(self.others_skipped)} unreadable left out: {self.others_skipped[0][0]}{more})"
        return text

    def _files(self) -> dict[str, bytes]:
        files = {
            "occlusion.png": figure_bytes(self.figure()[0]),
            "activation.csv": _grid_csv(self.activation.tolist()),
        }
        if self.projection is not None:
            buffer = io.BytesIO()
            self.projection.to_pil(0).save(buffer, format="png")
            files["projection.png"] = buffer.getvalue()
        if self.probability is not None and self.labels is not None:
            files["probability.csv"] = _grid_csv(self.probability.tolist())
            files["labels.csv"] = _grid_csv(self.labels.tolist())
        return files

    def _manifest(self) -> dict[str, Any]:
        return {
            "image": self.image,
            "model": self.model,
            "layer": self.layer,
            "node": self.node,
            "channel": self.channel,
            "occluder": {"size": self.size, "stride": self.stride, "fill": "mean colour (0 in input space)"},
            "grid": {"rows": [list(r) for r in self.rows], "cols": [list(c) for c in self.cols]},
            "activation_unoccluded": self.activation_unoccluded,
            "method": self.method,
            "projection": None
            if self.projection is None
            else {
                "position": None if not self.projection.positions else self.projection.positions[0],
                "box": None if not self.projection.boxes else self.projection.boxes[0],
            },
            "target": self.target,
            "target_label": self.target_label,
            "probability_unoccluded": self.probability_unoccluded,
            "legend": [{"class": c, "label": name, "positions": n} for c, name, n in self.legend()],
            "missing": self.missing,
            "others": None
            if self.others_folder is None
            else {
                "folder": self.others_folder,
                "scanned": self.others_scanned,
                "skipped": [{"image": image, "error": error} for image, error in self.others_skipped],
                "hits": [
                    {"image": o.image, "value": o.value, "position": list(o.position), "box": list(o.box)}
                    for o in self.others
                ],
            },
            "files": {
                "figure": "occlusion.png",
                "activation": "activation.csv",
                "projection": None if self.projection is None else "projection.png",
                "probability": "probability.csv" if self.probability is not None else None,
                "labels": "labels.csv" if self.labels is not None else None,
            },
        }


def _grid_csv(rows: list[list[Any]]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    for row in rows:
        writer.writerow([repr(v) if isinstance(v, float) else v for v in row])
    return buffer.getvalue().encode("utf-8")


# ---------------------------------------------------------------------------------------- analysis


def occlusion(
    image: str | os.PathLike[str] | Image | Tensor,
    model: str | Any = "vgg16",
    *,
    layer: str | None = None,
    occluder: int | None = None,
    stride: int = 8,
    target: int | str | None = "auto",
    method: str = "deconvnet",
    batch_size: int | None = None,
    device: str | None = "auto",
    progress: ProgressOption = None,
    data: Data | None = None,
    k: int = 3,
    channel: int | None = None,
    size: int | None = None,
) -> OcclusionResult:
    """Slide a grey square over an image and record what the network does (the paper's Fig. 7).

    Args:
        image: a picture file, a PIL image, or a preprocessed ``(1, C, H, W)`` tensor in the model's input space.
        model: a model name (see :func:`deconvviz.list_models`), a loaded model, or a session.
        layer: the layer whose strongest feature map panel (a) follows; default: the model's deepest default
            layer of features (``conv5_3`` for VGG16; ``fire9`` for SqueezeNet, whose ``conv10`` maps are its
            class scores).
        occluder: the occluder's side in pixels (default 32).
        stride: pixels between occluder positions (the grid has ``ceil(H / stride)`` rows).
        target: the correct class for panel (c): an index, an exact class name, or ``"auto"`` / None for the
            unoccluded top-1.
        method: the reverse pass that projects panel (b): ``"deconvnet"`` (the paper's), ``"guided"`` (guided
            backpropagation), ``"gradient"``, or another registered name (see :func:`deconvviz.list_methods`).
        batch_size: occluder positions per pass; default 16 on a CPU, 64 on a GPU.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``, when ``model`` is a name.
        progress: ``progress(done, total, image)`` once before the sweep and after each batch (``done`` counts
            occluder positions; with ``data``, the pictures scanned first, as ``"other pictures"``), ``"bar"`` for
            a tqdm bar, or None (see :mod:`deconvviz.analysis.progress`).
        data: other pictures (a folder, scanned recursively, or a text file of paths): the followed map's ``k``
            strongest units among them are projected beside (b), as in the paper (the picture itself, if there,
            is left out).
        k: how many of those are shown.
        channel: the feature map panels (a) and (b) follow; default: the strongest on the unoccluded picture, as
            in the paper.
        size: the earlier name of ``occluder`` (warns once; ``size`` is the input picture's side everywhere else).

    Returns:
        The :class:`OcclusionResult`.

    Raises:
        OcclusionError: an occluder larger than the image, a stride or size below 1, an unknown class.
        SearchError: ``data`` that is missing, empty or holds no readable picture.
        MethodError: an unknown reverse pass.
        LayerNotFoundError: an unknown layer (close names are listed).
        ImageError: a picture that cannot be read.

    Example:
        >>> result = dv.occlusion("examples/cat.jpg", model="squeezenet1_1")  # doctest: +SKIP
        >>> fig, axes = result.figure()  # doctest: +SKIP
        >>> result.save("out/occlusion/cat")  # doctest: +SKIP
    """
    size = _occluder(occluder, size, "occlusion")
    current = session(model, device=device)
    x = current.preprocess(image)
    job = prepare(current, x, layer=layer, size=size, stride=stride, target=target, method=method, channel=channel)
    name = _image_name(image)
    if data is None:
        return job.run(batch_size=batch_size, progress=progress, image=name)
    positions = len(job.rows) * len(job.cols)
    with reporting(progress, f"occluding {name or 'occlusion'}") as report:
        scanned = [0]  # one count of steps: the other pictures scanned, then the occluder's positions

        def scanning(done: int, total: int, what: str) -> None:
            scanned[0] = total
            report(done, total + positions, what)

        job.others = OtherPictures.scan(current, data, job.layer, k, progress=scanning)
        return job.run(
            batch_size=batch_size,
            progress=lambda done, total, what: report(scanned[0] + done, scanned[0] + total, what),
            image=name,
        )


def _occluder(occluder: int | None, size: int | None, function: str) -> int:
    """The occluder's side from ``occluder=`` or its earlier name ``size=`` (which warns once); 32 by default."""
    if size is None:
        return 32 if occluder is None else occluder
    deprecated(f"{function}(size=...) for the occluder's side", f"{function}(occluder=...)", stacklevel=4)
    if occluder is not None and occluder != size:
        raise OcclusionError(f"occluder={occluder} and size={size} name the same thing; give occluder= alone")
    return size


def occlusion_jobs(
    images: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    model: str | Any = "vgg16",
    *,
    layer: str | None = None,
    occluder: int | None = None,
    stride: int = 8,
    target: int | str | None = "auto",
    method: str = "deconvnet",
    device: str | None = "auto",
    data: Data | None = None,
    k: int = 3,
    progress: ProgressOption = None,
    channel: int | None = None,
    size: int | None = None,
) -> Iterator[tuple[Path, Path, OcclusionJob]]:
    """Occlusion sweeps for several pictures, one result folder each (``out/<picture name>``).

    Every picture is read and every option checked (the output folders too) before the first job is handed
    out, so bad input stops the run before anything is computed or written. ``data`` and ``k`` are
    :func:`occlusion`'s; the other pictures are scanned once, before the first job, reporting to ``progress``
    (``what`` is ``"other pictures"``).

    Yields:
        ``(picture, folder, job)``; run the job with :meth:`OcclusionJob.run` and save it into ``folder``.

    Raises:
        OcclusionError, MethodError, LayerNotFoundError, ImageError, ResultFolderError: as for :func:`occlusion`.
    """
    size = _occluder(occluder, size, "occlusion_jobs")
    paths = [Path(image) for image in images]
    if not paths:
        raise OcclusionError("give at least one picture to occlude")
    current = session(model, device=device)
    inputs = [current.preprocess(path) for path in paths]
    used: dict[str, int] = {}
    folders = []
    for path in paths:
        stem = path.stem or "image"
        used[stem] = used.get(stem, 0) + 1
        folders.append(Path(out) / (stem if used[stem] == 1 else f"{stem}-{used[stem]}"))
    for folder in folders:
        check_result_folder(folder)
    first = prepare(
        current, inputs[0], layer=layer, size=size, stride=stride, target=target, method=method, channel=channel
    )
    for x in inputs[1:]:
        occluder_grid(int(x.shape[-2]), int(x.shape[-1]), size, stride)
    options = {
        "layer": first.layer,
        "size": size,
        "stride": stride,
        "target": target,
        "method": first.method,
        "channel": channel,
    }
    others = None
    if data is not None:
        with reporting(progress, "other pictures") as report:
            others = OtherPictures.scan(current, data, first.layer, k, progress=report)
    return _jobs(current, paths, folders, inputs, first, others, **options)


def _jobs(
    current: Session,
    paths: list[Path],
    folders: list[Path],
    inputs: list[Tensor],
    first: OcclusionJob,
    others: OtherPictures | None,
    **options: Any,
) -> Iterator[tuple[Path, Path, OcclusionJob]]:
    ready = [first]
    for path, folder, x in zip(paths, folders, inputs, strict=True):
        # One set of unoccluded activations at a time: a job holds every layer's.
        job = ready.pop() if ready else prepare(current, x, **options)
        job.others = others
        yield path, folder, job


def _image_name(image: Any) -> str | None:
    return os.fspath(image) if isinstance(image, str | os.PathLike) else None


@dataclass
class OcclusionJob:
    """An occlusion sweep checked and set up (the unoccluded pass done), ready to :meth:`run`.

    Made by :func:`prepare`, so that every option is checked for every image before any sweep starts.
    """

    current: Session
    x: Tensor
    layer: str
    node: Any
    output: Any
    channel: int
    rows: list[tuple[int, int]]
    cols: list[tuple[int, int]]
    size: int
    stride: int
    target: int | None
    labels: list[str] | None
    missing: str | None
    engine: Any
    method: str = "deconvnet"
    others: OtherPictures | None = None

    def run(
        self, *, batch_size: int | None = None, progress: ProgressOption = None, image: str | None = None
    ) -> OcclusionResult:
        """Sweep the occluder over every position and assemble the result."""
        import numpy as np
        import torch

        from deconvviz.viz.render import input_to_pil

        if batch_size is None:
            batch_size = positions_per_batch(self.x)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise OcclusionError(f"batch_size must be a positive integer, got {batch_size!r}")
        grid = [(i, j) for i in range(len(self.rows)) for j in range(len(self.cols))]
        totals: list[Tensor] = []
        probs: list[Tensor] = []
        winners: list[Tensor] = []
        engine = self.engine
        what = image or "occlusion"
        with (
            torch.inference_mode(),
            evaluating(self.current.net.model),
            reporting(progress, f"occluding {what}") as report,
        ):
            report(0, len(grid), what)
            for done, chunk, values in sweep(engine, grid, batch_size):
                totals.append(engine.channel_totals(self.node, values[self.node], self.channel).double().cpu())
                if self.output is not None and self.target is not None:
                    p = engine.full(self.output, values[self.output], len(chunk)).double().softmax(1)
                    probs.append(p[:, self.target].clone().cpu())  # not a view that keeps every class
                    winners.append(p.argmax(1).cpu())
                report(done, len(grid), what)
            unoccluded = engine.cached[self.node][0, self.channel].double().sum().item()
            p0 = (
                engine.cached[self.output].double().softmax(1)[0, self.target].item()
                if self.output is not None and self.target is not None
                else None
            )
        shape = (len(self.rows), len(self.cols))
        net = self.current.net
        # (b) as render draws it: the map's strongest unit whose receptive field lies inside the picture, so
        # that the projection is not a speck in a corner (the strongest anywhere when under a quarter lie inside)
        captured = net.capture(self.x, self.layer, method=self.method)  # one forward pass serves either choice
        found = project_inside(
            self.current, self.x, self.layer, [self.channel], None, method=self.method, captured=captured
        )
        projection = found if found is not None else captured.project(self.channel)
        projection = dataclasses.replace(projection, boxes=receptive_boxes(net, projection))
        shown = () if self.others is None else self.others.of(self.channel, method=projection.method, leave_out=image)
        to_image = getattr(self.current.model, "to_image", None)  # a bare nn.Module has none: min-max instead
        picture = np.asarray(input_to_pil(self.x.detach().cpu(), to_image, self.current.channel_order))
        label_map = torch.cat(winners).view(shape) if winners else None
        names: dict[int, str] = {}
        if label_map is not None:
            for index in [*label_map.unique().tolist(), self.target]:
                if index is not None:
                    names[int(index)] = self.labels[int(index)] if self.labels else f"class {index}"
        return OcclusionResult(
            picture=picture,
            model=self.current.name,
            layer=self.layer,
            node=self.current.net.graph.names[self.node],
            channel=self.channel,
            size=self.size,
            stride=self.stride,
            rows=tuple(self.rows),
            cols=tuple(self.cols),
            activation=torch.cat(totals).view(shape),
            activation_unoccluded=float(unoccluded),
            projection=projection,
            target=self.target,
            target_label=names.get(self.target) if self.target is not None else None,
            probability=torch.cat(probs).view(shape) if probs else None,
            probability_unoccluded=p0,
            labels=label_map,
            label_names=names,
            missing=self.missing,
            image=image,
            method=projection.method,
            others=shown,
            others_folder=None if self.others is None else self.others.folder,
            others_scanned=0 if self.others is None else self.others.besides(image),
            others_skipped=() if self.others is None else tuple(self.others.found.skipped),
        )


def prepare(
    current: Session,
    x: Tensor,
    *,
    layer: str | None = None,
    size: int = 32,
    stride: int = 8,
    target: int | str | None = "auto",
    method: str = "deconvnet",
    channel: int | None = None,
) -> OcclusionJob:
    """Check the options against the model and image and run the unoccluded pass (see :func:`occlusion`).

    Raises:
        OcclusionError: see :func:`occlusion`.
    """
    import torch

    get_method(method)  # an unknown reverse pass fails here, before any work
    net = current.net
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[0] != 1:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise OcclusionError(f"expected one preprocessed image of shape (1, C, H, W), got {shape}")
    reference = next(iter(net.model.parameters()), None)
    if reference is not None and reference.is_floating_point():
        x = x.to(device=reference.device, dtype=reference.dtype)
    rows, cols = occluder_grid(int(x.shape[-2]), int(x.shape[-1]), size, stride)
    if layer is None:  # the deepest feature maps, as the paper's layer 5; not a layer of class-score maps
        layer = _default_layer(net, x)
    graph = net.graph
    node = graph.node(layer, net.aliases)
    if node not in graph.carries or node is graph.input:
        raise SeedError(f"layer {layer!r} does not depend on the input image; choose a convolutional layer")
    outputs = [n for n in graph.nodes if n.op == "output"]
    result = outputs[0].args[0] if outputs else None
    output = result if isinstance(result, torch.fx.Node) and result in graph.carries else None
    with torch.inference_mode(), evaluating(net.model):
        targets = [node] if output is None else [node, output]
        engine = IncrementalOcclusion(graph, x, targets, rows, cols)
    act = engine.cached[node]
    if not isinstance(act, torch.Tensor) or act.dim() != 4:
        found = str(tuple(act.shape)) if isinstance(act, torch.Tensor) else type(act).__name__
        raise SeedError(f"layer {layer!r} has no feature maps (output {found}); choose a convolutional layer")
    width = int(act.shape[1])
    if channel is None:
        channel = int(act[0].flatten(1).amax(1).argmax())
    elif isinstance(channel, bool) or not isinstance(channel, int) or not 0 <= channel < width:
        raise OcclusionError(channel_outside(channel, width, layer))
    names = getattr(current.model, "labels", None)
    labels = [str(n) for n in names] if names else None
    missing: str | None = None
    chosen: int | None = None
    logits = engine.cached[output] if output is not None else None
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[1] < 2:
        ends = str(tuple(logits.shape)) if isinstance(logits, torch.Tensor) else "none"
        missing = (
            f"panels (c) and (d) need a classifier head, and {current.name} ends in a feature map (output {ends}); "
            "use a model with one, e.g. --model squeezenet1_1"
        )
        output = None
        if target not in (None, "auto"):
            raise OcclusionError(f"--class {target} needs a classifier head, and {current.name} has none")
    else:
        classes = int(logits.shape[1])
        chosen = class_index(
            target, labels if labels and len(labels) == classes else None, classes, current.name, OcclusionError
        )
        if chosen is None:
            chosen = int(logits[0].argmax())
    return OcclusionJob(
        current=current,
        x=x,
        layer=layer,
        node=node,
        output=output,
        channel=channel,
        rows=rows,
        cols=cols,
        size=size,
        stride=stride,
        target=chosen,
        labels=labels,
        missing=missing,
        engine=engine,
        method=method,
    )


def _default_layer(net: DeconvNet, x: Tensor) -> str:
    """The deepest of the default layers whose maps are features rather than the class scores (:func:`score_maps`)."""
    import torch

    with torch.inference_mode(), evaluating(net.model):
        output = net.model(x)
    classes = int(output.shape[1]) if isinstance(output, torch.Tensor) and output.dim() == 2 else None
    return default_layers(net, x, classes=classes)[-1]


__all__ = [
    "OcclusionError",
    "OcclusionJob",
    "OcclusionResult",
    "occlusion",
    "occlusion_jobs",
    "prepare",
]
