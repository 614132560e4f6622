"""The documentation is tested like code.

- Every ```python block of the README and of the site's pages runs, in order, one namespace per page, with
  small seeded stand-ins for the real models (same names, layer names and aliases, random weights) and
  pictures laid out as the examples name them, so a renamed function or argument fails here.
- Every command line shown (```sh / ```bash blocks) is parsed against the program's own options.
- The site builds with ``mkdocs build --strict``; every internal link and picture of the built site resolves,
  nothing is fetched from the network, and every public name has an entry in the API reference.

Each page's examples share one namespace, which starts with ``import deconvviz as dv``. A block that cannot
run offline is marked by an HTML comment ``<!-- skip -->`` on the line before it.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import re
import runpy
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
import torch
from conftest import chromium
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(p for p in DOCS.rglob("*.md") if "hooks" not in p.relative_to(DOCS).parts)]
SKIP = "<!-- skip -->"
_FENCE = re.compile(r"^(\s*)```+\s*([\w+-]*)")


@dataclass(frozen=True)
class Block:
    """One fenced code block of a Markdown file."""

    path: Path
    line: int  # 1-based line of the opening fence
    language: str
    code: str
    skip: bool

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def fenced_blocks(path: Path) -> list[Block]:
    """The fenced code blocks of a Markdown file, in order."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if match is None:
            i += 1
            continue
        indent, language = match.group(1), match.group(2).lower()
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith("```"):
            body.append(lines[i][len(indent) :] if lines[i].startswith(indent) else lines[i])
            i += 1
        before = next((lines[j].strip() for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        blocks.append(Block(path, start + 1, language, "\n".join(body) + "\n", before == SKIP))
        i += 1
    return blocks


def _page_id(path: Path) -> str:
    return str(path.relative_to(ROOT))


def test_the_block_reader_finds_blocks_and_skip_marks(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("text\n\n```python\na = 1\n```\n\n<!-- skip -->\n\n```python\nb = 2\n```\n\n```sh\nls\n```\n")
    blocks = fenced_blocks(page)
    assert [(b.language, b.code, b.skip) for b in blocks] == [
        ("python", "a = 1\n", False),
        ("python", "b = 2\n", True),
        ("sh", "ls\n", False),
    ]


def test_every_page_with_python_is_run() -> None:
    # The pages the runner below covers: a page whose blocks all went missing would be a silent pass.
    with_python = {_page_id(p) for p in PAGES if _runs_python(p)}
    assert {"README.md", "docs/python.md", "docs/topk.md", "docs/models.md", "docs/evolution.md"} <= with_python


def test_the_readme_is_a_front_page_whose_links_resolve() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) < 200, "the README is the front page; the manual's pages hold the rest"
    targets = re.findall(r"\]\(([^)\s]+)\)", text)
    local = [t for t in targets if not urlsplit(t).scheme]
    assert any(t.startswith("docs/") for t in local)
    missing = [t for t in local if not (ROOT / unquote(urlsplit(t).path)).exists()]
    assert not missing, f"links in the README to files that do not exist: {missing}"


def _resolve(dotted: str) -> object:
    """The object a dotted name such as ``deconvviz.viz.to_rgb`` names, importing modules on the way."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            found: object = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attribute in parts[cut:]:
            found = getattr(found, attribute)
        return found
    raise ImportError(dotted)


def test_every_name_the_text_mentions_exists() -> None:
    # Names in the prose (`dv.top_k`, `deconvviz.viz.to_rgb`) are not run by the examples: look each one up.
    mentioned = {
        (page, match.group(1), match.group(2).rstrip("."))
        for page in PAGES
        for match in re.finditer(r"\b(dv|deconvviz)\.([A-Za-z_][\w.]*)", page.read_text(encoding="utf-8"))
    }
    assert len(mentioned) > 20
    missing = []
    for page, prefix, name in sorted(mentioned):
        try:
            _resolve(f"deconvviz.{name}")
        except (ImportError, AttributeError):
            missing.append(f"{_page_id(page)}: {prefix}.{name}")
    assert not missing, "names that do not exist: " + ", ".join(missing)


# ------------------------------------------------------------------------------------- stand-in models

# VGG16's layout (node names features.0 ... features.30, so its aliases hold) at a fraction of its widths.
_VGG_WIDTHS = [8, 8, "M", 16, 16, "M", 32, 32, 32, "M", 48, 48, 48, "M", 48, 48, 48, "M"]
_SIZE = 96  # conv5_3 is 6 x 6 at this size, so the examples' units (3, 5) and channels (12, 40) exist


def _seeded(module: nn.Module) -> nn.Module:
    """Seeded He-normal weights, so that activations neither vanish nor explode through the stand-ins."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("bias"):
                p.copy_(torch.rand(p.shape, generator=generator) * 0.1)
            else:
                p.copy_(torch.randn(p.shape, generator=generator) * (2.0 / p[0].numel()) ** 0.5)
    return module.eval()


class SmallVGG16(nn.Module):
    """VGG16's conv base with its node names (so its aliases hold) and few channels."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for item in _VGG_WIDTHS:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(channels, int(item), 3, padding=1), nn.ReLU(inplace=True)]
                channels = int(item)
        self.features = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


MYNETS = '''
from torch import nn


def build() -> nn.Module:
    """A small CNN, as a user's own module would define it."""
    return Net()


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
        )

    def forward(self, x):
        return self.features(x)
'''


@pytest.fixture
def stand_ins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A folder laid out as the examples expect, and small stand-ins registered under the real models' names."""
    from PIL import Image

    import deconvviz as dv

    examples = ROOT / "examples"
    work = tmp_path / "work"
    (work / "photos").mkdir(parents=True)
    for name in ("cat", "coffee", "astronaut", "raccoon", "rocket"):
        picture = Image.open(examples / f"{name}.jpg").convert("RGB")
        picture.save(work / f"{name}.jpg")
        small = picture.copy()
        small.thumbnail((160, 160))
        small.save(work / "photos" / f"{name}.jpg")
    for alias, name in (("photo", "cat"), ("a", "coffee"), ("b", "rocket")):
        shutil.copy(work / f"{name}.jpg", work / f"{alias}.jpg")
    # Labelled pictures, one folder per class, as the discrimination page's examples expect.
    for label, names in (("animals", ("cat", "raccoon")), ("objects", ("coffee", "rocket"))):
        (work / "pictures" / label).mkdir(parents=True)
        for name in names:
            small = Image.open(work / "photos" / f"{name}.jpg")
            small.save(work / "pictures" / label / f"{name}.jpg")
            small.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(work / "pictures" / label / f"{name}-mirrored.jpg")
    (work / "examples").symlink_to(examples, target_is_directory=True)
    # What examples/digits_evolution.py writes, at a glance's size: pictures and two checkpoints.
    digits = work / "out" / "digits"
    (digits / "images").mkdir(parents=True)
    (digits / "checkpoints").mkdir()
    for picture in (work / "photos").iterdir():
        Image.open(picture).resize((32, 32)).save(digits / "images" / f"{picture.stem}.png")
    build_digits_cnn = runpy.run_path(str(examples / "digits_evolution.py"))["build"]
    for epoch in (1, 4):
        torch.manual_seed(epoch)
        torch.save(build_digits_cnn().state_dict(), digits / "checkpoints" / f"epoch{epoch:02d}.pt")
    (work / "mynets.py").write_text(MYNETS)
    monkeypatch.chdir(work)
    monkeypatch.syspath_prepend(str(work))
    sys.modules.pop("mynets", None)
    from mynets import build

    torch.save(build().state_dict(), work / "weights.pt")

    registry = sys.modules[dv.register_model.__module__]._REGISTRY
    sessions = sys.modules[dv.session.__module__]._SESSIONS
    before = dict(registry)
    vgg16, squeezenet = before["vgg16"], before["squeezenet1_1"]
    dv.register_model(
        dataclasses.replace(
            vgg16,
            builder=lambda: _seeded(SmallVGG16()),
            weights=None,
            preprocessing=dataclasses.replace(vgg16.preprocessing, size=_SIZE, resize=None),
        ),
        replace=True,
    )
    dv.register_model(
        dataclasses.replace(
            squeezenet,
            builder=lambda: _seeded(squeezenet.builder()),
            weights=None,
            preprocessing=dataclasses.replace(squeezenet.preprocessing, size=_SIZE, resize=None),
        ),
        replace=True,
    )
    sessions.clear()
    try:
        yield work
    finally:
        registry.clear()
        registry.update(before)
        sessions.clear()
        sys.modules.pop("mynets", None)


def _runs_python(page: Path) -> bool:
    return any(b.language == "python" and not b.skip for b in fenced_blocks(page))


# Pages whose examples write many figures (matplotlib takes seconds each): run with the slow tests.
SLOW_PAGES = {"docs/python.md", "docs/topk.md", "docs/sanity.md"}
WITH_PYTHON = [
    pytest.param(p, id=_page_id(p), marks=[pytest.mark.slow] if _page_id(p) in SLOW_PAGES else [])
    for p in PAGES
    if _runs_python(p)
]


@pytest.mark.parametrize("page", WITH_PYTHON)
def test_python_examples_run(page: Path, stand_ins: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import deconvviz

    # Every page reads as if `import deconvviz as dv` came first, as the manual assumes.
    namespace: dict[str, object] = {"__name__": "__docs__", "dv": deconvviz}
    ran = 0
    try:
        for block in fenced_blocks(page):
            if block.language != "python" or block.skip:
                continue
            code = compile(block.code, block.where, "exec")
            try:
                exec(code, namespace)
            except Exception as exc:
                raise AssertionError(f"the example at {block.where} fails: {type(exc).__name__}: {exc}") from exc
            ran += 1
    finally:
        plt.close("all")
    assert ran > 0


# ---------------------------------------------------------------------------------------- command lines


def command_lines(block: Block) -> list[list[str]]:
    """The deconvviz invocations of a shell block, as argument lists after the program's name."""
    found = []
    for line in block.code.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        if words[:1] == ["deconvviz"]:
            found.append(words[1:])
        elif words[:1] == ["torchrun"] and "-m" in words and words[words.index("-m") + 1] == "deconvviz":
            found.append(words[words.index("-m") + 2 :])
    return found


def _shown_commands() -> list[tuple[str, list[str]]]:
    return [
        (block.where, args)
        for page in PAGES
        for block in fenced_blocks(page)
        if block.language in {"sh", "bash", "shell", "console"} and not block.skip
        for args in command_lines(block)
    ]


def test_the_command_reader_joins_continued_lines() -> None:
    block = Block(
        ROOT / "README.md", 1, "sh", "deconvviz a --x 1 \\\n    --y 2  # note\ntorchrun -m deconvviz b\n", False
    )
    assert command_lines(block) == [["a", "--x", "1", "--y", "2"], ["b"]]


def test_every_command_line_shown_parses() -> None:
    import typer

    app = importlib.import_module("deconvviz.cli").app
    program = typer.main.get_command(app)
    shown = _shown_commands()
    assert len(shown) > 20
    used = set()
    for where, args in shown:
        at = next((i for i, word in enumerate(args) if not word.startswith("-")), len(args))
        assert at < len(args), f"{where}: no command in {args}"
        name, rest = args[at], args[at + 1 :]
        try:
            with program.make_context("deconvviz", args[: at + 1]) as ctx:
                command = program.get_command(ctx, name)
                assert command is not None, f"{where}: no command {name!r}"
                command.make_context(name, list(rest), parent=ctx).close()
        except Exception as exc:  # click's usage errors, wherever typer takes click from
            message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
            raise AssertionError(f"the command line at {where} does not parse: {message}") from exc
        used.add(name)
    assert set(program.commands) <= used, f"commands never shown: {sorted(set(program.commands) - used)}"


# ----------------------------------------------------------------------------------------- built site


class _Links(HTMLParser):
    """The ids, links and pictures of one HTML page."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.refs: list[tuple[str, str, str]] = []  # (tag, attribute, value)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if value is None:
                continue
            if name in {"id", "name"}:
                self.ids.add(value)
            elif name in {"href", "src"}:
                self.refs.append((tag, name, value))


def _parse(page: Path) -> _Links:
    parser = _Links()
    parser.feed(page.read_text(encoding="utf-8"))
    return parser


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    out = tmp_path_factory.mktemp("site") / "site"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env["NO_MKDOCS_2_WARNING"] = "1"
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stdout}\n{done.stderr}"
    return out


def broken_links(site: Path) -> list[str]:
    """Every link or picture of the HTML pages under ``site`` that does not resolve, and every fetch from elsewhere."""
    # 404.html is for a web server, which shows it at any address: its links are root-absolute on purpose.
    pages = sorted(p for p in site.rglob("*.html") if p.name != "404.html")
    parsed = {page.resolve(): _parse(page) for page in pages}
    root = site.resolve()
    broken = []
    for page, links in parsed.items():
        here = page.relative_to(root)
        for tag, attribute, value in links.refs:
            url = urlsplit(value)
            if url.scheme or url.netloc:
                # Nothing is fetched from elsewhere (fonts, scripts, styles, pictures); plain links may leave.
                if not (tag == "a" and attribute == "href"):
                    broken.append(f"{here}: fetches {value}")
                continue
            target = page if not url.path else (page.parent / unquote(url.path)).resolve()
            if url.path.endswith("/"):
                target = target / "index.html"
            if not target.is_relative_to(root) or not target.is_file():
                broken.append(f"{here}: {value} (no such file in the site)")
                continue
            fragment = unquote(url.fragment)
            if fragment and target.suffix == ".html" and fragment not in parsed[target].ids:
                broken.append(f"{here}: {value} (no anchor #{fragment})")
    return broken


def test_the_link_checker_finds_what_is_broken(tmp_path: Path) -> None:
    (tmp_path / "a.html").write_text(
        '<h2 id="here">x</h2><a href="b.html#there">b</a><a href="#here">self</a><img src="pic.png">'
        '<a href="https://example.org">out</a><script src="https://cdn.example.org/x.js"></script>'
        '<a href="missing.html">m</a><a href="b.html#nowhere">n</a><a href="../outside.html">o</a>'
    )
    (tmp_path / "b.html").write_text('<p id="there">y</p><a href="a.html"><img src="pic.png"></a>')
    (tmp_path / "pic.png").write_bytes(b"png")
    assert broken_links(tmp_path) == [
        "a.html: fetches https://cdn.example.org/x.js",
        "a.html: missing.html (no such file in the site)",
        "a.html: b.html#nowhere (no anchor #nowhere)",
        "a.html: ../outside.html (no such file in the site)",
    ]


@pytest.mark.slow
def test_every_link_and_picture_of_the_site_resolves(site: Path) -> None:
    assert len(list(site.rglob("*.html"))) >= 15
    broken = broken_links(site)
    assert not broken, "\n".join(broken)


@pytest.mark.slow
def test_every_public_name_has_a_reference_entry(site: Path) -> None:
    import deconvviz

    ids = _parse(site / "reference.html").ids
    missing = [name for name in deconvviz.__all__ if f"deconvviz.{name}" not in ids]
    assert not missing
    text = (site / "reference.html").read_text(encoding="utf-8")
    # Docstring sections are rendered as sections, and no Sphinx role is left raw.
    assert "Parameters:" in text or "Parameters" in text
    assert ":class:`" not in text
    assert ":func:`" not in text


@pytest.mark.slow
def test_every_picture_in_docs_is_shown(site: Path) -> None:
    shown = {Path(unquote(urlsplit(v).path)).name for p in site.rglob("*.html") for _, _, v in _parse(p).refs}
    pictures = {p.name for p in DOCS.glob("*.png")}
    assert pictures <= shown, f"pictures in docs/ that no page shows: {sorted(pictures - shown)}"


# ------------------------------------------------------------------------------------------- in a browser

_IMAGES = "return Array.from(document.images).map(i => [i.getAttribute('src'), i.complete, i.naturalWidth])"


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory):
    driver = chromium(tmp_path_factory.mktemp("chromium"))
    yield driver
    driver.quit()


@pytest.mark.slow
@pytest.mark.browser
def test_the_site_opens_from_disk_in_a_browser(site: Path, browser) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    pages = sorted(p for p in site.glob("*.html") if p.name != "404.html")
    for page in pages:
        browser.get(page.as_uri())
        browser.execute_script("Array.from(document.images).forEach(i => { i.loading = 'eager'; })")
        WebDriverWait(browser, 20).until(lambda b: all(done for _, done, _ in b.execute_script(_IMAGES)))
        blank = [src for src, _, width in browser.execute_script(_IMAGES) if not width]
        assert not blank, f"{page.name}: pictures that do not load: {blank}"
    # A reader's path: from the front page through the navigation to the reference and one entry in it.
    browser.get((site / "index.html").as_uri())
    browser.find_element("link text", "API reference").click()
    assert Path(unquote(urlsplit(browser.current_url).path)).name == "reference.html"
    assert browser.find_element("id", "deconvviz.DeconvNet").is_displayed()
