"""Top-k scan throughput against a plain forward pass, in one process and in several; the projection phase; memory.

The scan keeps the top 9 activations of every channel of all 13 VGG16 conv layers (conv1_1 ... conv5_3,
after their ReLUs) over a folder of photos. Rows, each measured side by side in one run:

- **scan vs forward**: the baseline reads the same photos the same way (DataLoader, same preprocessing, same
  batch size) and runs a plain forward pass through the same layers (``features[:30]``); both alternate and are
  compared as images per second.
- **1 vs N processes**: the same scan in one process using every core, and under ``torchrun`` in N processes
  on this machine (gloo over the loopback, the cores shared out as ``--workers N`` does); each run is a fresh
  process group that loads the model and warms up first, and the scan itself is timed (the top-k merge
  included). Runs alternate; images per second of each and the ratio.
- **projection phase**: a whole report (``build_report``, the paper's four layers, the 16 strongest channels
  each, top 9) timed by stage through its ``progress`` callback: projections per second, and the share of the
  report's time spent projecting (scan, project, write).
- **memory**: peak memory (max RSS) of a scan over N and over 4N photos, in fresh processes; with
  ``--processes`` above 1, also of each rank of a torchrun scan over N and over 4N photos.

Targets: scan throughput >= 0.9x the plain forward pass; peak memory for 4N within 10 % of N.

Usage: ``python benchmarks/scan.py [--images 32] [--memory-images 16] [--batch-size 8] [--processes 2]
[--report-images 16] [--report-channels 16] [--skip-forward] [--skip-distributed] [--skip-projection]
[--skip-memory] [--device cpu]``; a quick look: ``--images 8 --report-images 4 --report-channels 2 --repeats 1
--skip-memory``.
The offline VGG16 weights are fetched into the deconvviz cache on first use.
"""

from __future__ import annotations

import argparse
import os
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
from deconvviz.analysis.topk.scan import scan
from deconvviz.io.images import load_image
from deconvviz.viz.report import PAPER_LAYERS

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
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
    scan(folder, model, CONV_LAYERS, k=9, channels=None, batch_size=batch_size)
    if torch.cuda.is_available() and next(model.module.parameters()).is_cuda:
        torch.cuda.synchronize()
    return count / (time.perf_counter() - start)


_PEAK = """
import resource, sys
import deconvviz as dv
from deconvviz.analysis.topk.scan import scan
sys.path.insert(0, {here!r})
from scan import CONV_LAYERS
model = dv.load_model("vgg16", device={device!r})
scan(sys.argv[1], model, CONV_LAYERS, k=9, channels=None, batch_size={batch})
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def peak_rss(folder: Path, batch_size: int, device: str) -> int:
    """Max RSS (kB) of a fresh process that loads the model and scans ``folder``."""
    code = _PEAK.format(here=str(Path(__file__).parent), device=device, batch=batch_size)
    done = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True, text=True, check=True)
    return int(done.stdout.strip().splitlines()[-1])


_RANKS = """
import resource, sys, time
import deconvviz as dv
from deconvviz import distributed
from deconvviz.analysis.topk.scan import scan
folder, layers, batch = sys.argv[1], sys.argv[2].split(","), int(sys.argv[3])
model = dv.load_model("vgg16", device="cpu")
ranks = distributed.setup("cpu")
scan(folder, model, layers, k=9, channels=None, batch_size=batch, limit=batch * ranks.world)  # warm-up
distributed.barrier(ranks)
start = time.perf_counter()
found = scan(folder, model, layers, k=9, channels=None, batch_size=batch)
distributed.barrier(ranks)
elapsed = time.perf_counter() - start
rss = distributed.gather_objects(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, ranks)
if ranks.rank == 0:
    print("scanned", len(found.names), elapsed, *rss)
distributed.shutdown()
"""


def cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def processes_rate(folder: Path, processes: int, batch_size: int, script: Path) -> tuple[float, list[int]]:
    """Images per second of the scan in ``processes`` CPU processes (one: no torchrun), and each one's max RSS (kB).

    One process gets every core; under torchrun each of N processes gets 1/N of them, as ``--workers N`` does.
    """
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")}
    env["OMP_NUM_THREADS"] = str(max(1, cores() // processes))
    env["GLOO_SOCKET_IFNAME"] = "lo"  # localhost only
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])  # this checkout's deconvviz
    command = [sys.executable, str(script)]
    if processes > 1:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--local-addr", "127.0.0.1"]
        command += [f"--nproc-per-node={processes}", str(script)]
    command += [str(folder), ",".join(CONV_LAYERS), str(batch_size)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the {processes}-process scan failed:\n{done.stderr[-3000:]}")
    line = next(x for x in done.stdout.splitlines() if x.startswith("scanned "))
    _, count, elapsed, *rss = line.split()
    return int(count) / float(elapsed), [int(r) for r in rss]


def report_stages(model: dv.LoadedModel, folder: Path, out: Path, batch_size: int, channels: int) -> dict[str, float]:
    """A whole report over ``folder``, timed by stage: seconds of scan, project and write, and the projections.

    The report is the default one (the paper's layers, top 9) of the ``channels`` strongest channels per layer.
    """
    from deconvviz.viz.report import build_report

    last: dict[str, tuple[float, int]] = {}

    def progress(stage: str, done: int, total: int) -> None:
        last[stage] = (time.perf_counter(), done)

    start = time.perf_counter()
    build_report(folder, out, model=model, channels=channels, k=9, batch_size=batch_size, progress=progress)
    end = time.perf_counter()
    scanned, projected = last["scan"][0], last["project"][0]  # the last call of a stage marks its end
    return {
        "scan": scanned - start,
        "project": projected - scanned,
        "write": end - projected,
        "total": end - start,
        "projections": last["project"][1],
    }


def runs(rates: list[float]) -> str:
    return ", ".join(f"{r:.2f}" for r in rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32, help="photos for the throughput runs")
    parser.add_argument("--memory-images", type=int, default=16, help="N for the memory runs (and 4N)")
    parser.add_argument("--report-images", type=int, default=16, help="photos for the projection-phase report")
    parser.add_argument("--report-channels", type=int, default=16, help="strongest channels per layer in the report")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--processes", type=int, default=2, help="N of the 1 vs N processes row (on the CPU)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-forward", action="store_true", help="leave out the scan vs forward row")
    parser.add_argument("--skip-distributed", action="store_true", help="leave out the 1 vs N processes row")
    parser.add_argument("--skip-projection", action="store_true", help="leave out the projection-phase row")
    parser.add_argument("--skip-memory", action="store_true", help="leave out the peak memory row")
    args = parser.parse_args()

    model = dv.load_model("vgg16", device=args.device)
    verdict = {True: "met", False: "MISSED"}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        photos = make_photos(root / "throughput", args.images)
        print(
            f"VGG16 ({model.weights.split(',')[0]}), {args.images} photos at {model.input_size}px, "
            f"batch {args.batch_size}, top-9 of all channels of {len(CONV_LAYERS)} conv layers, "
            f"device={args.device}, threads={torch.get_num_threads()}, cores={cores()}"
        )
        if not args.skip_forward:
            scan_rate(model, photos, args.batch_size)  # warm-up
            scans, forwards = [], []
            for _ in range(args.repeats):  # alternate, so drifting machine load hits both alike
                forwards.append(forward_rate(model, photos, args.batch_size))
                scans.append(scan_rate(model, photos, args.batch_size))
            best_scan, best_forward = max(scans), max(forwards)
            ratio = best_scan / best_forward
            median_ratio = statistics.median(scans) / statistics.median(forwards)
            print(f"  plain forward   {best_forward:7.2f} images/s   (runs: {runs(forwards)})")
            print(f"  top-k scan      {best_scan:7.2f} images/s   (runs: {runs(scans)})")
            met = verdict[ratio >= 0.9]
            print(f"  scan / forward  {ratio:7.2f}x best, {median_ratio:.2f}x median (target >= 0.90x: {met})")

        if not args.skip_distributed and args.device == "cpu":
            n = args.processes
            script = root / "ranks.py"
            script.write_text(_RANKS)
            ones, manys, memory = [], [], []
            for _ in range(args.repeats):  # alternate, so drifting machine load hits both alike
                rate, _rss = processes_rate(photos, 1, args.batch_size, script)
                ones.append(rate)
                rate, rss = processes_rate(photos, n, args.batch_size, script)
                manys.append(rate)
                memory = rss
            best_one, best_many = max(ones), max(manys)
            median_ratio = statistics.median(manys) / statistics.median(ones)
            print(f"  scan, 1 process ({cores()} threads)   {best_one:7.2f} images/s   (runs: {runs(ones)})")
            threads = max(1, cores() // n)
            print(
                f"  scan, {n} processes ({threads} thread{'s' * (threads > 1)} each, torchrun, gloo)  "
                f"{best_many:7.2f} images/s   (runs: {runs(manys)})"
            )
            print(f"  {n} / 1 processes  {best_many / best_one:7.2f}x best, {median_ratio:.2f}x median")
            print(f"  peak RSS per process, {n} processes: {', '.join(f'{r / 1024:.0f}' for r in memory)} MiB")
            for label, rate in (("1 process", best_one), (f"{n} processes", best_many)):
                print(f"  50,000 images, {label}: {50_000 / rate / 3600:.2f} h of scanning")

        if not args.skip_projection:
            few = make_photos(root / "report", args.report_images, seed=3)
            report_stages(model, few, root / "warm-up", args.batch_size, 1)  # warm-up
            stages = report_stages(model, few, root / "report-out", args.batch_size, args.report_channels)
            total, projected = stages["total"], stages["project"]
            print(
                f"  report of {args.report_images} photos ({', '.join(PAPER_LAYERS)}; the {args.report_channels} "
                f"strongest channels of each, top 9): {total:.1f} s = scan {stages['scan']:.1f} s + "
                f"project {projected:.1f} s + write {stages['write']:.1f} s"
            )
            print(
                f"  projection phase  {stages['projections'] / projected:7.2f} projections/s "
                f"({stages['projections']:.0f} projections), {projected / total:.0%} of the report's time"
            )

        if not args.skip_memory:
            n = args.memory_images
            small = make_photos(root / "n", n, seed=1)
            large = make_photos(root / "4n", 4 * n, seed=2)
            peak_small = peak_rss(small, args.batch_size, args.device)
            peak_large = peak_rss(large, args.batch_size, args.device)
            growth = peak_large / peak_small - 1
            print(f"  peak RSS, N={n:<4d}   {peak_small / 1024:7.0f} MiB")
            print(f"  peak RSS, 4N={4 * n:<4d}  {peak_large / 1024:7.0f} MiB")
            print(f"  4N vs N         {growth:+7.1%}           (target within 10%: {verdict[abs(growth) <= 0.10]})")
            if args.device == "cpu" and args.processes > 1:
                n_proc = args.processes
                script = root / "ranks.py"
                script.write_text(_RANKS)
                _, ranks_small = processes_rate(small, n_proc, args.batch_size, script)
                _, ranks_large = processes_rate(large, n_proc, args.batch_size, script)
                worst = max(large / small - 1 for small, large in zip(ranks_small, ranks_large, strict=True))
                for label, rss in ((f"N={n}", ranks_small), (f"4N={4 * n}", ranks_large)):
                    shown = ", ".join(f"{r / 1024:.0f}" for r in rss)
                    print(f"  peak RSS per rank, {n_proc} processes, {label}: {shown} MiB")
                print(f"  4N vs N per rank, worst  {worst:+7.1%}  (target within 10%: {verdict[abs(worst) <= 0.10]})")


if __name__ == "__main__":
    main()
