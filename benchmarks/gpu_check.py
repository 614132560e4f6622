"""deconvviz on one device, proved and measured in one run: correctness against the CPU, then speed side by side.

``make gpu-check`` (``--device cuda``) runs on a bare CUDA machine with the system's torch and installs nothing;
``make gpu-check-cpu`` (``--device cpu --tiny``) runs the same code at toy size on the CPU, so that CI keeps it
working. Two parts, one Markdown table (printed, and written to ``OUT/gpu-check.md``) plus the raw figures
(``OUT/gpu-check.json``):

1. **Correctness**: ``tests/test_devices.py`` (the ``cuda`` marker) on the device, every result compared with the
   CPU's in float64: the three reverse passes on VGG-shaped, overlapping-pool, residual, concatenating nets and
   a net with an opaque block (the autograd fallback); batched units; the streaming top-k against a brute-force
   CPU search, with DataLoader workers; incremental occlusion against naive re-inference; a two-process torchrun
   scan on the one device against one process (NCCL, or gloo where NCCL will not put two processes on one GPU;
   the table says which). The tiny mode leaves out the slow torchrun test (``make test`` runs it on the CPU).
2. **Speed** (``weights=None``, 224 px; the tiny mode uses small nets at 32 px), each row measured side by side
   in one run, best of ``--repeats`` after a warm-up, alternating so that drift hits both sides alike:

   - VGG16 and ResNet-50: a plain batched forward pass (pictures already on the device; and read from files with
     the scan's loading), against the top-k scan (top 9 of every channel of the conv layers / stage outputs);
   - projections per second at ``conv5_3`` / the end of ``layer4``: 64 seeds in one batched call against a loop
     of 64 single projections;
   - occlusion positions per second: incremental re-inference against naive re-inference (VGG16 and ResNet-50
     with their classifiers, 32 px occluder at stride 8);
   - the report pipeline over 64 generated pictures, by stage (scan, project, write).

   Every row has its peak device memory (``torch.cuda.max_memory_allocated``; none on the CPU) and its
   **device-busy share**: the time spent inside the model's calls (CUDA events recorded on the stream around
   them; host timers on the CPU) over the wall-clock time of the pipeline. What is left is time the device
   waits for the host: reading and decoding pictures, host copies, bookkeeping between calls, synchronisation.
   A model call that is itself bound by kernel launches still counts as busy.

Exit status: 0 when every correctness test passed and every speed row was measured; 1 otherwise; 2 when the
device is not there (one line on stderr).

Usage: ``python benchmarks/gpu_check.py --device cuda --out out/gpu-check`` or
``python benchmarks/gpu_check.py --device cpu --tiny --out out/gpu-check-cpu``
(``--skip-correctness``, ``--skip-speed``, ``--repeats N``, ``--workers N``, ``--time-limit SECONDS``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
DEVICE_TESTS = "tests/test_devices.py"

# test function -> what it proves, for the table
TESTS = {
    "test_every_layer_projects_as_on_the_cpu": "every layer, 3 methods x 10 nets (overlapping 3x3/2 pools, "
    "residual, concat, opaque block, every rule family), strongest unit and whole map = CPU",
    "test_projections_equal_the_autograd_oracle": "3 methods x 5 nets = the CPU's autograd oracle",
    "test_batched_units_use_each_images_own_switches": "batched units of 3 images, each through its own switches",
    "test_streaming_top_k_equals_the_cpu_brute_force": "streaming top-k hits and crops = brute-force CPU search",
    "test_index_tensors_reach_the_device_without_waiting_for_it": "index tensors sent through page-locked memory "
    "arrive whole and in order",
    "test_loader_workers_read_pictures_on_the_host": "scan with DataLoader workers = scan without",
    "test_a_scans_pictures_can_go_to_workers_started_by_spawn": "a scan's pictures reach spawned workers (pickled)",
    "test_incremental_occlusion_equals_naive_reinference": "incremental occlusion = naive re-inference "
    "(device and CPU), 4 nets",
    "test_occlusion_result_equals_the_cpus": "occlusion panels (a)-(d) and the map in other pictures = CPU",
    "test_ranks_share_the_gpus_in_turn_and_the_backend_can_be_chosen": "torchrun ranks share the GPUs in turn; "
    "gloo when they outnumber the GPUs; DECONVVIZ_DIST_BACKEND",
    "test_a_failed_runs_reason_is_its_cause_not_torchruns_pointer_to_its_docs": "a failed torchrun run is "
    "reported by its cause (NCCL's own line)",
    "test_two_processes_on_one_device_give_the_one_process_hits": "two-process torchrun scan on one device = "
    "one process",
}


class CheckError(Exception):
    """The check cannot run here (a one-line reason)."""


# ------------------------------------------------------------------------------------------------ device


def require_device(device: str) -> None:
    """Fail in one line when this python has no torch, or ``device`` is CUDA and torch sees none."""
    try:
        import torch
    except ImportError as exc:
        raise CheckError(f"{sys.executable} cannot import torch ({exc}): run it with a python that has torch") from exc
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        built = torch.version.cuda or "none"
        raise CheckError(
            f"no CUDA device: torch.cuda.is_available() is false (torch {torch.__version__}, CUDA build {built}); "
            "run on a machine with an NVIDIA GPU, or run make gpu-check-cpu for the CPU's tiny mode"
        )
    if torch.device(device).type == "cuda":
        index = torch.device(device).index
        if index is not None and not 0 <= index < torch.cuda.device_count():
            raise CheckError(
                f"no device {device}: torch sees {torch.cuda.device_count()} CUDA device(s); "
                "give --device cuda or cuda:N with N below that"
            )
        if index is not None:  # CUDA events record on the current device's stream: make it the one measured
            torch.cuda.set_device(index)


def describe(device: str) -> dict[str, Any]:
    """The machine and library versions, for the JSON."""
    import torch
    import torchvision

    import deconvviz

    info: dict[str, Any] = {
        "device": device,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "deconvviz": deconvviz.__version__,
        "python": platform.python_version(),
        "cpu cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch threads": torch.get_num_threads(),
    }
    if torch.device(device).type == "cuda":
        props = torch.cuda.get_device_properties(torch.device(device))
        info["gpu"] = props.name
        info["gpu memory GiB"] = round(props.total_memory / 2**30, 1)
        info["cuda"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version()
        info["tf32 convolutions"] = bool(torch.backends.cudnn.allow_tf32)
        info["tf32 matmul"] = bool(torch.backends.cuda.matmul.allow_tf32)
    shm = Path("/dev/shm")
    if shm.is_dir():  # loader workers hand batches over in shared memory; a small one ends them with a bus error
        info["shared memory free GiB"] = round(shutil.disk_usage(shm).free / 2**30, 2)
    return info


class Busy:
    """Time spent inside the model's calls: CUDA events on the stream around each call, host timers on the CPU.

    Nested calls count once (the outermost). ``seconds()`` waits for the device and sums the spans.
    """

    def __init__(self, device: Any) -> None:
        import torch

        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.clock = "CUDA events" if self.cuda else "host timers"
        self.pairs: list[tuple[Any, Any, str]] = []
        self.host: list[tuple[float, str]] = []
        self._depth = 0

    @contextlib.contextmanager
    def span(self, tag: str = "") -> Iterator[None]:
        """Count the time of the enclosed model call (under ``tag``)."""
        if self._depth:
            yield
            return
        import torch

        self._depth += 1
        try:
            if self.cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                try:
                    yield
                finally:
                    end.record()
                    self.pairs.append((start, end, tag))
            else:
                began = time.perf_counter()
                try:
                    yield
                finally:
                    self.host.append((time.perf_counter() - began, tag))
        finally:
            self._depth -= 1

    def seconds(self, tag: str | None = None) -> float:
        """The summed spans (of those recorded under ``tag``, when given)."""
        if self.cuda:
            import torch

            torch.cuda.synchronize(self.device)
            return sum(s.elapsed_time(e) for s, e, t in self.pairs if tag is None or t == tag) / 1000
        return sum(d for d, t in self.host if tag is None or t == tag)

    @contextlib.contextmanager
    def around(self, owner: Any, name: str, tag: str = "") -> Iterator[None]:
        """Count every call of ``owner.name`` (a method of a class, patched for the duration) under ``tag``."""
        original = getattr(owner, name)

        def counted(*args: Any, **kwargs: Any) -> Any:
            with self.span(tag):
                return original(*args, **kwargs)

        setattr(owner, name, counted)
        try:
            yield
        finally:
            setattr(owner, name, original)


class Peak:
    """Peak device memory of the enclosed work (None on the CPU)."""

    def __init__(self, device: Any) -> None:
        import torch

        self.device = torch.device(device)
        self.mib: float | None = None

    def __enter__(self) -> Peak:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        return self

    def __exit__(self, *exc: object) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.mib = torch.cuda.max_memory_allocated(self.device) / 2**20


def wait(device: Any) -> None:
    """Let the device finish what was queued (timings end here)."""
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(torch.device(device))


# ------------------------------------------------------------------------------------------------ rows


@dataclass
class Row:
    """One line of the table: a measured rate against its side-by-side baseline."""

    section: str
    what: str
    value: float | None = None
    unit: str = ""
    against: str = ""
    baseline: float | None = None
    peak_mib: float | None = None
    baseline_peak_mib: float | None = None
    busy: float | None = None
    baseline_busy: float | None = None
    note: str = ""
    runs: list[float] = field(default_factory=list)
    baseline_runs: list[float] = field(default_factory=list)
    error: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        """``value / baseline`` (both rates: above 1 is faster)."""
        if self.value is None or not self.baseline:
            return None
        return self.value / self.baseline


@dataclass
class Settings:
    """Sizes of one run: the full check on a GPU, or the tiny mode."""

    device: str
    tiny: bool
    repeats: int
    workers: int
    size: int
    batch: int
    pictures: int
    report_pictures: int
    report_channels: int
    seeds: int
    occluder: int
    stride: int
    positions: int


def settings(args: argparse.Namespace) -> Settings:
    """The sizes for ``args``."""
    if args.tiny:
        return Settings(args.device, True, args.repeats or 1, args.workers or 0, 32, 8, 16, 8, 2, 8, 8, 4, 0)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    workers = args.workers if args.workers is not None else min(8, max(0, cores - 2))
    # 2,048 pictures: 32 batches, so that the reading rows measure workers that keep up, not their start
    return Settings(args.device, False, args.repeats or 3, workers, 224, 64, 2048, 64, 16, 64, 32, 8, 512)


# ------------------------------------------------------------------------------------------------ models


@dataclass
class Net:
    """A model under test: its loaded form, scanned layers, projected layer, and the full classifier."""

    name: str
    loaded: Any
    scan_layers: list[str]
    project_layer: str
    classifier: Any


def _tiny_vgg() -> Any:
    """VGG's shape at toy size: ``features`` (conv-ReLU blocks and max-pools), then pooling and a linear head."""
    from torch import nn

    class TinyVGG(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(3, 8, 3, padding=1),
                nn.ReLU(inplace=True),
                nn.Conv2d(8, 8, 3, padding=1),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2, 2),
                nn.Conv2d(8, 16, 3, padding=1),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2, 2),
                nn.Conv2d(16, 16, 3, padding=1),
                nn.ReLU(inplace=True),
            )
            self.classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))

        def forward(self, x: Any) -> Any:
            return self.classifier(self.features(x))

    return TinyVGG()


def _tiny_resnet() -> Any:
    from torchvision.models.resnet import BasicBlock, ResNet

    return ResNet(BasicBlock, [1, 1, 1, 1], num_classes=10)


def _vgg_names(model: Any) -> dict[str, str]:
    """The paper's names of a VGG's conv layers after their ReLUs (``conv5_3``: ``features.29``); none for others."""
    from torch import nn

    names: dict[str, str] = {}
    features = getattr(model, "features", None)
    if not isinstance(features, nn.Sequential):
        return names
    block, conv = 1, 0
    for i, module in enumerate(features):
        if isinstance(module, nn.MaxPool2d):
            block, conv = block + 1, 0
        elif isinstance(module, nn.Conv2d):
            conv += 1
        elif isinstance(module, nn.ReLU):
            names[f"conv{block}_{conv}"] = f"features.{i}"
    return names


def load_nets(s: Settings) -> list[Net]:
    """VGG16 and ResNet-50 with ``weights=None`` (or their tiny stand-ins), loaded on the device."""
    import torch
    import torchvision

    import deconvviz as dv

    torch.manual_seed(0)
    if s.tiny:
        builders = {"tiny VGG": _tiny_vgg, "tiny ResNet": _tiny_resnet}
    else:
        builders = {
            "VGG16": lambda: torchvision.models.vgg16(weights=None),
            "ResNet-50": lambda: torchvision.models.resnet50(weights=None),
        }
    nets = []
    for name, builder in builders.items():
        model = builder()
        spec = dv.ModelSpec(
            name=name,
            builder=lambda model=model: model,
            preprocessing=dv.Preprocessing(size=s.size),
            aliases=_vgg_names(model),
        )
        loaded = dv.load_model(spec, device=s.device)
        layers = dv.DeconvNet(loaded.module).layers
        if "VGG" in name:
            # every conv layer, after its ReLU (conv1_1 ... conv5_3 for VGG16)
            relus = {f"features.{i}" for i, m in enumerate(loaded.module.features) if isinstance(m, torch.nn.ReLU)}
            scan_layers = [layer for layer in layers if layer in relus]
        else:
            # the end of each stage (the last block's output), and the stem's pooling
            scan_layers = ["maxpool"] + [[n for n in layers if n.startswith(f"layer{i}.")][-1] for i in (1, 2, 3, 4)]
        by_node = {node: alias for alias, node in loaded.layers.items()}
        project = by_node.get(scan_layers[-1], scan_layers[-1])  # conv5_3 for VGG16, the end of layer4 for ResNet
        nets.append(Net(name, loaded, scan_layers, project, loaded.module))
    return nets


# ------------------------------------------------------------------------------------------------ pictures


def make_pictures(folder: Path, count: int, side: int, seed: int = 0) -> Path:
    """``count`` distinct JPEG pictures: random crops, flips and turns of the example photos (noise if none)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    sources = [Image.open(p).convert("RGB") for p in sorted(EXAMPLES.glob("*.jpg"))]
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        if sources:
            picture = sources[i % len(sources)]
            w, h = picture.size
            crop_side = int(min(w, h) * rng.uniform(0.55, 0.95))
            left, top = int(rng.integers(0, w - crop_side + 1)), int(rng.integers(0, h - crop_side + 1))
            crop = picture.crop((left, top, left + crop_side, top + crop_side)).rotate(float(rng.uniform(-20, 20)))
            if rng.random() < 0.5:
                crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        else:
            crop = Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8))
        crop.resize((side, side)).save(folder / f"picture{i:04d}.jpg", quality=90)
    return folder


# ------------------------------------------------------------------------------------------------ speed


def _best(values: list[float]) -> float:
    return max(values)


class _Read:
    """Collate a batch of picture paths into one host tensor (picklable, for workers started by spawn)."""

    def __init__(self, prepare: Callable[[Any], Any]) -> None:
        self.prepare = prepare

    def __call__(self, paths: list[Path]) -> Any:
        import torch

        import deconvviz as dv

        return torch.cat([self.prepare(dv.load_image(p)) for p in paths])


def forward_and_scan(net: Net, folder: Path, s: Settings) -> list[Row]:
    """Plain forward (resident, and read like the scan) against the top-k scan, images per second."""
    import torch

    import deconvviz as dv
    from deconvviz.analysis.topk.scan import host_preprocess, scan

    device = torch.device(s.device)
    paths = sorted(folder.glob("*.jpg"))
    prepare = host_preprocess(net.loaded)
    pictures = torch.cat([prepare(dv.load_image(p)) for p in paths])
    model = net.loaded.module
    on_gpu = device.type == "cuda"

    def forward_resident(busy: Busy) -> float:
        resident = pictures.to(device)  # put there before the clock starts (and counted in this row's memory only)
        wait(device)
        start = time.perf_counter()
        with torch.inference_mode():
            for i in range(0, len(resident), s.batch):
                with busy.span():
                    model(resident[i : i + s.batch])
        wait(device)
        return len(resident) / (time.perf_counter() - start)

    def forward_read(busy: Busy) -> float:
        loader = torch.utils.data.DataLoader(
            paths, batch_size=s.batch, num_workers=s.workers, collate_fn=_Read(prepare), pin_memory=on_gpu
        )
        start = time.perf_counter()
        with torch.inference_mode():
            for batch in loader:
                with busy.span():
                    model(batch.to(device, non_blocking=on_gpu))
        wait(device)
        return len(paths) / (time.perf_counter() - start)

    def scanned(busy: Busy) -> float:
        start = time.perf_counter()
        with busy.around(dv.DeconvNet, "visit_activations"):
            scan(folder, net.loaded, net.scan_layers, k=9, channels=None, batch_size=s.batch, workers=s.workers)
        wait(device)
        return len(paths) / (time.perf_counter() - start)

    kinds = {"resident": forward_resident, "read": forward_read, "scan": scanned}
    rates: dict[str, list[float]] = {k: [] for k in kinds}
    peaks: dict[str, float | None] = {}
    busy: dict[str, float] = {}
    for run in kinds.values():  # warm-up: kernels chosen, workers' first start, caches
        run(Busy(device))
    for _ in range(s.repeats):
        for kind, run in kinds.items():
            clock = Busy(device)
            start = time.perf_counter()
            with Peak(device) as peak:
                rate = run(clock)
            wall = time.perf_counter() - start
            if not rates[kind] or rate > max(rates[kind]):
                peaks[kind], busy[kind] = peak.mib, clock.seconds() / wall
            rates[kind].append(rate)
    layers = f"top 9 of every channel of {len(net.scan_layers)} layers"
    setup = f"batch {s.batch}, {len(paths)} pictures, {s.workers} loader workers"
    return [
        Row(
            "scan",
            f"{net.name}: top-k scan vs forward, pictures read from files ({layers}; {setup})",
            _best(rates["scan"]),
            "images/s",
            "plain forward, same reading",
            _best(rates["read"]),
            peaks["scan"],
            peaks["read"],
            busy["scan"],
            busy["read"],
            runs=rates["scan"],
            baseline_runs=rates["read"],
        ),
        Row(
            "scan",
            f"{net.name}: top-k scan vs forward of pictures already on the device",
            _best(rates["scan"]),
            "images/s",
            "plain forward, resident",
            _best(rates["resident"]),
            peaks["scan"],
            peaks["resident"],
            busy["scan"],
            busy["resident"],
            runs=rates["scan"],
            baseline_runs=rates["resident"],
        ),
    ]


def projections(net: Net, folder: Path, s: Settings) -> Row:
    """Seeds projected in one batched call against a loop of single projections, projections per second."""

    import deconvviz as dv

    picture = sorted(folder.glob("*.jpg"))[0]
    x = net.loaded.preprocess(dv.load_image(picture))
    batched = dv.DeconvNet(net.loaded.module, aliases=net.loaded.layers, max_batch=s.seeds)
    single = dv.DeconvNet(net.loaded.module, aliases=net.loaded.layers, max_batch=1)
    count = batched.activations(x, [net.project_layer])[net.project_layer].shape[1]
    channels = list(range(min(s.seeds, count)))

    def together(busy: Busy) -> float:
        start = time.perf_counter()
        with busy.span():
            batched.project(x, layer=net.project_layer, channel=channels)
        return len(channels) / (time.perf_counter() - start)

    def one_by_one(busy: Busy) -> float:
        start = time.perf_counter()
        for c in channels:
            with busy.span():
                single.project(x, layer=net.project_layer, channel=c)
        return len(channels) / (time.perf_counter() - start)

    return _side_by_side(
        "projection",
        f"{net.name}: {len(channels)} seeds at {_label(net.project_layer)}, one batched call vs {len(channels)} calls",
        "projections/s",
        "loop of single projections",
        together,
        one_by_one,
        s,
    )


def _label(layer: str) -> str:
    """``conv5_3``, or ``layer4 (layer4.2.relu_2)`` for the output of a ResNet stage."""
    stage = layer.split(".")[0]
    return f"{stage} ({layer})" if stage != layer else layer


def _side_by_side(
    section: str,
    what: str,
    unit: str,
    against: str,
    ours: Callable[[Busy], float],
    theirs: Callable[[Busy], float],
    s: Settings,
    **extra: Any,
) -> Row:
    """Best of ``s.repeats`` alternating runs of both, after one warm-up of each."""
    import torch

    device = torch.device(s.device)
    ours(Busy(device))
    theirs(Busy(device))
    row = Row(section, what, unit=unit, against=against, extra=dict(extra))
    for _ in range(s.repeats):
        for mine in (True, False):
            clock = Busy(device)
            start = time.perf_counter()
            with Peak(device) as peak:
                rate = (ours if mine else theirs)(clock)
                wait(device)
            share = clock.seconds() / (time.perf_counter() - start)
            runs = row.runs if mine else row.baseline_runs
            if not runs or rate > max(runs):
                if mine:
                    row.value, row.peak_mib, row.busy = rate, peak.mib, share
                else:
                    row.baseline, row.baseline_peak_mib, row.baseline_busy = rate, peak.mib, share
            runs.append(rate)
    return row


def occlusion(net: Net, s: Settings) -> Row:
    """Occluder positions per second: incremental re-inference against naive re-inference of the classifier."""
    import torch

    from deconvviz.analysis.occlusion import occluder_grid
    from deconvviz.core.graph import trace
    from deconvviz.core.incremental import IncrementalOcclusion, occluded_images

    device = torch.device(s.device)
    model = net.classifier
    graph = trace(model)
    output = next(n for n in graph.nodes if n.op == "output").args[0]
    x = torch.randn(1, 3, s.size, s.size, generator=torch.Generator().manual_seed(0)).to(device)
    rows, cols = occluder_grid(s.size, s.size, s.occluder, s.stride)
    grid = [(i, j) for i in range(len(rows)) for j in range(len(cols))]
    if s.positions:
        grid = grid[max(0, len(grid) // 2 - s.positions // 2) :][: s.positions]
    chunks = [grid[k : k + s.batch] for k in range(0, len(grid), s.batch)]
    outputs: dict[bool, list[Any]] = {}

    def incremental(busy: Busy) -> float:
        start = time.perf_counter()
        got = []
        with torch.inference_mode(), busy.span():
            engine = IncrementalOcclusion(graph, x, [output], rows, cols)
            for chunk in chunks:
                got.append(engine.full(output, engine.run(chunk)[output], len(chunk)))
        wait(device)
        outputs[True] = got
        return len(grid) / (time.perf_counter() - start)

    def naive(busy: Busy) -> float:
        start = time.perf_counter()
        got = []
        with torch.inference_mode():
            for chunk in chunks:
                images = occluded_images(x, [(rows[i], cols[j]) for i, j in chunk])
                with busy.span():
                    got.append(model(images))
        wait(device)
        outputs[False] = got
        return len(grid) / (time.perf_counter() - start)

    row = _side_by_side(
        "occlusion",
        f"{net.name}: {len(grid)} occluder positions ({s.occluder} px at stride {s.stride}, batch {s.batch})",
        "positions/s",
        "naive re-inference",
        incremental,
        naive,
        s,
    )
    a, b = torch.cat(outputs[True]).float(), torch.cat(outputs[False]).float()
    row.extra["max difference relative to the largest output"] = float((a - b).abs().max() / b.abs().max())
    row.note = f"outputs agree to {row.extra['max difference relative to the largest output']:.1e} relative"
    if device.type == "cuda" and torch.backends.cudnn.allow_tf32:
        # TF32 convolutions round to 10-bit mantissas, and the two sides sum their windows in other orders
        row.note += " (TF32 convolutions: about 1e-3 is float32 rounding there)"
    return row


def report(net: Net, folder: Path, out: Path, s: Settings) -> list[Row]:
    """The whole report over the generated pictures, by stage; the busy share of each stage."""
    import torch

    import deconvviz as dv
    from deconvviz.viz.report import build_report

    device = torch.device(s.device)
    clock = Busy(device)
    marks: dict[str, tuple[float, int, int]] = {}

    def progress(stage: str, done: int, total: int) -> None:
        marks[stage] = (time.perf_counter(), done, total)

    def run(target: Path) -> float:
        marks.clear()
        start = time.perf_counter()
        build_report(
            folder,
            target,
            model=net.loaded,
            channels=s.report_channels,
            k=9,
            batch_size=s.batch,
            device=str(device),
            progress=progress,
        )
        wait(device)
        return start

    run(out / "warm-up")
    clock.pairs.clear()
    clock.host.clear()
    with (
        Peak(device) as peak,
        clock.around(dv.DeconvNet, "visit_activations", "scan"),
        clock.around(dv.DeconvNet, "project_units_at", "project"),
    ):
        start = run(out / "report")
    end = time.perf_counter()
    scanned, projected = marks["scan"][0], marks["project"][0]
    spans = {"scan": (start, scanned), "project": (scanned, projected), "write": (projected, end)}
    count = marks["project"][1]
    pictures = marks["scan"][1]
    rows = []
    for stage, (a, b) in spans.items():
        seconds = b - a
        rate, unit = {
            "scan": (pictures / seconds, "images/s"),
            "project": (count / seconds, "projections/s"),
            "write": (count / seconds, "pictures written/s"),
        }[stage]
        rows.append(
            Row(
                "report",
                f"{net.name} report of {pictures} pictures ({s.report_channels} channels per layer, top 9): {stage}",
                rate,
                unit,
                note=f"{seconds:.2f} s, {seconds / (end - start):.0%} of {end - start:.2f} s",
                peak_mib=peak.mib,
                busy=clock.seconds(stage) / seconds if seconds > 0 else None,
                extra={"seconds": seconds, "total seconds": end - start, "projections": count},
            )
        )
    return rows


def speed(s: Settings, out: Path, log: Callable[[str], None], deadline: float = float("inf")) -> list[Row]:
    """Every speed row; a row that fails is kept with its error, rows not started by ``deadline`` are skipped."""
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        root = Path(tmp)
        log("building the models")
        nets = load_nets(s)
        log(f"generating {s.pictures} pictures")
        pictures = make_pictures(root / "pictures", s.pictures, 320 if not s.tiny else 40)
        few = make_pictures(root / "report-pictures", s.report_pictures, 320 if not s.tiny else 40, seed=3)
        jobs: list[tuple[str, Callable[[], Row | list[Row]]]] = []
        for net in nets:
            jobs.append((f"{net.name} forward vs scan", lambda net=net: forward_and_scan(net, pictures, s)))
            jobs.append((f"{net.name} projections", lambda net=net: projections(net, pictures, s)))
            jobs.append((f"{net.name} occlusion", lambda net=net: occlusion(net, s)))
        jobs.append((f"{nets[0].name} report", lambda: report(nets[0], few, root / "reports", s)))
        for label, job in jobs:
            if time.perf_counter() > deadline:
                rows.append(Row(label.split(" ")[-1], label, error="not measured: the run reached --time-limit"))
                continue
            log(label)
            began = time.perf_counter()
            try:
                made = job()
            except Exception as exc:  # a failed row is reported, the others still run
                detail = traceback.format_exc(limit=-3).strip().splitlines()
                made = Row(label.split(" ")[-1], label, error=f"{type(exc).__name__}: {str(exc).strip()[:200]}")
                made.extra["traceback"] = detail
            for row in made if isinstance(made, list) else [made]:
                row.extra.setdefault("measured in s", round(time.perf_counter() - began, 2))
                rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------------ correctness


@dataclass
class Check:
    """One test function's outcome over its parameters."""

    test: str
    what: str
    passed: int = 0
    failed: int = 0
    skipped: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def correctness(s: Settings, out: Path, log: Callable[[str], None]) -> tuple[list[Check], str]:
    """Run the device tests under pytest on ``s.device``; their outcomes by test function, and pytest's last line."""
    xml = out / "correctness.xml"
    marker = "cuda and not slow" if s.tiny else "cuda"
    env = dict(os.environ)
    env["DECONVVIZ_TEST_DEVICES"] = s.device
    if s.device == "cpu":
        env.setdefault("OMP_NUM_THREADS", "1")  # the tiny nets gain nothing from threads on a shared machine
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    command = [sys.executable, "-m", "pytest", "-q", "-m", marker, DEVICE_TESTS, f"--junitxml={xml}"]
    command += ["-p", "no:cacheprovider", "-o", "junit_family=xunit1"]
    log(" ".join(command[2:]))
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=420, check=False)
    (out / "correctness.log").write_text(done.stdout + done.stderr)
    last = (done.stdout.strip().splitlines() or ["(no output)"])[-1]
    if not xml.exists():
        raise CheckError(f"pytest wrote no results ({last}); see {out / 'correctness.log'}")
    if done.returncode not in (0, 1):
        raise CheckError(f"pytest stopped with exit status {done.returncode} ({last}); see {out / 'correctness.log'}")
    return parse_junit(xml), last


def parse_junit(xml: Path) -> list[Check]:
    """Outcomes of a pytest JUnit XML file, by test function (parameters pooled), with recorded properties."""
    checks: dict[str, Check] = {}
    for case in ET.parse(xml).getroot().iter("testcase"):
        name = case.get("name", "")
        function = name.split("[")[0]
        check = checks.setdefault(function, Check(function, TESTS.get(function, function)))
        check.seconds += float(case.get("time", 0) or 0)
        bad = case.find("failure")
        if bad is None:
            bad = case.find("error")
        if bad is not None:
            check.failed += 1
            message = (bad.get("message", "") or "failed").splitlines()
            check.failures.append(f"{name}: {message[0][:200] if message else 'failed'}")
        elif case.find("skipped") is not None:
            check.skipped += 1
        else:
            check.passed += 1
        for prop in case.iter("property"):
            note = f"{prop.get('name')}: {prop.get('value')}"
            if note not in check.notes:
                check.notes.append(note)
    return list(checks.values())


# ------------------------------------------------------------------------------------------------ output


def _fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return ""
    text = f"{value:,.0f}" if value >= 100 else f"{value:.3g}" if value < 10 else f"{value:.1f}"
    return f"{text} {unit}".strip()


def _mib(value: float | None) -> str:
    return "" if value is None else f"{value:,.0f} MiB"


def _share(value: float | None) -> str:
    return "" if value is None else f"{value:.0%}"


def _pair(ours: str, theirs: str) -> str:
    if not theirs:
        return ours
    return f"{ours} / {theirs}" if ours else ""


def table(info: dict[str, Any], checks: list[Check] | None, rows: list[Row] | None, clock: str) -> str:
    """The one Markdown table of the run (and a line saying what was measured where)."""
    where = info.get("gpu") or f"CPU ({info.get('cpu cores')} cores, {info.get('torch threads')} threads)"
    tiny = " (tiny mode)" if info.get("tiny") else ""
    cuda = f", CUDA {info['cuda']}" if info.get("cuda") else ""
    memory = "peak allocated by torch on the GPU" if info.get("gpu") else "not measured on the CPU"
    lines = [
        f"deconvviz gpu-check on {where}, device `{info['device']}`{tiny}, torch {info['torch']}{cuda}; "
        f"device busy: time inside the model's calls ({clock}) over wall time; memory: {memory}.",
        "",
        "| check | measured | against | ratio | peak memory (this / that) | device busy (this / that) |",
        "|---|---|---|---|---|---|",
    ]
    for check in checks or []:
        total = check.passed + check.failed + check.skipped
        verdict = "PASSED" if check.failed == 0 and check.passed > 0 else "FAILED"
        extra = f"; {'; '.join(check.notes)}" if check.notes else ""
        lines.append(f"| correctness: {check.what} | {verdict} {check.passed}/{total}{extra} | CPU, float64 | | | |")
    for row in rows or []:
        if row.error:
            lines.append(f"| {row.what} | ERROR: {row.error} | | | | |")
            continue
        ratio = f"{row.ratio:.2f}x" if row.ratio is not None else ""
        measured = _fmt(row.value, row.unit) + (f" ({row.note})" if row.note else "")
        against = f"{row.against} {_fmt(row.baseline, row.unit)}".strip() if row.against else ""
        lines.append(
            f"| {row.what} | {measured} | {against} | {ratio} | "
            f"{_pair(_mib(row.peak_mib), _mib(row.baseline_peak_mib))} | "
            f"{_pair(_share(row.busy), _share(row.baseline_busy))} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run the check; returns the exit status."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--tiny", action="store_true", help="small nets and sizes (seconds on a CPU)")
    parser.add_argument("--out", type=Path, default=Path("out/gpu-check"), help="folder for the table and JSON")
    parser.add_argument("--repeats", type=int, default=0, help="timed runs of each side (default 3; tiny 1)")
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers of the scan and its baseline")
    parser.add_argument(
        "--time-limit", type=float, default=450, help="seconds after which no further speed row is started"
    )
    parser.add_argument("--skip-correctness", action="store_true")
    parser.add_argument("--skip-speed", action="store_true")
    args = parser.parse_args(argv)
    began = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - began:6.1f} s] {message}", file=sys.stderr, flush=True)

    try:
        require_device(args.device)
    except CheckError as exc:
        print(f"gpu-check: {exc}", file=sys.stderr)
        return 2
    s = settings(args)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    info = {**describe(args.device), "tiny": s.tiny, "settings": asdict(s)}
    clock = Busy(args.device).clock
    checks: list[Check] | None = None
    summary = ""
    rows: list[Row] | None = None
    problems: list[str] = []
    if not args.skip_correctness:
        log("correctness: the device tests against the CPU")
        try:
            checks, summary = correctness(s, out, log)
        except (CheckError, subprocess.TimeoutExpired) as exc:
            problems.append(f"correctness: {exc}")
        else:
            problems += [f for c in checks for f in c.failures]
            if not checks:
                problems.append(f"correctness: no test ran ({summary})")
    if not args.skip_speed:
        log("speed: side by side")
        rows = speed(s, out, log, deadline=began + args.time_limit)
        problems += [f"{r.what}: {r.error}" for r in rows if r.error]
    text = table(info, checks, rows, clock)
    record = {
        **info,
        "busy clock": clock,
        "seconds": round(time.perf_counter() - began, 1),
        "pytest": summary,
        "correctness": [asdict(c) for c in checks or []],
        "speed": [{**asdict(r), "ratio": r.ratio} for r in rows or []],
        "problems": problems,
    }
    (out / "gpu-check.md").write_text(text)
    (out / "gpu-check.json").write_text(json.dumps(record, indent=2) + "\n")
    print(text)
    for problem in problems:
        print(f"gpu-check: {problem}", file=sys.stderr)
    log(f"table and JSON in {out}/ (gpu-check.md, gpu-check.json)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
