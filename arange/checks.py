"""Evaluation-validity checks: signs that a robustness number reflects a weak or broken
evaluation rather than a robust model (Carlini et al. 2019, "On Evaluating Adversarial
Robustness"; AutoAttack's checks). Each returns a :class:`Check` with pass/warn/fail/skip and a
one-line explanation a reviewer can act on.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .scorecard import Check, ResultRow

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
        for a, b in zip(rs, rs[1:], strict=False):
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
                    lambda r: r.kind == "white-box" and _iterative(r),
                    lambda r: r.kind == "white-box" and not _iterative(r),
                    "iterative vs single-step white-box attacks",
                    "the iterative attack is weaker than one gradient step, a sign of gradient "
                    "masking or a too-small step size")


def check_whitebox_vs_weaker(rows: list[ResultRow]) -> Check:
    return _compare(rows, "whitebox_vs_blackbox",
                    lambda r: r.kind == "white-box" and _iterative(r),
                    lambda r: r.kind in ("black-box", "noise", "transfer"),
                    "white-box vs black-box/transfer/noise attacks",
                    "a white-box attack should never lose to a weaker threat model; its "
                    "gradients are likely masked")


def _iterative(r: ResultRow) -> bool:
    from .registry import ATTACKS
    return bool(getattr(ATTACKS.get(r.attack_name), "iterative", False))


ROW_CHECKS: list[RowCheck] = [check_budget, check_monotonic_eps, check_iterative_vs_single_step,
                              check_whitebox_vs_weaker]


def run_row_checks(rows: list[ResultRow]) -> list[Check]:
    return [fn(rows) for fn in ROW_CHECKS]


# ---------------------------------------------------------------------------- model probes

def probe_model(model: nn.Module, x: torch.Tensor, y: torch.Tensor, defense: str,
                was_training: bool) -> list[Check]:
    """Checks on the target itself, run on a small batch before any attack."""
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
    if not torch.allclose(out1, out2, atol=1e-5, rtol=1e-4):
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
    if nonfinite or zero > n // 10:
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
