"""The ``classification`` scenario: a target classifier, its defenses, the attacks, the
validity checks and the gates; validated before any compute, with the errors of
:mod:`arange.core.scenario`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Final, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from arange.core.norms import Norm
from arange.core.safeio import short
from arange.core.scenario import (
    AttackSpecBase,
    Label,
    Normalisation,
    OptionalNumber,
    ScenarioBase,
    Strict,
    check_attack,
    check_choice,
    check_component,
    check_eps,
    check_gate_rule,
    check_labels,
    check_rule_eps,
    fail,
    format_validation,
    relative_root,
)
from arange.errors import ParamError, RegistryError, ScenarioError
from arange.registry import ATTACKS, DATASETS, DEFENSES, MODELS, suggest

TASK: Final = "classification"
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth")
# Metrics a classification gate may name (the gates issue evaluates them).
CLASSIFICATION_METRICS = ("robust_accuracy", "clean_accuracy", "attack_success_rate")
WORST_CASE = "worst_case"



class Training(Strict):
    """The zoo recipe used when ``weights: zoo``."""

    epochs: int = Field(12, ge=1, le=1000)
    batch_size: int = Field(64, ge=1, le=65536)
    lr: float = Field(0.05, gt=0, le=10)
    weight_decay: float = Field(5e-4, ge=0, le=1)
    shift: int = Field(2, ge=0, le=16)


class DatasetSpec(Strict):
    name: str
    split: Literal["train", "test"] = "test"
    options: dict[str, Any] = Field(default_factory=dict)


class Preprocessing(Normalisation):
    """What the model expects, applied by arange: ``resize`` (shorter side) and ``crop``
    (centre, square) when the data are loaded; ``scale`` (the model's value range: 1 for
    [0, 1], 255 for [0, 255]), ``channels`` order and ``mean`` / ``std`` inside the model
    wrapper. Budgets (eps) are measured on the [0, 1] image after resize and crop: the image
    the model sees."""

    resize: int | None = Field(None, ge=8, le=4096)
    crop: int | None = Field(None, ge=8, le=4096)

    @model_validator(mode="after")
    def _sizes(self) -> Preprocessing:
        if self.resize is not None and self.crop is not None and self.crop > self.resize:
            raise ValueError(f"crop ({self.crop}) must be <= resize ({self.resize})")
        return self


class Target(Strict):
    # a registry name, or FORMAT:REF (torchvision:, timm:, onnx:, torchscript:, export:,
    # python:PATH:CLASS); see arange.models.sources
    model: str
    model_params: dict[str, Any] = Field(default_factory=dict)
    weights: str = "zoo"
    preprocessing: Preprocessing | None = None
    # dataset class name -> the model's output index (a mapping, or a JSON file: {name: index}
    # or ImageNet's {"index": [wnid, name]})
    labels: dict[str, int] | str | None = None
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


class AttackSpec(AttackSpecBase):
    """One attack entry: a registered attack (``name``) or a suite of them (``suite``)."""

    suite: str | None = None  # e.g. "standard": a recipe run as a cascade (arange.attacks.suites)

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


class DefenseSpec(Strict):
    name: str
    label: Label | None = None
    params: dict[str, Any] = Field(default_factory=dict)

    @property
    def key(self) -> str:
        return self.label or self.name


def _defense_shorthand(v: Any) -> Any:
    return {"name": v} if isinstance(v, str) else v


class GateRule(Strict):
    """A rule on a scorecard metric; validated here, evaluated by ``arange gate``."""

    name: str | None = None
    metric: str
    defense: str | None = None
    attack: str | None = None
    eps: OptionalNumber = None
    min: OptionalNumber = None
    max: OptionalNumber = None
    max_drop: float | None = Field(None, ge=0, le=1)


class LargeEpsCheck(Strict):
    """A PGD run at a budget so large that accuracy must fall to chance. The default eps (0.5
    L-inf, or 0.5 * sqrt(pixels) L2) reaches the mid-grey image from every input, so at most one
    class can stay robust."""

    enabled: bool = True
    eps: OptionalNumber = None
    norm: Norm = Norm.linf
    steps: int = Field(20, ge=1, le=100_000)


class MoreStepsCheck(Strict):
    """Re-run one iterative attack with ``factor`` x the iterations and more restarts."""

    enabled: bool = True
    attack: str | None = None  # an attack label; default: the first iterative white-box one
    factor: int = Field(2, ge=2, le=100)
    extra_restarts: int = Field(1, ge=0, le=100)


class SuiteReferenceCheck(Strict):
    """Re-run one suite entry with the reference AutoAttack (pyautoattack, the optional
    ``arange[autoattack]`` extra) at the suite's budgets, on the first ``checks.samples`` samples
    the suite attacked; fails when arange's suite breaks significantly fewer of them. Off by
    default (the reference costs as much as the suite); ``arange run --suite-reference`` turns it
    on."""

    enabled: bool = False
    suite: str | None = None  # a suite entry's label; default: the first suite entry
    eps: OptionalNumber = None  # default: the suite's eps where it broke about half


def _enabled_shorthand(v: Any) -> Any:
    return {"enabled": v} if isinstance(v, bool) else v


class ChecksConfig(Strict):
    """Validity checks that need extra attack runs; they run on a subset of the samples."""

    samples: int = Field(128, ge=8, le=1_000_000)
    large_eps: LargeEpsCheck = Field(default_factory=LargeEpsCheck)
    more_steps: MoreStepsCheck = Field(default_factory=MoreStepsCheck)
    suite_reference: SuiteReferenceCheck = Field(default_factory=SuiteReferenceCheck)
    # ONNX targets: the least agreement between the attacked twin and the deployed runtime
    deployed_agreement: float = Field(0.99, ge=0, le=1)

    @field_validator("large_eps", "more_steps", "suite_reference", mode="before")
    @classmethod
    def _shorthand(cls, v: Any) -> Any:
        return _enabled_shorthand(v)


class Evaluation(Strict):
    cascade: bool = False  # attack only samples that earlier attacks left unbroken
    checks: ChecksConfig = Field(default_factory=ChecksConfig)
    # Run attacks (not scoring) under bfloat16 autocast; the 'autocast' check re-runs one
    # attack in fp32 on the check samples and flags a weaker bf16 attack.
    autocast: Literal["none", "bf16"] = "none"


class Scenario(ScenarioBase):
    task: Literal["classification"] = TASK
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

def load_classification_scenario(raw: dict[str, Any], source: str = "<scenario>",
                                 base_dir: Path | None = None) -> Scenario:
    """The ``classification`` task's loader: validate ``raw`` as a :class:`Scenario`."""
    try:
        scenario = Scenario.model_validate(raw)
    except ValidationError as e:
        raise ScenarioError(format_validation(e, source, Scenario)) from e
    scenario = _resolve_paths(scenario, base_dir, source)
    validate_components(scenario, source)
    return scenario


def _resolve_paths(s: Scenario, base_dir: Path | None, source: str) -> Scenario:
    """Make relative model, weight, label and dataset paths relative to the scenario file;
    check the model source and the weights."""
    from arange.models.sources import ModelSourceError, parse_model_source

    target = s.target
    updates: dict[str, Any] = {}
    try:
        src = parse_model_source(target.model, base_dir)
    except ModelSourceError as e:
        raise fail(source, "target.model", str(e)) from e
    if not src.registry:
        updates["model"] = src.spelling()
        explicit = "weights" in target.model_fields_set
        if src.weights_inside and explicit:
            raise fail(source, "target.weights", f"{target.model} holds its weights; remove "
                       "target.weights")
        if target.weights == "zoo" and explicit:
            raise fail(source, "target.weights", "the zoo trains registry models only; give "
                       f"a .safetensors, .pt or .pth state dict for {target.model}")
        if not src.weights_inside and not explicit:
            raise fail(source, "target.weights", f"{target.model} needs a weights file (a "
                       ".safetensors, .pt or .pth state dict)")
    elif target.preprocessing is not None:
        raise fail(source, "target.preprocessing", f"registry model {target.model!r} normalises "
                   "with its dataset's statistics; preprocessing applies to models you bring "
                   "(torchvision:, timm:, onnx:, torchscript:, export:, python:)")
    if target.weights not in ("zoo", "random"):
        p = Path(target.weights).expanduser()
        if p.suffix not in WEIGHT_SUFFIXES:
            raise fail(source, "target.weights",
                       f"use 'zoo', or a path ending in {', '.join(WEIGHT_SUFFIXES)} "
                       f"(got {target.weights!r})")
        if not p.is_absolute() and base_dir is not None:
            p = (base_dir / p).resolve()
        if not p.is_file():
            raise fail(source, "target.weights", f"file {target.weights!r} does not exist; "
                       "give a path relative to the scenario file, or use 'zoo' to train one")
        updates["weights"] = str(p)
    if isinstance(target.labels, str):
        p = Path(target.labels).expanduser()
        if not p.is_absolute() and base_dir is not None:
            p = (base_dir / p).resolve()
        if not p.is_file():
            raise fail(source, "target.labels", f"file {target.labels!r} does not exist; give "
                       "a JSON file relative to the scenario file, or a mapping")
        updates["labels"] = str(p)
    opts = relative_root(target.dataset.options, base_dir)
    if opts is not None:
        updates["dataset"] = target.dataset.model_copy(update={"options": opts})
    if not updates:
        return s
    return s.model_copy(update={"target": target.model_copy(update=updates)})


def validate_components(s: Scenario, source: str = "<scenario>") -> None:
    """Semantic checks that need the registries: names, parameters, ranges, references."""
    from arange.models.nets import DATA_ARGS
    from arange.models.sources import ModelSourceError, check_model_source, parse_model_source

    t = s.target
    src = parse_model_source(t.model)
    if src.registry:
        check_component(MODELS, t.model, t.model_params, source, "target.model",
                        "target.model_params", exclude=DATA_ARGS)
    else:
        try:
            check_model_source(src)
        except ModelSourceError as e:
            raise fail(source, "target.model", str(e)) from e
        if src.weights_inside and t.model_params:
            raise fail(source, "target.model_params", f"{t.model} is built already; remove "
                       "model_params")
    check_component(DATASETS, t.dataset.name, t.dataset.options, source,
                     "target.dataset.name", "target.dataset.options")

    for i, d in enumerate(s.defenses):
        check_component(DEFENSES, d.name, d.params, source, f"defenses[{i}].name",
                        f"defenses[{i}].params")
        if not src.registry and getattr(DEFENSES.get(d.name), "retrains_target", False):
            raise fail(source, f"defenses[{i}].name", f"{d.name} trains its own copy of a "
                       f"registry model, so it cannot defend {t.model}; bring your defended "
                       "model as another target instead")
    check_labels(s.defenses, "defenses", source)
    for i, a in enumerate(s.attacks):
        if a.suite is not None:
            _validate_suite(a, i, source)
            check_eps(a.eps, a.norm, source, f"attacks[{i}]")
        else:
            check_attack(a, TASK, source, f"attacks[{i}]")
    check_labels(s.attacks, "attacks", source, reserved=(WORST_CASE,))

    _validate_checks(s, source)
    _validate_gates(s, source)


def _validate_suite(a: AttackSpec, i: int, source: str) -> None:
    """A suite entry: a known suite, parameters that fit it, components that support the norm."""
    from arange.attacks.suites import SUITES

    suite = check_component(SUITES, str(a.suite), a.params, source, f"attacks[{i}].suite",
                             f"attacks[{i}].params")
    for comp in suite.components(a.norm):
        try:
            attack = ATTACKS.create(comp.attack, **comp.params)
        except (RegistryError, ParamError) as e:  # a suite recipe that no longer fits
            raise fail(source, f"attacks[{i}]", f"suite {a.suite!r} component "
                        f"{comp.label!r}: {e}") from e
        if a.norm not in attack.norms:
            raise fail(source, f"attacks[{i}].norm", f"suite {a.suite!r} component "
                        f"{comp.label!r} ({comp.attack}) does not support {a.norm.value}")


def _validate_checks(s: Scenario, source: str) -> None:
    checks = s.evaluation.checks
    big = checks.large_eps
    limit = 1.0 if big.norm is Norm.linf else 1000.0
    if big.enabled and big.eps is not None and not 0 < big.eps <= limit:
        raise fail(source, "evaluation.checks.large_eps.eps",
                    f"must be > 0 and <= {limit:g} for {big.norm.value} (got {big.eps:g})")
    more = checks.more_steps
    if more.enabled and more.attack is not None:
        keys = [a.key for a in s.attacks if a.suite is None]
        if more.attack not in keys:
            raise fail(source, "evaluation.checks.more_steps.attack",
                        f"no attack {more.attack!r} in this scenario{suggest(more.attack, keys)}"
                        f" (attacks: {', '.join(keys)})")
        spec = next(a for a in s.attacks if a.suite is None and a.key == more.attack)
        cls = ATTACKS.get(str(spec.name))
        if cls.stronger_params(spec.params, more.factor, more.extra_restarts) is None:
            raise fail(source, "evaluation.checks.more_steps.attack",
                        f"{spec.name} has no iteration or restart parameter to increase; name "
                        "an iterative attack such as pgd or apgd")
    _validate_suite_reference(s, source)


def _validate_suite_reference(s: Scenario, source: str) -> None:
    ref = s.evaluation.checks.suite_reference
    if not ref.enabled:
        return
    path = "evaluation.checks.suite_reference"
    suites = [a for a in s.attacks if a.suite is not None]
    if not suites:
        raise fail(source, path, "the scenario has no suite entry to check; add one to "
                   "attacks (- suite: standard) or turn the check off")
    if ref.suite is not None:
        keys = [a.key for a in suites]
        if ref.suite not in keys:
            raise fail(source, f"{path}.suite", f"no suite entry {ref.suite!r}"
                       f"{suggest(ref.suite, keys)} (suite entries: {', '.join(keys)})")
    spec = suite_reference_entry(s)
    assert spec is not None
    if spec.suite != "standard":
        raise fail(source, f"{path}.suite", f"the reference is AutoAttack's standard version; "
                   f"suite {spec.suite!r} has no reference to compare with")
    if ref.eps is not None and not any(math.isclose(ref.eps, e, rel_tol=1e-9)
                                       for e in spec.eps):
        raise fail(source, f"{path}.eps", f"{ref.eps:g} is not one of the suite's eps "
                   f"({', '.join(format(e, 'g') for e in spec.eps)})")
    from arange.attacks.adapters.autoattack import installed
    if not installed():
        raise fail(source, path, "needs the reference AutoAttack, which is not installed: "
                   'pip install "arange[autoattack]" (or turn the check off)')


def suite_reference_entry(s: Scenario) -> AttackSpec | None:
    """The suite entry that the suite-reference check re-runs."""
    ref = s.evaluation.checks.suite_reference
    return next((a for a in s.attacks if a.suite is not None
                 and (ref.suite is None or a.key == ref.suite)), None)


def _validate_gates(s: Scenario, source: str) -> None:
    attack_keys = [a.key for a in s.attacks] + [WORST_CASE]
    defense_keys = [d.key for d in s.defenses]
    for i, g in enumerate(s.gates):
        path = f"gates[{i}]"
        check_gate_rule(g, CLASSIFICATION_METRICS, source, path)
        check_choice(g.defense, defense_keys, "defense", source, f"{path}.defense")
        if g.metric != "clean_accuracy":
            check_choice(g.attack, attack_keys, "attack", source, f"{path}.attack")
            check_rule_eps(g.eps, s.attacks, source, f"{path}.eps")
