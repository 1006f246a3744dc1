"""The hash runner: scenario -> jobs (threshold x attack x eps) -> verified outcomes -> scorecard.

What counts is decided here, never by an attack:

1. The attack's output is projected onto the threat model and moved onto the 8-bit grid (the
   nearest level inside the budget), then checked by :func:`arange.threat.enforce`.
2. The torch fast path says which images it believes succeed ("claimed").
3. Every claimed image, and every image the reference library accepts in memory, is written as a
   PNG, read back, and re-hashed by the reference library (imagehash / pdqhash). Only that
   verdict counts: a claimed success the reference rejects is reported, never counted.

Evasion succeeds when no database entry lies within the threshold of the image's reference hash;
collision when the chosen database entry does. The verdict is taken on the exact PNG bytes
the driver then writes to ``OUT/images/<job_id>/`` (before the job's record, so a record on disk
always has its evidence). The driver (:mod:`arange.core.driver`) owns job keys, records, resume
and the executors; this module supplies the ``hash_matching`` task's hooks.
"""

from __future__ import annotations

import io
import itertools
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from arange._version import __version__
from arange.core.attacking import attack_in_batches
from arange.core.driver import CLEAR, FILES
from arange.core.executors import Chain
from arange.core.scorecard import Check, format_checks
from arange.core.task import content_key
from arange.errors import ArangeError
from arange.expr import format_eps
from arange.registry import ATTACKS
from arange.speed import BatchSize
from arange.stats import wilson_interval
from arange.store import atomic_write_bytes, atomic_write_json
from arange.threat import ThreatModel

from .attacks import HammingObjective, SurrogateObjective, exact_oracle, white_box_view
from .data import HashImages, load_images
from .fast import fast_hash_backend, fast_hashes
from .reference import (
    DEFAULT_TRANSFER,
    HASHES,
    hamming,
    hamming_matrix,
    pairwise_distances,
    read_png,
    reference_bits,
    reference_bits_batch,
)
from .scenario import HashAttackSpec, HashScenario
from .scorecard import (
    Agreement,
    CorpusFpr,
    Detection,
    FprCurve,
    FprPoint,
    HashProvenance,
    HashResultRow,
    HashScorecard,
    Matcher,
    QueryPoint,
    Stats,
    SweepRow,
    TransferCell,
    TransferRow,
)

if TYPE_CHECKING:
    from arange.core.driver import RunState
    from arange.core.executors import Progress

log = logging.getLogger(__name__)
JOB_FORMAT = 1
FAST_HASHES = ("average_hash", "dhash", "phash", "pdq")


# ---------------------------------------------------------------------------- oracles

class ReferenceHash(nn.Module):
    """Black-box oracle through the reference library itself (hashes without a torch path)."""

    def __init__(self, name: str, params: dict[str, Any]):
        super().__init__()
        self.name, self.params = name, params

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        arr = to_uint8(x)
        bits = reference_bits_batch(self.name, arr, self.params)
        return torch.from_numpy(bits).to(x.device).float()


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """Float NCHW in [0, 1] on the 8-bit grid -> uint8 NHWC."""
    return (x.detach().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1) \
        .cpu().numpy()


def fast_bits(name: str, params: dict[str, Any], x: torch.Tensor) -> torch.Tensor:
    oracle = exact_oracle(name, params) or ReferenceHash(name, params)
    return oracle(x).bool()


# ---------------------------------------------------------------------------- jobs

@dataclass(frozen=True)
class HashJob:
    attack: HashAttackSpec
    eps: float
    threshold: int
    key: str
    units: int = 1   # images attacked (the progress bar's unit)

    @property
    def job_id(self) -> str:
        eps = format_eps(self.eps).replace("/", "_")
        return f"t{self.threshold}__{self.attack.key}__{self.attack.norm.value}-{eps}"


def expand_jobs(s: HashScenario, data_fp: str, n: int) -> list[HashJob]:
    base = {"arange": __version__, "format": JOB_FORMAT, "data": data_fp, "n": n,
            "seed": s.seed, "batch_size": s.target.batch_size, "hash": s.target.hash,
            "hash_params": s.target.hash_params,
            "transfer": s.evaluation.transfer}
    jobs = []
    for t in s.target.thresholds:
        for a in s.attacks:
            if a.thresholds is not None and t not in a.thresholds:
                continue
            for eps in a.eps:
                spec = {**base, "threshold": t, "eps": eps,
                        "attack": a.model_dump(mode="json", exclude={"eps"})}
                key = content_key(spec)
                jobs.append(HashJob(a, eps, t, key, n))
    return jobs


def collision_targets(n: int) -> np.ndarray:
    """Innocent image i is made to collide with database entry (i + n // 2) mod n."""
    return (np.arange(n) + n // 2) % n


def _png_bytes(img: np.ndarray) -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(img, "RGB").save(buf, format="PNG")
    return buf.getvalue()


def _quality(clean: np.ndarray, adv: np.ndarray) -> tuple[float, float]:
    """(SSIM, PSNR in dB) of one uint8 image pair, by scikit-image."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity
    ssim = float(structural_similarity(clean, adv, channel_axis=-1, data_range=255))
    if np.array_equal(clean, adv):
        return ssim, float("inf")
    return ssim, float(peak_signal_noise_ratio(clean, adv, data_range=255))


@dataclass
class Context:
    """What every job needs: the images, the database and the transfer hashes."""

    s: HashScenario
    data: HashImages
    x: torch.Tensor                      # float NCHW on the device
    params: dict[str, Any]               # the target hash's full parameters
    db: np.ndarray                       # reference bits of the database (N, B)
    transfer: dict[str, int]             # hash -> threshold
    transfer_db: dict[str, np.ndarray]   # hash -> reference bits of the database
    device: torch.device
    fingerprint: str
    corpus: list[Path] | None = None     # evaluation.corpus: its image files, sorted
    corpus_fingerprint: str = ""


@dataclass(frozen=True)
class CorpusShard:
    """Hash files ``start:stop`` of the corpus (evaluation.corpus)."""

    index: int
    start: int
    stop: int
    key: str

    @property
    def units(self) -> int:
        return self.stop - self.start

    @property
    def job_id(self) -> str:
        return f"corpus__{self.index:05d}"


def corpus_shards(s: HashScenario, ctx: Context) -> list[CorpusShard]:
    c = s.evaluation.corpus
    if c is None or ctx.corpus is None:
        return []
    base = {"arange": __version__, "format": JOB_FORMAT, "corpus": ctx.corpus_fingerprint,
            "hash": s.target.hash, "hash_params": ctx.params, "shard_size": c.shard_size}
    n = len(ctx.corpus)
    return [CorpusShard(i, a, min(a + c.shard_size, n), content_key({**base, "start": a}))
            for i, a in enumerate(range(0, n, c.shard_size))]


def run_shard(shard: CorpusShard, ctx: Context) -> dict[str, Any]:
    """Reference bits of one shard of the corpus, packed, as a file for the driver to write."""
    from .corpus import hash_files

    assert ctx.corpus is not None and ctx.s.evaluation.corpus is not None
    root = Path(ctx.s.evaluation.corpus.root)
    files = ctx.corpus[shard.start:shard.stop]
    t0 = time.perf_counter()
    packed, bad = hash_files(ctx.s.target.hash, ctx.params, files)
    buf = io.BytesIO()
    np.save(buf, packed, allow_pickle=False)
    rel = f"corpus/{shard.index:05d}.npy"
    return {"format": JOB_FORMAT, "key": shard.key, "job_id": shard.job_id, "kind": "corpus",
            "n": len(files), "hashed": int(packed.shape[0]),
            "unreadable": [str(files[i].relative_to(root)) for i in bad],
            "seconds": time.perf_counter() - t0, "packed": rel, FILES: {rel: buf.getvalue()}}


def corpus_fpr(ctx: Context, records: list[tuple[Any, dict[str, Any]]], out: Path
               ) -> CorpusFpr | None:
    """The corpus curve from the shards' packed bits (read back from the run folder)."""
    from .corpus import count_pairs

    c = ctx.s.evaluation.corpus
    shards = sorted(((j, r) for j, r in records if isinstance(j, CorpusShard)),
                    key=lambda jr: jr[0].index)
    if c is None or not shards:
        return None
    packed = np.concatenate([np.load(out / r["packed"], allow_pickle=False)
                             for _, r in shards])
    nbits = HASHES.get(ctx.s.target.hash).bits(ctx.params)
    unreadable = [f for _, r in shards for f in r["unreadable"]]
    hist, exhaustive, seconds = count_pairs(packed, nbits, c.pairs, ctx.s.seed)
    hashing = sum(float(r["seconds"]) for _, r in shards)
    return CorpusFpr(hash=ctx.s.target.hash, n_images=int(packed.shape[0]),
                     root=c.root, fingerprint=ctx.corpus_fingerprint,
                     n_files=len(ctx.corpus or []), unreadable=len(unreadable),
                     unreadable_files=unreadable[:20], exhaustive=exhaustive,
                     seconds={"hashing": round(hashing, 3), "counting": round(seconds, 3)},
                     **_fpr_points(hist))


def _success_mask(goal: str, bits: np.ndarray, db: np.ndarray, rows: np.ndarray,
                  threshold: int, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(success, distance): evasion uses the distance to the nearest database entry, collision
    the distance to the chosen entry."""
    if goal == "evasion":
        d = hamming_matrix(bits, db).min(axis=1) if len(bits) else np.zeros(0, dtype=np.int64)
        return d > threshold, d
    d = hamming(bits, db[targets[rows]])
    return d <= threshold, d


def run_job(job: HashJob, ctx: Context, bar: Any = None) -> dict[str, Any]:
    """Attack every image, then verify each candidate success with the reference library on
    its PNG bytes; the bytes travel in the record (``_files``) for the driver to write."""
    s, x, dev = ctx.s, ctx.x, ctx.device
    a = job.attack
    attack = ATTACKS.create(a.name, **a.params)
    white = getattr(attack, "kind", "") == "white-box"
    if white:
        model: nn.Module = white_box_view(s.target.hash, ctx.params)
        objective: Any = SurrogateObjective(a.goal, job.threshold, a.margin)
    else:
        model = exact_oracle(s.target.hash, ctx.params) or \
            ReferenceHash(s.target.hash, ctx.params)
        objective = HammingObjective(a.goal, job.threshold, a.margin)
    threat = ThreatModel(a.norm, job.eps, quantize=True)
    gen = torch.Generator(device=dev).manual_seed(int(job.key[:12], 16))
    n = len(ctx.data)
    targets = collision_targets(n) if a.goal == "collision" else np.arange(n)
    y_all = torch.from_numpy(ctx.db[targets]).to(dev).float()
    finals = torch.empty_like(x)
    violations = np.zeros(n, dtype=bool)
    queries = np.zeros(n, dtype=np.int64)
    t0 = time.perf_counter()
    for b in attack_in_batches(attack, model, torch.arange(n), lambda r: (x[r], y_all[r]),
                               threat, objective, gen, BatchSize(s.target.batch_size)):
        rows = b.index.numpy()
        finals[b.index] = b.x_adv
        violations[rows] = b.enforced.violations.cpu().numpy()
        if b.queries is not None:
            queries[rows] = b.queries.cpu().numpy()
        if bar is not None:
            bar.update(len(rows))
    seconds = time.perf_counter() - t0
    rows = np.arange(n)

    # what the fast path claims
    claimed_bits = fast_bits(s.target.hash, ctx.params, finals).cpu().numpy()
    claimed, d_fast = _success_mask(a.goal, claimed_bits, ctx.db, rows, job.threshold, targets)
    # what the reference says in memory, then on the saved PNG (the only verdict that counts)
    adv = to_uint8(finals)
    mem_bits = reference_bits_batch(s.target.hash, adv, ctx.params)
    mem_ok, d_ref = _success_mask(a.goal, mem_bits, ctx.db, rows, job.threshold, targets)
    success = np.zeros(n, dtype=bool)
    pngs: list[str | None] = [None] * n
    files: dict[str, bytes] = {}
    transfer: dict[str, list[bool | None]] = {h: [None] * n for h in ctx.transfer}
    for i in np.nonzero(claimed | mem_ok)[0].tolist():
        rel = f"images/{job.job_id}/{i:04d}.png"
        files[rel] = _png_bytes(adv[i])
        pngs[i] = rel
        back = read_png(files[rel])
        bits = reference_bits(s.target.hash, back, ctx.params)[None]
        ok, dist = _success_mask(a.goal, bits, ctx.db, np.array([i]), job.threshold, targets)
        success[i] = bool(ok[0])
        d_ref[i] = int(dist[0])
        if success[i]:
            for h, thr in ctx.transfer.items():
                hb = reference_bits(h, back, HASHES.get(h).check_params(
                    ctx.params if h == s.target.hash else {}))[None]
                okh, _ = _success_mask(a.goal, hb, ctx.transfer_db[h], np.array([i]), thr,
                                       targets)
                transfer[h][i] = bool(okh[0])

    clean = ctx.data.images
    delta = (finals - x).flatten(1)
    linf = delta.abs().amax(dim=1).cpu().numpy() if n else np.zeros(0)
    l2 = delta.norm(dim=1).cpu().numpy() if n else np.zeros(0)
    quality = [_quality(clean[i], adv[i]) for i in range(n)]
    return {
        "format": JOB_FORMAT, "key": job.key, "job_id": job.job_id,
        "attack_kind": getattr(attack, "kind", "white-box"), "params": attack.params(),
        "seconds": seconds, "targets": targets.tolist(),
        "success": success.tolist(), "claimed": claimed.tolist(),
        "distance": d_ref.tolist(), "distance_fast": d_fast.tolist(),
        "queries": queries.tolist() if not white else None,
        "linf": linf.tolist(), "l2": l2.tolist(),
        "ssim": [q[0] for q in quality],
        "psnr": [q[1] if np.isfinite(q[1]) else None for q in quality],
        "violations": violations.tolist(), "png": pngs, "transfer": transfer,
        FILES: files, CLEAR: [f"images/{job.job_id}"],  # no stale evidence of an earlier run
    }


# ---------------------------------------------------------------------------- tables

def _stats(values: list[float]) -> Stats:
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return Stats(n=0)
    return Stats(n=int(v.size), mean=float(v.mean()), median=float(np.median(v)),
                 p05=float(np.percentile(v, 5)), p95=float(np.percentile(v, 95)),
                 min=float(v.min()), max=float(v.max()))


def _rate(k: int, n: int) -> tuple[float, tuple[float, float]]:
    return (k / n if n else 0.0), wilson_interval(k, n)


def fpr_curve(name: str, bits: np.ndarray) -> FprCurve:
    nb = bits.shape[1]
    hist = np.bincount(pairwise_distances(bits), minlength=nb + 1)
    return FprCurve(hash=name, n_images=int(bits.shape[0]), **_fpr_points(hist))


def _fpr_points(hist: np.ndarray) -> dict[str, Any]:
    """FprCurve fields from a histogram of pair distances 0..bits."""
    nb = len(hist) - 1
    total = int(hist.sum())
    cum = np.cumsum(hist)
    points = []
    for t in range(nb + 1):
        k = int(cum[t])
        r, ci = _rate(k, total)
        points.append(FprPoint(threshold=t, false_positives=k, fpr=r, fpr_ci=ci))
    nz = np.nonzero(hist)[0]
    return {"bits": nb, "n_pairs": total, "min_distance": int(nz[0]) if nz.size else nb,
            "points": points}


def _budgets(s: HashScenario, max_q: int) -> list[int]:
    if s.evaluation.query_budgets is not None:
        return [b for b in s.evaluation.query_budgets if b <= max_q] or [max_q]
    fr = (0.05, 0.1, 0.25, 0.5, 1.0)
    return sorted({max(1, round(max_q * f)) for f in fr})


def _result_row(job: HashJob, rec: dict[str, Any], s: HashScenario, fpr: FprCurve
                ) -> HashResultRow:
    success = np.asarray(rec["success"], dtype=bool)
    claimed = np.asarray(rec["claimed"], dtype=bool)
    n = int(success.size)
    k = int(success.sum())
    rate, ci = _rate(k, n)
    q = rec.get("queries")
    max_q = rec["params"].get("max_queries") if q is not None else None
    by_query: list[QueryPoint] = []
    qs_med = qs_mean = None
    q_max = None
    if q is not None:
        qa = np.asarray(q, dtype=np.int64)
        qs_med = float(np.median(qa[success])) if k else None
        qs_mean = float(qa.mean()) if n else None
        q_max = int(qa.max()) if n else 0
        for b in _budgets(s, int(max_q or q_max or 1)):
            kb = int((success & (qa <= b)).sum())
            r, c = _rate(kb, n)
            by_query.append(QueryPoint(queries=b, successes=kb, rate=r, rate_ci=c))
    metrics = ("linf", "l2", "ssim", "psnr")
    dist = {m: _stats([v for v, ok in zip(rec[m], success, strict=True) if ok]) for m in metrics}
    dist_all = {m: _stats(rec[m]) for m in metrics}
    a = job.attack
    return HashResultRow(
        job_id=job.job_id, attack=a.key, attack_name=a.name, kind=rec["attack_kind"],
        goal=a.goal, norm=a.norm.value, eps=job.eps, eps_label=format_eps(job.eps),
        threshold=job.threshold, margin=a.margin, params=rec["params"], n=n, successes=k,
        rate=rate, rate_ci=ci, claimed=int(claimed.sum()),
        rejected=int((claimed & ~success).sum()), unclaimed=int((success & ~claimed).sum()),
        max_queries=max_q, queries_median=qs_med, queries_mean=qs_mean, queries_max=q_max,
        by_query=by_query, distortion=dist, distortion_all=dist_all,
        budget_violations=int(np.asarray(rec["violations"], dtype=bool).sum()),
        fpr_at_threshold=fpr.points[min(job.threshold, fpr.bits)].fpr,
        seconds=round(float(rec["seconds"]), 3))


def _transfer_row(job: HashJob, rec: dict[str, Any], ctx: Context) -> TransferRow:
    success = np.asarray(rec["success"], dtype=bool)
    ns = int(success.sum())
    cells = {}
    for h, thr in ctx.transfer.items():
        vals = [v for v, ok in zip(rec["transfer"][h], success, strict=True) if ok]
        k = int(sum(bool(v) for v in vals))
        r, ci = _rate(k, ns)
        cells[h] = TransferCell(threshold=thr, n=ns, evaded=k, rate=r, rate_ci=ci)
    return TransferRow(job_id=job.job_id, attack=job.attack.key, goal=job.attack.goal,
                       eps_label=format_eps(job.eps), threshold=job.threshold,
                       source_hash=ctx.s.target.hash, n_source_success=ns, checked=cells)


# ---------------------------------------------------------------------------- checks

def _checks(ctx: Context, detection: list[Detection], agreement: list[Agreement],
            rows: list[HashResultRow]) -> list[Check]:
    checks = []
    missed = [d for d in detection if d.detected < d.n]
    if missed:
        checks.append(Check(name="clean_detection", status="fail",
                            message="unmodified images are not all detected: "
                            + "; ".join(f"{d.n - d.detected} at threshold {d.threshold}"
                                        for d in missed),
                            details={"thresholds": [d.threshold for d in missed]}))
    else:
        checks.append(Check(name="clean_detection", status="pass",
                            message=f"all {detection[0].n if detection else 0} unmodified images "
                            "(read back from PNG) match their database entry at every threshold"))
    target = ctx.s.target.hash
    ag = next((x for x in agreement if x.hash == target and x.path == "fast"), None)
    if ag is None:
        checks.append(Check(name="fast_hash_agreement", status="skip",
                            message=f"{target} has no torch fast path; the attacks query the "
                            "reference library itself"))
    else:
        status = "pass" if ag.exact_rate >= 0.99 else "warn"
        backend = "onnxruntime" if HASHES.get(target).learned else "torch" \
            if target == "pdq" else fast_hash_backend(ctx.device)
        checks.append(Check(name="fast_hash_agreement", status=status,
                            message=f"the batched {target} ({backend}) reproduces the reference "
                            f"bits exactly on {ag.exact}/{ag.n} images ({ag.bit_agreement:.4%} "
                            "of bits"
                            + (f"; {ag.deferred} tied with the median and were hashed by the "
                               "reference" if ag.deferred else "")
                            + "); every success is re-verified by the reference library "
                            "regardless",
                            details={"mismatched": ag.mismatched, "backend": backend,
                                     "deferred": ag.deferred}))
    twin = next((x for x in agreement if x.hash == target and x.path == "twin"), None)
    soft = next((x for x in agreement if x.hash == target and x.path == "surrogate"), None)
    if twin is not None and soft is not None:
        good = min(twin.bit_agreement, soft.bit_agreement) >= 0.99
        checks.append(Check(
            name="twin_agreement", status="pass" if good else "warn",
            message=f"the onnx2torch twin of {target} gives the reference bits on "
            f"{twin.exact}/{twin.n} images ({twin.bit_agreement:.4%} of bits) from the same "
            f"resized input, and on {soft.exact}/{soft.n} ({soft.bit_agreement:.4%}) behind the "
            "differentiable resize the white-box attacks use"
            + ("" if good else "; a twin this far off steers the attacks badly, so white-box "
               "rates may understate what an attacker achieves"),
            details={"twin_bits": twin.bit_agreement, "surrogate_bits": soft.bit_agreement}))
    rejected = sum(r.rejected for r in rows)
    claimed = sum(r.claimed for r in rows)
    if rejected:
        checks.append(Check(name="verification", status="warn",
                            message=f"{rejected} of {claimed} fast-path successes were rejected "
                            "by the reference library on the saved PNG and are not counted",
                            details={"rows": [r.job_id for r in rows if r.rejected]}))
    else:
        checks.append(Check(name="verification", status="pass",
                            message=f"all {claimed} fast-path successes were confirmed by the "
                            "reference library on the saved PNG"))
    over = [r for r in rows if r.distortion_all["linf" if r.norm == "linf" else "l2"].max
            is not None and (r.distortion_all["linf" if r.norm == "linf" else "l2"].max or 0)
            > r.eps * (1 + 1e-4) + 1e-6]
    proposed = [r for r in rows if r.budget_violations]
    if over:
        checks.append(Check(name="budget", status="fail",
                            message=f"{len(over)} result(s) evaluated images beyond eps",
                            details={"rows": [r.job_id for r in over]}))
    elif proposed:
        checks.append(Check(name="budget", status="warn",
                            message=f"attacks proposed {sum(r.budget_violations for r in proposed)}"
                            " image(s) outside the budget; the runner projected them before "
                            "scoring", details={"rows": [r.job_id for r in proposed]}))
    else:
        checks.append(Check(name="budget", status="pass",
                            message="every evaluated image is inside its eps-ball, on the 8-bit "
                            "grid"))
    over_q = [r for r in rows if r.max_queries is not None and r.queries_max is not None
              and r.queries_max > r.max_queries]
    bb = [r for r in rows if r.max_queries is not None]
    if over_q:
        checks.append(Check(name="query_budget", status="fail",
                            message=f"{len(over_q)} black-box result(s) used more queries than "
                            "their budget", details={"rows": [r.job_id for r in over_q]}))
    elif bb:
        checks.append(Check(name="query_budget", status="pass",
                            message="every black-box image stayed within its query budget"))
    else:
        checks.append(Check(name="query_budget", status="skip",
                            message="no black-box attack in this scenario"))
    checks.append(_monotonic(rows, "eps", "a larger eps"))
    checks.append(_monotonic(rows, "threshold", "an easier threshold (smaller for evasion, "
                             "larger for collision)"))
    return checks


def _pdq_quality_check(quality: list[int], ids: list[str]) -> Check:
    """PDQ's reference rates each hash's quality (0-100); its authors discard hashes below 50
    (flat or tiny images), where matching says little."""
    low = [i for i, q in enumerate(quality) if q < 50]
    details = {"below_50": len(low), "min": min(quality, default=100),
               "images": [ids[i] for i in low[:20]]}
    if low:
        return Check(name="pdq_quality", status="warn", message=f"{len(low)} of {len(quality)} "
                     "database images have a PDQ quality below 50 (first: "
                     f"{ids[low[0]]}, quality {quality[low[0]]}); PDQ's authors discard such "
                     "hashes, so evasion and false matches on them say little", details=details)
    return Check(name="pdq_quality", status="pass", message=f"every database image has a PDQ "
                 f"quality of at least 50 (lowest {details['min']})", details=details)


def _corpus_check(c: CorpusFpr, thresholds: list[int]) -> Check:
    how = "all" if c.exhaustive else "a uniform sample of"
    rates = ", ".join(f"{c.points[t].fpr:.3g} at {t}" for t in thresholds)
    msg = (f"{how} {c.n_pairs:,} pairs of {c.n_images:,} benign images in {c.root}: "
           f"false-positive rate {rates}")
    details = {"n_pairs": c.n_pairs, "exhaustive": c.exhaustive, "unreadable": c.unreadable}
    if c.unreadable:
        return Check(name="corpus", status="warn", message=f"{msg}; {c.unreadable} file(s) "
                     f"could not be read and are left out (first: {c.unreadable_files[0]})",
                     details=details)
    return Check(name="corpus", status="pass", message=msg, details=details)


def _monotonic(rows: list[HashResultRow], axis: str, what: str) -> Check:
    """Success should not fall when the goal gets easier: a larger eps, or a threshold that is
    smaller (evasion) or larger (collision)."""
    groups: dict[tuple[Any, ...], list[HashResultRow]] = {}
    for r in rows:
        key = (r.attack, r.norm, r.goal, r.threshold if axis == "eps" else r.eps)
        groups.setdefault(key, []).append(r)
    bad = []
    compared = False
    for rs in groups.values():
        if len(rs) < 2:
            continue
        compared = True
        if axis == "eps":
            rs.sort(key=lambda r: r.eps)
        else:  # easier goal last
            rs.sort(key=lambda r: -r.threshold if r.goal == "evasion" else r.threshold)
        for lo, hi in itertools.pairwise(rs):
            tol = max(1.0 / max(lo.n, 1), 0.005)
            if hi.rate + tol < lo.rate:
                bad.append(f"{hi.attack}: {lo.rate:.3f} at {lo.eps_label}/t{lo.threshold} > "
                           f"{hi.rate:.3f} at {hi.eps_label}/t{hi.threshold}")
    name = f"monotonic_{axis}"
    if not compared:
        return Check(name=name, status="skip", message=f"no attack runs at more than one {axis}")
    if bad:
        return Check(name=name, status="warn",
                     message=f"success falls with {what}, so an attack is weaker than it "
                     "should be: " + "; ".join(bad[:3]), details={"violations": bad})
    return Check(name=name, status="pass", message=f"success never falls with {what}")


# ---------------------------------------------------------------------------- the run


def prepare(s: HashScenario, dev: torch.device, progress: bool = False) -> Context:
    """The images, the database (reference bits) and the transfer hashes' databases."""
    t = s.target
    params = HASHES.get(t.hash).check_params(t.hash_params)
    data = load_images(t.dataset.name, **t.dataset.options).subset(t.samples)
    torch.manual_seed(s.seed)
    db = reference_bits_batch(t.hash, data.images, params)
    transfer = dict(s.evaluation.transfer) if s.evaluation.transfer is not None else {
        name: HASHES.get(name).default_threshold for name in DEFAULT_TRANSFER}
    transfer.setdefault(t.hash, t.thresholds[0])
    transfer_db = {h: (db if h == t.hash else reference_bits_batch(h, data.images, {}))
                   for h in transfer}
    ctx = Context(s, data, data.tensor(dev), params, db, transfer, transfer_db, dev,
                  data.fingerprint())
    if s.evaluation.corpus is not None:
        from .corpus import corpus_files, corpus_fingerprint
        ctx.corpus = corpus_files(s.evaluation.corpus.root)
        ctx.corpus_fingerprint = corpus_fingerprint(s.evaluation.corpus.root, ctx.corpus)
    return ctx


def worker_prepare(s: HashScenario, dev: torch.device, identity: dict[str, Any],
                   where: str) -> Context:
    ctx = prepare(s, dev, False)
    if ctx.fingerprint != identity["data_fingerprint"]:
        raise ArangeError(f"{where}: the images differ from the driver's; give a dataset path "
                          "every node can read")
    if content_key({"db": ctx.db.tolist()}) != identity["database"]:
        raise ArangeError(f"{where}: the reference library hashes the database differently "
                          "from the driver's (same imagehash/pdqhash versions on every node?)")
    if ctx.corpus_fingerprint != identity.get("corpus", ""):
        raise ArangeError(f"{where}: the corpus folder differs from the driver's; give a path "
                          "every node can read, with the same files")
    return ctx


def identity(ctx: Context) -> dict[str, Any]:
    return {"data_fingerprint": ctx.fingerprint, "database": content_key({"db": ctx.db.tolist()}),
            "corpus": ctx.corpus_fingerprint}


def plan(s: HashScenario, ctx: Context) -> list[Chain]:
    jobs: list[Any] = [*expand_jobs(s, ctx.fingerprint, len(ctx.data)), *corpus_shards(s, ctx)]
    return [Chain([j]) for j in jobs]


def run_planned_job(ctx: Context, job: HashJob | CorpusShard, mask: Any,
                    progress: Progress | None) -> dict[str, Any]:
    if isinstance(job, CorpusShard):
        rec = run_shard(job, ctx)
        if progress is not None:
            progress.update(job.units)
        return rec
    return run_job(job, ctx, progress)


def _agreement(h: str, path: str, bits: np.ndarray, ref: np.ndarray, ids: list[str],
               deferred: int = 0) -> Agreement:
    n = len(ref)
    exact = (bits == ref).all(axis=1)
    k = int(exact.sum())
    r, ci = _rate(k, n)
    return Agreement(hash=h, path=path, n=n, exact=k, exact_rate=r, exact_rate_ci=ci,
                     deferred=deferred,
                     bit_agreement=float((bits == ref).mean()) if n else 1.0,
                     mismatched=[ids[i] for i in np.nonzero(~exact)[0][:20]])


def _learned_agreement(ctx: Context) -> list[Agreement]:
    """A learned target's exact path (onnxruntime), its twin on the same resized input, and the
    twin behind the differentiable resize that the white-box attacks use, each against the
    reference bits of the database."""
    from .learned import hash_for

    t = ctx.s.target
    h = hash_for(t.hash, ctx.params)
    images, ref, ids = ctx.data.images, ctx.db, ctx.data.ids
    out = [_agreement(t.hash, "fast", h.runtime_bits(images), ref, ids),
           _agreement(t.hash, "twin", h.twin_bits(images, ctx.device), ref, ids)]
    with torch.no_grad():
        soft = h.twin_values(ctx.x).cpu().numpy() >= 0
    out.append(_agreement(t.hash, "surrogate", soft, ref, ids))
    return out


def build_scorecard(state: RunState) -> HashScorecard:
    """Clean detection on the originals read back from PNG, fast-path agreement, the FPR
    curves, the rows, the transfer table, the checks and the per-image side file."""
    s: HashScenario = state.scenario
    ctx: Context = state.prepared
    t, data, out_dir = s.target, ctx.data, state.out
    spec = HASHES.get(t.hash)
    params, db, n = ctx.params, ctx.db, len(ctx.data)

    # originals: saved as PNG (for the gallery) and read back for the clean detection rate
    orig_bits = []
    for i in range(n):
        rel = out_dir / "images" / "original" / f"{i:04d}.png"
        if not rel.is_file() or not np.array_equal(read_png(rel), data.images[i]):
            atomic_write_bytes(rel, _png_bytes(data.images[i]))
        orig_bits.append(reference_bits(t.hash, read_png(rel), params))
    dmin = hamming_matrix(np.stack(orig_bits), db)
    detection = []
    for thr in t.thresholds:
        k = int((dmin.min(axis=1) <= thr).sum())
        r, ci = _rate(k, n)
        detection.append(Detection(threshold=thr, n=n, detected=k, rate=r, rate_ci=ci))

    agreement = []
    for h in FAST_HASHES:
        hp = params if h == t.hash else HASHES.get(h).check_params({})
        ref = db if h == t.hash else (ctx.transfer_db[h] if h in ctx.transfer_db else
                                      reference_bits_batch(h, data.images, hp))
        deferred: dict[str, torch.Tensor] = {}
        fb = fast_hashes((h,), ctx.x, int(hp.get("hash_size", 8)),
                         deferred=deferred)[h].cpu().numpy()
        agreement.append(_agreement(h, "fast", fb, ref, data.ids,
                                    int(deferred[h].sum()) if h in deferred else 0))
    if spec.learned:
        agreement += _learned_agreement(ctx)

    curves = [fpr_curve(t.hash, db)] + [fpr_curve(h, ctx.transfer_db[h]) for h in ctx.transfer
                                        if h != t.hash]
    fpr = curves[0]
    corpus = corpus_fpr(ctx, state.records, out_dir)
    records = [(j, r) for j, r in state.records if not isinstance(j, CorpusShard)]
    rows = [_result_row(j, r, s, fpr) for j, r in records]
    transfer_rows = [_transfer_row(j, r, ctx) for j, r in records]
    sweep = []
    for d in detection:
        p = fpr.points[d.threshold]
        sweep.append(SweepRow(threshold=d.threshold, fpr=p.fpr, fpr_ci=p.fpr_ci,
                              clean_detection=d.rate,
                              success={f"{r.attack}@{r.eps_label}": r.rate for r in rows
                                       if r.threshold == d.threshold}))
    checks = _checks(ctx, detection, agreement, rows)
    if corpus is not None:
        checks.append(_corpus_check(corpus, list(t.thresholds)))

    samples = {"schema_version": 1, "n": n, "ids": data.ids,
               "originals": [f"images/original/{i:04d}.png" for i in range(n)],
               "jobs": {j.job_id: {k: r[k] for k in (
                   "success", "claimed", "distance", "distance_fast", "queries", "linf", "l2",
                   "ssim", "psnr", "png", "transfer", "targets")} for j, r in records}}
    atomic_write_json(out_dir / "samples.json", samples)

    prov = HashProvenance(
        **state.environment(), reference=spec.describe(params),
        dataset=data.name, dataset_fingerprint=ctx.fingerprint, dataset_info=data.info,
        scenario_path=state.scenario_path, scenario=s.model_dump(mode="json"),
        jobs_reused=state.reused)
    quality = None
    if t.hash == "pdq":
        import pdqhash
        quality = [int(pdqhash.compute(np.ascontiguousarray(im))[1]) for im in data.images]
        checks.append(_pdq_quality_check(quality, data.ids))
    matcher = Matcher(hash=t.hash, hash_params=params, bits=int(db.shape[1]),
                      thresholds=list(t.thresholds), database_size=n,
                      reference=spec.describe(params), fast_path=spec.fast, quality=quality)
    return HashScorecard(name=s.name, provenance=prov, matcher=matcher, agreement=agreement,
                         detection=detection, fpr=curves, results=rows,
                         transfer=transfer_rows, sweep=sweep, checks=checks, corpus=corpus,
                         files={"samples": "samples.json", "images": "images",
                                "originals": "images/original"})


# ---------------------------------------------------------------------------- summary

def summary(card: HashScorecard) -> str:
    return format_hash_summary(card)


def format_hash_summary(card: HashScorecard) -> str:
    m = card.matcher
    p = card.provenance
    lines = [(f"{card.name}: {m.reference}, database of {m.database_size} images "
             f"({p.dataset}), device {p.device}, {p.seconds:.1f}s")]
    for a in card.agreement:
        if a.hash == m.hash:
            what = {"fast": "fast path", "twin": "onnx2torch twin",
                    "surrogate": "twin behind the differentiable resize"}[a.path]
            lines.append(f"{what} vs reference [{a.hash}]: {a.exact}/{a.n} images exact "
                         f"({a.bit_agreement:.2%} of bits)")
    header = (f"{'threshold':>9} {'FPR':>8} {'attack':<16} {'norm':<5} {'eps':>7} "
              f"{'success':>8} {'95% CI':>13} {'med q':>7} {'SSIM':>6} {'PSNR':>6} "
              f"{'secs':>6}")
    lines += ["", header, "-" * len(header)]
    for r in card.results:
        lo, hi = r.rate_ci
        ssim = r.distortion["ssim"].mean
        psnr = r.distortion["psnr"].mean
        q = f"{r.queries_median:.0f}" if r.queries_median is not None else "-"
        lines.append(f"{r.threshold:>9} {r.fpr_at_threshold:>8.4f} {r.attack:<16} {r.norm:<5} "
                     f"{r.eps_label:>7} {r.rate:>8.3f} {f'{lo:.3f}-{hi:.3f}':>13} {q:>7} "
                     f"{(f'{ssim:.3f}' if ssim is not None else '-'):>6} "
                     f"{(f'{psnr:.1f}' if psnr is not None else '-'):>6} {r.seconds:>6.1f}")
    c = card.corpus
    if c is not None:
        rate = c.n_pairs / max(c.seconds["counting"], 1e-9)
        lines += ["", (f"corpus {c.root}: {c.n_images:,} images, "
                       f"{'all' if c.exhaustive else 'a sample of'} {c.n_pairs:,} pairs "
                       f"(hashing {c.seconds['hashing']:.1f}s, counting "
                       f"{c.seconds['counting']:.1f}s, {rate:,.0f} pairs/s)")]
        for t in m.thresholds:
            pt = c.points[t]
            lines.append(f"  threshold {t:>3}: FPR {pt.fpr:.3g} ({pt.false_positives:,} pairs; "
                         f"95% CI {pt.fpr_ci[0]:.3g}-{pt.fpr_ci[1]:.3g})")
    lines += format_checks(card.checks)
    return "\n".join(lines)
