"""Kill ``render`` and ``report`` with SIGKILL at random points: a result is always old and whole, or new and whole.

A helper process imports torch and deconvviz once and forks one child per run, so each run starts in a fraction
of a second; the test kills the child at a random moment of its run, then looks at the target. The next run
must clean up after the dead one.
"""

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
from typing import Any

import numpy as np
import pytest
from PIL import Image

from deconvviz.io.atomic import MARKER, STAGING, owned

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")]

KILLS = 12
"""Kills per command (render and report)."""

_HELPER = textwrap.dedent(
    """
    import json, os, sys
    sys.path.insert(0, sys.argv[1])
    import torch
    torch.set_num_threads(1)
    from conftest import register_tiny_model
    import deconvviz as dv
    from deconvviz.viz.report import build_report

    register_tiny_model("tiny-faults")

    def run(job):
        if job["kind"] == "render":
            dv.render_images(job["images"], job["out"], model="tiny-faults", layers="conv1,conv2", top=job["variant"],
                             device="cpu")
        else:
            build_report(job["photos"], job["out"], model="tiny-faults", layers="conv1,conv2",
                         channels=job["variant"], k=2, device="cpu", overwrite=True, per_image=True)

    for line in sys.stdin:
        job = json.loads(line)
        if job.get("warm"):
            run(job)  # imports and first-call work done once, before any fork
            print(json.dumps({"warm": True}), flush=True)
            continue
        pid = os.fork()
        if pid == 0:
            try:
                run(job)
                code = 0
            except BaseException:
                code = 1
            os._exit(code)
        print(json.dumps({"pid": pid}), flush=True)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"status": status}), flush=True)
    """
)


class _Helper:
    def __init__(self, folder: Path) -> None:
        script = folder / "helper.py"
        script.write_text(_HELPER)
        environment = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
        tests = str(Path(__file__).resolve().parent)
        self.process = subprocess.Popen(
            [sys.executable, str(script), tests],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=environment,
        )

    def send(self, job: dict[str, Any]) -> dict[str, Any]:
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.write(json.dumps(job) + "\n")
        self.process.stdin.flush()
        return dict(json.loads(self.process.stdout.readline()))

    def receive(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        return dict(json.loads(self.process.stdout.readline()))

    def run(self, job: dict[str, Any], kill_after: float | None) -> tuple[int, float]:
        started = time.monotonic()
        pid = self.send(job)["pid"]
        if kill_after is not None:
            time.sleep(kill_after)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        status = int(self.receive()["status"])
        return status, time.monotonic() - started

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(timeout=60)


def _whole_render(folder: Path) -> int:
    """The ``top`` of the complete render result in ``folder`` (fails if it is not complete)."""
    assert owned(folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    for layer in manifest["layers"]:
        for name in [*layer["files"], layer["summary"]]:
            assert (folder / name).is_file(), name
    assert (folder / manifest["overview"]).is_file()
    return int(manifest["arguments"]["top"])


def _whole_report(folder: Path) -> int:
    """The ``channels`` of the complete report in ``folder`` (fails if it is not complete)."""
    assert owned(folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    pages = [manifest["pages"]["index"], *manifest["pages"]["layers"].values(), *manifest["pages"]["images"].values()]
    for page in pages:
        assert (folder / page).is_file(), page
    for source in manifest["sources"].values():
        assert (folder / source).is_file(), source
    return int(manifest["arguments"]["channels"])


@pytest.mark.parametrize("kind", ["render", "report"])
def test_sigkill_at_random_points_leaves_old_or_new_whole_results(tmp_path: Path, kind: str) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (36, 40, 3), dtype=np.uint8)).save(photos / f"p{i}.png")
    images = sorted(str(p) for p in photos.iterdir())
    out = tmp_path / "results" / "out"
    if kind == "render":
        targets = [out / Path(p).stem for p in images]
        job = {"kind": "render", "images": images, "out": str(out)}
        whole = _whole_render
    else:
        targets = [out]
        job = {"kind": "report", "photos": str(photos), "out": str(out)}
        whole = _whole_report

    helper = _Helper(tmp_path)
    try:
        assert helper.send({**job, "out": str(tmp_path / "warm"), "variant": 1, "warm": True}) == {"warm": True}
        status, duration = helper.run({**job, "variant": 1}, kill_after=None)
        assert status == 0
        current = {target: whole(target) for target in targets}
        assert set(current.values()) == {1}
        chance = random.Random(1)
        killed = 0
        for attempt in range(KILLS):
            variant = 2 + attempt % 3
            status, _ = helper.run({**job, "variant": variant}, kill_after=chance.uniform(0.0, 1.2 * duration))
            killed += status != 0
            for target in targets:
                found = whole(target)  # always a whole result...
                assert found in (current[target], variant)  # ...the one before or the new one
                current[target] = found
        assert killed >= KILLS // 2  # most runs were really cut short
        status, _ = helper.run({**job, "variant": 9}, kill_after=None)
        assert status == 0
        assert {whole(target) for target in targets} == {9}
    finally:
        helper.close()
    left = sorted(p.name for p in targets[0].parent.iterdir())
    assert not [name for name in left if STAGING in name]  # the last run cleaned up after the dead ones
    assert left == sorted(t.name for t in targets)
    assert all((t / MARKER).is_file() for t in targets)
