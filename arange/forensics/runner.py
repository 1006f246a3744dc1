"""The forensics runner: scenario -> forgeries -> trained detectors -> scored rows -> scorecard.

1. The photographs are split by source into training and test images; every test tile gets one
   mask (shared by all inpainters, so their rows are paired) and is forged by every inpainter.
   Forgeries are checked to differ from their real image only inside the mask.
2. The GAN inpainter and the detectors are trained on the training photographs (cached under
   ``$ARANGE_CACHE_DIR/forensics``, resumable). Detectors see forgeries of ``train_inpainters``
   only; the other inpainters are "unseen".
3. Rows: per (detector, inpainter) on clean forgeries; per detector on untouched images; per
   (detector, perturbation, strength) for JPEG / resize / noise; and the adversarial rows.
4. Attacks are arange's PGD (``arange.attacks.pgd``) with an objective that suppresses the
   forgery map. What counts is decided here: the output is checked and projected by
   :func:`arange.threat.enforce` with uint8 quantisation (towards the clean image, never out of
   the ball), then the *target* detector re-scores it, and again after a JPEG round trip.
   Transfer rows craft the attack on a copy of the detector trained with another seed.

The driver (:mod:`arange.core.driver`) owns job keys, atomic records, resume and the executors;
this module supplies the ``forgery_localization`` task's hooks. Example galleries travel in the
job records (``_files``) and are written by the driver before the record.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from arange._version import __version__
from arange.core.attacking import attack_in_batches
from arange.core.driver import FILES
from arange.core.executors import Chain
from arange.core.scorecard import Check, format_checks
from arange.core.task import content_key
from arange.errors import ArangeError
from arange.expr import format_eps
from arange.registry import ATTACKS
from arange.speed import BatchSize
from arange.stats import wilson_interval
from arange.store import atomic_write_json
from arange.threat import ThreatModel

from . import external_run
from . import metrics as M
from .data import Split, load_split, to_tensor, to_uint8
from .detector import BroughtDetector, build_detector
from .inpainters import INPAINTERS, Inpainter, PrepareContext, forge_training_set, inpaint
from .masks import make_masks
from .scenario import AttackSpec, DetectorSpec, ForensicsScenario
from .scorecard import (
    DetectorInfo,
    ForensicsProvenance,
    ForensicsScorecard,
    InpainterInfo,
    ResultRow,
    RobustnessRow,
    UntouchedRow,
)
from .training import train_detector

if TYPE_CHECKING:
    from arange.core.driver import RunState

log = logging.getLogger(__name__)
JOB_FORMAT = 1


# ---------------------------------------------------------------------------- scoring

@torch.no_grad()
def predict(net: Any, images: np.ndarray, device: torch.device,
            batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(probability maps N x H x W float32, image scores N) for uint8 NHWC images."""
    net.eval()
    maps, scores = [], []
    for s in range(0, len(images), batch_size):
        logits = net(to_tensor(images[s:s + batch_size]).to(device))
        maps.append(torch.sigmoid(logits)[:, 0].cpu().numpy().astype(np.float32))
        scores.append(torch.sigmoid(net.image_logit(logits)).cpu().numpy().astype(np.float32))
    if not maps:
        h, w = images.shape[1:3]
        return np.zeros((0, h, w), np.float32), np.zeros(0, np.float32)
    return np.concatenate(maps), np.concatenate(scores)


def jpeg(images: np.ndarray, quality: int) -> np.ndarray:
    """A JPEG round trip (Pillow, 4:2:0) of uint8 NHWC images."""
    from PIL import Image
    out = np.empty_like(images)
    for i, im in enumerate(images):
        buf = io.BytesIO()
        Image.fromarray(im, "RGB").save(buf, format="JPEG", quality=int(quality))
        buf.seek(0)
        with Image.open(buf) as back:
            out[i] = np.asarray(back.convert("RGB"), dtype=np.uint8)
    return out


def perturb(images: np.ndarray, name: str, strength: float, seed: int) -> np.ndarray:
    """A benign perturbation of uint8 NHWC images; the result is uint8 again."""
    from PIL import Image
    if name == "jpeg":
        return jpeg(images, int(strength))
    if name == "resize":
        h, w = images.shape[1:3]
        small = (max(1, round(w * strength)), max(1, round(h * strength)))
        out = np.empty_like(images)
        for i, im in enumerate(images):
            down = Image.fromarray(im, "RGB").resize(small, Image.Resampling.BILINEAR)
            out[i] = np.asarray(down.resize((w, h), Image.Resampling.BILINEAR), np.uint8)
        return out
    if name == "blur":  # IMDL-BenCo's Gaussian blur: OpenCV, sigma derived from the size
        import cv2
        k = int(strength)
        return np.stack([cv2.GaussianBlur(im, (k, k), 0) for im in images]) if len(images) \
            else images.copy()
    if name == "noise":
        rng = np.random.default_rng([seed, 31])
        noisy = images.astype(np.float64) + rng.normal(0, strength * 255, images.shape)
        return np.clip(np.round(noisy), 0, 255).astype(np.uint8)
    raise ValueError(f"unknown perturbation {name!r}")


def _rate(k: int, n: int) -> tuple[float, tuple[float, float]]:
    return (k / n if n else 0.0), wilson_interval(k, n)


def _r(v: float | None, nd: int = 5) -> float | None:
    return None if v is None else round(float(v), nd)


def _ci(ci: tuple[float, float]) -> tuple[float, float]:
    return (round(ci[0], 5), round(ci[1], 5))


def localisation(maps: np.ndarray, masks: np.ndarray, scores: np.ndarray, seed: int,
                 ci: bool = True) -> dict[str, Any]:
    """The metrics shared by every row on forged images."""
    per = M.per_image(maps, masks, 0.5)
    k = int((scores >= 0.5).sum())
    rate, rate_ci = _rate(k, len(scores))
    auc = M.roc_auc(maps, masks)
    return {"n": len(maps), "auc": _r(auc),
            "auc_ci": _ci(M.pixel_auc_ci(maps, masks, seed=seed)) if ci and auc is not None
            else (0.0, 0.0),
            "f1": _r(per["f1"].mean()), "f1_ci": _ci(M.bootstrap_mean(per["f1"], seed=seed)),
            "iou": _r(per["iou"].mean()), "iou_ci": _ci(M.bootstrap_mean(per["iou"], seed=seed)),
            "f1_boundary_excluded": _r(per["f1_boundary"].mean()),
            "detection_rate": rate, "detection_rate_ci": _ci(rate_ci),
            "mask_score": _r(float(maps[masks].mean()) if masks.any() else 0.0),
            "_per_image": {"f1": per["f1"].round(5).tolist(),
                           "iou": per["iou"].round(5).tolist(),
                           "score": scores.round(5).tolist()}}


# ---------------------------------------------------------------------------- attacks

class SuppressMap:
    """PGD objective for the forger, who knows the mask: push the pixel logits inside the mask
    and the image logit towards "real" (maximise minus their softplus). Success: no pixel of
    the mask at or above 0.5. The model passed to PGD returns pixel logits."""

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        m = target.flatten(1)
        sp = F.softplus(output.flatten(1))
        return -(sp * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0) - 0.1 * sp.mean(dim=1)

    def success(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        inside = torch.where(target.flatten(1) > 0, output.flatten(1),
                             torch.full_like(output.flatten(1), -1.0))
        return (inside < 0).all(dim=1)


TRANSFER = "transfer_"  # prefix of a transfer series: the attack crafted on the surrogate


def series_name(a: AttackSpec, transfer: bool) -> str:
    """The rows' ``perturbation`` of attack entry ``a``: its key (``pgd`` unless labelled),
    prefixed for the transfer series."""
    return TRANSFER + a.key if transfer else a.key


def run_attack(net: nn.Module, images: np.ndarray, masks: np.ndarray, a: AttackSpec,
               eps: float, seed: int, device: torch.device, batch_size: int
               ) -> tuple[np.ndarray, dict[str, Any]]:
    """The attack ``a`` at ``eps`` through ``net`` (:mod:`arange.core.attacking`); returns the
    evaluated uint8 images and budget facts."""
    attack = ATTACKS.create(a.name, **a.params)
    threat = ThreatModel(a.norm, eps, quantize=True)
    gen = torch.Generator(device=device).manual_seed(seed)
    out = np.empty_like(images)
    violations = 0
    linf = size = 0.0
    off_grid = 0
    net.eval()

    def load(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = to_tensor(images[rows.numpy()]).to(device)
        return x, torch.from_numpy(masks[rows.numpy()])[:, None].float().to(device)

    for b in attack_in_batches(attack, net, torch.arange(len(images)), load, threat,
                               SuppressMap(), gen, BatchSize(batch_size)):
        violations += int(b.enforced.violations.sum())
        if len(b.index):
            size = max(size, float(b.enforced.perturbation.max()))
            linf = max(linf, float((b.x_adv - b.x).abs().max()))
        grid = b.x_adv * 255
        off_grid += int(((grid - grid.round()).abs() > 1e-3).flatten(1).any(dim=1).sum())
        out[b.index.numpy()] = to_uint8(b.x_adv)
    return out, {"norm": threat.norm.value, "perturbation_max": size, "linf_max": linf,
                 "budget_violations": violations, "off_grid": off_grid,
                 "attack_params": attack.params()}


# ---------------------------------------------------------------------------- context

@dataclass
class Context:
    s: ForensicsScenario
    split: Split
    device: torch.device
    masks: np.ndarray                                   # test masks (M, c, c)
    forged: dict[str, np.ndarray]                       # inpainter -> forged test tiles
    seen: dict[str, bool]
    infos: list[InpainterInfo] = field(default_factory=list)
    nets: dict[str, nn.Module] = field(default_factory=dict)       # label -> what scores
    attack_nets: dict[str, nn.Module] = field(default_factory=dict)  # label -> what is attacked
    shas: dict[str, str] = field(default_factory=dict)
    det_infos: list[DetectorInfo] = field(default_factory=list)
    fingerprint: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    prepared_at: float = 0.0
    real_pred: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)  # the running job's example files

    def real(self, det: str) -> tuple[np.ndarray, np.ndarray]:
        if det not in self.real_pred:
            self.real_pred[det] = predict(self.nets[det], self.split.test, self.device,
                                          self.s.target.batch_size)
        return self.real_pred[det]


_key = content_key


def _save_examples(ctx: Context, job_id: str, images: np.ndarray, masks: np.ndarray,
                   maps: np.ndarray, names: list[str], f1: list[float]) -> None:
    k = min(ctx.s.target.examples, len(images))
    if k == 0:
        return
    buf = io.BytesIO()
    np.savez_compressed(buf, image=np.ascontiguousarray(images[:k].transpose(0, 3, 1, 2)),
                        mask=masks[:k].astype(bool), score_map=maps[:k].astype(np.float32),
                        inpainter=np.array(names[:k]), f1=np.array(f1[:k], dtype=np.float32))
    ctx.files[f"examples/{job_id}.npz"] = buf.getvalue()


def _all_forged(ctx: Context) -> tuple[np.ndarray, np.ndarray, list[str]]:
    names = list(ctx.forged)
    images = np.concatenate([ctx.forged[n] for n in names])
    masks = np.concatenate([ctx.masks] * len(names))
    labels = [n for n in names for _ in range(len(ctx.masks))]
    return images, masks, labels


# ---------------------------------------------------------------------------- jobs

def job_clean(ctx: Context, det: str, inp: str) -> dict[str, Any]:
    maps, scores = predict(ctx.nets[det], ctx.forged[inp], ctx.device, ctx.s.target.batch_size)
    _, real_scores = ctx.real(det)
    row = localisation(maps, ctx.masks, scores, ctx.s.seed)
    pos, neg = M.score_histograms(maps, ctx.masks)  # for the pixel-AUC regression gate
    row["_per_image"] |= {"pos_hist": pos.tolist(), "neg_hist": neg.tolist()}
    thr, f1b = M.best_threshold_f1(maps, ctx.masks)
    iauc = M.image_auc(scores, real_scores)
    job_id = f"{det}__{inp}"
    _save_examples(ctx, job_id, ctx.forged[inp], ctx.masks, maps,
                   [inp] * len(maps), row["_per_image"]["f1"])
    return {**row, "job_id": job_id, "detector": det, "inpainter": inp,
            "seen": ctx.seen[inp], "f1_best": _r(f1b), "best_threshold": thr,
            "image_auc": _r(iauc),
            "image_auc_ci": _ci(M.paired_bootstrap(M.image_auc, scores, real_scores,
                                                   seed=ctx.s.seed)) if iauc is not None
            else (0.0, 0.0),
            "mask_area": _r(float(ctx.masks.mean()))}


def job_untouched(ctx: Context, det: str) -> dict[str, Any]:
    maps, scores = ctx.real(det)
    k = int((scores >= 0.5).sum())
    rate, ci = _rate(k, len(scores))
    return {"job_id": f"{det}__untouched", "detector": det, "n": len(scores), "image_fpr": rate,
            "image_fpr_ci": _ci(ci), "pixel_fpr": _r(float((maps >= 0.5).mean())),
            "mean_score": _r(float(scores.mean())),
            "_per_image": {"score": scores.round(5).tolist()}}


def _split_aucs(ctx: Context, maps: np.ndarray, masks: np.ndarray, labels: list[str]
                ) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for split in (True, False):
        sel = np.array([ctx.seen[n] is split for n in labels])
        out["auc_seen" if split else "auc_unseen"] = _r(M.roc_auc(maps[sel], masks[sel])) \
            if sel.any() else None
    return out


def job_benign(ctx: Context, det: str, pert: str, strength: float) -> dict[str, Any]:
    t0 = time.perf_counter()
    images, masks, labels = _all_forged(ctx)
    pimg = perturb(images, pert, strength, ctx.s.seed)
    preal = perturb(ctx.split.test, pert, strength, ctx.s.seed + 1)
    maps, scores = predict(ctx.nets[det], pimg, ctx.device, ctx.s.target.batch_size)
    _, rscores = predict(ctx.nets[det], preal, ctx.device, ctx.s.target.batch_size)
    row = localisation(maps, masks, scores, ctx.s.seed)
    label = format_eps(strength) if pert == "noise" else f"{strength:g}"
    job_id = f"{det}__{pert}-{label.replace('/', '_')}"
    _save_examples(ctx, job_id, pimg, masks, maps, labels, row["_per_image"]["f1"])
    return {**row, **_split_aucs(ctx, maps, masks, labels), "job_id": job_id, "detector": det,
            "perturbation": pert, "kind": "benign", "strength": float(strength),
            "eps_label": label, "image_auc": _r(M.image_auc(scores, rscores)),
            "image_fpr": float((rscores >= 0.5).mean()),
            "seconds": round(time.perf_counter() - t0, 3)}


def attack_subset(ctx: Context, n: int | None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Forged test images taking the inpainters in turn (image i from inpainter i mod k)."""
    names = list(ctx.forged)
    m = len(ctx.masks)
    count = m if n is None else min(n, m)
    idx = np.arange(count)
    images = np.stack([ctx.forged[names[i % len(names)]][i] for i in idx])
    return images, ctx.masks[idx], [names[i % len(names)] for i in idx]


def job_attack(ctx: Context, a: AttackSpec, eps: float, transfer: bool) -> list[dict[str, Any]]:
    """Rows for one eps: the attacked images scored by the target, and after a JPEG trip."""
    t0 = time.perf_counter()
    target = ctx.s.target_detector
    source = transfer_source(ctx.s, a) if transfer else target
    images, masks, labels = attack_subset(ctx, a.samples)
    seed = int(_key({"eps": eps, "transfer": transfer, "seed": ctx.s.seed})[:8], 16)
    if eps > 0:
        adv, facts = run_attack(ctx.attack_nets.get(source, ctx.nets[source]), images, masks, a,
                                eps, seed, ctx.device, ctx.s.target.batch_size)
    else:
        adv, facts = images, {"norm": a.norm.value, "perturbation_max": 0.0, "linf_max": 0.0,
                              "budget_violations": 0, "off_grid": 0, "attack_params": {}}
    kind = "transfer" if transfer else "white-box"
    base = series_name(a, transfer)
    label = format_eps(eps) if eps > 0 else "0"
    variants = [(base, adv)]
    if a.jpeg_quality is not None:
        variants.append((f"{base}+jpeg{a.jpeg_quality}", jpeg(adv, a.jpeg_quality)))
        if a.bpda:
            through = adv if eps == 0 else run_attack(
                through_jpeg(ctx.attack_nets.get(source, ctx.nets[source]), a.jpeg_quality),
                images, masks, a, eps, seed, ctx.device, ctx.s.target.batch_size)[0]
            variants.append((f"{base}+bpda-jpeg{a.jpeg_quality}", jpeg(through, a.jpeg_quality)))
    rows = []
    for pert, imgs in variants:
        maps, scores = predict(ctx.nets[target], imgs, ctx.device, ctx.s.target.batch_size)
        row = localisation(maps, masks, scores, ctx.s.seed)
        job_id = f"{target}__{pert}-{label.replace('/', '_')}"
        _save_examples(ctx, job_id, imgs, masks, maps, labels, row["_per_image"]["f1"])
        rows.append({**row, **_split_aucs(ctx, maps, masks, labels), "job_id": job_id,
                     "detector": target, "perturbation": pert, "kind": kind,
                     "strength": float(eps), "eps_label": label, "source": source,
                     **facts, "seconds": round(time.perf_counter() - t0, 3)})
    return rows


def through_jpeg(net: nn.Module, quality: int) -> nn.Module:
    """``net`` behind a JPEG round trip, differentiated by BPDA (the classifier defenses'
    adaptive view of their JPEG defense)."""
    from arange.defenses.transforms import JPEG, TransformedModel
    return TransformedModel(net, JPEG(quality), adaptive=True)


def transfer_source(s: ForensicsScenario, a: AttackSpec) -> str:
    """The detector a transfer attack is crafted on: the named surrogate, else the target's
    copy trained with seed + 1."""
    return a.surrogate or f"{s.target_detector}@seed{s.seed + 1}"


def load_brought(d: DetectorSpec, trust_code: bool, dev: torch.device
                 ) -> tuple[nn.Module, nn.Module, str, dict[str, Any]]:
    """(scorer, attacked twin, sha256, info) of a detector you bring; for ONNX the scorer is
    onnxruntime on the file and the twin its onnx2torch conversion."""
    from arange.models.sources import ModelSourceError, load_model_source, parse_model_source

    src = parse_model_source(str(d.model))
    try:
        loaded = load_model_source(src, d.params, d.weights, trust_code=trust_code)
    except ModelSourceError as e:
        raise ArangeError(f"detector {d.label!r}: {e}") from e
    p = d.preprocessing
    kw: dict[str, Any] = {"output": d.output, "image_score": d.image_score, "topk": d.topk}
    if p is not None:
        kw |= {"mean": p.mean, "std": p.std, "scale": p.scale, "bgr": p.channels == "bgr"}
    twin = BroughtDetector(loaded.net, **kw).to(dev).eval()
    scorer = BroughtDetector(loaded.runtime, **kw).to(dev).eval() \
        if loaded.runtime is not None else twin
    return scorer, twin, loaded.sha256, loaded.info


def _deployed_agreement(ctx: Context, label: str) -> tuple[float, float]:
    """(pixels, images) on which the twin and the deployed runtime agree (map at 0.5, image
    score at 0.5), over the clean forged and untouched test images."""
    images = np.concatenate([*ctx.forged.values(), ctx.split.test])
    bs = ctx.s.target.batch_size
    m1, s1 = predict(ctx.nets[label], images, ctx.device, bs)
    m2, s2 = predict(ctx.attack_nets[label], images, ctx.device, bs)
    return (float(((m1 >= 0.5) == (m2 >= 0.5)).mean()),
            float(((s1 >= 0.5) == (s2 >= 0.5)).mean()))


@dataclass(frozen=True)
class ForensicsJob:
    """One scoring job: a description (``spec``, also the content of its key) and the table
    its rows go to."""

    job_id: str
    key: str
    table: str
    spec: dict[str, Any]


def run_planned_job(ctx: Any, job: Any, mask: Any = None, progress: Any = None
                    ) -> dict[str, Any]:
    if isinstance(ctx, external_run.ExternalContext):
        return external_run.run_planned_job(ctx, job, mask, progress)
    sp = job.spec
    ctx.files = {}
    if sp["job"] == "untouched":
        rows: Any = job_untouched(ctx, sp["det"])
    elif sp["job"] == "clean":
        rows = job_clean(ctx, sp["det"], sp["inp"])
    elif sp["job"] == "benign":
        rows = job_benign(ctx, sp["det"], sp["p"], sp["s"])
    else:
        a = next(a for a in ctx.s.attacks if a.model_dump() == sp["attack"])
        rows = job_attack(ctx, a, sp["eps"], sp["transfer"])
    rows = rows if isinstance(rows, list) else [rows]
    files, ctx.files = ctx.files, {}
    return {"format": JOB_FORMAT, "key": job.key, "job_id": job.job_id, "rows": rows,
            FILES: files}


# ---------------------------------------------------------------------------- checks

def budget_check(attacks: list[Any]) -> Check:
    """Every attacked image inside its eps-ball and on the 8-bit grid (rows of either mode)."""
    def size(r: Any) -> float:
        if r.perturbation_max is not None:
            return float(r.perturbation_max)
        return float(getattr(r, "linf_max", None) or 0.0)

    over = [r for r in attacks if r.off_grid or size(r) > r.strength * (1 + 1e-5) + 1e-6]
    proposed = [r for r in attacks if r.budget_violations]
    if not attacks:
        return Check(name="budget", status="skip", message="no attack in this scenario")
    if over:
        return Check(name="budget", status="fail", message=f"{len(over)} attack row(s) "
                     "evaluated images beyond eps or off the 8-bit grid",
                     details={"rows": [r.job_id for r in over]})
    return Check(name="budget", status="pass" if not proposed else "warn",
                 message="every attacked image is inside its eps-ball and on the 8-bit grid"
                 + (f"; the runner projected {sum(r.budget_violations or 0 for r in proposed)}"
                    " raw outputs" if proposed else ""))


def deployed_checks(infos: list[DetectorInfo]) -> list[Check]:
    """For each ONNX detector: its twin and onnxruntime agree on at least 99% of the test
    pixels and images."""
    out = []
    for info in infos:
        if info.deployed_agreement is None:
            continue
        ok = min(info.deployed_agreement, info.deployed_image_agreement or 1.0) >= 0.99
        out.append(Check(
            name=f"deployed_runtime ({info.label})", status="pass" if ok else "fail",
            message=f"{info.label}: the onnx2torch twin that the attacks differentiate and "
            f"onnxruntime on {info.source} agree on {info.deployed_agreement:.4%} of test "
            f"pixels and {info.deployed_image_agreement:.2%} of images"
            + ("" if ok else "; below 99%, so attacks aim at a model that is not the deployed "
               "one and their rows understate the risk"),
            details={"pixels": info.deployed_agreement,
                     "images": info.deployed_image_agreement}))
    return out


def _checks(ctx: Context, infos: list[InpainterInfo], results: list[ResultRow],
            rob: list[RobustnessRow]) -> list[Check]:
    checks = []
    leaked = [i for i in infos if i.changed_outside_mask]
    if leaked:
        checks.append(Check(name="paste_inside_mask", status="fail",
                            message="forgeries changed pixels outside their masks: " + ", ".join(
                                f"{i.name} ({i.changed_outside_mask})" for i in leaked)))
    else:
        checks.append(Check(name="paste_inside_mask", status="pass",
                            message="every forged test image equals its real image outside the "
                            "mask, bit for bit"))
    checks.append(budget_check([r for r in rob if r.kind != "benign" and r.strength > 0]))
    # detection should not rise with eps; white-box should beat transfer
    bad = []
    series: dict[str, list[RobustnessRow]] = {}
    for r in rob:
        if r.kind != "benign":
            series.setdefault(r.perturbation, []).append(r)
    for name, rs in series.items():
        rs.sort(key=lambda r: r.strength)
        for lo, hi in itertools.pairwise(rs):
            if (hi.auc or 0) > (lo.auc or 0) + 0.02:
                bad.append(f"{name}: AUC {lo.auc} at {lo.eps_label} < {hi.auc} at "
                           f"{hi.eps_label}")
    wb = {(r.perturbation, r.strength): r for r in rob if r.kind == "white-box"}
    for r in rob:
        w = wb.get((r.perturbation.removeprefix(TRANSFER), r.strength))
        if r.kind == "transfer" and w is not None and r.strength > 0 and \
                (w.auc or 0) > (r.auc or 0) + 0.02:
            bad.append(f"transfer at {r.eps_label} (AUC {r.auc}) beats white-box "
                       f"(AUC {w.auc})")
    if not series:
        checks.append(Check(name="attack_sanity", status="skip", message="no attack rows"))
    elif bad:
        checks.append(Check(name="attack_sanity", status="warn", message="the white-box attack "
                            "is weaker than it should be (gradient masking or too few steps?): "
                            + "; ".join(bad[:3]), details={"violations": bad}))
    else:
        checks.append(Check(name="attack_sanity", status="pass", message="AUC never rises with "
                            "eps and white-box PGD is at least as strong as transfer"))
    checks += deployed_checks(ctx.det_infos)
    target = ctx.s.target_detector
    seen = [r for r in results if r.detector == target and r.seen and r.auc is not None]
    if seen:
        low = min(seen, key=lambda r: r.auc or 0)
        ok = (low.auc or 0) >= 0.9
        checks.append(Check(name="detector_quality", status="pass" if ok else "warn",
                            message=f"{target}: lowest pixel AUC on a seen inpainter is "
                            f"{low.auc:.3f} ({low.inpainter})" + ("" if ok else "; below 0.90, "
                            "so its attack rows say little: train longer or larger")))
    return checks


# ---------------------------------------------------------------------------- the run

def prepare(s: ForensicsScenario, dev: torch.device, progress: bool = True) -> Any:
    """Your forgery set with your detectors (:mod:`.external_run`), or: The test split, its masks and forgeries (by every inpainter), and the detectors (and the
    transfer source) trained on forgeries of the seen inpainters; training is cached."""
    if external_run.is_external(s):
        return external_run.prepare(s, dev, progress)
    timings: dict[str, float] = {}
    t = s.target
    torch.manual_seed(s.seed)
    split = load_split(t.dataset.name, t.dataset.options, t.crop, t.test_fraction,
                       t.test_images, s.seed)
    mk = t.masks
    kinds = tuple(mk.kinds)
    ctx_p = PrepareContext(split.train, split.fingerprint(), t.crop, kinds, mk.min_area,
                           mk.max_area, s.seed, dev, progress)
    inps: dict[str, Inpainter] = {}
    infos: list[InpainterInfo] = []
    t0 = time.perf_counter()
    for spec in s.inpainters:
        inp = INPAINTERS.create(spec.name, **spec.params)
        training = inp.prepare(ctx_p)
        inps[spec.name] = inp
        infos.append(InpainterInfo(name=spec.name, kind=inp.kind,
                                   seen=spec.name in s.train_inpainters, params=inp.params(),
                                   description=INPAINTERS.describe(spec.name),
                                   training=training))
    timings["inpainter_training"] = round(time.perf_counter() - t0, 2)

    t0 = time.perf_counter()
    rng = np.random.default_rng([s.seed, 101])
    masks, _ = make_masks(len(split.test), t.crop, t.crop, rng, kinds, mk.min_area, mk.max_area)
    forged: dict[str, np.ndarray] = {}
    for info in infos:
        f = inpaint(inps[info.name], split.test, masks)
        info.changed_outside_mask = int((f != split.test).any(axis=-1)[~masks].sum())
        forged[info.name] = f
    timings["forging"] = round(time.perf_counter() - t0, 2)
    seen = {i.name: i.seen for i in infos}
    ctx = Context(s, split, dev, masks, forged, seen, infos=infos, timings=timings)
    h = hashlib.sha256(split.fingerprint().encode())
    h.update(masks.tobytes())
    for arr in forged.values():
        h.update(arr.tobytes())
    ctx.fingerprint = h.hexdigest()

    # detectors (and the transfer source), trained on forgeries of the seen inpainters
    t0 = time.perf_counter()
    train_imgs, train_masks = forge_training_set(
        split.train, {n: inps[n] for n in s.train_inpainters}, t.train_patches, t.crop, kinds,
        mk.min_area, mk.max_area, t.real_fraction, s.seed)
    train_fp = hashlib.sha256(train_imgs.tobytes() + train_masks.tobytes()).hexdigest()
    timings["training_set"] = round(time.perf_counter() - t0, 2)
    jobs_specs = [(d, s.seed, d.label, "detector") for d in s.detectors if not d.brought]
    if any(a.transfer and a.surrogate is None for a in s.attacks):
        d = next(d for d in s.detectors if d.label == s.target_detector)
        jobs_specs.append((d, s.seed + 1, f"{d.label}@seed{s.seed + 1}", "transfer_source"))
    from arange.core.scenario import code_trusted
    for d in s.detectors:
        if not d.brought:
            continue
        scorer, twin, sha, info = load_brought(d, code_trusted(s), dev)
        ctx.nets[d.label], ctx.attack_nets[d.label], ctx.shas[d.label] = scorer, twin, sha
        agree = _deployed_agreement(ctx, d.label) if scorer is not twin else (None, None)
        ctx.det_infos.append(DetectorInfo(
            label=d.label, name=str(info.get("format")), params=d.params,
            training={}, seed=s.seed, weights=str(d.weights or d.model), sha256=sha,
            source=d.model, deployed_agreement=_r(agree[0], 6),
            deployed_image_agreement=_r(agree[1], 6)))
    t0 = time.perf_counter()
    for d, seed, label, role in jobs_specs:
        net = build_detector(d.name, d.params)
        spec = {"detector": d.name, "params": net.config(), "training": d.training.model_dump(),
                "train_set": train_fp, "seed": seed}
        tr = d.training
        trained = train_detector(net, train_imgs, train_masks, epochs=tr.epochs,
                                 batch_size=tr.batch_size, lr=tr.lr,
                                 weight_decay=tr.weight_decay, seed=seed, device=dev,
                                 spec=spec, progress=progress, desc=f"training {label}")
        net.to(dev).eval()
        ctx.nets[label] = net
        ctx.shas[label] = trained.sha256
        ctx.det_infos.append(DetectorInfo(
            label=label, name=d.name, params=net.config(),
            training={**tr.model_dump(), "train_inpainters": list(s.train_inpainters),
                      "train_patches": t.train_patches, "final": trained.info.get("final", {})},
            seed=seed, weights=trained.path.name, sha256=trained.sha256,
            train_seconds=trained.info.get("train_seconds"),
            cached=bool(trained.info.get("cached")), role=role))
    timings["detector_training"] = round(time.perf_counter() - t0, 2)
    ctx.prepared_at = time.perf_counter()
    return ctx


def identity(ctx: Any) -> dict[str, Any]:
    return {"data_fingerprint": ctx.fingerprint, "weights": dict(ctx.shas)}


def worker_prepare(s: ForensicsScenario, dev: torch.device, identity: dict[str, Any],
                   where: str) -> Any:
    if external_run.is_external(s):
        return external_run.worker_prepare(s, dev, identity, where)
    ctx = prepare(s, dev, progress=False)
    if ctx.fingerprint != identity["data_fingerprint"]:
        raise ArangeError(f"{where}: the test forgeries differ from the driver's; give a "
                          "dataset path every node can read")
    if ctx.shas != identity["weights"]:
        raise ArangeError(f"{where}: the trained detectors differ from the driver's; share "
                          "ARANGE_CACHE_DIR between nodes")
    return ctx


def plan(s: ForensicsScenario, ctx: Any) -> list[Chain]:
    """One job per (detector, inpainter), untouched set, benign perturbation and attack eps."""
    if isinstance(ctx, external_run.ExternalContext):
        return external_run.plan(s, ctx)
    specs: list[tuple[str, dict[str, Any], str]] = []
    for d in s.detectors:
        specs.append((f"{d.label}__untouched", {"job": "untouched", "det": d.label},
                      "untouched"))
        for info in ctx.infos:
            specs.append((f"{d.label}__{info.name}",
                          {"job": "clean", "det": d.label, "inp": info.name}, "results"))
        for p in s.robustness:
            for st in p.strengths:
                lab = format_eps(st) if p.perturbation == "noise" else f"{st:g}"
                specs.append((f"{d.label}__{p.perturbation}-{lab.replace('/', '_')}",
                              {"job": "benign", "det": d.label, "p": p.perturbation, "s": st},
                              "robustness"))
    for a in s.attacks:
        for transfer in ([False, True] if a.transfer else [False]):
            for eps in [0.0, *a.eps]:
                if eps == 0.0 and transfer:
                    continue  # the unattacked baseline is the same for both
                name = series_name(a, transfer)
                specs.append((f"{s.target_detector}__{name}-{format_eps(eps).replace('/', '_')}",
                              {"job": "attack", "attack": a.model_dump(), "eps": eps,
                               "transfer": transfer}, "robustness"))
    base = {"format": JOB_FORMAT, "arange": __version__, "data": ctx.fingerprint,
            "weights": ctx.shas}
    return [Chain([ForensicsJob(job_id, _key({**spec, **base}), table, spec)])
            for job_id, spec, table in specs]


def build_scorecard(state: RunState) -> ForensicsScorecard:
    if isinstance(state.prepared, external_run.ExternalContext):
        return external_run.build_scorecard(state)
    s: ForensicsScenario = state.scenario
    ctx: Context = state.prepared
    t = s.target
    tables: dict[str, list[dict[str, Any]]] = {"results": [], "untouched": [], "robustness": []}
    samples: dict[str, Any] = {}
    for job, rec in state.records:
        for r in rec["rows"]:
            r = dict(r)
            samples[r["job_id"]] = r.pop("_per_image", {})
            tables[job.table].append(r)
    # an attack's baseline (eps 0) also starts its transfer series
    transfer = {r["perturbation"] for r in tables["robustness"] if r["kind"] == "transfer"}
    for r in list(tables["robustness"]):
        if r["kind"] == "white-box" and r["strength"] == 0 and \
                TRANSFER + r["perturbation"] in transfer:
            tables["robustness"].append({**r, "perturbation": TRANSFER + r["perturbation"],
                                         "kind": "transfer",
                                         "source": f"{s.target_detector}@seed{s.seed + 1}"})
    order = {"benign": 0, "white-box": 1, "transfer": 2}
    tables["robustness"].sort(key=lambda r: (r["detector"], order[r["kind"]], r["perturbation"],
                                             r["strength"]))
    timings = {**ctx.timings, "scoring": round(time.perf_counter() - ctx.prepared_at, 2)}

    results = [ResultRow(**r) for r in tables["results"]]
    untouched = [UntouchedRow(**r) for r in tables["untouched"]]
    rob = [RobustnessRow(**r) for r in tables["robustness"]]
    checks = _checks(ctx, ctx.infos, results, rob)
    split, masks = ctx.split, ctx.masks
    atomic_write_json(state.out / "samples.json",
                      {"schema_version": 1, "n": len(split.test), "ids": split.test_ids,
                       "jobs": samples})
    prov = ForensicsProvenance(
        **state.environment(), timings=timings,
        dataset=t.dataset.name, dataset_fingerprint=ctx.fingerprint,
        dataset_info=split.info, scenario_path=state.scenario_path,
        scenario=s.model_dump(mode="json"), jobs_reused=state.reused)
    data = {"test_images": len(split.test), "train_images": len(split.train),
            "train_patches": t.train_patches, "crop": t.crop,
            "mask_area_mean": round(float(masks.mean()), 4),
            "mask_area_min": round(float(masks.mean(axis=(1, 2)).min()), 4),
            "mask_area_max": round(float(masks.mean(axis=(1, 2)).max()), 4),
            "train_inpainters": list(s.train_inpainters),
            "unseen_inpainters": [i.name for i in ctx.infos if not i.seen],
            "test_sources": split.info["test_sources"]}
    return ForensicsScorecard(name=s.name, provenance=prov, data=data, inpainters=ctx.infos,
                              detectors=ctx.det_infos, results=results, untouched=untouched,
                              robustness=rob, checks=checks,
                              files={"samples": "samples.json", "examples": "examples"})


# ---------------------------------------------------------------------------- summary

def summary(card: ForensicsScorecard) -> str:
    return format_forensics_summary(card)


def format_forensics_summary(card: ForensicsScorecard) -> str:
    if card.external:
        return "\n".join(external_run.format_summary(card) + format_checks(card.checks))
    p = card.provenance
    d = card.data
    lines = [(f"{card.name}: {d['test_images']} test tiles ({d['crop']}px) from "
              f"{', '.join(d['test_sources'])}; trained on "
              f"{', '.join(d['train_inpainters'])}; device {p.device}, {p.seconds:.1f}s")]
    header = (f"{'detector':<22} {'inpainter':<14} {'split':<6} {'pixAUC':>7} {'95% CI':>13} "
              f"{'F1@.5':>6} {'F1best':>6} {'IoU':>6} {'F1-bnd':>6} {'imgAUC':>7}")
    lines += ["", header, "-" * len(header)]
    for r in card.results:
        ci = f"{r.auc_ci[0]:.3f}-{r.auc_ci[1]:.3f}"
        lines.append(f"{r.detector:<22} {r.inpainter:<14} {'seen' if r.seen else 'unseen':<6} "
                     f"{(r.auc or 0):>7.3f} {ci:>13} {r.f1:>6.3f} {r.f1_best:>6.3f} "
                     f"{r.iou:>6.3f} {r.f1_boundary_excluded:>6.3f} "
                     f"{(r.image_auc or 0):>7.3f}")
    for u in card.untouched:
        lines.append(f"{u.detector:<22} {'untouched':<14} {'':<6} image FPR {u.image_fpr:.3f} "
                     f"({u.image_fpr_ci[0]:.3f}-{u.image_fpr_ci[1]:.3f}), pixel FPR "
                     f"{u.pixel_fpr:.3f}")
    header = (f"{'detector':<22} {'perturbation':<22} {'strength':>8} {'pixAUC':>7} "
              f"{'seen':>6} {'unseen':>6} {'F1@.5':>6} {'IoU':>6} {'detect':>6}")
    lines += ["", header, "-" * len(header)]
    for r in card.robustness:
        lines.append(f"{r.detector:<22} {r.perturbation:<22} {r.eps_label:>8} "
                     f"{(r.auc or 0):>7.3f} "
                     f"{(f'{r.auc_seen:.3f}' if r.auc_seen is not None else '-'):>6} "
                     f"{(f'{r.auc_unseen:.3f}' if r.auc_unseen is not None else '-'):>6} "
                     f"{r.f1:>6.3f} {r.iou:>6.3f} {r.detection_rate:>6.3f}")
    lines += format_checks(card.checks)
    return "\n".join(lines)
