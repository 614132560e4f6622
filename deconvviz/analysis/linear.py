"""Linear models on features, fitted to their one optimum: a multinomial softmax or one SVM per class.

What :mod:`deconvviz.analysis.discrimination` trains on each layer's features (the paper's Table 7): the loss
(:func:`objective`), the fit (:func:`fit_linear`, a NumPy L-BFGS in float64, on the pictures' span where there
are many more features than pictures), the score (:func:`class_accuracies`), the standardisation and the
penalty's cross-validation (:func:`choose_penalty`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from deconvviz.analysis.base import AnalysisError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    from torch import Tensor

LINEAR = ("softmax", "svm")
"""The linear models: a multinomial softmax, or one squared-hinge SVM per class against the rest."""

PENALTIES = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)
"""The L2 penalties tried by cross-validation (on the mean loss, with standardised features)."""


CHOOSING = 1e-5
"""The tolerance of the cross-validation's fits: their accuracies, not their weights, are what is used."""


def fit_linear(
    x: Tensor,
    y: Tensor,
    classes: int,
    *,
    linear: str = "softmax",
    l2: float = 1e-2,
    iterations: int = 1000,
    tolerance: float = 1e-7,
    start: tuple[Tensor, Tensor] | None = None,
    decomposition: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> tuple[Tensor, Tensor]:
    """Fit a linear model ``scores = x @ weight + bias`` by L-BFGS, in float64.

    The loss is the mean over pictures of the softmax cross-entropy (``"softmax"``) or of the squared hinge
    ``sum_c max(0, 1 - t_c * score_c) ** 2`` with ``t_c = +1`` for the picture's class and ``-1`` for the others
    (``"svm"``, one SVM per class against the rest), plus ``l2 / 2 * ||weight||^2`` (the bias is not penalised);
    :func:`objective` computes it. Both are convex and, with ``l2 > 0``, strictly so in the weights: the fit is
    that one optimum.

    Args:
        x: ``(N, D)`` features.
        y: ``(N,)`` class indices in ``[0, classes)``.
        classes: how many classes.
        linear: ``"softmax"`` or ``"svm"``.
        l2: the penalty (> 0).
        iterations: the most L-BFGS iterations.
        tolerance: the fit ends where no derivative of the loss exceeds this (or after ``iterations``); at the
            default, far below what moves a class score past another.
        start: ``(weight, bias)`` to start from (a fit with a nearby penalty converges in fewer steps); zeros
            by default.
        decomposition: ``x``'s thin SVD ``(u, s, vh)`` in float64 NumPy (:func:`decompose`), when several fits
            share ``x``.

    Returns:
        ``(weight (D, classes), bias (classes,))`` in float64, on ``x``'s device.
    """
    import numpy as np
    import torch

    if linear not in LINEAR:
        raise AnalysisError(f"unknown linear model {linear!r}; choose one of {', '.join(LINEAR)}")
    data = x.detach().double().cpu().numpy()
    labels = y.detach().cpu().numpy()
    n = data.shape[0]
    # With more features than pictures the fit runs on other coordinates, with the same optimum. The optimum
    # lies in the span of the pictures (the loss's gradient in the weights is x.T @ g, the penalty's
    # l2 * weight), so with x = U S V^T (thin SVD) weight = V @ z: (N, classes) unknowns rather than
    # (D, classes), the same penalty (V's columns are orthonormal) and the same steps. With fewer than twice as
    # many features as pictures, the SVD would cost more than it saves (:func:`decompose`).
    reduced = decomposition if decomposition is not None else decompose(x)
    if reduced is None:
        vh, inputs = None, data
    else:
        u, singular, vh = reduced
        inputs = u * singular  # = data @ vh.T
    rank = inputs.shape[1]
    signs = -np.ones((n, classes))
    signs[np.arange(n), labels] = 1.0

    def loss(flat: np.ndarray) -> tuple[float, np.ndarray]:
        z, bias = flat[: rank * classes].reshape(rank, classes), flat[rank * classes :]
        scores = inputs @ z + bias
        if linear == "softmax":
            top = scores.max(1, keepdims=True)
            exp = np.exp(scores - top)
            total = exp.sum(1, keepdims=True)
            value = float((top[:, 0] + np.log(total[:, 0]) - scores[np.arange(n), labels]).mean())
            grad = exp / total
            grad[np.arange(n), labels] -= 1.0
            grad /= n
        else:
            margin = np.maximum(0.0, 1.0 - signs * scores)
            value = float((margin**2).sum() / n)
            grad = -2.0 * margin * signs / n
        value += 0.5 * l2 * float((z * z).sum())
        return value, np.concatenate([(inputs.T @ grad + l2 * z).ravel(), grad.sum(0)])

    initial = np.zeros(rank * classes + classes)
    if start is not None:
        weight0, bias0 = (t.detach().double().cpu().numpy() for t in start)
        initial = np.concatenate([(weight0 if vh is None else vh @ weight0).ravel(), bias0])
    found = minimise(loss, initial, iterations=iterations, tolerance=tolerance)
    weight = found[: rank * classes].reshape(rank, classes)
    if vh is not None:
        weight = vh.T @ weight
    return torch.from_numpy(weight).to(x.device), torch.from_numpy(found[rank * classes :].copy()).to(x.device)


def decompose(x: Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """The thin SVD ``(u, s, vh)`` of ``x`` in float64 NumPy, on which :func:`fit_linear` fits.

    None where ``x`` has fewer than twice as many features (columns) as pictures (rows): the SVD would cost more
    than the smaller problem saves, and the features are fitted on as they are.
    """
    import numpy as np

    if x.shape[1] < 2 * x.shape[0]:
        return None
    u, singular, vh = np.linalg.svd(x.detach().double().cpu().numpy(), full_matrices=False)
    return u, singular, vh


def minimise(
    loss: Callable[[np.ndarray], tuple[float, np.ndarray]],
    start: np.ndarray,
    *,
    iterations: int,
    tolerance: float,
    history: int = 10,
) -> np.ndarray:
    """Minimise a smooth convex ``loss`` (which returns its value and gradient) by L-BFGS with an Armijo search.

    NumPy rather than :class:`torch.optim.LBFGS`: the problems are small (a few thousand unknowns), where each
    step's cost is the bookkeeping around the arithmetic, several times less in NumPy.

    Returns:
        The point where no derivative exceeds ``tolerance``, where a step no longer lowers the loss, or the last
        of ``iterations``.
    """
    import numpy as np

    point = start.astype(np.float64, copy=True)
    value, grad = loss(point)
    steps: list[tuple[np.ndarray, np.ndarray, float]] = []
    for _ in range(iterations):
        if np.abs(grad).max() <= tolerance:
            break
        direction = -grad
        alphas = []
        for s, t, rho in reversed(steps):
            alpha = rho * float(s @ direction)
            direction = direction - alpha * t
            alphas.append(alpha)
        if steps:
            s, t, _ = steps[-1]
            direction = direction * (float(s @ t) / float(t @ t))
            for (s, t, rho), alpha in zip(steps, reversed(alphas), strict=True):
                direction = direction + s * (alpha - rho * float(t @ direction))
        slope = float(grad @ direction)
        if slope >= 0:  # not a descent direction: start the memory again
            steps.clear()
            direction, slope = -grad, -float(grad @ grad)
        length = 1.0 if steps else min(1.0, 1.0 / float(np.abs(grad).sum()))
        steepest = float(np.abs(grad).max())
        while True:
            trial = point + length * direction
            trial_value, trial_grad = loss(trial)
            if trial_value <= value + 1e-4 * length * slope:
                break
            # Near the optimum the loss changes by less than its rounding: a step that keeps the value (to
            # rounding) and flattens the gradient is progress all the same.
            level = trial_value <= value + 1e-14 * max(1.0, abs(value))
            if (level and float(np.abs(trial_grad).max()) < steepest) or length < 1e-20:
                break
            length *= 0.5
        if not (trial_value < value or float(np.abs(trial_grad).max()) < steepest):
            break
        change = trial - point
        turn = trial_grad - grad
        curvature = float(change @ turn)
        if curvature > 1e-12 * float(turn @ turn):
            steps.append((change, turn, 1.0 / curvature))
            del steps[:-history]
        point, value, grad = trial, trial_value, trial_grad
    return point


def objective(x: Tensor, y: Tensor, signs: Tensor, weight: Tensor, bias: Tensor, linear: str, l2: float) -> Tensor:
    """The penalised mean loss that :func:`fit_linear` minimises (``signs``: +1 at each picture's class, else -1)."""
    import torch

    scores = x @ weight + bias
    if linear == "softmax":
        data = torch.nn.functional.cross_entropy(scores, y)
    else:
        data = torch.relu(1.0 - signs * scores).square().sum(1).mean()
    return data + 0.5 * l2 * weight.square().sum()


def class_accuracies(scores: Tensor, y: Tensor, classes: int) -> Tensor:
    """Each class's accuracy: the share of its pictures whose highest score is their class (float64)."""
    import torch

    hits = (scores.argmax(1) == y).double()
    total = torch.zeros(classes, dtype=torch.float64).index_add_(0, y.cpu(), torch.ones_like(hits).cpu())
    right = torch.zeros(classes, dtype=torch.float64).index_add_(0, y.cpu(), hits.cpu())
    return right / total.clamp(min=1)


def standardise(train: Tensor, *others: Tensor) -> list[Tensor]:
    """``train`` and ``others`` in float64, less the training mean, over the training deviation (1 where it is 0)."""
    train = train.double()
    mean = train.mean(0)
    std = train.std(0, correction=0)
    std = std.where(std > 0, std.new_ones(()))
    return [(t.double() - mean) / std for t in (train, *others)]


def shuffled_classes(y: Tensor, classes: int, generator: Any) -> list[Tensor]:
    """Each class's members (indices into ``y``, on the CPU) in a random order drawn with ``generator``.

    Classes in index order: the one draw behind the splits, the folds and a choice of pictures per class.
    """
    import torch

    shuffled = []
    for c in range(classes):
        members = (y == c).nonzero().flatten().cpu()
        shuffled.append(members[torch.randperm(len(members), generator=generator)])
    return shuffled


def choose_penalty(x: Tensor, y: Tensor, classes: int, linear: str, folds: int, generator: Any) -> float:
    """The penalty of :data:`PENALTIES` with the best mean class accuracy over ``folds``-fold cross-validation.

    Folds are drawn within each class; ties go to the larger penalty (the simpler model). The penalties are
    tried from the largest down, each fit starting from the one before on the same fold, and fitted to
    :data:`CHOOSING`.
    """
    import torch

    fold = torch.empty(len(y), dtype=torch.long)
    for order in shuffled_classes(y, classes, generator):
        fold[order] = torch.arange(len(order)) % folds
    best, best_score = PENALTIES[-1], -math.inf
    held = [(fold == k).to(y.device) for k in range(folds)]
    parts = [standardise(x[~h], x[h]) for h in held]
    decompositions = [decompose(train) for train, _ in parts]
    fits: list[tuple[Tensor, Tensor] | None] = [None] * folds
    for l2 in reversed(PENALTIES):
        scores = []
        for k, ((train, test), h) in enumerate(zip(parts, held, strict=True)):
            fits[k] = weight, bias = fit_linear(
                train,
                y[~h],
                classes,
                linear=linear,
                l2=l2,
                tolerance=CHOOSING,
                start=fits[k],
                decomposition=decompositions[k],
            )
            scores.append(float(class_accuracies(test @ weight + bias, y[h], classes).mean()))
        score = sum(scores) / folds
        if score > best_score + 1e-12:
            best, best_score = l2, score
    return best


__all__ = [
    "CHOOSING",
    "LINEAR",
    "PENALTIES",
    "choose_penalty",
    "class_accuracies",
    "decompose",
    "fit_linear",
    "minimise",
    "objective",
    "shuffled_classes",
    "standardise",
]
