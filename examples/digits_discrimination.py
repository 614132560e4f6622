"""How discriminative each layer is (Zeiler & Fergus, Table 7), offline: ImageNet features on handwritten digits.

Writes scikit-learn's 8x8 handwritten digits as pictures, one folder per digit (``--per-class`` of each,
upsampled to 64 x 64, dark on white), then trains a linear softmax on each of VGG16's default layers with a
few digits per class and scores it on the others, as the paper does on Caltech-101 and -256:

    pip install scikit-learn        # the data set ships with it; nothing else is downloaded
    python examples/digits_discrimination.py --out out/digits-classes

writes ``out/digits-classes/images/0 ... 9/`` and ``out/digits-classes/discrimination/`` (the table, the
accuracies per class and split, the figure and ``manifest.json``). The same from the command line:

    deconvviz discrimination out/digits-classes/images --model vgg16 --out out/digits-classes/cli
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from pathlib import Path

import numpy as np
from PIL import Image

import deconvviz as dv


def write_classes(folder: Path, per_class: int) -> int:
    """The first ``per_class`` digits of each class as 64 x 64 RGB PNGs in ``folder/<digit>/``; how many."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # pragma: no cover - the example says how to get it
        raise SystemExit("this example needs scikit-learn: pip install scikit-learn") from exc
    digits = load_digits()
    written: dict[int, int] = {}
    for pixels, label in zip(digits.images, digits.target, strict=True):
        count = written.get(int(label), 0)
        if count == per_class:
            continue
        grey = Image.fromarray(np.uint8(np.round(255 - pixels * (255 / 16))), mode="L")
        path = folder / str(label) / f"{count:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        grey.resize((64, 64), Image.Resampling.BILINEAR).convert("RGB").save(path)
        written[int(label)] = count + 1
    return sum(written.values())


def main() -> None:
    parser = argparse.ArgumentParser(description="How discriminative each layer is, on scikit-learn's digits.")
    parser.add_argument("--out", type=Path, default=Path("out/digits-classes"))
    parser.add_argument("--per-class", type=int, default=20, help="digits of each class")
    parser.add_argument("--model", default="vgg16")
    parser.add_argument("--linear", default="softmax", choices=["softmax", "svm"])
    args = parser.parse_args()
    started = time.perf_counter()
    count = write_classes(args.out / "images", args.per_class)
    bar = importlib.util.find_spec("tqdm") is not None  # a progress bar where tqdm is installed
    result = dv.discrimination(args.out / "images", args.model, linear=args.linear, progress="bar" if bar else None)
    folder = result.save(args.out / "discrimination")
    print(result.table())
    took = time.perf_counter() - started
    print(f"{result.summary()} -> {folder / 'discrimination.png'} ({count} digits, {took:.0f} s)")


if __name__ == "__main__":
    main()
