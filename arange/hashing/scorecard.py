"""The hash-matching scorecard: the same envelope as :mod:`arange.core.scorecard` (schema_version,
task, name, provenance, checks, files) with the hash range's own tables.

Every rate carries its count and a 95% Wilson interval. Successes are counted only after the
reference library re-hashed the saved PNG. Per-image outcomes live in ``samples.json``; the
evading images in ``images/<job_id>/`` and the originals in ``images/original/``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from arange.core.scorecard import (
    Check,
    DataProvenance,
    Model,
    RunProvenance,
    ScorecardBase,
    read_scorecard,
)

SCHEMA_VERSION = 1
TASK = "hash_matching"


class _Oracle(Model):
    reference: str                 # the oracle, e.g. "imagehash 4.3.2 phash(hash_size=8)"


# The run, then the oracle, then the data and scenario (in this order in the JSON).
class HashProvenance(DataProvenance, _Oracle, RunProvenance):
    pass


class Matcher(Model):
    hash: str
    hash_params: dict[str, Any]
    bits: int
    thresholds: list[int]
    database_size: int
    reference: str
    fast_path: bool                # torch implementation used in the attacks' inner loop
    # PDQ: the reference's quality (0-100) of each database image; PDQ's authors treat hashes
    # below 50 as unreliable
    quality: list[int] | None = None


class Agreement(Model):
    """A fast path vs the reference library on the evaluation images. ``path``: ``fast`` (the
    batched exact hash the attacks query), or for learned hashes ``twin`` (the onnx2torch twin on
    the same resized input) and ``surrogate`` (the twin behind the differentiable resize)."""

    hash: str
    path: Literal["fast", "twin", "surrogate"] = "fast"
    n: int
    exact: int                     # images whose bits all agree
    exact_rate: float
    exact_rate_ci: tuple[float, float]
    bit_agreement: float           # fraction of agreeing bits over all images
    # images whose coefficients tie with the median (flat, symmetric, tiny): the fast path
    # hands them to the reference library (arange.hashing.fast.TIE_TOLERANCE)
    deferred: int = 0
    mismatched: list[str] = Field(default_factory=list)  # image ids (first 20)


class Detection(Model):
    """Unmodified images (read back from their PNG) matched against the database."""

    threshold: int
    n: int
    detected: int
    rate: float
    rate_ci: tuple[float, float]


class FprPoint(Model):
    threshold: int
    false_positives: int
    fpr: float
    fpr_ci: tuple[float, float]


class FprCurve(Model):
    """False matches among pairs of distinct benign images, at every threshold. The pairs share
    images, so the interval (which treats pairs as independent) is optimistic."""

    hash: str
    bits: int
    n_images: int
    n_pairs: int
    min_distance: int
    points: list[FprPoint]


class CorpusFpr(FprCurve):
    """False matches among the pairs of a folder of benign images: every pair (``exhaustive``)
    or a uniform sample of ``n_pairs``; hashed by the reference library from the files as they
    are."""

    root: str
    fingerprint: str
    n_files: int
    unreadable: int
    unreadable_files: list[str] = Field(default_factory=list)  # the first 20
    exhaustive: bool
    seconds: dict[str, float]  # hashing (summed over the shards), counting (on the driver)


class QueryPoint(Model):
    queries: int
    successes: int
    rate: float
    rate_ci: tuple[float, float]


class Stats(Model):
    n: int
    mean: float | None = None
    median: float | None = None
    p05: float | None = None
    p95: float | None = None
    min: float | None = None
    max: float | None = None


class HashResultRow(Model):
    job_id: str
    attack: str                    # the scenario's label
    attack_name: str               # the registered hash attack
    kind: str                      # white-box | black-box
    goal: Literal["evasion", "collision"]
    norm: str
    eps: float
    eps_label: str
    threshold: int
    margin: int
    params: dict[str, Any]
    n: int
    successes: int                 # verified by the reference library on the saved PNG
    rate: float
    rate_ci: tuple[float, float]
    claimed: int                   # successes according to the torch fast path
    rejected: int                  # fast-path claims the reference library rejected (not counted)
    unclaimed: int                 # verified successes the fast path did not claim
    max_queries: int | None = None
    queries_median: float | None = None   # over successes (black-box)
    queries_mean: float | None = None     # over all images (black-box)
    queries_max: int | None = None
    by_query: list[QueryPoint] = Field(default_factory=list)
    distortion: dict[str, Stats]          # linf, l2, ssim, psnr over successes
    distortion_all: dict[str, Stats]      # the same over every final image
    budget_violations: int                # raw attack outputs the runner had to project
    fpr_at_threshold: float
    seconds: float


class TransferCell(Model):
    threshold: int
    n: int
    evaded: int                    # evasion: no database entry within threshold; collision: hit
    rate: float
    rate_ci: tuple[float, float]


class TransferRow(Model):
    """Images that succeeded against the target hash, checked against the other hashes."""

    job_id: str
    attack: str
    goal: Literal["evasion", "collision"]
    eps_label: str
    threshold: int
    source_hash: str
    n_source_success: int
    checked: dict[str, TransferCell]


class SweepRow(Model):
    """Evasion next to the false-positive cost, per threshold."""

    threshold: int
    fpr: float
    fpr_ci: tuple[float, float]
    clean_detection: float
    success: dict[str, float]      # "<attack>@<eps>" -> verified success rate at this threshold


class HashScorecard(ScorecardBase):
    schema_version: int = SCHEMA_VERSION
    task: Literal["hash_matching"] = TASK
    name: str
    provenance: HashProvenance
    matcher: Matcher
    agreement: list[Agreement]
    detection: list[Detection]
    fpr: list[FprCurve]
    results: list[HashResultRow]
    transfer: list[TransferRow]
    sweep: list[SweepRow]
    checks: list[Check]
    corpus: CorpusFpr | None = None
    files: dict[str, str] = Field(default_factory=dict)

    def row(self, attack: str, eps: float, threshold: int) -> HashResultRow:
        for r in self.results:
            if r.attack == attack and r.threshold == threshold and abs(r.eps - eps) < 1e-9:
                return r
        raise KeyError(f"no result for attack={attack!r} eps={eps} threshold={threshold}")


def load_hash_scorecard(path: str | Path) -> HashScorecard:
    card = read_scorecard(path, TASK)
    assert isinstance(card, HashScorecard)
    return card
