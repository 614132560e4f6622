"""The one result writer, result names and HTML escaping (deconvviz.io)."""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path

import pytest

from deconvviz.io import atomic as atomic_module
from deconvviz.io.atomic import MARKER, OutputError, atomic_file, owned, stage_folders, write_file
from deconvviz.io.names import NameMap, clean_name
from deconvviz.io.web import text, url


@pytest.fixture(params=["renameat2", "fallback"])
def renames(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every writer test runs with the kernel's renameat2 and with the fallback used where it is missing."""
    if request.param == "fallback":
        monkeypatch.setattr(atomic_module, "_renameat2", lambda source, target, flags: False)
    return str(request.param)


def _write(target: Path, content: str, *, replace: bool = True) -> None:
    with stage_folders([target], kind="test", replace=replace) as (folder,):
        (folder / "result.txt").write_text(content)


def _foreign(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "thesis.tex").write_text("precious")
    return folder


def _dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, check=True)
    return int(done.stdout)


def _siblings(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir())


# ------------------------------------------------------------------------------------------------ files


def test_write_file_replaces_whole_and_keeps_the_usual_mode(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "a.bin"
    write_file(path, b"one")
    write_file(path, b"two", durable=True)
    assert path.read_bytes() == b"two"
    mask = os.umask(0o022)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask
    assert _siblings(path.parent) == ["a.bin"]


def test_a_failed_file_write_leaves_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic_file(path) as temporary:  # noqa: PT012
        temporary.write_text("half")
        raise RuntimeError
    assert path.read_text() == "old"
    assert _siblings(tmp_path) == ["a.txt"]


# ---------------------------------------------------------------------------------------------- folders


def test_a_new_result_appears_whole_with_its_marker(tmp_path: Path, renames: str) -> None:
    target = tmp_path / "deep" / "er" / "out"
    _write(target, "one")
    assert (target / "result.txt").read_text() == "one"
    assert owned(target)
    assert json.loads((target / MARKER).read_text())["kind"] == "test"
    assert _siblings(target.parent) == ["out"]


def test_an_earlier_result_is_replaced_only_when_asked(tmp_path: Path, renames: str) -> None:
    target = tmp_path / "out"
    _write(target, "one")
    with pytest.raises(OutputError, match="already exists; pass --overwrite"):
        _write(target, "two", replace=False)
    assert (target / "result.txt").read_text() == "one"
    _write(target, "two")
    assert (target / "result.txt").read_text() == "two"
    assert _siblings(tmp_path) == ["out"]


@pytest.mark.parametrize("decoy", ["manifest", "symlinked marker", "marker of another tool"])
def test_a_folder_deconvviz_did_not_write_is_never_replaced(tmp_path: Path, renames: str, decoy: str) -> None:
    target = _foreign(tmp_path / "webapp")
    if decoy == "manifest":  # a generic manifest.json, even one that says deconvviz, is no proof of ownership
        (target / "manifest.json").write_text('{"tool": "deconvviz"}')
    elif decoy == "symlinked marker":
        (tmp_path / "elsewhere").write_text('{"tool": "deconvviz"}')
        (target / MARKER).symlink_to(tmp_path / "elsewhere")
    else:
        (target / MARKER).write_text('{"tool": "other"}')
    with pytest.raises(OutputError, match="not written by deconvviz"):
        _write(target, "mine")
    assert (target / "thesis.tex").read_text() == "precious"
    assert "result.txt" not in _siblings(target)
    assert len(_siblings(tmp_path)) == 1 + (decoy == "symlinked marker")


def test_a_file_or_link_at_the_target_is_refused(tmp_path: Path, renames: str) -> None:
    (tmp_path / "file").write_text("x")
    (tmp_path / "link").symlink_to(tmp_path)
    for name in ("file", "link"):
        with pytest.raises(OutputError, match="is not a folder"):
            _write(tmp_path / name, "mine")
    assert (tmp_path / "file").read_text() == "x"
    assert (tmp_path / "link").is_symlink()


@pytest.mark.parametrize("earlier", [False, True])
def test_a_folder_that_appears_meanwhile_survives(tmp_path: Path, renames: str, earlier: bool) -> None:
    target = tmp_path / "out"
    if earlier:
        _write(target, "one")
    with pytest.raises(OutputError, match="appeared while deconvviz was writing it"):  # noqa: PT012
        with stage_folders([target], kind="test", replace=True) as (folder,):
            (folder / "result.txt").write_text("two")
            if earlier:  # someone moves our old result away and puts their own folder there
                target.rename(tmp_path / "moved")
            _foreign(target)
    assert (target / "thesis.tex").read_text() == "precious"
    expected = sorted(["out", *(["moved"] if earlier else [])])
    assert _siblings(tmp_path) == expected


def test_a_result_that_appears_meanwhile_is_not_replaced_without_overwrite(tmp_path: Path, renames: str) -> None:
    """Two runs without overwrite: the second refuses instead of replacing the first's result."""
    target = tmp_path / "out"
    with pytest.raises(OutputError, match="appeared while deconvviz"):  # noqa: PT012
        with stage_folders([target], kind="test", replace=False) as (folder,):
            (folder / "result.txt").write_text("second")
            _write(target, "first", replace=False)
    assert (target / "result.txt").read_text() == "first"
    assert _siblings(tmp_path) == ["out"]


def test_an_error_leaves_nothing_not_even_the_parents_it_made(tmp_path: Path, renames: str) -> None:
    target = tmp_path / "new" / "deeper" / "out"
    with pytest.raises(KeyboardInterrupt), stage_folders([target], kind="test", replace=True) as (folder,):  # noqa: PT012
        (folder / "half.txt").write_text("half")
        raise KeyboardInterrupt
    assert _siblings(tmp_path) == []


def test_several_results_move_in_together_or_not_at_all(tmp_path: Path, renames: str) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    _write(a, "old a")
    with pytest.raises(OutputError, match="appeared"):  # noqa: PT012
        with stage_folders([a, b], kind="test", replace=True) as (fa, fb):
            (fa / "result.txt").write_text("new a")
            (fb / "result.txt").write_text("new b")
            _foreign(b)  # b cannot be written at the end: a must be put back as it was
    assert (a / "result.txt").read_text() == "old a"
    assert (b / "thesis.tex").read_text() == "precious"
    assert _siblings(tmp_path) == ["a", "b"]


def test_two_targets_of_one_name_are_refused(tmp_path: Path) -> None:
    with (
        pytest.raises(ValueError, match="same folder"),
        stage_folders([tmp_path / "a", tmp_path / "a"], kind="t", replace=True),
    ):
        pass


def test_staging_left_by_a_dead_process_is_cleaned_and_nothing_else(tmp_path: Path) -> None:
    dead, alive = _dead_pid(), os.getpid()
    marker = json.dumps({"tool": "deconvviz", "host": socket.gethostname(), "pid": dead})
    stale = tmp_path / f".out.deconvviz-staging-{dead}-0a0b"
    live = tmp_path / f".out.deconvviz-staging-{alive}-0c0d"
    empty = tmp_path / f".other.deconvviz-staging-{dead}-0e0f"  # killed before it wrote its marker
    stranger = tmp_path / f".x.deconvviz-staging-{dead}-1111"  # looks like ours, holds someone's files
    remote = tmp_path / f".y.deconvviz-staging-{dead}-2222"  # another machine's run on a shared disk
    for folder in (stale, live, empty, stranger, remote):
        folder.mkdir()
    for folder in (stale, live):
        (folder / MARKER).write_text(marker)
        (folder / "half.png").write_bytes(b"x")
    (stranger / "notes.txt").write_text("mine")
    (remote / MARKER).write_text(json.dumps({"tool": "deconvviz", "host": "elsewhere", "pid": dead}))
    _write(tmp_path / "out", "new")
    assert not stale.exists()
    assert not empty.exists()
    assert live.exists()
    assert (stranger / "notes.txt").exists()
    assert remote.exists()


class _Killed(BaseException):
    """Stands for a SIGKILL: nothing after it runs, no ``except OSError`` catches it."""


class _KillAt:
    """Wraps file system calls so that the call after ``step`` of them is killed."""

    def __init__(self, step: int) -> None:
        self.step, self.done = step, 0

    def wrap(self, real: Callable[..., None]) -> Callable[..., None]:
        def call(*args: object, **kwargs: object) -> None:
            if self.done == self.step:
                raise _Killed
            self.done += 1
            real(*args, **kwargs)

        return call


def _result_tree(folder: Path, marker: str) -> None:
    folder.mkdir()
    (folder / MARKER).write_text(marker)
    for sub in ("layers/conv1", "layers/conv2", "images"):
        (folder / sub).mkdir(parents=True)
        for i in range(3):
            (folder / sub / f"ch{i}.html").write_text("x")
    (folder / "index.html").write_text("x")


def test_a_removal_cut_short_anywhere_leaves_a_folder_the_next_run_can_finish(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An earlier result is removed after the new one is in place; a kill at any step must not orphan it."""
    dead = _dead_pid()
    marker = json.dumps({"tool": "deconvviz", "host": socket.gethostname(), "pid": dead})
    unlink, rmdir = os.unlink, os.rmdir
    cut = 0
    while True:
        parent = tmp_path / f"try{cut}"
        parent.mkdir()
        folder = parent / f".out.deconvviz-staging-{dead}-0a0b"
        _result_tree(folder, marker)
        kill = _KillAt(cut)
        monkeypatch.setattr(os, "unlink", kill.wrap(unlink))
        monkeypatch.setattr(os, "rmdir", kill.wrap(rmdir))
        try:
            atomic_module._remove_marked(folder)
            finished = True
        except _Killed:
            finished = False
        finally:
            monkeypatch.setattr(os, "unlink", unlink)
            monkeypatch.setattr(os, "rmdir", rmdir)
        if finished:
            assert not folder.exists()
            break
        if folder.exists() and any(folder.iterdir()):
            assert (folder / MARKER).read_text() == marker  # what is left is still known as ours
        expected = [folder] if folder.exists() else []
        assert atomic_module.clean_stale(parent) == expected
        assert _siblings(parent) == []
        cut += 1
    assert cut > 10  # the kill really came at every step of a removal of many files


def test_a_marker_cut_short_counts_as_nothing_written(tmp_path: Path) -> None:
    dead = _dead_pid()
    cut = tmp_path / f".out.deconvviz-staging-{dead}-0a0b"  # killed between creating the marker and writing it
    cut.mkdir()
    (cut / MARKER).touch()
    odd = tmp_path / f".odd.deconvviz-staging-{dead}-0c0d"  # an empty marker beside files is not ours to judge
    odd.mkdir()
    (odd / MARKER).touch()
    (odd / "notes.txt").write_text("mine")
    atomic_module.clean_stale(tmp_path)
    assert not cut.exists()
    assert (odd / "notes.txt").read_text() == "mine"


def test_temporaries_of_dead_processes_on_this_machine_are_cleared_and_nothing_else(tmp_path: Path) -> None:
    dead, tag = _dead_pid(), atomic_module._host_tag()
    temporary = atomic_module.TEMPORARY
    stale = tmp_path / f".w.pt{temporary}{tag}-{dead}-0a0b0c0d0e0f"
    stale.write_bytes(b"half")
    stale_folder = tmp_path / f".fetch{temporary}{tag}-{dead}-0a0b0c0d0e0f"
    (stale_folder / "sub").mkdir(parents=True)
    live = tmp_path / atomic_module.temporary_name("w.pt")
    live.write_bytes(b"being written")
    remote = tmp_path / f".w.pt{temporary}0000ffff-{dead}-0a0b0c0d0e0f"
    remote.write_bytes(b"another machine's")
    plain = tmp_path / f".w.pt{temporary}notes"
    plain.write_text("mine")
    assert sorted(atomic_module.clean_stale_temporaries(tmp_path)) == sorted([stale, stale_folder])
    assert _siblings(tmp_path) == sorted(p.name for p in (live, remote, plain))
    with atomic_file(tmp_path / "x.bin") as path:  # the writer's temporaries have that name
        assert path.name.startswith(f".x.bin{temporary}{tag}-{os.getpid()}-")


def test_a_result_moved_aside_by_a_process_that_died_goes_back(tmp_path: Path) -> None:
    """Without renameat2 an earlier result is moved to a swap name for a moment; a kill then must not lose it."""
    dead = _dead_pid()
    marker = json.dumps({"tool": "deconvviz", "host": socket.gethostname(), "pid": 1})
    lost = tmp_path / f".cat.deconvviz-swap-{dead}-0a0b"  # killed before the new result took its name
    _result_tree(lost, marker)
    left = tmp_path / f".dog.deconvviz-swap-{dead}-0c0d"  # killed after: the new result is in place
    _result_tree(left, marker)
    _result_tree(tmp_path / "dog", marker)
    live = tmp_path / f".eel.deconvviz-swap-{os.getpid()}-0e0f"  # a run still at work
    _result_tree(live, marker)
    stranger = tmp_path / f".fox.deconvviz-swap-{dead}-1111"
    _foreign(stranger)
    _write(tmp_path / "new", "x")
    assert (tmp_path / "cat" / "index.html").exists()
    assert owned(tmp_path / "cat")
    assert not left.exists()
    assert live.exists()
    assert (stranger / "thesis.tex").exists()
    assert _siblings(tmp_path) == sorted([live.name, stranger.name, "cat", "dog", "new"])


# ------------------------------------------------------------------------------------------------ names

_HOSTILE = [
    "..",
    ".",
    "...",
    "",
    "/",
    "a/b",
    "a\\b",
    ".hidden",
    "con",
    "CON.txt",
    "x'><img src=x>",
    "\x00\x1f",
    " ",
    "é",
    "e\u0301",
]


def test_names_are_safe_and_distinct_whatever_comes_in() -> None:
    rng = random.Random(0)
    alphabet = ["a", "A", "-", "2", ".", "/", "\\", "'", '"', "<", ">", " ", "\n", "é", "_", ":", "*", "?"]
    inputs = [*_HOSTILE, "cat", "cat", "cat-2", "Cat", "cat-2", "cat_2"]
    inputs += ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 6))) for _ in range(400)]
    names = NameMap()
    given = [names.add(text) for text in inputs]
    assert len({n.casefold() for n in given}) == len(given)  # distinct, even on a case-insensitive disk
    for name in given:
        assert name not in (".", "..")
        assert not name.startswith(".")
        assert "/" not in name
        assert "\\" not in name
        assert "\x00" not in name
        assert name == name.strip()
        assert 0 < len(name) <= 80 + 5
        assert name.split(".")[0].casefold() not in {"con", "prn", "aux", "nul"}
        assert all(c.isalnum() or c in "-_." for c in name)


def test_names_repeat_with_a_number_in_the_order_given() -> None:
    names = NameMap()
    assert [names.add(n) for n in ["cat", "cat", "cat-2", "photo 1", "photo_1"]] == [
        "cat",
        "cat-2",
        "cat-2-2",
        "photo_1",
        "photo_1-2",
    ]
    assert clean_name("..", "image") == "image"
    assert clean_name("layer4.1/relu") == "layer4.1_relu"


# ------------------------------------------------------------------------------------------------ HTML


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, list[tuple[str, str | None]]]] = []
        self.data: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, attrs))

    def handle_data(self, data: str) -> None:
        self.data.append(data)


@pytest.mark.parametrize(
    "name", [*_HOSTILE, "' onerror='alert(2).jpg", 'x"><script>alert(1)</script>', "javascript:alert(1)"]
)
@pytest.mark.parametrize("quote", ["'", '"'])
def test_escaped_names_stay_inside_their_attribute_and_text(name: str, quote: str) -> None:
    page = f"<a href={quote}{url('images/' + name + '.html')}{quote} title={quote}{text(name)}{quote}>{text(name)}</a>"
    parser = _Tags()
    parser.feed(page)
    parser.close()
    assert [tag for tag, _ in parser.tags] == ["a"]
    attributes = dict(parser.tags[0][1])
    assert sorted(attributes) == ["href", "title"]
    assert attributes["title"] == name
    assert "".join(parser.data) == name
    from urllib.parse import unquote, urlsplit

    link = urlsplit(str(attributes["href"]))
    assert not link.scheme
    assert not link.netloc
    assert unquote(link.path) == "images/" + name + ".html"


def test_writing_a_file_onto_a_folder_is_one_line_naming_the_folder(tmp_path: Path) -> None:
    from deconvviz.io.atomic import OutputError, write_file

    with pytest.raises(OutputError) as info:
        write_file(tmp_path, b"png")
    assert str(info.value) == f"{str(tmp_path)!r} is a folder; give the path of a file to write instead"
    assert sorted(tmp_path.iterdir()) == []  # no temporary left beside it


def test_a_file_where_the_results_folder_goes_is_named(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("mine")
    with (
        pytest.raises(OutputError, match=r"^'.*afile' exists and is not a folder; choose another folder \(--out\)$"),
        stage_folders([tmp_path / "afile" / "cat"], kind="test", replace=True),
    ):
        pass
    assert (tmp_path / "afile").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]
