"""Registers the ``forgery_localization`` task with :mod:`arange.tasks`."""

from __future__ import annotations

from arange.tasks import register_task

from .scenario import TASK, load_forensics_scenario

register_task(TASK, load_forensics_scenario, "arange.forensics.runner", "run_forensics_scenario",
              "format_forensics_summary",
              description="inpainting-forgery localisation: per-pixel detectors scored per "
              "inpainter, under perturbations and evasion attacks",
              short="inpainting-forgery localisation under perturbations and evasion attacks")


def _register_gate_metrics() -> None:
    from arange.gates import METRICS, Metric, register_metrics

    if TASK in METRICS:
        return
    sel = ("detector", "inpainter")
    register_metrics(TASK, [
        Metric("pixel_auc", table="results", field="auc", higher_is_better=True,
               key_fields=sel, selectors=sel, rate=False,
               description="pooled pixel AUC on unattacked forgeries, per detector and "
               "inpainter"),
        Metric("f1", table="results", field="f1", higher_is_better=True, key_fields=sel,
               selectors=sel, rate=False, description="mean per-image F1 at 0.5"),
        Metric("iou", table="results", field="iou", higher_is_better=True, key_fields=sel,
               selectors=sel, rate=False, description="mean per-image IoU at 0.5"),
        Metric("image_auc", table="results", field="image_auc", higher_is_better=True,
               key_fields=sel, selectors=sel, rate=False,
               description="forged vs untouched images by image score"),
        Metric("image_fpr", table="untouched", field="image_fpr", higher_is_better=False,
               key_fields=("detector",), selectors=("detector",),
               description="untouched images flagged as forged (image score >= 0.5)"),
    ])


_register_gate_metrics()
