"""Benchmarks run only when asked for (`pytest --benchmark-only`), never in the default test command."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config, items) -> None:
    if config.getoption("benchmark_only", False):
        return
    skip = pytest.mark.skip(reason="a benchmark: run with pytest --benchmark-only")
    for item in items:
        if "benchmark" in getattr(item, "fixturenames", ()):
            item.add_marker(skip)
