"""Batched projection against a loop of single projections and a plain batched forward pass.

VGG16 (random weights: speed does not depend on them), one image, seeds = the strongest activation of K
channels of conv5_3 (``features.29``, after its ReLU). Measured side by side in one run:

- batched ``project`` with the default schedule: one capture pass shared by all K seeds, seeds mirrored in
  chunks chosen for the device (one at a time on a CPU, each filtering only its receptive-field cone; 64 at
  a time on a GPU);
- the same with all K seeds in one mirrored pass (``max_batch=K``), for comparison;
- a loop of K single-channel ``project`` calls;
- a forward pass with batch K through the same layers (``features[:30]``).

Targets: batched <= 1.3x the batch-K forward pass, and >= 1.8x faster than the loop.

Then the same batched projection against the batch-K forward pass for two modern networks, at their last
feature map (``features``): MobileNetV3-Large (depthwise convolutions, hard swish, squeeze-and-excitation
gates) and ConvNeXt-Tiny (7x7 depthwise convolutions, LayerNorm, GELU), under each reverse pass.

Usage: ``python benchmarks/projection.py [--size 224] [--k 64] [--repeats 2] [--device cpu|cuda] [--modern-only]``
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torchvision

import deconvviz as dv


def timed(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    """Median wall time of ``fn`` over ``repeats`` runs, after one warm-up run."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--k", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--modern-only", action="store_true", help="only the MobileNet and ConvNeXt rows")
    args = parser.parse_args()
    device = torch.device(args.device)
    if not args.modern_only:
        vgg16(args, device)
    modern(args, device)


def modern(args: argparse.Namespace, device: torch.device) -> None:
    """Batched projection of K seeds at the last feature map against a batch-K forward pass to it."""
    print(f"modern networks, {args.size}x{args.size}, K={args.k} seeds at the last feature map, device={device}")
    x = torch.randn(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(0)).to(device)
    batch = x.expand(args.k, -1, -1, -1).contiguous()
    channels = list(range(args.k))
    for name in ("mobilenet_v3_large", "convnext_tiny"):
        torch.manual_seed(0)
        model = torchvision.models.get_model(name, weights=None).eval().to(device)
        net = dv.DeconvNet(model)

        def forward(model: torch.nn.Module = model) -> object:
            with torch.inference_mode():
                return model.features(batch)

        t_forward = timed(forward, args.repeats, device)
        print(f"  {name:<20s} forward pass, batch {args.k:<3d}      {t_forward:8.2f} s")
        for method in ("deconvnet", "guided", "gradient"):

            def batched(net: dv.DeconvNet = net, method: str = method) -> object:
                return net.project(x, layer="features", channel=channels, method=method)

            t_batched = timed(batched, args.repeats, device)
            ratio = t_batched / t_forward
            print(f"  {name:<20s} batched project, {method:<9s}  {t_batched:8.2f} s   {ratio:.2f}x the forward pass")


def vgg16(args: argparse.Namespace, device: torch.device) -> None:
    """VGG16's conv5_3: batched projection, one mirrored pass, a loop, and the batch-K forward pass."""
    torch.manual_seed(0)
    model = torchvision.models.vgg16(weights=None).eval().to(device)
    x = torch.randn(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(0)).to(device)
    layer = "features.29"
    net = dv.DeconvNet(model)
    one_pass = dv.DeconvNet(model, max_batch=args.k)
    channels = list(range(args.k))
    head = model.features[:30]
    batch = x.expand(args.k, -1, -1, -1).contiguous()

    def batched() -> object:
        return net.project(x, layer=layer, channel=channels)

    def batched_one_pass() -> object:
        return one_pass.project(x, layer=layer, channel=channels)

    def loop() -> object:
        return [net.project(x, layer=layer, channel=c) for c in channels]

    def forward() -> object:
        with torch.inference_mode():
            return head(batch)

    # Same answers either way, checked before timing.
    each = torch.cat([net.project(x, layer=layer, channel=c).image for c in channels[:4]])
    scale = float(each.abs().max()) or 1.0
    for variant in (net, one_pass):
        together = variant.project(x, layer=layer, channel=channels[:4]).image
        assert float((together - each).abs().max()) <= 1e-4 * scale, "batched and single projections differ"

    print(
        f"VGG16, {args.size}x{args.size}, K={args.k} seeds at conv5_3 ({layer}), device={device}, "
        f"threads={torch.get_num_threads()}, torch {torch.__version__}, repeats={args.repeats} (median)"
    )
    t_forward = timed(forward, args.repeats, device)
    t_batched = timed(batched, args.repeats, device)
    t_one_pass = timed(batched_one_pass, args.repeats, device)
    t_loop = timed(loop, max(1, args.repeats // 2), device)
    print(f"  forward pass, batch {args.k:<3d}               {t_forward:8.2f} s")
    chunk = net._chunk(device)
    print(f"  batched project, K={args.k:<3d} (default)      {t_batched:8.2f} s   (seeds per mirrored pass: {chunk})")
    print(f"  batched project, K={args.k:<3d} in one pass    {t_one_pass:8.2f} s")
    print(f"  loop of {args.k} single projects              {t_loop:8.2f} s")
    ratio_forward = t_batched / t_forward
    speedup = t_loop / t_batched
    verdict = {True: "met", False: "MISSED"}
    print(f"  batched / forward   = {ratio_forward:.2f}x   (target <= 1.30x: {verdict[ratio_forward <= 1.3]})")
    print(f"  loop / batched      = {speedup:.2f}x   (target >= 1.80x: {verdict[speedup >= 1.8]})")


if __name__ == "__main__":
    main()
