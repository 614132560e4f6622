"""The explorer over HTTP against the engine in process: what the server adds, and what the capture cache saves.

VGG16 (random weights: speed does not depend on them) at 224 px, conv3_3 and conv5_3. For each of N pictures the
capture cache is emptied, then, side by side in one run:

- **first**: the first projection of the picture through HTTP (``GET /api/projection.png`` on a uvicorn server in
  this process, over one kept-alive connection): read and preprocess the picture, one forward pass, the reverse
  pass, the PNG;
- **project**: ``net.project(x, layer, channel=C)`` in process for the same unit (the picture already preprocessed);
- **second**: a second unit of the same picture and layer (another channel) through HTTP: the capture is kept, so
  only the reverse pass and the PNG;
- **mirror**: the reverse pass alone in process (``captured.project(C2)`` from a kept capture).

Goals: first / project <= 1.3 (the HTTP and server overhead), and second / first <= 0.5 at conv3_3.

Then the **occlude** button's request, ``GET /api/occlusion`` (default occluder: 32 px, stride 16, 196 positions;
the capture kept, the occlusion not), per position against **naive** re-inference of the occluded pictures up to
the layer in batches of 16 (the first 32 positions), and the same request again (**kept**: no model work).
Goal: naive / occlusion per position >= 2.

Usage: ``python benchmarks/explore.py [--pictures 8] [--occluded 2] [--device cpu|cuda] [--threads N]``
"""

from __future__ import annotations

import argparse
import functools
import http.client
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import deconvviz as dv
from deconvviz.explore.engine import Explorer
from deconvviz.explore.server import Server
from deconvviz.models.zoo import CAFFE_IMAGENET, VGG16_ALIASES, VGG16ConvBase

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pictures", type=int, default=8, help="pictures per layer (examples/ first, then noise)")
    parser.add_argument("--occluded", type=int, default=2, help="pictures occluded per layer (0: skip)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dv.register_model(
        dv.ModelSpec(
            name="vgg16-random",
            builder=VGG16ConvBase,
            preprocessing=CAFFE_IMAGENET,
            aliases=VGG16_ALIASES,
            description="VGG16's conv base with random weights (timing only)",
        ),
        replace=True,
    )
    folder = Path(tempfile.mkdtemp(prefix="deconvviz-bench-explore-"))
    photos = sorted(EXAMPLES.glob("*.jpg"))
    generator = np.random.default_rng(0)
    for i in range(args.pictures):
        if i < len(photos):
            (folder / photos[i].name).write_bytes(photos[i].read_bytes())
        else:
            noise = generator.integers(0, 256, (300, 400, 3), dtype=np.uint8)
            Image.fromarray(noise).save(folder / f"noise{i}.jpg", quality=90)
    explorer = Explorer("vgg16-random", folder, device=args.device, scan=False)
    server = Server(explorer, port=0).start()
    assert server.wait_started()
    token = server.settings.token
    connection = http.client.HTTPConnection("127.0.0.1", server.port)
    net = explorer.net
    sync = torch.cuda.synchronize if explorer.session.model.device.type == "cuda" else (lambda: None)

    def get(path: str) -> bytes:
        try:
            connection.request("GET", path, headers={"Authorization": f"token {token}"})
            response = connection.getresponse()
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            # the server closed the kept-alive connection while this process worked alone: open it again
            connection.close()
            connection.request("GET", path, headers={"Authorization": f"token {token}"})
            response = connection.getresponse()
        body = response.read()
        assert response.status == 200, body[:200]
        return body

    def timed(fn) -> float:
        sync()
        start = time.perf_counter()
        fn()
        sync()
        return time.perf_counter() - start

    print(
        f"VGG16 (random weights), 224 px, {args.pictures} pictures per layer, torch threads {torch.get_num_threads()}"
    )
    columns = ("first (HTTP)", "project", "second (HTTP)", "mirror")
    print(f"{'layer':8} {columns[0]:>13} {columns[1]:>9} {columns[2]:>14} {columns[3]:>8}  first/project  second/first")
    for layer in ("conv3_3", "conv5_3"):
        first, project, second, mirror = [], [], [], []
        ids = explorer.order
        get(f"/api/projection.png?image={ids[0]}&layer={layer}&channel=0")  # warm-up: tracing, first allocations
        for image in ids:
            explorer.cache.clear()
            x = explorer.session.preprocess(explorer.load(image))
            a, b = 3, 11
            url = f"/api/projection.png?image={image}&layer={layer}&channel="
            first.append(timed(functools.partial(get, url + str(a))))
            second.append(timed(functools.partial(get, url + str(b))))
            project.append(timed(functools.partial(net.project, x, layer, channel=a)))
            captured = net.capture(x, layer)
            mirror.append(timed(functools.partial(captured.project, b)))
        f, p, s, m = (statistics.median(v) for v in (first, project, second, mirror))
        print(
            f"{layer:8} {f * 1e3:10.0f} ms {p * 1e3:6.0f} ms {s * 1e3:11.0f} ms {m * 1e3:5.0f} ms  "
            f"{f / p:13.2f}  {s / f:12.2f}"
        )
    if args.occluded:
        occlusion(explorer, get, timed, args.occluded)
    connection.close()
    server.stop()


def occlusion(explorer: Explorer, get, timed, pictures: int) -> None:
    """The occlude request per position against naive re-inference, and the same request kept."""
    from deconvviz.core.incremental import occluded_images

    net = explorer.net
    print(f"\nocclusion, {pictures} pictures per layer (ms per occluder position; kept: the whole request again)")
    print(f"{'layer':8} {'positions':>9} {'occlusion':>10} {'naive':>8} {'kept':>8}  naive/occlusion")
    for layer in ("conv3_3", "conv5_3"):
        incremental, naive, kept, positions = [], [], [], 0
        for image in explorer.order[:pictures]:
            x = explorer.session.preprocess(explorer.load(image))
            get(f"/api/activations?image={image}&layer={layer}")  # the capture, as the page has it before a click
            explorer.steps_kept.clear()
            url = f"/api/occlusion?image={image}&layer={layer}&channel=3"
            answer: dict = {}
            seconds = timed(lambda url=url, answer=answer: answer.update(json.loads(get(url))))
            positions = len(answer["rows"]) * len(answer["cols"])
            incremental.append(seconds / positions)
            kept.append(timed(functools.partial(get, url)))
            boxes = [(tuple(r), tuple(c)) for r in answer["rows"] for c in answer["cols"]][:32]

            def rerun(boxes=boxes, x=x, layer=layer) -> None:
                with torch.inference_mode():
                    for start in range(0, len(boxes), 16):
                        hidden = occluded_images(x, boxes[start : start + 16])
                        net.activations(hidden, [layer])[layer][:, 3].sum(dim=(1, 2))

            naive.append(timed(rerun) / len(boxes))
        i, n, k = (statistics.median(v) for v in (incremental, naive, kept))
        print(f"{layer:8} {positions:9d} {i * 1e3:7.1f} ms {n * 1e3:5.1f} ms {k * 1e3:5.1f} ms  {n / i:15.2f}")


if __name__ == "__main__":
    main()
