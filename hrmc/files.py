"""Writing outputs: paths checked before the work, files and folders replaced atomically.

A ground module (standard library only), used by every stage that writes: nothing is half-written,
and an output appears only once it is complete.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from hrmc.errors import InputError


def check_output(path: str | Path, suffix: str) -> Path:
    """An output file's path must have `suffix`, a writable folder, and no folder in its place: checked
    before any long work."""
    path = Path(path)
    _check_place(path, suffix)
    if path.is_dir():
        raise InputError(f"output {path} is a folder: name a file")
    return path


def _check_place(path: Path, suffix: str) -> None:
    """What a file and a folder output share: the suffix (where one is asked for), an existing folder to
    hold it, and the right to write there."""
    if suffix and path.suffix != suffix:
        raise InputError(f"output {path} must end in {suffix}")
    if not path.parent.is_dir():
        raise InputError(f"output folder does not exist: {path.parent}")
    _check_writable(path.parent)


def _check_writable(folder: Path) -> None:
    """Write and remove a temporary file in `folder`: what permissions, read-only mounts and /proc allow."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise InputError(f"cannot write in {folder}: {err.strerror}") from None


def check_output_folder(path: str | Path, suffix: str = "", marker: str | None = None, force: bool = False) -> Path:
    """An output folder (an MLX folder, an .mlpackage): its suffix, an existing parent, no file in its place,
    and nothing hrmc did not write: an existing folder is replaced only when it is empty or holds `marker`
    (the file that an hrmc artifact of this kind always has), unless `force`."""
    path = Path(path)
    _check_place(path, suffix)
    if path.exists() and not path.is_dir():
        raise InputError(f"output {path} exists and is not a folder")
    here = Path.cwd().resolve()
    if path.resolve() in (here, *here.parents):
        raise InputError(f"output {path} is the current folder or one above it: name a new folder")
    if path.is_dir() and any(path.iterdir()) and not force and (marker is None or not (path / marker).is_file()):
        raise InputError(f"output {path} is a folder hrmc did not write: it would be replaced (choose another name, "
                         "or --force)")
    return path


@contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; it replaces `path` only if the block succeeds."""
    path = Path(path)
    if not path.parent.is_dir():
        raise InputError(f"output folder does not exist: {path.parent}")
    try:
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    except OSError as err:
        raise InputError(f"cannot write in {path.parent}: {err.strerror}") from None
    os.close(handle)
    try:
        yield Path(temporary)
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes it 0600: give it what the user's umask gives
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


@contextmanager
def atomic_folder(path: str | Path, marker: str | None = None, force: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; it replaces `path` (a folder) only if the block succeeds.
    `marker` and `force`: see `check_output_folder`."""
    path = check_output_folder(path, marker=marker, force=force)
    # the temporary keeps the suffix: tools that check it (coremltools wants .mlpackage) can write into it
    try:
        temporary = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=f".partial{path.suffix}", dir=path.parent))
    except OSError as err:
        raise InputError(f"cannot write in {path.parent}: {err.strerror}") from None
    try:
        yield temporary
        _give_umask_modes(temporary)
        if path.exists():  # a folder cannot be replaced by one rename: move the old one aside, then delete it
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / "previous")
            os.replace(temporary, path)
            shutil.rmtree(old)
        else:
            os.replace(temporary, path)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


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
