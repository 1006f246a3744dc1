"""Registries of named components (models, datasets, attacks, defenses).

One registry per kind, keyed by name (timm style)::

    @register_attack("pgd", description="Projected gradient descent")
    class PGD(Attack): ...

    create_attack("pgd", steps=20)
    list_attacks()

Registering a name twice raises; looking up an unknown name raises with the available names and the
closest matches. Third-party packages add components through the ``arange.plugins`` entry-point
group: each entry point names a module (or callable) that registers its components when loaded.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

from .errors import ParamError, RegistryError

log = logging.getLogger(__name__)
T = TypeVar("T")

ENTRY_POINT_GROUP = "arange.plugins"
# Modules whose import registers the built-in components.
_BUILTIN_MODULES = ("arange.models", "arange.data", "arange.attacks", "arange.defenses")
_loaded = False


def ensure_loaded() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in _BUILTIN_MODULES:
        importlib.import_module(module)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
        except Exception as e:  # noqa: BLE001  (a broken plugin must not take the tool down)
            log.warning("arange plugin %r failed to load: %s", ep.name, e)
            continue
        if callable(obj) and not inspect.ismodule(obj):
            obj()


def suggest(name: str, choices: list[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest match, or an empty string."""
    close = difflib.get_close_matches(name, choices, n=2, cutoff=0.6)
    if not close:
        return ""
    return "; did you mean " + " or ".join(repr(c) for c in close) + "?"


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    obj: T
    description: str


class Registry(Generic[T]):
    """Name -> component for one kind of component."""

    def __init__(self, kind: str, loader: Callable[[], None] | None = None):
        """``loader``: what a lookup imports first (default: the built-in components and the
        ``arange.plugins`` entry points)."""
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}
        self._load = loader or ensure_loaded

    def register(self, name: str, description: str | None = None) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            self.add(name, obj, description)
            return obj
        return deco

    def add(self, name: str, obj: T, description: str | None = None) -> None:
        if not name or name != name.strip() or name.lower() != name:
            raise RegistryError(f"{self.kind} names must be lower-case and non-empty: {name!r}")
        if name in self._entries:
            other = self._entries[name].obj
            raise RegistryError(
                f"{self.kind} {name!r} is already registered (by "
                f"{getattr(other, '__module__', '?')}.{getattr(other, '__qualname__', other)})")
        doc = description or (inspect.getdoc(obj) or "").split("\n")[0]
        self._entries[name] = Entry(name, obj, doc)

    def remove(self, name: str) -> None:
        """Unregister ``name`` (for plugins that replace themselves, and tests)."""
        self._entries.pop(name, None)

    def names(self) -> list[str]:
        self._load()
        return sorted(self._entries)

    def entries(self) -> Iterator[Entry[T]]:
        self._load()
        for name in sorted(self._entries):
            yield self._entries[name]

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries

    def get(self, name: str) -> T:
        self._load()
        try:
            return self._entries[name].obj
        except KeyError:
            names = sorted(self._entries)
            listing = f"available: {', '.join(names)}" if len(names) <= 8 \
                else f"run 'arange list {self.kind}s' to see them all"
            raise RegistryError(
                f"unknown {self.kind} {name!r}{suggest(name, names)} ({listing})") from None

    def describe(self, name: str) -> str:
        self.get(name)
        return self._entries[name].description

    def create(self, name: str, **params: Any) -> Any:
        factory = self.get(name)
        check_params(factory, params, f"{self.kind} {name!r}")
        return factory(**params)  # type: ignore[operator]


def accepted_params(factory: Any) -> list[str]:
    sig = inspect.signature(factory)
    return [p.name for p in sig.parameters.values()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def check_params(factory: Any, params: dict[str, Any], what: str) -> None:
    """Raise ParamError if ``params`` do not bind to ``factory``'s signature."""
    accepted = accepted_params(factory)
    sig = inspect.signature(factory)
    takes_kwargs = any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values())
    if not takes_kwargs:
        for key in params:
            if key not in accepted:
                raise ParamError(
                    key, f"{what} has no parameter {key!r}{suggest(key, accepted)} "
                    f"(accepted: {', '.join(accepted) or 'none'})")
    try:
        sig.bind(**params)
    except TypeError as e:
        raise ParamError("params", f"{what}: {e}") from e


MODELS: Registry[Any] = Registry("model")
DATASETS: Registry[Any] = Registry("dataset")
ATTACKS: Registry[Any] = Registry("attack")
DEFENSES: Registry[Any] = Registry("defense")
KINDS: dict[str, Registry[Any]] = {"models": MODELS, "datasets": DATASETS, "attacks": ATTACKS,
                                    "defenses": DEFENSES}

register_model = MODELS.register
register_dataset = DATASETS.register
register_attack = ATTACKS.register
register_defense = DEFENSES.register


def create_attack(name: str, **params: Any) -> Any:
    return ATTACKS.create(name, **params)


def create_defense(name: str, **params: Any) -> Any:
    return DEFENSES.create(name, **params)


def list_attacks() -> list[str]:
    return ATTACKS.names()


def list_models() -> list[str]:
    return MODELS.names()


def list_datasets() -> list[str]:
    return DATASETS.names()


def list_defenses() -> list[str]:
    return DEFENSES.names()
