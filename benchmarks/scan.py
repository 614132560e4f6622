"""Top-k scan throughput against a plain forward pass, and peak memory for N and 4N images.

The scan keeps the top 9 activations of every channel of all 13 VGG16 conv layers (conv1_1 ... conv5_3,
after their ReLUs) over a folder of photos. The baseline reads the same photos the same way (DataLoader,
same preprocessing, same batch size) and runs a plain forward pass through the same layers
(``features[:30]``). Both are measured in one run, alternating, and compared as images per second.
Peak memory (max RSS) of a scan over N and over 4N photos is measured in fresh processes.

Targets: scan throughput >= 0.9x the plain forward pass; peak memory for 4N within 10 % of N.

Usage: ``python benchmarks/scan.py [--images 32] [--memory-images 16] [--batch-size 8] [--device cpu]``
The offline VGG16 weights are fetched into the deconvviz cache on first use.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import deconvviz as dv
from deconvviz.images import load_image
from deconvviz.search import scan

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
CONV_LAYERS = [f"conv{b}_{i}" for b, n in ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3)) for i in range(1, n + 1)]


def make_photos(folder: Path, count: int, seed: int = 0) -> Path:
    """``count`` distinct photos: random crops, flips and rotations of the example photos."""
    rng = np.random.default_rng(seed)
    sources = [load_image(p) for p in sorted(EXAMPLES.glob("*.jpg"))]
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        picture = sources[i % len(sources)]
        w, h = picture.size
        side = int(min(w, h) * rng.uniform(0.55, 0.95))
        left, top = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
        crop = picture.crop((left, top, left + side, top + side)).rotate(float(rng.uniform(-20, 20)))
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        crop.resize((320, 320)).save(folder / f"photo{i:04d}.jpg", quality=90)
    return folder


def forward_rate(model: dv.LoadedModel, folder: Path, batch_size: int) -> float:
    """Images per second: the same reading and preprocessing, then a plain forward through conv1_1..conv5_3."""
    paths = sorted(folder.glob("*.jpg"))
    head = model.module.features[:30]
    device = next(model.module.parameters()).device

    def prepare(path: Path) -> torch.Tensor:
        return model.preprocess(load_image(path))[0].cpu()

    dataset = [paths[i] for i in range(len(paths))]
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, collate_fn=lambda b: torch.stack([prepare(p) for p in b])
    )
    start = time.perf_counter()
    with torch.inference_mode():
        for batch in loader:
            head(batch.to(device))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return len(paths) / (time.perf_counter() - start)


def scan_rate(model: dv.LoadedModel, folder: Path, batch_size: int) -> float:
    """Images per second of a top-9 scan over every channel of the 13 conv layers."""
    count = len(list(folder.glob("*.jpg")))
    start = time.perf_counter()
    scan(model, folder, CONV_LAYERS, k=9, channels=None, batch_size=batch_size)
    if torch.cuda.is_available() and next(model.module.parameters()).is_cuda:
        torch.cuda.synchronize()
    return count / (time.perf_counter() - start)


_PEAK = """
import resource, sys
import deconvviz as dv
from deconvviz.search import scan
sys.path.insert(0, {here!r})
from scan import CONV_LAYERS
model = dv.load_model("vgg16", device={device!r})
scan(model, sys.argv[1], CONV_LAYERS, k=9, channels=None, batch_size={batch})
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def peak_rss(folder: Path, batch_size: int, device: str) -> int:
    """Max RSS (kB) of a fresh process that loads the model and scans ``folder``."""
    code = _PEAK.format(here=str(Path(__file__).parent), device=device, batch=batch_size)
    done = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True, text=True, check=True)
    return int(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32, help="photos for the throughput runs")
    parser.add_argument("--memory-images", type=int, default=16, help="N for the memory runs (and 4N)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    model = dv.load_model("vgg16", device=args.device)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        photos = make_photos(root / "throughput", args.images)
        print(
            f"VGG16 ({model.weights.split(',')[0]}), {args.images} photos at {model.input_size}px, "
            f"batch {args.batch_size}, top-9 of all channels of {len(CONV_LAYERS)} conv layers, "
            f"device={args.device}, threads={torch.get_num_threads()}"
        )
        scan_rate(model, photos, args.batch_size)  # warm-up
        scans, forwards = [], []
        for _ in range(args.repeats):  # alternate, so drifting machine load hits both alike
            forwards.append(forward_rate(model, photos, args.batch_size))
            scans.append(scan_rate(model, photos, args.batch_size))
        best_scan, best_forward = max(scans), max(forwards)
        ratio = best_scan / best_forward
        median_ratio = statistics.median(scans) / statistics.median(forwards)
        print(f"  plain forward   {best_forward:7.2f} images/s   (runs: {', '.join(f'{r:.2f}' for r in forwards)})")
        print(f"  top-k scan      {best_scan:7.2f} images/s   (runs: {', '.join(f'{r:.2f}' for r in scans)})")
        verdict = {True: "met", False: "MISSED"}
        met = verdict[ratio >= 0.9]
        print(f"  scan / forward  {ratio:7.2f}x best, {median_ratio:.2f}x median (target >= 0.90x: {met})")

        n = args.memory_images
        small = make_photos(root / "n", n, seed=1)
        large = make_photos(root / "4n", 4 * n, seed=2)
        peak_small = peak_rss(small, args.batch_size, args.device)
        peak_large = peak_rss(large, args.batch_size, args.device)
        growth = peak_large / peak_small - 1
        print(f"  peak RSS, N={n:<4d}   {peak_small / 1024:7.0f} MiB")
        print(f"  peak RSS, 4N={4 * n:<4d}  {peak_large / 1024:7.0f} MiB")
        print(f"  4N vs N         {growth:+7.1%}           (target within 10%: {verdict[abs(growth) <= 0.10]})")


if __name__ == "__main__":
    main()
