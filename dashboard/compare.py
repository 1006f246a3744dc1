"""Two classification runs side by side: what got weaker, by how much, and is it significant.

Every comparable number (clean accuracy per defense, robust accuracy per attack and eps, the
worst case per eps) is matched by (defense, attack, norm, eps). When both runs have their
``samples.json`` and evaluated the same samples (same dataset fingerprint, same labels), the
per-sample outcomes are paired and the exact McNemar test is used; otherwise Fisher's exact test
on the counts. P-values are Holm-adjusted over all matched numbers before "significant" is said.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .data import Run, RunDataError, read_samples, rows_of
from .stats import fisher_exact, holm, mcnemar_exact

ALPHA = 0.05
Key = tuple[str, str, str, str, float]


@dataclass
class Measurement:
    what: str                     # clean | attack | worst case
    defense: str
    attack: str
    norm: str
    eps: float
    eps_label: str
    rate: float
    n: int
    flags: list[bool] | None = None  # per-sample correct/robust, when samples.json is there

    @property
    def key(self) -> Key:
        return (self.what, self.defense, self.attack, self.norm, round(self.eps, 9))

    @property
    def count(self) -> int:
        return round(self.rate * self.n)


@dataclass
class Comparison:
    rows: list[dict[str, Any]] = field(default_factory=list)
    only_a: list[str] = field(default_factory=list)
    only_b: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    paired: bool = False

    @property
    def weaker(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if r["change"] < 0]

    @property
    def significantly_weaker(self) -> list[dict[str, Any]]:
        return [r for r in self.weaker if r["significant"]]


def _label(m: Measurement) -> str:
    if m.what == "clean":
        return f"clean accuracy [{m.defense}]"
    return f"{m.attack} {m.norm} {m.eps_label} [{m.defense}]"


def measurements(card: dict[str, Any], samples: dict[str, Any] | None) -> list[Measurement]:
    """The comparable numbers of a classification scorecard (with per-sample flags if known)."""
    labels = samples.get("labels") if samples else None
    jobs = samples.get("jobs", {}) if samples else {}
    clean_preds = samples.get("clean_pred", {}) if samples else {}
    out: list[Measurement] = []
    for c in rows_of(card, "clean"):
        flags = None
        preds = clean_preds.get(c["defense"]) if isinstance(clean_preds, dict) else None
        if isinstance(labels, list) and isinstance(preds, list) and len(preds) == len(labels):
            flags = [p == y for p, y in zip(preds, labels, strict=True)]
        out.append(Measurement("clean", c["defense"], "-", "-", 0.0, "-", float(c["accuracy"]),
                               int(c["n"]), flags))
    job_flags: dict[tuple[str, str, str, float], list[bool]] = {}
    for r in rows_of(card, "results"):
        rec = jobs.get(r["job_id"]) if isinstance(jobs, dict) else None
        flags = [bool(v) for v in rec["robust"]] if isinstance(rec, dict) else None
        if flags is not None:
            job_flags[(r["defense"], r["attack"], r["norm"], round(r["eps"], 9))] = flags
        out.append(Measurement("attack", r["defense"], r["attack"], r["norm"], float(r["eps"]),
                               r["eps_label"], float(r["robust_accuracy"]), int(r["n"]), flags))
    for w in rows_of(card, "worst_case"):
        parts = [job_flags.get((w["defense"], a, w["norm"], round(w["eps"], 9)))
                 for a in w.get("attacks", [])]
        flags = None
        if parts and all(p is not None for p in parts):
            flags = [all(vals) for vals in zip(*parts, strict=True)]  # type: ignore[misc]
        out.append(Measurement("worst case", w["defense"], "worst case", w["norm"],
                               float(w["eps"]), w["eps_label"], float(w["robust_accuracy"]),
                               int(w["n"]), flags))
    return out


def _same_samples(a: Run, b: Run, sa: dict[str, Any] | None,
                  sb: dict[str, Any] | None) -> tuple[bool, str]:
    if sa is None or sb is None:
        return False, "per-sample outcomes are missing for at least one run"
    fa, fb = a.provenance.get("dataset_fingerprint"), b.provenance.get("dataset_fingerprint")
    if fa and fb and fa != fb:
        return False, "the runs evaluated different data (dataset fingerprints differ)"
    if sa.get("labels") != sb.get("labels"):
        return False, "the runs evaluated different samples (labels differ)"
    return True, ""


def compare_runs(a: Run, b: Run, alpha: float = ALPHA) -> Comparison:
    """Compare ``b`` (candidate) against ``a`` (baseline); ``change`` is ``b - a``."""
    if a.card is None or b.card is None:
        raise RunDataError("both runs need a readable scorecard to be compared")
    if a.task != "classification" or b.task != "classification":
        raise RunDataError(f"side-by-side comparison covers classification runs; got {a.task} "
                           f"and {b.task}")
    result = Comparison()
    samples: list[dict[str, Any] | None] = []
    for run in (a, b):
        try:
            samples.append(read_samples(run))
        except RunDataError as e:
            samples.append(None)
            result.notes.append(f"{run.run_id}: {e}")
    paired, why = _same_samples(a, b, samples[0], samples[1])
    result.paired = paired
    if not paired:
        result.notes.append(f"unpaired tests (Fisher's exact test on counts): {why}")
    ma = {m.key: m for m in measurements(a.card, samples[0] if paired else None)}
    mb = {m.key: m for m in measurements(b.card, samples[1] if paired else None)}
    result.only_a = [_label(m) for k, m in ma.items() if k not in mb]
    result.only_b = [_label(m) for k, m in mb.items() if k not in ma]
    pvalues: list[float] = []
    for key, x in ma.items():
        y = mb.get(key)
        if y is None:
            continue
        if paired and x.flags is not None and y.flags is not None and len(x.flags) == \
                len(y.flags):
            lost = sum(1 for u, v in zip(x.flags, y.flags, strict=True) if u and not v)
            gained = sum(1 for u, v in zip(x.flags, y.flags, strict=True) if v and not u)
            p = mcnemar_exact(lost, gained)
            test = f"McNemar (paired: {lost} lost, {gained} gained)"
        else:
            p = fisher_exact(x.count, x.n, y.count, y.n)
            test = "Fisher exact (unpaired)"
        pvalues.append(p)
        result.rows.append({
            "measure": x.what, "defense": x.defense, "attack": x.attack, "norm": x.norm,
            "eps": x.eps_label, "eps_value": x.eps, "A": x.rate, "B": y.rate,
            "n A": x.n, "n B": y.n, "change": y.rate - x.rate, "test": test, "p": p})
    for row, adj in zip(result.rows, holm(pvalues), strict=True):
        row["p (Holm)"] = adj
        row["significant"] = adj < alpha and row["change"] != 0
        change = row["change"]
        if abs(change) < 1e-12:
            row["verdict"] = "unchanged"
        else:
            word = "weaker" if change < 0 else "stronger"
            row["verdict"] = f"{word}, significant" if row["significant"] else \
                f"{word}, not significant"
    return result


def summary_text(c: Comparison, a_id: str, b_id: str) -> str:
    """One sentence a reviewer can act on."""
    if not c.rows:
        return f"{a_id} and {b_id} have no numbers in common to compare."
    weaker, sig = c.weaker, c.significantly_weaker
    parts = [(f"{len(weaker)} of {len(c.rows)} matched numbers are lower in {b_id} than in "
              f"{a_id}; {len(sig)} of them significantly (Holm-adjusted p < {ALPHA}).")]
    if weaker:
        worst = min(weaker, key=lambda r: r["change"])
        what = "clean accuracy" if worst["measure"] == "clean" else \
            f"{worst['attack']} at {worst['eps']}"
        parts.append(f"Largest drop: {what} [{worst['defense']}] {worst['A']:.3f} -> "
                     f"{worst['B']:.3f} ({worst['change'] * 100:+.1f} points, p = "
                     f"{worst['p']:.3g}).")
    return " ".join(parts)
