"""Parity suites: run two executors on the same inputs, report drift, gate (DESIGN.md section 4).

Not built yet (issue #4); `hrmc parity` arrives with it.
"""
