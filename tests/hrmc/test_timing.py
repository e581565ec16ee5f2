"""Wall time by phase (hrmc.timing): nested phases, repeated phases, and nothing outside a recording."""

from __future__ import annotations

from hrmc.timing import format_phases, phase, recording


def test_phases_nest_add_up_and_keep_their_order() -> None:
    with recording() as phases:
        with phase("prepare"):
            with phase("export"):
                pass
            with phase("export"):
                pass
        with phase("compare"):
            pass
    assert list(phases) == ["prepare", "prepare / export", "compare"]
    assert all(seconds >= 0 for seconds in phases.values()) and phases["prepare"] >= phases["prepare / export"]
    lines = format_phases(phases, 1.0)
    assert lines[0] == "time by phase (wall, 1.0 s in all):" and lines[2].startswith("    export")


def test_a_phase_outside_a_recording_records_nothing() -> None:
    with phase("alone"):
        pass
    with recording() as phases:
        pass
    assert phases == {}
