"""Views for perceptual-hash evasion runs (``task: hash_matching``).

The dashboard reads these scorecards defensively: every field below is optional, aliases in
parentheses are accepted, and a view whose fields are missing shows "no data of this kind"
instead of failing. Expected fields:

``results`` - one row per (defense, attack, budget):
    ``job_id`` (str, names ``examples/<job_id>.npz``), ``attack``, ``hash`` (``hash_name``,
    ``algorithm``, ``hasher``), ``defense``, ``norm``, ``eps`` (``budget``), ``eps_label``,
    ``n``, ``evasion_rate`` (``success_rate``, ``attack_success_rate``), ``evasion_rate_ci``
    ``[lo, hi]`` (``success_rate_ci``), ``queries_mean`` (``queries``), ``max_queries``
    (``query_budget``), ``hamming_mean``, ``ssim_mean``, ``threshold`` (the matcher's Hamming
    threshold) and ``evasion_vs_queries`` (``query_curve``): a list of
    ``{"queries": int, "evasion_rate": float}``.

``threshold_tradeoff`` (``tradeoff``, ``roc``) - top level, or inside a result row: a list of
    ``{"hash", "threshold", "fpr", "evasion_rate"}`` (evasion rate of the attack against the
    matcher's false-positive rate on benign pairs as the threshold moves).

``examples/<job_id>.npz`` - ``original`` (``clean``) and ``adv`` (``evading``) uint8 NCHW,
    optional ``hamming``, ``ssim`` (computed from the images when absent), ``queries`` and
    ``evaded`` (bool), one value per example.
"""

from __future__ import annotations

from typing import Any

from .data import Run, RunDataError, example_file, interval, number, rows_of

TASK = "hash_matching"
NO_DATA = "no data of this kind"


def pick(row: dict[str, Any], *names: str) -> Any:
    for name in names:
        if name in row and row[name] is not None:
            return row[name]
    return None


def hash_rows(card: dict[str, Any]) -> list[dict[str, Any]]:
    """Result rows normalised to the names above (rows without an evasion rate are dropped)."""
    out = []
    for r in rows_of(card, "results"):
        rate = number(pick(r, "evasion_rate", "success_rate", "attack_success_rate"))
        if rate is None:
            continue
        ci = interval(pick(r, "evasion_rate_ci", "success_rate_ci"))
        eps = number(pick(r, "eps", "budget"))
        out.append({
            "job_id": str(r.get("job_id", "")),
            "attack": str(r.get("attack", "?")),
            "hash": str(pick(r, "hash", "hash_name", "algorithm", "hasher") or "?"),
            "defense": str(r.get("defense", "none")),
            "norm": str(r.get("norm", "")),
            "eps": eps,
            "eps_label": str(r.get("eps_label") or (f"{eps:.4g}" if eps is not None else "")),
            "n": number(r.get("n")),
            "evasion_rate": rate,
            "ci_lo": ci[0] if ci else None,
            "ci_hi": ci[1] if ci else None,
            "queries_mean": number(pick(r, "queries_mean", "queries")),
            "max_queries": number(pick(r, "max_queries", "query_budget")),
            "hamming_mean": number(r.get("hamming_mean")),
            "ssim_mean": number(r.get("ssim_mean")),
            "threshold": number(r.get("threshold")),
            "_row": r,
        })
    return out


def query_curve_rows(card: dict[str, Any]) -> list[dict[str, Any]]:
    """Evasion rate vs queries: the rows' curves, else one point per row (mean queries)."""
    out = []
    for r in hash_rows(card):
        curve = pick(r["_row"], "evasion_vs_queries", "query_curve")
        series = f"{r['attack']} {r['eps_label']} ({r['hash']})"
        if isinstance(curve, list):
            for p in curve:
                q = number(p.get("queries")) if isinstance(p, dict) else None
                e = number(p.get("evasion_rate")) if isinstance(p, dict) else None
                if q is not None and e is not None:
                    out.append({"series": series, "queries": q, "evasion_rate": e})
    if out:
        return out
    for r in hash_rows(card):
        if r["queries_mean"] is not None:
            out.append({"series": f"{r['attack']} ({r['hash']})", "queries": r["queries_mean"],
                        "evasion_rate": r["evasion_rate"], "eps": r["eps_label"]})
    return out


def tradeoff_rows(card: dict[str, Any]) -> list[dict[str, Any]]:
    sources: list[tuple[dict[str, Any], Any]] = []
    top = pick(card, "threshold_tradeoff", "tradeoff", "roc")
    if isinstance(top, list):
        sources.append(({}, top))
    for r in rows_of(card, "results"):
        inner = pick(r, "threshold_tradeoff", "tradeoff", "roc")
        if isinstance(inner, list):
            sources.append((r, inner))
    out = []
    for parent, points in sources:
        for p in points:
            if not isinstance(p, dict):
                continue
            fpr, ev = number(p.get("fpr")), number(pick(p, "evasion_rate", "evasion"))
            if fpr is None or ev is None:
                continue
            name = pick(p, "hash", "hash_name", "algorithm") or \
                pick(parent, "hash", "hash_name", "algorithm") or "?"
            attack = p.get("attack") or parent.get("attack")
            series = f"{name}" + (f" / {attack} {parent.get('eps_label', '')}".rstrip()
                                  if attack else "")
            out.append({"series": series, "fpr": fpr, "evasion_rate": ev,
                        "threshold": number(p.get("threshold"))})
    return out


def hash_headline(card: dict[str, Any]) -> dict[str, Any]:
    rows = hash_rows(card)
    if not rows:
        return {}
    top = max(rows, key=lambda r: r["evasion_rate"])
    return {"highest evasion rate": top["evasion_rate"],
            "where": f"{top['attack']} @ {top['eps_label']} ({top['hash']})"}


def hash_examples(arrays: dict[str, Any], source: str) -> list[dict[str, Any]]:
    """Per-example original/evading images with Hamming distance, SSIM and queries."""
    from .images import ssim

    orig = pick(arrays, "original", "clean")
    adv = pick(arrays, "adv", "evading")
    if orig is None or adv is None:
        raise RunDataError(f"{source}: the example file has no original/adv images")
    if len(orig) != len(adv):
        raise RunDataError(f"{source}: original and adv hold different numbers of images")

    def value(key: str, i: int) -> float | None:
        a = arrays.get(key)
        return number(a[i].item()) if a is not None and len(a) > i else None

    out = []
    for i in range(len(orig)):
        s = value("ssim", i)
        evaded = arrays.get("evaded")
        out.append({"original": orig[i], "adv": adv[i], "hamming": value("hamming", i),
                    "ssim": s if s is not None else ssim(orig[i], adv[i]),
                    "queries": value("queries", i),
                    "evaded": bool(evaded[i]) if evaded is not None and len(evaded) > i
                    else None})
    return out


# ---------------------------------------------------------------------------- page

def render(run: Run) -> None:
    import streamlit as st

    from . import charts
    from .views import show_table

    card = run.card or {}
    st.subheader(f"Hash evasion: {run.name}")
    rows = hash_rows(card)
    if not rows:
        st.info(f"{NO_DATA}: this scorecard has no hash evasion results (rows with an "
                "evasion_rate).")
        return
    st.markdown("#### Evasion rate vs budget")
    budget = [r for r in rows if r["eps"] is not None]
    if budget:
        points = [{k: v for k, v in r.items() if k != "_row"} |
                  {"series": f"{r['attack']} ({r['hash']})",
                   "eps": r["eps"] * charts.eps_axis(r["norm"])[0]} for r in budget]
        st.altair_chart(charts.curve_chart(
            points, x="eps", y="evasion_rate", color="series", lo="ci_lo", hi="ci_hi",
            facet="defense", x_title=charts.mixed_eps_title({r["norm"] for r in budget}),
            y_title="evasion rate",
            tooltip=["series", "eps_label", "evasion_rate", "ci_lo", "ci_hi", "n"]),
            width="stretch")
    else:
        st.info(f"{NO_DATA}: no result row states its budget (eps).")
    st.markdown("#### Evasion rate vs queries")
    qrows = query_curve_rows(card)
    if qrows:
        st.altair_chart(charts.curve_chart(qrows, x="queries", y="evasion_rate", color="series",
                                           x_title="queries", y_title="evasion rate"),
                        width="stretch")
    else:
        st.info(f"{NO_DATA}: no query counts recorded (white-box attacks need none).")
    st.markdown("#### Threshold trade-off: evasion vs false-positive rate")
    trows = tradeoff_rows(card)
    if trows:
        st.altair_chart(charts.curve_chart(trows, x="fpr", y="evasion_rate", color="series",
                                           x_title="false-positive rate on benign pairs",
                                           y_title="evasion rate",
                                           tooltip=["series", "threshold", "fpr",
                                                    "evasion_rate"]), width="stretch")
    else:
        st.info(f"{NO_DATA}: the scorecard has no threshold trade-off.")
    st.markdown("#### Results")
    show_table([{k: v for k, v in r.items() if k not in ("_row", "ci_lo", "ci_hi")}
                for r in rows])


def render_examples(run: Run, job_id: str) -> None:
    import streamlit as st

    from .images import load_npz, to_display

    path = example_file(run, job_id)
    try:
        items = hash_examples(load_npz(path), str(path))
    except RunDataError as e:
        st.warning(str(e))
        return
    for i, ex in enumerate(items):
        c1, c2, c3 = st.columns([1, 1, 2])
        c1.image(to_display(ex["original"]), caption="original")
        c2.image(to_display(ex["adv"]), caption="evading image")
        facts = []
        if ex["hamming"] is not None:
            facts.append(f"Hamming distance **{ex['hamming']:.0f}**")
        facts.append(f"SSIM **{ex['ssim']:.3f}**")
        if ex["queries"] is not None:
            facts.append(f"queries **{ex['queries']:.0f}**")
        if ex["evaded"] is not None:
            facts.append("**evaded** the matcher" if ex["evaded"] else "still **matched**")
        c3.markdown(f"Example {i}: " + " · ".join(facts))
