"""hrmc: compile a Hierarchical Reasoning Model for Core ML (ANE) and MLX, provably unchanged.

This package holds the command line (`hrmc.cli`) and the pipeline driver; the stages live in
the top-level packages `hrm_ref`, `lowering`, `passes`, `targets`, `parity` and `bench`.
"""

__version__ = "0.1.0"
