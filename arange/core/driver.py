"""The driver: one run of any task, from scenario to ``scorecard.json``.

scenario -> ``task.prepare`` (data, models; bad input fails before any write) -> ``task.plan``
(jobs in chains, each with a content key) -> resume (finished job records are read back, never
redone) -> an executor runs the rest (local or Ray) -> every record is written atomically to
``OUT/jobs/<job_id>.json`` as it arrives, after the files it carries -> ``task.scorecard`` ->
``OUT/scorecard.json``. A run killed at any point loses at most the jobs in flight; running the
same command again resumes.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._version import __version__
from ..errors import ArangeError
from ..store import atomic_write_bytes, atomic_write_json
from .executors import Executor, LocalExecutor, Work
from .safeio import load_json, short
from .task import Task, get_task

if TYPE_CHECKING:
    import torch

    from .task import Job

log = logging.getLogger(__name__)
FILES = "_files"   # record key: run-folder path -> bytes, written by the driver
CLEAR = "_clear"   # record key: run-folder folders emptied before the files are written


def resolve_device(spec: str) -> torch.device:
    import torch

    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ArangeError(f"device {spec!r} requested but no CUDA device is available; "
                              "use device: auto or cpu")
        index = int(spec.split(":")[1]) if ":" in spec else 0
        if index >= torch.cuda.device_count():
            raise ArangeError(f"device {spec!r} requested but only "
                              f"{torch.cuda.device_count()} CUDA device(s) exist")
    if spec == "mps" and not torch.backends.mps.is_available():
        raise ArangeError("device 'mps' requested but MPS is not available")
    return torch.device(spec)


# ---------------------------------------------------------------------------- provenance

def git_sha() -> str | None:
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def run_environment(device: object, seed: int, started: dt.datetime, t_start: float,
                    libraries: Iterable[str]) -> dict[str, Any]:
    """The :class:`~arange.core.scorecard.RunProvenance` fields of a run that began at ``started``
    (wall clock) and ``t_start`` (:func:`time.perf_counter`) and finishes now; ``libraries``:
    the distributions whose installed versions are recorded (those not installed are left
    out)."""
    import torch

    libs = {}
    for name in libraries:
        try:
            libs[name] = version(name)
        except PackageNotFoundError:
            continue
    return {"arange_version": __version__, "git_sha": git_sha(),
            "python": sys.version.split()[0], "platform": platform.platform(),
            "torch_version": torch.__version__, "libraries": libs, "device": str(device),
            "seed": seed, "started": started.isoformat(),
            "finished": dt.datetime.now(dt.UTC).isoformat(),
            "seconds": round(time.perf_counter() - t_start, 3)}


# ---------------------------------------------------------------------------- job store

class JobStore:
    """``OUT/jobs/<job_id>.json``: one record per finished job, written atomically after the
    files it carries, read back only when its content key matches and its files exist (the key
    covers the task's record format, so an old record never matches a new key)."""

    def __init__(self, out: Path):
        self.out = out
        self.dir = out / "jobs"

    def path(self, job: Job) -> Path:
        return self.inside(f"jobs/{job.job_id}.json")

    def inside(self, rel: str) -> Path:
        """``OUT/rel``, refused unless it stays inside the run folder."""
        path = self.out / rel
        root = self.out.resolve()
        if not path.resolve().is_relative_to(root) or path.resolve() == root:
            raise ArangeError(f"{self.out}: refusing to write {short(rel, 80)} outside the run "
                              "folder")
        return path

    def load(self, job: Job) -> dict[str, Any] | None:
        if not self.path(job).is_file():
            return None
        try:
            rec = load_json(self.path(job), "job record")
        except ArangeError:
            return None  # damaged or foreign: run the job again
        if not isinstance(rec, dict) or rec.get("key") != job.key:
            return None
        files = rec.get("files", [])
        if not isinstance(files, list) or any(
                not isinstance(f, str) or not (self.out / f).is_file() for f in files):
            return None  # the evidence is gone: run the job again
        return rec

    def save(self, job: Job, rec: dict[str, Any]) -> dict[str, Any]:
        """Write the record's files, then the record (without the file bytes); return it."""
        for folder in rec.pop(CLEAR, []):
            shutil.rmtree(self.inside(folder), ignore_errors=True)  # no stale evidence
        files: dict[str, bytes] = rec.pop(FILES, {})
        for rel, data in files.items():
            atomic_write_bytes(self.inside(rel), data)
        rec["files"] = sorted(set(rec.get("files", [])) | set(files))
        rec.setdefault("key", job.key)
        atomic_write_json(self.path(job), rec)
        return rec


# ---------------------------------------------------------------------------- the run

@dataclass
class RunState:
    """What a task's ``scorecard`` hook gets: the run so far."""

    task: Task
    scenario: Any
    prepared: Any
    device: torch.device
    out: Path
    store: JobStore
    jobs: list[Any]
    records: list[tuple[Any, dict[str, Any]]]
    reused: int
    started: dt.datetime
    t_start: float
    scenario_path: str | None
    resume: bool
    progress: bool
    extra: dict[str, Any] = field(default_factory=dict)

    def environment(self) -> dict[str, Any]:
        return run_environment(self.device, self.scenario.seed, self.started, self.t_start,
                               self.task.libraries)

    def run_local(self, job: Any, mask: Any) -> tuple[dict[str, Any], bool]:
        """Run one more job in this process through the store (resumable like the planned
        ones, e.g. the extra jobs of validity checks); (record, reused)."""
        rec = self.store.load(job) if self.resume else None
        if rec is not None:
            return rec, True
        return self.store.save(job, self.task.run_job(self.prepared, job, mask, None)), False


def check_out_dir(out: Path) -> None:
    """``--out`` must be a folder this process can create and write, checked before compute."""
    for parent in (out, *out.absolute().parents):
        try:
            exists = parent.exists()
        except OSError as e:  # a symlink loop, say
            raise ArangeError(f"--out {out}: {parent} cannot be used ({e.strerror or e})") from e
        if exists:
            if not parent.is_dir():
                raise ArangeError(f"--out {out}: {parent} exists and is not a folder; choose "
                                  "another output folder")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise ArangeError(f"--out {out}: {parent} is not writable; choose another "
                                  "output folder")
            break


def run(scenario: Any, out: str | Path | None = None, *, device: str | None = None,
        resume: bool = True, progress: bool = True, scenario_path: str | Path | None = None,
        executor: Executor | None = None, trust_code: bool = False) -> Any:
    """Run every job of ``scenario`` (any task) and write ``OUT/scorecard.json``.

    ``executor`` decides where the jobs run (default: :class:`LocalExecutor`, in this process);
    whichever runs them, this process writes every result, so the scorecard is the same. The
    executor is closed when the jobs are done. ``trust_code``: the scenario may run the Python
    files it names (``python:`` models); without it such a scenario is refused."""
    from .scenario import with_trusted_code

    scenario = with_trusted_code(scenario, trust_code)
    task = get_task(scenario.task)
    started = dt.datetime.now(dt.UTC)
    t_start = time.perf_counter()
    out_dir = Path(out) if out is not None else Path("runs") / scenario.name
    check_out_dir(out_dir)
    dev = resolve_device(device or scenario.device)
    executor = executor or LocalExecutor()
    try:
        prepared = task.prepare(scenario, dev, progress)  # bad data/weights fail before writes
        chains = task.plan(scenario, prepared)
        jobs = [j for c in chains for j in c.jobs]
        store = JobStore(out_dir)
        store.dir.mkdir(parents=True, exist_ok=True)
        finished: dict[str, dict[str, Any]] = {}
        for job in jobs if resume else []:
            rec = store.load(job)
            if rec is not None:
                finished[job.key] = rec
        reused = len(finished)
        if reused:
            log.info("resuming: %d of %d jobs already finished in %s", reused, len(jobs),
                     store.dir)

        def on_result(job: Job, rec: dict[str, Any]) -> None:  # every executor's results
            finished[job.key] = store.save(job, rec)

        executor.run(Work(task, scenario, prepared, dev, progress), chains, finished, on_result)
    finally:
        executor.close()
    state = RunState(task, scenario, prepared, dev, out_dir, store, jobs,
                     [(j, finished[j.key]) for j in jobs], reused, started, t_start,
                     str(scenario_path) if scenario_path else None, resume, progress)
    card = task.scorecard(state)
    card.save(out_dir / "scorecard.json")
    return card
