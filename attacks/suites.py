"""Attack suites: a named recipe of attacks run as one cascade over still-robust samples.

A scenario names a suite as one attack entry::

    attacks:
      - suite: standard
        eps: [4/255, 8/255]
        params: {n_queries: 1000}

The runner expands the suite into one job per component attack. Each component attacks only the
samples that the components before it left unbroken, so each component's row is cumulative, and
the suite's own row is the per-sample worst case over its components. Every component goes
through the runner's budget enforcement like any other attack.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from arange.registry import Registry
from arange.threat import Norm

from .base import check


@dataclass(frozen=True)
class Component:
    label: str                  # the row label inside the suite, e.g. "apgd-ce"
    attack: str                 # the registered attack
    params: dict[str, Any] = field(default_factory=dict)


class Suite:
    """A recipe: parameters at construction, components per norm."""

    def components(self, norm: Norm) -> list[Component]:
        raise NotImplementedError

    def params(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}


SUITES: Registry[type[Suite]] = Registry("suite")
register_suite = SUITES.register

STANDARD_COMPONENTS = ("apgd-ce", "apgd-t", "fab-t", "square")


@register_suite("standard", description="The AutoAttack recipe (Croce & Hein 2020): APGD-CE, "
                "APGD-T (targeted DLR), FAB-T and Square as a cascade over still-robust samples")
class StandardSuite(Suite):
    """APGD-CE, then APGD-T, FAB-T and Square on what is left (AutoAttack's 'standard' version).

    Every component is native, Square included for both norms.
    """

    def __init__(self, steps: int = 100, restarts: int = 1, n_target_classes: int = 9,
                 fab_steps: int = 100, n_queries: int = 5000,
                 components: list[str] | None = None):
        check("steps", isinstance(steps, int) and 1 <= steps <= 100_000,
              f"must be an integer in [1, 100000] (got {steps!r})")
        check("restarts", isinstance(restarts, int) and 1 <= restarts <= 1000,
              f"must be an integer in [1, 1000] (got {restarts!r})")
        check("n_target_classes", isinstance(n_target_classes, int) and n_target_classes >= 1,
              f"must be an integer >= 1 (got {n_target_classes!r})")
        check("fab_steps", isinstance(fab_steps, int) and 1 <= fab_steps <= 100_000,
              f"must be an integer in [1, 100000] (got {fab_steps!r})")
        check("n_queries", isinstance(n_queries, int) and 1 <= n_queries <= 1_000_000,
              f"must be an integer in [1, 1000000] (got {n_queries!r})")
        if components is not None:
            check("components", isinstance(components, list) and len(components) > 0,
                  f"must be a non-empty list of {', '.join(STANDARD_COMPONENTS)}")
            for c in components:
                check("components", c in STANDARD_COMPONENTS,
                      f"unknown component {c!r} (choose from {', '.join(STANDARD_COMPONENTS)})")
            check("components", len(set(components)) == len(components),
                  "lists a component twice")
        self.steps = steps
        self.restarts = restarts
        self.n_target_classes = n_target_classes
        self.fab_steps = fab_steps
        self.n_queries = n_queries
        self.components_ = list(components) if components else list(STANDARD_COMPONENTS)

    def params(self) -> dict[str, Any]:
        return {"steps": self.steps, "restarts": self.restarts,
                "n_target_classes": self.n_target_classes, "fab_steps": self.fab_steps,
                "n_queries": self.n_queries, "components": list(self.components_)}

    def components(self, norm: Norm) -> list[Component]:
        square = Component("square", "square", {"n_queries": self.n_queries})
        table = {
            "apgd-ce": Component("apgd-ce", "apgd", {"steps": self.steps,
                                                     "restarts": self.restarts, "loss": "ce"}),
            "apgd-t": Component("apgd-t", "apgd", {"steps": self.steps, "loss": "dlr-targeted",
                                                   "n_target_classes": self.n_target_classes}),
            "fab-t": Component("fab-t", "fab", {"steps": self.fab_steps, "targeted": True,
                                                "n_target_classes": self.n_target_classes}),
            "square": square,
        }
        order = [c for c in STANDARD_COMPONENTS if c in self.components_]
        return [table[c] for c in order]
