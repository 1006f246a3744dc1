"""Executors: where a run's jobs run, for every task.

The driver (:mod:`arange.core.driver`) asks the task for its jobs grouped into *chains*: jobs
whose inputs depend on each other (a classification cascade cell, a suite's components) form one
chain and run in order, each attacking what the previous one left (``task.chain_mask``);
different chains are independent, and most chains hold one job. An executor runs the chains'
unfinished jobs and hands every record back to the driver, which writes it to the run folder the
moment it arrives. Where a job ran never changes the scorecard.

- :class:`LocalExecutor` (default): in this process, on the run's device, one job at a time.
- :class:`RayExecutor`: on a Ray cluster (``--executor ray --address ADDR``) or on a local Ray
  runtime it starts itself. Each worker rebuilds what the jobs need from the scenario through
  ``task.worker_prepare`` (nothing but the scenario, job descriptions, masks and records travel
  through Ray), checks that it got what the driver has (``task.identity``), and runs one job at
  a time; the driver resolves chain dependencies and submits a job as soon as its input is known.

Progress: one bar over the task's work units (attacked samples, hashed images, scored jobs) with
jobs done/total in its postfix, images/s and an ETA.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import ArangeError

if TYPE_CHECKING:
    from .task import Job, Task

log = logging.getLogger(__name__)

EXECUTORS = ("local", "ray")
RAY_MISSING = ('--executor ray needs Ray, which is not installed; install it with: '
               'pip install "arange[ray]"')

OnResult = Callable[["Job", dict[str, Any]], None]


@dataclass
class Chain:
    """Jobs that run in order: job ``i`` gets the input job ``i-1``'s record leaves
    (``task.chain_mask``); the first gets ``mask`` (``None`` where jobs take no input)."""

    jobs: Sequence[Job]
    mask: Any = None


@dataclass
class Work:
    """What an executor needs from the driver: the task, its scenario and prepared state."""

    task: Task
    scenario: Any
    prepared: Any
    device: Any
    progress: bool = True


class _Cursor:
    """Walks one chain: skips jobs already finished (taking the input they leave) and yields the
    next job to run with the input it gets."""

    def __init__(self, chain: Chain, finished: dict[str, dict[str, Any]], task: Task):
        self.jobs, self.mask, self.pos, self.finished = chain.jobs, chain.mask, 0, finished
        self.task = task

    def next(self) -> Job | None:
        while self.pos < len(self.jobs) and self.jobs[self.pos].key in self.finished:
            self.mask = self.task.chain_mask(self.finished[self.jobs[self.pos].key])
            self.pos += 1
        return self.jobs[self.pos] if self.pos < len(self.jobs) else None

    def done(self, rec: dict[str, Any]) -> None:
        self.mask = self.task.chain_mask(rec)
        self.pos += 1

    def left(self) -> int:
        return sum(1 for j in self.jobs[self.pos:] if j.key not in self.finished)


class Progress:
    """A bar over work units (so tqdm shows units/s and an ETA) with ``jobs done/total`` in its
    postfix. A chain's later jobs are estimated at the size of the input it has now (a
    cascade's later jobs attack only what earlier ones left) and corrected as each finishes.
    Jobs may report units as they go (:meth:`update`); what a job did not report is added when
    it finishes."""

    def __init__(self, cursors: Sequence[_Cursor], task: Task, enabled: bool,
                 desc: str = "attacking"):
        from tqdm.auto import tqdm

        self.task = task
        self.jobs_total = sum(c.left() for c in cursors)
        self.jobs_done = 0
        self._estimate: dict[int, int] = {}
        total = 0
        for c in cursors:
            job = c.next()
            if job is not None:
                units = task.job_units(job, c.mask)
                self._estimate[id(c)] = units
                total += c.left() * units
        self.bar = tqdm(total=total, desc=desc, unit=task.unit, disable=not enabled,
                        dynamic_ncols=True)
        self._current = ""
        self._reported = 0
        self._postfix()

    def _postfix(self) -> None:
        text = f"jobs {self.jobs_done}/{self.jobs_total}"
        self.bar.set_postfix_str(f"{text} {self._current}".strip(), refresh=False)

    def update(self, n: int) -> None:
        """Units done inside the running job (local executor only)."""
        self._reported += n
        self.bar.update(n)

    def start(self, job: Job) -> None:
        self._current = job.job_id
        self._reported = 0
        self._postfix()
        self.bar.refresh()

    def finished(self, cursor: _Cursor, job: Job, units: int) -> None:
        """Account for a job of ``units`` units; call after ``cursor.done(rec)``."""
        self.jobs_done += 1
        self.bar.update(max(0, units - self._reported))
        self._reported = 0
        old = self._estimate.get(id(cursor), 0)
        nxt = cursor.next()
        new = self.task.job_units(nxt, cursor.mask) if nxt is not None else old
        self._estimate[id(cursor)] = new
        self.bar.total = max(self.bar.n, self.bar.total - cursor.left() * (old - new))
        self._current = ""
        self._postfix()
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


class Executor:
    """Runs chains of jobs; every finished record goes to ``on_result`` in the driver (which
    writes it to the run folder) before anything else happens."""

    name = "executor"

    def run(self, work: Work, chains: Sequence[Chain], finished: dict[str, dict[str, Any]],
            on_result: OnResult) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Release what the executor holds (a Ray runtime it started, its workers)."""


class LocalExecutor(Executor):
    """In this process, one job at a time, chain after chain."""

    name = "local"

    def run(self, work: Work, chains: Sequence[Chain], finished: dict[str, dict[str, Any]],
            on_result: OnResult) -> None:
        task = work.task
        cursors = [_Cursor(c, finished, task) for c in chains]
        progress = Progress(cursors, task, work.progress)
        try:
            for cur in cursors:
                while (job := cur.next()) is not None:
                    progress.start(job)
                    units = task.job_units(job, cur.mask)
                    rec = task.run_job(work.prepared, job, cur.mask, progress)
                    on_result(job, rec)
                    cur.done(rec)
                    progress.finished(cur, job, units)
        finally:
            progress.close()


def import_ray() -> Any:
    """Ray, or the one clear message that says how to get it."""
    try:
        import ray
    except ImportError as e:
        raise ArangeError(RAY_MISSING) from e
    return ray


def make_executor(name: str, address: str | None = None) -> Executor:
    """The executor called ``name`` (``local`` or ``ray``)."""
    if name == "local":
        if address:
            raise ArangeError("--address only applies with --executor ray")
        return LocalExecutor()
    if name == "ray":
        import_ray()  # fail now, before any compute, if Ray is missing
        return RayExecutor(address=address)
    raise ArangeError(f"unknown executor {name!r} (available: {', '.join(EXECUTORS)})")


class _Worker:
    """A Ray actor: rebuilds the task's prepared state once, then runs jobs on request. A setup
    error is kept and raised by :meth:`ready`, so the driver gets it as an
    :class:`ArangeError` (an error in an actor's constructor reaches it only as text)."""

    def __init__(self, task_name: str, scenario: Any, device_type: str,
                 identity: dict[str, Any], threads: int):
        self._error: ArangeError | None = None
        try:
            import torch

            from .task import get_task

            if threads > 0:
                torch.set_num_threads(threads)
            self.task = get_task(task_name)
            where = f"ray worker on {os.uname().nodename}"
            self.prepared = self.task.worker_prepare(scenario, torch.device(device_type),
                                                     identity, where)
        except ArangeError as e:
            self._error = e

    def ready(self) -> bool:
        if self._error is not None:
            raise self._error
        return True

    def run(self, job: Job, mask: Any) -> dict[str, Any]:
        return self.task.run_job(self.prepared, job, mask, None)


class RayExecutor(Executor):
    """Jobs on Ray workers; results come back to the driver, which writes them.

    Without ``address`` a local runtime is started with a small footprint (``num_cpus`` CPUs, no
    dashboard, worker logs not forwarded) and shut down again by :meth:`close`. Each job needs
    ``cpus_per_job`` CPUs, and one GPU when the run's device is CUDA."""

    name = "ray"

    def __init__(self, address: str | None = None, num_cpus: int = 2, cpus_per_job: int = 1,
                 max_workers: int | None = None):
        self.address = address
        self.num_cpus = num_cpus
        self.cpus_per_job = cpus_per_job
        self.max_workers = max_workers
        self._ray: Any = None
        self._connected = False
        self._workers: list[Any] = []
        self._workers_for: tuple[Any, ...] | None = None

    def _connect(self) -> Any:
        ray = import_ray()
        if not ray.is_initialized():
            address = self.address or os.environ.get("RAY_ADDRESS")  # Ray's own convention
            if address:
                ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
            else:
                ray.init(num_cpus=self.num_cpus, include_dashboard=False, log_to_driver=False,
                         logging_level=logging.WARNING)
            self._connected = True
            log.info("ray: %s with %s", address or "local runtime", ray.cluster_resources())
        self._ray = ray
        return ray

    def _start_workers(self, work: Work, wanted: int) -> list[Any]:
        ray = self._ray
        identity = work.task.identity(work.prepared)
        key = (id(work.scenario), str(work.device), repr(sorted(identity.items())))
        if self._workers and self._workers_for == key:
            return self._workers
        self._kill_workers()
        resources = ray.cluster_resources()
        gpu = work.device.type == "cuda"
        if gpu:
            capacity = int(resources.get("GPU", 0))
            if capacity < 1:
                raise ArangeError("the run's device is CUDA but the Ray cluster has no GPU; "
                                  "use --device cpu or a cluster with GPUs")
        else:
            capacity = int(resources.get("CPU", 1) // self.cpus_per_job)
        n = max(1, min(wanted, capacity, self.max_workers or wanted))
        options: dict[str, Any] = {"num_cpus": self.cpus_per_job, "num_gpus": 1 if gpu else 0}
        cache = os.environ.get("ARANGE_CACHE_DIR")
        if cache and self.address:  # a local runtime inherits the driver's environment
            options["runtime_env"] = {"env_vars": {"ARANGE_CACHE_DIR": cache}}
        actor = ray.remote(**options)(_Worker)
        self._workers = [actor.remote(work.task.name, work.scenario, work.device.type, identity,
                                      self.cpus_per_job) for _ in range(n)]
        self._workers_for = key
        self._get([w.ready.remote() for w in self._workers])
        log.info("ray: %d worker(s) ready", n)
        return self._workers

    def _get(self, refs: Any) -> Any:
        ray = self._ray
        try:
            return ray.get(refs)
        except (ray.exceptions.RayTaskError, ray.exceptions.RayActorError) as e:
            cause = getattr(e, "cause", None)
            if isinstance(cause, ArangeError):
                raise cause from None
            # One line for the user: the worker's own error, not Ray's wrapped traceback.
            lines = [ln for ln in str(cause or e).strip().splitlines() if ln.strip()]
            raise ArangeError(f"a ray worker failed: {lines[-1] if lines else type(e).__name__}"
                              ) from e

    def run(self, work: Work, chains: Sequence[Chain], finished: dict[str, dict[str, Any]],
            on_result: OnResult) -> None:
        task = work.task
        cursors = [_Cursor(c, finished, task) for c in chains]
        ready = [c for c in cursors if c.next() is not None]
        if not ready:
            return
        ray = self._connect()
        workers = self._start_workers(work, len(ready))  # the bar's clock starts once they are up
        progress = Progress(cursors, task, work.progress)
        try:
            idle = list(workers)
            inflight: dict[Any, tuple[Any, _Cursor, Job, int]] = {}
            t0 = time.perf_counter()
            while ready or inflight:
                while ready and idle:
                    cur, worker = ready.pop(0), idle.pop(0)
                    job = cur.next()
                    if job is None:  # cursors in `ready` have work left
                        raise RuntimeError("a chain in the ready queue has no job left")
                    inflight[worker.run.remote(job, cur.mask)] = (
                        worker, cur, job, task.job_units(job, cur.mask))
                done, _ = ray.wait(list(inflight), num_returns=1)
                worker, cur, job, units = inflight.pop(done[0])
                rec = self._get(done[0])
                idle.append(worker)
                on_result(job, rec)
                cur.done(rec)
                progress.finished(cur, job, units)
                if cur.next() is not None:
                    ready.append(cur)
            log.debug("ray: jobs done in %.1fs", time.perf_counter() - t0)
        finally:
            progress.close()

    def _kill_workers(self) -> None:
        if self._ray is not None:
            for w in self._workers:
                self._ray.kill(w)
        self._workers = []
        self._workers_for = None

    def close(self) -> None:
        self._kill_workers()
        if self._connected and self._ray is not None:
            self._ray.shutdown()
            self._connected = False
