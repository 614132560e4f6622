"""Scans at data-set scale: image sources, resumable state, shards merged as in one process, torchrun."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_ALIASES, make_tiny_vgg, register_tiny_model
from PIL import Image

import deconvviz as dv
from deconvviz.analysis.topk.distributed import Ranks, batches
from deconvviz.analysis.topk.scan import result_of, scan, top_k
from deconvviz.analysis.topk.state import StateError, load_state, state_file
from deconvviz.analysis.topk.tracker import TopKTracker
from deconvviz.io.atomic import MARKER
from deconvviz.io.sources import SearchError, image_source
from deconvviz.viz.report import build_report, scan_state_folder

MODEL = "tiny-scale"
TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


@pytest.fixture(scope="module", autouse=True)
def tiny_model() -> None:
    register_tiny_model(MODEL)


def _photos(
    folder: Path, count: int, seed: int = 0, duplicates: dict[int, int] | None = None, classes: int = 3
) -> list[Path]:
    """``count`` random pictures in class folders; ``duplicates[i] = j``: picture ``i`` is a copy of ``j``."""
    rng = np.random.default_rng(seed)
    pixels = [rng.integers(0, 256, (36, 36, 3), dtype=np.uint8) for _ in range(count)]
    for copy, original in (duplicates or {}).items():
        pixels[copy] = pixels[original]
    paths = []
    for i, array in enumerate(pixels):
        sub = folder / f"n{i % classes:08d}"
        sub.mkdir(parents=True, exist_ok=True)
        path = sub / f"img{i:03d}.png"
        Image.fromarray(array).save(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("scale")
    _photos(folder, 21)
    (folder / "n00000001" / "broken.png").write_bytes(b"not a png")
    return folder


def _hits(result: dv.TopKResult) -> dict[str, object]:
    return result.to_dict()


def _same_pixels(a: dv.TopKResult, b: dv.TopKResult) -> None:
    for layer in a.layers:
        for channel, hits in a.hits[layer].items():
            for x, y in zip(hits, b.hits[layer][channel], strict=True):
                assert torch.equal(x.reconstruction, y.reconstruction)
                assert torch.equal(x.patch, y.patch)


# ------------------------------------------------------------------------------------------------ sources


def test_folder_tree_list_file_and_dataset(photos: Path, tmp_path: Path) -> None:
    tree = image_source(photos)
    assert tree.names[:4] == [f"n00000000/img{i:03d}.png" for i in (0, 3, 6, 9)]
    assert len(tree) == 22  # 21 pictures and the broken file (it is skipped when read)

    listing = tmp_path / "val.txt"
    absolute = photos / "n00000002" / "img005.png"
    listing.write_text(f"# a comment\n{photos.name}/n00000001/img004.png\n\n{absolute}\n")
    (tmp_path / photos.name).symlink_to(photos)
    listed = image_source(listing)
    assert listed.names == [f"{photos.name}/n00000001/img004.png", str(absolute)]
    assert listed.paths == [tmp_path / photos.name / "n00000001" / "img004.png", absolute]

    files = tree.paths
    assert files is not None

    class Pictures(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 12

        def __getitem__(self, i: int) -> tuple[Image.Image, int]:
            return Image.open(files[i]), i % 3  # broken.png (item 7) raises, and is skipped

    from_dataset = top_k(Pictures(), MODEL, layers=["conv2"], k=2, channels="first2", batch_size=4)
    from_folder = top_k(photos, MODEL, layers=["conv2"], k=2, channels="first2", batch_size=4, limit=12)
    assert from_dataset.images[:3] == ("#00", "#01", "#02")
    assert [image for image, _ in from_dataset.skipped] == ["#07"]
    for channel, hits in from_folder.hits["conv2"].items():
        assert [h.value for h in hits] == [h.value for h in from_dataset.hits["conv2"][channel]]


def test_list_file_errors(tmp_path: Path) -> None:
    listing = tmp_path / "list.txt"
    listing.write_text("missing.jpg\n")
    with pytest.raises(SearchError, match=r"1 file\(s\) in the image list .* do not exist, the first: 'missing.jpg'"):
        image_source(listing)
    listing.write_text("# nothing\n\n")
    with pytest.raises(SearchError, match="names no images"):
        image_source(listing)
    with pytest.raises(SearchError, match="cannot scan a int"):
        image_source(3)


def test_limit_and_seeded_sample(photos: Path) -> None:
    everything = image_source(photos).names
    assert image_source(photos, limit=5).names == everything[:5]
    first = image_source(photos, sample=6, seed=1).names
    assert first == image_source(photos, sample=6, seed=1).names
    assert first != image_source(photos, sample=6, seed=2).names
    assert len(first) == 6
    assert first == sorted(first, key=everything.index)
    assert (
        image_source(photos, limit=10, sample=3, seed=0).names
        == image_source(image_source(photos, limit=10), sample=3, seed=0).names
    )
    with pytest.raises(SearchError, match="sample must be a positive number"):
        image_source(photos, sample=0)


# ------------------------------------------------------------------------------------------------ shards


def test_shards_hold_the_same_batches_whatever_the_number_of_processes() -> None:
    one = batches(23, 4, Ranks())
    for world in (2, 3, 7):
        shards = [batches(23, 4, Ranks(rank=r, world=world)) for r in range(world)]
        together = sorted((b for shard in shards for b in shard), key=lambda b: b[0])
        assert together == one


def test_merged_trackers_equal_one_tracker_ties_included() -> None:
    # Values are exact in float64 and built with ties: equal values in several shards, across the k boundary.
    rng = np.random.default_rng(0)
    values = rng.integers(0, 4, size=(40, 3, 5)).astype(np.float64)  # image, channel, position
    everything = TopKTracker(3, 4, (5,))
    parts = [TopKTracker(3, 4, (5,)) for _ in range(3)]
    for start in range(0, 40, 4):  # batches of 4 dealt out to three shards, as a three-process scan does
        batch = torch.from_numpy(values[start : start + 4])
        index = torch.arange(start, start + 4)
        everything.update(batch, index)
        parts[(start // 4) % 3].update(batch, index)
    merged = TopKTracker.merged(parts)
    assert torch.equal(merged.values, everything.values)
    assert torch.equal(merged.images, everything.images)
    assert torch.equal(merged.positions, everything.positions)
    ties = (everything.values[:, :-1] == everything.values[:, 1:]).sum()
    assert ties > 0  # the data does test the tie rule


def test_merging_with_an_empty_shard_and_fewer_images_than_k() -> None:
    a, empty = TopKTracker(1, 3), TopKTracker(1, 3)
    a.update(torch.tensor([[[2.0]], [[2.0]]]), torch.tensor([5, 9]))
    merged = TopKTracker.merged([empty, a])
    assert merged.images.tolist() == [[5, 9, -1]]


def test_one_capture_for_several_layers_equals_one_per_layer() -> None:
    net = dv.DeconvNet(make_tiny_vgg(dtype=torch.float64))
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    units = {"features.3": [(0, 1, 2, 3), (1, 0, 5, 5)], "features.6": [(1, 2, 1, 1)]}
    together = net.project_units_at(x, units)
    for layer, wanted in units.items():
        assert torch.equal(together[layer], net.project_units(x, layer, wanted))
        assert together[layer].abs().sum() > 0


# ------------------------------------------------------------------------------------------------ resume

_KILLED = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {tests!r})
    from conftest import register_tiny_model
    register_tiny_model({model!r})
    import deconvviz as dv

    def slowly(stage, done, total):
        if stage == "scan":
            time.sleep(0.06)  # room for the kill to land anywhere in the scan

    dv.top_k(sys.argv[1], {model!r}, layers=["conv2", "conv3"], k=3, channels="first4", batch_size=2,
             state=sys.argv[2], save_every=0, progress=slowly)
    """
)


@pytest.mark.slow  # a fresh process that imports torch: some 10-20 s on a busy 2-core machine
def test_a_scan_killed_at_a_random_point_and_resumed_equals_an_uninterrupted_one(photos, tmp_path) -> None:
    state = tmp_path / "state"
    script = _KILLED.format(tests=str(TESTS), model=MODEL)
    seed = int.from_bytes(os.urandom(4), "little")
    delay = random.Random(seed).uniform(0.0, 0.5)  # 11 batches x >= 0.06 s are left after the first save
    child = subprocess.Popen([sys.executable, "-c", script, str(photos), str(state)], env=_env(threads=None))
    saved = state_file(state, 0, 1)
    deadline = time.monotonic() + 120
    while not saved.exists() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(delay)
    child.send_signal(signal.SIGKILL)
    assert child.wait() == -signal.SIGKILL, f"the scan ended before the kill (seed {seed})"
    done = torch.load(saved, weights_only=True)["batches_done"]
    assert 1 <= done < 11, (done, seed)

    arguments = {"layers": ["conv2", "conv3"], "k": 3, "channels": "first4", "batch_size": 2}
    found = scan(photos, MODEL, **arguments, state=state, resume=True)  # type: ignore[arg-type]
    assert found.resumed == 2 * done
    resumed = result_of(found, 3, 2)
    whole = top_k(photos, MODEL, **arguments)  # type: ignore[arg-type]
    assert _hits(resumed) == _hits(whole), f"seed {seed}, killed after {done} batches"
    _same_pixels(resumed, whole)
    assert load_state(saved, found_fingerprint(state)) is not None


def test_a_scan_stopped_at_a_random_batch_and_resumed_equals_an_uninterrupted_one(photos, tmp_path) -> None:
    seed = int.from_bytes(os.urandom(4), "little")
    stop = random.Random(seed).randrange(1, 8)  # 8 batches of 3 in all

    def stopping(stage: str, done: int, total: int) -> None:
        if stage == "scan" and done >= 3 * stop:
            raise KeyboardInterrupt

    arguments = {"layers": ["conv1", "conv3"], "k": 2, "channels": "first3", "batch_size": 3}
    state = tmp_path / "state"
    with pytest.raises(KeyboardInterrupt):
        scan(photos, MODEL, **arguments, state=state, save_every=0, progress=stopping)  # type: ignore[arg-type]
    found = scan(photos, MODEL, **arguments, state=state, resume=True)  # type: ignore[arg-type]
    assert found.resumed == 3 * stop, seed
    whole = top_k(photos, MODEL, **arguments)  # type: ignore[arg-type]
    assert _hits(result_of(found, 2, 3)) == _hits(whole), f"seed {seed}"


def test_a_state_written_with_the_earlier_version_key_still_resumes(photos, tmp_path) -> None:
    def stopping(stage: str, done: int, total: int) -> None:
        if stage == "scan" and done >= 6:
            raise KeyboardInterrupt

    arguments = {"layers": ["conv2"], "k": 2, "channels": "first3", "batch_size": 3}
    state = tmp_path / "state"
    with pytest.raises(KeyboardInterrupt):
        scan(photos, MODEL, **arguments, state=state, save_every=0, progress=stopping)  # type: ignore[arg-type]
    saved = state_file(state, 0, 1)
    payload = torch.load(saved, weights_only=True)
    assert payload["schema_version"] == 1
    assert payload["tool"] == "deconvviz"
    # the earlier release wrote {"version": 1, ...} and none of the header's keys
    old = {key: value for key, value in payload.items() if key not in ("tool", "kind", "schema_version")}
    torch.save({"version": 1, **old}, saved)
    found = scan(photos, MODEL, **arguments, state=state, resume=True)  # type: ignore[arg-type]
    assert found.resumed == payload["batches_done"] * 3 > 0
    assert _hits(result_of(found, 2, 3)) == _hits(top_k(photos, MODEL, **arguments))  # type: ignore[arg-type]


def found_fingerprint(state: Path) -> dict[str, object]:
    return torch.load(state_file(state, 0, 1), weights_only=True)["fingerprint"]


def test_a_state_from_other_arguments_or_another_model_is_refused(photos, tmp_path) -> None:
    state = tmp_path / "state"
    top_k(photos, MODEL, layers=["conv2"], k=3, channels="first2", state=state, save_every=0)
    with pytest.raises(StateError) as refused:
        top_k(photos, MODEL, layers=["conv2"], k=4, channels="first2", state=state, resume=True)
    message = str(refused.value)
    assert "\n" not in message
    assert "is from another scan (k: 3 there, 4 now); give that scan's arguments to go on from it" in message
    with pytest.raises(StateError, match="layers"):
        top_k(photos, MODEL, layers=["conv3"], k=3, channels="first2", state=state, resume=True)
    with pytest.raises(StateError, match="images"):
        top_k(photos, MODEL, layers=["conv2"], k=3, channels="first2", state=state, resume=True, limit=5)
    with pytest.raises(StateError, match="inside"):  # ranked over other units
        top_k(photos, MODEL, layers=["conv2"], k=3, channels="first2", state=state, resume=True, inside=True)
    with pytest.raises(StateError, match="channels"):  # another draw of channels
        top_k(photos, MODEL, layers=["conv2"], k=3, channels="random2", state=state, resume=True)

    other = "tiny-scale-other"
    dv.register_model(
        dv.ModelSpec(
            name=other,
            builder=lambda: make_tiny_vgg(seed=1),
            preprocessing=dv.Preprocessing(size=32),
            aliases=TINY_ALIASES,
        ),
        replace=True,
    )
    renamed = dv.load_model(other)
    reseeded = dv.load_model(MODEL)
    with torch.no_grad():
        reseeded.module.features[0].bias.add_(1.0)  # same name and weights label, other numbers
    with pytest.raises(StateError, match="model"):
        top_k(photos, renamed, layers=["conv2"], k=3, channels="first2", state=state, resume=True)
    with pytest.raises(StateError, match="parameters"):
        top_k(photos, reseeded, layers=["conv2"], k=3, channels="first2", state=state, resume=True)
    (state_file(state, 0, 1)).write_bytes(b"garbage")
    with pytest.raises(StateError, match="cannot read the scan state"):
        top_k(photos, MODEL, layers=["conv2"], k=3, channels="first2", state=state, resume=True)


def test_a_short_scan_leaves_no_state(photos, tmp_path) -> None:
    top_k(photos, MODEL, layers=["conv2"], k=2, channels="first1", state=tmp_path / "state")  # well under 60 s
    assert not (tmp_path / "state").exists()


def test_an_interrupted_report_resumes_to_the_same_report(photos, tmp_path) -> None:
    arguments = {"model": MODEL, "layers": "conv2,conv3", "channels": 3, "k": 4, "batch_size": 3, "device": "cpu"}
    whole = build_report(photos, tmp_path / "whole", **arguments)  # type: ignore[arg-type]

    def stop_when_projecting(stage: str, done: int, total: int) -> None:
        if stage == "project":
            raise KeyboardInterrupt

    out = tmp_path / "report"
    with pytest.raises(KeyboardInterrupt):
        build_report(photos, out, **arguments, save_every=0, progress=stop_when_projecting)  # type: ignore[arg-type]
    assert not out.exists()
    assert sorted(p.name for p in scan_state_folder(out).iterdir()) == [MARKER, "scan-0-of-1.state"]

    stages: list[tuple[str, int, int]] = []
    build_report(photos, out, **arguments, resume=True, progress=lambda *a: stages.append(a))  # type: ignore[arg-type]
    scanned = [s for s in stages if s[0] == "scan"]
    assert scanned == [("scan", 22, 22)]  # nothing was read again
    assert not scan_state_folder(out).exists()  # a finished report leaves no state
    a = json.loads((whole.path / "manifest.json").read_text())["topk"]
    b = json.loads((out / "manifest.json").read_text())["topk"]
    assert json.dumps(a["layers"]) == json.dumps(b["layers"])
    assert a["skipped"] == b["skipped"]


def test_report_command_resume_messages(photos, tmp_path) -> None:
    from typer.testing import CliRunner

    from deconvviz.cli import app

    out = tmp_path / "r"
    base = ["report", str(photos), "--model", MODEL, "--layers", "conv2", "--channels", "first2", "--device", "cpu"]
    state = scan_state_folder(out)
    top_k(photos, MODEL, layers=["conv2"], k=9, channels="first2", batch_size=8, state=state, save_every=0)
    result = CliRunner().invoke(app, [*base, "--top", "3", "--out", str(out), "--resume"])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        f"error: the saved scan state {str(state_file(state, 0, 1))!r} is from another scan (k: 9 there, 3 now); "
        "give that scan's arguments to go on from it, or remove it to start again"
    ]
    result = CliRunner().invoke(app, [*base, "--top", "3", "--out", str(out)])  # a saved scan is never dropped unasked
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        f"error: an interrupted run's scan is saved in {str(state)!r}; add --resume (resume=True) to go on from it, "
        "or --overwrite (overwrite=True) to start again"
    )
    assert any(state.iterdir())
    result = CliRunner().invoke(app, [*base, "--out", str(out), "--resume", "--limit", "30", "--sample", "21"])
    assert result.exit_code == 2
    assert "images: " in result.stderr
    result = CliRunner().invoke(app, [*base, "--out", str(out), "--resume"])
    assert result.exit_code == 0, result.output
    assert "report of 22 image(s) (1 skipped)" in result.stdout
    fresh = tmp_path / "fresh"
    result = CliRunner().invoke(app, [*base, "--out", str(fresh), "--resume"])
    assert result.exit_code == 0, result.output
    note = f"note: no saved scan in {str(scan_state_folder(fresh))!r}; --resume starts from the beginning"
    assert result.stderr.splitlines()[0] == note


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_scan_on_the_gpu_equals_the_cpu_scan(photos) -> None:
    cpu = top_k(photos, MODEL, layers=["conv2", "conv3"], k=3, channels="first4", batch_size=4, device="cpu")
    gpu = top_k(photos, MODEL, layers=["conv2", "conv3"], k=3, channels="first4", batch_size=4, device="cuda")
    for layer in cpu.layers:
        for channel, hits in cpu.hits[layer].items():
            theirs = gpu.hits[layer][channel]
            # Clear winners: random pictures rarely tie, and float32 convolutions on two devices agree to ~1e-5.
            assert [h.image for h in hits] == [h.image for h in theirs]
            assert np.allclose([h.value for h in hits], [h.value for h in theirs], rtol=1e-4)


# ------------------------------------------------------------------------------------------------ torchrun

_CLI = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {tests!r})
    from conftest import register_tiny_model
    register_tiny_model({model!r})
    from deconvviz.cli import main
    sys.argv[0] = "deconvviz"
    main()
    """
)


def _env(threads: int | None = 1) -> dict[str, str]:
    """The environment of a child process: this checkout first; ``threads``: torch's threads (None: as here)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    if threads is not None:  # torchrun's default is one thread per process; the one-process run gets the same
        env["OMP_NUM_THREADS"] = str(threads)
    env["GLOO_SOCKET_IFNAME"] = "lo"  # localhost only
    return env


@pytest.mark.slow
def test_two_processes_under_torchrun_give_the_one_process_hits(tmp_path) -> None:
    folder = tmp_path / "photos"
    # Picture 11 is a copy of picture 2: their activations tie exactly; they sit at the same place of full batches
    # (batch size 3: batches 0 and 3) that different ranks scan, so the merge has a real tie to break.
    _photos(folder, 23, seed=4, duplicates={11: 2}, classes=1)
    (folder / "n00000000" / "zz-broken.png").write_bytes(b"not a png")
    script = tmp_path / "cli.py"
    script.write_text(_CLI.format(tests=str(TESTS), model=MODEL))
    arguments = ["report", str(folder), "--model", MODEL, "--layers", "conv1,conv3", "--channels", "all"]
    arguments += ["--top", "5", "--batch-size", "3", "--device", "cpu"]
    one = subprocess.run(
        [sys.executable, str(script), *arguments, "--out", str(tmp_path / "one")],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert one.returncode == 0, one.stderr
    run = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--local-addr", "127.0.0.1"]
    two = subprocess.run(
        [*run, "--nproc-per-node=2", str(script), *arguments, "--out", str(tmp_path / "two")],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert two.returncode == 0, two.stderr
    assert two.stdout.count("report of 24 image(s) (1 skipped)") == 1  # rank 0 alone speaks
    a = json.loads((tmp_path / "one" / "manifest.json").read_text())["topk"]
    b = json.loads((tmp_path / "two" / "manifest.json").read_text())["topk"]
    assert json.dumps(a["layers"]).encode() == json.dumps(b["layers"]).encode()
    assert a["images"] == b["images"]
    assert a["skipped"] == b["skipped"]
    names = [h["image"] for layer in a["layers"] for hits in layer["channels"].values() for h in hits]
    assert "n00000000/img011.png" not in names or "n00000000/img002.png" in names  # the earlier copy wins
    for png in sorted((tmp_path / "one" / "layers").rglob("*.png")):  # the projections match too
        assert png.read_bytes() == (tmp_path / "two" / png.relative_to(tmp_path / "one")).read_bytes()


@pytest.mark.slow
def test_workers_shortcut_launches_torchrun(tmp_path) -> None:
    folder = tmp_path / "photos"
    _photos(folder, 9, seed=5)
    model = f"{TESTS / 'conftest.py'}:make_tiny_vgg"
    arguments = ["-m", "deconvviz", "report", str(folder), "--model", model, "--layers", "features.3"]
    arguments += ["--channels", "2", "--top", "2", "--batch-size", "2", "--device", "cpu"]
    for name, extra in (("one", []), ("two", ["--workers", "2"])):
        done = subprocess.run(
            [sys.executable, *arguments, *extra, "--out", str(tmp_path / name)],
            env=_env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
        assert "report of 9 image(s)" in done.stdout
    a = json.loads((tmp_path / "one" / "manifest.json").read_text())["topk"]
    b = json.loads((tmp_path / "two" / "manifest.json").read_text())["topk"]
    assert a["layers"] == b["layers"]
