"""Every engine path on a device against the CPU, in float64 (the ``cuda`` marker; ``make gpu-check`` runs them).

The tests take their device from a fixture: ``cpu``, plus ``cuda`` where CUDA is available, or the list in
``$DECONVVIZ_TEST_DEVICES`` (``make gpu-check`` sets ``cuda``). On the CPU they run the same code paths against
the same references, so the host-to-device moves (pictures to the model's device, switches, trackers and
reconstructions back to the host) are exercised on every machine. References are computed on the CPU: the
autograd oracles of ``reference.py``, a brute-force top-k, naive re-inference. Float64 on two devices agrees to
about 1e-15 relative; the tolerances leave a wide margin and still catch any wrong pixel or switch.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_ALIASES, make_tiny_vgg
from PIL import Image
from reference import method_reference, relative_error
from test_occlusion import MODELS as OCCLUSION_MODELS
from test_occlusion import seeded
from test_rules import CASES as RULE_CASES
from test_rules import _seeded as rule_seeded
from test_search import Stand, _brute_force, _write_images
from torch import nn

import deconvviz as dv

pytestmark = pytest.mark.cuda

TOLERANCE = 1e-10
METHODS = ("deconvnet", "guided", "gradient")
TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


def devices() -> list[str]:
    """The devices under test: ``$DECONVVIZ_TEST_DEVICES`` (comma-separated), else the CPU and CUDA if present."""
    chosen = os.environ.get("DECONVVIZ_TEST_DEVICES", "").strip()
    if chosen:
        return [d.strip() for d in chosen.split(",") if d.strip()]
    return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]


@pytest.fixture(params=devices(), scope="module")
def device(request: pytest.FixtureRequest) -> torch.device:
    where = torch.device(request.param)
    if where.type == "cuda" and not torch.cuda.is_available():
        pytest.fail("DECONVVIZ_TEST_DEVICES asks for CUDA, but torch.cuda.is_available() is false")
    return where


# ------------------------------------------------------------------------------------------------ nets


class Opaque(nn.Module):
    """A block torch.fx cannot trace into (control flow on a tensor's value), with no rule of its own."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if bool(y.abs().sum() > 0):  # decided on a value: the tracer keeps this block whole
            y = F.relu(y) * torch.sigmoid(y.mean((2, 3), keepdim=True))
        return y + x


class WithOpaque(nn.Module):
    """conv, ReLU, an overlapping max-pool, the opaque block, conv: the autograd fallback between traced ops."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.block = Opaque()
        self.head = nn.Conv2d(4, 6, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.stem(x)))
        return torch.relu(self.head(self.block(x)))


# name -> (builder of the float64 CPU net, input side, submodule whose output the oracle seeds, its node name)
NETS: dict[str, tuple[Callable[[], nn.Module], int, str, str]] = {
    "tiny_vgg": (lambda: make_tiny_vgg(dtype=torch.float64), 16, "features", "features.7"),
    "overlapping": (OCCLUSION_MODELS["overlapping"], 21, "avg", "avg"),
    "residual": (OCCLUSION_MODELS["residual"], 12, "b", "b.2"),
    "concat": (OCCLUSION_MODELS["concat"], 19, "fire2", "fire2.cat"),
    "opaque": (lambda: seeded(WithOpaque().double()), 14, "head", "head"),
}


# The nets of the rule tests too (conv variants, functional forms, every pool, branches): one op family each.
ENGINE_NETS: dict[str, tuple[Callable[[], nn.Module], int]] = {
    **{name: (builder, side) for name, (builder, side, _, _) in NETS.items()},
    **{
        f"rules-{case}": (lambda cls=cls: rule_seeded(cls().double()), side)
        for case, (cls, side, _) in RULE_CASES.items()
    },
}


def _input(side: int, seed: int = 3) -> torch.Tensor:
    return torch.randn(1, 3, side, side, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def _on(model: nn.Module, device: torch.device) -> nn.Module:
    return copy.deepcopy(model).to(device)


# ------------------------------------------------------------------------------------------------ engine


@pytest.mark.parametrize("name", sorted(ENGINE_NETS))
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.filterwarnings("ignore:Using padding=.same. with even kernel")
def test_every_layer_projects_as_on_the_cpu(device: torch.device, name: str, method: str) -> None:
    builder, side = ENGINE_NETS[name]
    cpu = builder()
    x = _input(side)  # left on the CPU: the engine moves it to the model's device
    here, there = dv.DeconvNet(cpu), dv.DeconvNet(_on(cpu, device))
    if name == "opaque":
        assert "block" in here.graph.opaque  # the fallback is what this net is about
    for layer in here.layers_for(method):
        act = here.activations(x, [layer])[layer]
        if act.dim() < 2:
            continue
        channels = sorted({0, act.shape[1] // 2, act.shape[1] - 1})
        for mode in ("max", "map"):
            want = here.project(x, layer=layer, channel=channels, mode=mode, method=method)
            got = there.project(x, layer=layer, channel=channels, mode=mode, method=method)
            assert got.image.device.type == "cpu"
            assert got.activations.device.type == "cpu"
            assert got.positions == want.positions, (name, layer, mode)  # the same switches and strongest units
            assert relative_error(got.activations, want.activations) <= TOLERANCE
            assert relative_error(got.image, want.image) <= TOLERANCE, (name, method, layer, mode)


@pytest.mark.parametrize("name", sorted(NETS))
@pytest.mark.parametrize("method", METHODS)
def test_projections_equal_the_autograd_oracle(device: torch.device, name: str, method: str) -> None:
    builder, side, module, node = NETS[name]
    cpu = builder()
    x = _input(side)
    net = dv.DeconvNet(_on(cpu, device))
    act = net.activations(x, [node])[node].cpu()
    channels = act[0].flatten(1).amax(1).argsort(descending=True)[:3].tolist()  # three that fired
    seeds = torch.zeros((len(channels), *act.shape[1:]), dtype=torch.float64)
    for i, c in enumerate(channels):
        seeds[i, c] = act[0, c]
    want = method_reference(cpu, x, module, seeds, method)  # on the CPU, by autograd through the model itself
    assert want.abs().max() > 0, "nothing reached the input: the comparison could not fail"
    got = net.project(x, layer=node, channel=channels, mode="map", method=method)
    assert relative_error(got.image, want) <= TOLERANCE, (name, method)


def test_batched_units_use_each_images_own_switches(device: torch.device) -> None:
    # project_units_at: several images, several layers, one capture; the batched mirror on the device equals the CPU's.
    cpu = OCCLUSION_MODELS["overlapping"]()
    x = torch.randn(3, 3, 21, 21, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    units = {"pool1": [(0, 1, 2, 3), (2, 0, 4, 4), (1, 3, 0, 5)], "avg": [(1, 2, 1, 1), (2, 5, 0, 2)]}
    want = dv.DeconvNet(cpu).project_units_at(x, units)
    got = dv.DeconvNet(_on(cpu, device), max_batch=2).project_units_at(x, units)
    for layer in units:
        assert got[layer].device == device or got[layer].device.type == device.type
        assert want[layer].abs().sum() > 0
        assert relative_error(got[layer].cpu(), want[layer]) <= TOLERANCE, layer


# ------------------------------------------------------------------------------------------------ top-k


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("device-images")
    _write_images(root, 11)
    (root / "broken.jpg").write_bytes(b"not a jpeg")
    return root


def test_streaming_top_k_equals_the_cpu_brute_force(device: torch.device, folder: Path) -> None:
    stand = Stand(make_tiny_vgg(dtype=torch.float64))
    on_device = Stand(_on(stand.module, device))  # its pictures are prepared on the CPU and moved by the scan
    result = dv.top_k(folder, on_device, layers=["conv2", "pool2"], k=3, batch_size=4)
    net = dv.DeconvNet(stand.module, aliases=stand.layers)
    for layer in ["conv2", "pool2"]:
        expected = _brute_force(stand, folder, layer, 3)
        assert result.channels(layer) == sorted(expected)
        for channel, hits in expected.items():
            got = result.hits[layer][channel]
            assert [(h.image, h.position) for h in got] == [e[1:] for e in hits], (layer, channel)
            assert np.allclose([h.value for h in got], [e[0] for e in hits], rtol=1e-12, atol=0)
            for hit in got:
                x = stand.preprocess(Image.open(folder / hit.image))
                full = net.project(x, layer=layer, channel=channel, position=hit.position).image[0]
                top, left, bottom, right = hit.box
                assert hit.reconstruction.device.type == "cpu"
                assert relative_error(hit.reconstruction, full[:, top:bottom, left:right]) <= TOLERANCE


def test_index_tensors_reach_the_device_without_waiting_for_it(device: torch.device) -> None:
    from deconvviz.core.seeds import index_tensor

    work = torch.randn(2048, 2048, generator=torch.Generator().manual_seed(0))
    queued = work.to(device) * 2 + 1  # still running on a GPU when the indices are sent
    index = index_tensor([5, 0, 3], device)
    assert index.device.type == device.type
    assert index.dtype == torch.long
    assert index.tolist() == [5, 0, 3]
    expected = (work * 2 + 1).index_select(0, torch.tensor([5, 0, 3]))  # exact: elementwise, rounded alike
    assert torch.equal(queued.index_select(0, index).cpu(), expected)


def test_loader_workers_read_pictures_on_the_host(device: torch.device, folder: Path) -> None:
    # A loaded model's preprocess puts a picture on its device; the scan's DataLoader workers (forked processes,
    # where CUDA cannot start) must prepare pictures on the host instead, and the batch crosses to the device once.
    dv.register_model(
        dv.ModelSpec(name="tiny-workers", builder=make_tiny_vgg, preprocessing=dv.Preprocessing(size=32)),
        replace=True,
    )
    loaded = dv.load_model("tiny-workers", device=str(device))
    from deconvviz.analysis.topk.scan import host_preprocess

    picture = Image.open(next(iter(sorted(folder.rglob("*.png")))))
    assert host_preprocess(loaded)(picture).device.type == "cpu"
    assert loaded.preprocess(picture).device.type == device.type
    arguments = {"layers": ["features.3", "features.7"], "k": 2, "channels": "first3", "batch_size": 3}
    read_here = dv.top_k(folder, loaded, **arguments)  # type: ignore[arg-type]
    read_by_workers = dv.top_k(folder, loaded, workers=2, **arguments)  # type: ignore[arg-type]
    assert read_by_workers.to_dict() == read_here.to_dict()
    assert len(read_here.skipped) == 1  # broken.jpg


def test_a_scans_pictures_can_go_to_workers_started_by_spawn(folder: Path, tmp_path: Path) -> None:
    # Python 3.14 starts DataLoader workers by forkserver on Linux (spawn elsewhere): what they get is pickled.
    import pickle

    from deconvviz.analysis.topk.scan import _Images, host_preprocess
    from deconvviz.io.sources import image_source

    dv.register_model(dv.ModelSpec(name="tiny-pickled", builder=make_tiny_vgg), replace=True)
    prepare = host_preprocess(dv.load_model("tiny-pickled"))
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(str(p) for p in sorted(folder.rglob("*.png"))))
    sources = [image_source(folder), image_source(folder, sample=4, seed=1), image_source(listing)]
    for source in sources:
        again = pickle.loads(pickle.dumps(_Images(source, prepare)))
        assert again.source.names == source.names
        index, x, error = again[1]
        assert index == 1
        assert error is None
        assert torch.equal(x, source.prepare(1, prepare))


# ------------------------------------------------------------------------------------------------ occlusion


@pytest.mark.parametrize("name", sorted(OCCLUSION_MODELS))
def test_incremental_occlusion_equals_naive_reinference(device: torch.device, name: str) -> None:
    from deconvviz.analysis.occlusion import occluder_grid
    from deconvviz.core.graph import trace
    from deconvviz.core.incremental import IncrementalOcclusion, occluded_images, run_graph

    cpu = OCCLUSION_MODELS[name]()
    model = _on(cpu, device)
    graph = trace(model)
    side, size, stride = 20, 6, 3
    x = _input(side).to(device)
    nodes = [n for n in graph.nodes if n in graph.carries and n is not graph.input and n.op != "output"]
    rows, cols = occluder_grid(side, side, size, stride)
    grid = [(i, j) for i in range(len(rows)) for j in range(len(cols))]
    boxes = [(rows[i], cols[j]) for i, j in grid]
    with torch.inference_mode():
        engine = IncrementalOcclusion(graph, x, nodes, rows, cols)
        naive = run_graph(graph, occluded_images(x, boxes), nodes)  # on the device
        on_cpu = cpu(occluded_images(x.cpu(), boxes))
        output = nodes[-1]
        for start in range(0, len(grid), 9):
            chunk = grid[start : start + 9]
            got = engine.run(chunk)
            for node in nodes:
                full = engine.full(node, got[node], len(chunk))
                assert full.device.type == device.type, node.name
                assert relative_error(full, naive[node][start : start + len(chunk)]) <= TOLERANCE, (name, node.name)
            final = engine.full(output, got[output], len(chunk)).cpu()
            assert relative_error(final, on_cpu[start : start + len(chunk)]) <= TOLERANCE, name


def test_occlusion_result_equals_the_cpus(device: torch.device, folder: Path) -> None:
    dv.register_model(
        dv.ModelSpec(
            name="tiny-device",
            builder=lambda: make_tiny_vgg(dtype=torch.float64),
            preprocessing=dv.Preprocessing(size=32),
            aliases=TINY_ALIASES,
            labels=[f"class {i}" for i in range(5)],
        ),
        replace=True,
    )
    picture = next(iter(sorted(folder.rglob("*.png"))))
    results = {}
    for where in ("cpu", str(device)):
        loaded = dv.load_model("tiny-device", device=where)
        x = loaded.preprocess(picture).cpu().double()  # a CPU tensor: occlusion moves it to the model
        results[where] = dv.occlusion(
            x, model=loaded, layer="conv3", occluder=8, stride=4, batch_size=7, data=folder, k=2
        )
    a, b = results["cpu"], results[str(device)]
    assert b.activation.device.type == "cpu"  # results hold host tensors, whatever the device
    assert (a.channel, a.target, a.grid) == (b.channel, b.target, b.grid)
    assert relative_error(b.activation, a.activation) <= TOLERANCE
    assert relative_error(b.probability, a.probability) <= TOLERANCE
    assert torch.equal(torch.as_tensor(b.labels), torch.as_tensor(a.labels))
    assert a.projection is not None
    assert b.projection is not None
    assert relative_error(b.projection.image, a.projection.image) <= TOLERANCE
    # the map in other pictures: the same hits, projected on the device, handed back on the host
    assert len(a.others) == len(b.others) == 2
    for mine, theirs in zip(b.others, a.others, strict=True):
        assert (mine.image, mine.position, mine.box) == (theirs.image, theirs.position, theirs.box)
        assert mine.value == pytest.approx(theirs.value, rel=TOLERANCE)
        assert mine.reconstruction.device.type == "cpu"
        assert relative_error(mine.reconstruction, theirs.reconstruction) <= TOLERANCE
        assert np.array_equal(mine.patch, theirs.patch)


# ------------------------------------------------------------------------------------------------ torchrun


def test_ranks_share_the_gpus_in_turn_and_the_backend_can_be_chosen(monkeypatch) -> None:
    from deconvviz.analysis.topk import distributed

    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    for rank, gpu in ((0, "cuda:0"), (1, "cuda:1"), (2, "cuda:0")):  # three processes on two GPUs
        monkeypatch.setenv("LOCAL_RANK", str(rank))
        assert distributed.rank_device("cuda") == gpu
    assert distributed.rank_device("cpu") == "cpu"
    assert distributed.rank_device("cuda:1") == "cuda:1"  # a GPU named by the caller is kept

    monkeypatch.delenv(distributed.BACKEND_VARIABLE, raising=False)
    assert distributed.backend_for("cuda:0") == "nccl"
    assert distributed.backend_for("cpu") == "gloo"
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "3")  # three processes on two GPUs: NCCL would refuse the third
    monkeypatch.setenv("RANK", "0")
    with pytest.warns(UserWarning, match="3 processes share 2 GPU.s. on this machine .* gloo gathers the results"):
        assert distributed.backend_for("cuda:0") == "gloo"
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert distributed.backend_for("cuda:0") == "nccl"
    monkeypatch.setenv(distributed.BACKEND_VARIABLE, " Gloo ")
    assert distributed.backend_for("cuda:0") == "gloo"
    monkeypatch.setenv(distributed.BACKEND_VARIABLE, "nccl")
    with pytest.raises(ValueError, match="DECONVVIZ_DIST_BACKEND=nccl needs the scan on CUDA, not on cpu: use gloo"):
        distributed.backend_for("cpu")
    monkeypatch.setenv(distributed.BACKEND_VARIABLE, "mpi")
    with pytest.raises(ValueError, match="DECONVVIZ_DIST_BACKEND='mpi' is not a backend: use nccl or gloo"):
        distributed.backend_for("cuda")


_SCAN = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, {tests!r})
    import torch
    from conftest import TINY_ALIASES, make_tiny_vgg
    import deconvviz as dv
    from deconvviz.analysis.topk import distributed
    from deconvviz.analysis.topk.scan import project_hits, scan

    dv.register_model(dv.ModelSpec(name="tiny-ranks", builder=lambda: make_tiny_vgg(dtype=torch.float64),
                                   preprocessing=dv.Preprocessing(size=32), aliases=TINY_ALIASES), replace=True)
    found = scan(sys.argv[1], "tiny-ranks", layers=["conv2", "conv3"], k=3, batch_size=3, device=sys.argv[2])
    hits = project_hits(found, 4)
    if found.ranks.rank == 0:
        backend = torch.distributed.get_backend() if found.ranks.spread else "none"
        where = str(found.net.model.features[0].weight.device)
        out = {{"backend": str(backend), "world": found.ranks.world, "device": where,
               "hits": {{layer: {{str(c): [[h.image, list(h.position), h.value, h.reconstruction.tolist()] for h in hs]
                                for c, hs in chans.items()}} for layer, chans in hits.items()}}}}
        with open(sys.argv[3], "w") as f:
            json.dump(out, f)
    distributed.shutdown()
    """
)


_CAUSES = ("Duplicate GPU", "ncclInvalidUsage", "NCCL error", "DistBackendError", "ProcessGroupNCCL")
"""Words of the line that says why a process group failed, among torchrun's own lines about its errors."""


def _why(stderr: str) -> str:
    """The line of a failed run's stderr that says what went wrong (not torchrun's pointer to its error docs)."""
    lines = [line.strip() for line in stderr.splitlines() if "errors.html" not in line and line.strip()]
    for words in (_CAUSES, ("Error", "error")):
        found = [line for line in lines if any(word in line for word in words)]
        if found:
            return found[-1]
    return stderr.strip()[-300:]


def test_a_failed_runs_reason_is_its_cause_not_torchruns_pointer_to_its_docs() -> None:
    stderr = "\n".join(
        [
            "[rank1]: torch.distributed.DistBackendError: NCCL error in: ProcessGroupNCCL.cpp:1970, invalid usage",
            "[rank1]: ncclInvalidUsage: Duplicate GPU detected : rank 1 and rank 0 both on CUDA device 1000",
            "torch.distributed.elastic.multiprocessing.errors.ChildFailedError:",
            "  traceback : To enable traceback see: https://pytorch.org/docs/stable/elastic/errors.html",
        ]
    )
    assert _why(stderr).endswith("Duplicate GPU detected : rank 1 and rank 0 both on CUDA device 1000")
    assert _why("ValueError: bad thing\n") == "ValueError: bad thing"
    assert _why("something else") == "something else"


def _run_scan(
    command: list[str], out: Path, env: dict[str, str], timeout: int = 240
) -> tuple[dict[str, object] | None, str]:
    # a session of its own, so that a timeout ends torchrun's processes too (they would hold the GPU)
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        _, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        return None, f"timed out after {timeout} s"
    if process.returncode != 0 or not out.exists():
        return None, _why(stderr)
    return json.loads(out.read_text()), ""


@pytest.mark.slow  # three fresh processes that import torch: some 20 s on a busy 2-core machine
def test_two_processes_on_one_device_give_the_one_process_hits(
    device: torch.device, tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    folder = tmp_path / "photos"
    rng = np.random.default_rng(4)
    folder.mkdir()
    for i in range(17):
        Image.fromarray(rng.integers(0, 256, (36, 36, 3), dtype=np.uint8)).save(folder / f"img{i:03d}.png")
    script = tmp_path / "scan.py"
    script.write_text(_SCAN.format(tests=str(TESTS)))
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")}
    env.pop("DECONVVIZ_DIST_BACKEND", None)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    env["GLOO_SOCKET_IFNAME"] = "lo"
    where = device.type  # under torchrun, "cuda" is each rank's own GPU (both share GPU 0 on a one-GPU machine)
    one, why = _run_scan(
        [sys.executable, str(script), str(folder), where, str(tmp_path / "one.json")], tmp_path / "one.json", env
    )
    assert one is not None, why
    run = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--local-addr",
        "127.0.0.1",
        "--nproc-per-node=2",
    ]
    command = [*run, str(script), str(folder), where, str(tmp_path / "two.json")]
    note, two = "", None
    if where == "cuda":  # NCCL asked for by name: a bounded wait, in case two ranks on one GPU hang rather than fail
        two, why = _run_scan(command, tmp_path / "two.json", {**env, "DECONVVIZ_DIST_BACKEND": "nccl"}, timeout=120)
        if two is None:
            note = f"NCCL failed ({why[:160]}); deconvviz's own choice then"
    if two is None:  # deconvviz's own choice: gloo on the CPU, and on a GPU shared by both processes
        two, why = _run_scan(command, tmp_path / "two.json", env)
    assert two is not None, why
    record_property("backend", f"{two['backend']}{'; ' + note if note else ''}")
    assert two["world"] == 2
    assert one["world"] == 1
    assert str(two["device"]).startswith(where)
    assert str(one["device"]).startswith(where)
    assert one["hits"].keys() == two["hits"].keys()
    for layer, channels in one["hits"].items():
        for channel, hits in channels.items():
            theirs = two["hits"][layer][channel]
            assert [h[:2] for h in hits] == [h[:2] for h in theirs], (layer, channel)
            for a, b in zip(hits, theirs, strict=True):
                assert abs(a[2] - b[2]) <= 1e-12 * abs(a[2])
                assert relative_error(torch.tensor(b[3]), torch.tensor(a[3])) <= TOLERANCE
