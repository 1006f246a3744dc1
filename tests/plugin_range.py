"""A range written outside arange, the way a plugin author writes one: a scenario model built from
the core's parts, runner hooks that attack through the core's attack loop, a typed scorecard,
and gate metrics (a per-sample rate, an average with a bootstrap over samples, and a maximum with
no regression test). The gate tests run it through the real driver; nothing here is a stand-in
for arange's own code.

The target: points in [0, 1]^16 of two classes (the first coordinate above or below 0.5, at least
``margin`` away) and a linear classifier whose decision threshold is shifted by ``bias``; a
biased classifier leaves more points near its boundary, so attacks break more of them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn

from arange.attacks.base import Misclassification
from arange.core.attacking import attack_in_batches
from arange.core.executors import Chain
from arange.core.scenario import (
    AttackSpecBase,
    OptionalNumber,
    ScenarioBase,
    Strict,
    check_component,
    check_eps,
    check_gate_rule,
    load_task_scenario,
)
from arange.core.scorecard import Check, Model, Rate, RunProvenance, ScorecardBase
from arange.core.task import Task, content_key, register_task
from arange.registry import ATTACKS
from arange.speed import BatchSize
from arange.store import atomic_write_json
from arange.threat import ThreatModel

TASK = "toy_linear"
METRICS = ("evasion_rate", "mean_margin", "max_margin")


class ToyTarget(Strict):
    samples: int = Field(200, ge=8, le=10_000)
    margin: float = Field(0.05, ge=0, le=0.4)
    bias: float = Field(0.0, ge=-0.4, le=0.4)


class ToyGate(Strict):
    name: str | None = None
    metric: str
    attack: str | None = None
    eps: OptionalNumber = None
    min: OptionalNumber = None
    max: OptionalNumber = None
    max_drop: float | None = Field(None, ge=0)


class ToyScenario(ScenarioBase):
    task: Literal["toy_linear"] = TASK
    target: ToyTarget = Field(default_factory=ToyTarget)
    attacks: list[AttackSpecBase] = Field(min_length=1)
    gates: list[ToyGate] = Field(default_factory=list)


def _validate(s: ToyScenario, source: str) -> None:
    for i, a in enumerate(s.attacks):
        check_component(ATTACKS, str(a.name), a.params, source, f"attacks[{i}].name",
                        f"attacks[{i}].params")
        check_eps(a.eps, a.norm, source, f"attacks[{i}]")
    for i, g in enumerate(s.gates):
        check_gate_rule(g, METRICS, source, f"gates[{i}]")


class ToyRow(Model):
    job_id: str
    attack: str
    eps: float
    n: int
    evasion_rate: Rate
    mean_margin: float
    max_margin: float


class ToyScorecard(ScorecardBase):
    schema_version: int = 1
    task: Literal["toy_linear"] = TASK
    name: str
    provenance: ToyProvenance
    results: list[ToyRow]
    checks: list[Check]
    files: dict[str, str] = Field(default_factory=dict)


class ToyProvenance(RunProvenance):
    dataset: str
    dataset_fingerprint: str
    scenario_path: str | None
    scenario: dict[str, Any]
    jobs_reused: int = 0


ToyScorecard.model_rebuild()


class ToyTask(Task):
    name = TASK
    description = "a linear classifier on synthetic points (a plugin written in the tests)"
    short = "toy linear range"
    unit = "pt"
    libraries = ("numpy",)
    runner = __name__
    scorecard_model = f"{__name__}:ToyScorecard"

    def load(self, raw: dict[str, Any], source: str, folder: Path | None) -> Any:
        return load_task_scenario(ToyScenario, raw, source, folder, _validate)


def register() -> None:
    register_task(ToyTask())
    from arange.gates import METRICS as REGISTERED
    from arange.gates import Metric, register_metrics
    if TASK in REGISTERED:
        return
    sel = ("attack", "eps")
    register_metrics(TASK, [
        Metric("evasion_rate", "results", "evasion_rate", False, sel, sel,
               outcomes=lambda row, card, samples: [
                   bool(v) for v in samples["jobs"][row["job_id"]]["broken"]]),
        Metric("mean_margin", "results", "mean_margin", True, sel, sel, rate=False,
               per_image=lambda row, card, samples: {
                   "margin": samples["jobs"][row["job_id"]]["margin"]},
               statistic=lambda data, idx: float(np.mean(np.asarray(data["margin"])[idx]))),
        Metric("max_margin", "results", "max_margin", True, sel, sel, rate=False),
    ], rule_model=ToyGate)


# ---------------------------------------------------------------------------- runner hooks

@dataclass(frozen=True)
class ToyJob:
    key: str
    job_id: str
    attack: AttackSpecBase
    eps: float
    units: int


@dataclass
class Context:
    x: torch.Tensor
    y: torch.Tensor
    model: nn.Module
    fingerprint: str
    jobs: list[ToyJob]


def _model(bias: float) -> nn.Module:
    net = nn.Linear(16, 2)
    with torch.no_grad():
        net.weight.zero_()
        net.weight[0, 0], net.weight[1, 0] = -10.0, 10.0
        net.bias.copy_(torch.tensor([10.0 * (0.5 + bias), -10.0 * (0.5 + bias)]))
    return net.eval()


def prepare(s: ToyScenario, device: torch.device, progress: bool = False) -> Context:
    g = np.random.default_rng(1234)  # the data do not depend on the run's seed
    n, m = s.target.samples, s.target.margin
    y = np.arange(n) % 2
    first = np.where(y == 1, g.uniform(0.5 + m, 1.0, n), g.uniform(0.0, 0.5 - m, n))
    x = np.concatenate([first[:, None], g.uniform(0, 1, (n, 15))], axis=1).astype(np.float32)
    x = np.round(x * 255) / 255
    fp = hashlib.sha256(x.tobytes() + y.tobytes()).hexdigest()[:16]
    return Context(torch.from_numpy(x).float().to(device), torch.from_numpy(y).to(device),
                   _model(s.target.bias).to(device), fp, [])


def identity(ctx: Context) -> dict[str, Any]:
    return {"data": ctx.fingerprint}


def worker_prepare(s: ToyScenario, device: torch.device, ident: dict[str, Any], where: str
                   ) -> Context:
    ctx = prepare(s, device)
    assert identity(ctx) == ident, where
    return ctx


def plan(s: ToyScenario, ctx: Context) -> list[Chain]:
    for a in s.attacks:
        for eps in a.eps:
            spec = {"attack": a.model_dump(mode="json"), "eps": eps, "seed": s.seed,
                    "data": ctx.fingerprint, "bias": s.target.bias}
            ctx.jobs.append(ToyJob(content_key(spec), f"{a.key}-{eps:.4f}", a, eps,
                                   s.target.samples))
    return [Chain([j]) for j in ctx.jobs]


def run_planned_job(ctx: Context, job: ToyJob, mask: Any, progress: Any) -> dict[str, Any]:
    a = job.attack
    attack = ATTACKS.create(str(a.name), **a.params)
    gen = torch.Generator(device=ctx.x.device).manual_seed(int(job.key[:12], 16))
    broken: list[bool] = []
    margin: list[float] = []

    def score(x_adv: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return ctx.model(x_adv)  # type: ignore[no-any-return]

    for b in attack_in_batches(attack, ctx.model, torch.arange(len(ctx.x)),
                               lambda r: (ctx.x[r], ctx.y[r]),
                               ThreatModel(a.norm, job.eps, quantize=True),
                               Misclassification(), gen, BatchSize(64), score=score):
        logits = b.score
        right = logits.gather(1, b.y[:, None])[:, 0]
        wrong = logits.gather(1, 1 - b.y[:, None])[:, 0]
        broken += (logits.argmax(1) != b.y).tolist()
        margin += (right - wrong).tolist()
    return {"key": job.key, "job_id": job.job_id, "broken": broken, "margin": margin}


def build_scorecard(state: Any) -> ToyScorecard:
    s: ToyScenario = state.scenario
    rows, jobs = [], {}
    for job, rec in state.records:
        jobs[job.job_id] = {"broken": rec["broken"], "margin": rec["margin"]}
        rows.append(ToyRow(job_id=job.job_id, attack=job.attack.key, eps=job.eps,
                           n=len(rec["broken"]), evasion_rate=float(np.mean(rec["broken"])),
                           mean_margin=float(np.mean(rec["margin"])),
                           max_margin=float(np.max(rec["margin"]))))
    atomic_write_json(state.out / "samples.json", {"jobs": jobs})
    prov = ToyProvenance(**state.environment(), dataset="toy", dataset_fingerprint=state.prepared
                         .fingerprint, scenario_path=state.scenario_path,
                         scenario=s.model_dump(mode="json"), jobs_reused=state.reused)
    return ToyScorecard(name=s.name, provenance=prov, results=rows, checks=[],
                        files={"samples": "samples.json"})


def summary(card: ToyScorecard) -> str:
    return "\n".join(f"{r.attack} {r.eps:.4f}: {r.evasion_rate:.3f}" for r in card.results)
