"""Incremental occlusion against naive batched re-inference (and Captum's ``Occlusion`` when installed).

VGG16 with its classifier (``weights=None``: speed does not depend on the weights), one 224 x 224 image, a
32-px occluder at stride 8 (a 28 x 28 grid: 784 positions), on the CPU. Measured side by side in one run,
with the same batch of positions per pass:

- deconvviz: the unoccluded pass once, then per batch only the region of each layer the occluders reach;
- naive: every occluded copy of the image through the whole network;
- Captum's ``Occlusion.attribute`` (if captum is installed), with the same window and stride; its grid is
  the windows that fit inside the image (25 x 25 = 625 positions), so its time is also given per position.

Both deconvviz and naive give the network's output for all 784 positions; they are compared (largest
difference relative to the largest output; float32 rounding of a different summation order stays far below
the 1e-5 required). Target: deconvviz >= 3x faster than naive. The same is reported for SqueezeNet 1.1.

Usage: ``python benchmarks/occlusion.py [--model vgg16|squeezenet1_1|both] [--positions N] [--batch 16]``
"""

from __future__ import annotations

import argparse
import importlib.util
import time

import torch
import torchvision

from deconvviz.analysis.incremental import IncrementalOcclusion, occluded_images
from deconvviz.analysis.occlusion import occluder_grid
from deconvviz.graph import trace


def bench(name: str, model: torch.nn.Module, args: argparse.Namespace) -> None:
    """Time deconvviz, naive and (if installed) Captum on one model; print the figures."""
    size = args.size
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    graph = trace(model)
    output = next(n for n in graph.nodes if n.op == "output").args[0]
    rows, cols = occluder_grid(size, size, args.occluder, args.stride)
    grid = [(i, j) for i in range(len(rows)) for j in range(len(cols))]
    if args.positions:
        grid = grid[len(grid) // 2 - args.positions // 2 :][: args.positions]  # the middle rows: no border help
    batch = args.batch

    with torch.inference_mode():
        model(x)  # warm-up
        start = time.perf_counter()
        engine = IncrementalOcclusion(graph, x, [output], rows, cols)
        ours = []
        for k in range(0, len(grid), batch):
            chunk = grid[k : k + batch]
            ours.append(engine.full(output, engine.run(chunk)[output], len(chunk)))
        t_ours = time.perf_counter() - start

        start = time.perf_counter()
        naive = []
        for k in range(0, len(grid), batch):
            chunk = grid[k : k + batch]
            naive.append(model(occluded_images(x, [(rows[i], cols[j]) for i, j in chunk])))
        t_naive = time.perf_counter() - start

    a, b = torch.cat(ours), torch.cat(naive)
    relative = float((a - b).abs().max() / b.abs().max())
    print(
        f"{name}, {size}x{size}, occluder {args.occluder} px at stride {args.stride}, {len(grid)} positions, "
        f"batch {batch}, threads {torch.get_num_threads()}, torch {torch.__version__}"
    )
    print(f"  deconvviz incremental   {t_ours:8.2f} s   ({1000 * t_ours / len(grid):6.1f} ms per position)")
    print(f"  naive re-inference      {t_naive:8.2f} s   ({1000 * t_naive / len(grid):6.1f} ms per position)")
    if importlib.util.find_spec("captum") is not None and not args.no_captum:
        from captum.attr import Occlusion

        target = int(model(x).argmax())
        n_captum = ((size - args.occluder) // args.stride + 1) ** 2
        if args.positions:
            n_captum = min(n_captum, args.positions)
        start = time.perf_counter()
        with torch.inference_mode():
            if args.positions:  # the same number of windows: a crop of the image of the right height
                pass
            Occlusion(model).attribute(
                x,
                sliding_window_shapes=(3, args.occluder, args.occluder),
                strides=(3, args.stride, args.stride),
                baselines=0.0,
                target=target,
                perturbations_per_eval=batch,
            )
        t_captum = time.perf_counter() - start
        n_all = ((size - args.occluder) // args.stride + 1) ** 2
        print(
            f"  captum Occlusion        {t_captum:8.2f} s   ({1000 * t_captum / n_all:6.1f} ms per position, {n_all})"
        )
    else:
        print("  captum Occlusion        (not installed)")
    speedup = t_naive / t_ours
    verdict = "met" if speedup >= 3 else "MISSED"
    print(f"  naive / deconvviz = {speedup:.2f}x (target >= 3x: {verdict}); max relative difference {relative:.2e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["vgg16", "squeezenet1_1", "both"], default="both")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--occluder", type=int, default=32)
    parser.add_argument("--stride", type=int, default=8)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--positions", type=int, default=0, help="only this many positions (0: all)")
    parser.add_argument("--no-captum", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.model in ("vgg16", "both"):
        bench("VGG16", torchvision.models.vgg16(weights=None).eval(), args)
    if args.model in ("squeezenet1_1", "both"):
        bench("SqueezeNet 1.1", torchvision.models.squeezenet1_1(weights=None).eval(), args)


if __name__ == "__main__":
    main()
