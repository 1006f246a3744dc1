"""Gate rules: parsed from the scenario echoed in a scorecard and validated against the
task's metrics; the one validator `arange validate` and `arange gate` share."""


from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..expr import format_eps, parse_number
from ..stats import (
    newcombe_interval,  # noqa: F401  (re-exported for callers of the gate API)
    )

log = logging.getLogger(__name__)
from .metrics import _RULE_KEYS, RULE_MODELS, GateError, Metric, task_metrics

# ---------------------------------------------------------------------------- rules

@dataclass(frozen=True)
class Rule:
    index: int
    metric: str
    selectors: dict[str, Any]
    min: float | None = None
    max: float | None = None
    max_drop: float | None = None
    label: str | None = None

    @property
    def name(self) -> str:
        if self.label:
            return self.label
        sel = ", ".join(f"{k}={_fmt_value(k, v)}" for k, v in self.selectors.items())
        return f"gates[{self.index}] {self.metric}" + (f" ({sel})" if sel else "")


def _fmt_value(key: str, value: Any) -> str:
    if key == "eps" and isinstance(value, (int, float)):
        return format_eps(float(value))
    return str(value)


def parse_rules(card: Mapping[str, Any], source: str = "<scorecard>") -> list[Rule]:
    """The gate rules echoed in a scorecard's provenance, checked against the task's metrics."""
    prov = card.get("provenance")
    scenario = prov.get("scenario") if isinstance(prov, Mapping) else None
    if not isinstance(scenario, Mapping):
        raise GateError(f"{source}: provenance.scenario is missing; cannot read the gates")
    raw = scenario.get("gates", [])
    return rules_from_list(raw, str(card.get("task", "classification")),
                           f"{source}: provenance.scenario.gates")


def rules_from_list(raw: Any, task: str, where: str) -> list[Rule]:
    """Validate a list of rule mappings (``where`` prefixes error paths)."""
    if not isinstance(raw, list):
        raise GateError(f"{where}: must be a list of rules (got {type(raw).__name__})")
    metrics = task_metrics(task, where)
    rules = []
    for i, item in enumerate(raw):
        path = f"{where}[{i}]"
        if not isinstance(item, Mapping):
            raise GateError(f"{path}: a rule must be a mapping with metric and bounds "
                            f"(got {type(item).__name__})")
        if task in RULE_MODELS:
            item = _model_rule(RULE_MODELS[task], item, path)
        rules.append(_rule(i, item, metrics, path))
    return rules


def _model_rule(model: Any, item: Mapping[str, Any], path: str) -> dict[str, Any]:
    from pydantic import ValidationError

    try:
        return dict(model.model_validate(dict(item)).model_dump())
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        msg = str(first["msg"]).removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            from ..registry import suggest
            allowed = list(model.model_fields)
            msg = f"unknown field {loc!r}{suggest(loc, allowed)} (allowed: {', '.join(allowed)})"
        raise GateError(f"{path}{'.' + loc if loc else ''}: {msg}") from e


def _key(key: Any) -> str:
    """A rule key for an error path: quoted, escaped and cut unless a plain name."""
    from ..core.safeio import short

    text = str(key)
    return text if text.isidentifier() and len(text) <= 64 else f"[{short(text, 40)}]"


def _bound(item: Mapping[str, Any], key: str, path: str) -> float | None:
    v = item.get(key)
    if v is None:
        return None
    try:
        x = parse_number(v)
    except ValueError as e:
        raise GateError(f"{path}.{key}: {e}") from e
    if not 0 <= x <= 1:
        raise GateError(f"{path}.{key}: rates are in [0, 1] (got {x:g})")
    return x


def _rule(index: int, item: Mapping[str, Any], metrics: dict[str, list[Metric]],
          path: str) -> Rule:
    from ..registry import suggest
    metric = item.get("metric")
    if not isinstance(metric, str):
        raise GateError(f"{path}.metric: missing; name one of {', '.join(metrics)}")
    if metric not in metrics:
        raise GateError(f"{path}.metric: unknown metric {metric!r}"
                        f"{suggest(metric, list(metrics))} (available: {', '.join(metrics)})")
    lo, hi, drop = (_bound(item, k, path) for k in ("min", "max", "max_drop"))
    if lo is None and hi is None and drop is None:
        raise GateError(f"{path}: needs at least one of min, max or max_drop")
    if lo is not None and hi is not None and lo > hi:
        raise GateError(f"{path}: min {lo:g} is above max {hi:g}; no value can pass")
    name = item.get("name")
    if name is not None and not isinstance(name, str):
        raise GateError(f"{path}.name: must be text (got {name!r})")
    selectors = {k: v for k, v in item.items() if k not in _RULE_KEYS and v is not None}
    rule = Rule(index, metric, selectors, lo, hi, drop, name)
    m = resolve_metric(rule, metrics[metric], path)
    if drop is not None and not m.testable:
        raise GateError(f"{path}.max_drop: {metric} is not a rate and has no regression test; "
                        "use min or max")
    routed = {k for k, _ in m.route}
    for key in selectors:
        if key not in routed and key not in m.selectors:
            allowed = sorted(set(m.selectors) | routed)
            raise GateError(f"{path}.{_key(key)}: {metric} ({m.table}) cannot be selected by "
                            f"{key!r}{suggest(key, allowed)} (selectors: "
                            f"{', '.join(allowed) or 'none'}); remove it")
    return rule


def resolve_metric(rule: Rule, candidates: Sequence[Metric], path: str = "<rule>") -> Metric:
    for m in candidates:
        if m.routes(rule.selectors):
            return m
    raise GateError(f"{path}: no table holds {rule.metric} for "
                    f"{', '.join(f'{k}={v}' for k, v in rule.selectors.items())}")


