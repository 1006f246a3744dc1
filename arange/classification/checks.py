"""Evaluation-validity checks: signs that a robustness number reflects a weak or broken
evaluation rather than a robust model (Carlini et al. 2019, "On Evaluating Adversarial
Robustness"; AutoAttack's checks). Each returns a :class:`Check` with pass/warn/fail/skip and a
one-line explanation a reviewer can act on.
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from arange.core.scorecard import Check, CheckStatus
from arange.expr import format_eps
from arange.stats import mcnemar_exact, mcnemar_exact_one_sided, wilson_interval
from arange.threat import Norm

from .scenario import AttackSpec, DefenseSpec, Scenario
from .scorecard import ResultRow

RowCheck = Callable[[list[ResultRow]], Check]


def _tolerance(n: int) -> float:
    """Differences up to one sample (or 0.5 points) are rounding, not evidence."""
    return max(1.0 / max(n, 1), 0.005)


def check_budget(rows: list[ResultRow]) -> Check:
    over = [r for r in rows if r.perturbation_max > r.eps * (1 + 1e-4) + 1e-6]
    if over:
        r = over[0]
        return Check(name="budget", status="fail",
                     message=f"{len(over)} result(s) evaluated perturbations beyond eps, e.g. "
                     f"{r.attack} at {r.eps_label}: {r.perturbation_max:.4g}",
                     details={"rows": [x.job_id for x in over]})
    proposed = [r for r in rows if r.budget_violations > 0]
    if proposed:
        names = sorted({f"{r.attack}@{r.eps_label}" for r in proposed})
        total = sum(r.budget_violations for r in proposed)
        return Check(name="budget", status="warn",
                     message=f"attacks proposed {total} example(s) outside the budget or bounds "
                     f"({', '.join(names[:4])}); the runner projected them before scoring",
                     details={"rows": [x.job_id for x in proposed]})
    return Check(name="budget", status="pass",
                 message="every evaluated adversarial example is inside its eps-ball and the "
                 "pixel bounds")


def check_monotonic_eps(rows: list[ResultRow]) -> Check:
    groups: dict[tuple[str, str, str], list[ResultRow]] = defaultdict(list)
    for r in rows:
        if not r.cumulative:
            groups[(r.defense, r.attack, r.norm)].append(r)
    bad = []
    for (defense, attack, _), rs in groups.items():
        rs.sort(key=lambda r: r.eps)
        for a, b in itertools.pairwise(rs):
            if b.robust_accuracy > a.robust_accuracy + _tolerance(a.n):
                bad.append(f"{attack} on {defense}: {a.robust_accuracy:.3f} at {a.eps_label} < "
                           f"{b.robust_accuracy:.3f} at {b.eps_label}")
    if not any(len(v) > 1 for v in groups.values()):
        return Check(name="monotonic_eps", status="skip",
                     message="no attack runs at more than one eps")
    if bad:
        return Check(name="monotonic_eps", status="fail",
                     message="robust accuracy rises with a larger budget, so the attack is not "
                     "finding adversarial examples it should: " + "; ".join(bad[:3]),
                     details={"violations": bad})
    return Check(name="monotonic_eps", status="pass",
                 message="robust accuracy never rises as eps grows")


def _compare(rows: list[ResultRow], name: str, strong: Callable[[ResultRow], bool],
             weak: Callable[[ResultRow], bool], what: str, fix: str) -> Check:
    by_cell: dict[tuple[str, str, float], list[ResultRow]] = defaultdict(list)
    for r in rows:
        if not r.cumulative:
            by_cell[(r.defense, r.norm, round(r.eps, 9))].append(r)
    compared, bad = 0, []
    for (defense, _, _), rs in by_cell.items():
        for s in (r for r in rs if strong(r)):
            for w in (r for r in rs if weak(r)):
                compared += 1
                if s.robust_accuracy > w.robust_accuracy + _tolerance(s.n):
                    bad.append(f"{s.attack} {s.robust_accuracy:.3f} > {w.attack} "
                               f"{w.robust_accuracy:.3f} at {s.eps_label} on {defense}")
    if not compared:
        return Check(name=name, status="skip", message=f"no {what} pair at the same eps")
    if bad:
        return Check(name=name, status="fail", message=f"{'; '.join(bad[:3])}: {fix}",
                     details={"violations": bad})
    return Check(name=name, status="pass", message=f"{what}: the stronger attack is never weaker "
                 f"({compared} comparison(s))")


def check_iterative_vs_single_step(rows: list[ResultRow]) -> Check:
    return _compare(rows, "iterative_vs_single_step",
                    lambda r: r.kind == "white-box" and _iterative(r) and not _minimal(r),
                    lambda r: r.kind == "white-box" and not _iterative(r),
                    "iterative vs single-step white-box attacks",
                    "the iterative attack is weaker than one gradient step, a sign of gradient "
                    "masking or a too-small step size")


def check_whitebox_vs_weaker(rows: list[ResultRow]) -> Check:
    return _compare(rows, "whitebox_vs_blackbox",
                    lambda r: r.kind == "white-box" and _iterative(r) and not _minimal(r),
                    lambda r: r.kind in ("black-box", "noise", "transfer"),
                    "white-box vs black-box/transfer/noise attacks",
                    "a white-box attack should never lose to a weaker threat model; its "
                    "gradients are likely masked")


def _minimal(r: ResultRow) -> bool:
    """Minimal-norm attacks (DeepFool, C&W, FMN) do not optimise within eps; projected onto a
    small ball they can lose to a one-step attack without any gradient masking."""
    from arange.registry import ATTACKS
    if r.attack_name.startswith("suite:") or r.attack_name not in ATTACKS:
        return False
    return bool(getattr(ATTACKS.get(r.attack_name), "minimal_norm", False))


def _iterative(r: ResultRow) -> bool:
    from arange.registry import ATTACKS
    if r.attack_name.startswith("suite:"):
        return True
    if r.attack_name not in ATTACKS:
        return False
    return bool(getattr(ATTACKS.get(r.attack_name), "iterative", False))


ROW_CHECKS: list[RowCheck] = [check_budget, check_monotonic_eps, check_iterative_vs_single_step,
                              check_whitebox_vs_weaker]


def check_deployed(rows: list[ResultRow], clean: dict[str, tuple[int, int]], minimum: float
                   ) -> Check:
    """The attacked twin (converted from the deployed file) and the deployed runtime agree on
    at least ``minimum`` of the clean samples (``clean``: defense -> (agreeing, n)) and of every
    row's attacked samples. The runtime's verdicts count either way; disagreement means the
    attacks aimed at something other than what is deployed, so they may understate the risk."""
    worst: list[tuple[float, str]] = [(k / n, f"clean ({d})") for d, (k, n) in clean.items()
                                      if n]
    worst += [(r.deployed_agreement, f"{r.attack} at {r.eps_label} ({r.defense})")
              for r in rows if r.deployed_agreement is not None]
    if not worst:
        return Check(name="deployed_runtime", status="skip", message="nothing was scored")
    low = sorted(w for w in worst if w[0] < minimum)
    details = {"agreement": {what: round(v, 6) for v, what in worst}, "minimum": minimum}
    if low:
        return Check(name="deployed_runtime", status="fail", details=details,
                     message=f"the attacked twin and the deployed runtime disagree: agreement "
                     f"{low[0][0]:.3f} on {low[0][1]} (minimum {minimum:g}); the converted "
                     "model is not what is deployed, so these attacks may understate the risk")
    return Check(name="deployed_runtime", status="pass", details=details,
                 message=f"the attacked twin and the deployed runtime agree on at least "
                 f"{min(w[0] for w in worst):.3f} of the samples (minimum {minimum:g}); "
                 "every verdict is the runtime's")


def check_above_chance(clean: list[Any], num_classes: int) -> Check:
    """A brought model is clearly better than chance on clean data; at chance, its declared
    preprocessing (size, mean/std, value range, channel order) or label map is probably not
    the one it was trained with, and no robustness number means anything."""
    chance = 1.0 / max(num_classes, 1)
    bad = [c for c in clean if c.accuracy_ci[0] <= chance]  # not significantly above chance
    if bad:
        c = bad[0]
        return Check(name="above_chance", status="fail",
                     message=f"clean accuracy {c.accuracy:.3f} ({c.defense}, 95% CI "
                     f"{c.accuracy_ci[0]:.3f}-{c.accuracy_ci[1]:.3f}) is not above chance "
                     f"({chance:.3f}): check target.preprocessing and target.labels against "
                     "how the model was trained")
    return Check(name="above_chance", status="pass",
                 message=f"clean accuracy is above chance ({chance:.3f}) for every defense")


def run_row_checks(rows: list[ResultRow]) -> list[Check]:
    return [fn(rows) for fn in ROW_CHECKS]


def mark_discredited(rows: list[ResultRow], checks: list[Check]) -> None:
    """Mark the ordinary white-box rows of a defense whose ``gradients``, ``large_eps`` or
    ``outputs`` check failed as unreliable: those checks say gradient attacks cannot be trusted
    on it (adaptive rows are left alone; they exist for exactly that case). A failed
    ``suite_reference`` check marks the checked suite's rows."""
    why = {"gradients": "input gradients are masked on this target (the gradients check "
                        "failed), so gradient attacks understate the risk",
           LARGE_EPS: "even an absurd budget does not move this target (the large_eps check "
                      "failed), a sign of masked gradients",
           "outputs": "the target outputs NaN or Inf (the outputs check failed)"}
    for c in checks:
        base, _, rest = c.name.partition(" (")
        defense = rest[:-1] if rest else "none"
        if c.status == "fail" and base == SUITE_REFERENCE:
            suite = str(c.details.get("suite", ""))
            for r in rows:
                if r.defense == defense and (r.attack == suite or r.attack.startswith(
                        f"{suite}/")) and r.unreliable is None:
                    r.unreliable = ("the reference AutoAttack broke significantly more samples "
                                    "than this suite (the suite_reference check failed)")
            continue
        if c.status != "fail" or base not in why:
            continue
        for r in rows:
            if r.defense == defense and (base == "outputs" or (
                    r.kind == "white-box" and not r.adaptive)) and r.unreliable is None:
                r.unreliable = why[base]


def check_adaptive(rows: list[ResultRow], robust: dict[str, list[bool]]) -> list[Check]:
    """Compare each ordinary row with its adaptive twin (BPDA/EOT) on the same samples.

    When the adaptive attack breaks significantly more samples (exact one-sided McNemar,
    p < 0.05), the ordinary row overstates robustness: it is marked ``unreliable`` and the
    check fails. ``robust`` maps job ids to per-sample robust flags.
    """

    twins = {(r.defense, r.attack, r.norm, round(r.eps, 9)): r for r in rows if not r.adaptive}
    by_defense: dict[str, list[tuple[ResultRow, ResultRow, float]]] = defaultdict(list)
    for a in (r for r in rows if r.adaptive):
        naive = twins.get((a.defense, a.adapts or "", a.norm, round(a.eps, 9)))
        if naive is None or naive.job_id not in robust or a.job_id not in robust:
            continue
        pairs = list(zip(robust[naive.job_id], robust[a.job_id], strict=True))
        lost = sum(1 for n_ok, a_ok in pairs if n_ok and not a_ok)
        gained = sum(1 for n_ok, a_ok in pairs if a_ok and not n_ok)
        by_defense[a.defense].append((naive, a, mcnemar_exact_one_sided(lost, gained)))
    checks = []
    for defense, items in by_defense.items():
        bad = [(n, a, p) for n, a, p in items if p < 0.05]
        for n, a, p in bad:
            n.unreliable = (f"the adaptive attack {a.attack} brings robust accuracy from "
                            f"{n.robust_accuracy:.3f} to {a.robust_accuracy:.3f} (McNemar "
                            f"p={p:.2g}); use the adaptive row")
        details = {"pairs": [{"row": n.job_id, "adaptive_row": a.job_id,
                              "robust_accuracy": n.robust_accuracy,
                              "adaptive_robust_accuracy": a.robust_accuracy, "p_value": p}
                             for n, a, p in items]}
        if bad:
            shown = "; ".join(f"{n.attack} at {n.eps_label}: {n.robust_accuracy:.3f} -> "
                              f"{a.robust_accuracy:.3f} under {a.attack}" for n, a, _ in bad[:3])
            checks.append(Check(
                name=f"adaptive{_suffix(defense)}", status="fail",
                message=f"{len(bad)} of {len(items)} non-adaptive row(s) overstate robustness "
                f"({shown}); they are marked unreliable: the defense masks gradients or relies "
                "on randomness, so only the adaptive (BPDA/EOT) rows count", details=details))
        else:
            checks.append(Check(
                name=f"adaptive{_suffix(defense)}", status="pass",
                message=f"adaptive attacks (BPDA/EOT) break no significantly more samples than "
                f"the ordinary ones ({len(items)} comparison(s))", details=details))
    return checks


# ---------------------------------------------------------------------------- model probes

def probe_model(model: nn.Module, x: torch.Tensor, y: torch.Tensor, defense: str,
                was_training: bool, adaptive_method: str | None = None) -> list[Check]:
    """Checks on the target itself, run on a small batch before any attack.

    ``adaptive_method`` is what the defense declared (``"bpda"``, ``"eot"``, both, or None):
    declared randomness and masked gradients are expected, and the runner adds adaptive rows
    for them, so the checks say so instead of warning that nobody handled them."""
    declared_random = adaptive_method is not None and "eot" in adaptive_method
    declared_masked = adaptive_method is not None and "bpda" in adaptive_method
    suffix = f" ({defense})" if defense != "none" else ""
    checks: list[Check] = []
    if was_training:
        checks.append(Check(name=f"train_mode{suffix}", status="warn",
                            message="the model was handed over in train mode; arange switched "
                            "it to eval mode for the evaluation"))
    else:
        checks.append(Check(name=f"train_mode{suffix}", status="pass",
                            message="the model is evaluated in eval mode"))
    with torch.no_grad():
        out1, out2 = model(x), model(x)
    broken = int((~torch.isfinite(out1.flatten(1))).any(dim=1).sum())
    if broken:
        checks.append(Check(name=f"outputs{suffix}", status="fail",
                            message=f"the target outputs NaN or Inf on {broken} of "
                            f"{x.shape[0]} samples; no accuracy computed from it can be "
                            "trusted (broken weights or an overflow in the model)",
                            details={"nonfinite_samples": broken}))
    same = torch.allclose(out1, out2, atol=1e-5, rtol=1e-4, equal_nan=True)
    if not same and declared_random:
        checks.append(Check(name=f"randomness{suffix}", status="pass",
                            message="the defense is randomised, as it declares; its adaptive "
                            "rows attack the expectation over its randomness (EOT)",
                            details={"max_abs_diff": float((out1 - out2).abs().max())}))
    elif not same:
        checks.append(Check(name=f"randomness{suffix}", status="warn",
                            message="the target's outputs change between identical calls; "
                            "attacks need expectation over transformation (EOT)",
                            details={"max_abs_diff": float((out1 - out2).abs().max())}))
    else:
        checks.append(Check(name=f"randomness{suffix}", status="pass",
                            message="the target is deterministic"))
    sums = out1.sum(dim=1)
    if bool(((out1 >= 0) & (out1 <= 1)).all()) and bool(torch.allclose(sums, torch.ones_like(sums),
                                                                         atol=1e-3)):
        checks.append(Check(name=f"logits{suffix}", status="warn",
                            message="the model outputs probabilities, not logits; cross-entropy "
                            "on them saturates and weakens gradient attacks"))
    else:
        checks.append(Check(name=f"logits{suffix}", status="pass",
                            message="the model outputs logits"))
    xg = x.clone().requires_grad_(True)
    try:
        loss = F.cross_entropy(model(xg), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, xg)
    except RuntimeError as e:
        checks.append(Check(name=f"gradients{suffix}", status="fail",
                            message=f"input gradients cannot be computed ({e}); gradient attacks "
                            "cannot work on this target"))
        return checks
    flat = grad.flatten(1)
    nonfinite = int((~torch.isfinite(flat)).any(dim=1).sum())
    zero = int((flat.abs().amax(dim=1) == 0).sum())
    n = x.shape[0]
    if (nonfinite or zero > n // 10) and declared_masked:
        checks.append(Check(name=f"gradients{suffix}", status="fail",
                            message=f"{zero} of {n} samples have zero and {nonfinite} NaN/Inf "
                            "input gradients: the defense is not differentiable, so its "
                            "non-adaptive gradient rows understate the risk; read its BPDA "
                            "rows instead", details={"zero": zero, "nonfinite": nonfinite}))
    elif nonfinite or zero > n // 10:
        checks.append(Check(name=f"gradients{suffix}", status="fail",
                            message=f"{zero} of {n} samples have zero and {nonfinite} NaN/Inf "
                            "input gradients: gradients are masked, so gradient attacks "
                            "understate the risk", details={"zero": zero, "nonfinite": nonfinite}))
    elif zero:
        checks.append(Check(name=f"gradients{suffix}", status="warn",
                            message=f"{zero} of {n} samples have zero input gradients",
                            details={"zero": zero}))
    else:
        checks.append(Check(name=f"gradients{suffix}", status="pass",
                            message=f"input gradients are finite and non-zero on {n} samples"))
    return checks


def worst(statuses: Iterable[str]) -> str:
    order = {"fail": 3, "warn": 2, "pass": 1, "skip": 0}
    return max(statuses, key=lambda s: order[s], default="skip")


# ---------------------------------------------------------------------------- extra attack runs
#
# Two checks need attacks that the scenario did not ask for. The runner schedules them as extra
# jobs (labelled ``check-...``), runs them through the same budget-enforcing path as every other
# job on a subset of at most ``evaluation.checks.samples`` samples, and hands the records back to
# :func:`evaluate_extra_jobs`.

LARGE_EPS = "large_eps"
MORE_STEPS = "more_steps"
AUTOCAST = "autocast"
SUITE_REFERENCE = "suite_reference"


@dataclass(eq=False)
class ExtraJob:
    check: str                       # LARGE_EPS | MORE_STEPS | AUTOCAST | SUITE_REFERENCE
    defense: DefenseSpec
    attack: AttackSpec
    eps: float
    mask: torch.Tensor               # the samples to attack
    key_material: dict[str, Any]     # what the job's content key covers besides the run context
    # MORE_STEPS, AUTOCAST, SUITE_REFERENCE: the scenario job's (or suite's) per-sample outcome
    base_robust: torch.Tensor | None = None
    base_label: str = ""
    chance: float = 0.0  # LARGE_EPS: the largest class share among the samples (a robust
    # classifier could at best keep the samples of the class every image can be pushed into)


def _suffix(defense: str) -> str:
    return f" ({defense})" if defense != "none" else ""


def _first_n(mask: torch.Tensor, n: int) -> torch.Tensor:
    out = torch.zeros_like(mask)
    out[mask.nonzero().squeeze(1)[:n]] = True
    return out


def pick_more_steps_attack(s: Scenario) -> AttackSpec | None:
    """The attack the more-steps check re-runs: the configured one, else the first iterative
    white-box attack that has an iteration or restart parameter."""
    from arange.registry import ATTACKS

    cfg = s.evaluation.checks.more_steps
    for a in s.attacks:
        if a.suite is not None or a.name is None:
            continue
        if cfg.attack is not None:
            if a.key == cfg.attack:
                return a
            continue
        cls = ATTACKS.get(a.name)
        if cls.kind == "white-box" and cls.iterative and \
                cls.stronger_params(a.params, cfg.factor, cfg.extra_restarts) is not None:
            return a
    return None


def _balance(item: tuple[float, dict[str, Any]]) -> int:
    """How close to half of what it attacked an attack broke at one eps (such an eps says the
    most when the attack is compared with another)."""
    rec = item[1]
    att = torch.tensor(rec["attacked"], dtype=torch.bool)
    broken = int((att & ~torch.tensor(rec["robust"], dtype=torch.bool)).sum())
    return min(broken, int(att.sum()) - broken)


def plan_extra_jobs(s: Scenario,
                    records: list[tuple[DefenseSpec, AttackSpec, float, dict[str, Any]]],
                    labels: torch.Tensor, correct: dict[str, torch.Tensor],
                    pixels: int = 0,
                    suites: list[tuple[DefenseSpec, str, float, dict[str, Any]]] | None = None
                    ) -> list[ExtraJob]:
    """The extra jobs for the large-eps, more-steps, autocast and suite-reference checks, per
    defense.

    ``records`` are the scenario's finished jobs (defense, attack, eps, record); ``correct`` the
    clean-correct mask per defense; ``pixels`` the number of values per image (for the default
    L2 large eps); ``suites`` each suite's outcome as (defense, suite label, eps, record with
    the suite's ``attacked`` and cumulative ``robust``).
    """
    from arange.registry import ATTACKS

    cfg = s.evaluation.checks
    n = cfg.samples
    plan: list[ExtraJob] = []
    first = torch.zeros(labels.shape[0], dtype=torch.bool)
    first[:n] = True
    subset = labels[:n]
    chance = float(torch.bincount(subset).max()) / max(int(subset.numel()), 1) \
        if subset.numel() else 0.0
    for d in s.defenses:
        if cfg.large_eps.enabled:
            big = cfg.large_eps
            eps = big.eps if big.eps is not None else \
                0.5 if big.norm is Norm.linf else 0.5 * math.sqrt(pixels)
            # No random start: with a huge ball, random noise alone would hide zero gradients.
            spec = AttackSpec(name="pgd", label="check-large-eps", norm=big.norm, eps=[eps],
                              params={"steps": big.steps, "random_start": False})
            plan.append(ExtraJob(LARGE_EPS, d, spec, eps, first & correct[d.key],
                                 {"check": LARGE_EPS, "defense": d.model_dump(mode="json"),
                                  "attack": spec.model_dump(mode="json"), "samples": n},
                                 chance=chance))
        plan += _plan_suite_reference(s, d, suites or [], n)
        autocast = s.evaluation.autocast != "none"
        base = pick_more_steps_attack(s) if cfg.more_steps.enabled or autocast else None
        if base is None:
            continue
        more = cfg.more_steps
        stronger = ATTACKS.get(str(base.name)).stronger_params(base.params, more.factor,
                                                                more.extra_restarts)
        candidates = [(eps, rec) for dd, a, eps, rec in records
                      if dd.key == d.key and a.key == base.key]
        if not candidates:
            continue
        eps, rec = max(candidates, key=_balance)
        attacked = torch.tensor(rec["attacked"], dtype=torch.bool)
        mask = _first_n(attacked, n)
        if autocast:
            fp32 = base.model_copy(update={"label": f"check-fp32.{base.key}", "eps": [eps]})
            plan.append(ExtraJob(AUTOCAST, d, fp32, eps, mask,
                                 {"check": AUTOCAST, "defense": d.model_dump(mode="json"),
                                  "attack": fp32.model_dump(mode="json"), "base": rec["key"],
                                  "samples": n},
                                 base_robust=torch.tensor(rec["robust"], dtype=torch.bool),
                                 base_label=base.key))
        if not cfg.more_steps.enabled or stronger is None:
            continue
        spec = AttackSpec(name=base.name, label=f"check-more-steps.{base.key}", norm=base.norm,
                          eps=[eps], params=stronger)
        plan.append(ExtraJob(MORE_STEPS, d, spec, eps, mask,
                             {"check": MORE_STEPS, "defense": d.model_dump(mode="json"),
                              "attack": spec.model_dump(mode="json"), "base": rec["key"],
                              "samples": n},
                             base_robust=torch.tensor(rec["robust"], dtype=torch.bool),
                             base_label=base.key))
    return plan


def _plan_suite_reference(s: Scenario, d: DefenseSpec,
                          suites: list[tuple[DefenseSpec, str, float, dict[str, Any]]], n: int
                          ) -> list[ExtraJob]:
    """The reference AutoAttack on the first ``n`` samples the suite attacked, at the suite's
    budgets and one of its eps (the configured one, else where it broke about half)."""
    from arange.attacks.adapters.autoattack import version
    from arange.attacks.suites import SUITES

    from .scenario import suite_reference_entry

    cfg = s.evaluation.checks.suite_reference
    spec = suite_reference_entry(s)
    if not cfg.enabled or spec is None:
        return []
    candidates = [(eps, rec) for dd, label, eps, rec in suites
                  if dd.key == d.key and label == spec.key]
    if cfg.eps is not None:
        candidates = [(e, r) for e, r in candidates if math.isclose(e, cfg.eps, rel_tol=1e-9)]
    if not candidates:
        return []
    eps, rec = max(candidates, key=_balance)
    budgets = SUITES.create(str(spec.suite), **spec.params).params()
    params = {k: budgets[k] for k in ("steps", "n_target_classes", "fab_steps", "n_queries")}
    ref = AttackSpec(name="autoattack.reference", label=f"check-reference.{spec.key}",
                     norm=spec.norm, eps=[eps], params=params)
    return [ExtraJob(SUITE_REFERENCE, d, ref, eps,
                     _first_n(torch.tensor(rec["attacked"], dtype=torch.bool), n),
                     {"check": SUITE_REFERENCE, "defense": d.model_dump(mode="json"),
                      "attack": ref.model_dump(mode="json"), "base": rec["key"], "samples": n,
                      "pyautoattack": version()},
                     base_robust=torch.tensor(rec["robust"], dtype=torch.bool),
                     base_label=spec.key)]


def evaluate_extra_jobs(s: Scenario, done: list[tuple[ExtraJob, dict[str, Any]]]
                        ) -> list[Check]:
    """Checks from the extra jobs' records; ``skip`` entries for disabled checks."""
    cfg = s.evaluation.checks
    out: list[Check] = []
    if not cfg.large_eps.enabled:
        out.append(Check(name=LARGE_EPS, status="skip",
                         message="disabled in evaluation.checks.large_eps"))
    if not cfg.more_steps.enabled:
        out.append(Check(name=MORE_STEPS, status="skip",
                         message="disabled in evaluation.checks.more_steps"))
    elif not any(ej.check == MORE_STEPS for ej, _ in done):
        out.append(Check(name=MORE_STEPS, status="skip",
                         message="no iterative white-box attack with a steps or restarts "
                         "parameter to re-run"))
    if not cfg.suite_reference.enabled and any(a.suite is not None for a in s.attacks):
        out.append(Check(name=SUITE_REFERENCE, status="skip", message="off; arange run "
                         "--suite-reference (or evaluation.checks.suite_reference: true) re-runs "
                         "the suite's samples with the reference AutoAttack"))
    for ej, rec in done:
        robust = torch.tensor(rec["robust"], dtype=torch.bool)
        if ej.check == LARGE_EPS:
            out.append(check_large_eps(ej, robust))
        elif ej.check == SUITE_REFERENCE:
            out.append(check_suite_reference(ej, robust))
        elif ej.check == AUTOCAST:
            out.append(check_autocast(ej, robust))
        else:
            out.append(check_more_steps(ej, robust, rec.get("params", {})))
    return out


def check_autocast(ej: ExtraJob, robust: torch.Tensor) -> Check:
    """bf16 autocast must not weaken the attack: the same attack in fp32 on the same samples
    may not break significantly more (exact one-sided McNemar), and its robust accuracy must
    stay inside the bf16 row's 95% interval on those samples."""

    name = f"{AUTOCAST}{_suffix(ej.defense.key)}"
    mask = ej.mask
    assert ej.base_robust is not None
    n = int(mask.sum())
    if n == 0:
        return Check(name=name, status="skip", message="no samples to compare")
    bf16, fp32 = ej.base_robust[mask], robust[mask]
    k16, k32 = int(bf16.sum()), int(fp32.sum())
    lost = int((bf16 & ~fp32).sum())      # robust under bf16, broken in fp32
    gained = int((fp32 & ~bf16).sum())
    p = mcnemar_exact_one_sided(lost, gained)
    lo, hi = wilson_interval(k16, n)
    details = {"samples": n, "bf16_robust_accuracy": k16 / n, "fp32_robust_accuracy": k32 / n,
               "p_value": p, "bf16_ci": [lo, hi]}
    msg = (f"{ej.base_label} at {format_eps(ej.eps)} on {n} samples: robust accuracy "
           f"{k16 / n:.3f} with bf16 autocast vs {k32 / n:.3f} in fp32")
    if p < 0.05 or not lo <= k32 / n <= hi:
        return Check(name=name, status="fail", message=f"{msg} (p={p:.2g}): bf16 weakens the "
                     "attack, so the robust accuracies overstate robustness; set "
                     "evaluation.autocast: none", details=details)
    return Check(name=name, status="pass", message=f"{msg}: within the 95% interval, bf16 "
                 "does not weaken the attack", details=details)


def check_suite_reference(ej: ExtraJob, robust: torch.Tensor) -> Check:
    """arange's suite must be at least as strong as the reference AutoAttack on the same
    samples: it fails when the reference breaks significantly more of them (exact one-sided
    McNemar on the samples only one of the two broke), and warns when it breaks more within the
    noise."""
    name = f"{SUITE_REFERENCE}{_suffix(ej.defense.key)}"
    mask = ej.mask
    assert ej.base_robust is not None
    n = int(mask.sum())
    if n == 0:
        return Check(name=name, status="skip", message=f"{ej.base_label} left no sample to "
                     "re-attack")
    ours, ref = ej.base_robust[mask], robust[mask]
    only_ref = int((ours & ~ref).sum())      # arange's suite left it robust, the reference broke
    only_ours = int((ref & ~ours).sum())
    p = mcnemar_exact_one_sided(only_ref, only_ours)
    details = {"samples": n, "eps": ej.eps, "suite_robust_accuracy": int(ours.sum()) / n,
               "reference_robust_accuracy": int(ref.sum()) / n, "only_reference": only_ref,
               "only_suite": only_ours, "p_value": p, "params": ej.attack.params,
               "pyautoattack": ej.key_material.get("pyautoattack"), "suite": ej.base_label}
    msg = (f"{ej.base_label} at {format_eps(ej.eps)} on {n} samples: robust accuracy "
           f"{int(ours.sum()) / n:.3f} vs {int(ref.sum()) / n:.3f} under the reference "
           f"AutoAttack at the same budgets; {only_ref} broken only by the reference, "
           f"{only_ours} only by arange")
    if only_ref > only_ours and p < 0.05:
        return Check(name=name, status="fail", message=f"{msg} (p={p:.2g}): the suite is "
                     "weaker than the reference, so its robust accuracy overstates robustness",
                     details=details)
    if only_ref > only_ours:
        return Check(name=name, status="warn", message=f"{msg}: the reference broke more, "
                     f"within the noise (p={p:.2f})", details=details)
    return Check(name=name, status="pass", message=f"{msg}: at least as strong as the "
                 "reference", details=details)


def check_large_eps(ej: ExtraJob, robust: torch.Tensor) -> Check:
    """Accuracy under an absurd budget must fall to about chance."""
    name = f"{LARGE_EPS}{_suffix(ej.defense.key)}"
    labels_n = min(int(ej.key_material["samples"]), robust.shape[0])
    acc = int(robust[:labels_n].sum()) / labels_n if labels_n else 0.0
    budget = f"PGD at eps {format_eps(ej.eps)} ({ej.attack.norm.value})"
    bound = ej.chance
    details = {"robust_accuracy": acc, "n": labels_n, "eps": ej.eps,
               "norm": ej.attack.norm.value, "chance": bound}
    if acc <= bound + max(1.0 / max(labels_n, 1), 0.02):
        return Check(name=name, status="pass", message=f"{budget} drives accuracy to "
                     f"{acc:.1%} on {labels_n} samples (chance {bound:.0%}): attacks can reach "
                     "the model", details=details)
    status: CheckStatus = "warn" if acc <= 2 * bound else "fail"
    return Check(name=name, status=status, message=f"{budget} still leaves {acc:.1%} accuracy "
                 f"on {labels_n} samples (chance {bound:.0%}): even an absurd budget cannot move "
                 "this model, a sign of masked gradients; its robust accuracies are not "
                 "trustworthy", details=details)


def check_more_steps(ej: ExtraJob, robust: torch.Tensor, params: dict[str, Any]) -> Check:
    """More iterations and restarts must not change the attack's success beyond noise.

    Both runs attack the same samples, so they are compared pairwise: ``b`` samples broken only
    by the stronger run, ``c`` only by the configured one, and an exact sign test on them. A
    significant difference fails (more found: the attack had not converged; fewer: more
    compute made it weaker); a difference within the noise warns.
    """
    name = f"{MORE_STEPS}{_suffix(ej.defense.key)}"
    assert ej.base_robust is not None
    n = int(ej.mask.sum())
    if n == 0:
        return Check(name=name, status="skip", message=f"{ej.base_label} left no sample to "
                     "re-attack at any eps")
    base_broken = ej.mask & ~ej.base_robust
    more_broken = ej.mask & ~robust
    b = int((more_broken & ~base_broken).sum())
    c = int((base_broken & ~more_broken).sum())
    p0, p1 = int(base_broken.sum()) / n, int(more_broken.sum()) / n
    p_value = mcnemar_exact(b, c)
    what = (f"{ej.base_label} at {format_eps(ej.eps)} with {ej.attack.params} broke "
            f"{p1:.1%} of {n} samples vs {p0:.1%} as configured")
    details = {"n": n, "base_success": p0, "more_success": p1, "only_more": b, "only_base": c,
               "p_value": p_value, "eps": ej.eps, "params": params}
    if p0 == p1 == 0:
        return Check(name=name, status="warn", message=f"{what}: neither run broke a single "
                     "sample, which says nothing about convergence (masked gradients, or a "
                     "budget too small to matter); see the gradients and large_eps checks",
                     details=details)
    if abs(p1 - p0) <= _tolerance(n):
        return Check(name=name, status="pass", message=f"{what}: the attack has converged",
                     details=details)
    if p_value >= 0.05:
        return Check(name=name, status="warn", message=f"{what}: within noise (sign test "
                     f"p={p_value:.2f}), but not identical", details=details)
    if p1 > p0:
        return Check(name=name, status="fail", message=f"{what} (p={p_value:.2g}): the attack "
                     "had not converged, so the reported robust accuracy overstates robustness; "
                     "raise its steps or restarts", details=details)
    return Check(name=name, status="fail", message=f"{what} (p={p_value:.2g}): more compute "
                 "made the attack weaker, a sign of noisy or masked gradients", details=details)
