"""What keeping the steps of a projection costs, measured side by side in one run.

VGG16 (random weights: speed does not depend on them), one 224-pixel image, conv3_3 (``features.15``): a
projection of the strongest activation of 1 and of 16 channels, without steps and with ``steps=True`` (the
first seed's steps, copied to the CPU as the walk goes), alternating so that a load on the machine hits both.
Prints the median of each and their ratio, and the memory the steps take.

Usage: ``python benchmarks/steps.py [--repeats 5] [--layer features.15]``
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torchvision

import deconvviz as dv


def main() -> None:
    """Run the benchmark and print a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--layer", default="features.15")
    args = parser.parse_args()
    torch.manual_seed(0)
    net = dv.DeconvNet(torchvision.models.vgg16(weights=None).eval())
    x = torch.randn(1, 3, 224, 224)
    print(f"VGG16 {args.layer}, 224 px, {torch.get_num_threads()} thread(s), median of {args.repeats}")
    for count in (1, 16):
        channels = list(range(count))
        times: dict[str, list[float]] = {"plain": [], "steps": []}
        for repeat in range(args.repeats + 1):  # the first round warms up
            for name, keep in (("plain", False), ("steps", True)):
                start = time.perf_counter()
                net.project(x, args.layer, channel=channels, steps=keep)
                if repeat:
                    times[name].append(time.perf_counter() - start)
        a, b = statistics.median(times["plain"]), statistics.median(times["steps"])
        p = net.project(x, args.layer, channel=channels, steps=True)
        assert p.steps is not None
        size = sum(s.signal.numel() * s.signal.element_size() for s in p.steps) / 2**20
        print(f"{count:>2} seed(s): without steps {a:.3f} s, with steps {b:.3f} s ({b / a:.2f}x); steps {size:.0f} MiB")


if __name__ == "__main__":
    main()
