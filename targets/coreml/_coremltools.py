"""coremltools, imported once and quietly for every module of the Core ML backend.

Off macOS coremltools prints to stderr on import ("Failed to load _MLModelProxy") and during
conversion, and logs warnings for every op; our reports say what matters.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings

logging.getLogger("coremltools").setLevel(logging.ERROR)
warnings.filterwarnings("ignore", module="coremltools")


@contextlib.contextmanager
def quiet_stderr():
    """coremltools prints to stderr on import off macOS and during conversion; our reports say what matters."""
    with open(os.devnull, "w") as devnull, contextlib.redirect_stderr(devnull):
        yield


with quiet_stderr():
    import coremltools as ct  # prints "Failed to load _MLModelProxy" lines off macOS
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.frontend.milproto.helper import proto_to_types
    from coremltools.converters.mil.frontend.milproto.load import TranscriptionContext
    from coremltools.converters.mil.frontend.milproto.load import _load_value as load_value
    from coremltools.converters.mil.mil import Function, Program, TupleInputType
    from coremltools.converters.mil.mil import types as mil_types
    from coremltools.converters.mil.mil.ops.defs._utils import compute_gather
    from coremltools.converters.mil.mil.ops.defs.iOS18 import compression as iOS18_compression
    from coremltools.converters.mil.mil.ops.registry import SSAOpRegistry
    from coremltools.converters.mil.mil.passes.pass_registry import PASS_REGISTRY

__all__ = ["PASS_REGISTRY", "Function", "Program", "SSAOpRegistry", "TranscriptionContext", "TupleInputType",
           "compute_gather", "ct", "iOS18_compression", "load_value", "mb", "mil_types", "proto_to_types", "quiet_stderr"]
