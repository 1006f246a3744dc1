"""The scenario file: a strict schema, validated before any compute.

Every error names the file, the path inside it and what to do, for example::

    scenarios/x.yaml: attacks[1].params.step: pgd has no parameter 'step'; did you mean 'steps'?

Numbers such as ``8/255`` are parsed by :func:`arange.expr.parse_number` (never ``eval``).
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from .core.safeio import short
from .errors import ParamError, RegistryError, ScenarioError
from .expr import format_eps, parse_number
from .registry import ATTACKS, DATASETS, DEFENSES, MODELS, accepted_params, check_params, suggest
from .threat import Norm

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
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth")
# Metrics a classification gate may name (the gates issue evaluates them).
CLASSIFICATION_METRICS = ("robust_accuracy", "clean_accuracy", "attack_success_rate")
WORST_CASE = "worst_case"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Training(_Strict):
    """The zoo recipe used when ``weights: zoo``."""

    epochs: int = Field(12, ge=1, le=1000)
    batch_size: int = Field(64, ge=1, le=65536)
    lr: float = Field(0.05, gt=0, le=10)
    weight_decay: float = Field(5e-4, ge=0, le=1)
    shift: int = Field(2, ge=0, le=16)


class DatasetSpec(_Strict):
    name: str
    split: Literal["train", "test"] = "test"
    options: dict[str, Any] = Field(default_factory=dict)


class Target(_Strict):
    model: str
    model_params: dict[str, Any] = Field(default_factory=dict)
    weights: str = "zoo"
    training: Training = Field(default_factory=Training)
    dataset: DatasetSpec
    samples: int | None = Field(256, ge=1)
    # "auto": large on CUDA, halved on out-of-memory (arange.speed.BatchSize); 128 on CPU
    batch_size: int | Literal["auto"] = 128
    quantize: bool = False

    @field_validator("batch_size", mode="before")
    @classmethod
    def _batch_size(cls, v: Any) -> Any:
        if v == "auto":
            return v
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 65536:
            raise ValueError("must be a whole number from 1 to 65536, or auto (got "
                             f"{short(v, 40)})")
        return v


def number_list(value: Any, example: str = "[4/255, 8/255]") -> list[float]:
    """A number or a non-empty list of numbers (``8/255`` allowed) as a list of floats."""
    values = value if isinstance(value, list) else [value]
    if not values:
        raise ValueError(f"needs at least one value, e.g. {example}")
    return [parse_number(v) for v in values]


class AttackSpec(_Strict):
    """One attack entry: a registered attack (``name``) or a suite of them (``suite``)."""

    name: str | None = None
    suite: str | None = None  # e.g. "standard": a recipe run as a cascade (arange.attacks.suites)
    label: Label | None = None
    norm: Norm = Norm.linf
    eps: list[float]
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("eps", mode="before")
    @classmethod
    def _parse_eps(cls, v: Any) -> list[float]:
        return number_list(v)

    @model_validator(mode="after")
    def _name_or_suite(self) -> AttackSpec:
        if self.name is None and self.suite is None:
            raise ValueError("needs 'name' (an attack, see 'arange list attacks') or 'suite' "
                             "(e.g. suite: standard)")
        if self.name is not None and self.suite is not None:
            raise ValueError(f"give either 'name' or 'suite', not both (got name {self.name!r} "
                             f"and suite {self.suite!r})")
        return self

    @property
    def key(self) -> str:
        return self.label or self.name or self.suite or ""


class DefenseSpec(_Strict):
    name: str
    label: Label | None = None
    params: dict[str, Any] = Field(default_factory=dict)

    @property
    def key(self) -> str:
        return self.label or self.name


def _defense_shorthand(v: Any) -> Any:
    return {"name": v} if isinstance(v, str) else v


class GateRule(_Strict):
    """A rule on a scorecard metric; validated here, evaluated by ``arange gate``."""

    name: str | None = None
    metric: str
    defense: str | None = None
    attack: str | None = None
    eps: OptionalNumber = None
    min: OptionalNumber = None
    max: OptionalNumber = None
    max_drop: float | None = Field(None, ge=0, le=1)


class LargeEpsCheck(_Strict):
    """A PGD run at a budget so large that accuracy must fall to chance. The default eps (0.5
    L-inf, or 0.5 * sqrt(pixels) L2) reaches the mid-grey image from every input, so at most one
    class can stay robust."""

    enabled: bool = True
    eps: OptionalNumber = None
    norm: Norm = Norm.linf
    steps: int = Field(20, ge=1, le=100_000)


class MoreStepsCheck(_Strict):
    """Re-run one iterative attack with ``factor`` x the iterations and more restarts."""

    enabled: bool = True
    attack: str | None = None  # an attack label; default: the first iterative white-box one
    factor: int = Field(2, ge=2, le=100)
    extra_restarts: int = Field(1, ge=0, le=100)


def _enabled_shorthand(v: Any) -> Any:
    return {"enabled": v} if isinstance(v, bool) else v


class ChecksConfig(_Strict):
    """Validity checks that need extra attack runs; they run on a subset of the samples."""

    samples: int = Field(128, ge=8, le=1_000_000)
    large_eps: LargeEpsCheck = Field(default_factory=LargeEpsCheck)
    more_steps: MoreStepsCheck = Field(default_factory=MoreStepsCheck)

    @field_validator("large_eps", "more_steps", mode="before")
    @classmethod
    def _shorthand(cls, v: Any) -> Any:
        return _enabled_shorthand(v)


class Evaluation(_Strict):
    cascade: bool = False  # attack only samples that earlier attacks left unbroken
    checks: ChecksConfig = Field(default_factory=ChecksConfig)
    # Run attacks (not scoring) under bfloat16 autocast; the 'autocast' check re-runs one
    # attack in fp32 on the check samples and flags a weaker bf16 attack.
    autocast: Literal["none", "bf16"] = "none"


class Scenario(_Strict):
    name: Name
    task: Literal["classification"] = "classification"
    description: str = ""
    seed: int = Field(0, ge=0, le=2**31 - 1)
    device: Device = "auto"
    target: Target
    defenses: list[DefenseSpec] = Field(default_factory=lambda: [DefenseSpec(name="none")])
    attacks: list[AttackSpec] = Field(min_length=1)
    evaluation: Evaluation = Field(default_factory=Evaluation)
    gates: list[GateRule] = Field(default_factory=list)

    @field_validator("defenses", mode="before")
    @classmethod
    def _defenses(cls, v: Any) -> Any:
        return [_defense_shorthand(d) for d in v] if isinstance(v, list) else v


# ---------------------------------------------------------------------------- loading

def load_scenario(path: str | Path) -> Any:
    """Read, parse and fully validate a scenario file."""
    from .core.safeio import SCENARIO_BYTES, load_yaml, read_text

    path = Path(path)
    text = read_text(path, "scenario", SCENARIO_BYTES, ScenarioError)
    raw = load_yaml(text, str(path), ScenarioError)
    return scenario_from_dict(raw, source=str(path), base_dir=path.parent)


def scenario_from_dict(raw: Any, source: str = "<scenario>",
                       base_dir: Path | None = None) -> Any:
    """Validate a parsed scenario mapping; returns a :class:`Scenario` for classification or the
    task's own scenario model for other tasks (see :mod:`arange.core.task`)."""
    if raw is None:
        raise ScenarioError(f"{source}: the file is empty; see scenarios/pgd_resnet.yaml")
    if not isinstance(raw, dict):
        raise ScenarioError(f"{source}: the top level must be a mapping of fields "
                            f"(name, target, attacks, ...), got {type(raw).__name__}")
    task = raw.get("task", "classification")
    from .core.task import get_task, task_names
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
    from .gates import GateError, rules_from_list

    raw = [g.model_dump(mode="json", exclude_none=True) for g in scenario.gates]
    try:
        rules_from_list(raw, scenario.task, f"{source}: gates")
    except GateError as e:
        raise ScenarioError(str(e)) from e


def load_classification_scenario(raw: dict[str, Any], source: str = "<scenario>",
                                 base_dir: Path | None = None) -> Scenario:
    """The ``classification`` task's loader: validate ``raw`` as a :class:`Scenario`."""
    try:
        scenario = Scenario.model_validate(raw)
    except ValidationError as e:
        raise ScenarioError(_format_validation(e, source)) from e
    scenario = _resolve_paths(scenario, base_dir, source)
    validate_components(scenario, source)
    return scenario


def _resolve_paths(s: Scenario, base_dir: Path | None, source: str) -> Scenario:
    """Make relative weight and dataset paths relative to the scenario file; check weights."""
    target = s.target
    updates: dict[str, Any] = {}
    if target.weights not in ("zoo", "random"):
        p = Path(target.weights).expanduser()
        if p.suffix not in WEIGHT_SUFFIXES:
            raise _fail(source, "target.weights",
                        f"use 'zoo', or a path ending in {', '.join(WEIGHT_SUFFIXES)} "
                        f"(got {target.weights!r})")
        if not p.is_absolute() and base_dir is not None:
            p = (base_dir / p).resolve()
        if not p.is_file():
            raise _fail(source, "target.weights", f"file {target.weights!r} does not exist; "
                        "give a path relative to the scenario file, or use 'zoo' to train one")
        updates["weights"] = str(p)
    if base_dir is None:
        return s.model_copy(update={"target": target.model_copy(update=updates)}) \
            if updates else s
    opts = relative_root(target.dataset.options, base_dir)
    if opts is not None:
        updates["dataset"] = target.dataset.model_copy(update={"options": opts})
    if not updates:
        return s
    return s.model_copy(update={"target": target.model_copy(update=updates)})


def relative_root(options: dict[str, Any], base_dir: Path | None) -> dict[str, Any] | None:
    """Dataset ``options`` whose relative ``root`` is made relative to the scenario file's
    folder ``base_dir``; None when there is nothing to change."""
    root = options.get("root")
    if base_dir is None or not isinstance(root, str) or Path(root).expanduser().is_absolute():
        return None
    return {**options, "root": str((base_dir / root).resolve())}


_Task = typing.TypeVar("_Task", bound=BaseModel)


def load_task_scenario(model: type[_Task], raw: dict[str, Any], source: str,
                       base_dir: Path | None,
                       validate: Callable[[_Task, str], None]) -> _Task:
    """The loader of a task's scenario (:class:`arange.core.task.Task`): validate ``raw`` as
    ``model`` (whose ``target.dataset.options`` may hold a ``root`` relative to the file), then
    run the task's semantic checks ``validate(scenario, source)``."""
    try:
        s = model.model_validate(raw)
    except ValidationError as e:
        raise ScenarioError(_format_validation(e, source, model)) from e
    target = typing.cast(Any, s).target
    opts = relative_root(target.dataset.options, base_dir)
    if opts is not None:
        ds = target.dataset.model_copy(update={"options": opts})
        s = s.model_copy(update={"target": target.model_copy(update={"dataset": ds})})
    validate(s, source)
    return s


def _fail(source: str, path: str, message: str) -> ScenarioError:
    return ScenarioError(f"{source}: {path}: {message}")


def _check_component(registry: Any, name: str, params: dict[str, Any], source: str,
                     name_path: str, params_path: str, exclude: tuple[str, ...] = ()) -> Any:
    """Check that ``name`` is registered and ``params`` fit it; return an instance when the
    component can be built from ``params`` alone (``exclude`` lists arguments the runner
    supplies, such as a model's input channels)."""
    try:
        factory = registry.get(name)
    except RegistryError as e:
        raise _fail(source, name_path, str(e)) from e
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
        raise _fail(source, key_path(params_path, e.param), e.message) from e
    except (TypeError, ValueError, RuntimeError) as e:  # a value of the wrong kind
        raise _fail(source, params_path, f"{registry.kind} {name!r} cannot be built with "
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
    """A gate rule (at ``path``, e.g. ``gates[0]``) names one of the task's ``metrics`` and its
    ``min`` / ``max`` are in [0, 1] (every gated metric is a rate or an AUC)."""
    if rule.metric not in metrics:
        raise _fail(source, f"{path}.metric", f"unknown metric {rule.metric!r}"
                    f"{suggest(rule.metric, list(metrics))} (available: {', '.join(metrics)})")
    for bound in ("min", "max"):
        v = getattr(rule, bound)
        if v is not None and not 0 <= v <= 1:
            raise _fail(source, f"{path}.{bound}", f"rates are in [0, 1] (got {v:g})")


def check_serves(name: str, task: str, source: str, path: str) -> None:
    """The registered attack ``name`` serves ``task`` (attacks declare the ranges whose
    objectives they handle: ``Attack.tasks``)."""
    tasks = getattr(ATTACKS.get(name), "tasks", ("classification",))
    if task not in tasks:
        usable = [n for n in ATTACKS.names() if task in getattr(ATTACKS.get(n), "tasks", ())]
        raise _fail(source, path, f"attack {name!r} serves {', '.join(tasks)}, not {task} "
                    f"(attacks for {task}: {', '.join(usable)})")


def check_norm(attack: Any, name: str, norm: Norm, source: str, path: str) -> None:
    """``attack`` (an instance, or None for a suite) supports ``norm`` (``path``: the attack's
    entry, e.g. ``attacks[1]``)."""
    norms = getattr(attack, "norms", (Norm.linf, Norm.l2))
    if norm not in norms:
        raise _fail(source, f"{path}.norm", f"{name} supports "
                    f"{', '.join(n.value for n in norms)} (got {norm.value})")


def check_eps(eps: list[float], norm: Norm, source: str, path: str) -> None:
    """Budgets in range for ``norm`` (pixel space) and listed once each."""
    limit = 1.0 if norm is Norm.linf else 1000.0
    for j, e in enumerate(eps):
        if not 0 < e <= limit:
            raise _fail(source, f"{path}.eps[{j}]",
                        f"must be > 0 and <= {limit:g} for {norm.value} (got {e:g})")
    if len(set(eps)) != len(eps):
        raise _fail(source, f"{path}.eps", "lists the same value twice")


def build_component(factory: Any, params: dict[str, Any], what: str, source: str,
                    params_path: str) -> Any:
    """Bind ``params`` to ``factory``'s signature and build it, turning a bad parameter into a
    scenario error at ``params_path.<name>``."""
    try:
        check_params(factory, params, what)
        return factory(**params)
    except ParamError as e:
        sub = key_path(params_path, e.param) if e.param != "params" else params_path
        raise _fail(source, sub, e.message) from e
    except (TypeError, ValueError) as e:
        raise _fail(source, params_path, str(e)) from e


def validate_components(s: Scenario, source: str = "<scenario>") -> None:
    """Semantic checks that need the registries: names, parameters, ranges, references."""
    from .models.nets import DATA_ARGS

    t = s.target
    _check_component(MODELS, t.model, t.model_params, source, "target.model",
                     "target.model_params", exclude=DATA_ARGS)
    _check_component(DATASETS, t.dataset.name, t.dataset.options, source,
                     "target.dataset.name", "target.dataset.options")

    seen: set[str] = set()
    for i, d in enumerate(s.defenses):
        _check_component(DEFENSES, d.name, d.params, source, f"defenses[{i}].name",
                         f"defenses[{i}].params")
        if d.key in seen:
            raise _fail(source, f"defenses[{i}]", f"{d.key!r} appears twice; give one a "
                        "distinct 'label'")
        seen.add(d.key)

    seen = set()
    for i, a in enumerate(s.attacks):
        if a.suite is not None:
            _validate_suite(a, i, source)
        else:
            if str(a.name) in ATTACKS:
                check_serves(str(a.name), "classification", source, f"attacks[{i}].name")
            attack = _check_component(ATTACKS, str(a.name), a.params, source, f"attacks[{i}].name",
                                      f"attacks[{i}].params")
            check_norm(attack, str(a.name), a.norm, source, f"attacks[{i}]")
        check_eps(a.eps, a.norm, source, f"attacks[{i}]")
        if a.key in seen or a.key == WORST_CASE:
            raise _fail(source, f"attacks[{i}]", f"{a.key!r} is already used; give this "
                        "attack a distinct 'label'")
        seen.add(a.key)

    _validate_checks(s, source)
    _validate_gates(s, source)


def _validate_suite(a: AttackSpec, i: int, source: str) -> None:
    """A suite entry: a known suite, parameters that fit it, components that support the norm."""
    from .attacks.suites import SUITES

    suite = _check_component(SUITES, str(a.suite), a.params, source, f"attacks[{i}].suite",
                             f"attacks[{i}].params")
    for comp in suite.components(a.norm):
        try:
            attack = ATTACKS.create(comp.attack, **comp.params)
        except (RegistryError, ParamError) as e:  # a suite recipe that no longer fits
            raise _fail(source, f"attacks[{i}]", f"suite {a.suite!r} component "
                        f"{comp.label!r}: {e}") from e
        if a.norm not in attack.norms:
            raise _fail(source, f"attacks[{i}].norm", f"suite {a.suite!r} component "
                        f"{comp.label!r} ({comp.attack}) does not support {a.norm.value}")


def _validate_checks(s: Scenario, source: str) -> None:
    checks = s.evaluation.checks
    big = checks.large_eps
    limit = 1.0 if big.norm is Norm.linf else 1000.0
    if big.enabled and big.eps is not None and not 0 < big.eps <= limit:
        raise _fail(source, "evaluation.checks.large_eps.eps",
                    f"must be > 0 and <= {limit:g} for {big.norm.value} (got {big.eps:g})")
    more = checks.more_steps
    if more.enabled and more.attack is not None:
        keys = [a.key for a in s.attacks if a.suite is None]
        if more.attack not in keys:
            raise _fail(source, "evaluation.checks.more_steps.attack",
                        f"no attack {more.attack!r} in this scenario{suggest(more.attack, keys)}"
                        f" (attacks: {', '.join(keys)})")
        spec = next(a for a in s.attacks if a.suite is None and a.key == more.attack)
        cls = ATTACKS.get(str(spec.name))
        if cls.stronger_params(spec.params, more.factor, more.extra_restarts) is None:
            raise _fail(source, "evaluation.checks.more_steps.attack",
                        f"{spec.name} has no iteration or restart parameter to increase; name "
                        "an iterative attack such as pgd or apgd")


def _validate_gates(s: Scenario, source: str) -> None:
    attack_keys = [a.key for a in s.attacks] + [WORST_CASE]
    defense_keys = [d.key for d in s.defenses]
    all_eps = sorted({e for a in s.attacks for e in a.eps})
    for i, g in enumerate(s.gates):
        path = f"gates[{i}]"
        check_gate_rule(g, CLASSIFICATION_METRICS, source, path)
        if g.min is None and g.max is None and g.max_drop is None:
            raise _fail(source, path, "needs at least one of min, max or max_drop")
        if g.defense is not None and g.defense not in defense_keys:
            raise _fail(source, f"{path}.defense", f"no defense {g.defense!r} in this "
                        f"scenario{suggest(g.defense, defense_keys)} (defenses: "
                        f"{', '.join(defense_keys)})")
        if g.metric != "clean_accuracy":
            if g.attack is not None and g.attack not in attack_keys:
                raise _fail(source, f"{path}.attack", f"no attack {g.attack!r} in this "
                            f"scenario{suggest(g.attack, attack_keys)} (attacks: "
                            f"{', '.join(attack_keys)})")
            if g.eps is not None and not any(abs(g.eps - e) < 1e-9 for e in all_eps):
                raise _fail(source, f"{path}.eps", f"no attack runs at eps {format_eps(g.eps)}"
                            f" (scenario eps: {', '.join(format_eps(e) for e in all_eps)})")


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


def _model_at(loc: tuple[Any, ...], root: type[BaseModel] | None = None
              ) -> type[BaseModel] | None:
    """The pydantic model class found by following ``loc`` from ``root`` (default
    :class:`Scenario`; other tasks pass their own scenario model)."""
    cur: Any = root or Scenario
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


def _format_one(err: Any, root: type[BaseModel] | None = None) -> tuple[str, str]:
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


def _format_validation(e: ValidationError, source: str,
                       root: type[BaseModel] | None = None) -> str:
    """One ``file: path: message`` line per error; ``root`` is the scenario model that was
    validated (default :class:`Scenario`), used to list the allowed fields."""
    lines = []
    errors = sorted(e.errors(), key=lambda err: err["type"] != "extra_forbidden")
    for err in errors:
        path, msg = _format_one(err, root)
        line = f"{source}: {path}: {msg}"
        if line not in lines:
            lines.append(line)
    return "\n".join(lines)

