"""Feature evolution over training (Zeiler & Fergus, Fig. 4) on a small CNN, offline, in under a minute on a CPU.

Trains a three-layer CNN on scikit-learn's 8x8 handwritten digits (upsampled to 32x32 and saved as PNGs),
saves a checkpoint after a few of the epochs, and draws how the strongest activation of each of the first
conv3 channels changes from one checkpoint to the next: rows are channels, columns are checkpoints.

    pip install scikit-learn        # the data set ships with it; nothing else is downloaded
    python examples/digits_evolution.py --out out/digits

writes ``out/digits/images/`` (the data set as PNGs), ``out/digits/checkpoints/epoch*.pt`` and
``out/digits/evolution/figure.png`` (with ``manifest.json``). The same figure from the command line:

    deconvviz evolution out/digits/checkpoints/*.pt --data out/digits/images --layer features.7 \\
        --model examples/digits_evolution.py:build --size 32 --channels 8 --out out/digits/evolution-cli
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

import deconvviz as dv

SIZE = 32
PREPROCESSING = dv.Preprocessing(size=SIZE)  # ImageNet mean/std on 0..1 RGB; training uses exactly this
ALIASES = {"conv1": "features.1", "conv2": "features.4", "conv3": "features.7"}


class DigitsCNN(nn.Module):
    """conv-relu-pool twice, a third conv, global average pooling, ten class scores."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def build() -> nn.Module:
    """The untrained CNN (the architecture the checkpoints are for), in eval mode."""
    return DigitsCNN().eval()


def write_digits(folder: Path, count: int | None = None) -> tuple[list[Path], np.ndarray]:
    """scikit-learn's digits as 32x32 RGB PNGs (grey on black), with their labels."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # pragma: no cover - the example says how to get it
        raise SystemExit("this example needs scikit-learn: pip install scikit-learn") from exc
    digits = load_digits()
    images, labels = digits.images, digits.target
    if count is not None:
        images, labels = images[:count], labels[:count]
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, pixels in enumerate(images):
        grey = Image.fromarray(np.uint8(np.round(pixels * (255 / 16))), mode="L")
        path = folder / f"digit{i:04d}_{labels[i]}.png"
        grey.resize((SIZE, SIZE), Image.Resampling.BILINEAR).convert("RGB").save(path)
        paths.append(path)
    return paths, np.asarray(labels)


def train(paths: list[Path], labels: np.ndarray, out: Path, epochs: tuple[int, ...], seed: int = 0) -> list[Path]:
    """Train from scratch, saving the state dict after each epoch listed in ``epochs``; return the files."""
    torch.manual_seed(seed)
    x = torch.cat([PREPROCESSING(Image.open(p)) for p in paths])
    y = torch.as_tensor(labels, dtype=torch.long)
    model = build().train()
    optimiser = torch.optim.Adam(model.parameters(), lr=2e-3)
    out.mkdir(parents=True, exist_ok=True)
    saved = []
    generator = torch.Generator().manual_seed(seed)
    for epoch in range(1, max(epochs) + 1):
        order = torch.randperm(len(x), generator=generator)
        correct = 0
        for start in range(0, len(x), 64):
            batch = order[start : start + 64]
            scores = model(x[batch])
            loss = nn.functional.cross_entropy(scores, y[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            correct += int((scores.argmax(1) == y[batch]).sum())
        if epoch in epochs:
            path = out / f"epoch{epoch:02d}.pt"
            torch.save(model.state_dict(), path)
            saved.append(path)
            print(f"epoch {epoch:2d}: training accuracy {correct / len(x):.1%} -> {path}")
    return saved


def main() -> None:
    parser = argparse.ArgumentParser(description="Feature evolution over training on scikit-learn's digits.")
    parser.add_argument("--out", type=Path, default=Path("out/digits"))
    parser.add_argument("--epochs", default="1,2,4,8,16", help="epochs after which to save a checkpoint")
    parser.add_argument("--channels", type=int, default=8, help="conv3 channels to show")
    args = parser.parse_args()
    epochs = tuple(sorted({int(e) for e in args.epochs.split(",")}))
    started = time.perf_counter()
    paths, labels = write_digits(args.out / "images")
    checkpoints = train(paths, labels, args.out / "checkpoints", epochs)
    model = dv.load_model(dv.ModelSpec(name="digits-cnn", builder=build, preprocessing=PREPROCESSING, aliases=ALIASES))
    result = dv.evolution(checkpoints, args.out / "images", model, layer="conv3", channels=args.channels)
    folder = result.save(args.out / "evolution")
    print(f"{result.summary()} -> {folder / 'figure.png'} ({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
