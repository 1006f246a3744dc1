"""One small scenario of each range end to end on a device, and the classification run's speed
switches (bf16 autocast for the attacks, automatic batch size) side by side.

    python bench/gpu_scenarios.py --device cuda
    python bench/gpu_scenarios.py --device cpu --dry-run     # tiny sizes (CI keeps it working)

Prints each run's terminal summary and one table: robust accuracy per attack, seconds, and the
batch size the jobs ended with (``batch_size: auto`` starts large on CUDA and halves on
out-of-memory).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def classification(device: str, dry: bool, autocast: str, batch: Any) -> dict[str, Any]:
    from arange.core.scenario import load_scenario

    raw = load_scenario(ROOT / "scenarios" / "ci_smoke.yaml").model_dump(mode="json")
    raw["device"] = device
    raw["gates"] = []
    raw["evaluation"]["autocast"] = autocast
    raw["target"]["batch_size"] = batch
    if dry:
        raw["target"]["samples"] = 16
        raw["attacks"] = [{"name": "pgd", "eps": ["8/255"], "params": {"steps": 2}}]
        raw["evaluation"]["checks"] = {"large_eps": False, "more_steps": False}
    return raw


def run(raw: dict[str, Any] | Path, label: str, device: str) -> dict[str, Any]:
    import arange
    from arange.core.scenario import load_scenario, scenario_from_dict
    from arange.core.task import get_task

    s = load_scenario(raw) if isinstance(raw, Path) else scenario_from_dict(raw)
    if isinstance(raw, Path):
        s = s.model_copy(update={"device": device})
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        card = arange.run(s, out=out, progress=False)
        seconds = time.perf_counter() - t0
        batches = sorted({json.loads(p.read_text()).get("batch_size")
                          for p in (Path(out) / "jobs").glob("*.json")} - {None})
    print(f"\n### {label}\n{get_task(s.task).summary(card)}")
    rows = getattr(card, "results", [])
    robust = {f"{r.attack}@{r.eps_label}": round(r.robust_accuracy, 3) for r in rows
              if hasattr(r, "robust_accuracy")}
    robust.update({f"{r.attack}@{r.eps_label}@t{r.threshold}": round(r.rate, 3) for r in rows
                   if hasattr(r, "threshold")})  # hash rows: the verified success rate
    return {"run": label, "task": s.task, "seconds": round(seconds, 1), "batch": batches,
            "robust": robust, "failed_checks": [c.name for c in card.checks
                                                if c.status == "fail"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dry-run", action="store_true")
    args = ap.parse_args()
    dev, dry = args.device, args.dry_run
    results = [
        run(classification(dev, dry, "none", 256), "classification fp32, batch 256", dev),
        run(classification(dev, dry, "bf16", 256), "classification bf16 attacks, batch 256",
            dev),
        run(classification(dev, dry, "none", "auto"), "classification fp32, batch auto", dev),
        run(ROOT / "bench" / "golden" / "hash_small.yaml", "hash matching (small)", dev),
        run(ROOT / "bench" / "golden" / "forensics_small.yaml", "forgery localisation (small)",
            dev),
    ]
    print(f"\n{'run':<42} {'s':>7} {'batch':>10}  robust accuracy (hash: success rate) / "
          "failed checks")
    for r in results:
        print(f"{r['run']:<42} {r['seconds']:>7.1f} {','.join(map(str, r['batch'])):>10}  "
              f"{r['robust'] or ''} {r['failed_checks'] or ''}")


if __name__ == "__main__":
    main()
