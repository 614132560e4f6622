"""Nothing lost, nothing injected: hostile file names, foreign folders, colliding names, races, odd files."""

from __future__ import annotations

import json
import os
import threading
import time
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
import pytest
import torch
from conftest import register_tiny_model
from PIL import Image
from typer.testing import CliRunner

import deconvviz as dv
from deconvviz.cli import app
from deconvviz.io.atomic import MARKER
from deconvviz.io.images import ImageError, load_image
from deconvviz.viz.report import ReportError, build_report

MODEL = "tiny-safety"
QUICK = {"model": MODEL, "layers": "conv1", "channels": 2, "k": 2, "device": "cpu"}


@pytest.fixture(scope="module", autouse=True)
def tiny_model() -> None:
    register_tiny_model(MODEL)


def _picture(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (36, 40, 3), dtype=np.uint8)).save(path, format="PNG")
    return path


def _render(*args: object) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["render", "--model", MODEL, "--device", "cpu", *map(str, args)])
    return result.exit_code, result.stderr


def _listing(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


class _Elements(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, dict(attrs)))


# Every element and attribute the report's own pages use; a file name must not add any.
_ALLOWED = {
    "html": {"lang"},
    "head": set(),
    "meta": {"charset", "name", "content"},
    "title": set(),
    "style": set(),
    "body": set(),
    "header": set(),
    "h1": set(),
    "h2": set(),
    "h3": set(),
    "a": {"href", "title"},
    "main": set(),
    "p": {"class"},
    "b": set(),
    "br": set(),
    "div": {"class", "id", "style"},
    "img": {"src", "alt", "loading"},
    "table": set(),
    "tr": set(),
    "td": {"class"},
    "th": set(),
    "ul": {"class"},
    "li": set(),
    "span": {"class"},
}


def _check_pages(report: Path) -> int:
    pages = sorted(report.rglob("*.html"))
    for page in pages:
        parser = _Elements()
        parser.feed(page.read_text(encoding="utf-8"))
        parser.close()
        for tag, attributes in parser.elements:
            assert tag in _ALLOWED, (page, tag, attributes)
            assert set(attributes) <= _ALLOWED[tag], (page, tag, attributes)
            for name in ("href", "src"):
                if attributes.get(name):
                    link = urlsplit(str(attributes[name]))
                    assert not link.scheme, (page, attributes)
                    assert not link.netloc, (page, attributes)
                    target = (page.parent / unquote(link.path)).resolve()
                    assert target.is_file(), (page, attributes)  # every link leads to a file inside the report
                    assert target.is_relative_to(report.resolve())
    return len(pages)


# ---------------------------------------------------------------------------------------- 1. injection


def test_hostile_file_and_folder_names_cannot_change_the_reports_html(tmp_path: Path) -> None:
    photos = tmp_path / "inj"
    _picture(photos / "sub <b>x</b>" / "x'><img src=x onerror=alert(3)>.png", 1)
    _picture(photos / "' onerror='alert(2).jpg", 2)
    _picture(photos / 'q"><script>alert(1)</script>.png', 3)
    _picture(photos / "plain.png", 4)
    out = tmp_path / "inj-rep"
    build_report(photos, out, **QUICK, per_image=True)  # type: ignore[arg-type]
    assert _check_pages(out) == 1 + 1 + 2 + 4  # index, one layer page, two channel pages, four image pages
    index = (out / "index.html").read_text(encoding="utf-8")
    assert "onerror=alert" not in index.replace("onerror=alert(3)&gt;", "")  # the name is shown only as text
    assert "<script>" not in "".join(p.read_text(encoding="utf-8") for p in out.rglob("*.html"))


# ------------------------------------------------------------------------------ 2. foreign folders kept


def test_overwrite_never_deletes_a_folder_deconvviz_did_not_write(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    _picture(photos / "a.png")
    webapp = tmp_path / "webapp"
    (webapp / "src").mkdir(parents=True)
    (webapp / "manifest.json").write_text('{"name": "pwa"}')
    (webapp / "src" / "app.js").write_text("code")
    with pytest.raises(ReportError, match="not written by deconvviz"):
        build_report(photos, webapp, **QUICK, overwrite=True)  # type: ignore[arg-type]
    assert (webapp / "src" / "app.js").read_text() == "code"
    assert _listing(webapp) == ["manifest.json", "src", "src/app.js"]
    (webapp / "manifest.json").write_text('{"tool": "deconvviz"}')  # even a manifest that claims to be ours
    with pytest.raises(ReportError, match="not written by deconvviz"):
        build_report(photos, webapp, **QUICK, overwrite=True)  # type: ignore[arg-type]
    assert (webapp / "src" / "app.js").read_text() == "code"


# --------------------------------------------------------------------------------------- 3. collisions


def test_colliding_names_give_one_result_folder_per_picture(tmp_path: Path) -> None:
    pictures = [
        _picture(tmp_path / "a" / "cat.png", 1),
        _picture(tmp_path / "b" / "cat.png", 2),
        _picture(tmp_path / "cat-2.png", 3),
        _picture(tmp_path / "c" / "Cat.png", 4),
    ]
    out = tmp_path / "o"
    result = CliRunner().invoke(
        app,
        [
            "render",
            *map(str, pictures),
            "--model",
            MODEL,
            "--device",
            "cpu",
            "--layer",
            "conv1",
            "--top",
            "1",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.stderr
    folders = sorted(p.name for p in out.iterdir())
    assert len(folders) == 4
    assert len({f.casefold() for f in folders}) == 4
    images = {json.loads((out / f / "manifest.json").read_text())["image"] for f in folders}
    assert images == {str(p) for p in pictures}  # each picture's own result, none overwritten by another


def test_a_picture_given_twice_is_rendered_once_with_a_warning(tmp_path: Path) -> None:
    cat = _picture(tmp_path / "cat.png", 1)
    other = _picture(tmp_path / "dog.png", 2)
    out = tmp_path / "o"
    again = tmp_path / "x" / ".." / "cat.png"
    (tmp_path / "x").mkdir()
    args = [str(cat), str(other), str(again), "--model", MODEL, "--device", "cpu", "-l", "conv1", "--top", "1"]
    result = CliRunner().invoke(app, ["render", *args, "--out", str(out)])
    assert result.exit_code == 0, result.stderr
    assert f"warning: {str(again)!r} is given more than once; it is rendered once" in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["cat", "dog"]


@pytest.mark.slow  # a whole report with a page per picture: some 3 s
def test_colliding_names_in_a_per_image_report(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    for i, name in enumerate(["a/cat.png", "b/cat.png", "cat-2.png", "..png", "...png", "c/..png"]):
        _picture(photos / name, i)
    out = tmp_path / "report"
    report = build_report(photos, out, **QUICK, per_image=True)  # type: ignore[arg-type]
    assert report.images == 6
    assert report.skipped == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["pages"]["images"]) == 6
    assert len(list((out / "images").glob("*.html"))) == 6
    assert _check_pages(out) == 1 + 1 + 2 + 6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos", "report"]  # nothing above the report


# ----------------------------------------------------------------------------------- 4. races at the end


def test_a_folder_created_at_the_target_during_a_report_survives(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    _picture(photos / "a.png")
    out = tmp_path / "report"

    def meanwhile(stage: str, done: int, total: int) -> None:
        if stage == "write" and not out.exists():
            (out / "work").mkdir(parents=True)
            (out / "work" / "notes.txt").write_text("mine")

    with pytest.raises(ReportError, match="appeared while deconvviz was writing it"):
        build_report(photos, out, **QUICK, progress=meanwhile)  # type: ignore[arg-type]
    assert _listing(out) == ["work", "work/notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos", "report"]


def test_a_folder_created_at_the_target_during_a_render_survives(tmp_path: Path) -> None:
    picture = _picture(tmp_path / "cat.png")
    out = tmp_path / "out"

    def meanwhile(done: int, total: int, what: str) -> None:
        if done == total:
            (out / "cat").mkdir(parents=True, exist_ok=True)
            (out / "cat" / "notes.txt").write_text("mine")

    with pytest.raises(dv.OutputError, match="appeared while deconvviz was writing it"):
        dv.render_images([picture], out, model=MODEL, layers="conv1", top=1, device="cpu", progress=meanwhile)
    assert _listing(out) == ["cat", "cat/notes.txt"]


def test_of_two_reports_without_overwrite_the_second_refuses(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    _picture(photos / "a.png")
    out = tmp_path / "report"

    def first_finishes_meanwhile(stage: str, done: int, total: int) -> None:
        if stage == "write" and not out.exists():
            build_report(photos, out, **{**QUICK, "channels": 1})  # type: ignore[arg-type]

    with pytest.raises(ReportError, match="appeared while deconvviz"):
        build_report(photos, out, **QUICK, progress=first_finishes_meanwhile)  # type: ignore[arg-type]
    assert json.loads((out / "manifest.json").read_text())["arguments"]["channels"] == 1  # the first one's


# ------------------------------------------------------------------------------------- 6. own output


@pytest.mark.slow  # two whole reports: some 3 s
def test_a_report_inside_its_input_folder_never_scans_itself(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    for i in range(3):
        _picture(photos / f"p{i}.png", i)
    first = build_report(photos, photos / "report", **QUICK, per_image=True)  # type: ignore[arg-type]
    again = build_report(photos, photos / "report", **QUICK, per_image=True, overwrite=True)  # type: ignore[arg-type]
    assert first.images == again.images == 3
    with pytest.raises(dv.DeconvVizError, match="folder deconvviz wrote"):
        build_report(photos / "report", tmp_path / "r2", **QUICK)  # type: ignore[arg-type]


# -------------------------------------------------------------------------------------- 7. odd files


def _finishes_within(seconds: float, work: object) -> BaseException | None:
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            work()  # type: ignore[operator]
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    started = time.monotonic()
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still waiting after {time.monotonic() - started:.1f} s"
    return outcome[0]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this system")
def test_a_fifo_is_refused_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    error = _finishes_within(1, lambda: load_image(fifo))
    assert isinstance(error, ImageError)
    assert "not a regular file" in str(error)
    result = CliRunner().invoke(
        app, ["render", str(fifo), "--model", MODEL, "--device", "cpu", "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1
    assert "not a regular file" in result.stderr
    assert not (tmp_path / "o").exists()
    photos = tmp_path / "photos"
    _picture(photos / "a.png")
    os.mkfifo(photos / "b.png")
    found = _finishes_within(60, lambda: build_report(photos, tmp_path / "r", **QUICK))  # type: ignore[arg-type]
    assert found is None
    assert [e["image"] for e in json.loads((tmp_path / "r" / "manifest.json").read_text())["errors"]] == ["b.png"]


# ------------------------------------------------------------------------------------------- 8. smaller


def test_an_oversized_size_is_refused_before_any_work(tmp_path: Path) -> None:
    picture = _picture(tmp_path / "a.png")
    result = CliRunner().invoke(
        app,
        ["render", str(picture), "--model", MODEL, "--device", "cpu", "--size", "4000", "--out", str(tmp_path / "o")],
    )
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1
    assert "smaller --size" in result.stderr
    assert not (tmp_path / "o").exists()


def test_an_interrupted_render_leaves_no_folder_it_made(tmp_path: Path) -> None:
    picture = _picture(tmp_path / "a.png")
    out = tmp_path / "new" / "deeper" / "out"

    def interrupt(done: int, total: int, what: str) -> None:
        if done:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        dv.render_images([picture], out, model=MODEL, layers="conv1", top=1, device="cpu", progress=interrupt)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]


def test_sigterm_is_handled_as_ctrl_c_with_its_own_status(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import signal

    picture = _picture(tmp_path / "a.png")
    out = tmp_path / "o"
    real = dv.render_images

    def killed(*args: object, **kwargs: object) -> object:
        def kill(done: int, total: int, what: str) -> None:
            if done:
                os.kill(os.getpid(), signal.SIGTERM)  # a kill arrives while the model works

        return real(*args, **{**kwargs, "progress": kill})  # type: ignore[arg-type]

    monkeypatch.setattr(dv, "render_images", killed)
    before = signal.getsignal(signal.SIGTERM)
    result = CliRunner().invoke(
        app, ["render", str(picture), "--model", MODEL, "--device", "cpu", "--layer", "conv1", "--out", str(out)]
    )
    assert result.exit_code == 143, result.output
    assert result.stderr.strip() == "interrupted; nothing was left half-written"
    assert not out.exists()
    assert signal.getsignal(signal.SIGTERM) == before  # the command leaves the process's handler as it found it


def test_an_earlier_result_that_cannot_be_removed_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from deconvviz.io import atomic

    picture = _picture(tmp_path / "a.png")
    out = tmp_path / "o"
    dv.render_images([picture], out, model=MODEL, layers="conv1", top=1, device="cpu")
    monkeypatch.setattr(atomic, "_remove_marked", lambda folder: None)  # as a read-only folder refuses it
    with pytest.warns(UserWarning, match=r"the earlier result replaced at .* could not be removed and is left at"):
        dv.render_images([picture], out, model=MODEL, layers="conv1", top=1, device="cpu")
    assert (out / "a" / "manifest.json").is_file()


def test_a_very_large_picture_warns_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    picture = _picture(tmp_path / "a.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 40 x 36 = 1,440 pixels: over the warning's limit
    result = CliRunner().invoke(
        app,
        ["render", str(picture), "--model", MODEL, "--device", "cpu", "--layer", "conv1", "--out", str(tmp_path / "o")],
    )
    assert result.exit_code == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "megapixel" in line]
    assert len(warnings) == 1
    assert warnings[0].startswith("warning: ")
    assert "Traceback" not in result.stderr
    assert "DecompressionBomb" not in result.stderr


def test_a_picture_too_large_to_open_is_one_line_with_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    picture = _picture(tmp_path / "a.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # 1,440 pixels: over twice the limit, refused
    out = tmp_path / "o"
    result = CliRunner().invoke(
        app, ["render", str(picture), "--model", MODEL, "--device", "cpu", "--layer", "conv1", "--out", str(out)]
    )
    assert result.exit_code == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: image {str(picture)!r} is too large to open safely (")
    assert line.endswith("; resize it below 0.001 megapixels")
    assert not out.exists()


def test_top_k_leaves_the_callers_model_where_it_is(tmp_path: Path) -> None:
    from deconvviz.analysis.topk.scan import _loaded

    loaded = dv.load_model(MODEL, device="cpu")
    moved = _loaded(loaded, "meta")
    assert next(loaded.module.parameters()).device == torch.device("cpu")
    assert next(moved.module.parameters()).device == torch.device("meta")
    assert _loaded(loaded, "cpu") is loaded


def test_results_carry_the_marker_and_readme_warns_about_model_files() -> None:
    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text(encoding="utf-8")
    assert "use them only with code you trust" in readme
    # The manual's page on models shows a checkpoint read without pickled code.
    models_page = (root / "docs" / "models.md").read_text(encoding="utf-8")
    assert 'torch.load("weights.pt", weights_only=True)' in models_page
    assert MARKER.startswith(".")
