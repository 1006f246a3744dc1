"""Adversarial training cost: fast-AT vs PGD-AT on the same target, recipe, data and seed.

Builds (or finds cached) the adversarially trained models of a scenario's `pgd_at` and `fast_at`
defenses, then evaluates them next to the undefended model under PGD at the scenario's PGD
budgets, and prints each defense's training time (as recorded when it was built), the time
ratio to PGD-AT, its clean accuracy and its robust accuracy.

    python bench/adv_training.py [scenarios/defended_resnet.yaml] [--cache DIR] [--samples N]

``--cache DIR`` trains into a fresh cache so the times are measured now, on this machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("scenario", nargs="?", default="scenarios/defended_resnet.yaml")
    p.add_argument("--cache", help="model cache to use (default: $ARANGE_CACHE_DIR)")
    p.add_argument("--samples", type=int, default=200)
    args = p.parse_args()
    if args.cache:
        os.environ["ARANGE_CACHE_DIR"] = args.cache

    import torch

    import arange
    from arange.classification.runner import train_defenses
    from arange.core.scenario import load_scenario
    from arange.expr import format_eps

    s = load_scenario(args.scenario)
    at = [d for d in s.defenses if d.name in ("pgd_at", "fast_at")]
    if not at:
        raise SystemExit(f"{args.scenario} has no pgd_at or fast_at defense")
    built = train_defenses(s, only=[d.key for d in at])
    pgd = next((a for a in s.attacks if a.name == "pgd"), None)
    eps = list(pgd.eps) if pgd else [8 / 255]
    params = dict(pgd.params) if pgd else {"steps": 20}
    bench = s.model_dump(mode="json")
    bench.update(name="bench_adv_training", defenses=[{"name": "none"}] + [
        d.model_dump(mode="json") for d in at], gates=[],
        attacks=[{"name": "pgd", "eps": eps, "params": params}],
        evaluation={"checks": {"large_eps": False, "more_steps": False}})
    bench["target"]["samples"] = args.samples
    with tempfile.TemporaryDirectory() as out:
        card = arange.run(bench, out=out, progress=False)

    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, scenario {args.scenario}, {args.samples} samples, "
          f"PGD {params}")
    pgd_at = next((d.key for d in at if d.name == "pgd_at"), None)
    base = built.get(pgd_at, {}) if pgd_at else {}
    header = f"{'defense':<10} {'train s':>8} {'x PGD-AT':>8} {'clean':>6} " + " ".join(
        f"{'pgd@' + format_eps(e):>11}" for e in eps)
    print(header)
    print("-" * len(header))
    clean = {c.defense: c.accuracy for c in card.clean}
    for key in ["none"] + [d.key for d in at]:
        info = built.get(key, {})
        secs = info.get("train_seconds")
        ratio = (secs / base["train_seconds"]) if secs and base.get("train_seconds") else None
        robust = [next(r.robust_accuracy for r in card.results if r.defense == key
                       and abs(r.eps - e) < 1e-9) for e in eps]
        print(f"{key:<10} {'' if secs is None else f'{secs:.1f}':>8} "
              f"{'' if ratio is None else f'{ratio:.2f}':>8} {clean[key]:>6.3f} "
              + " ".join(f"{v:>11.3f}" for v in robust))


if __name__ == "__main__":
    main()
