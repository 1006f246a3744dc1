"""Kill ``arange run`` (SIGKILL, no clean-up) in the middle of a multi-job scenario of each task
and run it again: it must finish with the scorecard of an uninterrupted run and re-run none of
the finished jobs.

The test watches the run folder and kills the process as soon as its first job record appears,
so the interrupted run leaves finished jobs and unfinished ones behind it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

import arange

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


def _run_cli(scenario: Path, out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "arange", "run", str(scenario), "--out",
                           str(out), "-q"], capture_output=True, text=True, timeout=600,
                          check=False)


def kill_after_first_job(scenario: Path, out: Path) -> dict[str, tuple[int, bytes]]:
    """Start ``arange run``, SIGKILL it once a job record exists; return the finished records
    (name -> (mtime, bytes)). Fails if the run ended before it could be killed."""
    proc = subprocess.Popen([sys.executable, "-m", "arange", "run", str(scenario), "--out",
                             str(out), "-q"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        if any((out / "jobs").glob("*.json")):
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.005)
    code = proc.wait(timeout=60)
    assert code == -signal.SIGKILL, (code, proc.stderr.read()[-2000:] if proc.stderr else "")
    assert not (out / "scorecard.json").exists()
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted((out / "jobs").glob("*.json"))}


def resume_and_check(scenario: Path, out: Path, before: dict[str, tuple[int, bytes]],
                     total_jobs: int) -> dict[str, Any]:
    """Run again: the finished jobs are reused byte for byte, the rest run; the scorecard."""
    assert 1 <= len(before) < total_jobs, sorted(before)
    resumed = _run_cli(scenario, out)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    card: dict[str, Any] = json.loads((out / "scorecard.json").read_text())
    assert card["provenance"]["jobs_reused"] >= len(before)
    for name, (mtime, content) in before.items():  # the finished jobs were not run again
        p = out / "jobs" / name
        assert (p.stat().st_mtime_ns, p.read_bytes()) == (mtime, content)
    return card


def test_killed_run_resumes_to_the_same_scorecard(
        tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    spec = small_cascade()
    reference, _ = local_reference(tmp_path_factory)
    path = tmp_path / "resume.yaml"
    path.write_text(yaml.safe_dump(spec))
    out = tmp_path / "run"
    before = kill_after_first_job(path, out)
    card = resume_and_check(path, out, before, len(reference["results"]))
    assert len(list((out / "jobs").glob("*.json"))) == len(reference["results"])
    assert comparable(card) == comparable(reference)


def _scrub(doc: Any) -> Any:
    """A scorecard without what depends on how and when it ran (timings, provenance)."""
    if isinstance(doc, dict):
        return {k: _scrub(v) for k, v in doc.items()
                if k not in ("provenance", "seconds", "train_seconds", "cached")}
    if isinstance(doc, list):
        return [_scrub(v) for v in doc]
    return doc


@pytest.mark.parametrize("task", ["hash_matching", "forgery_localization"])
def test_killed_hash_and_forensics_runs_resume(task: str, tmp_path: Path) -> None:
    """The same kill-and-resume contract for the other two ranges (one driver serves all)."""
    from .test_forensics import TINY as FORENSICS
    from .test_hash_runner import TINY as HASH

    path = tmp_path / "s.yaml"
    if task == "hash_matching":
        path.write_text(yaml.safe_dump(HASH))
    else:
        path.write_text(FORENSICS)
    whole = tmp_path / "whole"
    assert _run_cli(path, whole).returncode == 0
    total = len(list((whole / "jobs").glob("*.json")))
    out = tmp_path / "run"
    before = kill_after_first_job(path, out)
    card = resume_and_check(path, out, before, total)
    reference = json.loads((whole / "scorecard.json").read_text())
    assert _scrub(card) == _scrub(reference)
    # the evidence files (hash PNGs, example galleries) are the uninterrupted run's
    for folder in ("images", "examples"):
        ours = sorted(p.relative_to(out) for p in (out / folder).rglob("*") if p.is_file())
        theirs = sorted(p.relative_to(whole) for p in (whole / folder).rglob("*")
                        if p.is_file())
        assert ours == theirs
