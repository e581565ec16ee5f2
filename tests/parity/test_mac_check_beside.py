"""`lower --mac-check`: the check folder and its package replace their old ones together (mac_check.beside),
so an old check folder that cannot be replaced never costs the package. Stand-in files, no lowering."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hrmc.errors import InputError
from hrmc.files import LeftBehind, atomic_folder
from hrmc.parity.mac_check import bundle as mac_check
from tests.hrmc.test_files import contents, immutable

MARKER = "Data/com.hrmc/parts.json"  # what marks a package hrmc wrote


def write_pair(package: Path, content: str) -> None:
    """What `lower --mac-check` does, nested as it nests them: the package written inside the check's block."""
    with mac_check.beside(package, force=False) as check:
        with atomic_folder(package, marker=MARKER) as written:
            (written / MARKER).parent.mkdir(parents=True)
            (written / MARKER).write_text(content)
            (check / mac_check.SCRIPT).write_text(content)


def test_an_old_check_folder_that_cannot_be_deleted_leaves_the_new_pair_and_a_warning(tmp_path: Path) -> None:
    package, check = tmp_path / "t.mlpackage", tmp_path / "t.check"
    write_pair(package, "old")
    (check / "kept").mkdir()
    (check / "kept" / "notes").write_text("x")
    with immutable(check / "kept", tmp_path):
        with pytest.warns(LeftBehind, match="could not remove all of the old t.check"):
            write_pair(package, "new")
    assert contents(package) == {MARKER: "new"} and contents(check) == {mac_check.SCRIPT: "new"}


def test_a_check_folder_that_cannot_be_replaced_keeps_the_old_package(tmp_path: Path) -> None:
    package, check = tmp_path / "t.mlpackage", tmp_path / "t.check"
    write_pair(package, "old")
    with immutable(check, tmp_path):  # it cannot be moved aside: the new package, placed first, is taken back
        with pytest.raises(InputError, match="cannot replace .*t.check"):
            write_pair(package, "new")
    assert contents(package) == {MARKER: "old"} and contents(check) == {mac_check.SCRIPT: "old"}
    assert sorted(os.listdir(tmp_path)) == ["t.check", "t.mlpackage"]
