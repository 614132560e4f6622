"""The discrimination fits: the NumPy L-BFGS on the pictures' span against torch.optim.LBFGS on the raw weights.

Synthetic features (non-negative, as after a ReLU; the classes' means apart), one train / test split, the penalty
chosen by 3-fold cross-validation among the six of ``PENALTIES`` and the final fit, side by side in one run:

- **fits**: :func:`deconvviz.analysis.discrimination._scores` as the analysis runs it (NumPy L-BFGS; with at
  least twice as many features as pictures, on the pictures' span from one thin SVD per fold; warm starts from
  the larger penalty; cross-validation fits to 1e-5, the final fit to 1e-7);
- **torch**: the same folds, penalties, standardisation and final fit, each a ``torch.optim.LBFGS`` (strong Wolfe
  line search, history 20) on the ``(D, classes)`` weights from zeros, to the same tolerances, at most 1,000
  iterations each.

Both pick a penalty and score the test pictures; the two scores are printed side by side (they agree but for
test pictures that sit on a decision boundary). Goal: torch / fits >= 1.5 on the small problem (10 classes, 10
training pictures each, the size of the digits example) and on the large one (Caltech-101's size: 100 classes,
30 training pictures each; timed against torch only with ``--torch-large``, which takes a while).

Measured on 2 CPU cores, 2048 features: small 0.34-0.40 s against 0.62-0.98 s (1.8-2.5x over four runs),
large 4.5 s against 8.4 s (1.9x), with the same accuracies.

Usage: ``python benchmarks/discrimination.py [--features 2048] [--torch-large]``
"""

from __future__ import annotations

import argparse
import time

import torch

from deconvviz.analysis import discrimination
from deconvviz.analysis import linear as d


def problem(classes: int, per_class: int, features: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    y = torch.arange(classes).repeat_interleave(per_class)
    means = torch.randn(classes, features, generator=generator)
    return (0.12 * means[y] + torch.randn(len(y), features, generator=generator)).relu(), y


def torch_fit(x: torch.Tensor, y: torch.Tensor, classes: int, l2: float, tolerance: float) -> tuple:
    weight = torch.zeros(x.shape[1], classes, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
    signs = torch.where(torch.nn.functional.one_hot(y, classes) > 0, 1.0, -1.0).double()
    optimizer = torch.optim.LBFGS(
        [weight, bias],
        max_iter=1000,
        history_size=20,
        tolerance_grad=tolerance,
        tolerance_change=1e-14,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        value = d.objective(x, y, signs, weight, bias, "softmax", l2)
        value.backward()
        return value

    optimizer.step(closure)
    return weight.detach(), bias.detach()


def torch_scores(x: torch.Tensor, y: torch.Tensor, classes: int, train: int, seed: int = 0) -> float:
    """What ``_scores`` does for one split, with torch.optim.LBFGS fits (same splits, folds, penalties)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003)
    learn = torch.zeros(len(y), dtype=torch.bool)
    for c in range(classes):
        members = (y == c).nonzero().flatten()
        learn[members[torch.randperm(len(members), generator=generator)[:train]]] = True
    xs, ys = x[learn], y[learn]
    fold = torch.empty(len(ys), dtype=torch.long)
    for c in range(classes):
        members = (ys == c).nonzero().flatten()
        order = members[torch.randperm(len(members), generator=generator)]
        fold[order] = torch.arange(len(order)) % 3
    best, best_score = d.PENALTIES[-1], -1.0
    for l2 in reversed(d.PENALTIES):
        score = 0.0
        for k in range(3):
            held = fold == k
            fitted, tested = d.standardise(xs[~held], xs[held])
            weight, bias = torch_fit(fitted, ys[~held], classes, l2, d.CHOOSING)
            score += float(d.class_accuracies(tested @ weight + bias, ys[held], classes).mean()) / 3
        if score > best_score + 1e-12:
            best, best_score = l2, score
    fitted, tested = d.standardise(xs, x[~learn])
    weight, bias = torch_fit(fitted, ys, classes, best, 1e-7)
    return float(d.class_accuracies(tested @ weight + bias, y[~learn], classes).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--features", type=int, default=2048)
    parser.add_argument("--torch-large", action="store_true", help="also time torch on the large problem")
    args = parser.parse_args()
    print(f"{args.features} features, one split, penalty cross-validated (3 folds x 6 penalties) + the final fit")
    print(f"{'problem':<34}{'fits s':>9}{'torch s':>9}{'ratio':>8}  accuracy (fits / torch)")
    for classes, train, test in ((10, 10, 10), (100, 30, 10)):
        x, y = problem(classes, train + test, args.features)
        started = time.perf_counter()
        ours, _ = discrimination._scores(x, y, classes, train, 1, "softmax", None, 0)
        fits = time.perf_counter() - started
        name = f"{classes} classes x {train} training pictures"
        if classes <= 10 or args.torch_large:
            started = time.perf_counter()
            theirs = torch_scores(x, y, classes, train)
            reference = time.perf_counter() - started
            print(
                f"{name:<34}{fits:>9.2f}{reference:>9.2f}{reference / fits:>8.1f}"
                f"  {100 * float(ours.mean()):.1f} / {100 * theirs:.1f} %"
            )
        else:
            print(f"{name:<34}{fits:>9.2f}{'-':>9}{'-':>8}  {100 * float(ours.mean()):.1f} %")


if __name__ == "__main__":
    main()
