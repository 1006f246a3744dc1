"""The reference AutoAttack (Croce & Hein 2020) from ``pyautoattack``, the code of the
auto-attack repository on PyPI, as an attack like any other: the runner enforces its budget and
scores its output with the target.

It exists so that arange's own ``suite: standard`` can be checked against the reference on the
same samples (``evaluation.checks.suite_reference``, ``arange run --suite-reference``). Its
budget parameters carry the suite's names (``steps``, ``n_target_classes``, ``fab_steps``,
``n_queries``), so both run at the same budgets. ``pip install "arange[autoattack]"``.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any, ClassVar

import torch
from torch import nn

from arange.threat import Norm, ThreatModel

from ..base import AttackResult, Objective
from .base import LibraryAdapter, QueryCounter, library_seed, register_adapter, seed_from

VERSIONS = ("standard", "plus", "rand")


def version() -> str | None:
    """The installed pyautoattack's version (None without it)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version
    try:
        return dist_version("pyautoattack")
    except PackageNotFoundError:
        return None


def installed() -> bool:
    try:
        import pyautoattack  # noqa: F401
    except ImportError:
        return False
    return True


@register_adapter("autoattack.reference", "The reference AutoAttack (pyautoattack, Croce & "
                  "Hein's code): APGD-CE, APGD-T, FAB-T and Square at the suite's budgets")
class ReferenceAutoAttack(LibraryAdapter):
    library = "pyautoattack"
    iterative = True
    managed = frozenset({"model", "attacks", "device", "eps", "norm", "seed"})
    extra: ClassVar[dict[str, Any]] = {"steps": 100, "n_target_classes": 9, "fab_steps": 100,
                                       "n_queries": 5000}
    step_params = ("steps", "fab_steps", "n_queries")
    restart_params = ()
    test_params: ClassVar[dict[str, Any]] = {"steps": 3, "n_target_classes": 2, "fab_steps": 3,
                                             "n_queries": 10}

    @classmethod
    def wrapped(cls) -> Any:
        try:
            from pyautoattack import AutoAttack
        except ImportError as e:
            raise ImportError('the reference AutoAttack needs pyautoattack: '
                              'pip install "arange[autoattack]"') from e
        return AutoAttack

    @classmethod
    def signature(cls) -> inspect.Signature:
        # Spelled out rather than read from the wrapped class, so that scenarios validate and
        # ``arange list attacks`` works without the optional package.
        kw = inspect.Parameter.KEYWORD_ONLY
        return inspect.Signature([inspect.Parameter("version", kw, default="standard")] + [
            inspect.Parameter(k, kw, default=v) for k, v in cls.extra.items()])

    def validate(self) -> None:
        if self.config["version"] not in VERSIONS:
            raise ValueError(f"argument version must be one of {', '.join(VERSIONS)} "
                             f"(got {self.config['version']!r})")
        if self.config["n_target_classes"] < 1:
            raise ValueError("argument n_target_classes must be >= 1")

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
            objective: Objective, generator: torch.Generator | None = None) -> AttackResult:
        self._classification_only(objective)
        with torch.no_grad():
            classes = int(model(x[:1]).shape[1])
        c = self.config
        target = QueryCounter(model, x.dtype)
        seed = seed_from(generator)
        with library_seed(seed, x.device):
            aa = self.wrapped()(target, norm="Linf" if threat.norm is Norm.linf else "L2",
                                eps=threat.eps, version=c["version"], device=x.device, seed=seed)
            aa.verbose = False
            for a in (aa.apgd, aa.apgd_targeted, aa.fab):
                a.n_iter = c["steps"] if a is not aa.fab else c["fab_steps"]
            targets = max(1, min(c["n_target_classes"], classes - 1))
            aa.apgd_targeted.n_target_classes = aa.fab.n_target_classes = targets
            aa.square.n_queries = c["n_queries"]
            quiet = logging.getLogger("auto-attack")
            level = quiet.level
            quiet.setLevel(logging.WARNING)
            try:
                x_adv, _ = aa.run_standard_evaluation(x.detach().clone(), y.detach().clone(),
                                                      batch_size=int(x.shape[0]))
            finally:
                quiet.setLevel(level)
        return AttackResult(x_adv.to(device=x.device, dtype=x.dtype).detach())
