"""Errors a user can cause. Each carries one line that says what is wrong and where.

The CLI prints `hrmc: error: <message>` and exits with the error's `exit_code`; anything
that is not an `HrmcError` is a bug and keeps its traceback.
"""


class HrmcError(Exception):
    """Bad input or usage: a missing file, a malformed checkpoint, an impossible option."""

    exit_code = 2


class CheckpointError(HrmcError):
    """A checkpoint or its config cannot be read or does not fit the model."""


class ConfigError(HrmcError):
    """A model configuration that cannot describe an HRM."""


class InputError(HrmcError):
    """A batch that the model cannot run: wrong keys, shapes or token ids."""


class GateFailure(HrmcError):
    """A parity or benchmark gate failed: the run worked, the numbers did not pass."""

    exit_code = 1
