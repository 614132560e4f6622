"""Rules for attention-style ops against the autograd fallback, measured side by side.

A small attention CNN (CBAM with ``amax`` and ``torch.max(x, 1)[0]``, a SiLU depthwise block, multi-head
self-attention over the positions, softmax attention pooling), random weights, one picture. K seeds at the
last convolution (``conv_last``) are projected twice under each reverse pass: with deconvviz's rules for
softmax, amax / max and ``nn.MultiheadAttention``, and with those ops forced through the autograd fallback
(``FallbackRule``). Printed: the time of each, their ratio and the largest difference of the results
relative to the largest value. Under deconvnet and guided the multi-head attention module is left to its rule
in both runs: the fallback cannot hold the attention weights inside ``F.multi_head_attention_forward``, so the
two would compute different things.

Usage: ``python benchmarks/attention.py [--size 96] [--channels 64] [--k 16] [--repeats 3]``
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

import deconvviz as dv
from deconvviz.ops.fallback import FallbackRule


class Net(nn.Module):
    """CBAM, a SiLU depthwise block, multi-head attention over positions, softmax pooling."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, stride=2, padding=1)
        self.fc1, self.fc2 = nn.Conv2d(c, c // 4, 1), nn.Conv2d(c // 4, c, 1)
        self.spatial = nn.Conv2d(3, 1, 7, padding=3)
        self.expand, self.dw, self.project = (
            nn.Conv2d(c, 2 * c, 1),
            nn.Conv2d(2 * c, 2 * c, 3, padding=1, groups=2 * c),
            nn.Conv2d(2 * c, c, 1),
        )
        self.down = nn.Conv2d(c, c, 3, stride=2, padding=1)
        self.mha = nn.MultiheadAttention(c, num_heads=4, batch_first=True)
        self.conv_last = nn.Conv2d(c, c, 3, padding=1)
        self.score, self.head = nn.Conv2d(c, 1, 1), nn.Linear(c, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        gate = self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1)))) + self.fc2(
            F.relu(self.fc1(x.amax(dim=(2, 3), keepdim=True)))
        )
        x = x * torch.sigmoid(gate)
        pooled = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True), torch.max(x, 1, keepdim=True)[0]], 1)
        x = x * torch.sigmoid(self.spatial(pooled))
        x = x + self.project(F.silu(self.dw(F.silu(self.expand(x)))))
        x = self.down(x)
        b, c, h, w = x.shape
        seq = x.flatten(2).transpose(1, 2)
        x = x + self.mha(seq, seq, seq)[0].transpose(1, 2).reshape(b, c, h, w)
        x = self.conv_last(x)
        weights = torch.softmax(self.score(x).flatten(2), dim=-1)
        return self.head((x.flatten(2) * weights).sum(-1))


def timed(fn: Callable[[], torch.Tensor], repeats: int) -> tuple[float, torch.Tensor]:
    """Median wall time of ``fn`` over ``repeats`` runs after a warm-up, and its result."""
    out = fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    warnings.simplefilter("ignore")  # the fallback's one-line notes
    torch.manual_seed(0)
    model = Net(args.channels).eval()
    x = torch.randn(1, 3, args.size, args.size)
    net = dv.DeconvNet(model)
    channels, repeats = list(range(args.k)), args.repeats
    print(f"{args.k} seeds at conv_last, {args.size} px, {args.channels} channels, {torch.get_num_threads()} threads")
    for method in ("deconvnet", "guided", "gradient"):
        fallback = FallbackRule(method)
        forced: dict[object, dv.Rule] = {
            key: fallback for key in (F.softmax, torch.softmax, "softmax", torch.amax, "amax", torch.max, "max")
        }
        if method == "gradient":
            forced[nn.MultiheadAttention] = fallback
        slow = dv.get_method(method).with_rules(forced, name=f"{method}-autograd")
        rule_time, rule_out = timed(lambda m=method: net.project(x, "conv_last", channels, method=m).image, repeats)
        auto_time, auto_out = timed(lambda s=slow: net.project(x, "conv_last", channels, method=s).image, repeats)
        scale = float(auto_out.abs().max()) or 1.0
        diff = float((rule_out - auto_out).abs().max()) / scale
        print(
            f"{method:9s}  rules {rule_time:6.3f} s   autograd fallback {auto_time:6.3f} s   "
            f"{auto_time / rule_time:4.2f}x faster   relative difference {diff:.1e}"
        )


if __name__ == "__main__":
    main()
