"""Incremental occlusion against naive batched re-inference (and Captum's ``Occlusion`` when installed).

VGG16 with its classifier (``weights=None``: speed does not depend on the weights), one 224 x 224 image, a
32-px occluder at stride 8 (a 28 x 28 grid: 784 positions), on the CPU. Measured side by side in one run,
with the same batch of positions per pass, after one untimed batch of each to warm up, alternating batch by
batch (so that other work on a shared machine slows both alike):

- deconvviz: the unoccluded pass once, then per batch only the region of each layer the occluders reach;
- naive: every occluded copy of the image through the whole network;
- Captum's ``Occlusion.attribute`` (if captum is installed), with the same window, stride and batch; its grid
  is the windows that fit inside the image (25 x 25 = 625 positions at 224/32/8), so it is compared per
  position. It always sweeps its whole grid, also when ``--positions`` picks a subset for the other two.

deconvviz and naive give the network's output for the same positions; they are compared (largest difference
relative to the largest output; 1e-5 is required in float32). Target: deconvviz >= 3x faster than naive.
The same is reported for SqueezeNet 1.1.

``--positions N`` times N consecutive positions (row by row) from the middle of the grid instead of all of
them, for machines where the full sweep takes too long. ``--threads N`` sets torch's CPU threads for all three:
on a machine shared with other work, one thread per process gives the steadiest figures, because the
incremental pass runs many small operations, and each waits for every thread of the pool to finish its share
(a thread that the system has put aside holds them all up).

Usage: ``python benchmarks/occlusion.py [--model vgg16|squeezenet1_1|both] [--positions N] [--batch 16]``
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time

import torch
import torchvision

from deconvviz.analysis.occlusion import occluder_grid
from deconvviz.core.graph import trace
from deconvviz.core.incremental import IncrementalOcclusion, occluded_images

REQUIRED = 1e-5
TARGET = 3.0


def bench(name: str, model: torch.nn.Module, args: argparse.Namespace) -> dict[str, float]:
    """Time deconvviz, naive and (if installed) Captum on one model; print the figures and return them."""
    side = args.size
    x = torch.randn(1, 3, side, side, generator=torch.Generator().manual_seed(0))
    graph = trace(model)
    output = next(n for n in graph.nodes if n.op == "output").args[0]
    assert isinstance(output, torch.fx.Node)
    rows, cols = occluder_grid(side, side, args.occluder, args.stride)
    grid = [(i, j) for i in range(len(rows)) for j in range(len(cols))]
    if args.positions:
        grid = grid[max(0, len(grid) // 2 - args.positions // 2) :][: args.positions]
    batch = args.batch
    chunks = [grid[k : k + batch] for k in range(0, len(grid), batch)]

    def naive(chunk: list[tuple[int, int]]) -> torch.Tensor:
        return model(occluded_images(x, [(rows[i], cols[j]) for i, j in chunk]))

    with torch.inference_mode():
        warm = IncrementalOcclusion(graph, x, [output], rows, cols)
        warm.run(chunks[0])
        naive(chunks[0])
        del warm

        # Batch by batch, one method after the other, so that a change in the machine's load (other work on
        # a shared machine) falls on both alike.
        start = time.perf_counter()
        engine = IncrementalOcclusion(graph, x, [output], rows, cols)
        t_ours = time.perf_counter() - start
        t_naive = 0.0
        got, want = [], []
        for chunk in chunks:
            start = time.perf_counter()
            got.append(engine.full(output, engine.run(chunk)[output], len(chunk)))
            t_ours += time.perf_counter() - start
            start = time.perf_counter()
            want.append(naive(chunk))
            t_naive += time.perf_counter() - start

    a, b = torch.cat(got), torch.cat(want)
    relative = float((a - b).abs().max() / b.abs().max())
    n = len(grid)
    print(
        f"{name}, {side}x{side}, occluder {args.occluder} px at stride {args.stride}, {n} of "
        f"{len(rows) * len(cols)} positions, batch {batch}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}"
    )
    print(f"  deconvviz incremental   {t_ours:8.2f} s   ({1000 * t_ours / n:6.1f} ms per position)")
    print(f"  naive re-inference      {t_naive:8.2f} s   ({1000 * t_naive / n:6.1f} ms per position)")
    figures = {"ours": t_ours / n, "naive": t_naive / n, "relative": relative}
    if importlib.util.find_spec("captum") is not None and not args.no_captum:
        from captum.attr import Occlusion

        with torch.inference_mode():
            target = int(model(x).argmax())
            fits = ((side - args.occluder) // args.stride + 1) ** 2
            start = time.perf_counter()
            Occlusion(model).attribute(
                x,
                sliding_window_shapes=(3, args.occluder, args.occluder),
                strides=(3, args.stride, args.stride),
                baselines=0.0,
                target=target,
                perturbations_per_eval=batch,
            )
            t_captum = time.perf_counter() - start
        figures["captum"] = t_captum / fits
        print(f"  captum Occlusion        {t_captum:8.2f} s   ({1000 * t_captum / fits:6.1f} ms per position, {fits})")
    else:
        print("  captum Occlusion        (not installed or --no-captum)")
    speedup = t_naive / t_ours
    verdict = "met" if speedup >= TARGET else "MISSED"
    same = "identical" if relative <= REQUIRED else "DIFFERENT"
    line = f"  naive / deconvviz = {speedup:.2f}x (target >= {TARGET:g}x: {verdict})"
    if "captum" in figures:
        line += f"; captum / deconvviz = {figures['captum'] / figures['ours']:.2f}x per position"
    print(line)
    print(f"  max difference relative to the largest output {relative:.2e} ({same}: <= {REQUIRED:g} required)")
    return figures


def main() -> None:
    """Run the benchmark for the models asked for."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--model", choices=["vgg16", "squeezenet1_1", "both"], default="both")
    parser.add_argument("--size", type=int, default=224, help="image side in pixels")
    parser.add_argument("--occluder", type=int, default=32, help="occluder side in pixels")
    parser.add_argument("--stride", type=int, default=8, help="pixels between occluder positions")
    parser.add_argument("--batch", type=int, default=16, help="positions per pass, for all three")
    parser.add_argument("--positions", type=int, default=0, help="only this many positions from the middle (0: all)")
    parser.add_argument("--no-captum", action="store_true", help="skip Captum even when it is installed")
    parser.add_argument("--threads", type=int, default=0, help="torch's CPU threads (0: torch's default)")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]  # figures appear as they are measured
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.model in ("vgg16", "both"):
        bench("VGG16", torchvision.models.vgg16(weights=None).eval(), args)
    if args.model in ("squeezenet1_1", "both"):
        bench("SqueezeNet 1.1", torchvision.models.squeezenet1_1(weights=None).eval(), args)


if __name__ == "__main__":
    main()
