"""Views for inpainting-forgery localisation runs (``task: forgery_localization``).

The dashboard reads these scorecards defensively: every field below is optional, aliases in
parentheses are accepted, and a view whose fields are missing shows "no data of this kind"
instead of failing. Expected fields:

``results`` - one row per (detector, inpainter) on unattacked forgeries, and one per
    (detector, perturbation or attack, strength) for robustness:
    ``job_id`` (names ``examples/<job_id>.npz``), ``detector``, ``defense``, ``inpainter``,
    ``seen`` (bool: the inpainter was among the detector's training inpainters; also
    ``in_training``, or ``split: "seen" | "unseen"``), ``auc``, ``auc_ci`` ``[lo, hi]``,
    ``f1``, ``f1_ci``, ``iou``, ``n``; robustness rows also carry ``perturbation``
    (``attack``, ``transform``) and ``strength`` (``eps``, ``level``) with ``eps_label``.

``robustness`` - top level, optional: more robustness rows of the same shape.

``examples/<job_id>.npz`` - ``image`` (``forged``) uint8 NCHW, ``mask`` (``true_mask``) N x H x W
    (bool or 0/1), ``score_map`` (``map``, ``score``) N x H x W floats in [0, 1], optional
    ``inpainter`` (strings) and ``f1`` per example.
"""

from __future__ import annotations

from typing import Any

from .data import Run, RunDataError, example_file, interval, number, pick, rows_of

TASK = "forgery_localization"
NO_DATA = "no data of this kind"


def _seen(r: dict[str, Any]) -> str:
    value = pick(r, "seen", "in_training")
    if isinstance(value, bool):
        return "seen" if value else "unseen"
    split = r.get("split")
    if isinstance(split, str) and split.lower() in ("seen", "unseen"):
        return split.lower()
    return "unknown"


def _is_robustness(r: dict[str, Any]) -> bool:
    return pick(r, "perturbation", "attack", "transform") is not None and \
        number(pick(r, "strength", "eps", "level")) is not None


def inpainter_rows(card: dict[str, Any]) -> list[dict[str, Any]]:
    """Per-inpainter AUC/F1 (unattacked rows), with seen/unseen marked."""
    out = []
    for r in rows_of(card, "results"):
        if _is_robustness(r) or not isinstance(r.get("inpainter"), str):
            continue
        auc, f1 = number(r.get("auc")), number(r.get("f1"))
        if auc is None and f1 is None:
            continue
        auc_ci, f1_ci = interval(r.get("auc_ci")), interval(r.get("f1_ci"))
        out.append({"detector": str(pick(r, "detector", "defense") or "?"),
                    "inpainter": r["inpainter"], "seen": _seen(r), "auc": auc,
                    "auc_ci": f"{auc_ci[0]:.3f}-{auc_ci[1]:.3f}" if auc_ci else "",
                    "f1": f1, "f1_ci": f"{f1_ci[0]:.3f}-{f1_ci[1]:.3f}" if f1_ci else "",
                    "iou": number(r.get("iou")), "n": number(r.get("n")),
                    "job_id": str(r.get("job_id", ""))})
    return out


def robustness_rows(card: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for r in rows_of(card, "results") + rows_of(card, "robustness"):
        if not _is_robustness(r):
            continue
        strength = number(pick(r, "strength", "eps", "level"))
        for metric in ("auc", "f1"):
            value = number(r.get(metric))
            if value is None:
                continue
            out.append({"detector": str(pick(r, "detector", "defense") or "?"),
                        "perturbation": str(pick(r, "perturbation", "attack", "transform")),
                        "strength": strength, "label": str(r.get("eps_label", strength)),
                        "metric": metric, "value": value,
                        "series": f"{pick(r, 'perturbation', 'attack', 'transform')} ({metric})",
                        "job_id": str(r.get("job_id", ""))})
    return out


EXTERNAL_METRICS = ("pixel_f1", "pixel_f1_best", "pixel_auc", "iou", "image_auc", "image_f1",
                    "image_accuracy")


def external_rows(card: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows on the user's own forgery set: clean, benign and adversarial conditions of each
    detector side by side (``external`` in the scorecard)."""
    out = []
    for r in rows_of(card, "external"):
        row = {"detector": str(r.get("detector", "")), "condition": str(r.get("condition", "")),
               "kind": str(r.get("kind", "")), "source": r.get("source") or ""}
        row |= {m: number(r.get(m)) for m in EXTERNAL_METRICS}
        row["tampered"] = r.get("n_tampered")
        row["authentic"] = r.get("n_authentic")
        out.append(row)
    return out


def forensics_headline(card: dict[str, Any]) -> dict[str, Any]:
    rows = [r for r in inpainter_rows(card) if r["auc"] is not None]
    if not rows:
        return {}
    low = min(rows, key=lambda r: r["auc"])
    return {"lowest AUC": low["auc"], "where": f"{low['inpainter']} ({low['seen']})"}


def forensics_examples(arrays: dict[str, Any], source: str) -> list[dict[str, Any]]:
    image = pick(arrays, "image", "forged")
    mask = pick(arrays, "mask", "true_mask")
    score = pick(arrays, "score_map", "map", "score")
    if image is None or mask is None or score is None:
        raise RunDataError(f"{source}: the example file needs image, mask and score_map arrays")
    if not len(image) == len(mask) == len(score):
        raise RunDataError(f"{source}: image, mask and score_map hold different numbers of "
                           "examples")
    names = arrays.get("inpainter")
    f1 = arrays.get("f1")
    return [{"image": image[i], "mask": mask[i], "score": score[i],
             "inpainter": str(names[i]) if names is not None and len(names) > i else None,
             "f1": number(f1[i].item()) if f1 is not None and len(f1) > i else None}
            for i in range(len(image))]


# ---------------------------------------------------------------------------- page

def render(run: Run) -> None:
    import streamlit as st

    from . import charts
    from .tables import show_table

    card = run.card or {}
    st.subheader(f"Forgery localisation: {run.name}")
    ext = external_rows(card)
    if ext:
        data = card.get("data") or {}
        st.markdown(f"#### Your forgery set ({data.get('dataset', '?')}: "
                    f"{data.get('tampered', '?')} tampered, {data.get('authentic', '?')} "
                    "authentic): clean, benign and adversarial conditions side by side")
        _metric_bars(ext, "condition", "kind", ("pixel_f1", "pixel_auc"))
        show_table(ext)
        return
    rows = inpainter_rows(card)
    rob = robustness_rows(card)
    if not rows and not rob:
        st.info(f"{NO_DATA}: this scorecard has no per-inpainter AUC/F1 or robustness rows.")
        return
    head = forensics_headline(card)
    if head:
        st.metric("Lowest pixel AUC", f"{head['lowest AUC']:.3f}", help=head["where"])
    st.markdown("#### Per-inpainter AUC and F1 (seen inpainters were in the detector's "
                "training data; unseen ones test generalisation)")
    if rows:
        _metric_bars(rows, "inpainter", "seen", ("auc", "f1"))
        show_table(rows)
    else:
        st.info(f"{NO_DATA}: no per-inpainter rows.")
    st.markdown("#### Robustness curves")
    if rob:
        st.altair_chart(charts.curve_chart(rob, x="strength", y="value", color="series",
                                           facet="detector", x_title="strength",
                                           y_title="AUC / F1",
                                           tooltip=["detector", "perturbation", "label",
                                                    "metric", "value"]), width="stretch")
    else:
        st.info(f"{NO_DATA}: no robustness rows (perturbation/attack with a strength).")


def _metric_bars(rows: list[dict[str, Any]], x: str, color: str, metrics: tuple[str, ...]
                 ) -> None:
    """One bar per row and metric, a panel per metric."""
    import streamlit as st

    from . import charts

    long = [{"detector": r["detector"], x: r[x], color: r[color], "metric": m, "value": r[m]}
            for r in rows for m in metrics if r[m] is not None]
    if long:
        st.altair_chart(charts.bar_chart(long, x=x, y="value", color=color, column="metric",
                                         x_title=x, y_title="score",
                                         tooltip=["detector", x, color, "metric", "value"]),
                        width="stretch")


def render_examples(run: Run, job_id: str) -> None:
    import streamlit as st

    from .images import load_npz, mask_image, overlay, to_display

    path = example_file(run, job_id)
    try:
        items = forensics_examples(load_npz(path), str(path))
    except RunDataError as e:
        st.warning(str(e))
        return
    for i, ex in enumerate(items):
        c1, c2, c3 = st.columns(3)
        c1.image(to_display(ex["image"]), caption=f"forged image {i}" +
                 (f" ({ex['inpainter']})" if ex["inpainter"] else ""))
        c2.image(to_display(mask_image(ex["mask"])), caption="true mask")
        try:
            c3.image(to_display(overlay(ex["image"], ex["score"], ex["mask"])),
                     caption="detector map (red) over the image, true mask edge in green" +
                     (f"; F1 {ex['f1']:.3f}" if ex["f1"] is not None else ""))
        except RunDataError as e:
            c3.warning(str(e))
