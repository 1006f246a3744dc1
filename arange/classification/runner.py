"""The runner: scenario -> jobs -> budget-checked attack results -> scorecard.

The runner, not the attack, decides what counts: it projects every proposed adversarial example
onto the threat model (:func:`arange.threat.enforce`), re-runs the target on exactly what it will
score, and only then counts a success. Each job (defense x attack x eps) is written atomically to
``OUT/jobs/`` as it finishes, keyed by a content hash, so an interrupted run resumes without
redoing finished jobs.
"""

from __future__ import annotations

import copy
import hashlib
import io
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from arange._version import __version__
from arange.attacks.base import Misclassification, input_gradients_only
from arange.core.attacking import attack_in_batches
from arange.core.driver import resolve_device
from arange.core.executors import Chain
from arange.core.task import content_key
from arange.data import ImageDataset
from arange.defenses.base import Defense, DefenseContext
from arange.errors import ArangeError
from arange.expr import format_eps
from arange.registry import ATTACKS, DEFENSES
from arange.speed import BatchSize, place_batch
from arange.stats import wilson_interval
from arange.threat import ThreatModel
from arange.zoo import Recipe, cache_dir

from .checks import (
    AUTOCAST,
    ExtraJob,
    check_above_chance,
    check_adaptive,
    check_deployed,
    evaluate_extra_jobs,
    mark_discredited,
    plan_extra_jobs,
    probe_model,
    run_row_checks,
)
from .scenario import AttackSpec, DefenseSpec, Scenario
from .scorecard import (
    CleanRow,
    Provenance,
    ResultRow,
    Scorecard,
    WorstCaseRow,
    format_summary,
)
from .target import PreparedTarget, prepare_target

if TYPE_CHECKING:
    from pathlib import Path

    from arange.core.driver import RunState

log = logging.getLogger(__name__)
JOB_FORMAT = 1
EXAMPLES_PER_JOB = 8


@dataclass
class Defended:
    """One defense built around the target: the model that is scored and, for defenses that
    need one, the view adaptive attacks differentiate (BPDA/EOT)."""

    spec: DefenseSpec
    defense: Defense
    model: nn.Module
    adaptive_model: nn.Module | None
    info: dict[str, Any] = field(default_factory=dict)
    # The same defense around the deployed runtime (an ONNX target scored by onnxruntime):
    # what the verdicts come from; ``model`` (around the twin) is what attacks differentiate.
    deployed: nn.Module | None = None

    @property
    def scorer(self) -> nn.Module:
        return self.deployed if self.deployed is not None else self.model

    def attack_model(self, adaptive: str | None) -> nn.Module:
        if adaptive is None:
            return self.model
        if self.adaptive_model is None:
            raise ArangeError(f"defense {self.spec.key!r} has no adaptive view for {adaptive}")
        return self.adaptive_model


def build_defenses(s: Scenario, target: PreparedTarget, dev: torch.device,
                   progress: bool = True) -> dict[str, Defended]:
    """Build every defense of the scenario around the target (training cached ones if needed)."""
    t = s.target
    out: dict[str, Defended] = {}
    for d in s.defenses:
        defense = DEFENSES.create(d.name, **d.params)
        ctx = DefenseContext(
            model=target.model, model_name=_model_label(target),
            model_params=t.model_params,
            dataset=t.dataset.name, dataset_options=t.dataset.options,
            recipe=Recipe(**t.training.model_dump()), weights_sha256=target.weights_sha256,
            seed=s.seed, device=dev, progress=progress)
        model = defense.build(ctx).to(dev).eval()
        adaptive = defense.adaptive(model)
        if adaptive is not None:
            adaptive = adaptive.to(dev).eval()
        info = {"name": d.name, "params": defense.params(), "differentiable":
                defense.differentiable, "randomized": defense.randomized,
                "adaptive_method": defense.adaptive_method, **ctx.info}
        out[d.key] = Defended(d, defense, model, adaptive, info,
                              around_runtime(model, target, d.key))
    return out


def _model_label(target: PreparedTarget) -> str:
    """The target's name in defense cache files: the registry name, or for a brought model its
    format and weights hash (its spelling holds a path)."""
    src = target.source
    return src.name if src.registry else f"{src.kind}-{target.weights_sha256[:16]}"


def around_runtime(model: nn.Module, target: PreparedTarget, key: str) -> nn.Module | None:
    """The defended model with the twin replaced by the deployed runtime (a copy sharing
    everything else), or None when the target has no separate runtime."""
    if target.runtime is None:
        return None
    scorer = copy.deepcopy(model, memo={id(target.model): target.runtime})
    if not any(m is target.runtime for m in scorer.modules()):
        raise ArangeError(f"defense {key!r} does not use the target model it was given, so "
                          "the deployed runtime cannot score it")
    return scorer.eval()


def train_defenses(s: Scenario, device: str | None = None, only: list[str] | None = None,
                   progress: bool = True) -> dict[str, dict[str, Any]]:
    """Build (train, or find cached) the models of the scenario's training defenses; return
    their provenance by defense label. ``only`` restricts to these labels or names."""
    keys = {d.key for d in s.defenses} | {d.name for d in s.defenses}
    for name in only or []:
        if name not in keys:
            raise ArangeError(f"--defense {name!r}: the scenario has no such defense (it has "
                              f"{', '.join(d.key for d in s.defenses)})")
    chosen = [d for d in s.defenses if DEFENSES.get(d.name).trains
              and (not only or d.key in only or d.name in only)]
    if not chosen:
        return {}
    dev = resolve_device(device or s.device)
    target = prepare_target(s, dev, progress=progress)
    sub = s.model_copy(update={"defenses": chosen})
    out = {}
    for key, d in build_defenses(sub, target, dev, progress=progress).items():
        info = dict(d.info)
        weights = str(info.get("weights", ""))
        if weights.startswith("zoo:"):
            info["path"] = str(cache_dir() / "zoo" / weights.removeprefix("zoo:"))
        out[key] = info
    return out


def _seed_defense_randomness(key: str) -> None:
    """Randomised defenses draw from torch's global generator: seed it from the job's key so a
    resumed or distributed run reproduces the same draws."""
    torch.manual_seed(int(key[:12], 16))


@dataclass(frozen=True)
class Job:
    defense: DefenseSpec
    attack: AttackSpec
    eps: float
    key: str
    suite: str | None = None  # the suite entry's label when this job is one of its components
    adaptive: str | None = None  # "bpda" / "eot" / "bpda+eot": attack the defense's adaptive view
    adapts: str | None = None    # the attack label of the ordinary job this one adapts
    fp32: bool = False           # run in full precision even under evaluation.autocast
    check: str | None = None     # the validity check this extra job serves (no examples saved)

    @property
    def job_id(self) -> str:
        eps = format_eps(self.eps).replace("/", "_")
        attack = self.attack.key.replace("/", "_")
        return f"{self.defense.key}__{attack}__{self.attack.norm.value}-{eps}"


def _job_context(s: Scenario, weights_sha: str, data_fp: str) -> dict[str, Any]:
    """What every job key covers besides the job itself."""
    return {"arange": __version__, "format": JOB_FORMAT, "weights": weights_sha,
            "data": data_fp, "seed": s.seed, "batch_size": s.target.batch_size,
            "quantize": s.target.quantize, "cascade": s.evaluation.cascade,
            "autocast": s.evaluation.autocast}


def suite_components(a: AttackSpec) -> list[AttackSpec]:
    """A suite entry's component attacks as attack entries labelled ``<suite label>/<name>``."""
    from arange.attacks.suites import SUITES

    suite = SUITES.create(str(a.suite), **a.params)
    # built from validated parts; the '/' of the label never reaches a file name (job_id)
    return [AttackSpec.model_construct(name=c.attack, suite=None, label=f"{a.key}/{c.label}",
                                       norm=a.norm, eps=a.eps, params=c.params)
            for c in suite.components(a.norm)]


def attack_entries(s: Scenario, d: DefenseSpec) -> list[tuple[AttackSpec, str | None]]:
    """The scenario's attacks against defense ``d``, then, when ``d`` declares itself
    non-differentiable or randomised, an adaptive twin (BPDA/EOT, labelled ``<attack>+<method>``)
    of every gradient-based attack and suite."""
    entries: list[tuple[AttackSpec, str | None]] = [(a, None) for a in s.attacks]
    method = DEFENSES.create(d.name, **d.params).adaptive_method
    if method is None:
        return entries
    for a in s.attacks:
        if a.suite is None and ATTACKS.get(str(a.name)).kind != "white-box":
            continue
        entries.append((a.model_copy(update={"label": f"{a.key}+{method}"}), method))
    return entries


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
        for a, method in attack_entries(s, d):
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
                    if method is not None:
                        spec["adaptive"] = method
                    key = content_key(spec)
                    jobs.append(Job(d, c, eps, key, suite=a.key if a.suite is not None
                                    else None, adaptive=method,
                                    adapts=a.key.rsplit("+", 1)[0] if method else None))
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


def run_job(job: Job, defended: Defended, data: ImageDataset, attack_mask: torch.Tensor,
            clean_pred: torch.Tensor, s: Scenario, device: torch.device,
            bar: Any = None, batch: BatchSize | None = None) -> dict[str, Any]:
    """Attack the samples in ``attack_mask`` and return the job record (per-sample outcomes).

    The attack runs on the defense's adaptive view for adaptive jobs; what counts is always the
    defended model's own output on the budget-enforced example (:mod:`arange.core.attacking`;
    ``batch`` remembers a size halved after running out of memory for later jobs)."""
    model, scorer = defended.model, defended.scorer
    attacked_model = defended.attack_model(job.adaptive)
    # bf16 autocast for the attack only: the runner scores every example in full precision.
    bf16 = s.evaluation.autocast == "bf16" and not job.fp32
    _seed_defense_randomness(job.key)
    attack = ATTACKS.create(str(job.attack.name), **job.attack.params)
    threat = ThreatModel(job.attack.norm, job.eps, quantize=s.target.quantize)
    gen = torch.Generator(device=device).manual_seed(int(job.key[:12], 16))
    n = len(data)
    adv_pred = clean_pred.clone()
    twin_pred = clean_pred.clone() if defended.deployed is not None else None
    perturbation = torch.zeros(n)
    violations = torch.zeros(n, dtype=torch.bool)
    queries = torch.zeros(n)
    batch = batch or BatchSize.resolve(s.target.batch_size, device)
    examples: dict[str, list[np.ndarray]] = {"index": [], "clean": [], "adv": [],
                                             "clean_prob": [], "adv_prob": []}

    def load(idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return place_batch(data.x[idx], device), data.y[idx].to(device)

    def score(x_adv: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return scorer(x_adv)  # type: ignore[no-any-return]

    t0 = time.perf_counter()
    for b in attack_in_batches(attack, attacked_model, attack_mask.nonzero().squeeze(1), load,
                               threat, Misclassification(), gen, batch, bf16=bf16, score=score):
        idx, logits = b.index, b.score
        adv_pred[idx] = logits.argmax(1).cpu()
        if twin_pred is not None:
            with torch.inference_mode():
                twin_pred[idx] = model(b.x_adv).argmax(1).cpu()
        perturbation[idx] = b.enforced.perturbation.float().cpu()
        violations[idx] = b.enforced.violations.cpu()
        if b.queries is not None:
            queries[idx] = b.queries.float().cpu()
        if len(examples["index"]) < EXAMPLES_PER_JOB:
            take = EXAMPLES_PER_JOB - len(examples["index"])
            examples["index"].extend(idx[:take].tolist())
            examples["clean"].extend(_to_uint8(b.x[:take]))
            examples["adv"].extend(_to_uint8(b.x_adv[:take]))
            examples["clean_prob"].extend(_probs(score(b.x[:take])))  # for the gallery
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
            "batch_size": batch.size, "_examples": examples,
            "twin_pred": twin_pred.tolist() if twin_pred is not None else None}


def _to_uint8(x: torch.Tensor) -> list[np.ndarray]:
    arr = (x.detach().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    return list(arr)


def _probs(logits: torch.Tensor) -> list[np.ndarray]:
    return list(logits.float().softmax(1).cpu().numpy().astype(np.float32))


def examples_npz(record: dict[str, Any], data: ImageDataset, clean_pred: torch.Tensor
                 ) -> bytes | None:
    """The job's example pairs as ``.npz`` bytes (``None`` when it attacked nothing)."""
    ex = record.pop("_examples")
    if not ex["index"]:
        return None
    idx = np.asarray(ex["index"], dtype=np.int64)
    buf = io.BytesIO()
    np.savez_compressed(buf, index=idx, clean=np.stack(ex["clean"]), adv=np.stack(ex["adv"]),
                        label=data.y.numpy()[idx], clean_pred=clean_pred.numpy()[idx],
                        adv_pred=np.asarray(record["adv_pred"], dtype=np.int64)[idx],
                        clean_prob=np.stack(ex["clean_prob"]), adv_prob=np.stack(ex["adv_prob"]))
    return buf.getvalue()


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
        seconds=round(float(rec["seconds"]), 4), adaptive=job.adaptive is not None,
        adaptive_method=job.adaptive, adapts=job.adapts,
        deployed_agreement=_agreement(rec, attacked))


def _agreement(rec: dict[str, Any], attacked: torch.Tensor) -> float | None:
    """Share of the attacked samples on which the attacked twin and the deployed runtime
    predict the same class (None without a separate runtime)."""
    twin = rec.get("twin_pred")
    if twin is None or not bool(attacked.any()):
        return None
    same = torch.tensor(twin) == torch.tensor(rec["adv_pred"])
    return round(float(same[attacked].float().mean()), 6)


@dataclass
class Prepared:
    """The classification run's state: the target, its defenses and their clean predictions."""

    scenario: Scenario
    device: torch.device
    target: PreparedTarget
    defended: dict[str, Defended]
    clean_pred: dict[str, torch.Tensor]
    batch: BatchSize
    data_fp: str
    jobs: list[Job] = field(default_factory=list)
    clean_rows: list[CleanRow] = field(default_factory=list)
    probe_checks: list[Any] = field(default_factory=list)
    # defense -> (clean samples where the twin agrees with the deployed runtime, n)
    twin_clean: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def data_classes(self) -> int:
        return self.target.data.num_classes

    @property
    def data(self) -> ImageDataset:
        return self.target.data

    @property
    def correct(self) -> dict[str, torch.Tensor]:
        return {k: v == self.data.y for k, v in self.clean_pred.items()}


def clean_predictions(s: Scenario, defended: dict[str, Defended], data: ImageDataset,
                      dev: torch.device) -> dict[str, torch.Tensor]:
    out = {}
    for d in s.defenses:
        _seed_defense_randomness(hashlib.sha256(f"clean:{d.key}".encode()).hexdigest())
        out[d.key] = predict(defended[d.key].scorer, data.x,
                             BatchSize.resolve(s.target.batch_size, dev).size, dev)
    return out


def prepare(s: Scenario, dev: torch.device, progress: bool = True) -> Prepared:
    """The target and its defenses, their clean predictions and the model probes."""
    target = prepare_target(s, dev, progress=progress)  # bad data/weights fail before any write
    data, model = target.data, target.model
    was_training = model.training
    defended = build_defenses(s, target, dev, progress=progress)
    clean_pred = clean_predictions(s, defended, data, dev)
    p = Prepared(s, dev, target, defended, clean_pred,
                 BatchSize.resolve(s.target.batch_size, dev), data.fingerprint())
    probe_n = min(64, len(data))
    for d in s.defenses:
        k = int((clean_pred[d.key] == data.y).sum())
        p.clean_rows.append(CleanRow(defense=d.key, n=len(data), accuracy=k / len(data),
                                     accuracy_ci=wilson_interval(k, len(data))))
        m = defended[d.key].model
        if defended[d.key].deployed is not None:
            twin = predict(m, data.x, p.batch.size, dev)
            p.twin_clean[d.key] = (int((twin == clean_pred[d.key]).sum()), len(data))
        with input_gradients_only(m):
            p.probe_checks += probe_model(m, data.x[:probe_n].to(dev), data.y[:probe_n].to(dev),
                                          d.key, was_training,
                                          defended[d.key].defense.adaptive_method)
    return p


def worker_prepare(s: Scenario, dev: torch.device, identity: dict[str, Any],
                   where: str) -> Prepared:
    """:func:`prepare` on a Ray worker: the same target and defenses, checked against the
    driver's weights, data and clean predictions (randomised defenses take the driver's)."""
    target = prepare_target(s, dev, progress=False)
    if target.weights_sha256 != identity["weights_sha256"]:
        raise ArangeError(f"{where}: the target's weights differ from the driver's "
                          f"(sha256 {target.weights_sha256[:12]} vs "
                          f"{identity['weights_sha256'][:12]}); give the weights as a file every "
                          "node can read, or share ARANGE_CACHE_DIR between nodes")
    if target.data.fingerprint() != identity["data_fingerprint"]:
        raise ArangeError(f"{where}: the evaluation data differ from the driver's; give a "
                          "dataset path every node can read")
    defended = build_defenses(s, target, dev, progress=False)
    driver_pred = {k: torch.tensor(v, dtype=torch.long)
                   for k, v in identity["clean_pred"].items()}
    batch = BatchSize.resolve(s.target.batch_size, dev)
    for key, d in defended.items():
        if getattr(d.defense, "randomized", False):
            continue  # its clean predictions depend on its draws, not on the build
        if not torch.equal(predict(d.scorer, target.data.x, batch.size, dev),
                           driver_pred[key]):
            raise ArangeError(f"{where}: defense {key!r} predicts differently from the "
                              "driver's on clean data; the nodes must build the same models "
                              "(same arange and library versions, same cached weights)")
    return Prepared(s, dev, target, defended, driver_pred, batch, identity["data_fingerprint"])


def identity(p: Prepared) -> dict[str, Any]:
    return {"weights_sha256": p.target.weights_sha256, "data_fingerprint": p.data_fp,
            "clean_pred": {k: v.tolist() for k, v in p.clean_pred.items()}}


def chain_groups(jobs: list[Job], cascade: bool) -> list[list[Job]]:
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
    return list(groups.values())


def plan(s: Scenario, p: Prepared) -> list[Chain]:
    """Chains: a cascade cell's jobs (or a suite's components) attack what the previous one left
    unbroken, so they run in order; different chains are independent. Each chain starts on the
    defense's clean-correct samples."""
    p.jobs = expand_jobs(s, p.target.weights_sha256, p.data_fp)
    correct = p.correct
    return [Chain(js, correct[js[0].defense.key])
            for js in chain_groups(p.jobs, s.evaluation.cascade)]


def run_planned_job(p: Prepared, job: Job, mask: torch.Tensor, bar: Any = None
                    ) -> dict[str, Any]:
    """One job with the prepared state; its examples travel as ``_files`` for the driver."""
    from arange.core.driver import FILES

    rec = run_job(job, p.defended[job.defense.key], p.data, mask, p.clean_pred[job.defense.key],
                  p.scenario, p.device, bar, p.batch)
    npz = examples_npz(rec, p.data, p.clean_pred[job.defense.key])
    if job.check is not None:
        rec["check"] = job.check
    elif npz is not None:
        rec[FILES] = {f"examples/{job.job_id}.npz": npz}
    return rec


def build_scorecard(state: RunState) -> Scorecard:
    """The rows, the worst case, the validity checks (running their extra jobs) and the side
    file of per-sample outcomes."""
    from arange.store import atomic_write_json

    s: Scenario = state.scenario
    p: Prepared = state.prepared
    data, records = p.data, state.records
    clean_acc = {r.defense: r.accuracy for r in p.clean_rows}
    rows, suite_samples = _rows_with_suites(records, data, clean_acc, s)
    worst = _worst_case(records, data, s)
    extra = _run_extra_jobs(state, records)
    reused = state.reused + sum(1 for _, _, again in extra if again)
    robust_by_job = {j.job_id: r["robust"] for j, r in records}
    robust_by_job.update({k: v["robust"] for k, v in suite_samples.items()})
    checks = run_row_checks(rows) + p.probe_checks + \
        evaluate_extra_jobs(s, [(ej, rec) for ej, rec, _ in extra]) + \
        check_adaptive(rows, robust_by_job)
    if not p.target.source.registry:
        checks.append(check_above_chance(p.clean_rows, p.data_classes))
    if p.target.runtime is not None:
        checks.append(check_deployed(rows, p.twin_clean,
                                     s.evaluation.checks.deployed_agreement))
    mark_discredited(rows, checks)

    samples: dict[str, Any] = {
        "schema_version": 1, "n": len(data), "labels": data.y.tolist(),
        "clean_pred": {k: v.tolist() for k, v in p.clean_pred.items()},
        "jobs": {j.job_id: {"robust": r["robust"], "adv_pred": r["adv_pred"],
                            "perturbation": r["perturbation"],
                            "attacked": r["attacked"]} for j, r in records}}
    samples["jobs"].update(suite_samples)
    atomic_write_json(state.out / "samples.json", samples)

    t = p.target
    prov = Provenance(
        **state.environment(), weights_source=t.weights_source,
        weights_sha256=t.weights_sha256, model_info=t.model_info,
        dataset=data.name, dataset_fingerprint=p.data_fp, scenario_path=state.scenario_path,
        scenario=s.model_dump(mode="json"), jobs_reused=reused,
        defenses={k: v.info for k, v in p.defended.items()})
    return Scorecard(task=s.task, name=s.name, provenance=prov, clean=p.clean_rows,
                     results=rows, worst_case=worst, checks=checks,
                     files={"samples": "samples.json", "examples": "examples"})


def summary(card: Scorecard) -> str:
    return format_summary(card)


__all__ = ["build_scorecard", "identity", "plan", "prepare", "run_planned_job",
           "summary", "worker_prepare"]  # the task's hooks (arange.core.task)


def run_scenario(s: Scenario, out: str | Path | None = None, **options: Any) -> Scorecard:
    """Run ``s`` through the driver (:func:`arange.core.driver.run`)."""
    from arange.core.driver import run

    card: Scorecard = run(s, out, **options)
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
    # an adaptive twin's label is '<suite>+<method>'; its parameters are the suite entry's
    spec = next(a for a in s.attacks if a.suite is not None
                and a.key == (first_job.adapts or first_job.suite))
    if first_job.adaptive is not None:
        spec = spec.model_copy(update={"label": first_job.suite})
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
    from arange.attacks.suites import SUITES
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
        seconds=round(sum(float(r["seconds"]) for _, r in group), 4),
        adaptive=first_job.adaptive is not None, adaptive_method=first_job.adaptive,
        adapts=first_job.adapts)
    return row, {"robust": robust.tolist(), "adv_pred": adv_pred.tolist(),
                 "perturbation": pert.tolist(), "attacked": attacked.tolist()}


def _run_extra_jobs(state: RunState, records: list[tuple[Job, dict[str, Any]]]
                    ) -> list[tuple[ExtraJob, dict[str, Any], bool]]:
    """Run the attack jobs that validity checks need (a large-eps sanity run, a re-run with more
    steps), on a subset of samples, through the same path as every other job; they are labelled
    ``check-...`` in ``jobs/`` and resume like the others. (job, record, reused) each."""
    s: Scenario = state.scenario
    p: Prepared = state.prepared
    data = p.data
    plan = plan_extra_jobs(s, [(j.defense, j.attack, j.eps, r) for j, r in records
                               if j.suite is None and j.adaptive is None], data.y, p.correct,
                           int(data.x[0].numel()), _suite_outcomes(records))
    if plan:
        log.info("validity checks: %d extra job(s) on at most %d samples each", len(plan),
                 s.evaluation.checks.samples)
    context = _job_context(s, p.target.weights_sha256, p.data_fp)
    done = []
    for ej in plan:
        key = content_key({**context, **ej.key_material})
        job = Job(ej.defense, ej.attack, ej.eps, key, fp32=ej.check == AUTOCAST, check=ej.check)
        rec, reused = state.run_local(job, ej.mask)
        done.append((ej, rec, reused))
    return done


def _suite_outcomes(records: list[tuple[Job, dict[str, Any]]]
                    ) -> list[tuple[DefenseSpec, str, float, dict[str, Any]]]:
    """Each suite run (not adaptive twins) as (defense, suite label, eps, record): what its first
    component attacked, what its last left robust, and a key covering all its components."""
    groups: dict[tuple[str, str, float], list[tuple[Job, dict[str, Any]]]] = {}
    for job, rec in records:
        if job.suite is not None and job.adaptive is None:
            groups.setdefault((job.defense.key, job.suite, job.eps), []).append((job, rec))
    return [(g[0][0].defense, suite, eps,
             {"attacked": g[0][1]["attacked"], "robust": g[-1][1]["robust"],
              "key": content_key({"suite": [r["key"] for _, r in g]})})
            for (_, suite, eps), g in groups.items()]


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
