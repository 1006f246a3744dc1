"""The dashboard's pages (Streamlit). ``app.py`` calls :func:`main`.

Navigation lives in the sidebar and in the URL (``?page=scorecard&run=pgd_resnet``), so every
view can be linked to. Any problem with a run's files is shown as a message in the page; an
unexpected error is logged and shown as one line, never as a stack trace.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from . import RUNS_ENV, charts, forensics_view, hash_view
from .compare import compare_runs, summary_text
from .data import (
    SCORECARD,
    Run,
    RunDataError,
    Store,
    check_counts,
    classification_headline,
    example_file,
    examples_dir,
    find_run_folders,
    load_run,
    number,
    read_gates,
    read_samples,
    rows_of,
    started,
    summary_row,
    target_text,
)
from .images import classification_examples, load_npz, to_display
from .report import to_html, to_markdown
from .tables import show_table

log = logging.getLogger("arange.dashboard")

PAGES: dict[str, str] = {
    "runs": "Runs",
    "scorecard": "Scorecard",
    "examples": "Examples gallery",
    "compare": "Compare runs",
    "hash": "Hash matching",
    "forensics": "Forgery localisation",
}
STATUS_BADGE = {"pass": ":green[**PASS**]", "warn": ":orange[**WARN**]",
                "fail": ":red[**FAIL**]", "skip": ":gray[**SKIP**]"}
# What each validity check guards against (shown next to its result).
CHECK_EXPLANATIONS: dict[str, str] = {
    "budget": "Every scored adversarial example must lie inside its eps-ball and the pixel "
              "bounds; a success found outside the budget would overstate the attack (and an "
              "attack ignoring the budget may be broken).",
    "monotonic_eps": "A larger budget can only help the attacker, so robust accuracy must not "
                     "rise with eps; if it does, the attack missed examples it should have "
                     "found.",
    "iterative_vs_single_step": "An iterative attack (PGD) must do at least as well as a "
                                "single gradient step (FGSM); losing to it points to gradient "
                                "masking or a too-small step size.",
    "whitebox_vs_blackbox": "A white-box attack knows everything a black-box, transfer or "
                            "noise attack knows; if it does worse, the gradients are "
                            "probably misleading (gradient masking).",
    "train_mode": "Models must be evaluated in eval mode; train-mode batch norm or dropout "
                  "changes predictions and can hide gradients.",
    "randomness": "A target whose outputs change between identical calls needs attacks with "
                  "expectation over transformation (EOT), or the robustness is overstated.",
    "logits": "Attacks expect logits; a model that outputs probabilities saturates the loss "
              "and can make gradients vanish.",
    "gradients": "Gradient attacks need finite, non-zero input gradients; zero or NaN gradients "
                 "make a model look robust without being so.",
    "large_eps": "Under an absurdly large budget any model should fall to chance; if it does "
                 "not, the attack cannot reach the model (masked gradients) and every robust "
                 "accuracy of the run is suspect.",
    "more_steps": "Re-running the attack with more steps and restarts must not break "
                  "noticeably more samples; if it does, the attack had not converged and the "
                  "robust accuracy is overstated.",
}


# ---------------------------------------------------------------------------- plumbing

def runs_root() -> Path:
    return Path(os.environ.get(RUNS_ENV) or "runs").expanduser()


@st.cache_data(show_spinner=False, max_entries=512)
def _cached_run(root: str, folder: str, mtime_ns: int, size: int) -> Run:
    del mtime_ns, size  # part of the cache key: a rewritten scorecard is read again
    return load_run(Path(root), Path(folder))


def get_store(root: Path) -> Store:
    store = Store(root=root)
    for folder in find_run_folders(root):
        try:
            stat = (folder / SCORECARD).stat()
            sig = (stat.st_mtime_ns, stat.st_size)
        except OSError:
            sig = (0, 0)
        store.runs.append(_cached_run(str(root), str(folder), *sig))
    return store


def _synced_select(label: str, options: list[str], key: str, param: str,
                   container: Any = None, format_func: Callable[[str], str] = str,
                   default: str | None = None) -> str | None:
    """A selectbox whose value is also kept in the URL (``?param=value``)."""
    if not options:
        return None
    if st.session_state.get(key) not in options:
        wanted = st.query_params.get(param)
        st.session_state[key] = wanted if wanted in options else \
            default if default in options else options[0]
    box = container if container is not None else st
    value = box.selectbox(label, options, key=key, format_func=format_func)
    if st.query_params.get(param) != value:
        st.query_params[param] = value
    return value  # type: ignore[no-any-return]


def _timestamp(run: Run) -> float:
    when = started(run)
    return when.timestamp() if when is not None else float("-inf")


def _newest_first(runs: list[Run]) -> list[Run]:
    return sorted(runs, key=_timestamp, reverse=True)


def empty_store_message(store: Store) -> str:
    if not store.exists:
        return (f"The runs folder `{store.root}` does not exist. Run a scenario first, e.g. "
                "`arange run scenarios/pgd_resnet.yaml` (it writes `runs/pgd_resnet/`), then "
                "start `arange dashboard --runs runs`.")
    return (f"No runs found in `{store.root}` (no `scorecard.json` in it or its sub-folders). "
            "Run a scenario first, e.g. `arange run scenarios/pgd_resnet.yaml --out "
            f"{store.root}/pgd_resnet`.")


def _select_run(store: Store) -> Run | None:
    runs = _newest_first(store.runs)
    ids = [r.run_id for r in runs]

    def fmt(run_id: str) -> str:
        run = store.get(run_id)
        return run_id if run is None or run.ok else f"{run_id} (unreadable)"

    chosen = _synced_select("Run", ids, key="run", param="run", container=st.sidebar,
                            format_func=fmt)
    return store.get(chosen)


# ---------------------------------------------------------------------------- pages

def page_runs(store: Store) -> None:
    st.title("Runs")
    st.caption(f"Scorecards in `{store.root}`")
    if not store.runs:
        st.info(empty_store_message(store))
        return
    rows = [summary_row(r, headline(r)) for r in store.runs]
    for run, row in zip(store.runs, rows, strict=True):
        h = classification_headline(run.card) if run.card and run.task == "classification" \
            else {}
        row["clean accuracy"] = h.get("clean accuracy")
        row["lowest robust accuracy"] = h.get("lowest robust accuracy")
        row["_ts"] = _timestamp(run)
    c1, c2, c3, c4 = st.columns([2, 1, 1, 1])
    text = c1.text_input("Filter (scenario, run or target contains)", key="runs_filter")
    tasks = sorted({r["task"] for r in rows})
    task_sel = c2.multiselect("Task", tasks, default=tasks, key="runs_task")
    gates = sorted({r["gate"] for r in rows})
    gate_sel = c3.multiselect("Gate", gates, default=gates, key="runs_gate")
    sort = c4.selectbox("Sort by", ["date (newest first)", "scenario",
                                    "lowest robust accuracy", "checks failed"], key="runs_sort")
    needle = text.strip().lower()
    shown = [r for r in rows if r["task"] in task_sel and r["gate"] in gate_sel and
             (not needle or needle in f"{r['run']} {r['scenario']} {r['target']}".lower())]
    if sort == "scenario":
        shown.sort(key=lambda r: r["scenario"])
    elif sort == "lowest robust accuracy":
        shown.sort(key=lambda r: (r["lowest robust accuracy"] is None,
                                  r["lowest robust accuracy"] or 0.0))
    elif sort == "checks failed":
        shown.sort(key=lambda r: -(r["checks failed"] or 0))
    else:
        shown.sort(key=lambda r: -r["_ts"])
    st.markdown(f"**{len(shown)}** of {len(rows)} run(s) shown. Pick a run in the sidebar to "
                "open its scorecard.")
    cols = ["run", "scenario", "task", "target", "date", "arange", "gate", "clean accuracy",
            "lowest robust accuracy", "headline", "checks failed", "checks warned", "status"]
    if shown:
        show_table(pd.DataFrame(shown)[cols], column_config={
            "clean accuracy": st.column_config.NumberColumn(format="%.3f"),
            "lowest robust accuracy": st.column_config.NumberColumn(format="%.3f")})
    bad = [r for r in store.runs if not r.ok]
    if bad:
        st.markdown("#### Runs that cannot be shown")
        for r in bad:
            st.error(f"**{r.run_id}**: {r.error}")


def _header(run: Run) -> None:
    prov = run.provenance
    when = started(run)
    st.title(f"Scorecard: {run.name}")
    sha = prov.get("git_sha")
    st.caption(" · ".join(x for x in [
        f"task {run.task}", f"target {target_text(run)}",
        when.strftime("%Y-%m-%d %H:%M UTC") if when else "",
        f"arange {prov.get('arange_version', '?')}" + (f" ({str(sha)[:10]})" if sha else ""),
        f"device {prov.get('device', '?')}",
        f"{number(prov.get('seconds')) or 0:.1f}s", f"folder `{run.path}`"] if x))


def _side_files(run: Run) -> None:
    notes = []
    try:
        samples = read_samples(run)
        notes.append(f"per-sample outcomes: {samples['n']} samples")
    except RunDataError as e:
        st.warning(f"{e}. Per-sample views are limited: Compare falls back to unpaired tests.")
    exdir = examples_dir(run)
    n_ex = len(list(exdir.glob("*.npz"))) if exdir.is_dir() else 0
    if n_ex:
        notes.append(f"example images for {n_ex} job(s)")
    else:
        st.warning(f"{exdir}: no example images (the folder is missing or empty), so the "
                   "gallery has nothing to show for this run.")
    if notes:
        st.caption("Side files: " + "; ".join(notes))


def _robustness_charts(card: dict[str, Any]) -> None:
    results = rows_of(card, "results")
    worst = rows_of(card, "worst_case")
    defenses = list(dict.fromkeys(r["defense"] for r in results))
    attacks = list(dict.fromkeys(r["attack"] for r in results))
    c1, c2 = st.columns(2)
    d_sel = c1.multiselect("Defenses", defenses, default=defenses, key="sc_defenses")
    a_sel = c2.multiselect("Attacks", attacks, default=attacks, key="sc_attacks")
    for norm in dict.fromkeys(r["norm"] for r in results):
        scale, x_title = charts.eps_axis(norm)
        data = []
        for r in results:
            if r["norm"] == norm and r["defense"] in d_sel and r["attack"] in a_sel:
                lo, hi = r["robust_accuracy_ci"]
                data.append({"series": r["attack"], "curve": "per attack",
                             "defense": r["defense"], "eps": r["eps"] * scale,
                             "eps_label": r["eps_label"], "robust_accuracy": r["robust_accuracy"],
                             "ci_lo": lo, "ci_hi": hi, "n": r["n"]})
        for w in worst:
            if w["norm"] == norm and w["defense"] in d_sel:
                lo, hi = w["robust_accuracy_ci"]
                data.append({"series": "worst case", "curve": "worst case over attacks",
                             "defense": w["defense"], "eps": w["eps"] * scale,
                             "eps_label": w["eps_label"], "robust_accuracy": w["robust_accuracy"],
                             "ci_lo": lo, "ci_hi": hi, "n": w["n"]})
        if not data:
            st.info(f"No results for the selected defenses and attacks ({norm}).")
            continue
        st.markdown(f"**Robust accuracy vs eps ({norm})** - shaded: 95% Wilson CI; dashed: "
                    "per-sample worst case over all attacks")
        st.altair_chart(charts.curve_chart(
            data, x="eps", y="robust_accuracy", color="series", lo="ci_lo", hi="ci_hi",
            dash="curve", facet="defense", x_title=x_title,
            y_title="robust accuracy",
            tooltip=["defense", "series", "eps_label", "robust_accuracy", "ci_lo", "ci_hi",
                     "n"]), width="stretch")
    if len(defenses) > 1:
        data = [{"series": w["defense"], "eps": w["eps"] * charts.eps_axis(w["norm"])[0],
                 "eps_label": w["eps_label"],
                 "robust_accuracy": w["robust_accuracy"], "ci_lo": w["robust_accuracy_ci"][0],
                 "ci_hi": w["robust_accuracy_ci"][1], "norm": w["norm"]} for w in worst]
        st.markdown("**Worst case by defense**")
        st.altair_chart(charts.curve_chart(
            data, x="eps", y="robust_accuracy", color="series", lo="ci_lo", hi="ci_hi",
            facet="norm", x_title=charts.mixed_eps_title({w["norm"] for w in worst}),
            y_title="worst-case robust accuracy"),
            width="stretch")


def _results_table(card: dict[str, Any]) -> None:
    rows = [{"defense": r["defense"], "attack": r["attack"], "kind": r["kind"],
             "norm": r["norm"], "eps": r["eps_label"], "robust accuracy": r["robust_accuracy"],
             "95% CI": f"{r['robust_accuracy_ci'][0]:.3f}-{r['robust_accuracy_ci'][1]:.3f}",
             "success rate": r["attack_success_rate"], "attacked": r["n_attacked"],
             "n": r["n"], "max perturbation": r["perturbation_max"],
             "projected by runner": r["budget_violations"], "mean queries": r["queries_mean"],
             "seconds": r["seconds"], "adaptive": r.get("adaptive_method") or "",
             "unreliable": r.get("unreliable") or ""} for r in rows_of(card, "results")]
    if any(r["unreliable"] for r in rows):
        st.warning("Rows marked unreliable overstate robustness: an adaptive attack (BPDA for "
                   "non-differentiable defenses, EOT for randomised ones) broke significantly "
                   "more samples. Read the adaptive ('+') rows and the worst case instead.")
    show_table(rows, column_config={
        "robust accuracy": st.column_config.NumberColumn(format="%.3f"),
        "success rate": st.column_config.NumberColumn(format="%.3f"),
        "max perturbation": st.column_config.NumberColumn(format="%.5f")})


def _checks(card: dict[str, Any]) -> None:
    checks = rows_of(card, "checks")
    counts = check_counts(card)
    st.markdown(f"#### Validity checks ({counts['fail']} failed, {counts['warn']} warned, "
                f"{counts['pass']} passed, {counts['skip']} skipped)")
    if counts["fail"]:
        st.error("At least one validity check failed: the robustness numbers above may "
                 "overstate the model's robustness until the cause is fixed.")
    if not checks:
        st.info("This scorecard records no validity checks.")
    for c in checks:
        status = str(c.get("status", "?"))
        name = str(c.get("name", "?"))
        base = name.split(" (")[0]
        st.markdown(f"{STATUS_BADGE.get(status, status)} **{name}**: {c.get('message', '')}")
        if base in CHECK_EXPLANATIONS:
            st.caption(f"Why it matters: {CHECK_EXPLANATIONS[base]}")
        details = c.get("details")
        if isinstance(details, dict) and details:
            with st.expander(f"details of {name}"):
                st.json(details)


def _gates(run: Run) -> None:
    g = read_gates(run)
    st.markdown(f"#### Gates: {g.status}")
    if g.status == "unreadable":
        st.error(g.message)
        return
    if g.status == "fail":
        st.error("The run fails at least one release gate.")
    elif g.status == "pass":
        st.success("The run passes its release gates.")
    if g.message:
        st.info(g.message)
    if g.rows:
        show_table(g.rows)


def _downloads(run: Run) -> None:
    st.markdown("#### Downloads")
    c1, c2, c3 = st.columns(3)
    path = run.path / SCORECARD
    try:
        raw = path.read_bytes()
    except OSError as e:
        st.warning(f"{path}: cannot read the scorecard for download ({e})")
        raw = json.dumps(run.card, indent=2).encode()
    slug = run.run_id.replace("/", "_")
    c1.download_button("Scorecard JSON", raw, file_name=f"{slug}-scorecard.json",
                       mime="application/json", key="dl_json")
    c2.download_button("Report (Markdown)", to_markdown(run), file_name=f"{slug}-report.md",
                       mime="text/markdown", key="dl_md")
    c3.download_button("Report (HTML)", to_html(run), file_name=f"{slug}-report.html",
                       mime="text/html", key="dl_html")


def render_classification(run: Run) -> None:
    """The classification scorecard: headline, clean and robust accuracy, all results."""
    card = run.card or {}
    counts = check_counts(card)
    gates = read_gates(run)
    h = classification_headline(card)
    m = st.columns(4)
    m[0].metric("Clean accuracy", f"{h['clean accuracy']:.3f}"
                if h["clean accuracy"] is not None else "-")
    m[1].metric("Lowest robust accuracy", f"{h['lowest robust accuracy']:.3f}"
                if h["lowest robust accuracy"] is not None else "-", help=h["where"])
    m[2].metric("Checks failed", counts["fail"])
    m[3].metric("Gates", gates.status)
    _side_files(run)
    st.markdown("#### Clean accuracy")
    show_table([{"defense": c["defense"], "n": c["n"], "accuracy": c["accuracy"],
                 "95% CI": f"{c['accuracy_ci'][0]:.3f}-{c['accuracy_ci'][1]:.3f}"}
                for c in rows_of(card, "clean")])
    st.markdown("#### Robust accuracy")
    _robustness_charts(card)
    with st.expander("All results", expanded=False):
        _results_table(card)


def page_scorecard(store: Store, run: Run | None) -> None:
    if run is None:
        st.title("Scorecard")
        st.info(empty_store_message(store))
        return
    if not run.ok:
        st.title(f"Scorecard: {run.run_id}")
        st.error(f"This run cannot be shown. {run.error}")
        return
    card = run.card or {}
    _header(run)
    view = TASK_VIEWS.get(run.task)
    if view is None:
        st.info(f"No view for task {run.task!r}; the checks and provenance follow.")
    else:
        view.render(run)
    _checks(card)
    _gates(run)
    with st.expander("Provenance (resolved scenario, versions, hashes)"):
        st.json(run.provenance, expanded=False)
    _downloads(run)


def page_examples(store: Store, run: Run | None) -> None:
    st.title("Examples gallery")
    if run is None:
        st.info(empty_store_message(store))
        return
    if not run.ok:
        st.error(f"This run cannot be shown. {run.error}")
        return
    card = run.card or {}
    rows = rows_of(card, "results")
    jobs = [str(r.get("job_id")) for r in rows if r.get("job_id")]
    view = TASK_VIEWS.get(run.task)
    exdir = examples_dir(run)
    if view is not None and view.examples_in_folder and not exdir.is_dir():
        st.warning(f"{exdir}: the examples folder is missing, so there are no images to show "
                   "for this run. Run the scenario again to produce them.")
        return
    if not jobs:
        st.info("This scorecard lists no jobs with examples.")
        return
    by_id = {str(r.get("job_id")): r for r in rows}

    def fmt(job_id: str) -> str:
        r = by_id.get(job_id, {})
        where = r.get("defense") or r.get("detector") or (
            f"threshold {r['threshold']}" if "threshold" in r else "?")
        label = f"{r.get('attack', r.get('inpainter', '?'))} @ {r.get('eps_label', '-')} " \
            f"[{where}]"
        if view is not None and view.examples_in_folder and \
                not example_file(run, job_id).is_file():
            label += " (no images)"
        return label

    job = _synced_select("Job", jobs, key="job", param="job", format_func=fmt)
    if job is None:
        return
    st.caption(f"Run {run.run_id} · {target_text(run)}")
    if view is not None:
        view.render_examples(run, job)


def render_classification_examples(run: Run, job: str) -> None:
    by_id = {str(r.get("job_id")): r for r in rows_of(run.card or {}, "results")}
    path = example_file(run, job)
    if not path.is_file():
        st.warning(f"{path}: no example images for this job (the file is missing; the runner "
                   "saves them only when the attack ran on at least one sample).")
        return
    try:
        items = classification_examples(load_npz(path), str(path))
    except RunDataError as e:
        st.warning(str(e))
        return
    row = by_id.get(job, {})
    evaded = sum(1 for x in items if x.evaded)
    st.markdown(f"**{len(items)}** attacked samples from this job, **{evaded}** of them evaded "
                f"(robust accuracy of the job: {row.get('robust_accuracy', float('nan')):.3f}). "
                "The perturbation is shown amplified around mid-grey.")
    if items and items[0].clean_conf is None:
        st.info("Confidences were not recorded for this run (older runs saved labels only).")

    def conf(p: float | None) -> str:
        return f" ({p:.0%})" if p is not None else ""

    for x in items:
        c1, c2, c3, c4 = st.columns([1, 1, 1, 2])
        c1.image(to_display(x.clean), caption=f"clean #{x.index}")
        c2.image(to_display(x.adv), caption="adversarial")
        c3.image(to_display(x.perturbation), caption=f"perturbation x{x.factor:.0f}")
        verdict = ":red[**evaded**]" if x.evaded else ":green[**robust**]"
        true_adv = f"; true label under attack{conf(x.adv_true_conf)}" \
            if x.adv_true_conf is not None else ""
        c4.markdown(f"{verdict}  \ntrue label **{x.label}**  \nclean prediction "
                    f"**{x.clean_pred}**{conf(x.clean_conf)}  \nadversarial prediction "
                    f"**{x.adv_pred}**{conf(x.adv_conf)}{true_adv}")


def page_compare(store: Store) -> None:
    st.title("Compare runs")
    runs = _newest_first([r for r in store.ok_runs() if r.task == "classification"])
    if len(runs) < 2:
        st.info(f"Compare needs two readable classification runs; `{store.root}` has "
                f"{len(runs)}." + ("" if store.runs else " " + empty_store_message(store)))
        return
    ids = [r.run_id for r in runs]
    c1, c2 = st.columns(2)
    a_id = _synced_select("Baseline (A)", ids, key="cmp_a", param="a", container=c1,
                          default=ids[1])
    b_id = _synced_select("Candidate (B)", ids, key="cmp_b", param="b", container=c2,
                          default=ids[0])
    a, b = store.get(a_id), store.get(b_id)
    if a is None or b is None:
        return
    if a_id == b_id:
        st.warning("Pick two different runs to compare.")
        return
    for col, run in ((c1, a), (c2, b)):
        h = classification_headline(run.card or {})
        when = started(run)
        clean = h["clean accuracy"]
        col.caption(f"{run.name} · {target_text(run)} · "
                    f"{when.strftime('%Y-%m-%d %H:%M') if when else '?'} · arange "
                    f"{run.provenance.get('arange_version', '?')}" +
                    (f" · clean accuracy {clean:.3f}" if clean is not None else ""))
    c = compare_runs(a, b)
    for note in c.notes:
        st.info(note)
    st.markdown(summary_text(c, a.run_id, b.run_id))
    m = st.columns(3)
    m[0].metric("Got weaker", f"{len(c.weaker)} of {len(c.rows)}")
    m[1].metric("Significantly weaker", len(c.significantly_weaker))
    drop = min((r["change"] for r in c.rows), default=0.0)
    m[2].metric("Largest drop (points)", f"{min(drop, 0.0) * 100:.1f}")
    if c.rows:
        df = pd.DataFrame(c.rows).drop(columns=["eps_value"])

        def colour(row: pd.Series) -> list[str]:
            if row["change"] < 0:
                shade = "#f8c9c9" if row["significant"] else "#fdeaea"
            elif row["change"] > 0:
                shade = "#e3f4e1" if row["significant"] else ""
            else:
                shade = ""
            return [f"background-color: {shade}" if shade else ""] * len(row)

        st.markdown("Red rows got weaker in B (darker: significant after Holm adjustment); "
                    "`change` is B minus A.")
        show_table(df.style.apply(colour, axis=1).format(
            {"A": "{:.3f}", "B": "{:.3f}", "change": "{:+.3f}", "p": "{:.3g}",
             "p (Holm)": "{:.3g}"}))
        curve = [{"series": f"{run_id}", "defense": r["defense"],
                  "eps": r["eps_value"] * charts.eps_axis(r["norm"])[0],
                  "eps_label": r["eps"], "robust_accuracy": r[col]}
                 for r in c.rows if r["measure"] == "worst case"
                 for run_id, col in ((f"A: {a_id}", "A"), (f"B: {b_id}", "B"))]
        if curve:
            st.markdown("**Worst-case robust accuracy, A vs B**")
            st.altair_chart(charts.curve_chart(
                curve, x="eps", y="robust_accuracy", color="series", facet="defense",
                x_title=charts.mixed_eps_title({r["norm"] for r in c.rows if r["measure"] ==
                                          "worst case"}), y_title="worst-case robust accuracy",
                tooltip=["series", "defense", "eps_label", "robust_accuracy"]),
                width="stretch")
    if c.only_a:
        st.caption(f"Only in A: {', '.join(c.only_a)}")
    if c.only_b:
        st.caption(f"Only in B: {', '.join(c.only_b)}")


def _task_page(store: Store, run: Run | None, task: str, title: str,
               render: Callable[[Run], None]) -> None:
    st.title(title)
    runs = _newest_first([r for r in store.ok_runs() if r.task == task])
    if not runs:
        st.info(f"no data of this kind: no readable `{task}` runs in `{store.root}`."
                + ("" if store.runs else " " + empty_store_message(store)))
        return
    ids = [r.run_id for r in runs]
    default = run.run_id if run is not None and run.run_id in ids else ids[0]
    chosen = _synced_select(f"{task} run", ids, key=f"{task}_run", param=f"{task}_run",
                            default=default)
    picked = store.get(chosen)
    if picked is not None:
        render(picked)


# ---------------------------------------------------------------------------- main

def main() -> None:
    root = runs_root()
    st.sidebar.markdown("### arange")
    if st.session_state.get("page") not in PAGES:
        wanted = st.query_params.get("page")
        st.session_state["page"] = wanted if wanted in PAGES else "runs"
    page = st.sidebar.radio("Page", list(PAGES), key="page", format_func=PAGES.__getitem__)
    if st.query_params.get("page") != page:
        st.query_params["page"] = page
    try:
        store = get_store(root)
        run = _select_run(store)
        st.sidebar.caption(f"Runs folder: `{root}` ({len(store.runs)} run(s))")
        if page == "runs":
            page_runs(store)
        elif page == "scorecard":
            page_scorecard(store, run)
        elif page == "examples":
            page_examples(store, run)
        elif page == "compare":
            page_compare(store)
        else:
            task = next(t for t, v in TASK_VIEWS.items() if v.page == page)
            _task_page(store, run, task, TASK_VIEWS[task].title, TASK_VIEWS[task].render)
    except RunDataError as e:
        st.error(str(e))
    except Exception as e:  # the last line of defence: a message in the page, never a trace
        log.exception("dashboard page %r failed", page)
        st.error(f"This page could not be shown ({type(e).__name__}: {e}). The details are in "
                 "the dashboard's log.")


# ---------------------------------------------------------------------------- task views

@dataclass(frozen=True)
class TaskView:
    """What the dashboard shows for one task: its scorecard section, example gallery, runs-table
    headline and (for tasks other than classification) its own sidebar page."""

    title: str
    page: str | None
    headline: Callable[[dict[str, Any]], dict[str, Any]]
    render: Callable[[Run], None]
    render_examples: Callable[[Run, str], None]
    examples_in_folder: bool  # galleries are ``examples/<job_id>.npz`` files


TASK_VIEWS: dict[str, TaskView] = {
    "classification": TaskView("Scorecard", None, classification_headline,
                               render_classification, render_classification_examples, True),
    hash_view.TASK: TaskView("Hash matching", "hash", hash_view.hash_headline, hash_view.render,
                             hash_view.render_examples, False),
    forensics_view.TASK: TaskView("Forgery localisation", "forensics",
                                  forensics_view.forensics_headline, forensics_view.render,
                                  forensics_view.render_examples, True),
}


def headline(run: Run) -> dict[str, Any]:
    """The few numbers the runs table shows for a run (the task's own)."""
    view = TASK_VIEWS.get(run.task)
    if not run.card or view is None:
        return {}
    try:
        return view.headline(run.card)
    except RunDataError as e:
        return {"unreadable": str(e)[:80]}
