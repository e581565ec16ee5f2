"""`make demo` (python -m hrmc.demo): every artifact made, gated and summed up on one screen."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hrmc import demo
from hrmc.demo import Outcome, Ran


def outcome(name: str, verdict: str, size: int | None = 2048, gate: str | None = "torch ↔ mlx",
            reason: str = "", files: int = 1) -> Outcome:
    return Outcome(Path("out") / name, size, files, gate, verdict, Path("out/reports") / f"{name}.txt", reason)


def test_the_summary_shows_every_artifact_and_why_any_did_not_pass() -> None:
    outcomes = [outcome("tiny-outputs.npz", "OK", gate=None, size=48_230),
                outcome("tiny.onnx", "PASS", size=2_200_000, files=2),
                outcome("tiny-mlx", "FAIL", reason="FAIL: z_H from step 3 (…)"),
                outcome("tiny.mlpackage", "ERROR", size=None, gate="torch ↔ ane", reason="hrmc: error: no ane")]
    lines = demo.summary(outcomes, 125.4).splitlines()
    assert lines[0].split() == ["artifact", "size", "gate", "verdict", "report"]
    assert lines[1].split() == ["out/tiny-outputs.npz", "47.1", "KiB", "not", "gated", "OK",
                                "out/reports/tiny-outputs.npz.txt"]
    assert lines[2].split() == ["out/tiny.onnx", "2.1", "MiB", "in", "2", "files", "torch", "↔", "mlx", "PASS",
                                "out/reports/tiny.onnx.txt"]
    assert lines[3].split()[-2:] == ["FAIL", "out/reports/tiny-mlx.txt"]
    assert lines[4] == "    FAIL: z_H from step 3 (…)"
    assert lines[5].split()[:2] == ["out/tiny.mlpackage", "—"] and lines[6] == "    hrmc: error: no ane"
    assert lines[7] == "1 of 3 gates passed; 1 ERROR, 1 FAIL (2 min 5 s)" and len(lines) == 8
    assert len({line.index("out/reports") for line in lines[1:4]}) == 1  # columns line up
    assert demo.exit_code(outcomes) == 1
    assert demo.exit_code(outcomes[:2]) == 0
    assert demo.summary(outcomes[:2], 3).endswith("1 of 1 gates passed (0 min 3 s)")


@pytest.mark.parametrize("size, shown", [(0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (5 * 2**20, "5.0 MiB"),
                                         (3 * 2**40, "3.0 TiB")])
def test_sizes_read_in_binary_units(size: int, shown: str) -> None:
    assert demo.human_size(size) == shown


@pytest.mark.parametrize("code, stdout, stderr, expected", [
    (0, "PASS\n", "", ("PASS", "")),
    (1, "…\nFAIL: logits from step 2\n", "", ("FAIL", "FAIL: logits from step 2")),
    (1, "UNRECORDED: the numbers agree, but …\n", "", ("UNRECORDED", "UNRECORDED: the numbers agree, but …")),
    (1, "", "  progress\nhrmc: error: gate failed\n", ("FAIL", "hrmc: error: gate failed")),
    (2, "", "  gating\nhrmc: error: out/x: no such file\n", ("ERROR", "hrmc: error: out/x: no such file")),
    (1, "", "Traceback (most recent call last):\n  File …\nNameError: name 'x'\n", ("ERROR", "NameError: name 'x'")),
])
def test_a_gate_verdict_is_parity_own_word(code: int, stdout: str, stderr: str, expected: tuple[str, str]) -> None:
    assert demo.verdict(Ran(("parity",), code, stdout, stderr, 1.0)) == expected


def test_a_failed_step_is_reported_and_the_others_still_run(tmp_path: Path) -> None:
    """The export fails: everything lowered from it is shown as not made; the run's artifact stands; every
    artifact has its report, and the demo exits 1."""
    ran = []

    def command(*argv: str) -> Ran:
        ran.append(argv)
        if argv[0] == "export":
            return Ran(argv, 2, "", "  exporting\nhrmc: error: no room\n", 0.5)
        out = Path(argv[argv.index("-o") + 1])
        out.write_bytes(b"x" * 100)
        return Ran(argv, 0, json.dumps({"out": str(out), "seconds": 1.0}) + "\n", "", 0.5)

    said = []
    outcomes = demo.run_demo(tmp_path, said.append, command)
    assert [argv[0] for argv in ran] == ["run", "export"]
    assert [(o.path.name, o.verdict, o.size) for o in outcomes] == [
        ("tiny-outputs.npz", "OK", 100), ("tiny.onnx", "ERROR", None), ("tiny.static.onnx", "ERROR", None),
        ("tiny-mlx", "ERROR", None), ("tiny-fp32.mlpackage", "ERROR", None), ("tiny.mlpackage", "ERROR", None)]
    assert outcomes[1].reason == "hrmc: error: no room" and "tiny.onnx, which was not made" in outcomes[2].reason
    assert all(o.report.is_file() for o in outcomes) and demo.exit_code(outcomes) == 1
    assert "$ hrmc export --policy q-halt -o" in outcomes[1].report.read_text()
    assert "".join(said).count("\n") == 6  # one line per command or skipped artifact


@pytest.mark.heavy  # exports, lowers and gates tiny five times: a minute or more on 2 cores
def test_the_demo_gates_every_artifact(tmp_path: Path, capsys) -> None:
    assert demo.main(["--out", str(tmp_path / "out")]) == 0
    out, err = capsys.readouterr()
    rows = out.splitlines()[1:-1]
    names = [artifact.name for artifact in demo.artifacts(tmp_path / "out")]
    assert [Path(row.split()[0]).name for row in rows] == names, out
    assert [row.split()[-2] for row in rows] == ["OK"] + ["PASS"] * 5, out
    assert out.splitlines()[-1].startswith("5 of 5 gates passed") and err.count("PASS") == 5
    for name in names:
        report = (tmp_path / "out" / "reports" / f"{name}.txt").read_text()
        assert report.startswith("$ hrmc ") and (name == "tiny-outputs.npz" or report.endswith("\nPASS\n"))
