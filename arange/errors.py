"""arange's own exceptions.

Every error a user can cause by what they wrote (a scenario, a flag, a file path) is an
:class:`ArangeError`. The CLI prints its message on one line and exits with status 2; library
callers can catch it.
"""

from __future__ import annotations


class ArangeError(Exception):
    """Base class for errors caused by user input; the CLI maps it to exit status 2."""


class ScenarioError(ArangeError):
    """A scenario file is malformed, names an unknown component or holds an invalid value."""


class RegistryError(ArangeError, KeyError):
    """A name is not registered (or is registered twice)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ParamError(ArangeError, ValueError):
    """A component parameter is out of range; ``param`` names it so callers can build a path."""

    def __init__(self, param: str, message: str):
        super().__init__(f"{param}: {message}")
        self.param = param
        self.message = message


def int_param(name: str, value: object, lo: int, hi: int) -> int:
    """``value`` when it is an integer in [lo, hi] (not a bool); else :class:`ParamError`."""
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise ParamError(name, f"must be an integer in [{lo}, {hi}] (got {value!r})")
    return value


class WeightsError(ArangeError):
    """A checkpoint cannot be read or does not fit the model."""


class DataError(ArangeError):
    """A dataset cannot be found or read."""
