"""`make demo`: the pipeline on the built-in model, each artifact gated as it was written, one summary screen.

    python -m hrmc.demo [--out DIR]

Runs the commands a user would type, each in a process of its own as the `hrmc` console script runs it (its exit
code, and everything it prints, native libraries' lines included, is the demo's to keep), writing into DIR:

    hrmc run --policy q-halt             → tiny-outputs.npz      torch's own outputs: the reference, not gated
    hrmc export --policy q-halt          → tiny.onnx             hrmc parity torch onnx --artifact …
    hrmc lower --target onnx --chunk 4   → tiny.static.onnx      hrmc parity torch static --artifact …
    hrmc lower --target mlx              → tiny-mlx/             hrmc parity torch mlx --artifact …
    hrmc lower --target coreml           → tiny-fp32.mlpackage   hrmc parity torch coreml --artifact …
    hrmc lower --target ane --batch 1    → tiny.mlpackage        hrmc parity torch ane --artifact …

Each lowering starts from the export; each gate takes policy, batch and model from the artifact's own record.
Every command line and all it printed go to DIR/reports/NAME.txt. On the screen: one progress line per command
(stderr), then the summary (stdout): each artifact, its size, its gate, the verdict and the report. Exit 0 when
every command worked and every gate passed, else 1: a failing or erroring step stops nothing but what needs its
artifact, so the summary is always complete.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from hrmc.files import atomic_output, size_of

POLICY = "q-halt"
ENTRY = "from hrmc.cli import run; run()"  # what the `hrmc` console script runs
MADE, PASSED = "OK", "PASS"  # verdicts that keep exit 0: made (and not gated), gated and passed


@dataclass(frozen=True)
class Artifact:
    """One thing the demo writes: the command that makes it (its -o added) and the executor gating it."""

    name: str  # file or folder name in the out folder
    make: tuple[str, ...]
    gate: str | None  # executor B of `hrmc parity torch B --artifact`; None: not gated
    needs: str | None = None  # the artifact `make` reads


def artifacts(out: Path) -> list[Artifact]:
    """The demo's artifacts in the order they are made."""
    lowered = ("lower", "--onnx-model", str(out / "tiny.onnx"), "--target")
    return [
        Artifact("tiny-outputs.npz", ("run", "--policy", POLICY, "--batch", "8"), None),
        Artifact("tiny.onnx", ("export", "--policy", POLICY), "onnx"),
        Artifact("tiny.static.onnx", (*lowered, "onnx", "--chunk", "4"), "static", "tiny.onnx"),
        Artifact("tiny-mlx", (*lowered, "mlx"), "mlx", "tiny.onnx"),
        Artifact("tiny-fp32.mlpackage", (*lowered, "coreml"), "coreml", "tiny.onnx"),
        Artifact("tiny.mlpackage", (*lowered, "ane", "--batch", "1"), "ane", "tiny.onnx"),
    ]


@dataclass(frozen=True)
class Ran:
    """One hrmc command as it ran."""

    argv: tuple[str, ...]
    code: int
    stdout: str
    stderr: str
    seconds: float

    def reason(self) -> str:
        """Why it did not work, in one line: its `hrmc: ` line (an error, a termination), else its last line."""
        lines = [line.strip() for line in (self.stderr + "\n" + self.stdout).splitlines() if line.strip()]
        ours = [line for line in lines if line.startswith("hrmc: ")]
        return (ours or lines or [f"exit {self.code}, nothing printed"])[-1]

    def transcript(self) -> str:
        """Its command line, exit code and time, then what it printed: progress (stderr, indented) first, so
        that a report ends with the command's own last line, a gate's verdict."""
        text = [f"$ hrmc {shlex.join(self.argv)}", f"# exit {self.code} after {self.seconds:.1f} s",
                self.stderr.rstrip(), self.stdout.rstrip()]
        return "\n".join(part for part in text if part) + "\n"


def hrmc(*argv: str) -> Ran:
    """Run `hrmc ARGV` in a process of this interpreter, as the console script would."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", ENTRY, *argv], capture_output=True, text=True, errors="replace")
    return Ran(argv, done.returncode, done.stdout, done.stderr, time.perf_counter() - started)


@dataclass(frozen=True)
class Outcome:
    """One artifact as the summary shows it."""

    path: Path
    size: int | None  # bytes of every file the command wrote; None: not made
    files: int
    gate: str | None  # "torch ↔ B"; None: not gated
    verdict: str  # OK (made, not gated), PASS, FAIL, UNRECORDED (parity's own words), ERROR
    report: Path
    reason: str = ""  # where the verdict is neither OK nor PASS: why, in one line


def written(ran: Ran) -> list[Path]:
    """What a `--json` run, export or lower says it wrote."""
    report = json.loads(ran.stdout.strip().splitlines()[-1])
    return [Path(path) for path in report.get("files") or [report["out"], report.get("step_model")] if path]


def verdict(ran: Ran) -> tuple[str, str]:
    """A gate's verdict and, where it is no pass, why: parity's last line (FAIL: …, UNRECORDED: …) or its gate
    error on exit 1; anything else (bad input, a crash) is an ERROR."""
    if ran.code == 0:
        return PASSED, ""
    last = (ran.stdout.strip().splitlines() or [""])[-1]
    if ran.code == 1 and last.startswith(("FAIL:", "UNRECORDED:")):
        return last.split(":")[0], last
    failed = ran.code == 1 and "Traceback (most recent call last)" not in ran.stderr
    return "FAIL" if failed else "ERROR", ran.reason()


def doing(make: Sequence[str], path: Path) -> str:
    """A making command's progress line: exporting out/tiny.onnx, lowering out/tiny-mlx for mlx."""
    if make[0] == "lower":
        return f"lowering {path} for {make[make.index('--target') + 1]}"
    return {"run": "running the model into", "export": "exporting"}[make[0]] + f" {path}"


def make_and_gate(artifact: Artifact, out: Path, missing: set[str], say: Callable[[str], None],
                  command: Callable[..., Ran] = hrmc) -> Outcome:
    """Make one artifact and gate it; its report holds every command and all they printed."""
    path, report = out / artifact.name, out / "reports" / f"{artifact.name}.txt"
    pair = f"torch ↔ {artifact.gate}" if artifact.gate else None
    if artifact.needs in missing:
        say(f"skipping {path} … ERROR (no {out / artifact.needs})\n")
        reason = f"not made: it is lowered from {out / artifact.needs}, which was not made"
        _write(report, f"{reason}\n")
        return Outcome(path, None, 0, pair, "ERROR", report, reason)
    say(f"{doing(artifact.make, path)} … ")
    made = command(*artifact.make, "-o", str(path), "--json")
    transcripts = [made.transcript()]
    if made.code != 0:
        say(f"ERROR ({made.seconds:.1f} s)\n")
        _write(report, "\n".join(transcripts))
        return Outcome(path, None, 0, pair, "ERROR", report, made.reason())
    say(f"done ({made.seconds:.1f} s)\n")
    parts = written(made)
    size = sum(size_of(part) for part in parts)
    if artifact.gate is None:
        _write(report, "\n".join(transcripts))
        return Outcome(path, size, len(parts), None, MADE, report)
    say(f"gating {path} against torch … ")
    gated = command("parity", "torch", artifact.gate, "--artifact", str(path))
    transcripts.append(gated.transcript())
    _write(report, "\n".join(transcripts))
    word, reason = verdict(gated)
    say(f"{word} ({gated.seconds:.1f} s)\n")
    return Outcome(path, size, len(parts), pair, word, report, reason)


def _write(path: Path, text: str) -> None:
    with atomic_output(path) as temporary:
        temporary.write_text(text)


def human_size(size: int) -> str:
    """Bytes in binary units, one decimal: 1.3 MiB."""
    if size < 1024:
        return f"{size} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        size /= 1024
        if size < 1024 or unit == "TiB":
            return f"{size:.1f} {unit}"


def exit_code(outcomes: Sequence[Outcome]) -> int:
    """0 when every artifact was made and every gate passed, else 1."""
    return 0 if all(outcome.verdict in (MADE, PASSED) for outcome in outcomes) else 1


def summary(outcomes: Sequence[Outcome], seconds: float) -> str:
    """The demo's last screen: a row per artifact, the reason under any that is not OK or PASS, a verdict line."""
    header = ("artifact", "size", "gate", "verdict", "report")
    rows = [(str(outcome.path),
             "—" if outcome.size is None else human_size(outcome.size) + (f" in {outcome.files} files"
                                                                         if outcome.files > 1 else ""),
             outcome.gate or "not gated", outcome.verdict, str(outcome.report)) for outcome in outcomes]
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(len(header) - 1)]
    lines = []
    for row, outcome in zip([header, *rows], [None, *outcomes]):
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1])
        if outcome is not None and outcome.reason:
            lines.append(f"    {outcome.reason}")
    gated = [outcome for outcome in outcomes if outcome.gate]
    passed = sum(outcome.verdict == PASSED for outcome in gated)
    others = sorted({outcome.verdict for outcome in outcomes} - {MADE, PASSED})
    counts = ", ".join(f"{sum(outcome.verdict == word for outcome in outcomes)} {word}" for word in others)
    minutes, rest = divmod(round(seconds), 60)
    lines.append(f"{passed} of {len(gated)} gates passed" + (f"; {counts}" if counts else "")
                 + f" ({minutes} min {rest} s)")
    return "\n".join(lines)


def run_demo(out: Path, say: Callable[[str], None], command: Callable[..., Ran] = hrmc) -> list[Outcome]:
    """Make and gate every artifact into `out`, each whatever became of the others it does not need."""
    (out / "reports").mkdir(parents=True, exist_ok=True)
    outcomes, missing = [], set()
    for artifact in artifacts(out):
        outcome = make_and_gate(artifact, out, missing, say, command)
        if outcome.size is None:
            missing.add(artifact.name)
        outcomes.append(outcome)
    return outcomes


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hrmc.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out"), help="folder of the artifacts (default: out)")
    out = parser.parse_args(argv).out

    def say(text: str) -> None:
        sys.stderr.write(text)
        sys.stderr.flush()

    started = time.perf_counter()
    try:
        outcomes = run_demo(out, say)
    except KeyboardInterrupt:
        say("\nhrmc demo: interrupted\n")
        return 130
    say("\n")
    print(summary(outcomes, time.perf_counter() - started))
    return exit_code(outcomes)


if __name__ == "__main__":
    sys.exit(main())
