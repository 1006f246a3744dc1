"""The forgery-localisation scorecard: the same envelope as :mod:`arange.core.scorecard`
(schema_version, task, name, provenance, checks, files) with the forensics range's own tables.

``results`` holds one row per (detector, inpainter) on unattacked forgeries; ``untouched`` one
row per detector on the real images (false positives); ``robustness`` the benign perturbations
and the adversarial rows (``perturbation`` and ``strength`` set; ``strength`` 0 is the same
images unattacked). The field names follow what ``dashboard/forensics_view.py`` reads. Intervals
are 95%: Wilson for rates, percentile bootstrap over images otherwise.
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
TASK = "forgery_localization"


class _Timings(Model):
    timings: dict[str, float] = Field(default_factory=dict)   # seconds per stage


# The run, then the stage timings, then the data and scenario (in this order in the JSON).
class ForensicsProvenance(DataProvenance, _Timings, RunProvenance):
    pass


class InpainterInfo(Model):
    name: str
    kind: str                       # classical | learned
    seen: bool                      # among the detectors' training forgeries
    params: dict[str, Any]
    description: str
    training: dict[str, Any] = Field(default_factory=dict)
    changed_outside_mask: int = 0   # pixels outside the mask that differ from the real image


class DetectorInfo(Model):
    label: str
    name: str
    params: dict[str, Any]
    training: dict[str, Any]
    seed: int
    weights: str
    sha256: str
    train_seconds: float | None = None
    cached: bool = False
    role: Literal["detector", "transfer_source"] = "detector"
    # a detector you bring: its source (e.g. onnx:/path/detector.onnx) and, for ONNX, the
    # share of test pixels (and images) on which the attacked twin and onnxruntime agree
    source: str | None = None
    deployed_agreement: float | None = None
    deployed_image_agreement: float | None = None


class ResultRow(Model):
    job_id: str
    detector: str
    inpainter: str
    seen: bool
    n: int                          # forged images
    auc: float | None               # pooled pixel AUC
    auc_ci: tuple[float, float]
    f1: float                       # mean per-image F1 at threshold 0.5
    f1_ci: tuple[float, float]
    f1_best: float                  # mean F1 at the best shared threshold (optimistic)
    best_threshold: float
    iou: float
    iou_ci: tuple[float, float]
    f1_boundary_excluded: float     # F1 at 0.5 without the 2-pixel band around the mask edge
    image_auc: float | None         # forged vs untouched images by image score
    image_auc_ci: tuple[float, float]
    detection_rate: float           # forged images with image score >= 0.5
    detection_rate_ci: tuple[float, float]
    mask_area: float                # mean forged fraction
    mask_score: float               # mean probability inside the masks


class UntouchedRow(Model):
    job_id: str
    detector: str
    n: int
    image_fpr: float                # untouched images with image score >= 0.5
    image_fpr_ci: tuple[float, float]
    pixel_fpr: float                # untouched pixels with probability >= 0.5
    mean_score: float


class RobustnessRow(Model):
    job_id: str
    detector: str                   # whose map is scored
    perturbation: str               # jpeg | resize | noise | pgd | pgd+jpeg75 | transfer_pgd ...
    kind: Literal["benign", "white-box", "transfer"]
    strength: float                 # quality, scale, sigma or eps (0 = unperturbed)
    eps_label: str
    source: str | None = None       # the detector the attack was crafted on
    n: int
    auc: float | None
    auc_ci: tuple[float, float]
    auc_seen: float | None = None
    auc_unseen: float | None = None
    f1: float
    f1_ci: tuple[float, float]
    iou: float
    iou_ci: tuple[float, float]
    f1_boundary_excluded: float
    detection_rate: float
    detection_rate_ci: tuple[float, float]
    image_auc: float | None = None  # benign rows: against the same perturbation of the real set
    image_fpr: float | None = None
    mask_score: float               # mean probability inside the masks
    linf_max: float | None = None   # attacks: largest evaluated perturbation (L-inf)
    norm: str | None = None         # attacks: the threat model's norm (linf | l2)
    perturbation_max: float | None = None  # attacks: largest evaluated perturbation, in norm
    off_grid: int | None = None     # attacks: evaluated images not on the 8-bit grid
    budget_violations: int | None = None  # raw attack outputs the runner had to project
    attack_params: dict[str, Any] = Field(default_factory=dict)
    seconds: float = 0.0


class ExternalRow(Model):
    """One detector under one condition on your forgery set (target.dataset: casia, imdl_json,
    forgery_manifest). Pixel metrics are means over the tampered images, as IMDL-BenCo reports
    them; image metrics are over all images, by the image score at 0.5."""

    job_id: str
    detector: str                   # whose map is scored
    condition: str                  # clean | jpeg-75 | pgd-4/255 | transfer_pgd-4/255+jpeg75 ...
    kind: Literal["clean", "benign", "white-box", "transfer"]
    perturbation: str               # none | jpeg | resize | noise | blur | pgd | transfer_pgd ...
    strength: float = 0.0
    eps_label: str = "0"
    source: str | None = None       # attacks: the detector the attack was crafted on
    n_tampered: int
    n_authentic: int
    pixel_f1: float | None
    pixel_f1_ci: tuple[float, float]
    pixel_f1_best: float
    best_threshold: float
    pixel_auc: float | None
    pixel_auc_images: int           # tampered images with a pixel AUC (mask neither empty nor full)
    iou: float | None
    image_auc: float | None
    image_f1: float
    image_accuracy: float
    per_source: dict[str, dict[str, Any]] = Field(default_factory=dict)
    norm: str | None = None
    perturbation_max: float | None = None
    off_grid: int | None = None
    budget_violations: int | None = None
    attack_params: dict[str, Any] = Field(default_factory=dict)
    seconds: float = 0.0


class ForensicsScorecard(ScorecardBase):
    schema_version: int = SCHEMA_VERSION
    task: Literal["forgery_localization"] = TASK
    name: str
    provenance: ForensicsProvenance
    data: dict[str, Any]
    inpainters: list[InpainterInfo]
    detectors: list[DetectorInfo]
    results: list[ResultRow]
    untouched: list[UntouchedRow]
    robustness: list[RobustnessRow]
    checks: list[Check]
    external: list[ExternalRow] = Field(default_factory=list)
    files: dict[str, str] = Field(default_factory=dict)

    def result(self, detector: str, inpainter: str) -> ResultRow:
        for r in self.results:
            if r.detector == detector and r.inpainter == inpainter:
                return r
        raise KeyError(f"no result for detector={detector!r} inpainter={inpainter!r}")


def load_forensics_scorecard(path: str | Path) -> ForensicsScorecard:
    card = read_scorecard(path, TASK)
    assert isinstance(card, ForensicsScorecard)
    return card
