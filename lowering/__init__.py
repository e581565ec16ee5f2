"""Stage 2 of the pipeline: export hrm_ref to ONNX with its cycles and halting kept as ONNX Loops.

Not built yet (issue #4); `hrmc export` arrives with it.
"""
