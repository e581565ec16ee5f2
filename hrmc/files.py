"""Writing outputs: paths checked before the work, files and folders replaced atomically.

A ground module (standard library only), used by every stage that writes: nothing is half-written, an output
appears only once it is complete, and outputs written `together` (a package and its check folder, an export
pair) replace their old ones all or none.

An output is written to a temporary beside it, `.hrmc-HOST-PID-RANDOM.partial[SUFFIX]`, and what it replaces
is moved aside to `.hrmc-HOST-PID-RANDOM.old` until the group is done. The names are short whatever the
output's (any name the file system allows can be written) and carry the writer's host and pid: a writer killed
outright (SIGKILL, a crash) leaves them, and the next writer in that folder removes those whose writer is gone.
Work folders in TMPDIR (`work_folder`) are named and cleaned alike.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import signal
import socket
import stat
import tempfile
import threading
import warnings
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from hrmc.errors import InputError

HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:6]  # a pid names a process of its own host
_TEMPORARY = re.compile(r"\.?hrmc-([0-9a-f]{6})-(\d+)-")  # temporaries beside outputs; work folders in TMPDIR
_RANDOM = 8  # characters of tempfile's random part
_ATTEMPTS = 64  # placements tried while concurrent writers of one output keep placing theirs


class LeftBehind(UserWarning):
    """An old output that was replaced but could not be deleted entirely: the new one stands."""


def check_output(path: str | Path, suffix: str) -> Path:
    """An output file's path must have `suffix`, a writable folder, a name that fits, and no folder in its
    place: checked before any long work."""
    path = Path(path)
    _check_place(path, suffix)
    if path.is_dir():
        raise InputError(f"output {path} is a folder: name a file")
    return path


def check_output_folder(path: str | Path, suffix: str = "", marker: str | None = None, force: bool = False) -> Path:
    """An output folder (an MLX folder, an .mlpackage): its suffix, an existing parent, no file in its place,
    and nothing hrmc did not write: an existing folder is replaced only when it is empty or holds `marker`
    (the file that an hrmc artifact of this kind always has), unless `force`."""
    path = Path(path)
    _check_place(path, suffix)
    mode = _mode(path)
    if mode is not None and not stat.S_ISDIR(mode):
        raise InputError(f"output {path} exists and is not a folder")
    here = Path.cwd().resolve()
    if path.resolve() in (here, *here.parents):
        raise InputError(f"output {path} is the current folder or one above it: name a new folder")
    if not force and _foreign(path, marker):
        raise InputError(f"output {path} is a folder hrmc did not write: it would be replaced (choose another name, "
                         "or --force)")
    return path


def _mode(path: Path) -> int | None:
    """What stands at `path` (its st_mode, links followed), or None: one look, as a concurrent writer may
    move it meanwhile."""
    try:
        return os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return None


def _foreign(path: Path, marker: str | None) -> bool:
    """A folder at `path` that is not empty and lacks `marker`. A concurrent writer may move it aside and
    delete it meanwhile: what is read through one handle counts only while the folder is still at `path`."""
    try:
        handle = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError as err:
        raise InputError(f"cannot read the output folder {path}: {err.strerror}") from None
    try:
        foreign = bool(os.listdir(handle)) and (marker is None or not _is_file_in(handle, marker))
        return foreign and os.path.samestat(os.fstat(handle), os.stat(path))
    except FileNotFoundError:
        return False
    finally:
        os.close(handle)


def _is_file_in(folder: int, name: str) -> bool:
    try:
        return stat.S_ISREG(os.stat(name, dir_fd=folder).st_mode)
    except OSError:
        return False


def _check_place(path: Path, suffix: str) -> None:
    """What a file and a folder output share: the suffix (where one is asked for), names that fit (its own
    and its temporary's), an existing folder to hold it, and the right to write there."""
    if suffix and path.suffix != suffix:
        raise InputError(f"output {path} must end in {suffix}")
    check_length(path)
    try:
        check_length(path.parent / f"{_prefix()}{'x' * _RANDOM}.partial")
    except InputError:
        raise InputError(f"output {path}: name too long for the temporary written beside it") from None
    if not path.parent.is_dir():
        raise InputError(f"output folder does not exist: {path.parent}")
    _check_writable(path.parent)


def check_length(path: str | Path) -> None:
    """Every name in `path` within the file system's NAME_MAX, the whole within PATH_MAX: a longer one fails
    every call on it (ENAMETOOLONG), after whatever work came first."""
    path = Path(path)
    name_max, path_max = _limits(path)
    longest = max(path.parts, key=lambda part: len(os.fsencode(part)), default="")
    if len(os.fsencode(longest)) > name_max:
        raise InputError(f"{path}: name too long ({len(os.fsencode(longest))} bytes in one name; this file system "
                         f"allows {name_max})")
    if len(os.fsencode(str(path))) >= path_max:
        raise InputError(f"{path}: name too long ({len(os.fsencode(str(path)))} bytes; this system allows "
                         f"{path_max - 1})")


def _limits(path: Path) -> tuple[int, int]:
    """NAME_MAX and PATH_MAX of the file system `path` would be on: its nearest existing folder's."""
    folder = path.parent
    while not os.path.isdir(folder) and folder != folder.parent:
        folder = folder.parent
    try:
        return os.pathconf(folder, "PC_NAME_MAX"), os.pathconf(folder, "PC_PATH_MAX")
    except (OSError, ValueError):
        return 255, 4096


def _check_writable(folder: Path) -> None:
    """Write and remove a temporary file in `folder`: what permissions, read-only mounts and /proc allow."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise InputError(f"cannot write in {folder}: {err.strerror}") from None


def check_apart(outputs: Iterable[str | Path | None], inputs: Iterable[str | Path | None]) -> None:
    """No output may be one of the command's inputs, nor a folder that holds one: writing it would replace
    what is being read. Compared as the system finds them: symlinks resolved, hard links by inode."""
    given = [Path(p) for p in inputs if p is not None]
    for output in (Path(p) for p in outputs if p is not None):
        for read in given:
            if _same(output, read) or os.path.realpath(read).startswith(os.path.join(os.path.realpath(output), "")):
                raise InputError(f"output {output} would replace the input {read}: name another output")


def _same(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one is not there (yet)
        return os.path.realpath(a) == os.path.realpath(b)


@dataclass
class _Placed:
    """An output put in place, and what stood there before (None: nothing), moved aside until the group ends;
    `others`: what concurrent writers placed meanwhile, moved aside to be deleted."""

    path: Path
    old: Path | None
    others: list[Path] = field(default_factory=list)


_GROUP: ContextVar[list[_Placed] | None] = ContextVar("hrmc_files_group", default=None)


@contextmanager
def together() -> Iterator[None]:
    """Outputs written in the block (`atomic_output`, `atomic_folder`) replace their old ones all or none:
    where the block fails, each one it placed is removed and what stood there is put back; where the outermost
    block succeeds, what they replaced is deleted. A nested block joins the one around it.

    An old output that cannot be deleted entirely (a read-only or immutable file in it) does not undo the
    swap: the new outputs stand, and a `LeftBehind` warning names what is left."""
    outer = _GROUP.get()
    placed = [] if outer is None else outer
    token = _GROUP.set(placed) if outer is None else None
    start = len(placed)
    try:
        yield
    except BaseException:
        with _uninterrupted():
            for each in reversed(placed[start:]):
                _undo(each)
            del placed[start:]
        raise
    finally:
        if token is not None:
            _GROUP.reset(token)
    if token is not None:
        with _uninterrupted():
            for each in placed:
                _discard(each)


@contextmanager
def on_their_own() -> Iterator[None]:
    """Outputs written in the block are no part of an enclosing `together` group: what they are (a cache entry) stays
    whether or not the outputs around it do."""
    token = _GROUP.set(None)
    try:
        yield
    finally:
        _GROUP.reset(token)


@contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; it replaces `path` only if the block succeeds (and, within
    `together`, stays only if the whole group does)."""
    path = Path(path)
    if not path.parent.is_dir():
        raise InputError(f"output folder does not exist: {path.parent}")
    temporary = _temporary(path, folder=False)
    try:
        yield temporary
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes it 0600: give it what the user's umask gives
        _put(temporary, path)
    finally:
        _remove(temporary)


@contextmanager
def atomic_folder(path: str | Path, marker: str | None = None, force: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; it replaces `path` (a folder) only if the block succeeds (and,
    within `together`, stays only if the whole group does). `marker` and `force`: see `check_output_folder`."""
    path = check_output_folder(path, marker=marker, force=force)
    temporary = _temporary(path, folder=True)
    try:
        yield temporary
        _give_umask_modes(temporary)
        _put(temporary, path)
    finally:
        _remove(temporary)


def work_folder(kind: str) -> tempfile.TemporaryDirectory:
    """A private folder in TMPDIR for work files (`with work_folder("lower") as folder:`), removed when done.
    Its name carries this run's host and pid, as the temporaries beside outputs do: a later run removes
    those of runs killed outright."""
    _clear_leftovers(Path(tempfile.gettempdir()))
    return tempfile.TemporaryDirectory(prefix=f"{_prefix()[1:]}{kind}-")


def _prefix() -> str:
    return f".hrmc-{HOST}-{os.getpid()}-"


def _temporary(path: Path, folder: bool) -> Path:
    """A new temporary file or folder beside `path`, once the leftovers of writers killed there are gone."""
    _clear_leftovers(path.parent)
    try:
        if folder:
            return Path(tempfile.mkdtemp(prefix=_prefix(), suffix=_folder_suffix(path), dir=path.parent))
        handle, temporary = tempfile.mkstemp(prefix=_prefix(), suffix=".partial", dir=path.parent)
    except OSError as err:
        raise InputError(f"cannot write in {path.parent}: {err.strerror}") from None
    os.close(handle)
    return Path(temporary)


def _folder_suffix(path: Path) -> str:
    """A temporary folder keeps its output's suffix where the name fits: tools that check it (coremltools
    wants .mlpackage) can write into it."""
    kept = f".partial{path.suffix}"
    return kept if len(os.fsencode(_prefix() + kept)) + _RANDOM <= _limits(path)[0] else ".partial"


def _clear_leftovers(folder: Path) -> None:
    """Remove the temporaries in `folder` of hrmc writers of this host that are no longer running."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        match = _TEMPORARY.match(entry.name)
        if match and match[1] == HOST and not _running(int(match[2])):
            _remove(Path(entry.path))


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        return True
    return True


def _put(staged: Path, path: Path) -> None:
    """Place `staged` at `path` as part of the enclosing group (or of a group of its own)."""
    with together(), _uninterrupted():
        _GROUP.get().append(_place(staged, path))


def _place(staged: Path, path: Path) -> _Placed:
    """Put `staged` at `path`, what stood there moved aside. A file takes its place in one rename (readers
    never miss it); an old folder is moved aside first. What a concurrent writer places meanwhile is moved
    aside in turn: the last writer wins, whole."""
    placed = _Placed(path, _aside(path))
    try:
        for _ in range(_ATTEMPTS):
            try:
                os.replace(staged, path)
                return placed
            except OSError as err:
                if err.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise InputError(f"cannot replace {path}: {err.strerror}") from None
            placed.others += [other for other in [_aside(path)] if other is not None]
        raise InputError(f"output {path} is being written by other processes at the same time: try again")
    except BaseException:
        _restore(placed)
        raise


def _aside(path: Path) -> Path | None:
    """Move what stands at `path` to a temporary name beside it (a file: a hard link, so that it stays at
    `path` until replaced); None where nothing does."""
    aside = path.parent / f"{_prefix()}{os.urandom(_RANDOM // 2).hex()}.old"
    try:
        if not _is_folder(path):
            try:
                os.link(path, aside, follow_symlinks=False)
                return aside
            except FileNotFoundError:
                return None
            except OSError:  # a file system without hard links
                pass
        os.rename(path, aside)
    except FileNotFoundError:  # nothing there, or a concurrent writer moved it meanwhile
        return None
    except OSError as err:
        raise InputError(f"cannot replace {path}: {err.strerror}") from None
    return aside


def _undo(placed: _Placed) -> None:
    """Remove a placed output and put back what it replaced (a file over the new one, in one rename)."""
    try:
        new = _aside(placed.path) if _is_folder(placed.path) else None
    except InputError as err:
        warnings.warn(f"could not remove the new {placed.path}: {err}", LeftBehind)
        return
    if placed.old is None and new is None:
        _remove(placed.path)
    _restore(placed)
    if new is not None:
        _remove(new)


def _restore(placed: _Placed) -> None:
    """Put back what stood at `placed.path`; concurrent writers' outputs moved aside are deleted."""
    for other in placed.others:
        _remove(other)
    if placed.old is None:
        return
    try:
        os.replace(placed.old, placed.path)
    except OSError as err:
        warnings.warn(f"could not put back {placed.path}: it is at {placed.old} ({err.strerror})", LeftBehind)


def _discard(placed: _Placed) -> None:
    """Delete what a placed output replaced; warn where some of it stays."""
    for aside in (placed.old, *placed.others):
        if aside is not None and (error := _remove(aside)) is not None:
            warnings.warn(f"could not remove all of the old {placed.path.name}, replaced: {aside} is left "
                          f"({error.strerror})", LeftBehind)


def _remove(path: Path) -> OSError | None:
    """Delete a file or a folder tree, read-only folders in it too (the user's own, being replaced), as much
    of it as can be; the first error where something stays."""
    errors: list[OSError] = []
    if _is_folder(path):
        _make_removable(path)
        shutil.rmtree(path, onerror=lambda function, name, error: errors.append(error[1]))
    else:
        try:
            path.unlink(missing_ok=True)
        except OSError as err:
            errors.append(err)
    return next(iter(errors), None)


def _is_folder(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink()


def _make_removable(folder: Path) -> None:
    """Give the owner every right on each folder of a tree (not through links), so that rmtree can empty it."""
    _owner_rights(folder)
    for root, folders, _ in os.walk(folder):
        for name in folders:
            if not os.path.islink(os.path.join(root, name)):
                _owner_rights(os.path.join(root, name))


def _owner_rights(folder: str | Path) -> None:
    try:
        os.chmod(folder, os.stat(folder).st_mode | stat.S_IRWXU)
    except OSError:
        pass


@contextmanager
def _uninterrupted() -> Iterator[None]:
    """SIGINT and SIGTERM held while outputs are swapped, then delivered: a swap cut halfway would leave an
    output missing or its old copy beside it. (Python runs signal handlers in the main thread only.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    previous = {number: handler for number, handler in previous.items() if handler is not None}
    for number in previous:
        signal.signal(number, lambda caught, frame: held.append(caught))
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        for number in dict.fromkeys(held):
            signal.raise_signal(number)


def _give_umask_modes(folder: Path) -> None:
    """The modes a user's umask gives new files and folders, to `folder` and everything in it: mkdtemp
    makes folders 0700, and coremltools writes the model spec through a 0600 temporary file."""
    mask = _umask()
    os.chmod(folder, 0o777 & ~mask)
    for root, folders, files in os.walk(folder):
        for name in folders:
            os.chmod(os.path.join(root, name), 0o777 & ~mask)
        for name in files:
            os.chmod(os.path.join(root, name), 0o666 & ~mask)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def size_of(path: Path) -> int:
    """Bytes of a file, or of every file under a folder."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size
