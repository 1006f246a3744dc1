"""Kill ``arange run`` in the middle of a multi-job scenario and run it again: it must finish with
the scorecard of an uninterrupted run and re-run none of the finished jobs.

The kill is deterministic: ``ARANGE_TEST_KILL_AFTER_JOBS=1`` makes the driver SIGKILL itself right
after writing its first job file (see :mod:`arange.executors`), so the interrupted run always
leaves exactly one finished job and an unfinished cascade behind it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

import arange
from arange.executors import KILL_ENV

from .conftest import tiny_scenario


def small_cascade() -> dict[str, Any]:
    """4 jobs in 2 cascade chains (fgsm then pgd at each eps); validity checks off for speed."""
    target = tiny_scenario()["target"]
    target.update(samples=64, batch_size=64)
    return tiny_scenario(
        name="resume", target=target,
        attacks=[{"name": "fgsm", "eps": ["4/255", "16/255"]},
                 {"name": "pgd", "eps": ["4/255", "16/255"], "params": {"steps": 3}}],
        evaluation={"cascade": True, "checks": {"large_eps": False, "more_steps": False}})


_REFERENCE: dict[str, Any] = {}


def local_reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    """One uninterrupted local run of :func:`small_cascade`, shared by this module and
    test_executors.py: (scorecard as JSON, run folder). Also caches the zoo weights."""
    if not _REFERENCE:
        out = tmp_path_factory.mktemp("reference")
        card = arange.run(small_cascade(), out=out, progress=False)
        _REFERENCE.update(card=card.model_dump(mode="json"), out=out)
    return _REFERENCE["card"], _REFERENCE["out"]


def comparable(card: dict[str, Any]) -> dict[str, Any]:
    """What must not depend on how the run was executed: everything but timings."""
    return {"clean": card["clean"], "worst_case": card["worst_case"],
            "results": [{k: v for k, v in r.items() if k != "seconds"} for r in card["results"]],
            "checks": [(c["name"], c["status"]) for c in card["checks"]]}


def _run_cli(scenario: Path, out: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "arange", "run", str(scenario), "--out",
                           str(out), "-q"], env=env, capture_output=True, text=True,
                          timeout=600, check=False)


def test_killed_run_resumes_to_the_same_scorecard(
        tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    spec = small_cascade()
    reference, _ = local_reference(tmp_path_factory)
    path = tmp_path / "resume.yaml"
    path.write_text(yaml.safe_dump(spec))
    out = tmp_path / "run"

    env = dict(os.environ, **{KILL_ENV: "1"})
    killed = _run_cli(path, out, env)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    done = sorted((out / "jobs").glob("*.json"))
    assert len(done) == 1, [p.name for p in done]
    assert not (out / "scorecard.json").exists()
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in done}

    env.pop(KILL_ENV)
    resumed = _run_cli(path, out, env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    card = json.loads((out / "scorecard.json").read_text())
    assert card["provenance"]["jobs_reused"] >= 1
    for name, (mtime, content) in before.items():  # the finished job was not run again
        p = out / "jobs" / name
        assert (p.stat().st_mtime_ns, p.read_bytes()) == (mtime, content)
    assert len(list((out / "jobs").glob("*.json"))) == len(reference["results"])
    assert comparable(card) == comparable(reference)

