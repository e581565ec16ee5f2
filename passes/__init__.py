"""Stage 3 of the pipeline: onnx-ir passes that turn the structured graph into a static one.

Not built yet (issue #5); `hrmc passes` and `hrmc lower --target onnx` arrive with it.
"""
