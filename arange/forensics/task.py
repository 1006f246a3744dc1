"""The ``forgery_localization`` task: inpainting-forgery detectors scored per inpainter, under
benign perturbations and evasion attacks (hooks in :mod:`.runner`), and its gate metrics."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from arange.core.task import Task, register_task

from .scenario import TASK, load_forensics_scenario


class ForensicsTask(Task):
    name = TASK
    description = ("inpainting-forgery localisation: per-pixel detectors scored per inpainter, "
                   "under perturbations and evasion attacks")
    short = "inpainting-forgery localisation under perturbations and evasion attacks"
    unit = "job"
    libraries = ("numpy", "scipy", "scikit-image", "opencv-python-headless", "pillow",
                 "pydantic")
    runner = "arange.forensics.runner"
    scorecard_model = "arange.forensics.scorecard:ForensicsScorecard"

    def load(self, raw: dict[str, Any], source: str, folder: Path | None) -> Any:
        return load_forensics_scenario(raw, source, folder)


register_task(ForensicsTask())


def _per_image(*keys: str, real: bool = False) -> Any:
    """Per-image arrays of a row from ``samples.json`` (``real``: the untouched images'
    scores of the row's detector, for image AUC)."""
    def read(row: Mapping[str, Any], card: Mapping[str, Any], samples: Mapping[str, Any]
             ) -> dict[str, list[Any]]:
        job = samples["jobs"][row["job_id"]]
        out = {k: job[k] for k in keys}
        if real:
            out["real"] = samples["jobs"][f"{row['detector']}__untouched"]["score"]
        return out
    return read


def _pixel_auc(d: Mapping[str, Any], idx: Any) -> float:
    from .metrics import auc_from_histograms
    return auc_from_histograms(d["pos_hist"][idx].sum(axis=0), d["neg_hist"][idx].sum(axis=0))


def _mean(key: str) -> Any:
    def stat(d: Mapping[str, Any], idx: Any) -> float:
        return float(d[key][idx].mean())
    return stat


def _image_auc(d: Mapping[str, Any], idx: Any) -> float:
    from .metrics import image_auc
    return float(image_auc(d["score"][idx], d["real"][idx]) or float("nan"))


def _flagged(row: Mapping[str, Any], card: Mapping[str, Any], samples: Mapping[str, Any]
             ) -> list[bool | None]:
    return [float(v) >= 0.5 for v in samples["jobs"][row["job_id"]]["score"]]


def _register_gate_metrics() -> None:
    from arange.gates import METRICS, Metric, register_metrics

    if TASK in METRICS:
        return
    sel = ("detector", "inpainter")
    register_metrics(TASK, [
        Metric("pixel_auc", table="results", field="auc", higher_is_better=True,
               key_fields=sel, selectors=sel, rate=False,
               per_image=_per_image("pos_hist", "neg_hist"), statistic=_pixel_auc,
               per_image_tolerance=0.02,  # histogram bins vs exact scores
               description="pooled pixel AUC on unattacked forgeries, per detector and "
               "inpainter"),
        Metric("f1", table="results", field="f1", higher_is_better=True, key_fields=sel,
               selectors=sel, rate=False, per_image=_per_image("f1"), statistic=_mean("f1"),
               description="mean per-image F1 at 0.5"),
        Metric("iou", table="results", field="iou", higher_is_better=True, key_fields=sel,
               selectors=sel, rate=False, per_image=_per_image("iou"),
               statistic=_mean("iou"), description="mean per-image IoU at 0.5"),
        Metric("image_auc", table="results", field="image_auc", higher_is_better=True,
               key_fields=sel, selectors=sel, rate=False,
               per_image=_per_image("score", real=True), statistic=_image_auc,
               per_image_tolerance=0.005,  # scores are stored to 5 decimals
               description="forged vs untouched images by image score"),
        Metric("image_fpr", table="untouched", field="image_fpr", higher_is_better=False,
               key_fields=("detector",), selectors=("detector",), outcomes=_flagged,
               description="untouched images flagged as forged (image score >= 0.5)"),
    ])


_register_gate_metrics()
