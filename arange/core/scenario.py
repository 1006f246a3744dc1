"""What every range's scenario shares: the strict model base, the field types (names, labels,
devices, budgets), one attack-entry base, loading a file and dispatching it to its task, the
component and gate-rule checks, and error messages that name the file, the path and the fix::

    scenarios/x.yaml: attacks[1].params.step: pgd has no parameter 'step'; did you mean 'steps'?

Numbers such as ``8/255`` are parsed by :func:`arange.expr.parse_number` (never ``eval``). Each
task's own scenario model lives in its package (``arange.classification.scenario``,
``arange.hashing.scenario``, ``arange.forensics.scenario``).
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from arange.core.norms import Norm
from arange.errors import ParamError, RegistryError, ScenarioError
from arange.expr import format_eps, parse_number
from arange.registry import ATTACKS, accepted_params, check_params, suggest

from .safeio import short

_DEVICE_RE = re.compile(r"^(auto|cpu|cuda|cuda:\d+|mps)$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_KEY_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")  # printed as is in error paths
_LABEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+@-]{0,63}$")


def _check_name(v: str) -> str:
    if not _NAME_RE.match(v):
        raise ValueError("use letters, digits, '_', '-' or '.', starting with a letter or "
                         f"digit, at most 64 characters (got {short(v, 40)})")
    return v


def _check_label(v: str) -> str:
    if not _LABEL_RE.match(v):
        raise ValueError("use letters, digits, '_', '-', '.', '+' or '@', starting with a "
                         f"letter or digit, at most 64 characters (got {short(v, 40)}); labels "
                         "name files in the run folder")
    return v


def _check_device(v: str) -> str:
    if not _DEVICE_RE.match(v):
        raise ValueError(f"must be auto, cpu, cuda or cuda:N (got {short(v, 40)})")
    return v


def _optional_number(v: Any) -> float | None:
    return None if v is None else parse_number(v)


# Field types every task's scenario model shares: a scenario name (also a folder name) or a
# label, a device, and a number that may be written as an expression such as 8/255 or left out.
Name = Annotated[str, AfterValidator(_check_name)]
Label = Annotated[str, AfterValidator(_check_label)]  # an attack's or defense's label
Device = Annotated[str, AfterValidator(_check_device)]
OptionalNumber = Annotated[float | None, BeforeValidator(_optional_number)]


class Strict(BaseModel):
    """Base of every scenario model: unknown fields are errors, values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


_Task = typing.TypeVar("_Task", bound=BaseModel)


class Normalisation(Strict):
    """What a brought model expects, applied by arange inside its wrapper: the [0, 1] image
    times ``scale`` (1 for [0, 1], 255 for [0, 255]), channels in ``channels`` order, then
    ``(x - mean) / std``."""

    mean: list[float] | None = None
    std: list[float] | None = None
    scale: float = Field(1.0, gt=0, le=255)
    channels: Literal["rgb", "bgr"] = "rgb"

    @model_validator(mode="after")
    def _consistent(self) -> Normalisation:
        if (self.mean is None) != (self.std is None):
            raise ValueError("give both mean and std, or neither")
        if self.mean is not None and self.std is not None:
            if len(self.mean) != len(self.std) or len(self.mean) not in (1, 3):
                raise ValueError("mean and std need 1 or 3 values each (one per channel)")
            if not all(v > 0 for v in self.std):
                raise ValueError("std values must be > 0")
        return self


class ScenarioBase(Strict):
    """The head every range's scenario starts with; a range narrows ``task`` to its own name
    (``task: Literal["..."] = TASK``) and adds its target, attacks and gates."""

    name: Name
    task: str
    description: str = ""
    seed: int = Field(0, ge=0, le=2**31 - 1)
    device: Device = "auto"
    # Set by ``arange run --trust-code`` only, never from the file: the scenario may run the
    # Python files it names (``python:`` model sources).
    _trust_code: bool = PrivateAttr(default=False)


def user_code(scenario: BaseModel) -> list[str]:
    """The ``python:`` model sources a scenario names (each runs the user's code)."""
    found: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                if k == "model" and isinstance(v, str) and v.startswith("python:"):
                    found.append(v)
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)

    walk(scenario.model_dump(mode="json"))
    return found


def with_trusted_code(scenario: _Task, trust: bool) -> _Task:
    """``scenario`` allowed (or not) to run the code it names; refuses, with exit status 2,
    a scenario that names code when ``trust`` is False."""
    code = user_code(scenario)
    if code and not trust:
        raise ScenarioError(f"{code[0]} runs your own Python code: arange runs it only when "
                            "told to, with 'arange run --trust-code' (or arange.run(..., "
                            "trust_code=True))")
    copy = scenario.model_copy()
    copy._trust_code = trust  # type: ignore[attr-defined]
    return copy


def code_trusted(scenario: Any) -> bool:
    return bool(getattr(scenario, "_trust_code", False))


def number_list(value: Any, example: str = "[4/255, 8/255]") -> list[float]:
    """A number or a non-empty list of numbers (``8/255`` allowed) as a list of floats."""
    values = value if isinstance(value, list) else [value]
    if not values:
        raise ValueError(f"needs at least one value, e.g. {example}")
    return [parse_number(v) for v in values]



class AttackSpecBase(Strict):
    """What an attack entry is in every range: a registered attack (``name``, see ``arange list
    attacks``; it declares the ranges it serves), an optional ``label`` naming its rows, the
    threat model's ``norm`` and budgets ``eps``, and the attack's own ``params``. A range adds
    its fields (a suite, a goal, a JPEG re-scoring, ...) by subclassing."""

    EPS_EXAMPLE: ClassVar[str] = "[4/255, 8/255]"

    name: str | None = None
    label: Label | None = None
    norm: Norm = Norm.linf
    eps: list[float]
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("eps", mode="before")
    @classmethod
    def _parse_eps(cls, v: Any) -> list[float]:
        return number_list(v, cls.EPS_EXAMPLE)

    @property
    def key(self) -> str:
        """The entry's name in rows, job ids and gate rules."""
        return self.label or self.name or ""


# ---------------------------------------------------------------------------- loading

def load_scenario(path: str | Path) -> Any:
    """Read, parse and fully validate a scenario file."""
    from .safeio import SCENARIO_BYTES, load_yaml, read_text

    path = Path(path)
    text = read_text(path, "scenario", SCENARIO_BYTES, ScenarioError)
    raw = load_yaml(text, str(path), ScenarioError)
    return scenario_from_dict(raw, source=str(path), base_dir=path.parent)


def scenario_from_dict(raw: Any, source: str = "<scenario>",
                       base_dir: Path | None = None) -> Any:
    """Validate a parsed scenario mapping as its task's scenario model (``task:``, default
    classification; see :mod:`arange.core.task`)."""
    if raw is None:
        raise ScenarioError(f"{source}: the file is empty; see scenarios/pgd_resnet.yaml")
    if not isinstance(raw, dict):
        raise ScenarioError(f"{source}: the top level must be a mapping of fields "
                            f"(name, target, attacks, ...), got {type(raw).__name__}")
    task = raw.get("task", "classification")
    from .task import get_task, task_names
    try:
        plugin = get_task(str(task))
    except RegistryError as e:
        names = task_names()
        raise ScenarioError(f"{source}: task: unknown task {short(task, 40)}"
                            f"{suggest(str(task), names)}"
                            f" (available: {', '.join(names)})") from e
    scenario = plugin.load(raw, source, base_dir)
    check_gates(scenario, source)
    return scenario


def check_gates(scenario: Any, source: str) -> None:
    """The scenario's gate rules through the one rule validator ``arange gate`` uses, so a
    rule that validates is a rule the gate can evaluate."""
    from arange.gates import GateError, rules_from_list

    raw = [g.model_dump(mode="json", exclude_none=True) for g in scenario.gates]
    try:
        rules_from_list(raw, scenario.task, f"{source}: gates")
    except GateError as e:
        raise ScenarioError(str(e)) from e


def relative_root(options: dict[str, Any], base_dir: Path | None,
                  keys: tuple[str, ...] = ("root", "path")) -> dict[str, Any] | None:
    """Dataset ``options`` whose relative ``root`` (a folder) or ``path`` (a file, such as a
    manifest), or whichever ``keys`` are given, are made relative to the scenario file's folder
    ``base_dir``; None when there is nothing to change."""
    if base_dir is None:
        return None
    changed = dict(options)
    for key in keys:
        value = options.get(key)
        if isinstance(value, str) and not Path(value).expanduser().is_absolute():
            changed[key] = str((base_dir / value).resolve())
    return changed if changed != options else None


def load_task_scenario(model: type[_Task], raw: dict[str, Any], source: str,
                       base_dir: Path | None,
                       validate: Callable[[_Task, str], None]) -> _Task:
    """The loader of a task's scenario (:class:`arange.core.task.Task`): validate ``raw`` as
    ``model`` (whose ``target.dataset.options``, if it has them, may hold a ``root`` relative to
    the file), then run the task's semantic checks ``validate(scenario, source)``."""
    try:
        s = model.model_validate(raw)
    except ValidationError as e:
        raise ScenarioError(format_validation(e, source, model)) from e
    target: Any = getattr(s, "target", None)
    dataset: Any = getattr(target, "dataset", None)
    opts = relative_root(dataset.options, base_dir) if dataset is not None else None
    if opts is not None:
        ds = dataset.model_copy(update={"options": opts})
        s = s.model_copy(update={"target": target.model_copy(update={"dataset": ds})})
    validate(s, source)
    return s


def fail(source: str, path: str, message: str) -> ScenarioError:
    return ScenarioError(f"{source}: {path}: {message}")


def check_component(registry: Any, name: str, params: dict[str, Any], source: str,
                     name_path: str, params_path: str, exclude: tuple[str, ...] = ()) -> Any:
    """Check that ``name`` is registered and ``params`` fit it; return an instance when the
    component can be built from ``params`` alone (``exclude`` lists arguments the runner
    supplies, such as a model's input channels)."""
    try:
        factory = registry.get(name)
    except RegistryError as e:
        raise fail(source, name_path, str(e)) from e
    try:
        if exclude:
            accepted = [p for p in accepted_params(factory) if p not in exclude]
            for key in params:
                if key in exclude:
                    raise ParamError(key, "is set from the dataset; remove it")
                if key not in accepted:
                    raise ParamError(key, f"{registry.kind} {name!r} has no parameter {key!r}"
                                     f"{suggest(key, accepted)} (accepted: "
                                     f"{', '.join(accepted) or 'none'})")
            _dry_build(factory, params, exclude)
            return None
    except ParamError as e:
        raise fail(source, key_path(params_path, e.param), e.message) from e
    except (TypeError, ValueError, RuntimeError) as e:  # a value of the wrong kind
        raise fail(source, params_path, f"{registry.kind} {name!r} cannot be built with "
                    f"these parameters: {short(str(e), 200)[1:-1]}") from e
    return build_component(factory, params, f"{registry.kind} {name!r}", source, params_path)


def _dry_build(factory: Any, params: dict[str, Any], supplied: tuple[str, ...]) -> None:
    """Build a model on torch's meta device (no memory, no compute) with stand-in values for
    what the runner supplies, so parameter values out of range fail at validate time."""
    import torch

    stand_in = {"in_channels": 3, "num_classes": 10, "image_size": 32}
    with torch.device("meta"):
        factory(**{k: v for k, v in stand_in.items() if k in supplied}, **params)


def check_gate_rule(rule: Any, metrics: Sequence[str], source: str, path: str) -> None:
    """A gate rule (at ``path``, e.g. ``gates[0]``) names one of the task's ``metrics``, has a
    bound (``min``, ``max`` or ``max_drop``) and its ``min`` / ``max`` are in [0, 1] (every
    gated metric is a rate or an AUC)."""
    if rule.metric not in metrics:
        raise fail(source, f"{path}.metric", f"unknown metric {rule.metric!r}"
                   f"{suggest(rule.metric, list(metrics))} (available: {', '.join(metrics)})")
    if rule.min is None and rule.max is None and rule.max_drop is None:
        raise fail(source, path, "needs at least one of min, max or max_drop")
    for bound in ("min", "max"):
        v = getattr(rule, bound)
        if v is not None and not 0 <= v <= 1:
            raise fail(source, f"{path}.{bound}", f"rates are in [0, 1] (got {v:g})")


def check_choice(value: Any, choices: Sequence[Any], what: str, source: str, path: str) -> None:
    """``value`` (a rule's attack, defense, detector, ...) is one of the scenario's ``choices``
    of ``what``; None (not given) always is."""
    if value is not None and value not in choices:
        names = [str(c) for c in choices]
        raise fail(source, path, f"no {what} {short(value, 40)} in this scenario"
                   f"{suggest(str(value), names)} ({what}s: {', '.join(names)})")


def check_rule_eps(eps: float | None, attacks: Sequence[AttackSpecBase], source: str,
                   path: str) -> None:
    """A rule's ``eps`` is one that some attack of the scenario runs at."""
    all_eps = sorted({e for a in attacks for e in a.eps})
    if eps is not None and not any(abs(eps - e) < 1e-9 for e in all_eps):
        raise fail(source, path, f"no attack runs at eps {format_eps(eps)} (scenario eps: "
                   f"{', '.join(format_eps(e) for e in all_eps)})")


def check_serves(name: str, task: str, source: str, path: str) -> None:
    """The registered attack ``name`` serves ``task`` (attacks declare the ranges whose
    objectives they handle: ``Attack.tasks``)."""
    tasks = getattr(ATTACKS.get(name), "tasks", ("classification",))
    if task not in tasks:
        usable = [n for n in ATTACKS.names() if task in getattr(ATTACKS.get(n), "tasks", ())]
        raise fail(source, path, f"attack {name!r} serves {', '.join(tasks)}, not {task} "
                    f"(attacks for {task}: {', '.join(usable)})")


def check_norm(attack: Any, name: str, norm: Norm, source: str, path: str) -> None:
    """``attack`` (an instance, or None for a suite) supports ``norm`` (``path``: the attack's
    entry, e.g. ``attacks[1]``)."""
    norms = getattr(attack, "norms", (Norm.linf, Norm.l2))
    if norm not in norms:
        raise fail(source, f"{path}.norm", f"{name} supports "
                    f"{', '.join(n.value for n in norms)} (got {norm.value})")


def check_eps(eps: list[float], norm: Norm, source: str, path: str) -> None:
    """Budgets in range for ``norm`` (pixel space) and listed once each."""
    limit = 1.0 if norm is Norm.linf else 1000.0
    for j, e in enumerate(eps):
        if not 0 < e <= limit:
            raise fail(source, f"{path}.eps[{j}]",
                        f"must be > 0 and <= {limit:g} for {norm.value} (got {e:g})")
    if len(set(eps)) != len(eps):
        raise fail(source, f"{path}.eps", "lists the same value twice")


def check_attack(a: AttackSpecBase, task: str, source: str, path: str) -> Any:
    """One attack entry of any range (at ``path``, e.g. ``attacks[1]``): a registered attack
    that serves ``task``, parameters that fit it, a norm it supports and budgets in range.
    Returns the attack built from its parameters."""
    name = str(a.name)
    if name in ATTACKS:
        check_serves(name, task, source, f"{path}.name")
    attack = check_component(ATTACKS, name, a.params, source, f"{path}.name", f"{path}.params")
    check_norm(attack, name, a.norm, source, path)
    check_eps(a.eps, a.norm, source, path)
    return attack


def check_labels(entries: Sequence[Any], what: str, source: str,
                 reserved: Sequence[str] = ()) -> list[str]:
    """Entries (attacks, defenses, detectors) of the list ``what`` have distinct ``key``s (their
    labels name rows, files and gate rules); returns the keys."""
    keys: list[str] = []
    for i, e in enumerate(entries):
        if e.key in keys or e.key in reserved:
            raise fail(source, f"{what}[{i}]", f"{e.key!r} is already used; give this "
                       f"{what.rstrip('s')} a distinct 'label'")
        keys.append(e.key)
    return keys


def build_component(factory: Any, params: dict[str, Any], what: str, source: str,
                    params_path: str) -> Any:
    """Bind ``params`` to ``factory``'s signature and build it, turning a bad parameter into a
    scenario error at ``params_path.<name>``."""
    try:
        check_params(factory, params, what)
        return factory(**params)
    except ParamError as e:
        sub = key_path(params_path, e.param) if e.param != "params" else params_path
        raise fail(source, sub, e.message) from e
    except (TypeError, ValueError) as e:
        raise fail(source, params_path, str(e)) from e


# ---------------------------------------------------------------------------- errors

def key_path(path: str, key: Any) -> str:
    """``path.key`` for an error message; a key that is not a plain name is quoted, escaped
    and cut (it comes from the user's file)."""
    text = str(key)
    part = text if _KEY_RE.match(text) else f"[{short(text, 40)}]"
    return f"{path}.{part}" if path and not part.startswith("[") else f"{path}{part}"


def _loc_str(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            continue
        text = str(part)
        if not _KEY_RE.match(text):  # a user's key: quoted, escaped and cut, never raw
            text = f"[{short(text, 40)}]"
            out += text
            continue
        out += f".{text}" if out else text
    return out


def _model_at(loc: tuple[Any, ...], root: type[BaseModel]) -> type[BaseModel] | None:
    """The pydantic model class found by following ``loc`` from ``root`` (a task's scenario
    model)."""
    cur: Any = root
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(cur, type) and issubclass(cur, BaseModel)):
            return None
        field = cur.model_fields.get(part)
        if field is None:
            return None
        cur = _unwrap(field.annotation)
    return cur if isinstance(cur, type) and issubclass(cur, BaseModel) else None


def _unwrap(ann: Any) -> Any:
    origin = typing.get_origin(ann)
    if origin in (list, tuple):
        return _unwrap(typing.get_args(ann)[0])
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(ann):
            u = _unwrap(arg)
            if isinstance(u, type) and issubclass(u, BaseModel):
                return u
    return ann


def _format_one(err: Any, root: type[BaseModel]) -> tuple[str, str]:
    raw = tuple(err["loc"])
    # drop pydantic's union/validator tags ('list[float]', 'function-after[...]') but never
    # the user's own key, which comes last for unknown fields
    loc = tuple(p for i, p in enumerate(raw) if not (
        isinstance(p, str) and "[" in p and (i < len(raw) - 1 or err["type"] != "extra_forbidden")
        and p.endswith("]")))
    kind = err["type"]
    if kind == "extra_forbidden":
        parent, key = loc[:-1], str(loc[-1])
        model = _model_at(parent, root)
        allowed = list(model.model_fields) if model else []
        hint = suggest(key, allowed)
        return _loc_str(loc), (f"unknown field {short(key, 40)}{hint}"
                               + (f" (allowed: {', '.join(allowed)})" if allowed else ""))
    if kind == "missing":
        parent, key = loc[:-1], str(loc[-1])
        return _loc_str(parent) or "(top level)", f"missing required field {key!r}"
    msg = str(err["msg"]).removeprefix("Value error, ")
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal",
                "int_parsing", "int_from_float", "float_parsing", "bool_parsing",
                "literal_error", "enum", "string_type", "too_short", "list_type", "dict_type",
                "model_type"):
        msg = f"{msg[0].lower()}{msg[1:]} (got {short(err.get('input'), 40)})"
    return _loc_str(loc) or "(top level)", msg


def format_validation(e: ValidationError, source: str, root: type[BaseModel]) -> str:
    """One ``file: path: message`` line per error; ``root`` is the scenario model that was
    validated, used to list the allowed fields."""
    lines = []
    errors = sorted(e.errors(), key=lambda err: err["type"] != "extra_forbidden")
    for err in errors:
        path, msg = _format_one(err, root)
        line = f"{source}: {path}: {msg}"
        if line not in lines:
            lines.append(line)
    return "\n".join(lines)

