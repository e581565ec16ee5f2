"""The README is a guide: short, with no internal history, its links alive; the license is declared."""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
MAX_LINES = 300

HEX = re.compile(r"\b[0-9a-f]{7,40}\b")
ISSUE = re.compile(r"\bissues? #?\d+|(?<![\w/])#\d+\b", re.IGNORECASE)  # not a link's anchor (design.md#4-…)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def readme() -> str:
    return README.read_text(encoding="utf-8")


def test_the_readme_is_short() -> None:
    assert len(readme().splitlines()) <= MAX_LINES


def test_the_readme_has_the_your_model_guide() -> None:
    assert re.search(r"^#+ Your model\s*$", readme(), re.MULTILINE)


def test_the_readme_names_no_issue() -> None:
    assert ISSUE.findall(readme()) == []


def test_the_readme_names_no_commit() -> None:
    if subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--git-dir"], capture_output=True).returncode != 0:
        pytest.skip("not a git checkout")
    commits = [word for word in set(HEX.findall(readme()))
               if subprocess.run(["git", "-C", str(ROOT), "cat-file", "-e", f"{word}^{{commit}}"],
                                 capture_output=True).returncode == 0]
    assert commits == []


def test_the_license_is_there_and_declared() -> None:
    assert "Apache License" in (ROOT / "LICENSE").read_text(encoding="utf-8")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project.get("license") in ("Apache-2.0", {"text": "Apache-2.0"}, {"file": "LICENSE"})


@pytest.mark.parametrize("page", [README, *DOCS], ids=lambda page: str(page.relative_to(ROOT)))
def test_every_relative_link_points_to_a_file(page: Path) -> None:
    missing = []
    for target in LINK.findall(page.read_text(encoding="utf-8")):
        if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):  # a URL, or an anchor of the page
            continue
        path = target.split("#", 1)[0]
        if not (page.parent / path).exists():
            missing.append(target)
    assert missing == []
