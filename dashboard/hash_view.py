"""Views for perceptual-hash runs (``task: hash_matching``).

They read what the hash runner writes, through the same model: the scorecard is validated as
:class:`arange.hashing.scorecard.HashScorecard` (a file that does not fit is one clear error on
the page, never silently empty rows), and the galleries come from ``samples.json`` (per image:
the verified outcome, Hamming distance, SSIM, queries and the PNG the reference library
re-hashed) and ``images/original/``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from .data import Run, RunDataError, read_samples

if TYPE_CHECKING:
    from arange.hashing.scorecard import HashScorecard

TASK = "hash_matching"
NO_DATA = "no data of this kind"


def typed(card: dict[str, Any] | HashScorecard, source: str = "scorecard.json"
          ) -> HashScorecard:
    """The scorecard as the runner's own model (validated once: the helpers below accept
    either); a mismatch is a :class:`RunDataError`."""
    from arange.core.scorecard import ScorecardError, check_scorecard
    from arange.hashing.scorecard import HashScorecard

    if isinstance(card, HashScorecard):
        return card
    try:
        typed = check_scorecard(card, source, TASK)
    except ScorecardError as e:
        raise RunDataError(str(e)) from e
    assert isinstance(typed, HashScorecard)
    return typed


def hash_rows(card: dict[str, Any] | HashScorecard) -> list[dict[str, Any]]:
    """One row per result (attack x eps x threshold): the verified success rate with its CI and
    how many fast-path claims the reference library rejected."""
    c = typed(card)
    out = []
    for r in c.results:
        ssim = r.distortion["ssim"].mean if "ssim" in r.distortion else None
        psnr = r.distortion["psnr"].mean if "psnr" in r.distortion else None
        out.append({"job_id": r.job_id, "attack": r.attack, "goal": r.goal,
                    "hash": c.matcher.hash, "norm": r.norm, "eps": r.eps,
                    "eps_label": r.eps_label, "threshold": r.threshold, "n": r.n,
                    "successes": r.successes, "rate": r.rate, "ci_lo": r.rate_ci[0],
                    "ci_hi": r.rate_ci[1], "claimed": r.claimed, "rejected": r.rejected,
                    "queries_median": r.queries_median, "max_queries": r.max_queries,
                    "ssim_mean": ssim, "psnr_mean": psnr, "fpr": r.fpr_at_threshold,
                    "budget_violations": r.budget_violations})
    return out


def query_curve_rows(card: dict[str, Any] | HashScorecard) -> list[dict[str, Any]]:
    """Verified success rate vs query budget (black-box rows)."""
    return [{"series": f"{r.attack} {r.eps_label} t{r.threshold}", "queries": p.queries,
             "rate": p.rate, "ci_lo": p.rate_ci[0], "ci_hi": p.rate_ci[1]}
            for r in typed(card).results for p in r.by_query]


def tradeoff_rows(card: dict[str, Any] | HashScorecard) -> list[dict[str, Any]]:
    """Per threshold: the false-positive rate on benign pairs next to each attack's success."""
    return [{"series": series, "threshold": s.threshold, "fpr": s.fpr, "rate": rate,
             "clean_detection": s.clean_detection}
            for s in typed(card).sweep for series, rate in s.success.items()]


def fpr_rows(card: dict[str, Any] | HashScorecard) -> list[dict[str, Any]]:
    """The matcher's false-positive rate at each of its thresholds, with the pairs behind it:
    on the database's pairs, and on the benign corpus (evaluation.corpus) when there is one."""
    c = typed(card)
    curves: list[tuple[str, Any]] = [(f"database ({f.n_images} images)", f) for f in c.fpr
                                     if f.hash == c.matcher.hash][:1]
    if c.corpus is not None:
        how = "every pair" if c.corpus.exhaustive else "sampled pairs"
        curves.append((f"corpus ({c.corpus.n_images:,} images, {how})", c.corpus))
    return [{"pairs of": name, "threshold": p.threshold, "fpr": p.fpr, "ci_lo": p.fpr_ci[0],
             "ci_hi": p.fpr_ci[1], "false_positives": p.false_positives,
             "pairs": curve.n_pairs}
            for name, curve in curves for p in curve.points
            if p.threshold in c.matcher.thresholds]


def agreement_rows(card: dict[str, Any] | HashScorecard) -> list[dict[str, Any]]:
    """How often each fast path (and a learned hash's twin) gave the reference bits."""
    return [{"hash": a.hash, "path": a.path, "images exact": f"{a.exact}/{a.n}",
             "bits agreeing": a.bit_agreement} for a in typed(card).agreement]


def hash_headline(card: dict[str, Any] | HashScorecard) -> dict[str, Any]:
    rows = hash_rows(typed(card))
    if not rows:
        return {}
    top = max(rows, key=lambda r: r["rate"])
    return {"highest success rate": top["rate"],
            "where": f"{top['attack']} ({top['goal']}) @ {top['eps_label']}, threshold "
                     f"{top['threshold']} ({top['hash']})"}


def hash_examples(run: Run, job_id: str, limit: int = 12) -> list[dict[str, Any]]:
    """Images of one job that have a saved PNG (every candidate success), verified ones first:
    the original, the PNG the reference library re-hashed, and the per-image facts."""
    samples = read_samples(run)
    job = samples.get("jobs", {}).get(job_id)
    if not isinstance(job, dict):
        raise RunDataError(f"{run.path / 'samples.json'}: no outcomes for job {job_id!r}")
    originals = samples.get("originals", [])
    order = sorted((i for i, p in enumerate(job["png"]) if p),
                   key=lambda i: (not job["success"][i], i))
    out = []
    for i in order[:limit]:
        out.append({"index": i, "id": samples["ids"][i],
                    "original": run.path / originals[i] if i < len(originals) else None,
                    "adv": run.path / job["png"][i], "success": bool(job["success"][i]),
                    "claimed": bool(job["claimed"][i]), "distance": job["distance"][i],
                    "ssim": job["ssim"][i], "queries": (job["queries"] or [None] * (i + 1))[i]})
    return out


# ---------------------------------------------------------------------------- page

def render(run: Run) -> None:
    import streamlit as st

    from . import charts
    from .tables import show_table

    card = run.card or {}
    c = typed(card, str(run.path / "scorecard.json"))
    m = c.matcher
    st.subheader(f"Hash matching: {run.name}")
    st.caption(f"{m.reference}; database of {m.database_size} images; thresholds "
               f"{', '.join(str(t) for t in m.thresholds)} of {m.bits} bits. Every success is "
               "re-verified by the reference library on the saved PNG.")
    rows = hash_rows(c)
    if not rows:
        st.info(f"{NO_DATA}: this scorecard has no attack results.")
        return
    cols = st.columns(3)
    head = hash_headline(c)
    cols[0].metric("Highest success rate", f"{head['highest success rate']:.3f}",
                   help=head["where"])
    cols[1].metric("Fast-path claims rejected", sum(r["rejected"] for r in rows))
    det = min((d.rate for d in c.detection), default=None)
    cols[2].metric("Clean detection (lowest)", f"{det:.3f}" if det is not None else "-")
    st.markdown("#### Results (verified by the reference library)")
    show_table([{k: r[k] for k in ("attack", "goal", "norm", "eps_label", "threshold", "n",
                                   "successes", "rate", "ci_lo", "ci_hi", "claimed", "rejected",
                                   "queries_median", "ssim_mean", "psnr_mean", "fpr")}
                for r in rows])
    st.markdown("#### Success vs budget")
    points = [r | {"series": f"{r['attack']} t{r['threshold']}",
                   "eps": r["eps"] * charts.eps_axis(r["norm"])[0]} for r in rows]
    st.altair_chart(charts.curve_chart(
        points, x="eps", y="rate", color="series", lo="ci_lo", hi="ci_hi",
        x_title=charts.mixed_eps_title({r["norm"] for r in rows}), y_title="success rate",
        tooltip=["series", "eps_label", "rate", "ci_lo", "ci_hi", "n"]), width="stretch")
    qrows = query_curve_rows(c)
    st.markdown("#### Success vs queries (black-box)")
    if qrows:
        st.altair_chart(charts.curve_chart(qrows, x="queries", y="rate", color="series",
                                           lo="ci_lo", hi="ci_hi", x_title="queries",
                                           y_title="success rate"), width="stretch")
    else:
        st.info(f"{NO_DATA}: no black-box attack in this run.")
    st.markdown("#### Threshold trade-off: success vs false-positive rate")
    show_table(fpr_rows(c))
    trows = tradeoff_rows(c)
    if trows:
        st.altair_chart(charts.curve_chart(trows, x="fpr", y="rate", color="series",
                                           x_title="false-positive rate on benign pairs",
                                           y_title="success rate",
                                           tooltip=["series", "threshold", "fpr", "rate"]),
                        width="stretch")
    st.markdown("#### Fast paths against the reference")
    show_table(agreement_rows(c))


def render_examples(run: Run, job_id: str) -> None:
    import streamlit as st

    try:
        items = hash_examples(run, job_id)
    except RunDataError as e:
        st.warning(str(e))
        return
    if not items:
        st.info("No image of this job came close to succeeding, so none was saved.")
        return
    for ex in items:
        c1, c2, c3 = st.columns([1, 1, 2])
        if isinstance(ex["original"], Path) and ex["original"].is_file():
            c1.image(str(ex["original"]), caption="original")
        c2.image(str(ex["adv"]), caption="attacked (saved PNG)")
        facts = [f"Hamming distance **{ex['distance']}**", f"SSIM **{ex['ssim']:.3f}**"]
        if ex["queries"] is not None:
            facts.append(f"queries **{ex['queries']}**")
        facts.append("**success**, verified by the reference library" if ex["success"]
                     else "claimed by the fast path, **rejected** by the reference library"
                     if ex["claimed"] else "no success")
        c3.markdown(f"{ex['id']}: " + " · ".join(facts))
