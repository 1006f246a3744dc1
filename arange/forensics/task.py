"""The ``forgery_localization`` task: inpainting-forgery detectors scored per inpainter, under
benign perturbations and evasion attacks (hooks in :mod:`.runner`), and its gate metrics."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from arange.core.task import Task, register_task

from .scenario import TASK, load_forensics_scenario

if TYPE_CHECKING:
    import torch

    from arange.core.driver import RunState
    from arange.core.executors import Chain, Progress


class ForensicsTask(Task):
    name = TASK
    description = ("inpainting-forgery localisation: per-pixel detectors scored per inpainter, "
                   "under perturbations and evasion attacks")
    short = "inpainting-forgery localisation under perturbations and evasion attacks"
    unit = "job"
    job_format = 1
    libraries = ("numpy", "scipy", "scikit-image", "opencv-python-headless", "pillow",
                 "pydantic")

    def load(self, raw: dict[str, Any], source: str, folder: Path | None) -> Any:
        return load_forensics_scenario(raw, source, folder)

    def prepare(self, scenario: Any, device: torch.device, progress: bool) -> Any:
        from .runner import prepare
        return prepare(scenario, device, progress)

    def plan(self, scenario: Any, prepared: Any) -> list[Chain]:
        from .runner import plan
        return plan(scenario, prepared)

    def run_job(self, prepared: Any, job: Any, mask: Any, progress: Progress | None
                ) -> dict[str, Any]:
        from .runner import run_planned_job
        return run_planned_job(prepared, job)

    def identity(self, prepared: Any) -> dict[str, Any]:
        from .runner import identity
        return identity(prepared)

    def worker_prepare(self, scenario: Any, device: torch.device, identity: dict[str, Any],
                       where: str) -> Any:
        from .runner import worker_prepare
        return worker_prepare(scenario, device, identity, where)

    def scorecard(self, state: RunState) -> Any:
        from .runner import build_scorecard
        return build_scorecard(state)

    def summary(self, card: Any) -> str:
        from .runner import format_forensics_summary
        return format_forensics_summary(card)

    def load_scorecard(self, path: Path) -> Any:
        from .scorecard import load_forensics_scorecard
        return load_forensics_scorecard(path)


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
