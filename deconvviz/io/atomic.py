"""The one way deconvviz writes files and result folders: complete or not at all, and never over a stranger's.

A **file** is written to a temporary sibling and renamed over its name when complete (:func:`write_file`,
:func:`atomic_file`), so a reader sees the old file or the new one, never half of one. The temporary's name
says which machine and process wrote it, so that one left by a process that died can be told apart and
removed (:func:`clean_stale_temporaries`; the weights cache and the scan state do so).

A **result folder** (a render result, a report, an analysis) is staged next to its target, in a hidden
sibling ``.<name>.deconvviz-staging-<pid>-<token>`` that holds the ownership marker :data:`MARKER` from
the start. When the caller has filled it, the target is checked again and the staging folder takes its place
in one step: a new target by a rename that never replaces (``renameat2(RENAME_NOREPLACE)``), an earlier
result by an atomic exchange (``renameat2(RENAME_EXCHANGE)``), after which the old result is removed.
Where the system lacks ``renameat2`` a rename by way of a backup name does the same with a short window.

Only a folder that holds the marker counts as deconvviz's own (a generic ``manifest.json`` does not): any
other folder at a target, whether it was there at the start or appeared while the work went on, is never
replaced or deleted, and the run ends with a one-line :class:`OutputError` instead. Staging folders left by
a process that died (a kill, a power cut) are removed by the next run that writes next to them. So that a
kill at any instant leaves nothing that run could not recognise, the marker is written in one ``write`` call
and a folder deconvviz removes loses its marker last.

Example:
    >>> with stage_folders([Path("out/cat")], kind="render", replace=True) as (folder,):  # doctest: +SKIP
    ...     (folder / "input.png").write_bytes(png)
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import os
import secrets
import shutil
import socket
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from deconvviz.errors import DeconvVizError, warn_caller

MARKER = ".deconvviz-result"
"""The file that marks a folder as written by deconvviz; nothing else writes a file of that name."""

STAGING = ".deconvviz-staging-"
"""What the name of every staging folder holds: ``.<target name>.deconvviz-staging-<pid>-<token>``."""

TEMPORARY = ".deconvviz-tmp-"
"""What the name of every temporary file (or fetch folder) holds; see :func:`temporary_name`."""

SWAP = ".deconvviz-swap-"
"""What the name of a swap folder holds: ``.<target name>.deconvviz-swap-<pid>-<token>``."""

_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2


class OutputError(DeconvVizError, OSError):
    """An output path that cannot be written (not a folder, not writable, or a folder deconvviz did not write)."""


# ------------------------------------------------------------------------------------------------- files


@contextlib.contextmanager
def atomic_file(target: str | os.PathLike[str], *, durable: bool = False) -> Iterator[Path]:
    """A temporary path next to ``target`` that replaces it when the block succeeds and is removed otherwise.

    Args:
        target: the file to write.
        durable: flush the file to disk before the rename (for state that must survive a power cut).

    Yields:
        The temporary path to write (it exists, empty, with the usual permissions).
    """
    path = Path(target)
    if path.is_dir():  # a rename onto it would fail, naming the temporary
        raise OutputError(f"{str(path)!r} is a folder; give the path of a file to write instead")
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        temporary = path.with_name(temporary_name(path.name))
        try:  # os.open honours the umask (mkstemp would make the file private to this user)
            os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            break
        except FileExistsError:
            continue
    try:
        yield temporary
        if durable:
            with temporary.open("rb+") as handle:
                os.fsync(handle.fileno())
        temporary.replace(path)
    finally:
        temporary.unlink(missing_ok=True)


def write_file(path: str | os.PathLike[str], data: bytes, *, durable: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically; return the path."""
    path = Path(path)
    with atomic_file(path, durable=durable) as temporary:
        temporary.write_bytes(data)
    return path


def _host_tag() -> str:
    """A short tag of this machine's name, so that files on a shared disk tell whose they are."""
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def temporary_name(name: str) -> str:
    """A hidden name for a temporary sibling of ``name``: ``.<name>.deconvviz-tmp-<host tag>-<pid>-<token>``."""
    return f".{name[:100]}{TEMPORARY}{_host_tag()}-{os.getpid()}-{secrets.token_hex(6)}"


def clean_stale_temporaries(folder: Path) -> list[Path]:
    """Remove the temporaries (see :func:`temporary_name`) in ``folder`` of processes on this machine that died.

    A kill (or the kernel's out-of-memory killer) in the middle of a large write, such as converted weights,
    would otherwise leave the half-written file behind for good. Return what was removed.
    """
    removed: list[Path] = []
    try:
        entries = [entry for entry in folder.iterdir() if entry.name.startswith(".") and TEMPORARY in entry.name]
    except OSError:
        return removed
    for entry in entries:
        tag, _, rest = entry.name.rpartition(TEMPORARY)[2].partition("-")
        pid_text = rest.partition("-")[0]
        if tag != _host_tag() or not pid_text.isdigit() or _alive(int(pid_text)):
            continue
        try:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        except OSError:
            continue
        removed.append(entry)
    return removed


# ------------------------------------------------------------------------------------------------- folders


def _marker_of(folder: Path) -> dict[str, object] | None:
    """What the marker of ``folder`` says, where it is a real folder holding a real deconvviz marker."""
    marker = folder / MARKER
    if folder.is_symlink() or marker.is_symlink() or not marker.is_file():
        return None
    try:
        data = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("tool") == "deconvviz" else None


def owned(folder: Path) -> bool:
    """Whether ``folder`` is a real folder that deconvviz wrote (it holds :data:`MARKER`)."""
    return _marker_of(folder) is not None


def check_target(target: Path, *, replace: bool, error: type[DeconvVizError] = OutputError) -> None:
    """Refuse now, before any work, a target that the result could not take.

    Args:
        target: the result folder to be written.
        replace: whether an earlier deconvviz result there may be replaced.
        error: the exception class to raise.

    Raises:
        error: the target is a file or a link, holds files deconvviz did not write, or (without ``replace``)
            exists at all.
    """
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise error(f"{str(target)!r} exists and is not a folder; choose another folder (--out)")
    if not target.exists():
        return
    if any(target.iterdir()) and not owned(target):
        raise error(
            f"{str(target)!r} already exists and was not written by deconvviz; refusing to touch it, "
            "choose another folder (--out) or move it away"
        )
    if not replace:
        raise error(
            f"output folder {str(target)!r} already exists; pass --overwrite (overwrite=True in Python) to replace it"
        )


def mark(folder: Path, kind: str) -> None:
    """Mark ``folder`` (made by deconvviz, e.g. a scan's state) as deconvviz's own, if it is not marked yet."""
    if not owned(folder):
        write_file(folder / MARKER, _marker(kind))


def remove_owned(folder: Path) -> bool:
    """Remove ``folder`` if deconvviz wrote it (it holds :data:`MARKER`); anything else is left alone."""
    if not owned(folder):
        return False
    _remove_marked(folder)
    return True


def _remove_marked(folder: Path) -> None:
    """Remove a folder of deconvviz's own so that, cut short at any point, what is left is still known as ours.

    Everything but the marker goes first, then the marker, then the (by then empty) folder: a kill midway
    leaves a folder that still holds its marker, or an empty one, and the next run can finish the job.
    """
    try:
        entries = [entry for entry in folder.iterdir() if entry.name != MARKER]
    except OSError:
        return
    for entry in entries:
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                entry.unlink()
    with contextlib.suppress(OSError):
        (folder / MARKER).unlink()
    with contextlib.suppress(OSError):
        folder.rmdir()


def _write_marker(folder: Path, marker: bytes) -> None:
    """Write the marker into a new folder in one ``write`` call: a kill leaves it whole, or empty."""
    descriptor = os.open(folder / MARKER, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o644)
    try:
        if os.write(descriptor, marker) != len(marker):
            raise OSError(errno.EIO, "short write of the result marker", str(folder / MARKER))
    finally:
        os.close(descriptor)


def _marker(kind: str) -> bytes:
    from deconvviz import __version__

    data = {
        "tool": "deconvviz",
        "kind": kind,
        "version": __version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "pid": os.getpid(),
    }
    return (json.dumps(data) + "\n").encode()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def _holds_nothing(folder: Path) -> bool:
    """Whether ``folder`` is empty, or holds only a marker cut short before it was written (an empty file)."""
    entries = list(folder.iterdir())
    if not entries:
        return True
    only = entries[0]
    return len(entries) == 1 and only.name == MARKER and not only.is_symlink() and only.stat().st_size == 0


def _stale(folder: Path, infix: str) -> bool:
    """Whether ``folder`` is a staging (or swap) folder of a deconvviz process on this machine that is gone."""
    _, _, rest = folder.name.partition(infix)
    pid_text = rest.split("-", 1)[0]
    if not pid_text.isdigit() or folder.is_symlink() or not folder.is_dir():
        return False
    try:
        marker = _marker_of(folder)
        if marker is not None:
            if marker.get("host") != socket.gethostname():  # another machine's process: its life is not ours to judge
                return False
        elif not _holds_nothing(folder):  # not ours: whatever it is, it stays
            return False
    except OSError:
        return False
    return not _alive(int(pid_text))


def clean_stale(parent: Path) -> list[Path]:
    """Tidy what deconvviz processes that died left in ``parent``; return the folders removed or put back.

    A staging folder is removed. A swap folder (an earlier result moved aside for a moment where ``renameat2``
    is missing) goes back to its name if that is free, and is removed otherwise.
    """
    done: list[Path] = []
    try:
        entries = [entry for entry in parent.iterdir() if entry.name.startswith(".")]
    except OSError:
        return done
    for entry in entries:
        if STAGING in entry.name and _stale(entry, STAGING):
            _remove_marked(entry)
            done.append(entry)
        elif SWAP in entry.name and _stale(entry, SWAP):
            original = entry.with_name(entry.name[1:].partition(SWAP)[0])
            try:
                rename_new(entry, original)
            except OSError:
                _remove_marked(entry)
            done.append(entry)
    return done


def _renameat2(source: Path, target: Path, flags: int) -> bool:
    """``renameat2(source, target, flags)``; False where the system or the file system lacks it."""
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    if function(_AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(target), flags) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(source), None, str(target))


def rename_new(source: Path, target: Path) -> None:
    """Rename ``source`` to ``target``, which must not exist (``FileExistsError`` if it does, even if just made)."""
    if _renameat2(source, target, _RENAME_NOREPLACE):
        return
    if os.path.lexists(target):  # without renameat2: check, then rename (a short window remains)
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(target))
    source.rename(target)


def exchange(first: Path, second: Path) -> None:
    """Swap the two paths' contents in one step (by way of a backup name where ``renameat2`` is missing)."""
    if _renameat2(first, second, _RENAME_EXCHANGE):
        return
    backup = second.with_name(f".{second.name}{SWAP}{os.getpid()}-{secrets.token_hex(4)}")
    second.rename(backup)
    try:
        rename_new(first, second)
    except BaseException:
        backup.rename(second)
        raise
    backup.rename(first)


@dataclass
class _Stage:
    target: Path
    path: Path
    replaced: bool = False  # after the commit: ``path`` holds the earlier result, swapped out
    committed: bool = False


@dataclass
class _Transaction:
    stages: list[_Stage]
    replace: bool
    error: type[DeconvVizError]
    created: list[Path] = field(default_factory=list)  # parents this run made, deepest last

    def commit(self) -> None:
        try:
            for stage in self.stages:
                self._commit_one(stage)
        except BaseException:
            self._roll_back()
            raise
        for stage in self.stages:  # every result is in place: now the earlier ones can go
            _remove_marked(stage.path)
            if os.path.lexists(stage.path):  # the earlier result could not be removed (a read-only folder)
                warn_caller(
                    f"the earlier result replaced at {str(stage.target)!r} could not be removed and is left at "
                    f"{str(stage.path)!r}; remove it by hand"
                )

    def _commit_one(self, stage: _Stage) -> None:
        target = stage.target
        appeared = f"{str(target)!r} appeared while deconvviz was writing it"
        if os.path.lexists(target):
            if not target.is_dir() or target.is_symlink() or (any(target.iterdir()) and not owned(target)):
                raise self.error(
                    f"{appeared} and was not written by deconvviz; left it alone, choose another folder (--out)"
                )
            if not self.replace:
                raise self.error(
                    f"{appeared}; left it alone, choose another folder (--out) "
                    "or pass --overwrite (overwrite=True in Python)"
                )
            exchange(stage.path, target)
            stage.committed = stage.replaced = True
            if any(stage.path.iterdir()) and not owned(stage.path):  # swapped in by someone at the last instant
                exchange(stage.path, target)
                stage.committed = stage.replaced = False
                raise self.error(
                    f"{appeared} and was not written by deconvviz; left it alone, choose another folder (--out)"
                )
            return
        try:
            rename_new(stage.path, target)
        except FileExistsError:
            raise self.error(f"{appeared}; left it alone, choose another folder (--out)") from None
        except OSError as exc:
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                raise self.error(f"{appeared}; left it alone, choose another folder (--out)") from None
            raise
        stage.committed = True

    def _roll_back(self) -> None:
        for stage in reversed(self.stages):
            if not stage.committed:
                continue
            with contextlib.suppress(OSError):
                if stage.replaced:
                    exchange(stage.path, stage.target)  # the earlier result back, the new one to staging
                else:
                    rename_new(stage.target, stage.path)
                stage.committed = False

    def discard(self) -> None:
        for stage in self.stages:
            if not stage.committed:
                _remove_marked(stage.path)
        for parent in reversed(self.created):
            with contextlib.suppress(OSError):
                parent.rmdir()  # only if still empty


def file_in_the_way(folder: Path) -> Path | None:
    """The file (not a folder) at ``folder`` or at one of its parents, which keeps it from being made; None."""
    return next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)


def _make_parents(folder: Path) -> list[Path]:
    """``mkdir -p folder``; returns the folders it made, outermost first."""
    missing = []
    for parent in [folder, *folder.parents]:
        if parent.exists() or parent.is_symlink():
            break
        missing.append(parent)
    folder.mkdir(parents=True, exist_ok=True)
    return list(reversed(missing))


@contextlib.contextmanager
def stage_folders(
    targets: Sequence[Path],
    *,
    kind: str,
    replace: bool,
    error: type[DeconvVizError] = OutputError,
    what: str = "output folder",
) -> Iterator[list[Path]]:
    """Staging folders for ``targets``, moved into place together when the block ends without an exception.

    Each target is checked before any work (see :func:`check_target`) and again at the end. Either every
    target ends up holding its complete new result, or none changes (the ones already moved are put back).
    On an exception, or a refusal at the end, nothing is left behind: no staging folder, and no parent
    folder this call made.

    Args:
        targets: the result folders to write (distinct paths).
        kind: what the results are (``"render"``, ``"report"``, an analysis's name), written in the marker.
        replace: whether earlier deconvviz results at the targets may be replaced.
        error: the exception class of refusals.
        what: what a target is called in messages.

    Yields:
        One empty staging folder per target (holding only the marker), to fill.

    Raises:
        error: a target cannot take the result, at the start or at the end.
    """
    targets = [Path(t) for t in targets]
    if len({os.path.abspath(t) for t in targets}) != len(targets):  # noqa: PTH100 - no symlink resolution wanted
        raise ValueError("two results were given the same folder")
    for target in targets:
        check_target(target, replace=replace, error=error)
    transaction = _Transaction(stages=[], replace=replace, error=error)
    try:
        for target in targets:
            if not target.parent.is_dir():
                transaction.created.extend(_make_parents(target.parent))
        for parent in {t.parent for t in targets}:
            clean_stale(parent)
        marker = _marker(kind)
        for target in targets:
            path = target.with_name(f".{target.name[:100]}{STAGING}{os.getpid()}-{secrets.token_hex(4)}")
            path.mkdir()
            transaction.stages.append(_Stage(target=target, path=path))
            _write_marker(path, marker)
    except OSError as exc:
        transaction.discard()
        where = targets[len(transaction.stages)] if len(transaction.stages) < len(targets) else targets[-1]
        blocking = file_in_the_way(where.parent)
        if blocking is not None:  # a file where the folder of results goes (--out afile)
            raise error(f"{str(blocking)!r} exists and is not a folder; choose another folder (--out)") from None
        raise error(
            f"cannot write the {what} {str(where)!r} ({exc.strerror or exc}); choose another folder (--out)"
        ) from None
    except BaseException:
        transaction.discard()
        raise
    try:
        yield [stage.path for stage in transaction.stages]
        try:
            transaction.commit()
        except OSError as exc:
            if isinstance(exc, DeconvVizError):
                raise
            raise error(
                f"cannot move the result into place ({exc.strerror or exc}); choose another folder (--out)"
            ) from None
    finally:
        transaction.discard()


__all__ = [
    "MARKER",
    "STAGING",
    "OutputError",
    "atomic_file",
    "check_target",
    "clean_stale",
    "clean_stale_temporaries",
    "exchange",
    "file_in_the_way",
    "mark",
    "owned",
    "remove_owned",
    "rename_new",
    "stage_folders",
    "temporary_name",
    "write_file",
]
