"""An invariance sweep against a plain batched forward pass over the same transformed images.

The sweep (``dv.invariance``) transforms each photo at every value of the three transformations, runs all
of them (and the originals) through the network in batches, keeps two layers and the class scores, and
measures distances and probabilities. The baseline makes the same transformed images and runs the plain
model on them in batches of the same size (``model(batch)`` under ``torch.inference_mode``). Both are timed
in one run, alternating, and compared per transformed image.

Target: the sweep costs at most about one forward pass per transformed image (ratio close to 1).

Usage: ``python benchmarks/invariance.py [--model squeezenet1_1] [--steps 13] [--batch-size 16] [--repeats 3]``
The offline SqueezeNet weights are fetched into the deconvviz cache on first use.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

import deconvviz as dv
from deconvviz.analysis.invariance import DEFAULT_RANGES, sweep, transform

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def plain_forward(model: dv.LoadedModel, inputs: list[torch.Tensor], steps: int, batch_size: int) -> float:
    """Seconds to make the transformed images and run the plain model over them in batches."""
    start = time.perf_counter()
    batches = []
    for x in inputs:
        batches.append(x)
        for name, (low, high) in DEFAULT_RANGES.items():
            batches.extend(transform(x, name, sweep(low, high, steps, name)).split(1))
    with torch.inference_mode():
        for i in range(0, len(batches), batch_size):
            model.module(torch.cat(batches[i : i + batch_size]))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="squeezenet1_1")
    parser.add_argument("--steps", type=int, default=13)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    model = dv.load_model(args.model, device=args.device)
    photos = [EXAMPLES / "cat.jpg", EXAMPLES / "coffee.jpg"]
    inputs = [model.preprocess(p) for p in photos]
    count = len(photos) * (1 + 3 * args.steps)
    dv.invariance(photos[:1], model, steps=2, batch_size=args.batch_size)  # warm-up: trace, allocator
    swept, plain = [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        dv.invariance(photos, model, steps=args.steps, batch_size=args.batch_size, examples=0)
        swept.append(time.perf_counter() - start)
        plain.append(plain_forward(model, inputs, args.steps, args.batch_size))
    s, p = statistics.median(swept), statistics.median(plain)
    print(f"{args.model}, {count} images ({len(photos)} photos x (1 + 3 x {args.steps})), batch {args.batch_size}")
    print(f"invariance sweep:      {s:7.2f} s  ({1000 * s / count:6.1f} ms per image)")
    print(f"plain forward passes:  {p:7.2f} s  ({1000 * p / count:6.1f} ms per image)")
    print(f"ratio sweep / forward: {s / p:.2f}")


if __name__ == "__main__":
    main()
