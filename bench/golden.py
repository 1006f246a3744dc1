"""Golden scorecards: record the numbers of one small scenario per task, and compare a later
run against them field by field. Used to show that a refactor changed no number.

    python bench/golden.py record bench/results/golden     # before the change
    python bench/golden.py compare bench/results/golden    # after it: lists every difference

Timings, dates, versions, paths and cache flags are not numbers of the evaluation and are
ignored; everything else in ``scorecard.json`` and ``samples.json`` is compared exactly.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SCENARIOS = {
    "classification": HERE.parent / "scenarios" / "ci_smoke.yaml",
    "hash_matching": HERE / "golden" / "hash_small.yaml",
    "forgery_localization": HERE / "golden" / "forensics_small.yaml",
}
IGNORED = {"seconds", "started", "finished", "timings", "train_seconds", "cached", "git_sha",
           "platform", "python", "libraries", "arange_version", "torch_version",
           "scenario_path", "jobs_reused", "path", "weights_source", "model_info"}


def _run(scenario: Path, out: Path, executor: str) -> None:
    from arange.cli import main

    args = ["run", str(scenario), "--out", str(out), "-q", "--fresh"]
    if executor != "local":
        args += ["--executor", executor]
    code = main(args)
    if code not in (0, 1):
        raise SystemExit(f"{scenario}: arange run exited {code}")


def _diff(a: Any, b: Any, where: str, out: list[str]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if k in IGNORED:
                continue
            if k not in a or k not in b:
                out.append(f"{where}.{k}: only in {'golden' if k in a else 'new'}")
                continue
            _diff(a[k], b[k], f"{where}.{k}", out)
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            out.append(f"{where}: {len(a)} items vs {len(b)}")
        for i, (x, y) in enumerate(zip(a, b, strict=False)):
            _diff(x, y, f"{where}[{i}]", out)
    elif a != b:
        out.append(f"{where}: {str(a)[:80]} -> {str(b)[:80]}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("action", choices=("record", "compare"))
    p.add_argument("folder", type=Path)
    p.add_argument("--executor", default="local")
    p.add_argument("--task", action="append", choices=sorted(SCENARIOS))
    a = p.parse_args()
    os.environ.setdefault("ARANGE_CACHE_DIR", str(Path(tempfile.gettempdir()) / "arange-golden"))
    failed = 0
    for task in a.task or SCENARIOS:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / task
            _run(SCENARIOS[task], out, a.executor)
            files = ("scorecard.json", "samples.json")
            if a.action == "record":
                dest = a.folder / task
                dest.mkdir(parents=True, exist_ok=True)
                for f in files:
                    shutil.copy(out / f, dest / f)
                print(f"{task}: recorded in {dest}")
                continue
            diffs: list[str] = []
            for f in files:
                gold = json.loads((a.folder / task / f).read_text())
                new = json.loads((out / f).read_text())
                _diff(gold, new, f, diffs)
            failed += bool(diffs)
            print(f"{task}: {'identical' if not diffs else f'{len(diffs)} difference(s)'}")
            for d in diffs[:40]:
                print("   ", d)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
