"""arange's ``suite: standard`` against the reference AutoAttack (pyautoattack, Croce & Hein's
code), torchattacks' and ART's AutoAttack: the same model weights, samples, norm and eps, one
table.

    python bench/suite_vs_autoattack.py --scenario scenarios/ci_smoke.yaml --norm linf --eps 8/255
    python bench/suite_vs_autoattack.py --scenario scenarios/defended_resnet.yaml \\
        --defense pgd_at --norm l2 --eps 0.5 --n 200
    python bench/suite_vs_autoattack.py --dry-run        # tiny budgets: checks the plumbing

arange runs the suite through ``arange.run`` (its budget enforcement, its per-sample outcomes in
samples.json); the peers attack the same model object the runner builds, on the samples it
scored, at AutoAttack's standard budgets (APGD-CE 100 steps, APGD-T 9 x 100, FAB-T 9 x 100,
Square 5000 queries; the suite's defaults), except where a peer's own AutoAttack ships other
budgets: "torchattacks" runs as shipped (10 steps per white-box attack), "torchattacks-100" at
AutoAttack's 100; "art" at ART's defaults, "art-standard" with one restart each. Each peer's
output is checked against the budget and re-scored by the model. Per-sample agreement with
arange: the samples one breaks and the other does not, both ways, with the exact two-sided
McNemar p-value. pyautoattack and torchattacks are benchmark-only: ``pip install "arange[bench]"``.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
DRY = {"steps": 3, "n_target_classes": 2, "fab_steps": 3, "n_queries": 20}


def scenario(args: argparse.Namespace) -> Any:
    from arange.core.scenario import load_scenario, scenario_from_dict

    base = load_scenario(args.scenario).model_dump(mode="json")
    base["attacks"] = [{"suite": "standard", "norm": args.norm, "eps": [args.eps],
                        "params": DRY if args.dry_run else {}}]
    base["defenses"] = [d for d in base["defenses"] if (d["label"] or d["name"]) ==
                        args.defense] or [{"name": "none"}]
    base["target"]["samples"] = args.n
    base["device"] = args.device
    base["gates"] = []
    base["evaluation"]["checks"] = {"large_eps": False, "more_steps": False}
    return scenario_from_dict(base, args.scenario, Path(args.scenario).parent)


class _TimesFromLog(logging.Handler):
    """pyautoattack logs 'robust accuracy after APGD-CE: 12.00% (total time 5.1 s)' after each
    attack: kept here as per-component seconds, to set beside arange's components."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.seconds: dict[str, float] = {}
        self._total = 0.0

    def emit(self, record: logging.LogRecord) -> None:
        m = re.match(r"robust accuracy after (\S+): .*\(total time ([0-9.]+) s\)",
                     record.getMessage())
        if m:
            total = float(m.group(2))
            self.seconds[m.group(1).lower()] = round(total - self._total, 1)
            self._total = total


_ReferenceTimes = _TimesFromLog()


def peers(names: list[str], model: torch.nn.Module, norm: str, eps: float, dry: bool,
          device: torch.device) -> dict[str, Any]:
    """name -> function (x, y) -> x_adv, for the peers that are installed."""
    out: dict[str, Any] = {}
    if "pyautoattack" in names:
        try:
            from pyautoattack import AutoAttack
        except ImportError:
            print('# pyautoattack not installed (pip install "arange[bench]"): skipped')
        else:
            aa = AutoAttack(model, norm="Linf" if norm == "linf" else "L2", eps=eps,
                            version="standard", device=device, seed=0)
            if dry:
                for a in (aa.apgd, aa.apgd_targeted, aa.fab):
                    a.n_iter = DRY["steps"]
                aa.apgd_targeted.n_target_classes = aa.fab.n_target_classes = 2
                aa.square.n_queries = DRY["n_queries"]
            aa.logger.addHandler(_ReferenceTimes)
            aa.logger.setLevel(logging.DEBUG)
            out["pyautoattack"] = lambda x, y: aa.run_standard_evaluation(x, y,
                                                                          batch_size=256)[0]
    # torchattacks' AutoAttack(version="standard") builds APGD, APGD-T and FAB-T at their own
    # default of 10 steps (not AutoAttack's 100; torchattacks issue #196): "torchattacks" is what
    # its users get, "torchattacks-100" sets the 100 steps, so time compares at equal budgets.
    for name in [n for n in names if n.startswith("torchattacks")]:
        try:
            import torchattacks
        except ImportError:
            print(f'# {name}: torchattacks not installed (pip install "arange[bench]"): skipped')
            continue
        ta = torchattacks.AutoAttack(model, norm="Linf" if norm == "linf" else "L2",
                                     eps=eps, version="standard", n_classes=10, seed=0)
        steps = DRY["steps"] if dry else (100 if name == "torchattacks-100" else None)
        for a in ta._autoattack.attacks:  # its MultiAttack
            if hasattr(a, "steps") and steps is not None:
                a.steps = steps
            if hasattr(a, "n_queries") and dry:
                a.n_queries = DRY["n_queries"]
        out[name] = lambda x, y, ta=ta: ta(x, y)
    # ART's AutoAttack through arange's adapter. "art": at ART's own defaults (APGD-CE and
    # APGD-DLR with 5 restarts, DeepFool, Square with 5 restarts): what an ART user gets.
    # "art-standard": one restart each, so APGD has AutoAttack's 100 steps and Square its 5,000
    # queries (ART's list has no targeted APGD or FAB; DeepFool stands in).
    art_budgets = {"art": {}, "art-standard": {"nb_random_init": 1, "square_restarts": 1}}
    for name in [n for n in names if n in art_budgets]:
        from arange.attacks import Misclassification
        from arange.attacks.adapters.art import ARTAutoAttack
        from arange.registry import ATTACKS
        from arange.threat import Norm, ThreatModel

        art = ATTACKS.create("art.autoattack",
                             **(ARTAutoAttack.test_params if dry else art_budgets[name]))
        threat = ThreatModel(Norm(norm), eps)
        out[name] = lambda x, y, art=art, threat=threat: art.run(
            model, x, y, threat, Misclassification(),
            torch.Generator(x.device).manual_seed(0)).x_adv
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scenario", default=str(ROOT / "scenarios" / "ci_smoke.yaml"))
    ap.add_argument("--defense", default="none", help="the defense label to attack")
    ap.add_argument("--norm", choices=["linf", "l2"], default="linf")
    ap.add_argument("--eps", default="8/255")
    ap.add_argument("--n", type=int, default=100, help="samples")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--peers", nargs="*", default=["pyautoattack", "torchattacks", "art"],
                    choices=["pyautoattack", "torchattacks", "torchattacks-100", "art",
                             "art-standard"])
    ap.add_argument("--dry-run", action="store_true", help="tiny budgets (plumbing check)")
    ap.add_argument("--json", help="also write the table as JSON here")
    ap.add_argument("--out", help="keep arange's run here (default: a temporary folder); "
                    "a second call with the same settings resumes it, so other peers can be "
                    "compared without re-running the suite")
    args = ap.parse_args()
    from arange.expr import parse_number
    args.eps = parse_number(args.eps)
    if args.dry_run:
        args.n = min(args.n, 16)

    import arange
    from arange.classification.runner import prepare
    from arange.stats import mcnemar_exact, wilson_interval
    from arange.threat import norms

    s = scenario(args)
    dev = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or tmp
        t0 = time.perf_counter()
        card = arange.run(s, out=out, progress=False)
        arange_s = time.perf_counter() - t0
        samples = json.loads((Path(out) / "samples.json").read_text())
    row = next(r for r in card.results if r.attack_name == "standard" or r.attack == "standard")
    ours = torch.tensor(samples["jobs"][row.job_id]["robust"], dtype=torch.bool)
    suite_s = row.seconds  # the suite row's time is the sum of its components'
    parts = [f"{r.attack} {r.seconds:.1f}s" for r in card.results
             if r.defense == row.defense and r is not row]

    p = prepare(s, dev, progress=False)  # the model object the runner scores, and its samples
    key = row.defense
    model = p.defended[key].model.eval()
    for q in model.parameters():
        q.requires_grad_(False)
    x, y = p.data.x.to(dev), p.data.y.to(dev)
    correct = p.correct[key].to(dev)
    assert p.target.weights_sha256 == card.provenance.weights_sha256
    n = len(y)
    header = (f"# {Path(args.scenario).name} defense={key} {args.norm} eps={row.eps_label} "
              f"n={n} device={args.device} torch {torch.__version__}"
              f"{' DRY RUN (tiny budgets)' if args.dry_run else ''}")
    print(header, flush=True)
    print(f"# arange suite: robust {int(ours.sum())}/{n}, {suite_s:.1f}s", flush=True)
    rows = [{"method": "arange suite: standard", "robust": int(ours.sum()), "n": n,
             "seconds": round(suite_s, 1), "only_arange": 0, "only_other": 0, "p": 1.0,
             "violations": row.budget_violations}]
    for name, fn in peers(args.peers, model, args.norm, args.eps, args.dry_run, dev).items():
        torch.manual_seed(0)
        t0 = time.perf_counter()
        adv = x.clone()
        adv[correct] = fn(x[correct], y[correct]).detach()
        seconds = time.perf_counter() - t0
        size = norms(adv - x, args.norm)
        over = int((size > args.eps * (1 + 1e-4) + 1e-6).sum())
        with torch.no_grad():
            theirs = (model(adv).argmax(1) == y) & correct
        theirs = theirs.cpu()
        only_arange = int((~ours & theirs).sum())   # arange broke it, the peer did not
        only_other = int((ours & ~theirs).sum())
        rows.append({"method": name, "robust": int(theirs.sum()), "n": n,
                     "seconds": round(seconds, 1), "only_arange": only_arange,
                     "only_other": only_other, "p": mcnemar_exact(only_arange, only_other),
                     "violations": over})
        # each peer as it finishes (a long run keeps what it has)
        print(f"# {name}: robust {int(theirs.sum())}/{n}, {seconds:.1f}s, only arange "
              f"{only_arange}, only {name} {only_other}", flush=True)
    print(f"{'method':<24} {'robust acc':>10} {'95% CI':>13} {'s':>7} {'only arange':>11} "
          f"{'only peer':>9} {'McNemar p':>9} {'over eps':>8}")
    for r in rows:
        lo, hi = wilson_interval(r["robust"], r["n"])
        print(f"{r['method']:<24} {r['robust'] / r['n']:>10.3f} {f'{lo:.3f}-{hi:.3f}':>13} "
              f"{r['seconds']:>7.1f} {r['only_arange']:>11} {r['only_other']:>9} "
              f"{r['p']:>9.3f} {r['violations']:>8}")
    print(f"# arange's components: {', '.join(parts)}; wall time including data, model and "
          f"scorecard: {arange_s:.1f}s")
    if _ReferenceTimes.seconds:
        print("# pyautoattack's components: " + ", ".join(
            f"{k} {v:.1f}s" for k, v in _ReferenceTimes.seconds.items()))
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"header": header, "rows": rows, "arange_components": parts,
             "pyautoattack_components": _ReferenceTimes.seconds}, indent=1))
    if any(r["violations"] for r in rows[1:]):
        print("# a peer returned examples beyond eps (counted above; its rate is not comparable)",
              file=sys.stderr)


if __name__ == "__main__":
    main()
