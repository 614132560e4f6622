"""How discriminative each layer's features are (Zeiler & Fergus, Section 5.3 and Table 7).

The paper keeps the ImageNet model's first ``n`` layers, puts a linear SVM or a softmax on top, trains it on
a few pictures per class of another data set (Caltech-101 and -256) and reports the accuracy on the rest: it
rises steadily with depth, "as the feature hierarchies become deeper, they learn increasingly powerful
features".

Here the same is done on any labelled pictures (one folder per class, as ImageNet's and ImageFolder's):

1. one forward pass per picture keeps every chosen layer's features, each feature map averaged over a
   ``grid x grid`` pattern of cells (``adaptive_avg_pool2d``), so that a 224-pixel VGG16's ``conv1_2`` gives
   64 x 4 features rather than 3.2 million (the paper trains on whole maps; a small grid keeps the measure
   affordable at every depth and keeps where in the picture a feature fired, coarsely);
2. for each of ``splits`` random splits, ``train`` pictures of each class train the linear model and the rest
   test it; features are standardised with the training pictures' mean and deviation;
3. the linear model is a multinomial softmax (cross-entropy) or one linear SVM per class against the rest
   (squared hinge, as LIBLINEAR's default), with an L2 penalty on the weights, fitted to convergence by
   L-BFGS in float64 (both losses are convex, so the fit has one optimum); the penalty is chosen per split by
   cross-validation on the training pictures alone unless it is given;
4. the score is the mean over classes of each class's test accuracy (the paper's measure on Caltech), with
   its mean and standard deviation over the splits.

The chance level is ``1 / classes``.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, ClassVar

from deconvviz.analysis.base import AnalysisError, AnalysisResult, figure_bytes
from deconvviz.analysis.linear import (
    LINEAR,
    choose_penalty,
    class_accuracies,
    fit_linear,
    shuffled_classes,
    standardise,
)
from deconvviz.analysis.progress import ProgressOption, reporting
from deconvviz.core.graph import evaluating
from deconvviz.core.layers import choose_layers
from deconvviz.io.sources import image_source
from deconvviz.models.session import session

if TYPE_CHECKING:  # pragma: no cover
    from torch import Tensor

    from deconvviz.io.sources import ImageSource


class LabelError(AnalysisError):
    """Pictures whose classes cannot be told, or too few pictures per class to train and test."""


# --------------------------------------------------------------------------------------------- labels


Labels = Sequence[Any] | Mapping[str, Any] | str | os.PathLike[str]
"""What ``labels=`` takes: one class per picture in order, picture name -> class, or a labels file."""


def labels_of(source: ImageSource, data: Any, labels: Labels | None) -> list[str]:
    """Each picture's class: as given, a data set's targets, or the name of the folder the picture lies in.

    Args:
        source: the pictures.
        data: what they came from (a data set's ``targets`` and ``classes`` are read).
        labels: one class per picture, in the pictures' order; a mapping from a picture's name (its path
            relative to the folder, or its file name) to its class; or a labels file of such pairs
            (:func:`read_labels`). None: the data set's targets, or the folder each picture lies in.

    Raises:
        LabelError: labels of the wrong length, a picture without a class, or a picture in no class folder.
    """
    if isinstance(labels, str | os.PathLike):
        labels = read_labels(labels)
    if isinstance(labels, Mapping):
        return _looked_up(source, labels)
    if labels is not None:
        if len(labels) != len(source):
            raise LabelError(f"{len(labels)} labels for {len(source)} pictures; give one label per picture")
        return [str(label) for label in labels]
    if source.paths is None:  # a data set: its targets
        targets = getattr(data, "targets", None)
        if targets is None:
            items = (data[i] for i in range(len(source)))
            targets = [item[1] if isinstance(item, tuple | list) and len(item) > 1 else None for item in items]
        if any(t is None for t in targets):
            raise LabelError(
                "the data set's items carry no class: give (image, target) items, a .targets list, or labels="
            )
        names = getattr(data, "classes", None)
        return [str(names[int(t)]) if names is not None else str(int(t)) for t in targets]
    if not Path(source.description).is_dir():  # a list of paths: the folder each picture lies in
        return [path.parent.name for path in source.paths]
    found = []
    for name in source.names:
        parts = PurePosixPath(name).parts
        if len(parts) < 2:
            raise LabelError(
                f"picture {name!r} lies at the top of {source.description!r}, in no class: put each class's "
                "pictures in a folder named after the class"
            )
        found.append(parts[0])
    return found


def read_labels(path: str | os.PathLike[str]) -> dict[str, str]:
    """A labels file: one picture and its class a line, separated by a comma or a tab (CSV quoting allowed).

    The picture is named by its path relative to the folder (as the folder lists it) or by its file name;
    blank lines and lines starting with ``#`` are skipped. A header such as ``picture,class`` names no picture
    and so does no harm.

    Raises:
        LabelError: the file cannot be read, or a line is not two fields.
    """
    where = os.fspath(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LabelError(f"labels file {where!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise LabelError(f"cannot read labels file {where!r} ({exc}); give a UTF-8 text file") from None
    lines = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    delimiter = "\t" if lines and "\t" in lines[0] else ","
    found: dict[str, str] = {}
    for number, row in enumerate(csv.reader(lines, delimiter=delimiter), start=1):
        cells = [cell.strip() for cell in row]
        if len(cells) != 2 or not all(cells):
            raise LabelError(
                f"labels file {where!r}, line {number}: expected 'picture,class', got {delimiter.join(row)!r}"
            )
        found[cells[0]] = cells[1]
    if not found:
        raise LabelError(f"labels file {where!r} names no pictures; write one 'picture,class' a line")
    return found


def _looked_up(source: ImageSource, labels: Mapping[str, Any]) -> list[str]:
    """Each picture's class from ``labels``, by its name, else by its file name."""
    found = []
    for name in source.names:
        label = labels.get(name, labels.get(PurePosixPath(name).name))
        if label is None:
            raise LabelError(f"no class for picture {name!r} in the labels; add a line '{name},CLASS'")
        found.append(str(label))
    return found


# --------------------------------------------------------------------------------------------- result


@dataclass(frozen=True)
class DiscriminationResult(AnalysisResult):
    """The paper's Table 7 for one model and one labelled set of pictures: held-out accuracy per layer.

    Attributes:
        model: the model's name.
        data: where the pictures came from.
        classes: the class names, in index order.
        counts: the pictures of each class.
        layers: the layers, shallow to deep as given.
        features: the features per picture at each layer.
        linear: ``"softmax"`` or ``"svm"``.
        train: training pictures per class in each split (the rest test).
        grid: each feature map is averaged over ``grid x grid`` cells.
        seed: the seed of the splits and folds.
        accuracies: layer -> ``(splits, classes)`` each class's test accuracy in each split.
        penalties: layer -> the L2 penalty used in each split.
    """

    kind: ClassVar[str] = "discrimination"

    model: str
    data: str
    classes: tuple[str, ...]
    counts: tuple[int, ...]
    layers: tuple[str, ...]
    features: Mapping[str, int]
    linear: str
    train: int
    grid: int
    seed: int
    accuracies: Mapping[str, Tensor] = field(repr=False)
    penalties: Mapping[str, tuple[float, ...]] = field(repr=False)

    @property
    def splits(self) -> int:
        """How many random train / test splits."""
        return int(self.accuracies[self.layers[0]].shape[0])

    @property
    def setting(self) -> str:
        """``10 classes, 10 training pictures each``: what the table and the figure say the score is over."""
        return f"{len(self.classes)} classes, {self.train} training picture{'s' if self.train != 1 else ''} each"

    @property
    def chance(self) -> float:
        """The accuracy of guessing: one over the number of classes."""
        return 1.0 / len(self.classes)

    def scores(self, layer: str) -> Tensor:
        """The score of each split at ``layer``: the mean over classes of each class's accuracy."""
        return self.accuracies[layer].mean(1)

    def mean(self, layer: str) -> float:
        """The score at ``layer``, averaged over the splits."""
        return float(self.scores(layer).mean())

    def std(self, layer: str) -> float:
        """The standard deviation of the score over the splits."""
        return float(self.scores(layer).std(correction=0))

    @property
    def best(self) -> str:
        """The layer with the highest mean score (the shallowest of equals)."""
        return max(self.layers, key=lambda layer: (self.mean(layer), -self.layers.index(layer)))

    def table(self) -> str:
        """One row per layer: features, accuracy mean ± std over the splits (in %), the penalty."""
        name = "Softmax" if self.linear == "softmax" else "SVM"
        head = ["layer", "features", f"{name} accuracy %", "L2"]
        body = [
            [
                layer,
                str(self.features[layer]),
                f"{100 * self.mean(layer):.1f} ± {100 * self.std(layer):.1f}",
                _penalty(self.penalties[layer]),
            ]
            for layer in self.layers
        ]
        widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in [head, *body]]
        chance = f"chance {100 * self.chance:.1f} %: {self.setting}"
        return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:], chance])

    def summary(self) -> str:
        """One line: the best layer and its score against chance."""
        return (
            f"{self.best} separates the {len(self.classes)} classes best: {100 * self.mean(self.best):.1f} % "
            f"(chance {100 * self.chance:.1f} %)"
        )

    def to_csv(self) -> str:
        """Every class's accuracy: ``layer,split,class,accuracy,l2``."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["layer", "split", "class", "accuracy", "l2"])
        for layer in self.layers:
            for split, row in enumerate(self.accuracies[layer].tolist()):
                for name, value in zip(self.classes, row, strict=True):
                    writer.writerow([layer, split, name, repr(value), repr(self.penalties[layer][split])])
        return buffer.getvalue()

    def _files(self) -> dict[str, bytes]:
        return {
            "table.txt": (self.table() + "\n").encode("utf-8"),
            "accuracy.csv": self.to_csv().encode("utf-8"),
            "discrimination.png": figure_bytes(self.figure()[0]),
        }

    def _manifest(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "data": self.data,
            "classes": dict(zip(self.classes, self.counts, strict=True)),
            "linear": self.linear,
            "train_per_class": self.train,
            "splits": self.splits,
            "grid": self.grid,
            "seed": self.seed,
            "chance": self.chance,
            "layers": {
                layer: {
                    "features": self.features[layer],
                    "mean": self.mean(layer),
                    "std": self.std(layer),
                    "l2": list(self.penalties[layer]),
                }
                for layer in self.layers
            },
            "best": self.best,
            "files": {"table": "table.txt", "csv": "accuracy.csv", "figure": "discrimination.png"},
        }


def _penalty(values: Sequence[float]) -> str:
    """The penalty, or the range of those the splits chose."""
    low, high = min(values), max(values)
    return f"{low:g}" if low == high else f"{low:g}-{high:g}"


# ------------------------------------------------------------------------------------------- analysis


def discrimination(
    data: Any,
    model: str | Any = "vgg16",
    *,
    layers: str | Sequence[str] | None = None,
    labels: Labels | None = None,
    linear: str = "softmax",
    train: int | None = None,
    per_class: int | None = None,
    splits: int = 5,
    grid: int = 2,
    l2: float | None = None,
    seed: int = 0,
    batch_size: int = 16,
    device: str | None = "auto",
    progress: ProgressOption = None,
) -> DiscriminationResult:
    """How well a linear model on each layer's features tells labelled pictures apart (the paper's Table 7).

    Args:
        data: a folder with one sub-folder of pictures per class, a text file of picture paths (each picture's
            class: the folder it lies in), or a ``torch.utils.data.Dataset`` of ``(image, target)`` items.
        model: a model name, a loaded model, or a session.
        layers: layer aliases or node names (a list, or comma-separated); default the model's default layers.
        labels: instead of the folders: one class per picture, in the order of the pictures (sorted paths); a
            mapping from a picture's name (path relative to the folder, or file name) to its class; or a labels
            file of ``picture,class`` lines (:func:`read_labels`).
        linear: ``"softmax"`` (multinomial logistic regression) or ``"svm"`` (linear SVMs, one per class).
        train: training pictures per class in each split; the rest test. Default: half the smallest class.
        per_class: use at most this many pictures of each class (a random choice drawn with ``seed``, the same
            on every run); default all. The paper trains on 15 to 60 and tests on up to 50 per class.
        splits: how many random train / test splits the score is averaged over.
        grid: each feature map is averaged over ``grid x grid`` cells (1: one number per channel).
        l2: the L2 penalty; default chosen per split by cross-validation on the training pictures (3 folds, or
            2 with 2 training pictures per class; with one, which leaves nothing to cross-validate, 0.01).
        seed: the seed of the splits and of the cross-validation folds.
        batch_size: pictures per forward pass.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``, when ``model`` is a name.
        progress: ``progress(done, total, what)`` over the pictures (``what``: the last one read), then the layers
            (``"fitting at LAYER"``); ``"bar"``; or None.

    Returns:
        The :class:`DiscriminationResult`.

    Raises:
        LabelError: pictures in no class folder, fewer than two classes, a class too small to train and test.
        AnalysisError: a bad option (``linear``, ``train``, ``splits``, ``grid``, ``l2``).
        LayerNotFoundError: an unknown layer.

    Example:
        >>> result = dv.discrimination("pictures/", model="vgg16", linear="svm")  # doctest: +SKIP
        >>> print(result.table())  # doctest: +SKIP
    """
    import torch

    if linear not in LINEAR:
        raise AnalysisError(f"unknown linear model {linear!r}; choose softmax or svm")
    _positive("splits", splits)
    _positive("grid", grid)
    _positive("batch size", batch_size)
    if train is not None:
        _positive("train", train)
    if l2 is not None and (isinstance(l2, bool) or not isinstance(l2, int | float) or not l2 > 0 or l2 == math.inf):
        raise AnalysisError(f"the L2 penalty must be a positive number, got {l2!r} (leave it out to cross-validate)")
    source = image_source(data)
    given = labels if labels is None or isinstance(labels, str | os.PathLike | Mapping) else list(labels)
    names = labels_of(source, data, given)
    classes = tuple(sorted(set(names)))
    if len(classes) < 2:
        raise LabelError(
            f"all {len(names)} pictures are of one class ({classes[0]!r}); give pictures of two classes or more, "
            "one folder per class"
        )
    index = {name: i for i, name in enumerate(classes)}
    y = torch.tensor([index[name] for name in names])
    if per_class is not None:
        _positive("per class", per_class)
        drawn = shuffled_classes(y, len(classes), torch.Generator().manual_seed(seed))
        keep = sorted(i for members in drawn for i in members[:per_class].tolist())
        source, y = source.subset(keep), y[keep]
    counts = tuple(int((y == c).sum()) for c in range(len(classes)))
    smallest = min(counts)
    if smallest < 2:
        raise LabelError(
            f"class {classes[counts.index(smallest)]!r} has one picture; each class needs two or more, one to train "
            "and one to test"
        )
    training = max(1, smallest // 2) if train is None else train
    if training >= smallest:
        raise LabelError(
            f"class {classes[counts.index(smallest)]!r} has {smallest} pictures: --train {training} leaves none to "
            f"test; give --train {smallest - 1} or fewer, or more pictures"
        )

    current = session(model, device=device)
    if source.paths is not None:
        current.require_preprocessing("discrimination reads picture files and needs", error=AnalysisError)
    first = source.prepare(0, current.preprocess)[None]
    chosen = choose_layers(current.net, layers, first)
    steps = len(source) + len(chosen)
    kept: dict[str, list[Tensor]] = {layer: [] for layer in chosen}
    with reporting(progress, "discrimination") as report:
        report(0, steps, "starting")
        with torch.inference_mode(), evaluating(current.net.model):
            for start in range(0, len(source), batch_size):
                stop = min(start + batch_size, len(source))
                batch = torch.stack([source.prepare(i, current.preprocess) for i in range(start, stop)])
                for layer, value in current.net.activations(batch, chosen).items():
                    kept[layer].append(_pooled(value, grid).float().cpu())
                report(stop, steps, source.names[stop - 1])

        accuracies: dict[str, Tensor] = {}
        penalties: dict[str, tuple[float, ...]] = {}
        features: dict[str, int] = {}
        for done, layer in enumerate(chosen, start=1):
            x = torch.cat(kept.pop(layer))
            features[layer] = int(x.shape[1])
            accuracies[layer], penalties[layer] = _scores(x, y, len(classes), training, splits, linear, l2, seed)
            report(len(source) + done, steps, f"fitting at {layer}")
    return DiscriminationResult(
        model=current.name,
        data=source.description,
        classes=classes,
        counts=counts,
        layers=tuple(chosen),
        features=features,
        linear=linear,
        train=training,
        grid=grid,
        seed=seed,
        accuracies=accuracies,
        penalties=penalties,
    )


def _scores(
    x: Tensor, y: Tensor, classes: int, train: int, splits: int, linear: str, l2: float | None, seed: int
) -> tuple[Tensor, tuple[float, ...]]:
    """Each split's class accuracies at one layer, and the penalty used in each (the same splits at every layer)."""
    import torch

    rows, used = [], []
    for split in range(splits):
        generator = torch.Generator().manual_seed(seed * 1_000_003 + split)
        learn = torch.zeros(len(y), dtype=torch.bool)
        for members in shuffled_classes(y, classes, generator):
            learn[members[:train]] = True
        penalty = l2
        if penalty is None:
            folds = min(3, train)
            penalty = choose_penalty(x[learn], y[learn], classes, linear, folds, generator) if folds > 1 else 1e-2
        fitted, tested = standardise(x[learn], x[~learn])
        weight, bias = fit_linear(fitted, y[learn], classes, linear=linear, l2=penalty)
        rows.append(class_accuracies(tested @ weight + bias, y[~learn], classes))
        used.append(float(penalty))
    return torch.stack(rows), tuple(used)


def _pooled(value: Any, grid: int) -> Tensor:
    """One row of features per picture: a map averaged over ``grid x grid`` cells, anything else flattened."""
    import torch

    if not isinstance(value, torch.Tensor):
        raise AnalysisError("a chosen layer gives no single tensor; choose a layer that gives a feature map")
    if value.dim() == 4:
        value = torch.nn.functional.adaptive_avg_pool2d(value, grid)
    return value.flatten(1)


def _positive(what: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise AnalysisError(f"{what} must be a positive whole number, got {value!r}")


__all__ = [
    "DiscriminationResult",
    "LabelError",
    "discrimination",
    "labels_of",
    "read_labels",
]
