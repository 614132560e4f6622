"""Correspondence analysis (Zeiler & Fergus, Table 1): does the network match object parts across images?

The same named part (right eye, left eye, nose) is occluded in every image. For each layer ``l`` and image
``i``, ``eps_i = x_i - x~_i`` is the layer's features of the original minus those of the occluded image, and

    Delta_l = mean over pairs i < j of H(sign eps_i, sign eps_j)

where ``H`` is the Hamming distance normalised by the feature size (the fraction of features whose change
has a different sign; a zero change is its own sign). The standard deviation is taken over the pairs. The
same is done for random boxes of the same sizes: a part whose Delta is below the random baseline changes the
features the same way in every image, i.e. the network relates that part across images.

The parts file is JSON with one entry per image (matched by file name) and one box per part, in the image's
own pixels as ``[left, top, right, bottom]`` (right and bottom exclusive, PIL's convention), measured on the
picture as displayed (after its EXIF orientation)::

    {
      "parts": ["right eye", "left eye", "nose"],
      "images": {
        "dog1.jpg": {"right eye": [120, 80, 150, 104], "left eye": [170, 82, 200, 106], "nose": [140, 120, 180, 150]},
        "dog2.jpg": {"right eye": [...], "left eye": [...], "nose": [...]}
      }
    }

``"parts"`` is optional (it fixes the order of the table's rows; by default, the order of the first image).
Boxes are mapped to the model's input by the same resizing and centre crop as the picture.
"""

from __future__ import annotations

import csv
import io
import json
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from deconvviz.analysis.base import AnalysisError, AnalysisResult, figure_bytes, text_table
from deconvviz.analysis.progress import ProgressOption, reporting
from deconvviz.core.graph import evaluating
from deconvviz.core.layers import choose_layers, default_layers
from deconvviz.io.images import load_image
from deconvviz.models.session import session

if TYPE_CHECKING:  # pragma: no cover
    from torch import Tensor

    from deconvviz.models.session import Session
    from deconvviz.models.specs import Preprocessing

Box = tuple[int, int, int, int]
"""``(left, top, right, bottom)`` in pixels; right and bottom exclusive."""

RANDOM = "random"
"""The row name of the random-box baseline."""


class PartsError(AnalysisError):
    """A parts file that cannot be read or does not fit the images (a missing part, a box outside an image)."""


# ---------------------------------------------------------------------------------------------- parts


@dataclass(frozen=True)
class Parts:
    """Named boxes per image, as read from a parts file.

    Attributes:
        names: the parts, in table order.
        boxes: image file name -> part -> ``(left, top, right, bottom)`` in the image's pixels.
        source: the file they came from, if any.
    """

    names: tuple[str, ...]
    boxes: Mapping[str, Mapping[str, Box]]
    source: str | None = None

    def for_image(self, image: str | os.PathLike[str]) -> Mapping[str, Box]:
        """The boxes of one image, looked up by its file name.

        Raises:
            PartsError: the parts file has no entry for the image.
        """
        name = Path(image).name
        found = self.boxes.get(name)
        if found is None:
            where = f" in {self.source}" if self.source else ""
            raise PartsError(f'no parts for image {name!r}{where}; add an entry under "images" named {name!r}')
        return found


def load_parts(source: str | os.PathLike[str] | Mapping[str, Any]) -> Parts:
    """Read a parts file (see the module docstring for its format), or take the same structure as a dict.

    Args:
        source: a JSON file, or its parsed content.

    Returns:
        The :class:`Parts`.

    Raises:
        PartsError: the file cannot be read, is not valid JSON, or a box is not four integers with
            ``left < right`` and ``top < bottom``; or an image misses a part another image has.
    """
    where: str | None = None
    if isinstance(source, Mapping):
        data: Any = source
    else:
        where = os.fspath(source)
        try:
            data = json.loads(Path(source).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise PartsError(f"parts file {where!r} does not exist") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise PartsError(f"cannot read parts file {where!r}: {getattr(exc, 'strerror', None) or exc}") from None
        except ValueError as exc:
            raise PartsError(f"parts file {where!r} is not valid JSON: {exc}") from None
    label = where or "the parts"
    images = data.get("images") if isinstance(data, Mapping) else None
    if not isinstance(images, Mapping) or not images:
        raise PartsError(
            f'{label}: expected an object with "images": {{file name: {{part: [left, top, right, bottom]}}}}'
        )
    boxes: dict[str, dict[str, Box]] = {}
    for image, parts in images.items():
        if not isinstance(parts, Mapping) or not parts:
            raise PartsError(f"{label}: image {image!r} needs an object of part name -> [left, top, right, bottom]")
        boxes[str(image)] = {str(part): _box(box, f"{label}: box {part!r} of {image!r}") for part, box in parts.items()}
    first = next(iter(boxes.values()))
    names = data.get("parts", list(first))
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise PartsError(f'{label}: "parts" must be a list of part names')
    for image, parts in boxes.items():
        missing = [n for n in names if n not in parts]
        if missing:
            raise PartsError(f"{label}: image {image!r} has no box for {', '.join(repr(m) for m in missing)}")
    return Parts(names=tuple(names), boxes=boxes, source=where)


def _box(value: Any, what: str) -> Box:
    if (
        not isinstance(value, list | tuple)
        or len(value) != 4
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        raise PartsError(f"{what} must be four integers [left, top, right, bottom], got {value!r}")
    left, top, right, bottom = (int(v) for v in value)
    if right <= left or bottom <= top:
        raise PartsError(
            f"{what} is empty: [left, top, right, bottom] needs left < right and top < bottom, got {value!r}"
        )
    return (left, top, right, bottom)


class PartCutWarning(UserWarning):
    """A part's box that the model's centre crop cuts: only its part inside the crop is occluded."""


def _area(box: Box) -> int:
    return max(0, box[2] - box[0]) * max(0, box[3] - box[1])


def map_box(
    box: Box,
    picture_size: tuple[int, int],
    preprocessing: Preprocessing,
    *,
    full_image: bool = False,
    clip: bool = True,
) -> Box:
    """A box in a picture's pixels, in the model input's pixels (the preprocessing's resize and centre crop).

    Args:
        box: ``(left, top, right, bottom)`` in the picture.
        picture_size: the picture's ``(width, height)``.
        preprocessing: the model's preprocessing (its ``fit`` geometry is followed).
        full_image: the picture is kept whole (no crop).
        clip: clip the box to the input (else it may reach past it, or have negative corners).

    Returns:
        The box in input pixels, widened to whole pixels and clipped to the input.
    """
    import math

    width, height = picture_size
    short = preprocessing.shorter_side
    ratio = short / min(width, height)
    new_w, new_h = max(1, round(width * ratio)), max(1, round(height * ratio))
    sx, sy = new_w / width, new_h / height
    if full_image:
        off_x, off_y, out_w, out_h = 0, 0, new_w, new_h
    else:
        size = preprocessing.size
        off_x, off_y, out_w, out_h = round((new_w - size) / 2), round((new_h - size) / 2), size, size
    left, top, right, bottom = box
    mapped = (
        math.floor(left * sx) - off_x,
        math.floor(top * sy) - off_y,
        math.ceil(right * sx) - off_x,
        math.ceil(bottom * sy) - off_y,
    )
    if not clip:
        return mapped
    return (
        min(max(mapped[0], 0), out_w),
        min(max(mapped[1], 0), out_h),
        min(max(mapped[2], 0), out_w),
        min(max(mapped[3], 0), out_h),
    )


# -------------------------------------------------------------------------------------------- numbers


def sign_distances(eps: Tensor) -> Tensor:
    """``H(sign eps_i, sign eps_j)`` for every pair ``i < j`` of rows of ``eps``, in pair order.

    Args:
        eps: ``(N, F)`` feature changes, one row per image (any shape after the first dimension is flattened).

    Returns:
        ``(N (N - 1) / 2,)`` the fraction of features whose signs differ, for pairs (0, 1), (0, 2), ... (N-2, N-1).
    """
    import torch

    signs = eps.flatten(1).sign()
    n = signs.shape[0]
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    if not pairs:
        return torch.zeros(0, dtype=torch.float64)
    return torch.stack([(signs[i] != signs[j]).double().mean() for i, j in pairs])


# --------------------------------------------------------------------------------------------- result


@dataclass(frozen=True)
class CorrespondenceResult(AnalysisResult):
    """The paper's Table 1: Delta per part and layer, with the random-box baseline.

    Attributes:
        model: the model's name.
        images: the images, in order.
        parts: the part names (rows of the table; the random baseline is added as ``"random"``).
        layers: the layers (columns).
        distances: ``(part, layer)`` -> the pairwise distances ``H`` (for ``"random"``, those of every draw).
        boxes: image -> part -> the box in the model input's pixels ``(left, top, right, bottom)``.
        random_boxes: per draw, image -> part -> the random box used for the baseline.
        seed: the seed of the random boxes.
    """

    kind: ClassVar[str] = "correspondence"

    model: str
    images: tuple[str, ...]
    parts: tuple[str, ...]
    layers: tuple[str, ...]
    distances: Mapping[tuple[str, str], Tensor] = field(repr=False)
    boxes: Mapping[str, Mapping[str, Box]] = field(repr=False)
    random_boxes: tuple[Mapping[str, Mapping[str, Box]], ...] = field(default=(), repr=False)
    seed: int = 0

    @property
    def rows(self) -> list[str]:
        """The table's rows: the parts, then the random baseline if it was drawn."""
        return [*self.parts, *([RANDOM] if (RANDOM, self.layers[0]) in self.distances else [])]

    def mean(self, part: str, layer: str) -> float:
        """Delta: the mean pairwise distance for a part (or ``"random"``) at a layer."""
        return float(self.distances[(part, layer)].mean())

    def std(self, part: str, layer: str) -> float:
        """The standard deviation of the pairwise distances."""
        values = self.distances[(part, layer)]
        return float(values.std(correction=0)) if values.numel() else 0.0

    def table(self) -> str:
        """The table as text: one row per part (and random), one column per layer, ``mean ± std``."""
        head = ["part", *self.layers]
        single = any(self.distances[(row, layer)].numel() < 2 for row in self.rows for layer in self.layers)
        body = [[row, *(self._cell(row, layer) for layer in self.layers)] for row in self.rows]
        note = ["a value of one image pair has no spread: give three or more pictures for mean ± std"] if single else []
        return "\n".join([*text_table(head, body), *note])

    def _cell(self, part: str, layer: str) -> str:
        """``mean ± std``, or the mean alone where one pair gives it (no spread to show)."""
        if self.distances[(part, layer)].numel() < 2:
            return f"{self.mean(part, layer):.3f}"
        return f"{self.mean(part, layer):.3f} ± {self.std(part, layer):.3f}"

    def to_csv(self) -> str:
        """The table as CSV: ``part,layer,mean,std,pairs``."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["part", "layer", "mean", "std", "pairs"])
        for row in self.rows:
            for layer in self.layers:
                count = int(self.distances[(row, layer)].numel())
                writer.writerow([row, layer, repr(self.mean(row, layer)), repr(self.std(row, layer)), count])
        return buffer.getvalue()

    def _files(self) -> dict[str, bytes]:
        return {
            "table.txt": (self.table() + "\n").encode("utf-8"),
            "delta.csv": self.to_csv().encode("utf-8"),
            "correspondence.png": figure_bytes(self.figure()[0]),
        }

    def _manifest(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "images": list(self.images),
            "parts": list(self.parts),
            "layers": list(self.layers),
            "seed": self.seed,
            "random_draws": len(self.random_boxes),
            "delta": {
                row: {layer: {"mean": self.mean(row, layer), "std": self.std(row, layer)} for layer in self.layers}
                for row in self.rows
            },
            "boxes": {image: {p: list(b) for p, b in parts.items()} for image, parts in self.boxes.items()},
            "box_order": "left, top, right, bottom (as in the parts file)",
            "files": {"table": "table.txt", "csv": "delta.csv", "figure": "correspondence.png"},
        }


# ------------------------------------------------------------------------------------------- analysis


def correspondence(
    images: Sequence[str | os.PathLike[str]],
    parts: str | os.PathLike[str] | Mapping[str, Any] | Parts,
    model: str | Any = "vgg16",
    *,
    layers: str | Sequence[str] | None = None,
    random: int = 5,
    seed: int = 0,
    device: str | None = "auto",
    progress: ProgressOption = None,
) -> CorrespondenceResult:
    """The paper's correspondence measure (Table 1) over a few images with the same named parts.

    Args:
        images: two or more picture files; each must have an entry in the parts file (by file name).
        parts: a parts file (see the module docstring), its parsed content, or :class:`Parts`.
        model: a model name, a loaded model, or a session.
        layers: layer aliases or node names (a list, or comma-separated); default the model's two deepest
            default layers (``conv4_3, conv5_3`` for VGG16).
        random: how many times to draw a random box of each part's size in every image for the baseline
            (0: no baseline).
        seed: the seed of those draws.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``, when ``model`` is a name.
        progress: ``progress(done, total, image)`` once before the work and after each image, ``"bar"`` for a
            tqdm bar, or None (see :mod:`deconvviz.analysis.progress`).

    Returns:
        The :class:`CorrespondenceResult`.

    Raises:
        PartsError: a bad parts file, an image without parts, a box outside its image or the model's view.
        AnalysisError: fewer than two images, a negative ``random``.
        LayerNotFoundError: an unknown layer.

    Example:
        >>> result = dv.correspondence(photos, "parts.json", model="squeezenet1_1")  # doctest: +SKIP
        >>> print(result.table())  # doctest: +SKIP
    """
    import torch

    if len(images) < 2:
        raise AnalysisError(f"correspondence compares images pairwise; give at least two, got {len(images)}")
    if isinstance(random, bool) or not isinstance(random, int) or random < 0:
        raise AnalysisError(f"--random must be a whole number of draws (0 for none), got {random!r}")
    table = parts if isinstance(parts, Parts) else load_parts(parts)
    current = session(model, device=device)
    # the boxes are in picture pixels: the model's resizing and crop place them
    current.require_preprocessing("correspondence reads picture files and needs", error=AnalysisError)
    preprocessing = current.model.preprocessing

    # Check every image and box before running anything.
    pictures = []
    input_boxes: dict[str, dict[str, Box]] = {}
    names: list[str] = []
    for image in images:
        picture = load_image(image)
        boxes = table.for_image(image)
        width, height = picture.size
        mapped: dict[str, Box] = {}
        for part in table.names:
            left, top, right, bottom = boxes[part]
            if left < 0 or top < 0 or right > width or bottom > height:
                raise PartsError(
                    f"box {part!r} of {Path(image).name!r} [{left}, {top}, {right}, {bottom}] lies outside the "
                    f"{width}x{height} image; boxes are [left, top, right, bottom] in the image's pixels"
                )
            mapped[part] = map_box(boxes[part], (width, height), preprocessing)
            if mapped[part][2] <= mapped[part][0] or mapped[part][3] <= mapped[part][1]:
                raise PartsError(
                    f"box {part!r} of {Path(image).name!r} falls outside the centre crop the model sees; move the "
                    "part into the middle of the picture or crop the picture first"
                )
            whole = map_box(boxes[part], (width, height), preprocessing, clip=False)
            kept = _area(mapped[part]) / _area(whole)
            if kept < 1:  # the crop cuts the part: what is occluded is less than what was marked
                warnings.warn(
                    f"box {part!r} of {Path(image).name!r} reaches past the centre crop the model sees: only "
                    f"{kept:.0%} of it is occluded; move the part into the middle of the picture or crop it first",
                    PartCutWarning,
                    stacklevel=2,
                )
        name = Path(image).name
        if name in input_boxes:
            raise AnalysisError(
                f"two pictures are named {name!r}; the parts file names pictures by file name, so rename one"
            )
        names.append(name)
        input_boxes[name] = mapped
        pictures.append(picture)

    xs = [current.preprocess(p) for p in pictures]
    chosen = _layers(current, layers, xs[0], choose_layers)
    generator = torch.Generator().manual_seed(seed)
    draws: list[dict[str, dict[str, Box]]] = [{} for _ in range(random)]
    for name, x in zip(names, xs, strict=True):
        height, width = int(x.shape[-2]), int(x.shape[-1])
        for d in range(random):
            draws[d][name] = {}
            for part, (left, top, right, bottom) in input_boxes[name].items():
                w, h = right - left, bottom - top
                x0 = int(torch.randint(0, width - w + 1, (1,), generator=generator))
                y0 = int(torch.randint(0, height - h + 1, (1,), generator=generator))
                draws[d][name][part] = (x0, y0, x0 + w, y0 + h)

    # eps per (row, layer): one (N, F) tensor per part, and per (draw, part) for the baseline.
    eps: dict[tuple[str, int, str], list[Tensor]] = {}
    with torch.inference_mode(), evaluating(current.net.model), reporting(progress, "correspondence") as report:
        report(0, len(names), "starting")
        for index, (name, x) in enumerate(zip(names, xs, strict=True)):
            jobs: list[tuple[str, int, Box]] = [(part, -1, box) for part, box in input_boxes[name].items()]
            jobs += [(part, d, draws[d][name][part]) for d in range(random) for part in table.names]
            batch = x.expand(1 + len(jobs), *x.shape[1:]).clone()
            for k, (_, _, (left, top, right, bottom)) in enumerate(jobs, start=1):
                batch[k, :, top:bottom, left:right] = 0.0  # the mean colour, in the normalised input
            features = current.net.activations(batch, chosen)
            for layer in chosen:
                f = features[layer].flatten(1).double()
                for k, (part, d, _) in enumerate(jobs, start=1):
                    eps.setdefault((part, d, layer), []).append((f[0] - f[k]).cpu())
            report(index + 1, len(names), name)

    distances: dict[tuple[str, str], Tensor] = {}
    for layer in chosen:
        for part in table.names:
            distances[(part, layer)] = sign_distances(torch.stack(eps[(part, -1, layer)]))
        if random:
            distances[(RANDOM, layer)] = torch.cat(
                [sign_distances(torch.stack(eps[(part, d, layer)])) for d in range(random) for part in table.names]
            )
    return CorrespondenceResult(
        model=current.name,
        images=tuple(os.fspath(i) for i in images),
        parts=table.names,
        layers=tuple(chosen),
        distances=distances,
        boxes=input_boxes,
        random_boxes=tuple(draws),
        seed=seed,
    )


def _layers(
    current: Session, layers: str | Sequence[str] | None, x: Tensor, choose: Callable[..., list[str]]
) -> list[str]:
    if layers is None or (not isinstance(layers, str) and not list(layers)):
        return default_layers(current.net, x)[-2:]
    return choose(current.net, layers, x)


__all__ = [
    "RANDOM",
    "CorrespondenceResult",
    "PartCutWarning",
    "Parts",
    "PartsError",
    "correspondence",
    "load_parts",
    "map_box",
    "sign_distances",
]
