"""Executors: where a scenario's attack jobs run.

The runner expands a scenario into jobs and groups them into *chains*: jobs whose attack masks
depend on each other (a cascade cell, a suite's components) form one chain and run in order, each
attacking what the previous one left robust; different chains are independent. An executor runs
the chains' unfinished jobs and hands every record back to the driver, which writes it to the run
folder (``jobs/*.json``, ``examples/*.npz``) the moment it arrives. Where a job ran never changes
the scorecard.

- :class:`LocalExecutor` (default): in this process, on the scenario's device, one job at a time.
- :class:`RayExecutor`: on a Ray cluster (``--executor ray --address ADDR``) or on a local Ray
  runtime it starts itself. Each worker rebuilds the target and the defenses from the scenario
  (nothing but the scenario, job descriptions, masks and records travel through Ray), checks that
  it got the same weights, data and clean predictions as the driver, and runs one job at a time;
  the driver resolves chain dependencies and submits a job as soon as its mask is known.

Progress: one bar over attacked samples (images/s and ETA) with jobs done/total in its postfix.

For tests only: with ``ARANGE_TEST_KILL_AFTER_JOBS=N`` in the environment, the driver kills its
own process (SIGKILL, no clean-up) right after writing its N-th job, which makes "killed in the
middle of a run" reproducible.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from .errors import ArangeError

if TYPE_CHECKING:
    from .data import ImageDataset
    from .runner import Defended, Job
    from .scenario import Scenario

log = logging.getLogger(__name__)

EXECUTORS = ("local", "ray")
KILL_ENV = "ARANGE_TEST_KILL_AFTER_JOBS"
RAY_MISSING = ('--executor ray needs Ray, which is not installed; install it with: '
               'pip install "arange[ray]"')

OnResult = Callable[["Job", dict[str, Any]], None]


@dataclass
class Chain:
    """Jobs that run in order: job ``i`` attacks the samples job ``i-1`` left robust; the first
    attacks ``mask``."""

    jobs: list[Job]
    mask: torch.Tensor


def plan_chains(jobs: Sequence[Job], first_mask: Callable[[Job], torch.Tensor],
                cascade: bool) -> list[Chain]:
    """Group ``jobs`` into chains, keeping job order within each: with ``cascade`` every
    (defense, norm, eps) cell is one chain; otherwise each suite's components at one eps form a
    chain and every other job is a chain of its own."""
    groups: dict[Any, list[Job]] = {}
    for i, job in enumerate(jobs):
        cell = (job.defense.key, job.attack.norm.value, job.eps)
        if cascade:
            group: Any = cell
        elif job.suite is not None:
            group = (cell, job.suite)
        else:
            group = i
        groups.setdefault(group, []).append(job)
    return [Chain(js, first_mask(js[0])) for js in groups.values()]


def _robust(rec: dict[str, Any]) -> torch.Tensor:
    return torch.tensor(rec["robust"], dtype=torch.bool)


class _Cursor:
    """Walks one chain: skips jobs already finished (taking their robust mask) and yields the
    next job to run with the mask it attacks."""

    def __init__(self, chain: Chain, finished: dict[str, dict[str, Any]]):
        self.jobs, self.mask, self.pos, self.finished = chain.jobs, chain.mask, 0, finished

    def next(self) -> Job | None:
        while self.pos < len(self.jobs) and self.jobs[self.pos].key in self.finished:
            self.mask = _robust(self.finished[self.jobs[self.pos].key])
            self.pos += 1
        return self.jobs[self.pos] if self.pos < len(self.jobs) else None

    def done(self, rec: dict[str, Any]) -> None:
        self.mask = _robust(rec)
        self.pos += 1

    def left(self) -> int:
        return sum(1 for j in self.jobs[self.pos:] if j.key not in self.finished)


class Progress:
    """A bar over attacked samples (so tqdm shows images/s and an ETA) with ``jobs done/total``
    in its postfix. The sample total starts as an upper bound (a cascade's later jobs attack
    only what earlier ones left) and is corrected as each job finishes."""

    def __init__(self, cursors: Sequence[_Cursor], enabled: bool, desc: str = "attacking"):
        from tqdm.auto import tqdm

        self.jobs_total = sum(c.left() for c in cursors)
        self.jobs_done = 0
        self._estimate: dict[int, int] = {}
        total = 0
        for c in cursors:
            if c.next() is not None:
                self._estimate[id(c)] = int(c.mask.sum())
                total += c.left() * int(c.mask.sum())
        self.bar = tqdm(total=total, desc=desc, unit="img", disable=not enabled,
                        dynamic_ncols=True)
        self._current = ""
        self._postfix()

    def _postfix(self) -> None:
        text = f"jobs {self.jobs_done}/{self.jobs_total}"
        self.bar.set_postfix_str(f"{text} {self._current}".strip(), refresh=False)

    def update(self, n: int) -> None:  # run_job reports attacked samples batch by batch
        self.bar.update(n)

    def start(self, job: Job) -> None:
        self._current = job.job_id
        self._postfix()
        self.bar.refresh()

    def finished(self, cursor: _Cursor, rec: dict[str, Any], count_samples: bool) -> None:
        """Account for a finished job; call after ``cursor.done(rec)``."""
        self.jobs_done += 1
        if count_samples:
            self.bar.update(int(sum(rec["attacked"])))
        old = self._estimate.get(id(cursor), 0)
        new = int(_robust(rec).sum())
        self._estimate[id(cursor)] = new
        self.bar.total = max(self.bar.n, self.bar.total - cursor.left() * (old - new))
        self._current = ""
        self._postfix()
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


@dataclass
class RunContext:
    """What the driver knows about a run that executors need."""

    scenario: Scenario
    device: torch.device
    data: ImageDataset
    clean_pred: dict[str, torch.Tensor]
    weights_sha256: str
    data_fingerprint: str
    defended: dict[str, Defended] = field(default_factory=dict)  # the driver's own models
    progress: bool = True


class Executor:
    """Runs chains of jobs; every finished record goes to ``on_result`` in the driver (which
    writes it to the store) before anything else happens."""

    name = "executor"

    def __init__(self) -> None:
        self._written = 0

    def run(self, ctx: RunContext, chains: Sequence[Chain], finished: dict[str, dict[str, Any]],
            on_result: OnResult) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Release what the executor holds (a Ray runtime it started, its workers)."""

    def _deliver(self, job: Job, rec: dict[str, Any], on_result: OnResult) -> None:
        on_result(job, rec)
        self._written += 1
        limit = os.environ.get(KILL_ENV)
        if limit and limit.isdigit() and 0 < int(limit) <= self._written:
            log.warning("%s=%s: killing this process after %d job(s)", KILL_ENV, limit,
                        self._written)
            os.kill(os.getpid(), signal.SIGKILL)


class LocalExecutor(Executor):
    """In this process, one job at a time, chain after chain."""

    name = "local"

    def run(self, ctx: RunContext, chains: Sequence[Chain], finished: dict[str, dict[str, Any]],
            on_result: OnResult) -> None:
        from .runner import run_job
        from .speed import BatchSize

        batch = BatchSize.resolve(ctx.scenario.target.batch_size, ctx.device)  # shared by jobs
        cursors = [_Cursor(c, finished) for c in chains]
        progress = Progress(cursors, ctx.progress)
        try:
            for cur in cursors:
                while (job := cur.next()) is not None:
                    progress.start(job)
                    rec = run_job(job, ctx.defended[job.defense.key], ctx.data, cur.mask,
                                  ctx.clean_pred[job.defense.key], ctx.scenario, ctx.device,
                                  progress, batch)
                    cur.done(rec)
                    self._deliver(job, rec, on_result)
                    progress.finished(cur, rec, count_samples=False)
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
    """A Ray actor: rebuilds the target and the defenses once, then runs jobs on request. A
    setup error is kept and raised by :meth:`ready`, so the driver gets it as an
    :class:`ArangeError` (an error in an actor's constructor reaches it only as text)."""

    def __init__(self, scenario: Scenario, device_type: str, weights_sha256: str,
                 data_fingerprint: str, clean_pred: dict[str, list[int]], threads: int):
        self._error: ArangeError | None = None
        try:
            self._setup(scenario, device_type, weights_sha256, data_fingerprint, clean_pred,
                        threads)
        except ArangeError as e:
            self._error = e

    def _setup(self, scenario: Scenario, device_type: str, weights_sha256: str,
               data_fingerprint: str, clean_pred: dict[str, list[int]], threads: int) -> None:
        from .runner import build_defenses, prepare_target
        from .speed import BatchSize

        if threads > 0:
            torch.set_num_threads(threads)
        self.scenario = scenario
        self.device = torch.device(device_type)
        self.batch = BatchSize.resolve(scenario.target.batch_size, self.device)
        target = prepare_target(scenario, self.device, progress=False)
        where = f"ray worker on {os.uname().nodename}"
        if target.weights_sha256 != weights_sha256:
            raise ArangeError(f"{where}: the target's weights differ from the driver's "
                              f"(sha256 {target.weights_sha256[:12]} vs {weights_sha256[:12]}); "
                              "give the weights as a file every node can read, or share "
                              "ARANGE_CACHE_DIR between nodes")
        if target.data.fingerprint() != data_fingerprint:
            raise ArangeError(f"{where}: the evaluation data differ from the driver's; give a "
                              "dataset path every node can read")
        self.data = target.data
        self.defended = build_defenses(scenario, target, self.device, progress=False)
        self.clean_pred = {k: torch.tensor(v, dtype=torch.long) for k, v in clean_pred.items()}
        self._check_clean(where)

    def _check_clean(self, where: str) -> None:
        from .runner import predict

        for key, d in self.defended.items():
            if getattr(d.defense, "randomized", False):
                continue  # its clean predictions depend on its draws, not on the build
            pred = predict(d.model, self.data.x, self.batch.size, self.device)
            if not torch.equal(pred, self.clean_pred[key]):
                raise ArangeError(f"{where}: defense {key!r} predicts differently from the "
                                  "driver's on clean data; the nodes must build the same models "
                                  "(same arange and library versions, same cached weights)")

    def ready(self) -> bool:
        if self._error is not None:
            raise self._error
        return True

    def run(self, job: Job, mask: torch.Tensor) -> dict[str, Any]:
        from .runner import run_job

        return run_job(job, self.defended[job.defense.key], self.data, mask,
                       self.clean_pred[job.defense.key], self.scenario, self.device,
                       batch=self.batch)


class RayExecutor(Executor):
    """Jobs on Ray workers; results come back to the driver, which writes them.

    Without ``address`` a local runtime is started with a small footprint (``num_cpus`` CPUs, no
    dashboard, worker logs not forwarded) and shut down again by :meth:`close`. Each job needs
    ``cpus_per_job`` CPUs, and one GPU when the run's device is CUDA."""

    name = "ray"

    def __init__(self, address: str | None = None, num_cpus: int = 2, cpus_per_job: int = 1,
                 max_workers: int | None = None):
        super().__init__()
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

    def _start_workers(self, ctx: RunContext, wanted: int) -> list[Any]:
        ray = self._ray
        identity = (id(ctx.scenario), str(ctx.device), ctx.weights_sha256)
        if self._workers and self._workers_for == identity:
            return self._workers
        self._kill_workers()
        resources = ray.cluster_resources()
        gpu = ctx.device.type == "cuda"
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
        clean = {k: v.tolist() for k, v in ctx.clean_pred.items()}
        self._workers = [actor.remote(ctx.scenario, ctx.device.type, ctx.weights_sha256,
                                      ctx.data_fingerprint, clean, self.cpus_per_job)
                         for _ in range(n)]
        self._workers_for = identity
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
            raise

    def run(self, ctx: RunContext, chains: Sequence[Chain], finished: dict[str, dict[str, Any]],
            on_result: OnResult) -> None:
        cursors = [_Cursor(c, finished) for c in chains]
        ready = [c for c in cursors if c.next() is not None]
        if not ready:
            return
        ray = self._connect()
        workers = self._start_workers(ctx, len(ready))  # the bar's clock starts once they are up
        progress = Progress(cursors, ctx.progress)
        try:
            idle = list(workers)
            inflight: dict[Any, tuple[Any, _Cursor, Job]] = {}
            t0 = time.perf_counter()
            while ready or inflight:
                while ready and idle:
                    cur, worker = ready.pop(0), idle.pop(0)
                    job = cur.next()
                    assert job is not None  # cursors in `ready` have work left
                    inflight[worker.run.remote(job, cur.mask)] = (worker, cur, job)
                done, _ = ray.wait(list(inflight), num_returns=1)
                worker, cur, job = inflight.pop(done[0])
                rec = self._get(done[0])
                idle.append(worker)
                cur.done(rec)
                self._deliver(job, rec, on_result)
                progress.finished(cur, rec, count_samples=True)
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

