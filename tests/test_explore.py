"""The explorer: its HTTP API on a tiny registered model (Starlette's test client and a real uvicorn server), its
safety checks, the model worker's queue, the command and the notebook helper, and the page in a browser."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import chromium, register_tiny_model
from PIL import Image

import deconvviz as dv

pytest.importorskip("starlette")
from starlette.testclient import TestClient

from deconvviz.explore.app import Settings, create_app
from deconvviz.explore.engine import Explorer
from deconvviz.explore.server import Server
from deconvviz.explore.worker import Busy, ModelWorker, Superseded

MODEL = "tiny-explore"
TOKEN = "test-token-0123456789"
PORT = 47111
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def tiny_model() -> None:
    register_tiny_model(MODEL)


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    generator = np.random.default_rng(0)
    for i, size in enumerate([(40, 48), (36, 36), (50, 40), (44, 44)]):
        pixels = generator.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"photo{i}.png")
    return folder


@pytest.fixture(scope="module")
def explorer(photos: Path, tmp_path_factory: pytest.TempPathFactory) -> Explorer:
    found = Explorer(MODEL, photos, device="cpu", state_root=tmp_path_factory.mktemp("state"), cache_bytes=64 << 20)
    assert found.scanner.wait(120)
    yield found
    found.close()


def _client(explorer: Explorer, *, port: int = PORT, token: str = TOKEN, auth: bool = True) -> TestClient:
    app = create_app(explorer, Settings(token=token, port=port))
    headers = {"Authorization": f"token {token}"} if auth else {}
    return TestClient(app, base_url=f"http://127.0.0.1:{port}", headers=headers)


@pytest.fixture(scope="module")
def client(explorer: Explorer) -> TestClient:
    return _client(explorer)


def _ids(client: TestClient) -> list[str]:
    return [entry["id"] for entry in client.get("/api/images").json()]


def _png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def _one_line_error(response, status: int, *words: str) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    message = response.json()["error"]
    assert message
    assert "\n" not in message
    assert "Traceback" not in message
    for word in words:
        assert word in message, message
    return message


# ------------------------------------------------------------------------------------------------ the engine


def test_a_kept_capture_projects_what_project_gives(explorer: Explorer) -> None:
    net = explorer.net
    x = explorer.session.preprocess(explorer.load(explorer.order[0]))
    captured = net.capture(x, "conv3", method="guided")
    for kwargs in ({"channel": 2}, {"channel": [1, 5]}, {"channel": 3, "position": (2, 7)}, {"top": 3}):
        again = captured.project(**kwargs)  # the same capture, used again and again
        fresh = net.project(x, "conv3", method="guided", **kwargs)
        assert torch.equal(again.image, fresh.image)
        assert again.channels == fresh.channels
        assert again.positions == fresh.positions
    assert captured.nbytes() > captured.activation.element_size() * captured.activation.nelement()


# ------------------------------------------------------------------------------------------------- the API


def test_images_lists_every_picture_with_an_id_and_its_size(client: TestClient, photos: Path) -> None:
    response = client.get("/api/images")
    assert response.status_code == 200
    listed = response.json()
    assert [e["name"] for e in listed] == sorted(p.name for p in photos.iterdir())
    assert response.headers["x-total-count"] == str(len(listed))
    for entry in listed:
        with Image.open(photos / entry["name"]) as opened:
            assert (entry["width"], entry["height"]) == opened.size
        assert set(entry) == {"id", "name", "width", "height"}
        assert str(photos) not in entry["id"]
    assert client.get("/api/images", params={"offset": 1, "limit": 2}).json() == listed[1:3]


def test_layers_are_those_deconvviz_layers_lists(client: TestClient, explorer: Explorer) -> None:
    listed = client.get("/api/layers").json()
    net = explorer.net
    assert [layer["node"] for layer in listed] == net.layers
    shapes = net.activations(torch.zeros(1, 3, 32, 32), net.layers)
    fields = dv.receptive_fields(net)
    for layer in listed:
        assert set(layer) == {"name", "node", "shape", "receptive_field"}
        assert layer["shape"] == list(shapes[layer["node"]].shape[1:])
        field = fields[layer["node"]]
        assert layer["receptive_field"]["whole_image"] == field.whole_image
        assert layer["receptive_field"]["size"] == (None if field.size is None else list(field.size))
    assert {"conv1", "conv2", "conv3"} <= {layer["name"] for layer in listed}


def test_activations_give_each_channels_peak_strongest_first(client: TestClient, explorer: Explorer) -> None:
    image = _ids(client)[1]
    body = client.get("/api/activations", params={"image": image, "layer": "conv2"}).json()
    x = explorer.session.preprocess(explorer.load(image))
    act = explorer.net.activations(x, ["conv2"])["conv2"][0].double()
    assert body["shape"] == list(act.shape)
    peaks = [c["peak"] for c in body["channels"]]
    assert peaks == sorted(peaks, reverse=True)
    assert len(peaks) == act.shape[0]
    for item in body["channels"]:
        row, col = item["position"]
        assert item["peak"] == pytest.approx(float(act[item["channel"]].max()), rel=1e-6)
        assert float(act[item["channel"], row, col]) == pytest.approx(item["peak"], rel=1e-6)
    picture = _png(client.get("/api/activations.png", params={"image": image, "layer": "conv2", "channel": 0}).content)
    assert picture.shape[:2] == tuple(act.shape[1:])


@pytest.mark.parametrize("method", ["deconvnet", "guided", "gradient"])
@pytest.mark.parametrize("scale", ["robust", "max", "minmax"])
def test_projection_png_is_pixel_for_pixel_the_librarys(
    client: TestClient, explorer: Explorer, photos: Path, method: str, scale: str
) -> None:
    listed = client.get("/api/images").json()
    entry = listed[2]
    for position in (None, (3, 4)):
        params = {"image": entry["id"], "layer": "conv3", "channel": 5, "method": method, "scale": scale}
        if position is not None:
            params["position"] = f"{position[0]},{position[1]}"
        response = client.get("/api/projection.png", params=params)
        assert response.status_code == 200
        assert response.headers["content-type"] == "image/png"
        expected = dv.visualize(
            photos / entry["name"], MODEL, "conv3", channel=5, position=position, method=method, device="cpu"
        )
        assert np.array_equal(_png(response.content), np.asarray(expected.to_pil(0, scale)))


def test_a_second_unit_of_the_same_picture_runs_no_forward_pass(
    client: TestClient, explorer: Explorer, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = _ids(client)[3]
    calls = []
    real = explorer.net.capture

    def counting(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(explorer.net, "capture", counting)
    for channel, position in ((1, None), (2, None), (2, "0,0"), (6, "5,5")):
        params = {"image": image, "layer": "conv3", "channel": channel, "method": "gradient"}
        if position:
            params["position"] = position
        assert client.get("/api/projection.png", params=params).status_code == 200
        assert client.get("/api/unit", params=params).status_code == 200
    assert len(calls) == 1


def test_unit_defaults_to_the_strongest_and_gives_its_receptive_field(client: TestClient, explorer: Explorer) -> None:
    image = _ids(client)[0]
    body = client.get("/api/unit", params={"image": image, "layer": "conv3", "channel": 4}).json()
    p = explorer.projection(image, "conv3", 4)
    assert tuple(body["position"]) == p.positions[0]
    assert body["activation"] == pytest.approx(float(p.activations[0]), rel=1e-6)
    box = dv.receptive_field(explorer.net, "conv3").box(*body["position"], (32, 32))
    assert body["box"] == [int(v) for v in box]


def test_input_picture_and_thumbnails(client: TestClient) -> None:
    image = _ids(client)[0]
    assert _png(client.get("/api/image.png", params={"image": image}).content).shape == (32, 32, 3)
    assert max(_png(client.get("/api/image.png", params={"image": image, "size": 24}).content).shape[:2]) == 24


def test_steps_list_the_way_down_of_the_unit(client: TestClient, explorer: Explorer) -> None:
    from deconvviz.viz.steps import region, scaled

    image = _ids(client)[1]
    for position in (None, (3, 4)):
        params = {"image": image, "layer": "conv3", "channel": 2, "method": "guided"}
        if position is not None:
            params["position"] = f"{position[0]},{position[1]}"
        body = client.get("/api/steps", params=params).json()
        x = explorer.session.preprocess(explorer.load(image))
        expected = explorer.net.project(x, "conv3", channel=2, position=position, method="guided", steps=True)
        assert expected.steps is not None
        assert (body["layer"], body["node"], body["channel"], body["method"]) == ("conv3", "features.6", 2, "guided")
        assert tuple(body["position"]) == expected.positions[0]
        listed = [(s["index"], s["node"], s["kind"], tuple(s["shape"]), s["switches"]) for s in body["steps"]]
        assert listed == [(s.index, s.node, s.kind, s.shape, s.switches is not None) for s in expected.steps]
        assert body["steps"][0]["kind"] == "seed"
        assert body["steps"][0]["layer"] == "conv3"
        assert body["steps"][-1]["node"] == "x"
        assert tuple(body["steps"][-1]["shape"]) == (3, 32, 32)
        assert any(s["switches"] for s in body["steps"])
        assert any(s["kind"] == "unpool" for s in body["steps"])
        reached = region(expected.steps)
        assert body["region"] == (None if reached is None else list(reached))
        for entry in body["steps"]:
            if reached is not None:
                assert entry["box"] == list(scaled(reached, (32, 32), tuple(entry["shape"][1:])))
            assert entry["enlarged"] == -(-224 // max(entry["shape"][1:]))


@pytest.mark.parametrize(("method", "scale"), [("deconvnet", "robust"), ("gradient", "max")])
def test_each_step_png_is_the_picture_the_steps_command_writes(
    client: TestClient, explorer: Explorer, tmp_path: Path, method: str, scale: str
) -> None:
    from typer.testing import CliRunner

    from deconvviz.cli import app

    image = _ids(client)[2]
    out = tmp_path / "steps"
    path = str(explorer.pictures[image].path)
    arguments = ["steps", path, "--model", MODEL, "-l", "conv3", "-c", "5", "--method", method, "--scale", scale]
    result = CliRunner().invoke(app, [*arguments, "--out", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())["steps"]
    params = {"image": image, "layer": "conv3", "channel": 5, "method": method}
    listed = client.get("/api/steps", params=params).json()["steps"]
    assert len(listed) == len(manifest["steps"])
    for entry in manifest["steps"]:
        response = client.get("/api/steps.png", params={**params, "scale": scale, "step": entry["index"]})
        assert response.status_code == 200
        assert response.headers["content-type"] == "image/png"
        assert np.array_equal(_png(response.content), _png((out / entry["file"]).read_bytes())), entry["file"]
    last = client.get("/api/steps.png", params={**params, "scale": scale, "step": len(listed) - 1})
    projection = client.get("/api/projection.png", params={**params, "scale": scale})
    assert np.array_equal(_png(last.content)[::7, ::7], _png(projection.content))  # 32 pixels, each shown 7x7


def test_paging_through_the_steps_projects_once(client: TestClient, explorer: Explorer) -> None:
    image = _ids(client)[3]
    params = {"image": image, "layer": "conv2", "channel": 1, "position": "2,3", "method": "deconvnet"}
    misses = explorer.steps_kept.misses
    count = len(client.get("/api/steps", params=params).json()["steps"])
    for step in [*range(count), 0, count - 1]:
        assert client.get("/api/steps.png", params={**params, "step": step}).status_code == 200
    assert explorer.steps_kept.misses == misses + 1


def test_topk_are_the_strongest_over_the_folder(client: TestClient, explorer: Explorer) -> None:
    body = client.get("/api/topk", params={"layer": "conv3", "channel": 6}).json()
    assert body["state"] == "done"
    assert body["done"] == body["total"] == 4
    expected = []
    for image in explorer.order:
        x = explorer.session.preprocess(explorer.load(image))
        act = explorer.net.activations(x, ["conv3"])["conv3"][0, 6].double()
        if float(act.max()) > 0:
            expected.append((float(act.max()), image))
    expected.sort(key=lambda pair: -pair[0])
    assert [h["image"] for h in body["hits"]] == [image for _, image in expected]
    for hit, (value, _) in zip(body["hits"], expected, strict=True):
        assert hit["value"] == pytest.approx(value, rel=1e-5)
        box = dv.receptive_field(explorer.net, "conv3").box(*hit["position"], (32, 32))
        assert hit["box"] == [int(v) for v in box]
        whole = dv.receptive_field(explorer.net, "conv3").box(*hit["position"], (32, 32), clip=False)
        assert hit["edge"] == (tuple(whole) != tuple(box))  # marked as in the report


def test_a_second_launch_reuses_the_saved_scan(
    explorer: Explorer, photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from deconvviz.explore.topk import Scanner

    monkeypatch.setattr(Scanner, "SAVE_EVERY", 0.0)  # a scan this short is saved only when told to save at once
    with Explorer(MODEL, photos, device="cpu", state_root=tmp_path) as first:
        assert first.scanner.wait(60)
        assert first.scanner.state == "done"
        assert first.scanner.folder().is_dir()
        assert first.scanner.result.resumed == 0
    with Explorer(MODEL, photos, device="cpu", state_root=tmp_path) as again:
        assert again.scanner.wait(60)
        assert again.scanner.state == "done"
        assert again.scanner.result.resumed == 4  # every picture came from the saved state
        assert again.topk("conv2", 1)["hits"] == explorer.topk("conv2", 1)["hits"]


def test_topk_from_a_report(photos: Path, tmp_path: Path) -> None:
    from deconvviz.viz.report import build_report

    build_report(photos, tmp_path / "report", model=MODEL, layers="conv3", channels=2, k=3, device="cpu")
    manifest = json.loads((tmp_path / "report" / "manifest.json").read_text())
    layer = manifest["topk"]["layers"][0]
    channel = int(next(iter(layer["channels"])))
    with Explorer(MODEL, None, device="cpu", report=tmp_path / "report") as found:  # the report's folder is explored
        assert len(found.order) == 4
        client = _client(found)
        body = client.get("/api/topk", params={"layer": "conv3", "channel": channel}).json()
        assert body["source"] == "report"
        assert body["k"] == 3  # the hits the report kept per channel, not the explorer's own 9
        assert body["done"] == body["total"] == 4
        # the status says so too, not that a folder is missing
        scan = client.get("/api/status").json()["scan"]
        assert scan == {"source": "report", "state": "done", "done": 4, "total": 4}
        names = {found.pictures[i].name: i for i in found.order}
        kept = [h for h in layer["channels"][str(channel)] if h["value"] > 0]
        assert [(h["name"], h["value"], h["position"]) for h in body["hits"]] == [
            (h["image"], h["value"], h["position"]) for h in kept
        ]
        assert all(h["image"] == names[h["name"]] for h in body["hits"])


def test_upload_adds_a_picture(client: TestClient, photos: Path) -> None:
    data = (photos / "photo1.png").read_bytes()
    response = client.post("/api/images", files={"file": ("mine.png", data, "image/png")})
    assert response.status_code == 201
    entry = response.json()
    assert entry["name"] == "mine.png"
    assert (entry["width"], entry["height"]) == (36, 36)
    assert entry["id"] in _ids(client)
    assert (
        client.get("/api/projection.png", params={"image": entry["id"], "layer": "conv1", "channel": 0}).status_code
        == 200
    )


def test_a_layer_without_a_2d_map_has_hits_and_units_without_a_position(client: TestClient, explorer: Explorer) -> None:
    image = _ids(client)[0]
    for layer in ("flatten", "classifier.1"):  # shapes [32] and [5]: no 2-D map
        strongest = client.get("/api/activations", params={"image": image, "layer": layer}).json()["channels"][0]
        channel = strongest["channel"]
        assert strongest["peak"] > 0
        assert strongest["position"] is None
        unit = client.get("/api/unit", params={"image": image, "layer": layer, "channel": channel}).json()
        assert unit["position"] is None
        assert unit["box"] is None
        assert unit["size"] == [32, 32]
        body = client.get("/api/topk", params={"layer": layer, "channel": channel}).json()
        assert body["state"] == "done"
        assert body["hits"]
        for hit in body["hits"]:
            assert hit["position"] is None  # as /api/unit gives it: the page asks for no position
            assert hit["box"] is None
            params = {"image": hit["image"], "layer": layer, "channel": channel}
            assert client.get("/api/projection.png", params=params).status_code == 200
            assert client.get("/api/unit", params=params).json()["activation"] == pytest.approx(hit["value"], rel=1e-5)
        params = {"image": image, "layer": layer, "channel": channel, "position": "0,0"}
        _one_line_error(client.get("/api/projection.png", params=params), 400, "2-D map")
    conv = client.get("/api/topk", params={"layer": "conv3", "channel": 1}).json()["hits"]
    assert all(len(hit["position"]) == 2 for hit in conv)


def test_the_strip_opens_on_the_page_that_holds_a_picture(client: TestClient, explorer: Explorer) -> None:
    ids = explorer.order
    for index, offset in ((0, 0), (1, 0), (2, 2), (3, 2)):
        response = client.get("/api/images", params={"image": ids[index], "limit": 2})
        assert response.status_code == 200
        assert response.headers["x-offset"] == str(offset)
        assert response.headers["x-total-count"] == str(len(ids))
        assert [entry["id"] for entry in response.json()] == ids[offset : offset + 2]
    assert client.get("/api/images", params={"offset": 1}).headers["x-offset"] == "1"
    _one_line_error(
        client.get("/api/images", params={"image": "nope", "limit": 2}), 404, "no picture has the id or name 'nope'"
    )
    _one_line_error(client.get("/api/images", params={"image": ids[0]}), 400, "limit=N")
    _one_line_error(client.get("/api/images", params={"image": ids[0], "limit": 0}), 400, "limit must be 1 or more")


def test_a_picture_s_name_works_as_its_id(client: TestClient, explorer: Explorer) -> None:
    entries = client.get("/api/images").json()
    first = entries[2]
    by_name = client.get("/api/image.png", params={"image": first["name"]})
    assert by_name.status_code == 200
    assert by_name.content == client.get("/api/image.png", params={"image": first["id"]}).content
    page = client.get("/api/images", params={"image": first["name"], "limit": 2})
    assert page.headers["x-offset"] == "2"
    maps = client.get("/api/activations", params={"image": first["name"], "layer": "conv3"})
    assert maps.status_code == 200
    assert maps.json() == client.get("/api/activations", params={"image": first["id"], "layer": "conv3"}).json()
    # Two uploads of one name and other bytes: the name no longer says which.
    for seed in (1, 2):
        data = io.BytesIO()
        Image.fromarray(np.random.default_rng(seed).integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(data, "PNG")
        made = client.post("/api/images", files={"file": ("twin.png", data.getvalue(), "image/png")})
        assert made.status_code == 201, made.text
    _one_line_error(client.get("/api/image.png", params={"image": "twin.png"}), 404, "2 pictures are named 'twin.png'")


def test_occlusion_of_a_channel_equals_re_running_the_model_per_position(
    client: TestClient, explorer: Explorer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from deconvviz.core.incremental import occluded_images
    from deconvviz.explore import occlude

    image = explorer.order[1]
    maps = client.get("/api/activations", params={"image": image, "layer": "conv3"}).json()
    channel = maps["channels"][-1]["channel"]  # the weakest: any channel, not only the strongest
    params = {"image": image, "layer": "conv3", "channel": channel, "size": 8, "stride": 6}
    found = client.get("/api/occlusion", params=params)
    assert found.status_code == 200, found.text
    body = found.json()
    assert (body["size"], body["stride"], body["picture"]) == (8, 6, [32, 32])
    assert len(body["rows"]) == len(body["cols"]) == 6  # ceil(32 / 6)
    session = explorer.session
    x = session.preprocess(explorer.load(image))
    net = dv.DeconvNet(session.model)
    for i, rows in enumerate(body["rows"]):
        for j, cols in enumerate(body["cols"]):
            hidden = occluded_images(x, [(tuple(rows), tuple(cols))])
            total = float(net.activations(hidden, ["conv3"])["conv3"][0, channel].double().sum())
            assert body["totals"][i][j] == pytest.approx(total, rel=1e-5, abs=1e-5)
    assert body["unoccluded"] == pytest.approx(
        float(net.activations(x, ["conv3"])["conv3"][0, channel].sum()), rel=1e-5
    )
    picture = _png(client.get("/api/occlusion.png", params=params).content)
    assert picture.shape == (32, 32, 3)
    totals = np.asarray(body["totals"])
    low = np.unravel_index(totals.argmin(), totals.shape)
    high = np.unravel_index(totals.argmax(), totals.shape)
    if totals.max() > totals.min():  # darkest where hiding lowers the total most, brightest where least
        darkest, brightest = picture[low[0] * 6, low[1] * 6], picture[high[0] * 6, high[1] * 6]
        assert darkest.sum() < brightest.sum()
    # The default occluder: a seventh of the picture's side, moved by half of it.
    default = client.get("/api/occlusion", params={"image": image, "layer": "conv3", "channel": channel}).json()
    assert (default["size"], default["stride"]) == (5, 2)
    # Bad requests: one line each, the model left alone.
    _one_line_error(client.get("/api/occlusion", params={**params, "layer": "flatten"}), 400, "has none")
    _one_line_error(client.get("/api/occlusion", params={**params, "channel": 99}), 400, "out of range")
    _one_line_error(client.get("/api/occlusion", params={**params, "size": 99}), 400, "larger than the 32x32")
    _one_line_error(client.get("/api/occlusion", params={**params, "stride": 0}), 400, "stride")
    _one_line_error(client.get("/api/occlusion", params={**params, "stride": "a"}), 400, "whole number")
    monkeypatch.setattr(occlude, "MOST_POSITIONS", 16)
    _one_line_error(client.get("/api/occlusion", params={**params, "stride": 4}), 400, "stride of at least 8")
    # A sweep stops between its batches when its page asks for something newer, and keeps nothing.
    monkeypatch.undo()
    monkeypatch.setattr(explorer.worker, "stale", lambda: True)
    moved_on = {**params, "stride": 5, "client": "page", "seq": 3}
    _one_line_error(client.get("/api/occlusion", params=moved_on), 429, "sweep was stopped")
    monkeypatch.undo()
    assert client.get("/api/occlusion", params=moved_on).status_code == 200


def test_connections_turn_nagle_off_so_kept_alive_answers_do_not_wait() -> None:
    import asyncio
    import socket

    from deconvviz.explore.server import bind

    listening = bind("127.0.0.1", 0)
    client = socket.create_connection(listening.getsockname()[:2])
    accepted, _ = listening.accept()
    try:
        # asyncio sets TCP_NODELAY on a connection only when its socket says IPPROTO_TCP; a socket made with
        # protocol 0 kept Nagle's algorithm on, and each answer on a kept-alive connection waited ~40 ms.
        assert accepted.proto == socket.IPPROTO_TCP

        async def transport_option() -> int:
            loop = asyncio.get_running_loop()
            transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, accepted)
            value = transport.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            transport.close()
            return value

        assert asyncio.run(transport_option()) != 0
    finally:
        client.close()
        accepted.close()
        listening.close()


# --------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("path", "params", "status", "words"),
    [
        ("/api/activations", {"image": "nope", "layer": "conv3"}, 404, ["no picture has the id or name 'nope'"]),
        ("/api/activations", {"image": 0, "layer": "conv9"}, 400, ["unknown layer 'conv9'", "conv3"]),
        ("/api/activations", {"image": 0}, 400, ["layer"]),
        ("/api/projection.png", {"image": 0, "layer": "conv3", "channel": 8}, 400, ["channel 8 is out of range"]),
        (
            "/api/projection.png",
            {"image": 0, "layer": "conv3", "channel": "x"},
            400,
            ["channel must be a whole number"],
        ),
        ("/api/projection.png", {"image": 0, "layer": "conv3", "channel": 1, "method": "magic"}, 400, ["'magic'"]),
        ("/api/projection.png", {"image": 0, "layer": "conv3", "channel": 1, "scale": "loud"}, 400, ["'loud'"]),
        ("/api/projection.png", {"image": 0, "layer": "conv3", "channel": 1, "position": "16,0"}, 400, ["(16, 0)"]),
        ("/api/projection.png", {"image": 0, "layer": "conv3", "channel": 1, "position": "1"}, 400, ["ROW,COL"]),
        ("/api/activations.png", {"image": 0, "layer": "conv3", "channel": -1}, 400, ["channel -1 is out of range"]),
        ("/api/unit", {"image": 0, "layer": "conv3", "channel": 1, "position": "0,99"}, 400, ["(0, 99)"]),
        ("/api/image.png", {"image": "../../etc/passwd"}, 404, ["no picture has the id or name"]),
        ("/api/image.png", {"image": 0, "size": 4096}, 400, ["size must be between"]),
        ("/api/topk", {"layer": "conv3", "channel": 99}, 400, ["channel 99 is out of range"]),
        ("/api/topk", {"layer": "nope", "channel": 1}, 400, ["unknown layer 'nope'"]),
        (
            "/api/steps",
            {"image": "nope", "layer": "conv3", "channel": 1},
            404,
            ["no picture has the id or name 'nope'"],
        ),
        ("/api/steps", {"image": 0, "layer": "conv9", "channel": 1}, 400, ["unknown layer 'conv9'"]),
        ("/api/steps", {"image": 0, "layer": "conv3", "channel": 8}, 400, ["channel 8 is out of range"]),
        ("/api/steps", {"image": 0, "layer": "conv3", "channel": 1, "method": "magic"}, 400, ["'magic'"]),
        ("/api/steps", {"image": 0, "layer": "conv3", "channel": 1, "position": "0,16"}, 400, ["(0, 16)"]),
        ("/api/steps.png", {"image": 0, "layer": "conv3", "channel": 1, "step": 99}, 400, ["step 99 is out of range"]),
        ("/api/steps.png", {"image": 0, "layer": "conv3", "channel": 1, "step": -1}, 400, ["step -1 is out of range"]),
        ("/api/steps.png", {"image": 0, "layer": "conv3", "channel": 1}, 400, ["give step="]),
        ("/api/steps.png", {"image": 0, "layer": "conv3", "channel": 1, "step": "x"}, 400, ["step must be a whole"]),
        ("/api/steps.png", {"image": 0, "layer": "conv3", "channel": 1, "step": 0, "scale": "loud"}, 400, ["'loud'"]),
        ("/api/nothing", {}, 404, ["no such address"]),
        ("/api/activations", {"layer": "conv3"}, 400, ["give the picture: image=ID"]),
        ("/api/unit", {"layer": "conv3", "channel": 1}, 400, ["give the picture: image=ID"]),
        ("/api/image.png", {}, 400, ["give the picture: image=ID"]),
        ("/api/image.png", {"image": ""}, 400, ["give the picture: image=ID"]),
    ],
)
def test_bad_input_is_a_4xx_with_one_line(
    client: TestClient, path: str, params: dict, status: int, words: list
) -> None:
    ids = _ids(client)
    params = {k: ids[v] if k == "image" and isinstance(v, int) else v for k, v in params.items()}
    _one_line_error(client.get(path, params=params), status, *words)


def test_the_same_words_as_the_command_line(client: TestClient, explorer: Explorer, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from deconvviz.cli import app

    image = _ids(client)[0]
    message = _one_line_error(
        client.get("/api/projection.png", params={"image": image, "layer": "conv7", "channel": 0}), 400
    )
    result = CliRunner().invoke(app, ["render", str(explorer.pictures[image].path), "--model", MODEL, "-l", "conv7"])
    assert result.exit_code == 2
    assert message in result.stderr
    bad = tmp_path / "notes.txt"
    bad.write_text("hello")
    upload = _one_line_error(client.post("/api/images", files={"file": ("notes.txt", b"hello")}), 400)
    with pytest.raises(dv.ImageError) as raised:
        dv.load_image(bad)
    assert upload.replace("'notes.txt'", repr(str(bad))) == str(raised.value)


def test_errors_name_the_layer_as_the_request_gave_it(client: TestClient) -> None:
    for layer in ("pool2", "features.7"):  # an alias and the node name of the same layer
        message = _one_line_error(
            client.get("/api/topk", params={"layer": layer, "channel": 99}), 400, f"layer {layer!r}"
        )
        image = _ids(client)[0]
        other = _one_line_error(
            client.get("/api/unit", params={"image": image, "layer": layer, "channel": 99}), 400, f"layer {layer!r}"
        )
        assert message == other  # the same words as every other endpoint
    assert "features.7" not in _one_line_error(client.get("/api/topk", params={"layer": "pool2", "channel": 99}), 400)


def test_refused_uploads_say_the_limit_in_mib_and_what_to_do(
    client: TestClient, explorer: Explorer, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = _ids(client)
    monkeypatch.setattr(explorer, "upload_limit", 1 << 20)
    message = _one_line_error(
        client.post("/api/images", files={"file": ("big.png", b"x" * (3 << 19))}), 413, "over the limit of 1 MiB"
    )
    assert "MB" not in message
    with pytest.raises(dv.DeconvVizError, match=r"big\.png' is 1\.5 MiB, over the limit of 1 MiB"):
        explorer.upload(b"x" * (3 << 19), "big.png")
    buffer = io.BytesIO()
    Image.new("RGB", (100, 100)).save(buffer, format="PNG")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)  # Pillow refuses a picture over twice this
    _one_line_error(
        client.post("/api/images", files={"file": ("bomb.png", buffer.getvalue())}),
        400,
        "too large to open safely",
        "resize it below 0.004 megapixels",
    )
    assert _ids(client) == before


def test_uploads_that_are_refused(client: TestClient, explorer: Explorer, monkeypatch: pytest.MonkeyPatch) -> None:
    before = _ids(client)
    buffer = io.BytesIO()
    Image.new("RGB", (100, 100)).save(buffer, format="PNG")
    with monkeypatch.context() as patched:  # Pillow's decompression-bomb limit, lowered so that a small file is one
        patched.setattr(Image, "MAX_IMAGE_PIXELS", 2000)
        _one_line_error(
            client.post("/api/images", files={"file": ("bomb.png", buffer.getvalue())}), 400, "too large to open safely"
        )
    with monkeypatch.context() as patched:
        patched.setattr(explorer, "upload_limit", 1000)
        _one_line_error(client.post("/api/images", files={"file": ("big.png", b"x" * 200_000)}), 413, "over the limit")
    _one_line_error(client.post("/api/images", files={"other": ("a.png", buffer.getvalue())}), 400, "`file`")
    _one_line_error(client.post("/api/images", content=b"raw", headers={"content-type": "image/png"}), 400, "multipart")
    _one_line_error(client.post("/api/images", files={"file": ("cut.png", buffer.getvalue()[:60])}), 400, "cut.png")
    assert _ids(client) == before


# ------------------------------------------------------------------------------------------------------ safety


def test_every_request_needs_the_token(explorer: Explorer) -> None:
    bare = _client(explorer, auth=False)
    image = explorer.order[0]
    for path in ("/", "/api/images", "/api/layers", f"/api/image.png?image={image}"):
        _one_line_error(bare.get(path), 401, "token")
    _one_line_error(bare.get("/api/images", headers={"Authorization": "token wrong"}), 403, "wrong token")
    _one_line_error(bare.get("/api/images", params={"token": "wrong"}), 403, "wrong token")
    assert bare.get("/api/images", params={"token": TOKEN}).status_code == 200
    assert bare.get("/static/explore.js").status_code == 200  # the page's own code holds no secret


def test_the_page_keeps_the_token_in_a_strict_httponly_cookie(explorer: Explorer) -> None:
    bare = _client(explorer, auth=False)
    page = bare.get("/", params={"token": TOKEN})
    assert page.status_code == 200
    assert "text/html" in page.headers["content-type"]
    cookie = page.headers["set-cookie"]
    assert f"deconvviz-explore-{PORT}={TOKEN}" in cookie
    assert "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie
    assert bare.get("/api/images").status_code == 200  # the cookie alone now does


def test_a_foreign_host_is_refused(explorer: Explorer) -> None:
    client = _client(explorer)
    for host in ("evil.example:47111", "127.0.0.1:9999", "127.0.0.1.nip.io:47111", ""):
        _one_line_error(client.get("/api/images", headers={"host": host}), 403, "Host")
    for host in ("127.0.0.1:47111", "localhost:47111", "[::1]:47111"):
        assert client.get("/api/images", headers={"host": host}).status_code == 200


def test_answers_allow_only_the_server_itself(client: TestClient) -> None:
    for response in (client.get("/"), client.get("/api/layers"), client.get("/api/nothing")):
        policy = response.headers["content-security-policy"]
        assert "default-src 'self'" in policy
        assert "script-src 'self'" in policy
        assert "*" not in policy
        assert response.headers["x-content-type-options"] == "nosniff"
    page = client.get("/").text
    assert not re.search(r"(src|href)=\"(https?:)?//", page)  # nothing loaded from elsewhere
    assert "<script>" not in page
    assert " style=" not in page


# -------------------------------------------------------------------------------------------------- the worker


def test_the_worker_drops_stale_requests_and_refuses_past_its_queue() -> None:
    worker = ModelWorker(max_pending=3)
    gate = threading.Event()
    try:
        blocker = worker.submit(gate.wait)
        time.sleep(0.05)
        old = worker.submit(lambda: "old", client="page", seq=1)
        other = worker.submit(lambda: "other", client="other page", seq=1)
        new = worker.submit(lambda: "new", client="page", seq=2)
        with pytest.raises(Superseded):
            old.result(5)
        with pytest.raises(Superseded):
            worker.submit(lambda: "older", client="page", seq=1)
        worker.submit(lambda: "fills", client=None)
        with pytest.raises(Busy):
            worker.submit(lambda: "one too many")
        gate.set()
        assert blocker.result(5) is True
        assert new.result(5) == "new"
        assert other.result(5) == "other"
    finally:
        gate.set()
        worker.stop()


def test_a_running_job_learns_that_its_page_asked_for_something_newer() -> None:
    worker = ModelWorker()
    started, go = threading.Event(), threading.Event()

    def long() -> bool:
        started.set()
        go.wait(5)
        return worker.stale()

    try:
        job = worker.submit(long, client="page", seq=1)
        assert started.wait(5)
        worker.submit(lambda: "other page", client="other page", seq=9)
        assert not worker.stale()  # another page's request does not stop this one
        worker.submit(lambda: "same seq", client="page", seq=1)
        assert not worker.stale()  # nor does the same view's
        worker.submit(lambda: "newer", client="page", seq=2)
        assert worker.stale()
        go.set()
        assert job.result(5) is True
        assert worker.call(worker.stale) is False  # a request without a page never goes stale
    finally:
        go.set()
        worker.stop()


def _rss() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _get(url: str, timeout: float = 60) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers={"Authorization": f"token {TOKEN}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads the memory from /proc")
def test_fifty_concurrent_projections_all_answer(photos: Path, tmp_path: Path) -> None:
    explorer = Explorer(MODEL, photos, device="cpu", scan=False, cache_bytes=8 << 20, max_pending=8)
    server = Server(explorer, port=0, token=TOKEN).start()
    try:
        assert server.wait_started()
        base = f"http://127.0.0.1:{server.port}"
        ids = explorer.order

        def url(i: int) -> str:
            return f"{base}/api/projection.png?image={ids[i % 4]}&layer=conv{1 + i % 3}&channel={i % 4}&method=guided"

        for i in range(12):  # warm up every picture and layer once
            assert _get(url(i))[0] == 200
        before = _rss()
        statuses: list[int] = []
        threads = [threading.Thread(target=lambda i=i: statuses.append(_get(url(i))[0])) for i in range(50)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert len(statuses) == 50
        assert set(statuses) <= {200, 429, 503}
        assert statuses.count(200) >= 8
        status, body = _get(f"{base}/api/status")
        assert status == 200
        assert json.loads(body)["pending"] == 0
        assert json.loads(body)["cache"]["bytes"] <= 8 << 20
        assert _get(url(7))[0] == 200
        assert _rss() - before < 64 << 20
    finally:
        server.stop()
    assert not explorer.worker._thread.is_alive()
    assert not explorer._uploads.exists()


# ---------------------------------------------------------------------------------------- command and notebook


@pytest.mark.slow  # a fresh interpreter importing torch: several seconds
def test_the_command_prints_one_line_serves_and_stops_on_ctrl_c(photos: Path, tmp_path: Path) -> None:
    code = (
        "import sys; sys.path.insert(0, 'tests'); from conftest import register_tiny_model; "
        f"register_tiny_model({MODEL!r}); from deconvviz.cli import main; main()"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DECONVVIZ_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    argv = ["explore", str(photos), "--model", MODEL, "--port", "0", "--no-browser", "--device", "cpu"]
    process = subprocess.Popen(
        [sys.executable, "-c", code, *argv],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = process.stdout.readline()
        found = re.fullmatch(r"deconvviz explore: http://127\.0\.0\.1:(\d+)/\?token=([\w-]+)\n", line)
        assert found, line + process.stderr.read()
        port, token = found.groups()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/layers?token={token}", timeout=60) as response:
            assert response.status == 200
            assert json.loads(response.read())[0]["node"] == "features.0"
        process.send_signal(signal.SIGINT)
        assert process.wait(30) == 0
        assert "stopped" in process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_the_command_refuses_bad_input_in_one_line(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from deconvviz.cli import app

    result = CliRunner().invoke(app, ["explore", str(tmp_path / "missing"), "--model", MODEL, "--no-browser"])
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1
    assert "not found" in result.stderr
    # the pictures are checked before the model is loaded: a checkpoint that could not load is not reached
    (tmp_path / "weights.pt").write_bytes(b"not a checkpoint")
    result = CliRunner().invoke(
        app,
        ["explore", str(tmp_path / "missing"), "--model", MODEL, "--checkpoint", str(tmp_path / "weights.pt")],
    )
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1
    assert "not found" in result.stderr
    assert "checkpoint" not in result.stderr
    # picture files given one by one are checked at launch (their headers), not when the page picks them
    (tmp_path / "notes.md").write_text("# not a picture")
    (tmp_path / "empty.jpg").write_bytes(b"")
    shown = tmp_path / "shown.png"
    Image.new("RGB", (40, 40), (200, 30, 30)).save(shown)
    for odd in ("notes.md", "empty.jpg"):
        result = CliRunner().invoke(app, ["explore", str(shown), str(tmp_path / odd), "--model", MODEL])
        assert result.exit_code == 2
        said = f"{str(tmp_path / odd)!r} is not a picture Pillow can read; use a JPEG, PNG, WebP, BMP or TIFF file"
        assert result.stderr == f"error: {said}\n"


def test_dv_explore_refuses_a_module_without_preprocessing(photos: Path) -> None:
    from conftest import make_tiny_vgg

    from deconvviz.explore.pictures import ExploreError

    before = set(threading.enumerate())
    with pytest.raises(ExploreError, match="the explorer reads pictures and needs the model's preprocessing"):
        dv.explore(make_tiny_vgg(), photos, device="cpu")
    assert set(threading.enumerate()) <= before  # refused before a scan, a worker or a server started


def test_dv_explore_serves_on_a_thread_and_shows_inline(photos: Path) -> None:
    handle = dv.explore(MODEL, photos, device="cpu", token=TOKEN)
    try:
        assert handle.running
        assert f"?token={TOKEN}" in handle.url
        assert f'<iframe src="{handle.url}"' in handle._repr_html_()
        base = handle.url.split("/?")[0]
        assert _get(f"{base}/api/images")[0] == 200
    finally:
        handle.stop()
    assert not handle.running
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"{base}/api/images", timeout=5)


# -------------------------------------------------------------------------------------------------- in a browser


@pytest.mark.browser
def test_the_page_in_a_browser(photos: Path, tmp_path: Path) -> None:
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    driver = chromium(tmp_path / "chromium", window="1280,1000", logs=True)
    explorer = Explorer(MODEL, photos, device="cpu", state_root=tmp_path / "state")
    server = Server(explorer, port=0, token=TOKEN).start()
    try:
        assert server.wait_started()
        base = f"http://127.0.0.1:{server.port}"
        driver.get(server.url)
        wait = WebDriverWait(driver, 30)
        wait.until(lambda d: d.find_elements("css selector", "#grid a"))
        assert "token" not in driver.current_url  # the token went into the cookie, not the permalinks

        def shown(selector: str) -> np.ndarray:
            wait.until(
                lambda d: d.execute_script(
                    "const i = document.querySelector(arguments[0]); return i.complete && i.naturalWidth > 0;", selector
                )
            )
            data = driver.execute_script(
                "const i = document.querySelector(arguments[0]); const c = document.createElement('canvas');"
                "c.width = i.naturalWidth; c.height = i.naturalHeight; const g = c.getContext('2d');"
                "g.drawImage(i, 0, 0); return c.toDataURL('image/png');",
                selector,
            )
            return _png(__import__("base64").b64decode(data.split(",", 1)[1]))

        def address() -> dict[str, str]:
            from urllib.parse import parse_qsl, urlparse

            return dict(parse_qsl(urlparse(driver.current_url).query))

        tiles = driver.find_elements("css selector", "#grid a")
        tiles[2].click()  # the third strongest channel
        channel = tiles[2].get_attribute("data-channel")
        wait.until(lambda d: address().get("channel") == channel)
        state = address()
        wait.until(lambda d: f"channel={channel}&" in d.find_element("id", "projection").get_attribute("src"))
        api = _png(
            _get(f"{base}/api/projection.png?image={state['image']}&layer={state['layer']}&channel={channel}")[1]
        )
        assert np.array_equal(shown("#projection"), api)
        unit_before = driver.find_element("id", "unit").text
        driver.find_element("id", "map").click()  # the middle of the map: another unit
        wait.until(lambda d: "unit" in address())
        wait.until(lambda d: d.find_element("id", "unit").text not in ("", unit_before))
        row, col = map(int, address()["unit"].split(","))
        api = _png(
            _get(
                f"{base}/api/projection.png?image={state['image']}&layer={state['layer']}&channel={channel}"
                f"&position={row},{col}"
            )[1]
        )
        wait.until(lambda d: f"position={row}%2C{col}" in d.find_element("id", "projection").get_attribute("src"))
        assert np.array_equal(shown("#projection"), api)
        permalink = driver.current_url
        unit_text = driver.find_element("id", "unit").text
        driver.refresh()  # the permalink shows the same view
        wait.until(lambda d: d.find_element("id", "unit").text == unit_text)
        assert driver.current_url == permalink
        assert np.array_equal(shown("#projection"), api)
        driver.back()  # back to the strongest unit of the channel
        wait.until(lambda d: "unit" not in address() and address().get("channel") == channel)
        wait.until(lambda d: d.find_element("id", "unit").text == unit_before)
        count = len(driver.find_elements("css selector", "#strip a"))
        driver.find_element("id", "file").send_keys(str(photos / "photo3.png"))  # the file picker: an upload
        wait.until(lambda d: address().get("image", "").startswith("u"))
        wait.until(lambda d: len(d.find_elements("css selector", "#strip a")) == count + 1)
        wait.until(lambda d: d.find_element("id", "unit").text.startswith(address()["layer"]))
        assert driver.find_element("id", "steps-panel").get_attribute("hidden") is not None
        driver.find_element("id", "way-down").click()  # the way down: the panel opens on the seed
        wait.until(lambda d: address().get("steps") == "0" and d.find_element("id", "steps-panel").is_displayed())
        wait.until(lambda d: d.find_element("id", "step-label").text.startswith("seed"))
        driver.find_element("id", "step-next").click()
        wait.until(lambda d: address().get("steps") == "1")
        wait.until(lambda d: "step=1" in d.find_element("id", "step-picture").get_attribute("src"))
        state = address()
        step_url = (
            f"{base}/api/steps.png?image={state['image']}&layer={state['layer']}&channel={state['channel']}"
            f"&method={state['method']}&scale={state['scale']}&step=1"
        )
        api = _png(_get(step_url)[1])
        assert np.array_equal(shown("#step-picture"), api)
        label = driver.find_element("id", "step-label").text
        assert label
        assert not label.startswith("seed")
        permalink = driver.current_url
        driver.refresh()  # the permalink opens the panel on the same step
        wait.until(lambda d: d.find_element("id", "step-label").text == label)
        assert driver.current_url == permalink
        assert np.array_equal(shown("#step-picture"), api)
        driver.find_element("tag name", "body").send_keys(Keys.ARROW_RIGHT)  # the keys page too
        wait.until(lambda d: address().get("steps") == "2")
        driver.find_element("tag name", "body").send_keys(Keys.ARROW_LEFT)
        wait.until(lambda d: address().get("steps") == "1")
        driver.back()  # back and forward go through the steps shown
        wait.until(lambda d: address().get("steps") == "2")
        wait.until(lambda d: d.find_element("id", "step-label").text != label)
        driver.find_element("id", "way-down").click()  # and the panel closes
        wait.until(lambda d: "steps" not in address() and not d.find_element("id", "steps-panel").is_displayed())
        # occlusion of the channel shown: the server's picture, a caption with its numbers; another channel closes it
        assert not driver.find_element("id", "occlusion-panel").is_displayed()
        driver.find_element("id", "occlude").click()
        wait.until(lambda d: d.find_element("id", "occlusion-caption").text.startswith(f"{address()['layer']} ch "))
        wait.until(lambda d: (d.find_element("id", "occlusion").get_attribute("src") or "").count("occlusion.png"))
        state = address()
        occlusion_url = (
            f"{base}/api/occlusion.png?image={state['image']}&layer={state['layer']}&channel={state['channel']}"
        )
        assert np.array_equal(shown("#occlusion"), _png(_get(occlusion_url)[1]))
        assert "with nothing hidden" in driver.find_element("id", "occlusion-caption").text
        other = next(
            a
            for a in driver.find_elements("css selector", "#grid a")
            if a.get_attribute("data-channel") != state["channel"]
        )
        other.click()
        wait.until(lambda d: not d.find_element("id", "occlusion-panel").is_displayed())
        assert driver.save_screenshot(str(tmp_path / "explorer.png"))
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors
        from urllib.parse import urlparse

        requested = set()
        for entry in driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            if message["method"] == "Network.requestWillBeSent":
                url = urlparse(message["params"]["request"]["url"])
                if url.scheme not in ("data", "chrome", "about"):  # the test's canvas read, the browser's own pages
                    requested.add(f"{url.scheme}://{url.netloc}")
        assert requested == {base}, requested
    finally:
        driver.quit()
        server.stop()


@pytest.mark.browser
def test_the_page_links_whole_views_and_shows_no_stale_or_broken_panels(
    photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from urllib.parse import parse_qsl, urlencode, urlparse

    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    from deconvviz.explore import app as app_module
    from deconvviz.explore.pictures import ExploreError

    monkeypatch.setattr(app_module, "PAGE_SIZE", 2)  # 4 pictures: two pages in the strip
    driver = chromium(tmp_path / "chromium", window="1280,1000")
    explorer = Explorer(MODEL, photos, device="cpu", state_root=tmp_path / "state")
    assert explorer.scanner.wait(120)
    server = Server(explorer, port=0, token=TOKEN).start()
    try:
        assert server.wait_started()
        base = f"http://127.0.0.1:{server.port}"
        wait = WebDriverWait(driver, 30)
        ids = explorer.order

        def query(url: str) -> dict[str, str]:
            return dict(parse_qsl(urlparse(url).query))

        def hrefs(selector: str) -> list[dict[str, str]]:
            return [query(a.get_attribute("href")) for a in driver.find_elements("css selector", selector)]

        def text(element_id: str) -> str:
            return driver.find_element("id", element_id).text

        # a permalink to the last picture, with a channel that is no number: the strip opens on its page, the
        # channel counts as absent (the strongest is shown) and a notice says so
        driver.get(f"{server.url}&{urlencode({'image': ids[3], 'layer': 'conv3', 'channel': 'abc'})}")
        wait.until(lambda d: d.find_elements("css selector", "#grid a"))
        wait.until(lambda d: text("unit").startswith("conv3 ch "))
        assert query(driver.current_url)["channel"].isdigit()
        assert "NaN" not in driver.current_url
        assert "channel=abc" in text("notice")
        assert text("strip-count") == "3-4 of 4"
        assert [a.get_attribute("data-id") for a in driver.find_elements("css selector", "#strip a.current")] == [
            ids[3]
        ]

        # every link carries the whole view with its one change
        view = query(driver.current_url)
        for tile in hrefs("#grid a"):
            assert tile == {**view, "channel": tile["channel"]}
        for picture in hrefs("#strip a"):
            assert picture == {k: v for k, v in {**view, "image": picture["image"]}.items() if k != "channel"}
        for layer in hrefs("#layers a"):
            assert layer == {k: v for k, v in {**view, "layer": layer["layer"]}.items() if k != "channel"}
        driver.find_element("id", "scale").send_keys("max")  # a change of view updates the links already drawn
        wait.until(lambda d: query(d.current_url)["scale"] == "max")
        assert {tile["scale"] for tile in hrefs("#grid a")} == {"max"}
        assert {picture["scale"] for picture in hrefs("#strip a")} == {"max"}
        assert not text("notice")  # the notice goes with the next click

        # the top-9 links follow the step shown in the way-down panel
        wait.until(lambda d: d.find_elements("css selector", "#topk a[href]"))
        driver.find_element("id", "way-down").click()
        wait.until(lambda d: query(d.current_url).get("steps") == "0")
        driver.find_element("id", "step-next").click()
        wait.until(lambda d: query(d.current_url).get("steps") == "1")
        wait.until(lambda d: {hit.get("steps") for hit in hrefs("#topk a[href]")} == {"1"})
        driver.find_element("id", "way-down").click()
        wait.until(lambda d: "steps" not in query(d.current_url))

        # a permalink to a unit outside the map: a notice, and the channel's strongest unit, as for a channel;
        # the unit line gives the field's first and last rows and columns
        driver.get(f"{server.url}&{urlencode({'image': ids[0], 'layer': 'conv3', 'channel': '1', 'unit': '99,99'})}")
        wait.until(lambda d: "unit 99,99" in text("notice") and text("unit").startswith("conv3 ch 1 unit"))
        assert "outside the" in text("notice")
        assert "showing the channel's strongest unit" in text("notice")
        assert "unit" not in query(driver.current_url)
        assert not driver.find_element("id", "error").is_displayed()
        box = explorer.unit(ids[0], "conv3", 1, None, None)["box"]
        assert f"field rows {box[0]}-{box[2] - 1}, cols {box[1]}-{box[3] - 1}" in text("unit")
        assert text("map-caption") == "activation map: click a unit"

        # a focused map moves the unit with the arrow keys
        unit = query(driver.current_url).get("unit")
        shown_unit = re.search(r"unit \((\d+), (\d+)\)", text("unit")).groups()
        driver.find_element("id", "map").send_keys(Keys.ARROW_DOWN if shown_unit[0] == "0" else Keys.ARROW_UP)
        wait.until(lambda d: query(d.current_url).get("unit") not in (unit, None))
        row = int(shown_unit[0]) + (1 if shown_unit[0] == "0" else -1)
        assert query(driver.current_url)["unit"] == f"{row},{shown_unit[1]}"
        wait.until(lambda d: text("unit").startswith(f"conv3 ch 1 unit ({row}, {shown_unit[1]})"))

        # a layer named by its node: the list marks it by its name; a step past the last: the last, and a notice
        steps = len(explorer.worker.call(lambda: explorer.steps_list(ids[0], "conv3", 1)["steps"]))
        driver.get(f"{server.url}&{urlencode({'image': ids[0], 'layer': 'features.6', 'channel': '1', 'steps': 99})}")
        wait.until(lambda d: query(d.current_url).get("steps") == str(steps - 1))
        assert query(driver.current_url)["layer"] == "conv3"
        assert [a.get_attribute("data-name") for a in driver.find_elements("css selector", "#layers a.current")] == [
            "conv3"
        ]
        assert f"step 99 is past the way down's last ({steps - 1})" in text("notice")
        wait.until(lambda d: " at the input " in text("step-label"))
        driver.find_element("id", "way-down").click()

        # a layer without a 2-D map: the top-9 hits ask for no position, their reconstructions load, a click works
        driver.find_element("css selector", '#layers a[data-name="flatten"]').click()
        wait.until(lambda d: text("unit").startswith("flatten ch "))
        assert text("map-caption") == "this layer has no map: one value per channel"
        wait.until(lambda d: d.find_elements("css selector", "#topk a[href]"))
        backgrounds = driver.execute_script(
            "return [...document.querySelectorAll('#topk .crop')].map((e) => e.style.backgroundImage);"
        )
        reconstructions = [re.search(r'url\("(.+)"\)', b).group(1) for b in backgrounds[::2]]
        for url in reconstructions:
            assert "position" not in url
            assert _get(base + url)[0] == 200
        hit = hrefs("#topk a[href]")[-1]
        assert "unit" not in hit
        driver.find_elements("css selector", "#topk a[href]")[-1].click()
        wait.until(lambda d: query(d.current_url) == hit)
        wait.until(lambda d: text("unit").startswith("flatten ch "))
        assert not driver.find_element("id", "error").is_displayed()
        assert driver.find_element("id", "projection").get_attribute("src")

        # a unit request that fails: the previous view's panels go, the error shows
        real = explorer.unit

        def failing(image: str, *args: object) -> dict:
            if image == ids[0]:
                raise ExploreError("this unit cannot be shown")
            return real(image, *args)

        monkeypatch.setattr(explorer, "unit", failing)
        driver.get(f"{base}/?{urlencode({'image': ids[1], 'layer': 'conv3'})}")
        wait.until(lambda d: text("unit").startswith("conv3 ch "))
        assert text("strip-count") == "1-2 of 4"
        driver.find_element("css selector", f'#strip a[data-id="{ids[0]}"]').click()
        wait.until(lambda d: d.find_element("id", "error").is_displayed())
        assert text("error") == "this unit cannot be shown"
        assert text("unit") == ""
        for element_id in ("projection", "map"):
            assert driver.find_element("id", element_id).get_attribute("src") is None
        assert driver.find_element("id", "patch").value_of_css_property("background-image") == "none"
        assert not driver.find_elements("css selector", "#topk a")
        assert "image.png?image=" + ids[0] in driver.find_element("id", "picture").get_attribute("src")

        # a picture named by its file name: the page goes on with its id, on the strip's page that holds it
        name = explorer.pictures[ids[2]].name
        driver.get(f"{base}/?{urlencode({'image': name, 'layer': 'conv3'})}")
        wait.until(lambda d: query(d.current_url).get("image") == ids[2])
        wait.until(lambda d: text("unit").startswith("conv3 ch "))
        assert [a.get_attribute("data-id") for a in driver.find_elements("css selector", "#strip a.current")] == [
            ids[2]
        ]
        assert not driver.find_element("id", "error").is_displayed()

        # a picture this explorer does not know: what to do, and no broken picture or stale panels
        driver.get(f"{base}/?image=nope&layer=conv3")
        wait.until(lambda d: d.find_element("id", "error").is_displayed())
        assert "pick a picture above" in text("error")
        assert "forgotten when the explorer stops" in text("error")
        assert driver.find_element("id", "picture").get_attribute("src") is None
        assert not driver.find_element("id", "picture").is_displayed()
        assert not driver.find_elements("css selector", "#grid a")
        assert not driver.find_element("id", "occlude").is_enabled()  # nothing to act on: the buttons wait
        assert not driver.find_element("id", "way-down").is_enabled()
        assert driver.save_screenshot(str(tmp_path / "unknown-picture.png"))
    finally:
        driver.quit()
        server.stop()


def _dead_channel_net() -> torch.nn.Module:
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 3, 3, padding=1)
    with torch.no_grad():  # channel 0 never fires; channel 2 fires everywhere, from its bias alone
        conv.weight[0] = 0
        conv.bias[0] = -1
        conv.weight[2] = 0
        conv.bias[2] = 1
    return torch.nn.Sequential(conv, torch.nn.ReLU(), torch.nn.MaxPool2d(2))


@pytest.mark.browser
def test_a_projection_that_is_all_zero_says_so(photos: Path, tmp_path: Path) -> None:
    from urllib.parse import urlencode

    from selenium.webdriver.support.ui import WebDriverWait

    dv.register_model(
        dv.ModelSpec(name="tiny-dead", builder=_dead_channel_net, preprocessing=dv.Preprocessing(size=32)),
        replace=True,
    )
    driver = chromium(tmp_path / "chromium")
    explorer = Explorer("tiny-dead", photos, device="cpu", state_root=tmp_path / "state")
    server = Server(explorer, port=0, token=TOKEN).start()
    try:
        assert server.wait_started()
        wait = WebDriverWait(driver, 30)
        caption = {}
        for channel in (1, 2, 0):  # the dead channel last: its top-9 panel is checked below
            driver.get(f"{server.url}&{urlencode({'image': explorer.order[0], 'layer': '1', 'channel': channel})}")
            wait.until(lambda d, c=channel: d.find_element("id", "unit").text.startswith(f"1 ch {c} "))
            shown = driver.find_element("id", "projection").get_attribute("src")
            # the caption's check runs once the picture has loaded, and marks which picture it checked
            wait.until(
                lambda d, src=shown: d.find_element("id", "projection-caption").get_attribute("data-checked") == src
            )
            caption[channel] = driver.find_element("id", "projection-caption").text
        assert caption[1] == "deconvnet projection"
        assert caption[0] == (
            "deconvnet projection: all zero, this unit does not fire here (a=0), so there is nothing to project"
        )
        assert caption[2].startswith("deconvnet projection: all zero, nothing reaches the input from this unit")
        # the top-9 panel of a channel that never fired says so, instead of staying empty
        assert explorer.scanner.wait(60)
        dead = explorer.topk("1", 0)
        assert dead["hits"] == []
        assert dead["message"] == "channel 0 of 1 never fired on the 4 pictures (no activation above 0)"
        assert explorer.topk("1", 1)["hits"]
        assert "message" not in explorer.topk("1", 1)
        wait.until(lambda d: "never fired" in d.find_element("id", "topk-status").text)
    finally:
        driver.quit()
        server.stop()
        explorer.close()


def test_the_demo_prints_the_command_that_explores_its_photos(monkeypatch: pytest.MonkeyPatch) -> None:
    from deconvviz.cli.demo import EXAMPLES, explore_command

    monkeypatch.chdir(ROOT)
    assert explore_command(EXAMPLES, "vgg16") == "deconvviz explore examples"
    assert explore_command(EXAMPLES, "squeezenet1_1") == "deconvviz explore examples --model squeezenet1_1"


def test_hosts_allowed_when_listening_on_every_interface() -> None:
    settings = Settings(host="0.0.0.0", port=9000)
    assert settings.allowed_host("192.168.1.20:9000")
    assert settings.allowed_host("localhost:9000")
    assert not settings.allowed_host("attacker.example:9000")  # a DNS name could be rebound: only addresses
    assert not settings.allowed_host("192.168.1.20:9001")


def test_another_host_than_loopback_is_warned_about_in_one_line() -> None:
    from typer.testing import CliRunner

    from deconvviz.cli import app

    result = CliRunner().invoke(app, ["explore", "--host", "0.0.0.0", "--model", "no-such-model", "--no-browser"])
    lines = result.stderr.splitlines()
    assert result.exit_code == 2
    assert len(lines) == 2
    assert lines[0].startswith("warning: listening on 0.0.0.0")
    assert "no-such-model" in lines[1]


def test_without_a_folder_the_explorer_starts_empty_and_takes_uploads(photos: Path) -> None:
    with Explorer(MODEL, None, device="cpu") as empty:
        client = _client(empty)
        assert client.get("/api/images").json() == []
        assert client.get("/").status_code == 200
        topk = client.get("/api/topk", params={"layer": "conv3", "channel": 0}).json()
        assert topk["state"] == "none"
        assert topk["hits"] == []
        assert "IMAGES" in topk["message"]
        entry = client.post("/api/images", files={"file": ("a.png", (photos / "photo0.png").read_bytes())}).json()
        assert _ids(client) == [entry["id"]]
        folder = empty._uploads
        assert [p.name for p in folder.iterdir()] == [f"{entry['id']}.png"]
    assert not folder.exists()  # the uploads' temporary folder goes with the explorer


@pytest.mark.slow  # starts a Jupyter kernel
def test_dv_explore_in_a_kernel_shows_inline_and_the_kernel_shuts_down_by_itself(
    photos: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manager = pytest.importorskip("jupyter_client.manager")
    pytest.importorskip("ipykernel")
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    km, kc = manager.start_new_kernel(kernel_name="python3")
    try:
        code = (
            f"import sys; sys.path.insert(0, {str(ROOT / 'tests')!r})\n"
            f"from conftest import register_tiny_model; register_tiny_model({MODEL!r})\n"
            "import deconvviz as dv\n"
            "import deconvviz.cli  # the command line imports the explorer's package: dv.explore is still callable\n"
            f"ex = dv.explore({MODEL!r}, {str(photos)!r}, device='cpu')\n"
            "ex\n"
        )
        shown: list[dict] = []
        reply = kc.execute_interactive(
            code, timeout=120, output_hook=lambda m: shown.append(m["content"].get("data", {}))
        )
        assert reply["content"]["status"] == "ok"
        html = next(d["text/html"] for d in shown if "text/html" in d)
        assert html.startswith('<iframe src="http://127.0.0.1:')
        kc.shutdown()  # the kernel's own shutdown: the server's thread must not keep it alive
        for _ in range(300):
            if not km.is_alive():
                break
            time.sleep(0.1)
        assert not km.is_alive()
    finally:
        kc.stop_channels()
        if km.is_alive():
            km.shutdown_kernel(now=True)


def test_the_explorer_lists_no_layer_that_holds_its_channels_last(tmp_path: Path) -> None:
    from conftest import ChannelsLastBlock

    loaded = dv.load_model(
        dv.ModelSpec(name="channels-last", builder=ChannelsLastBlock), mean=(0.5,) * 3, std=(0.25,) * 3, size=16
    )
    explorer = Explorer(loaded, None, device="cpu", state_root=tmp_path / "state")
    try:
        nodes = [layer["node"] for layer in explorer.layers()]
    finally:
        explorer.close()
    assert "add" in nodes
    assert not {"permute", "norm", "mlp", "act"} & set(nodes)
