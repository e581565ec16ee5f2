"""Latency benchmarks (pytest-benchmark) for every executor.

Not built yet (issue #8); `hrmc bench` arrives with it.
"""
