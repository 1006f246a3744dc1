"""What every library adapter shares: parameters validated against the wrapped constructor's
signature, seeded library randomness, query counting, and one conversion at the boundary.

An adapter is an :class:`~arange.attacks.base.Attack` like any native one, so the runner enforces
its budget and scores it the same way. The wrapped library is imported only when an adapter is
validated or run, so ``arange list attacks`` stays fast.
"""

from __future__ import annotations

import contextlib
import inspect
import re
from abc import ABCMeta
from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from arange.errors import ArangeError, ParamError
from arange.registry import check_params, register_attack
from arange.threat import Norm

from ..base import Attack, Misclassification, Objective

_ARG_RE = re.compile(r"argument\s+`?([A-Za-z_][A-Za-z0-9_]*)`?")


class _AdapterMeta(ABCMeta):
    """Gives adapter classes a signature computed lazily from the wrapped constructor, so the
    registry's ``inspect.signature(cls).bind(**params)`` checks names against the library."""

    @property
    def __signature__(cls) -> inspect.Signature:
        return cls.signature()  # type: ignore[attr-defined, no-any-return]


class QueryCounter(nn.Module):
    """The target as a library sees it: counts the inputs passed through the model (one query
    per row) and casts them to the evaluation dtype (libraries sometimes build float64 arrays)."""

    def __init__(self, model: nn.Module, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.model = model
        self.dtype = dtype
        self.count = 0
        self.training = model.training

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.count += int(x.shape[0])
        return self.model(x.to(self.dtype))  # type: ignore[no-any-return]


def seed_from(generator: torch.Generator | None) -> int:
    """A 31-bit seed drawn from the runner's generator (0 without one)."""
    if generator is None:
        return 0
    return int(torch.randint(0, 2**31 - 1, (1,), generator=generator,
                             device=generator.device).item())


@contextlib.contextmanager
def library_seed(seed: int, device: torch.device) -> Iterator[None]:
    """Seed numpy's and torch's global generators for a library call, and restore them after."""
    np_state = np.random.get_state()
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        np.random.seed(seed)
        torch.manual_seed(seed)
        try:
            yield
        finally:
            np.random.set_state(np_state)


class LibraryAdapter(Attack, metaclass=_AdapterMeta):
    """Base for adapters; subclasses name the wrapped class and the arguments arange manages."""

    library: ClassVar[str] = ""
    # Wrapped-constructor arguments that arange sets itself (from the threat model, the device,
    # the batch); a scenario may not set them.
    managed: ClassVar[frozenset[str]] = frozenset()
    # arange defaults that differ from the library's.
    overrides: ClassVar[dict[str, Any]] = {}
    # Adapter-only parameters (name -> default), for wrappers whose own knobs are objects.
    extra: ClassVar[dict[str, Any]] = {}
    # Minimal-norm attacks are not bounded by eps: their output is projected onto the ball here,
    # at the boundary (as foolbox does for its minimisation attacks).
    minimal_norm: ClassVar[bool] = False

    @classmethod
    def wrapped(cls) -> Any:
        """The wrapped library class (imported lazily)."""
        raise NotImplementedError

    @classmethod
    def signature(cls) -> inspect.Signature:
        params = []
        for p in inspect.signature(cls.wrapped()).parameters.values():
            if p.name in cls.managed or p.name == "self" or p.kind in (
                    p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            params.append(inspect.Parameter(p.name, inspect.Parameter.KEYWORD_ONLY,
                                            default=cls.overrides.get(p.name, p.default)))
        for name, default in cls.extra.items():
            params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY,
                                            default=default))
        return inspect.Signature(params)

    def __init__(self, **params: Any):
        cls = type(self)
        check_params(cls, params, f"attack {cls.registered_name()!r}")
        sig = cls.signature()
        config = {p.name: p.default for p in sig.parameters.values()}
        for key, value in params.items():
            config[key] = _coerce(key, value, config[key], key in cls.step_params)
        self.config = config
        try:
            self.validate()
        except ParamError:
            raise
        except (ValueError, TypeError) as e:
            m = _ARG_RE.search(str(e))
            name = m.group(1) if m and m.group(1) in config else "params"
            raise ParamError(name, f"{cls.library} rejects it: {e}") from e

    @classmethod
    def registered_name(cls) -> str:
        return getattr(cls, "_registered_name", cls.__name__.lower())

    def validate(self) -> None:
        """Check the values by building the wrapped attack (raise ValueError/TypeError)."""

    def params(self) -> dict[str, Any]:
        return dict(self.config)

    def library_params(self) -> dict[str, Any]:
        """The user-facing parameters that go to the wrapped constructor."""
        return {k: v for k, v in self.config.items() if k not in self.extra}

    def _classification_only(self, objective: Objective) -> None:
        if not isinstance(objective, Misclassification):
            raise ArangeError(f"{self.registered_name()} attacks classifiers only (the task's "
                              f"objective is {type(objective).__name__})")


def _coerce(name: str, value: Any, default: Any, positive: bool) -> Any:
    """Type-check ``value`` against the type of the library default."""
    if default is None or default is inspect.Parameter.empty:
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ParamError(name, f"must be true or false (got {value!r})")
    elif isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParamError(name, f"must be an integer (got {value!r})")
        if positive and value < 1:
            raise ParamError(name, f"must be >= 1 (got {value})")
    elif isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ParamError(name, f"must be a number (got {value!r})")
        return float(value)
    elif isinstance(default, str) and not isinstance(value, str):
        raise ParamError(name, f"must be a string (got {value!r})")
    return value


def register_adapter(name: str, description: str) -> Any:
    """Register an adapter class under ``name`` (lower-case, e.g. ``art.apgd``)."""
    def deco(cls: type[LibraryAdapter]) -> type[LibraryAdapter]:
        cls._registered_name = name  # type: ignore[attr-defined]
        return register_attack(name, description=description)(cls)  # type: ignore[no-any-return]
    return deco


def norm_value(norm: Norm) -> float:
    return float("inf") if norm is Norm.linf else 2.0

