"""The forensics range on your forgery set (``target.dataset``: casia, imdl_json,
forgery_manifest) with your detectors: the runner hooks for this mode.

One job per detector and condition: clean, each benign perturbation (every image), and for the
target each attack eps, white-box and transfer from the surrogate, each also after a JPEG trip.
Attacks run on the tampered images (at most ``samples``), one image at a time since sizes
differ, through the same budget-enforcing loop as every attack; the authentic images stay as
they are, so the image-level metrics of an attack row compare attacked forgeries with untouched
authentic images.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from arange._version import __version__
from arange.core.driver import FILES
from arange.core.executors import Chain
from arange.core.scorecard import Check
from arange.core.task import content_key
from arange.errors import ArangeError
from arange.expr import format_eps
from arange.store import atomic_write_json

from .external import EXTERNAL_DATASETS, ForgerySet, evaluate, load_forgery_set, score
from .scenario import AttackSpec, ForensicsScenario
from .scorecard import DetectorInfo, ExternalRow, ForensicsProvenance, ForensicsScorecard

if TYPE_CHECKING:
    from arange.core.driver import RunState

JOB_FORMAT = 1


def is_external(s: ForensicsScenario) -> bool:
    return s.target.dataset.name in EXTERNAL_DATASETS


@dataclass
class ExternalContext:
    s: ForensicsScenario
    data: ForgerySet
    device: torch.device
    nets: dict[str, nn.Module] = field(default_factory=dict)
    attack_nets: dict[str, nn.Module] = field(default_factory=dict)
    shas: dict[str, str] = field(default_factory=dict)
    det_infos: list[DetectorInfo] = field(default_factory=list)
    fingerprint: str = ""
    prepared_at: float = 0.0


def prepare(s: ForensicsScenario, dev: torch.device, progress: bool = True
            ) -> ExternalContext:
    from arange.core.scenario import code_trusted

    from .runner import load_brought

    t0 = time.perf_counter()
    data = load_forgery_set(s.target.dataset.name, s.target.dataset.options)
    ctx = ExternalContext(s, data, dev, fingerprint=data.fingerprint())
    for d in s.detectors:
        scorer, twin, sha, info = load_brought(d, code_trusted(s), dev)
        ctx.nets[d.label], ctx.attack_nets[d.label], ctx.shas[d.label] = scorer, twin, sha
        agree = _agreement(ctx, d.label) if scorer is not twin else (None, None)
        ctx.det_infos.append(DetectorInfo(
            label=d.label, name=str(info.get("format")), params=d.params, training={},
            seed=s.seed, weights=str(d.weights or d.model), sha256=sha, source=d.model,
            deployed_agreement=agree[0], deployed_image_agreement=agree[1]))
    data.info["load_seconds"] = round(time.perf_counter() - t0, 2)
    ctx.prepared_at = time.perf_counter()
    return ctx


def _agreement(ctx: ExternalContext, label: str) -> tuple[float, float]:
    """Pixels and images on which the twin and the deployed runtime agree, over the set."""
    same_px = total_px = same_img = 0
    for it in ctx.data.items:
        m1, s1 = score(ctx.nets[label], it.image, ctx.device, ctx.s.target.window)
        m2, s2 = score(ctx.attack_nets[label], it.image, ctx.device, ctx.s.target.window)
        same_px += int(((m1 >= 0.5) == (m2 >= 0.5)).sum())
        total_px += m1.size
        same_img += int((s1 >= 0.5) == (s2 >= 0.5))
    return round(same_px / max(total_px, 1), 6), round(same_img / max(len(ctx.data.items), 1), 6)


def identity(ctx: ExternalContext) -> dict[str, Any]:
    return {"data_fingerprint": ctx.fingerprint, "weights": dict(ctx.shas)}


def worker_prepare(s: ForensicsScenario, dev: torch.device, identity: dict[str, Any],
                   where: str) -> ExternalContext:
    ctx = prepare(s, dev, progress=False)
    if ctx.fingerprint != identity["data_fingerprint"]:
        raise ArangeError(f"{where}: the forgery set differs from the driver's; give a dataset "
                          "path every node can read")
    if ctx.shas != identity["weights"]:
        raise ArangeError(f"{where}: the detector files differ from the driver's")
    return ctx


@dataclass(frozen=True)
class ExternalJob:
    job_id: str
    key: str
    spec: dict[str, Any]
    table: str = "external"


def plan(s: ForensicsScenario, ctx: ExternalContext) -> list[Chain]:
    from .runner import series_name

    specs: list[tuple[str, dict[str, Any]]] = []
    for d in s.detectors:
        specs.append((f"{d.label}__clean", {"job": "clean", "det": d.label}))
        for p in s.robustness:
            for st in p.strengths:
                lab = _label(p.perturbation, st)
                specs.append((f"{d.label}__{p.perturbation}-{lab.replace('/', '_')}",
                              {"job": "benign", "det": d.label, "p": p.perturbation, "s": st}))
    for a in s.attacks:
        for transfer in ([False, True] if a.transfer else [False]):
            for eps in a.eps:
                name = series_name(a, transfer)
                specs.append((f"{s.target_detector}__{name}-{format_eps(eps).replace('/', '_')}",
                              {"job": "attack", "attack": a.model_dump(), "eps": eps,
                               "transfer": transfer}))
    base = {"format": JOB_FORMAT, "arange": __version__, "data": ctx.fingerprint,
            "weights": ctx.shas, "window": s.target.window, "mode": "external"}
    return [Chain([ExternalJob(job_id, content_key({**spec, **base}), spec)])
            for job_id, spec in specs]


def _label(pert: str, strength: float) -> str:
    return format_eps(strength) if pert == "noise" else f"{strength:g}"


def _score_all(ctx: ExternalContext, det: str, images: list[np.ndarray]
               ) -> tuple[list[np.ndarray], list[float]]:
    maps, scores = [], []
    for im in images:
        m, sc = score(ctx.nets[det], im, ctx.device, ctx.s.target.window)
        maps.append(m)
        scores.append(sc)
    return maps, scores


def _row(ctx: ExternalContext, det: str, images: list[np.ndarray], job_id: str,
         crafting: float = 0.0, **fields: Any) -> dict[str, Any]:
    """One condition's row: ``images`` scored by ``det``; ``crafting``: seconds the attack
    took to make them (the row's time is that plus the scoring)."""
    t0 = time.perf_counter()
    items = ctx.data.items
    maps, scores = _score_all(ctx, det, images)
    metrics = evaluate(maps, [i.mask for i in items], scores, [i.source for i in items])
    return {**metrics, **fields, "job_id": job_id, "detector": det,
            "seconds": round(crafting + time.perf_counter() - t0, 3)}


def run_planned_job(ctx: ExternalContext, job: ExternalJob, mask: Any = None,
                    progress: Any = None) -> dict[str, Any]:
    from .runner import perturb

    sp = job.spec
    items = ctx.data.items
    if sp["job"] == "clean":
        rows = [_row(ctx, sp["det"], [i.image for i in items], job.job_id, condition="clean",
                     kind="clean", perturbation="none")]
    elif sp["job"] == "benign":
        imgs = [perturb(i.image[None], sp["p"], sp["s"], ctx.s.seed + k)[0]
                for k, i in enumerate(items)]
        lab = _label(sp["p"], sp["s"])
        rows = [_row(ctx, sp["det"], imgs, job.job_id, condition=f"{sp['p']}-{lab}",
                     kind="benign", perturbation=sp["p"], strength=float(sp["s"]),
                     eps_label=lab)]
    else:
        a = next(a for a in ctx.s.attacks if a.model_dump() == sp["attack"])
        rows = _attack_rows(ctx, a, float(sp["eps"]), bool(sp["transfer"]), job.job_id)
    return {"format": JOB_FORMAT, "key": job.key, "job_id": job.job_id, "rows": rows,
            FILES: {}}


def _attack_rows(ctx: ExternalContext, a: AttackSpec, eps: float, transfer: bool,
                 job_id: str) -> list[dict[str, Any]]:
    from .runner import jpeg, run_attack, series_name, through_jpeg, transfer_source

    t0 = time.perf_counter()
    s = ctx.s
    target = s.target_detector
    source = transfer_source(s, a) if transfer else target
    net = ctx.attack_nets[source]
    items = ctx.data.items
    forged = [k for k, i in enumerate(items) if i.mask is not None]
    chosen = forged if a.samples is None else forged[:a.samples]
    def attacked(model: nn.Module) -> tuple[list[np.ndarray], dict[str, Any]]:
        images = [i.image for i in items]
        facts: dict[str, Any] = {"perturbation_max": 0.0, "budget_violations": 0,
                                 "off_grid": 0}
        for k in chosen:
            it = items[k]
            assert it.mask is not None
            seed = int(content_key({"eps": eps, "transfer": transfer, "seed": s.seed,
                                    "image": it.id})[:8], 16)
            adv, f = run_attack(model, it.image[None], it.mask[None], a, eps, seed, ctx.device,
                                1)
            images[k] = adv[0]
            facts["perturbation_max"] = max(facts["perturbation_max"], f["perturbation_max"])
            facts["budget_violations"] += f["budget_violations"]
            facts["off_grid"] += f["off_grid"]
            facts["norm"], facts["attack_params"] = f["norm"], f["attack_params"]
        return images, facts

    def jpeg_trip(images: list[np.ndarray], q: int) -> list[np.ndarray]:
        return [jpeg(im[None], q)[0] if k in chosen else im for k, im in enumerate(images)]

    images, facts = attacked(net)
    base = series_name(a, transfer)
    label = format_eps(eps)
    kind = "transfer" if transfer else "white-box"
    crafted = time.perf_counter() - t0
    rows = [_row(ctx, target, images, job_id, condition=f"{base}-{label}", kind=kind,
                 perturbation=base, strength=eps, eps_label=label, source=source,
                 crafting=crafted, **facts)]
    q = a.jpeg_quality
    if q is not None:
        rows.append(_row(ctx, target, jpeg_trip(images, q), f"{job_id}+jpeg{q}",
                         condition=f"{base}-{label}+jpeg{q}", kind=kind,
                         perturbation=f"{base}+jpeg{q}", strength=eps, eps_label=label,
                         source=source, crafting=crafted, **facts))
        if a.bpda:
            t1 = time.perf_counter()
            through, bfacts = attacked(through_jpeg(net, q))
            rows.append(_row(ctx, target, jpeg_trip(through, q), f"{job_id}+bpda-jpeg{q}",
                             condition=f"{base}-{label}+bpda-jpeg{q}", kind=kind,
                             perturbation=f"{base}+bpda-jpeg{q}", strength=eps,
                             eps_label=label, source=source,
                             crafting=time.perf_counter() - t1, **bfacts))
    return rows


def _checks(ctx: ExternalContext, rows: list[ExternalRow]) -> list[Check]:
    from .runner import budget_check, deployed_checks

    checks = []
    info = ctx.data.info
    if info.get("n_empty_masks"):
        checks.append(Check(name="masks", status="warn", message=f"{info['n_empty_masks']} "
                            "tampered image(s) have an empty mask after binarisation (first: "
                            f"{info['empty_masks'][0]}); check mask_threshold",
                            details={"images": info["empty_masks"]}))
    else:
        checks.append(Check(name="masks", status="pass", message=f"every one of the "
                            f"{info['tampered']} tampered images has a non-empty mask"))
    checks.append(budget_check([r for r in rows if r.kind in ("white-box", "transfer")]))
    checks += deployed_checks(ctx.det_infos)
    return checks


def build_scorecard(state: RunState) -> ForensicsScorecard:
    s: ForensicsScenario = state.scenario
    ctx: ExternalContext = state.prepared
    rows, samples = [], {}
    for _, rec in state.records:
        for r in rec["rows"]:
            r = dict(r)
            samples[r["job_id"]] = r.pop("_per_image", {})
            rows.append(ExternalRow(**r))
    order = {"clean": 0, "benign": 1, "white-box": 2, "transfer": 3}
    rows.sort(key=lambda r: (r.detector, order[r.kind], r.perturbation, r.strength))
    items = ctx.data.items
    atomic_write_json(state.out / "samples.json",
                      {"schema_version": 1, "n": len(items), "ids": [i.id for i in items],
                       "tampered": [i.mask is not None for i in items],
                       "sources": [i.source for i in items], "jobs": samples})
    prov = ForensicsProvenance(
        **state.environment(),
        timings={"scoring": round(time.perf_counter() - ctx.prepared_at, 2)},
        dataset=s.target.dataset.name, dataset_fingerprint=ctx.fingerprint,
        dataset_info=ctx.data.info, scenario_path=state.scenario_path,
        scenario=s.model_dump(mode="json"), jobs_reused=state.reused)
    return ForensicsScorecard(
        name=s.name, provenance=prov, data={**ctx.data.info, "window": s.target.window},
        inpainters=[], detectors=ctx.det_infos, results=[], untouched=[], robustness=[],
        external=rows, checks=_checks(ctx, rows), files={"samples": "samples.json"})


def format_summary(card: ForensicsScorecard) -> list[str]:
    d = card.data
    head = (f"{card.name}: {d.get('dataset')} - {d.get('tampered')} tampered, "
            f"{d.get('authentic')} authentic images; pixel metrics per tampered image "
            "(IMDL-BenCo), image metrics at 0.5")
    cols = (f"{'detector':<12} {'condition':<28} {'pixF1':>6} {'F1best':>6} {'pixAUC':>6} "
            f"{'IoU':>6} {'imgAUC':>6} {'imgF1':>6} {'acc':>6}")
    lines = [head, "", cols]

    def f(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f}"

    for r in card.external:
        lines.append(f"{r.detector:<12} {r.condition:<28} {f(r.pixel_f1):>6} "
                     f"{f(r.pixel_f1_best):>6} {f(r.pixel_auc):>6} {f(r.iou):>6} "
                     f"{f(r.image_auc):>6} {f(r.image_f1):>6} {f(r.image_accuracy):>6}")
    return lines
