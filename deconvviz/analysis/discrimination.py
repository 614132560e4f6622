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
from typing import TYPE_CHECKING, Any, ClassVar, overload

from deconvviz.analysis.base import AnalysisError, AnalysisResult, figure_bytes, text_table
from deconvviz.analysis.labels import LabelError, Labels, labels_of
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
from deconvviz.io.images import ImageError
from deconvviz.io.sources import image_source
from deconvviz.models.session import session

if TYPE_CHECKING:  # pragma: no cover
    from torch import Tensor

    from deconvviz.io.sources import ImageSource


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
        skipped: ``(picture, error)`` for each picture that could not be read (left out of the classes).
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
    skipped: tuple[tuple[str, str], ...] = ()

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
        """The score at ``layer``, averaged over the splits: a fraction (0.8), which :meth:`table` prints as 80.0 %."""
        return float(self.scores(layer).mean())

    def std(self, layer: str) -> float:
        """The standard deviation of the score over the splits, a fraction as :meth:`mean` is."""
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
                _spread(self, layer),
                _penalty(self.penalties[layer]),
            ]
            for layer in self.layers
        ]
        chance = f"chance {100 * self.chance:.1f} %: {self.setting}"
        return "\n".join([*text_table(head, body), chance, *_one_split(self), *_left_out(self.skipped)])

    def summary(self) -> str:
        """One line: the best layer and its score against chance."""
        return (
            f"{self.best} separates the {len(self.classes)} classes best: {100 * self.mean(self.best):.1f} % "
            f"(chance {100 * self.chance:.1f} %)"
        )

    def to_csv(self) -> str:
        """Every class's accuracy: ``layer,split,class,accuracy,l2``."""
        return _csv(["layer", "split", "class", "accuracy", "l2"], self._rows())

    def _rows(self) -> list[list[Any]]:
        """The CSV's rows: one per layer, split and class."""
        return [
            [layer, split, name, repr(value), repr(self.penalties[layer][split])]
            for layer in self.layers
            for split, row in enumerate(self.accuracies[layer].tolist())
            for name, value in zip(self.classes, row, strict=True)
        ]

    def _files(self) -> dict[str, bytes]:
        return _folder(self)

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
            "skipped": [{"picture": name, "error": error} for name, error in self.skipped],
            "files": {"table": "table.txt", "csv": "accuracy.csv", "figure": "discrimination.png"},
        }


def _penalty(values: Sequence[float]) -> str:
    """The penalty, or the range of those the splits chose."""
    low, high = min(values), max(values)
    return f"{low:g}" if low == high else f"{low:g}-{high:g}"


@dataclass(frozen=True)
class DiscriminationCurve(AnalysisResult):
    """The paper's Fig. 9 for one model: held-out accuracy per layer as the training pictures per class grow.

    In each split every size is tested on the same pictures (each class's pictures beyond the largest size),
    and a smaller size trains on the first of the larger size's training pictures, so that the sizes differ in
    the training pictures alone.

    Attributes:
        results: one :class:`DiscriminationResult` per training size, smallest first.
    """

    kind: ClassVar[str] = "discrimination-curve"

    results: tuple[DiscriminationResult, ...]

    @property
    def sizes(self) -> tuple[int, ...]:
        """The training pictures per class, smallest first."""
        return tuple(result.train for result in self.results)

    @property
    def first(self) -> DiscriminationResult:
        """The result of the smallest size (model, data, classes, layers and options are the same in all)."""
        return self.results[0]

    @property
    def layers(self) -> tuple[str, ...]:
        """The layers, shallow to deep as given."""
        return self.first.layers

    @property
    def chance(self) -> float:
        """The accuracy of guessing: one over the number of classes."""
        return self.first.chance

    @property
    def tested(self) -> tuple[int, ...]:
        """The test pictures of each class in each split (the same for every size)."""
        return tuple(count - self.sizes[-1] for count in self.first.counts)

    @property
    def setting(self) -> str:
        """``10 classes, each size tested on the same 10-15 pictures per class``: what the score is over."""
        low, high = min(self.tested), max(self.tested)
        many = f"{low}" if low == high else f"{low}-{high}"
        return f"{len(self.first.classes)} classes, every size tested on the same {many} pictures per class"

    def result(self, train: int) -> DiscriminationResult:
        """The result with ``train`` training pictures per class.

        Raises:
            AnalysisError: a size that was not run.
        """
        for result in self.results:
            if result.train == train:
                return result
        raise AnalysisError(f"no result with {train} training pictures per class; the sizes are {_listed(self.sizes)}")

    def table(self) -> str:
        """One row per layer: features, then the accuracy mean ± std over the splits (in %) at each size."""
        name = "Softmax" if self.first.linear == "softmax" else "SVM"
        head = ["layer", "features", *(str(n) for n in self.sizes)]
        body = [
            [
                layer,
                str(self.first.features[layer]),
                *(_spread(r, layer) for r in self.results),
            ]
            for layer in self.layers
        ]
        return "\n".join(
            [
                f"{name} accuracy % by training pictures per class",
                *text_table(head, body),
                f"chance {100 * self.chance:.1f} %: {self.setting}",
                *_one_split(self.first),
                *_left_out(self.first.skipped),
            ]
        )

    def summary(self) -> str:
        """One line: the best layer and its score at the smallest and the largest size, against chance."""
        low, high = self.results[0], self.results[-1]
        return (
            f"{low.train} training picture{'s' if low.train != 1 else ''} per class: {low.best} "
            f"{100 * low.mean(low.best):.1f} %; {high.train}: {high.best} {100 * high.mean(high.best):.1f} % "
            f"(chance {100 * self.chance:.1f} %)"
        )

    def to_csv(self) -> str:
        """Every class's accuracy: ``train,layer,split,class,accuracy,l2``."""
        head = ["train", "layer", "split", "class", "accuracy", "l2"]
        return _csv(head, [[result.train, *row] for result in self.results for row in result._rows()])

    def _files(self) -> dict[str, bytes]:
        return _folder(self)

    def _manifest(self) -> dict[str, Any]:
        first = self.first._manifest()
        return {
            **{key: first[key] for key in ("model", "data", "classes", "linear", "splits", "grid", "seed", "chance")},
            "train_per_class": list(self.sizes),
            "tested_per_class": dict(zip(self.first.classes, self.tested, strict=True)),
            "layers": {
                layer: {
                    "features": self.first.features[layer],
                    "mean": [r.mean(layer) for r in self.results],
                    "std": [r.std(layer) for r in self.results],
                    "l2": [list(r.penalties[layer]) for r in self.results],
                }
                for layer in self.layers
            },
            "best": {str(r.train): r.best for r in self.results},
            "skipped": first["skipped"],
            "files": first["files"],
        }


def _csv(head: list[str], rows: list[list[Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(head)
    writer.writerows(rows)
    return buffer.getvalue()


def _folder(result: DiscriminationResult | DiscriminationCurve) -> dict[str, bytes]:
    """The result folder's files but the manifest: the table, the accuracies, the figure."""
    return {
        "table.txt": (result.table() + "\n").encode("utf-8"),
        "accuracy.csv": result.to_csv().encode("utf-8"),
        "discrimination.png": figure_bytes(result.figure()[0]),
    }


def _spread(result: DiscriminationResult, layer: str) -> str:
    """A layer's score in %, ``mean ± std`` over the splits (the mean alone for one split, which has no spread)."""
    mean = f"{100 * result.mean(layer):.1f}"
    return mean if result.splits == 1 else f"{mean} ± {100 * result.std(layer):.1f}"


def _one_split(result: DiscriminationResult) -> list[str]:
    """The table's line saying one split gives no spread (none for several)."""
    return ["one split, so no spread: --splits N (splits=N) averages N random splits"] if result.splits == 1 else []


def _left_out(skipped: Sequence[tuple[str, str]], shown: int = 3) -> list[str]:
    """The table's line on unreadable pictures (none when all were read)."""
    if not skipped:
        return []
    names = ", ".join(name for name, _ in skipped[:shown])
    more = f" and {len(skipped) - shown} more" if len(skipped) > shown else ""
    return [f"{len(skipped)} unreadable picture{'s' if len(skipped) != 1 else ''} left out: {names}{more}"]


def _listed(sizes: Sequence[int]) -> str:
    return ",".join(str(n) for n in sizes)


# ------------------------------------------------------------------------------------------- analysis


@overload
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
) -> DiscriminationResult: ...


@overload
def discrimination(
    data: Any,
    model: str | Any = "vgg16",
    *,
    layers: str | Sequence[str] | None = None,
    labels: Labels | None = None,
    linear: str = "softmax",
    train: Sequence[int],
    per_class: int | None = None,
    splits: int = 5,
    grid: int = 2,
    l2: float | None = None,
    seed: int = 0,
    batch_size: int = 16,
    device: str | None = "auto",
    progress: ProgressOption = None,
) -> DiscriminationCurve: ...


def discrimination(
    data: Any,
    model: str | Any = "vgg16",
    *,
    layers: str | Sequence[str] | None = None,
    labels: Labels | None = None,
    linear: str = "softmax",
    train: int | Sequence[int] | None = None,
    per_class: int | None = None,
    splits: int = 5,
    grid: int = 2,
    l2: float | None = None,
    seed: int = 0,
    batch_size: int = 16,
    device: str | None = "auto",
    progress: ProgressOption = None,
) -> DiscriminationResult | DiscriminationCurve:
    """How well a linear model on each layer's features tells labelled pictures apart (the paper's Table 7).

    With several training sizes (``train=[1, 5, 10]``) the result is the paper's Fig. 9 instead: how the
    accuracy at each layer grows with the training pictures per class, every size tested on the same pictures.

    Args:
        data: a folder with one sub-folder of pictures per class, a text file of picture paths (each picture's
            class: the folder it lies in), or a ``torch.utils.data.Dataset`` of ``(image, target)`` items.
        model: a model name, a loaded model, or a session.
        layers: layer aliases or node names (a list, or comma-separated); default the model's default layers.
        labels: instead of the folders: one class per picture, in the order of the pictures (sorted paths); a
            mapping from a picture's name (path relative to the folder, or file name) to its class; or a labels
            file of ``picture,class`` lines (:func:`read_labels`).
        linear: ``"softmax"`` (multinomial logistic regression) or ``"svm"`` (linear SVMs, one per class).
        train: training pictures per class in each split; the rest test. Default: half the smallest class. A
            list of sizes gives a :class:`DiscriminationCurve`, each split testing every size on the pictures
            beyond the largest.
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
        The :class:`DiscriminationResult`, or with a list of sizes the :class:`DiscriminationCurve`.

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
    sizes = _train_sizes(train)
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
        if per_class < 2:
            raise LabelError(
                "--per-class 1 (per_class=1) keeps one picture of each class, and each class needs two or more, one "
                "to train and one to test; give 2 or more"
            )
        drawn = shuffled_classes(y, len(classes), torch.Generator().manual_seed(seed))
        keep = sorted(i for members in drawn for i in members[:per_class].tolist())
        source, y = source.subset(keep), y[keep]
    counts = tuple(int((y == c).sum()) for c in range(len(classes)))
    asked = sizes
    sizes = _checked_sizes(classes, counts, asked)

    current = session(model, device=device)
    if source.paths is not None:
        current.require_preprocessing("discrimination reads picture files and needs", error=AnalysisError)
    chosen = choose_layers(current.net, layers, _first_readable(source, current.preprocess))
    steps = len(source) + len(chosen)
    kept: dict[str, list[Tensor]] = {layer: [] for layer in chosen}
    readable: list[int] = []
    skipped: list[tuple[str, str]] = []
    with reporting(progress, "discrimination") as report:
        report(0, steps, "starting")
        with torch.inference_mode(), evaluating(current.net.model):
            for start in range(0, len(source), batch_size):
                stop = min(start + batch_size, len(source))
                pictures = []
                for i in range(start, stop):
                    try:
                        pictures.append(source.prepare(i, current.preprocess))
                    except ImageError as error:  # skipped and listed, as the report does
                        skipped.append((source.names[i], str(error)))
                    else:
                        readable.append(i)
                if pictures:
                    for layer, value in current.net.activations(torch.stack(pictures), chosen).items():
                        kept[layer].append(_pooled(value, grid).float().cpu())
                report(stop, steps, source.names[stop - 1])
        if skipped:
            y = y[readable]
            counts = tuple(int((y == c).sum()) for c in range(len(classes)))
            sizes = _checked_sizes(classes, counts, asked, len(skipped))

        fits: dict[int, dict[str, tuple[Tensor, tuple[float, ...]]]] = {n: {} for n in sizes}
        features: dict[str, int] = {}
        for done, layer in enumerate(chosen, start=1):
            x = torch.cat(kept.pop(layer))
            features[layer] = int(x.shape[1])
            for n, scored in _scores(x, y, len(classes), sizes, splits, linear, l2, seed).items():
                fits[n][layer] = scored
            report(len(source) + done, steps, f"fitting at {layer}")
    results = tuple(
        DiscriminationResult(
            model=current.name,
            data=source.description,
            classes=classes,
            counts=counts,
            layers=tuple(chosen),
            features=features,
            linear=linear,
            train=n,
            grid=grid,
            seed=seed,
            accuracies={layer: accuracy for layer, (accuracy, _) in fits[n].items()},
            penalties={layer: used for layer, (_, used) in fits[n].items()},
            skipped=tuple(skipped),
        )
        for n in sizes
    )
    return results[0] if train is None or isinstance(train, int) else DiscriminationCurve(results)


def _checked_sizes(
    classes: Sequence[str], counts: Sequence[int], sizes: tuple[int, ...], skipped: int = 0
) -> tuple[int, ...]:
    """The training sizes (default: half the smallest class), checked to leave every class pictures to test.

    Raises:
        LabelError: a class of fewer than two pictures, or a size that leaves one nothing to test.
    """
    smallest = min(counts)
    name = classes[counts.index(smallest)]
    why = f" once {skipped} unreadable picture{'s' if skipped != 1 else ''} skipped" if skipped else ""
    if smallest < 2:
        has = "one picture" if smallest == 1 else f"{smallest} pictures"
        raise LabelError(f"class {name!r} has {has}{why}; each class needs two or more, one to train and one to test")
    sizes = sizes or (max(1, smallest // 2),)
    if sizes[-1] >= smallest:
        beyond = "" if len(sizes) == 1 else f" beyond {sizes[-1]}"
        raise LabelError(
            f"class {name!r} has {smallest} pictures{why}: --train {_listed(sizes)} leaves none to test{beyond}; "
            f"give --train {smallest - 1} or fewer, or more pictures"
        )
    return sizes


def _first_readable(source: ImageSource, preprocess: Any) -> Tensor:
    """The first picture that reads, as a ``(1, C, H, W)`` input (to check the layers on).

    Raises:
        ImageError: no picture reads (the last one's error).
    """
    for i in range(len(source)):
        try:
            return source.prepare(i, preprocess)[None]
        except ImageError as error:
            if i == len(source) - 1:
                raise ImageError(f"none of the {len(source)} pictures reads; the last: {error}") from error
    raise ImageError("no pictures")  # pragma: no cover - a source is never empty here


def _train_sizes(train: int | Sequence[int] | None) -> tuple[int, ...]:
    """The training sizes, smallest first, each once (empty: the default)."""
    if train is None:
        return ()
    if isinstance(train, str) or not isinstance(train, Sequence):
        _positive("train", train)
        return (int(train),)
    if not train:
        raise AnalysisError("train must name one size or more, e.g. [1, 5, 10]")
    for value in train:
        _positive("each training size", value)
    return tuple(sorted(set(train)))


def _scores(
    x: Tensor,
    y: Tensor,
    classes: int,
    sizes: Sequence[int],
    splits: int,
    linear: str,
    l2: float | None,
    seed: int,
) -> dict[int, tuple[Tensor, tuple[float, ...]]]:
    """Each size's class accuracies per split at one layer, and the penalty used in each.

    The splits are the same at every layer; within a split every size trains on the first of each class's
    shuffled pictures and tests on those beyond the largest size.
    """
    import torch

    rows: dict[int, list[Tensor]] = {n: [] for n in sizes}
    used: dict[int, list[float]] = {n: [] for n in sizes}
    for split in range(splits):
        generator = torch.Generator().manual_seed(seed * 1_000_003 + split)
        order = shuffled_classes(y, classes, generator)
        drawn = generator.get_state()  # each size's folds start from the same state
        test = torch.zeros(len(y), dtype=torch.bool)
        for members in order:
            test[members[sizes[-1] :]] = True
        for n in sizes:
            learn = torch.zeros(len(y), dtype=torch.bool)
            for members in order:
                learn[members[:n]] = True
            penalty = l2
            if penalty is None:
                folds = min(3, n)
                generator.set_state(drawn)
                penalty = choose_penalty(x[learn], y[learn], classes, linear, folds, generator) if folds > 1 else 1e-2
            fitted, tested = standardise(x[learn], x[test])
            weight, bias = fit_linear(fitted, y[learn], classes, linear=linear, l2=penalty)
            rows[n].append(class_accuracies(tested @ weight + bias, y[test], classes))
            used[n].append(float(penalty))
    return {n: (torch.stack(rows[n]), tuple(used[n])) for n in sizes}


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
    "DiscriminationCurve",
    "DiscriminationResult",
    "discrimination",
]
