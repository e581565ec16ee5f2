"""Stage 2 of the pipeline: export hrm_ref to ONNX with its cycles and halting kept as ONNX Loops.

Entry point: `export_onnx(model, out, policy, budget)` writes `out` (the whole ACT inference) and
`out.step.onnx` (one step, carry in and out), traced once per model (cache.py); `read_record` reads what hrmc
recorded in them.
"""

from hrmc.lowering.cache import export_onnx
from hrmc.lowering.export import ExportedModel, export_paths, read_record, step_path_for

__all__ = ["ExportedModel", "export_onnx", "export_paths", "read_record", "step_path_for"]
