"""One picture's projections at several layers: one shared forward pass against one pass per layer.

VGG16 (random weights: speed does not depend on them), one 224 px picture, the top 9 channels at each of its
default layers (``conv1_2 ... conv5_3``), as ``deconvviz render`` projects them. Measured side by side, the two
alternating, in one run:

- ``project_layers``: one capture pass up to ``conv5_3`` serves the choice of units and the reverse passes of
  all five layers;
- a loop of ``project`` per layer, each with its own capture pass up to its layer.

Both give the same projections (checked bit for bit here, and in the tests). Then, for the record, what else a
rendered picture costs: its five summary figures and its overview figure drawn to PNG by matplotlib.

Usage: ``python benchmarks/render.py [--size 224] [--repeats 5] [--device cpu|cuda]``
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torchvision

import deconvviz as dv
from deconvviz.analysis.choose import project, project_layers

LAYERS = ["conv1_2", "conv2_2", "conv3_3", "conv4_3", "conv5_3"]
ALIASES = {"conv1_2": "features.3", "conv2_2": "features.8", "conv3_3": "features.15", "conv4_3": "features.22"}
ALIASES["conv5_3"] = "features.29"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = torchvision.models.vgg16(weights=None).eval().to(device)
    current = dv.session(model)
    layers = [ALIASES[name] for name in LAYERS]
    x = torch.randn(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(0)).to(device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def shared() -> list[dv.Projection]:
        return project_layers(current, x, layers, top=9)

    def each() -> list[dv.Projection]:
        return [project(current, x, layer, top=9) for layer in layers]

    for one, other in zip(shared(), each(), strict=True):  # the same projections
        assert torch.equal(one.image, other.image)
        assert one.channels == other.channels
    times: dict[str, list[float]] = {"shared": [], "each": []}
    for _ in range(args.repeats):
        for name, fn in (("shared", shared), ("each", each)):
            sync()
            start = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - start)
    a, b = statistics.median(times["shared"]), statistics.median(times["each"])
    print(f"VGG16 {args.size}x{args.size}, top 9 at {', '.join(LAYERS)}, device={device}, {args.repeats} repeats")
    print(f"  one shared pass (project_layers)   {a:6.2f} s")
    print(f"  one pass per layer (project)       {b:6.2f} s   {b / a:.2f}x the shared pass")

    from deconvviz.viz.figures import figure_png, layers_figure

    projections = shared()
    start = time.perf_counter()
    for projection in projections:
        figure_png(projection.figure(title="picture")[0])
    figure_png(layers_figure(projections, title="picture")[0])
    print(f"  its six figures drawn to PNG       {time.perf_counter() - start:6.2f} s (matplotlib)")


if __name__ == "__main__":
    main()
