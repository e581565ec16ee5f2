"""Stage 4 of the pipeline: one module per backend.

- `targets.onnx`: onnxruntime, with executors `onnx` (structured graph), `static` (after the passes)
  and `chunked` (k-step graph plus host loop).
- MLX (issue #6) and Core ML / ANE (issue #7) are still to come.
"""
