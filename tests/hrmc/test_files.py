"""hrmc.files: outputs checked before the work, replaced whole and all or none with their companions, by
one writer or several at once, and the temporaries of writers killed outright cleaned by a later run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hrmc import files
from hrmc.errors import InputError

NAME_MAX = 255  # ext4, tmpfs, xfs, btrfs


def write_folder(path: Path, content: str) -> None:
    with files.atomic_folder(path, marker="a") as folder:  # "a": what every folder these tests write holds
        (folder / "a").write_text(content)
        (folder / "sub").mkdir()
        (folder / "sub" / "b").write_text(content)


def contents(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): p.read_text() for p in sorted(folder.rglob("*")) if p.is_file()}


@contextmanager
def immutable(path: Path, root: Path) -> Iterator[None]:
    """`chattr +i`: what not even root may rename, delete or add to (a stand-in for what another user owns).
    Freed afterwards wherever under `root` the writer moved it."""
    if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i needs root on a file system that has it")
    flagged = path.stat()
    try:
        yield
    finally:
        moved = [os.path.join(folder, name) for folder, names, _ in os.walk(root) for name in names
                 if os.path.samestat(os.stat(os.path.join(folder, name)), flagged)]
        subprocess.run(["chattr", "-i", *moved, str(root)], check=True)


def test_an_output_that_is_an_input_by_any_name_is_refused(tmp_path: Path) -> None:
    given_file = tmp_path / "m.onnx"
    given_file.write_text("input")
    (tmp_path / "link.onnx").symlink_to(given_file)
    os.link(given_file, tmp_path / "hard.onnx")
    for output in (given_file, tmp_path / "link.onnx", tmp_path / "hard.onnx", tmp_path / "." / "m.onnx", tmp_path):
        with pytest.raises(InputError, match="would replace the input"):
            files.check_apart([tmp_path / "new.onnx", output], [None, given_file])
    files.check_apart([tmp_path / "new.onnx", tmp_path / "sub"], [given_file, None])


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.text(st.characters(blacklist_characters="/\0", blacklist_categories=("Cs",)), min_size=1, max_size=8),
       st.integers(1, NAME_MAX + 10))
def test_any_name_the_file_system_allows_is_written_and_longer_ones_refused_first(pattern: str, length: int) -> None:
    """Whatever its length, a name either is written whole (its temporary fits beside it too) or is refused
    before any work, naming it: never an OSError afterwards."""
    import tempfile

    name = (pattern * length)[:length]
    if name in (".", "..") or name.startswith(".hrmc-"):
        return
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        if len(os.fsencode(name)) > NAME_MAX:
            with pytest.raises(InputError, match="name too long"):
                files.check_output(path, "")
            with pytest.raises(InputError, match="name too long"):
                files.check_output_folder(path)
            return
        with files.atomic_output(files.check_output(path, "")) as temporary:
            temporary.write_text("whole")
        assert path.read_text() == "whole"
        path.unlink()
        write_folder(path, "whole")
        assert contents(path) == {"a": "whole", "sub/b": "whole"} and os.listdir(folder) == [name]


def test_a_path_too_long_anywhere_is_one_error_naming_it(tmp_path: Path) -> None:
    long = "d" * (NAME_MAX + 1)
    for path in (tmp_path / long / "o.npz", tmp_path / f"{long}.npz"):
        with pytest.raises(InputError, match="name too long"):
            files.check_output(path, ".npz")
        with pytest.raises(InputError, match="name too long"):
            files.check_length(path)
    long_suffix = tmp_path / ("o." + "s" * (NAME_MAX - 2))  # too long for the temporary to keep it
    write_folder(long_suffix, "whole")
    assert os.listdir(tmp_path) == [long_suffix.name]


def test_a_group_that_cannot_replace_every_output_leaves_each_as_it_was(tmp_path: Path) -> None:
    package, check = tmp_path / "t.mlpackage", tmp_path / "t.check"
    write_folder(package, "old")
    write_folder(check, "old")
    with immutable(check, tmp_path):  # it cannot be moved aside
        with pytest.raises(InputError, match="t.check"):
            with files.together():
                write_folder(package, "new")
                write_folder(check, "new")
    assert contents(package) == contents(check) == {"a": "old", "sub/b": "old"}
    assert sorted(os.listdir(tmp_path)) == ["t.check", "t.mlpackage"]


def test_an_old_output_that_cannot_be_deleted_leaves_the_new_one_and_a_warning(tmp_path: Path) -> None:
    out = tmp_path / "out"
    write_folder(out, "old")
    with immutable(out / "sub", tmp_path):  # its file cannot be deleted
        with pytest.warns(files.LeftBehind, match="could not remove all of the old out"):
            write_folder(out, "new")
        assert contents(out) == {"a": "new", "sub/b": "new"}
        left = [p for p in tmp_path.iterdir() if p != out]
    assert len(left) == 1 and left[0].name.startswith(".hrmc-") and contents(left[0]) == {"sub/b": "old"}


def test_an_interrupt_during_the_swap_changes_nothing(tmp_path: Path, monkeypatch) -> None:
    """SIGINT (or SIGTERM) that arrives while an old folder is moved aside is held until the swap is done,
    then undoes it: the old output stays, and nothing is left beside it."""
    out = tmp_path / "out"
    write_folder(out, "old")
    calls: list[str] = []

    def interrupting(move):
        def moved(*args, **kwargs):
            if not calls:  # the first move of the swap: the old folder's, aside
                signal.raise_signal(signal.SIGINT)
            calls.append(move.__name__)
            return move(*args, **kwargs)
        return moved

    # Python's own SIGINT handler, whatever a library imported earlier in this process put there
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            with monkeypatch.context() as patch:
                patch.setattr(os, "rename", interrupting(os.rename))
                patch.setattr(os, "replace", interrupting(os.replace))
                write_folder(out, "new")
    finally:
        signal.signal(signal.SIGINT, previous)
    assert contents(out) == {"a": "old", "sub/b": "old"} and os.listdir(tmp_path) == ["out"]


def test_concurrent_writers_of_one_folder_each_end_whole(tmp_path: Path) -> None:
    """Writers of one folder at the same moment: none fails with anything but one line (here: none fails),
    and the folder is always one writer's whole output."""
    out, writers, rounds = tmp_path / "out", 6, 15
    failures: list[BaseException] = []
    for round in range(rounds):
        start = threading.Barrier(writers)

        def write(writer: int) -> None:
            start.wait()
            try:
                write_folder(out, f"{round}.{writer}")
            except InputError:
                pass
            except BaseException as err:  # noqa: BLE001 - what the test is about
                failures.append(err)

        threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        written = contents(out)
        assert not failures, failures
        assert set(written) == {"a", "sub/b"} and written["a"] == written["sub/b"] and written["a"].startswith(f"{round}.")
        assert os.listdir(tmp_path) == ["out"]


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_later_run_removes_the_leftovers_of_killed_writers_only(tmp_path: Path) -> None:
    """A writer killed outright (SIGKILL, a power cut) leaves its temporaries: the next writer in that folder
    removes those whose writer is gone, and no others."""
    dead, alive = _dead_pid(), os.getppid()
    host = files.HOST
    leftovers = [f".hrmc-{host}-{dead}-k2j4x9_a.partial", f".hrmc-{host}-{dead}-0f3a9c1e.old"]
    other_host = "ffffff" if host != "ffffff" else "000000"  # its pid names a process of another machine
    kept = [f".hrmc-{host}-{alive}-k2j4x9_a.partial.mlpackage", f".hrmc-{other_host}-{dead}-ab.old",
            ".o.npz.k2j4x9_a.partial", "notes.txt"]
    for name in leftovers + kept:
        (tmp_path / name).mkdir() if "mlpackage" in name or name.endswith(".old") else (tmp_path / name).write_text("x")
    (tmp_path / leftovers[1] / "inside").write_text("x")
    with files.atomic_output(tmp_path / "o.npz") as temporary:
        temporary.write_text("new")
    assert sorted(os.listdir(tmp_path)) == sorted(kept + ["o.npz"])


def test_a_later_run_removes_the_work_folders_of_killed_runs(tmp_path: Path, monkeypatch) -> None:
    """Work folders in TMPDIR (`hrmc lower`'s, each executor's) carry their run's pid too."""
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    dead, alive = _dead_pid(), os.getppid()
    (tmp_path / f"hrmc-{files.HOST}-{dead}-lower-k2j4x9_a").mkdir()
    (tmp_path / f"hrmc-{files.HOST}-{dead}-lower-k2j4x9_a" / "model.onnx").write_text("x")
    kept = [f"hrmc-{files.HOST}-{alive}-coreml-k2j4x9_a", "hrmc-lower-k2j4x9_a"]
    for name in kept:
        (tmp_path / name).mkdir()
    with files.work_folder("lower") as folder:
        assert Path(folder).parent == tmp_path and Path(folder).name.startswith(f"hrmc-{files.HOST}-{os.getpid()}-")
        assert sorted(os.listdir(tmp_path)) == sorted(kept + [Path(folder).name])
    assert sorted(os.listdir(tmp_path)) == sorted(kept)


def test_outputs_written_on_their_own_stay_when_the_group_around_them_fails(tmp_path: Path) -> None:
    """A cache entry made while a command's outputs are written together is no part of their group."""
    with pytest.raises(RuntimeError):
        with files.together():
            with files.atomic_output(tmp_path / "output.txt") as temporary:
                temporary.write_text("undone with the group")
            with files.on_their_own(), files.together():
                with files.atomic_output(tmp_path / "entry.txt") as temporary:
                    temporary.write_text("kept")
            raise RuntimeError("a later step of the command fails")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["entry.txt"]
    assert (tmp_path / "entry.txt").read_text() == "kept"
