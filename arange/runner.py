"""The runner: scenario -> jobs -> budget-checked attack results -> scorecard.

The runner, not the attack, decides what counts: it projects every proposed adversarial example
onto the threat model (:func:`arange.threat.enforce`), re-runs the target on exactly what it will
score, and only then counts a success. Each job (defense x attack x eps) is written atomically to
``OUT/jobs/`` as it finishes, keyed by a content hash, so an interrupted run resumes without
redoing finished jobs.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from . import __version__
from .attacks.base import Misclassification, input_gradients_only
from .checks import ExtraJob, evaluate_extra_jobs, plan_extra_jobs, probe_model, run_row_checks
from .data import ImageDataset, load_dataset
from .errors import ArangeError
from .expr import format_eps
from .models import build_model, load_weights
from .registry import ATTACKS, DEFENSES
from .scenario import AttackSpec, DefenseSpec, Scenario
from .scorecard import CleanRow, Provenance, ResultRow, Scorecard, WorstCaseRow
from .stats import wilson_interval
from .store import atomic_write_bytes, atomic_write_json
from .threat import ThreatModel, enforce
from .zoo import Recipe, zoo_weights

log = logging.getLogger(__name__)
JOB_FORMAT = 1
EXAMPLES_PER_JOB = 8


def resolve_device(spec: str) -> torch.device:
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


@dataclass
class PreparedTarget:
    model: nn.Module
    data: ImageDataset
    weights_source: str
    weights_sha256: str
    model_info: dict[str, Any] = field(default_factory=dict)


def prepare_target(s: Scenario, device: torch.device, progress: bool = True) -> PreparedTarget:
    """Load the evaluation data and the model (training it in the zoo if needed)."""
    t = s.target
    data = load_dataset(t.dataset.name, t.dataset.split, **t.dataset.options).subset(t.samples)
    torch.manual_seed(s.seed)
    model = build_model(t.model, in_channels=data.channels, num_classes=data.num_classes,
                        image_size=data.image_size, mean=data.mean, std=data.std,
                        params=t.model_params)
    info: dict[str, Any] = {}
    if t.weights == "zoo":
        recipe = Recipe(**t.training.model_dump())
        zm = zoo_weights(t.model, t.model_params, t.dataset.name, t.dataset.options, recipe,
                         s.seed, device, progress=progress)
        sha = load_weights(model, zm.path)
        source, info = f"zoo:{zm.path.name}", zm.info
    elif t.weights == "random":
        sha, source = hashlib.sha256(b"random-init").hexdigest(), "random"
        info = {"note": "randomly initialised; for plumbing tests only"}
    else:
        sha = load_weights(model, t.weights)
        source = t.weights
    model.to(device).eval()
    return PreparedTarget(model, data, source, sha, info)


@dataclass(frozen=True)
class Job:
    defense: DefenseSpec
    attack: AttackSpec
    eps: float
    key: str
    suite: str | None = None  # the suite entry's label when this job is one of its components

    @property
    def job_id(self) -> str:
        eps = format_eps(self.eps).replace("/", "_")
        attack = self.attack.key.replace("/", "_")
        return f"{self.defense.key}__{attack}__{self.attack.norm.value}-{eps}"


def _job_context(s: Scenario, weights_sha: str, data_fp: str) -> dict[str, Any]:
    """What every job key covers besides the job itself."""
    return {"arange": __version__, "format": JOB_FORMAT, "weights": weights_sha,
            "data": data_fp, "seed": s.seed, "batch_size": s.target.batch_size,
            "quantize": s.target.quantize, "cascade": s.evaluation.cascade}


def _content_key(spec: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def suite_components(a: AttackSpec) -> list[AttackSpec]:
    """A suite entry's component attacks as attack entries labelled ``<suite label>/<name>``."""
    from .attacks.suites import SUITES

    suite = SUITES.create(str(a.suite), **a.params)
    return [AttackSpec(name=c.attack, label=f"{a.key}/{c.label}", norm=a.norm, eps=a.eps,
                       params=c.params) for c in suite.components(a.norm)]


def expand_jobs(s: Scenario, weights_sha: str, data_fp: str) -> list[Job]:
    """defense x attack x eps, each with a content key; in cascade mode a job's key also covers
    the jobs before it in the same (defense, norm, eps) cell, whose outcomes it depends on. A
    suite entry expands into one job per component; components always cascade within the suite
    (each attacks what the ones before it left unbroken), so their keys cover their
    predecessors too."""
    base = _job_context(s, weights_sha, data_fp)
    jobs: list[Job] = []
    chain: dict[tuple[str, str, float], list[str]] = {}
    for d in s.defenses:
        for a in s.attacks:
            components = suite_components(a) if a.suite is not None else [a]
            for eps in a.eps:
                cell = (d.key, a.norm.value, eps)
                before = chain.setdefault(cell, []) if s.evaluation.cascade else []
                inside: list[str] = list(before)
                for c in components:
                    spec = {**base, "defense": d.model_dump(mode="json"),
                            "attack": c.model_dump(mode="json", exclude={"eps"}), "eps": eps,
                            "after": list(inside if a.suite is not None else before)}
                    if a.suite is not None:
                        spec["suite"] = a.model_dump(mode="json", exclude={"eps"})
                    key = _content_key(spec)
                    jobs.append(Job(d, c, eps, key, suite=a.key if a.suite is not None
                                    else None))
                    inside.append(key)
                    if s.evaluation.cascade:
                        before.append(key)
    return jobs


@torch.inference_mode()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int,
            device: torch.device) -> torch.Tensor:
    preds = [model(x[i:i + batch_size].to(device)).argmax(1).cpu()
             for i in range(0, x.shape[0], batch_size)]
    return torch.cat(preds) if preds else torch.empty(0, dtype=torch.long)


def run_job(job: Job, model: nn.Module, data: ImageDataset, attack_mask: torch.Tensor,
            clean_pred: torch.Tensor, s: Scenario, device: torch.device,
            bar: Any = None) -> dict[str, Any]:
    """Attack the samples in ``attack_mask`` and return the job record (per-sample outcomes)."""
    attack = ATTACKS.create(str(job.attack.name), **job.attack.params)
    threat = ThreatModel(job.attack.norm, job.eps, quantize=s.target.quantize)
    objective = Misclassification()
    gen = torch.Generator(device=device).manual_seed(int(job.key[:12], 16))
    n = len(data)
    adv_pred = clean_pred.clone()
    perturbation = torch.zeros(n)
    violations = torch.zeros(n, dtype=torch.bool)
    queries = torch.zeros(n)
    idx_all = attack_mask.nonzero().squeeze(1)
    bs = s.target.batch_size
    examples: dict[str, list[np.ndarray]] = {"index": [], "clean": [], "adv": [],
                                             "clean_prob": [], "adv_prob": []}
    t0 = time.perf_counter()
    for start in range(0, idx_all.numel(), bs):
        idx = idx_all[start:start + bs]
        xb, yb = data.x[idx].to(device), data.y[idx].to(device)
        with input_gradients_only(model):
            result = attack.run(model, xb, yb, threat, objective, gen)
        enf = enforce(xb, result.x_adv, threat)
        with torch.inference_mode():
            logits = model(enf.x_adv)
            pred = logits.argmax(1).cpu()
        adv_pred[idx] = pred
        perturbation[idx] = enf.perturbation.float().cpu()
        violations[idx] = enf.violations.cpu()
        if result.queries is not None:
            queries[idx] = result.queries.float().cpu()
        if len(examples["index"]) < EXAMPLES_PER_JOB:
            take = EXAMPLES_PER_JOB - len(examples["index"])
            examples["index"].extend(idx[:take].tolist())
            examples["clean"].extend(_to_uint8(xb[:take]))
            examples["adv"].extend(_to_uint8(enf.x_adv[:take]))
            with torch.inference_mode():  # confidences for the dashboard's gallery
                examples["clean_prob"].extend(_probs(model(xb[:take])))
            examples["adv_prob"].extend(_probs(logits[:take]))
        if bar is not None:
            bar.update(int(idx.numel()))
    seconds = time.perf_counter() - t0
    robust = attack_mask.clone() & (adv_pred == data.y)
    # Samples not attacked keep their status: clean-wrong ones are never robust; in cascade
    # mode samples already broken by an earlier attack stay broken.
    return {"format": JOB_FORMAT, "key": job.key, "job_id": job.job_id,
            "attack_kind": attack.kind, "params": attack.params(), "seconds": seconds,
            "attacked": attack_mask.tolist(), "adv_pred": adv_pred.tolist(),
            "robust": robust.tolist(), "perturbation": perturbation.tolist(),
            "violations": violations.tolist(),
            "queries": queries.tolist() if attack.kind != "white-box" else None,
            "_examples": examples}


def _to_uint8(x: torch.Tensor) -> list[np.ndarray]:
    arr = (x.detach().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    return list(arr)


def _probs(logits: torch.Tensor) -> list[np.ndarray]:
    return list(logits.float().softmax(1).cpu().numpy().astype(np.float32))


def _save_examples(path: Path, record: dict[str, Any], data: ImageDataset,
                   clean_pred: torch.Tensor) -> None:
    ex = record.pop("_examples")
    if not ex["index"]:
        return
    import io
    idx = np.asarray(ex["index"], dtype=np.int64)
    buf = io.BytesIO()
    np.savez_compressed(buf, index=idx, clean=np.stack(ex["clean"]), adv=np.stack(ex["adv"]),
                        label=data.y.numpy()[idx], clean_pred=clean_pred.numpy()[idx],
                        adv_pred=np.asarray(record["adv_pred"], dtype=np.int64)[idx],
                        clean_prob=np.stack(ex["clean_prob"]), adv_prob=np.stack(ex["adv_prob"]))
    atomic_write_bytes(path, buf.getvalue())


def _load_job(path: Path, key: str) -> dict[str, Any] | None:
    try:
        rec = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if rec.get("format") != JOB_FORMAT or rec.get("key") != key:
        return None
    return rec  # type: ignore[no-any-return]


def _git_sha() -> str | None:
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return None
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _libraries() -> dict[str, str]:
    libs = {}
    for name in ("torchvision", "numpy", "adversarial-robustness-toolbox", "foolbox",
                 "pydantic", "scikit-learn"):
        try:
            libs[name] = version(name)
        except PackageNotFoundError:
            pass
    return libs


def _row(job: Job, rec: dict[str, Any], data: ImageDataset, clean_acc: float,
         cascade: bool) -> ResultRow:
    n = len(data)
    robust = torch.tensor(rec["robust"], dtype=torch.bool)
    attacked = torch.tensor(rec["attacked"], dtype=torch.bool)
    pert = torch.tensor(rec["perturbation"])
    n_att = int(attacked.sum())
    broken = int((attacked & ~robust).sum())
    k = int(robust.sum())
    q = rec.get("queries")
    return ResultRow(
        job_id=job.job_id, defense=job.defense.key, attack=job.attack.key,
        attack_name=str(job.attack.name), kind=rec["attack_kind"], norm=job.attack.norm.value,
        eps=job.eps, eps_label=format_eps(job.eps), params=rec["params"], n=n,
        n_attacked=n_att, cumulative=cascade, clean_accuracy=clean_acc,
        robust_accuracy=k / n, robust_accuracy_ci=wilson_interval(k, n),
        attack_success_rate=broken / n_att if n_att else 0.0,
        perturbation_max=float(pert[attacked].max()) if n_att else 0.0,
        perturbation_mean=float(pert[attacked].mean()) if n_att else 0.0,
        budget_violations=int(torch.tensor(rec["violations"]).sum()),
        queries_mean=float(torch.tensor(q)[attacked].mean()) if q is not None and n_att else None,
        seconds=round(float(rec["seconds"]), 4))


def run_scenario(s: Scenario, out: str | Path | None = None, *, device: str | None = None,
                 resume: bool = True, progress: bool = True,
                 scenario_path: str | Path | None = None) -> Scorecard:
    """Run every job of ``s`` and write ``OUT/scorecard.json`` (see the module docstring)."""
    from tqdm.auto import tqdm

    started = dt.datetime.now(dt.timezone.utc)
    t_start = time.perf_counter()
    dev = resolve_device(device or s.device)
    target = prepare_target(s, dev, progress=progress)  # bad data/weights fail before any write
    data, model = target.data, target.model
    data_fp = data.fingerprint()
    jobs = expand_jobs(s, target.weights_sha256, data_fp)

    out_dir = Path(out) if out is not None else Path("runs") / s.name
    jobs_dir = out_dir / "jobs"
    jobs_dir.mkdir(parents=True, exist_ok=True)

    defended: dict[str, nn.Module] = {}
    clean_pred: dict[str, torch.Tensor] = {}
    clean_rows, checks = [], []
    probe_n = min(64, len(data))
    for d in s.defenses:
        was_training = model.training
        m = DEFENSES.create(d.name, **d.params).wrap(model).to(dev).eval()
        defended[d.key] = m
        clean_pred[d.key] = predict(m, data.x, s.target.batch_size, dev)
        k = int((clean_pred[d.key] == data.y).sum())
        clean_rows.append(CleanRow(defense=d.key, n=len(data), accuracy=k / len(data),
                                   accuracy_ci=wilson_interval(k, len(data))))
        with input_gradients_only(m):
            checks += probe_model(m, data.x[:probe_n].to(dev), data.y[:probe_n].to(dev), d.key,
                                  was_training)

    clean_acc = {r.defense: r.accuracy for r in clean_rows}
    remaining: dict[tuple[str, str, float], torch.Tensor] = {}
    records: list[tuple[Job, dict[str, Any]]] = []
    finished: dict[str, dict[str, Any]] = {}
    for job in jobs if resume else []:
        rec = _load_job(jobs_dir / f"{job.job_id}.json", job.key)
        if rec is not None:
            finished[job.key] = rec
    todo = [j for j in jobs if j.key not in finished]
    reused = len(finished)
    if reused:
        log.info("resuming: %d of %d jobs already finished in %s", reused, len(jobs), jobs_dir)
    correct = {k: v == data.y for k, v in clean_pred.items()}
    total = sum(int(correct[j.defense.key].sum()) for j in todo)
    bar = tqdm(total=total, desc="attacking", unit="img", disable=not progress, dynamic_ncols=True)
    suite_left: dict[tuple[tuple[str, str, float], str], torch.Tensor] = {}
    for job in jobs:
        cell = (job.defense.key, job.attack.norm.value, job.eps)
        mask = remaining.get(cell, correct[job.defense.key]) if s.evaluation.cascade \
            else correct[job.defense.key]
        if job.suite is not None:  # suite components attack what earlier components left
            mask = suite_left.get((cell, job.suite), mask)
        path = jobs_dir / f"{job.job_id}.json"
        rec = finished.get(job.key)
        if rec is None:
            bar.set_postfix_str(job.job_id)
            rec = run_job(job, defended[job.defense.key], data, mask, clean_pred[job.defense.key],
                          s, dev, bar)
            _save_examples(out_dir / "examples" / f"{job.job_id}.npz", rec, data,
                           clean_pred[job.defense.key])
            atomic_write_json(path, rec)
        records.append((job, rec))
        if s.evaluation.cascade:
            remaining[cell] = torch.tensor(rec["robust"], dtype=torch.bool)
        if job.suite is not None:
            suite_left[(cell, job.suite)] = torch.tensor(rec["robust"], dtype=torch.bool)
    bar.close()

    rows, suite_samples = _rows_with_suites(records, data, clean_acc, s)
    worst = _worst_case(records, data, s)
    extra = _run_extra_jobs(s, records, rows, defended, data, correct, clean_pred, dev,
                            jobs_dir, resume, _job_context(s, target.weights_sha256, data_fp))
    reused += sum(1 for _, rec in extra if rec.get("_reused"))
    checks = run_row_checks(rows) + checks + evaluate_extra_jobs(s, extra)

    samples: dict[str, Any] = {
        "schema_version": 1, "n": len(data), "labels": data.y.tolist(),
        "clean_pred": {k: v.tolist() for k, v in clean_pred.items()},
        "jobs": {j.job_id: {"robust": r["robust"], "adv_pred": r["adv_pred"],
                            "perturbation": r["perturbation"],
                            "attacked": r["attacked"]} for j, r in records}}
    samples["jobs"].update(suite_samples)
    atomic_write_json(out_dir / "samples.json", samples)

    end = dt.datetime.now(dt.timezone.utc)
    prov = Provenance(
        arange_version=__version__, git_sha=_git_sha(), python=sys.version.split()[0],
        platform=platform.platform(), torch_version=torch.__version__, libraries=_libraries(),
        device=str(dev), seed=s.seed, started=started.isoformat(), finished=end.isoformat(),
        seconds=round(time.perf_counter() - t_start, 3), weights_source=target.weights_source,
        weights_sha256=target.weights_sha256, model_info=target.model_info,
        dataset=data.name, dataset_fingerprint=data_fp,
        scenario_path=str(scenario_path) if scenario_path else None,
        scenario=s.model_dump(mode="json"), jobs_reused=reused)
    card = Scorecard(task=s.task, name=s.name, provenance=prov, clean=clean_rows, results=rows,
                     worst_case=worst, checks=checks,
                     files={"samples": "samples.json", "examples": "examples"})
    card.save(out_dir / "scorecard.json")
    return card


def _rows_with_suites(records: list[tuple[Job, dict[str, Any]]], data: ImageDataset,
                      clean_acc: dict[str, float], s: Scenario
                      ) -> tuple[list[ResultRow], dict[str, dict[str, Any]]]:
    """Result rows in job order; after the components of each suite run, a row for the suite as a
    whole (its per-sample worst case). Component rows are cumulative within their suite."""
    rows: list[ResultRow] = []
    suite_samples: dict[str, dict[str, Any]] = {}
    group: list[tuple[Job, dict[str, Any]]] = []

    def flush() -> None:
        if group:
            row, per_sample = _suite_row(group, data, clean_acc[group[0][0].defense.key], s)
            rows.append(row)
            suite_samples[row.job_id] = per_sample
            group.clear()

    for job, rec in records:
        if group and (job.suite is None or (job.defense.key, job.suite, job.eps) != (
                group[0][0].defense.key, group[0][0].suite, group[0][0].eps)):
            flush()
        rows.append(_row(job, rec, data, clean_acc[job.defense.key],
                         s.evaluation.cascade or job.suite is not None))
        if job.suite is not None:
            group.append((job, rec))
    flush()
    return rows, suite_samples


def _suite_row(group: list[tuple[Job, dict[str, Any]]], data: ImageDataset, clean_acc: float,
               s: Scenario) -> tuple[ResultRow, dict[str, Any]]:
    """The suite as one attack: robust where every component failed; each broken sample keeps
    the perturbation and prediction of the component that broke it."""
    first_job = group[0][0]
    spec = next(a for a in s.attacks if a.suite is not None and a.key == first_job.suite)
    n = len(data)
    attacked = torch.tensor(group[0][1]["attacked"], dtype=torch.bool)
    robust = torch.tensor(group[-1][1]["robust"], dtype=torch.bool)
    pert = torch.zeros(n)
    adv_pred = torch.tensor(group[0][1]["adv_pred"])
    violations = 0
    for _, rec in group:  # later components only attack what earlier ones left unbroken
        att = torch.tensor(rec["attacked"], dtype=torch.bool)
        pert[att] = torch.tensor(rec["perturbation"])[att]
        adv_pred[att] = torch.tensor(rec["adv_pred"])[att]
        violations += int(torch.tensor(rec["violations"]).sum())
    from .attacks.suites import SUITES
    params = SUITES.create(str(spec.suite), **spec.params).params()
    n_att = int(attacked.sum())
    k = int(robust.sum())
    eps_label = format_eps(first_job.eps)
    job_id = f"{first_job.defense.key}__{spec.key}__{spec.norm.value}-" \
        f"{eps_label.replace('/', '_')}"
    row = ResultRow(
        job_id=job_id, defense=first_job.defense.key, attack=spec.key,
        attack_name=f"suite:{spec.suite}", kind="white-box", norm=spec.norm.value,
        eps=first_job.eps, eps_label=eps_label, params=params, n=n, n_attacked=n_att,
        cumulative=s.evaluation.cascade, clean_accuracy=clean_acc, robust_accuracy=k / n,
        robust_accuracy_ci=wilson_interval(k, n),
        attack_success_rate=int((attacked & ~robust).sum()) / n_att if n_att else 0.0,
        perturbation_max=float(pert[attacked].max()) if n_att else 0.0,
        perturbation_mean=float(pert[attacked].mean()) if n_att else 0.0,
        budget_violations=violations, queries_mean=None,
        seconds=round(sum(float(r["seconds"]) for _, r in group), 4))
    return row, {"robust": robust.tolist(), "adv_pred": adv_pred.tolist(),
                 "perturbation": pert.tolist(), "attacked": attacked.tolist()}


def _run_extra_jobs(s: Scenario, records: list[tuple[Job, dict[str, Any]]],
                    rows: list[ResultRow], defended: dict[str, nn.Module], data: ImageDataset,
                    correct: dict[str, torch.Tensor], clean_pred: dict[str, torch.Tensor],
                    dev: torch.device, jobs_dir: Path, resume: bool, context: dict[str, Any]
                    ) -> list[tuple[ExtraJob, dict[str, Any]]]:
    """Run the attack jobs that validity checks need (a large-eps sanity run, a re-run with more
    steps), on a subset of samples, through the same path as every other job; they are labelled
    ``check-...`` in ``jobs/`` and resume like the others."""
    plan = plan_extra_jobs(s, [(j.defense, j.attack, j.eps, r) for j, r in records
                               if j.suite is None], data.y, correct, int(data.x[0].numel()))
    if plan:
        log.info("validity checks: %d extra job(s) on at most %d samples each", len(plan),
                 s.evaluation.checks.samples)
    done = []
    for ej in plan:
        key = _content_key({**context, **ej.key_material})
        job = Job(ej.defense, ej.attack, ej.eps, key)
        path = jobs_dir / f"{job.job_id}.json"
        rec = _load_job(path, key) if resume else None
        if rec is None:
            rec = run_job(job, defended[ej.defense.key], data, ej.mask,
                          clean_pred[ej.defense.key], s, dev)
            rec.pop("_examples", None)
            rec["check"] = ej.check
            atomic_write_json(path, rec)
        else:
            rec["_reused"] = True  # counted in provenance.jobs_reused; never written back
        done.append((ej, rec))
    return done


def _worst_case(records: list[tuple[Job, dict[str, Any]]], data: ImageDataset,
                s: Scenario) -> list[WorstCaseRow]:
    """Per-sample worst case over all attacks at each (defense, norm, eps)."""
    cells: dict[tuple[str, str, float], list[tuple[Job, dict[str, Any]]]] = {}
    for job, rec in records:
        cells.setdefault((job.defense.key, job.attack.norm.value, job.eps), []).append((job, rec))
    rows = []
    n = len(data)
    for (defense, norm, eps), items in cells.items():
        robust = torch.ones(n, dtype=torch.bool)
        for _, rec in items:
            robust &= torch.tensor(rec["robust"], dtype=torch.bool)
        k = int(robust.sum())
        rows.append(WorstCaseRow(defense=defense, norm=norm, eps=eps, eps_label=format_eps(eps),
                                 n=n, attacks=[j.attack.key for j, _ in items],
                                 robust_accuracy=k / n, robust_accuracy_ci=wilson_interval(k, n)))
    rows.sort(key=lambda r: ([d.key for d in s.defenses].index(r.defense), r.norm, r.eps))
    return rows
