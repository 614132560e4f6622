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

Last, when timm is installed, timm's EfficientNet-B0 (its batch norms fused with their SiLU and kept whole):
the fused batch norm's own rule against the autograd fallback forced on the same modules, under each
reverse pass; ratio and largest difference.

Usage: ``python benchmarks/projection.py [--size 224] [--k 64] [--repeats 2] [--device cpu|cuda] [--modern-only]
[--timm-only]``
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
    parser.add_argument("--modern-only", action="store_true", help="only the MobileNet, ConvNeXt and timm rows")
    parser.add_argument("--timm-only", action="store_true", help="only the timm fused batch norm row")
    args = parser.parse_args()
    device = torch.device(args.device)
    if not args.modern_only and not args.timm_only:
        vgg16(args, device)
    if not args.timm_only:
        modern(args, device)
    fused(args, device)


def fused(args: argparse.Namespace, device: torch.device) -> None:
    """timm's EfficientNet-B0 keeps its batch norms fused with their SiLU whole: their rule against autograd.

    Skipped without timm (a test extra). Both runs project the same K seeds at the last feature map
    (``conv_head``) under each reverse pass, once with the fused batch norms' own rule and once with the
    autograd fallback forced on them; they alternate, and their outputs are compared.
    """
    try:
        import timm
        from timm.layers import BatchNormAct2d
    except ImportError:
        print("timm is not installed: no fused batch norm row (pip install timm)")
        return
    from deconvviz.ops.fallback import FallbackRule

    print(f"timm efficientnet_b0, {args.size}x{args.size}, K={args.k} seeds at conv_head, device={device}")
    torch.manual_seed(0)
    model = timm.create_model("efficientnet_b0", pretrained=False).eval().to(device)
    net = dv.DeconvNet(model)
    x = torch.randn(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(0)).to(device)
    channels = list(range(args.k))
    for method in ("deconvnet", "guided", "gradient"):
        forced = dv.get_method(method).with_rules({BatchNormAct2d: FallbackRule(method)}, name=f"{method}-autograd")

        def own(method: str = method) -> torch.Tensor:
            return net.project(x, layer="conv_head", channel=channels, method=method).image

        def autograd(forced: dv.RuleSet = forced) -> torch.Tensor:
            return net.project(x, layer="conv_head", channel=channels, method=forced).image

        scale = float(own().abs().max())
        difference = float((own() - autograd()).abs().max()) / scale if scale else 0.0
        t_own, t_autograd = [], []
        for _ in range(args.repeats):
            t_own.append(timed(own, 1, device))
            t_autograd.append(timed(autograd, 1, device))
        a, b = statistics.median(t_own), statistics.median(t_autograd)
        print(
            f"  {method:<9s} fused rule {a:7.2f} s   autograd fallback {b:7.2f} s   {b / a:.2f}x faster   "
            f"max difference {difference:.1e} of the largest value"
        )


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
