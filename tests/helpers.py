"""Helpers the test files share: `hrmc` as a user runs it, and the shape of its one-line errors."""

from __future__ import annotations

from hrmc.cli import main


def hrmc(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    lines = [line for line in err.splitlines() if not line.startswith("  ")]  # progress lines are indented
    assert code == 2 and len(lines) == 1 and lines[0].startswith("hrmc: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def assert_second_gate_converts_nothing(capsys, monkeypatch, module, converter: str, *argv: str) -> None:
    """`hrmc parity *argv` twice, `module.converter` (what makes an executor's artifact afresh) watched: the second
    gate reads the session's cache, converts nothing, and says what the first said."""
    calls, real = [], getattr(module, converter)

    def watched(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)
    monkeypatch.setattr(module, converter, watched)
    outputs = []
    for _ in range(2):
        calls.clear()
        code, out, _ = hrmc(capsys, "parity", *argv)
        outputs.append(out)
        assert code == 0 and out.rstrip().endswith("PASS"), out
    assert calls == [] and outputs[0] == outputs[1]
