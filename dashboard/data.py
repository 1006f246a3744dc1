"""Finding and reading runs for the dashboard (no Streamlit, no torch).

A *store* is a folder of run folders (``runs/`` by default); a *run folder* holds what
``arange run`` wrote: ``scorecard.json``, ``samples.json``, ``examples/<job_id>.npz`` and, once
``arange gate`` has judged it, ``gates.json``. Every reader here turns a missing, damaged or
unsupported file into a :class:`RunDataError` whose message names the file, says what is wrong
and what to do, so the pages can show it instead of a stack trace.

Scorecards are kept as plain JSON dictionaries, first validated as their task's typed scorecard
(pydantic, torch-free) by the reader every tool shares.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from arange.core.scorecard import ScorecardError, check_scorecard
from arange.errors import ArangeError

SCORECARD = "scorecard.json"
SAMPLES = "samples.json"
EXAMPLES = "examples"
GATES = "gates.json"
# Folders inside a run folder that never hold runs themselves.
_SKIP_DIRS = {"jobs", EXAMPLES, "__pycache__"}
MAX_DEPTH = 4


class RunDataError(ArangeError):
    """A run's file is missing, damaged or of an unsupported version (message is user-facing)."""


@dataclass(frozen=True)
class Run:
    """One run folder: its scorecard as a dict, or the reason it cannot be shown."""

    run_id: str          # the folder relative to the store, e.g. "pgd_resnet"
    path: Path
    card: dict[str, Any] | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.card is not None

    @property
    def task(self) -> str:
        return str(self.card.get("task", "?")) if self.card else "?"

    @property
    def name(self) -> str:
        return str(self.card.get("name", self.run_id)) if self.card else self.run_id

    @property
    def provenance(self) -> dict[str, Any]:
        prov = self.card.get("provenance") if self.card else None
        return prov if isinstance(prov, dict) else {}

    def file(self, key: str, default: str) -> Path:
        """A side file named in the scorecard's ``files`` (relative to the run folder)."""
        files = self.card.get("files") if self.card else None
        name = files.get(key) if isinstance(files, dict) else None
        if not isinstance(name, str) or not name or Path(name).is_absolute() or ".." in \
                Path(name).parts:
            name = default  # never follow a side-file path out of the run folder
        return self.path / name


@dataclass
class Store:
    root: Path
    runs: list[Run] = field(default_factory=list)

    @property
    def exists(self) -> bool:
        return self.root.is_dir()

    def ok_runs(self) -> list[Run]:
        return [r for r in self.runs if r.ok]

    def get(self, run_id: str | None) -> Run | None:
        for r in self.runs:
            if r.run_id == run_id:
                return r
        return None


# ---------------------------------------------------------------------------- finding runs

def find_run_folders(root: str | Path, max_depth: int = MAX_DEPTH) -> list[Path]:
    """Folders under ``root`` (``root`` included) that hold a ``scorecard.json``."""
    root = Path(root)
    found: list[Path] = []

    def walk(folder: Path, depth: int) -> None:
        if (folder / SCORECARD).is_file():
            found.append(folder)
        if depth >= max_depth:
            return
        try:
            children = sorted(p for p in folder.iterdir() if p.is_dir())
        except OSError:
            return
        for child in children:
            if child.name.startswith(".") or child.name in _SKIP_DIRS:
                continue
            walk(child, depth + 1)

    if root.is_dir():
        walk(root, 0)
    return found


def run_id_for(root: Path, folder: Path) -> str:
    rel = folder.relative_to(root).as_posix()
    return rel if rel != "." else folder.name or "."


def load_store(root: str | Path) -> Store:
    root = Path(root)
    store = Store(root=root)
    for folder in find_run_folders(root):
        store.runs.append(load_run(root, folder))
    return store


def load_run(root: Path, folder: Path) -> Run:
    run_id = run_id_for(root, folder)
    try:
        card = read_scorecard(folder / SCORECARD)
    except RunDataError as e:
        return Run(run_id=run_id, path=folder, error=str(e))
    return Run(run_id=run_id, path=folder, card=card)


# ---------------------------------------------------------------------------- reading files

def _read_json(path: Path, what: str) -> Any:
    from arange.core.safeio import load_json

    if not path.exists() and not path.is_symlink():  # a symlink loop is reported by the read
        raise RunDataError(f"{path}: the {what} file is missing")
    try:
        if path.is_file() and path.stat().st_size == 0:
            raise RunDataError(f"{path}: the {what} file is empty; the run that wrote it was "
                               "probably interrupted - run the scenario again")
    except OSError as e:
        raise RunDataError(f"{path}: the {what} file cannot be read ({e.strerror or e})"
                           ) from e
    try:
        return load_json(path, f"{what} file", error=RunDataError)
    except RunDataError as e:
        raise RunDataError(f"{e}; run the scenario again to rewrite it") from e


def read_scorecard(path: str | Path) -> dict[str, Any]:
    """Read and check a scorecard (as its task's typed scorecard,
    :func:`arange.core.scorecard.check_scorecard`); return it as a JSON dictionary or raise
    RunDataError."""
    path = Path(path)
    raw = _read_json(path, "scorecard")
    try:
        return check_scorecard(raw, str(path)).model_dump(mode="json")
    except ScorecardError as e:
        raise RunDataError(str(e)) from e


# Per task: the list of length n that names the samples, and the per-job lists of length n the
# pages read (the shapes the runners write in samples.json).
SAMPLE_FIELDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "classification": ("labels", ("robust",)),
    "hash_matching": ("ids", ("success", "claimed", "png", "distance", "ssim")),
    "forgery_localization": ("ids", ()),
}


def read_samples(run: Run) -> dict[str, Any]:
    """The per-sample side file (``samples.json``), checked for the fields the pages use."""
    path = run.file("samples", SAMPLES)
    raw = _read_json(path, "per-sample outcomes (samples.json)")
    if not isinstance(raw, dict):
        raise RunDataError(f"{path}: not an arange samples file (top level is not an object)")
    names, per_job = SAMPLE_FIELDS.get(run.task, ("labels", ()))
    n = raw.get("n")
    listed = raw.get(names)
    jobs = raw.get("jobs")
    if not isinstance(n, int) or not isinstance(listed, list) or len(listed) != n \
            or not isinstance(jobs, dict):
        raise RunDataError(f"{path}: damaged samples file (needs n, {names} of length n and "
                           "jobs); run the scenario again to rewrite it")
    for job_id, rec in jobs.items():
        for key in per_job:
            values = rec.get(key) if isinstance(rec, dict) else None
            if not isinstance(values, list) or len(values) != n:
                raise RunDataError(f"{path}: jobs.{job_id}.{key}: missing or not {n} values")
    return raw


def examples_dir(run: Run) -> Path:
    return run.file("examples", EXAMPLES)


def example_file(run: Run, job_id: str) -> Path:
    safe = Path(job_id).name  # job ids are file names; never let one walk out of the folder
    return examples_dir(run) / f"{safe}.npz"


# ---------------------------------------------------------------------------- gates

@dataclass(frozen=True)
class GateInfo:
    """Gate results of a run: evaluated (``gates.json``) or only the scenario's rules."""

    status: str                  # pass | fail | not evaluated | no gates | unreadable
    rows: list[dict[str, Any]]
    source: str                  # "gates.json" | "scenario"
    message: str = ""


_PASS = {"pass", "passed", "ok", "true", "success"}
_FAIL = {"fail", "failed", "false", "error", "failure"}


def _norm_status(value: Any) -> str | None:
    if isinstance(value, bool):
        return "pass" if value else "fail"
    if isinstance(value, str):
        v = value.strip().lower()
        if v in _PASS:
            return "pass"
        if v in _FAIL:
            return "fail"
        return v or None
    return None


def _scalar(value: Any) -> Any:
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return json.dumps(value, sort_keys=True, default=str)


def read_gates(run: Run) -> GateInfo:
    """``gates.json`` when ``arange gate`` has written one, else the scenario's rules.

    ``gates.json`` may be a list of gate results or an object holding one under ``results``
    (or ``gates``) with an overall ``passed``/``status``/``verdict``; each result is shown with
    its fields, and its pass/fail is read from ``status`` or ``passed``.
    """
    path = run.path / GATES
    if path.exists():
        try:
            raw = _read_json(path, "gate results")
        except RunDataError as e:
            return GateInfo("unreadable", [], GATES, str(e))
        overall: str | None = None
        rows_raw: Any = raw
        if isinstance(raw, dict):
            rows_raw = next((raw[k] for k in ("results", "gates", "rules") if k in raw), [])
            for key in ("passed", "status", "verdict", "result"):
                if key in raw:
                    overall = _norm_status(raw[key])
                    break
        if not isinstance(rows_raw, list) or not all(isinstance(r, dict) for r in rows_raw):
            return GateInfo("unreadable", [], GATES,
                            f"{path}: gate results must be a list of objects")
        rows = []
        for r in rows_raw:
            status = _norm_status(r.get("status", r.get("passed")))
            checks = r.get("checks")
            parts = [c for c in checks if isinstance(c, dict)] if isinstance(checks, list) \
                else []
            head = {k: _scalar(v) for k, v in r.items() if k != "checks"}
            if not parts:  # one row per rule
                rows.append(head | {"status": status or "?"})
            for c in parts:  # one row per checked bound of the rule
                row = {("gate" if k == "name" else k): v for k, v in head.items()
                       if k not in ("status", "passed")}
                row |= {k: _scalar(v) for k, v in c.items()}
                row["status"] = _norm_status(c.get("status", c.get("passed"))) or status or "?"
                rows.append(row)
        if overall is None:
            statuses = {r["status"] for r in rows}
            overall = "fail" if "fail" in statuses else "pass" if rows else "no gates"
        return GateInfo(overall, rows, GATES)
    scenario = run.provenance.get("scenario")
    rules = scenario.get("gates") if isinstance(scenario, dict) else None
    if not isinstance(rules, list) or not rules:
        return GateInfo("no gates", [], "scenario", "the scenario defines no gates")
    rows = []
    for r in rules:
        if isinstance(r, dict):
            row = {k: _scalar(v) for k, v in r.items() if v is not None}
            row["status"] = "not evaluated"
            rows.append(row)
    return GateInfo("not evaluated", rows, "scenario",
                    "no gates.json in the run folder: run `arange gate` on this run to evaluate "
                    "these rules")


# ---------------------------------------------------------------------------- summaries

def pick(row: dict[str, Any], *names: str) -> Any:
    """The first of ``names`` that ``row`` holds a value for."""
    for name in names:
        if name in row and row[name] is not None:
            return row[name]
    return None


def rows_of(card: dict[str, Any] | None, key: str) -> list[dict[str, Any]]:
    """``card[key]`` as a list of dicts (anything else is dropped)."""
    value = card.get(key) if isinstance(card, dict) else None
    if not isinstance(value, list):
        return []
    return [r for r in value if isinstance(r, dict)]


def number(value: Any) -> float | None:
    """A finite float, or None for anything that is not one."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    f = float(value)
    return f if math.isfinite(f) else None


def interval(value: Any) -> tuple[float, float] | None:
    if isinstance(value, (list, tuple)) and len(value) == 2:
        lo, hi = number(value[0]), number(value[1])
        if lo is not None and hi is not None:
            return lo, hi
    return None


def started(run: Run) -> dt.datetime | None:
    value = run.provenance.get("started")
    if not isinstance(value, str):
        return None
    try:
        return dt.datetime.fromisoformat(value)
    except ValueError:
        return None


def target_text(run: Run) -> str:
    """What was attacked, e.g. ``resnet20 on digits``."""
    scenario = run.provenance.get("scenario")
    target = scenario.get("target") if isinstance(scenario, dict) else None
    what = None
    if isinstance(target, dict):
        for key in ("model", "hash", "hasher", "detector", "name"):
            if isinstance(target.get(key), str):
                what = target[key]
                break
    dataset = run.provenance.get("dataset")
    if not isinstance(dataset, str) and isinstance(target, dict):
        ds = target.get("dataset")
        dataset = ds.get("name") if isinstance(ds, dict) else ds if isinstance(ds, str) else None
    if what and isinstance(dataset, str):
        return f"{what} on {dataset}"
    return what or (dataset if isinstance(dataset, str) else "?")


def check_counts(card: dict[str, Any]) -> dict[str, int]:
    counts = {"pass": 0, "warn": 0, "fail": 0, "skip": 0}
    for c in rows_of(card, "checks"):
        status = c.get("status")
        if isinstance(status, str) and status in counts:
            counts[status] += 1
    return counts


def classification_headline(card: dict[str, Any]) -> dict[str, Any]:
    clean = rows_of(card, "clean")
    clean_row = next((c for c in clean if c.get("defense") == "none"), clean[0] if clean else None)
    worst = [w for w in rows_of(card, "worst_case") if number(w.get("robust_accuracy")) is not None]
    low = min(worst, key=lambda w: w["robust_accuracy"]) if worst else None
    return {
        "clean accuracy": number(clean_row.get("accuracy")) if clean_row else None,
        "lowest robust accuracy": low["robust_accuracy"] if low else None,
        "where": f"{low.get('defense')} @ {low.get('eps_label')} ({low.get('norm')})"
        if low else "",
    }


def summary_row(run: Run, headline: dict[str, Any]) -> dict[str, Any]:
    """One row of the runs table; ``headline``: the task's few numbers for it."""
    when = started(run)
    row: dict[str, Any] = {
        "run": run.run_id,
        "scenario": run.name,
        "task": run.task if run.ok else "?",
        "target": target_text(run) if run.ok else "",
        "date": when.strftime("%Y-%m-%d %H:%M") if when else "",
        "arange": str(run.provenance.get("arange_version", "")),
        "gate": read_gates(run).status if run.ok else "-",
        "status": "ok" if run.ok else "unreadable",
    }
    if run.ok and run.card is not None:
        h = headline
        row["headline"] = ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{v}"
                                    for k, v in h.items() if v not in (None, ""))
        counts = check_counts(run.card)
        row["checks failed"] = counts["fail"]
        row["checks warned"] = counts["warn"]
    else:
        row["headline"] = ""
        row["checks failed"] = None
        row["checks warned"] = None
    return row

