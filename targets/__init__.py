"""Stage 4 of the pipeline: one module per backend (Core ML / ANE, MLX, onnxruntime).

Not built yet (issues #6 and #7).
"""
