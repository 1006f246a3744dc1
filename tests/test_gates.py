"""Robustness gates: floors, ceilings and significance-tested regressions against a baseline.

The headline tests run the real runner three times on the tiny digits model: a healthy model
(recorded as the baseline), the same weights re-run with another seed (must pass), and the same
weights with noise added (must fail the regression gate). The rest edit copies of the healthy
run folder to hit each rule and error path quickly.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

import arange
from arange import gates as G
from arange import stats as S
from arange.baseline import build_baseline, load_baseline, save_baseline
from arange.cli import main
from arange.gates.report import _fmt_p as format_p
from arange.models import save_weights
from arange.stats import wilson_interval

from .conftest import ROOT, TINY_SCENARIO

GATE_SCENARIOS = sorted((Path(__file__).parent / "scenarios" / "gates").glob("*.yaml"))

# Regression rules tight enough that a real degradation must trip them, loose enough (with the
# significance test) that evaluation noise must not.
GATES: list[dict[str, Any]] = [
    {"name": "clean-floor", "metric": "clean_accuracy", "min": 0.5},
    {"name": "clean-regression", "metric": "clean_accuracy", "max_drop": 0.02},
    {"name": "robust-regression", "metric": "robust_accuracy", "attack": "worst_case",
     "eps": "4/255", "max_drop": 0.02},
    {"name": "pgd-regression", "metric": "robust_accuracy", "attack": "pgd", "max_drop": 0.0},
    {"name": "fgsm-success-regression", "metric": "attack_success_rate", "attack": "fgsm",
     "max_drop": 0.05},
    # random noise depends on the seed: a re-run flips many samples both ways
    {"name": "noise-regression", "metric": "robust_accuracy", "attack": "noise", "max_drop": 0.0},
]


def _scenario(weights: Path, seed: int, **extra: Any) -> dict[str, Any]:
    target = copy.deepcopy(TINY_SCENARIO["target"])
    target["weights"] = str(weights)
    s = {"name": "gated", "seed": seed, "device": "cpu", "target": target,
         "attacks": [{"name": "fgsm", "eps": ["4/255"]},
                     {"name": "pgd", "eps": ["4/255"], "params": {"steps": 5}},
                     {"name": "noise", "eps": ["48/255"]}],
         "gates": GATES,
         # the extra validity-check attacks cost time and are tested elsewhere
         "evaluation": {"checks": {"large_eps": False, "more_steps": False}}}
    s.update(extra)
    return s


def _write(path: Path, scenario: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(scenario, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def weights(tiny_model: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny model's weights, and a degraded copy with Gaussian noise on every conv/linear
    weight (10% of each tensor's standard deviation)."""
    model = copy.deepcopy(tiny_model[0])
    folder = tmp_path_factory.mktemp("weights")
    healthy = folder / "healthy.safetensors"
    save_weights(model, healthy)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.add_(torch.randn(p.shape, generator=gen) * 0.1 * p.std())
    degraded = folder / "degraded.safetensors"
    save_weights(model, degraded)
    return {"healthy": healthy, "degraded": degraded}


@pytest.fixture(scope="module")
def baseline_run(weights: dict[str, Path],
                 tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The healthy model at seed 0, run through the CLI and saved as the baseline."""
    folder = tmp_path_factory.mktemp("gated")
    scenario = _write(folder / "gated.yaml", _scenario(weights["healthy"], seed=0))
    run = folder / "runs" / "healthy"
    assert main(["run", str(scenario), "--out", str(run), "-q"]) == 0
    assert main(["baseline", "save", str(run)]) == 0  # default: next to the scenario file
    base = folder / "baselines" / "gated.json"
    assert base.is_file()
    return {"folder": folder, "run": run, "baseline": base}


def _gate(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["gate", *args])
    out, err = capsys.readouterr()
    return code, out, err


# ---------------------------------------------------------------------------- headline

def test_healthy_model_rerun_with_another_seed_passes(
        weights: dict[str, Path], baseline_run: dict[str, Path], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    scenario = _write(tmp_path / "gated.yaml", _scenario(weights["healthy"], seed=1))
    run = tmp_path / "seed1"
    junit, md = tmp_path / "gate.xml", tmp_path / "gate.md"
    code = main(["run", str(scenario), "--out", str(run), "-q", "--gate",
                 "--baseline", str(baseline_run["baseline"]), "--junit", str(junit),
                 "--markdown", str(md)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "gate gated: PASSED" in out and junit.is_file() and md.is_file()

    report = G.gate(run, baseline_run["baseline"])
    regressions = [c for r in report.rules for c in r.checks if c.kind == "max_drop"]
    assert len(regressions) == 5
    assert all(c.test == G.MCNEMAR for c in regressions)  # same samples: paired test
    assert "same model weights as the baseline" in report.notes
    # The other seed changed the noise draws and PGD's random starts, so the re-run is not a
    # copy: samples flipped, and none of it is significant.
    noise = next(c for r in report.rules if r.name == "noise-regression" for c in r.checks)
    assert noise.lost is not None and noise.gained is not None
    assert noise.lost + noise.gained > 0
    # Judged the other way round (the seed-1 run as the baseline) it passes too. Whichever run
    # scored lower on noise, one direction is worse than the allowed drop of 0 and must pass
    # only because the drop is not significant.
    other = tmp_path / "seed1.json"
    assert main(["baseline", "save", str(run), "--out", str(other)]) == 0
    code, out, _ = _gate([str(baseline_run["run"]), "--baseline", str(other)], capsys)
    assert code == 0, out
    reverse = G.gate(baseline_run["run"], other)
    both = [c for rep in (report, reverse) for r in rep.rules if r.name == "noise-regression"
            for c in r.checks]
    if noise.lost != noise.gained:
        exceeded = [c for c in both if c.worse_by is not None and c.worse_by > c.threshold]
        assert len(exceeded) == 1 and exceeded[0].passed
        assert "not significant" in exceeded[0].message


def test_degraded_model_fails_the_regression_gate(
        weights: dict[str, Path], baseline_run: dict[str, Path], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    scenario = _write(tmp_path / "gated.yaml", _scenario(weights["degraded"], seed=0))
    run = tmp_path / "degraded"
    junit = tmp_path / "gate.xml"
    code = main(["run", str(scenario), "--out", str(run), "-q", "--gate",
                 "--baseline", str(baseline_run["baseline"]), "--junit", str(junit)])
    out = capsys.readouterr().out
    assert code == 1, out
    assert "gate gated: FAILED" in out

    report = G.gate(run, baseline_run["baseline"])
    failed = {r.name: r for r in report.failed}
    assert "clean-regression" in failed and "robust-regression" in failed
    for rule in ("clean-regression", "robust-regression"):
        c = failed[rule].checks[0]
        assert c.test == G.MCNEMAR and c.p_adjusted is not None and c.p_adjusted <= 0.05
        assert c.worse_by is not None and c.worse_by > c.threshold
        assert c.lost is not None and c.gained is not None and c.lost > c.gained
        assert "significant" in c.message and "McNemar" in c.message
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None
    assert int(suite.get("failures", "0")) == len(report.failed) + (not report.validity_passed)


def test_cascade_runs_reconstruct_attacked_samples(weights: dict[str, Path],
                                                   tmp_path: Path) -> None:
    """In cascade mode an attack only runs on what earlier ones left; the success-rate outcomes
    the baseline stores must still reproduce every row (build_baseline checks each)."""
    import arange
    s = _scenario(weights["healthy"], seed=0)
    s["evaluation"]["cascade"] = True
    s["target"]["samples"] = 48
    arange.run(s, out=tmp_path / "run", progress=False)
    doc = build_baseline(tmp_path / "run")
    asr = [row["attack_success_rate"] for row in doc["outcomes"]["results"]]
    assert len(asr) == 3
    # pgd ran only on what fgsm left unbroken at 4/255; noise (alone at 48/255) ran on every
    # clean-correct sample, like fgsm
    assert asr[0].count("-") < asr[1].count("-")
    assert asr[2].count("-") == asr[0].count("-")
    # Side files written before the runner recorded the attacked samples are reconstructed
    # from the clean predictions and the cascade order, to the same outcomes.
    samples = json.loads((tmp_path / "run" / "samples.json").read_text())
    assert all("attacked" in job for job in samples["jobs"].values())
    for job in samples["jobs"].values():
        del job["attacked"]
    shutil.copytree(tmp_path / "run", tmp_path / "old")
    (tmp_path / "old" / "samples.json").write_text(json.dumps(samples))
    assert build_baseline(tmp_path / "old")["outcomes"] == doc["outcomes"]
    (tmp_path / "b.json").write_text(json.dumps(doc))
    report = G.evaluate(G.load_scorecard_evidence(tmp_path / "run"),
                        G.parse_rules(doc["scorecard"]), load_baseline(tmp_path / "b.json"))
    assert report.passed


# ---------------------------------------------------------------------------- statistics

@pytest.mark.parametrize("lost,gained", [(0, 0), (3, 0), (8, 2), (2, 8), (20, 11), (60, 40)])
def test_mcnemar_exact_matches_binomial_test(lost: int, gained: int) -> None:
    from scipy.stats import binomtest
    p = S.mcnemar_exact_one_sided(lost, gained)
    if lost + gained == 0:
        assert p == 1.0
    else:
        assert p == pytest.approx(binomtest(lost, lost + gained, 0.5,
                                            alternative="greater").pvalue, rel=1e-12)


def test_newcombe_interval_matches_published_examples() -> None:
    # Newcombe (1998), Statistics in Medicine 17:873, Table II, method 10.
    lo, hi = S.newcombe_interval(56, 70, 48, 80)
    assert (round(lo, 4), round(hi, 4)) == (0.0524, 0.3339)
    lo, hi = S.newcombe_interval(9, 10, 3, 10)
    assert (round(lo, 4), round(hi, 4)) == (0.1705, 0.8090)


def test_newcombe_p_value_inverts_the_interval() -> None:
    from scipy.stats import norm
    p = S.newcombe_one_sided(56, 70, 48, 80)
    assert 0 < p < 0.025  # the two-sided 95% interval excludes 0
    assert S.newcombe_interval(56, 70, 48, 80, norm.isf(p))[0] == pytest.approx(0, abs=1e-9)
    assert S.newcombe_one_sided(48, 80, 56, 70) == pytest.approx(1 - p)
    assert S.newcombe_one_sided(5, 10, 5, 10) == 0.5


def test_holm_adjustment() -> None:
    assert S.holm_adjust([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert S.holm_adjust([]) == []


# ---------------------------------------------------------------------------- edited copies

def _copy_run(src: Path, dst: Path, gates: list[dict[str, Any]] | None = None,
              lose: int = 0, gain: int = 0, **prov: Any) -> Path:
    """Copy a run folder; optionally replace its gates, edit provenance fields, and make
    ``lose`` clean-correct samples wrong and ``gain`` clean-wrong samples right (keeping the
    scorecard's clean row consistent with samples.json)."""
    shutil.copytree(src, dst)
    card = json.loads((dst / "scorecard.json").read_text())
    if gates is not None:
        card["provenance"]["scenario"]["gates"] = gates
    card["provenance"].update(prov)
    if lose or gain:
        samples = json.loads((dst / "samples.json").read_text())
        labels, pred = samples["labels"], samples["clean_pred"]["none"]
        right = [i for i, (p, y) in enumerate(zip(pred, labels)) if p == y]
        wrong = [i for i, (p, y) in enumerate(zip(pred, labels)) if p != y]
        assert len(right) >= lose and len(wrong) >= gain
        for i in right[:lose]:
            pred[i] = (labels[i] + 1) % 10
        for i in wrong[:gain]:
            pred[i] = labels[i]
        (dst / "samples.json").write_text(json.dumps(samples))
        k = sum(p == y for p, y in zip(pred, labels))
        n = len(labels)
        card["clean"][0].update(accuracy=k / n, accuracy_ci=list(wilson_interval(k, n)))
    (dst / "scorecard.json").write_text(json.dumps(card, indent=2))
    return dst


# Editing clean predictions changes which samples an attack ran on, so rules on attack success
# rates cannot be evaluated on such edited copies (the gate would rightly refuse them).
NO_ASR = [g for g in GATES if g["metric"] != "attack_success_rate"]
CLEAN_DROP = [{"name": "clean-regression", "metric": "clean_accuracy", "max_drop": 0.01}]


@pytest.mark.parametrize("lose,gain,passes,p", [
    (2, 0, True, 0.25),             # 2.1 points worse than allowed 1, but 2 flips are noise
    (6, 4, True, 386 / 1024),       # net 2 points worse, 10 flips both ways: noise
    (8, 0, False, 1 / 256),         # 8 of 8 flips the wrong way: significant
    (0, 3, True, 1.0),              # better than the baseline
])
def test_regression_needs_both_a_large_and_a_significant_drop(
        baseline_run: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
        lose: int, gain: int, passes: bool, p: float) -> None:
    run = _copy_run(baseline_run["run"], tmp_path / "run", CLEAN_DROP, lose=lose, gain=gain)
    code, out, _ = _gate([str(run), "--baseline", str(baseline_run["baseline"])], capsys)
    assert code == (0 if passes else 1), out
    check = G.gate(run, baseline_run["baseline"]).rules[0].checks[0]
    assert check.test == G.MCNEMAR and (check.lost, check.gained) == (lose, gain)
    assert check.p_value == pytest.approx(p)
    assert check.worse_by == pytest.approx((lose - gain) / 96)
    assert f"p={format_p(p)}" in out


def test_unpaired_test_when_the_baseline_scored_other_samples(
        baseline_run: dict[str, Path], tmp_path: Path) -> None:
    base = _copy_run(baseline_run["run"], tmp_path / "base", dataset_fingerprint="0" * 64)
    run = _copy_run(baseline_run["run"], tmp_path / "run", CLEAN_DROP, lose=8)
    report = G.gate(run, base)
    check = report.rules[0].checks[0]
    assert check.test == G.NEWCOMBE and "unpaired: other samples" in check.note
    k = round(check.value * 96)
    assert check.p_value == pytest.approx(S.newcombe_one_sided(k + 8, 96, k, 96))
    assert any("dataset fingerprint differs" in n for n in report.notes)
    # A baseline without its samples file cannot be paired either.
    (base / "samples.json").unlink()
    check = G.gate(run, base).rules[0].checks[0]
    assert check.test == G.NEWCOMBE and "no per-sample outcomes in the baseline" in check.note


def test_floors_ceilings_and_the_worst_case_default(baseline_run: dict[str, Path],
                                                    tmp_path: Path) -> None:
    card = json.loads((baseline_run["run"] / "scorecard.json").read_text())
    # A rule without attack or eps covers every worst-case row (here 4/255 and the noise
    # baseline's 48/255); its floor is met when the lowest of them is at or above it. Which row
    # is lowest is the model's business, not the test's.
    worst_rows = card["worst_case"]
    assert len(worst_rows) == 2
    worst = min(r["robust_accuracy"] for r in worst_rows)
    at_4 = next(r for r in worst_rows if r["eps_label"] == "4/255")["robust_accuracy"]
    pgd = next(r for r in card["results"] if r["attack"] == "pgd")
    rules = [
        {"name": "worst-floor", "metric": "robust_accuracy", "min": worst},         # no attack
        {"name": "worst-floor-too-high", "metric": "robust_accuracy", "min": worst + 0.01},
        {"name": "worst-too-high", "metric": "robust_accuracy", "eps": "4/255",
         "min": at_4 + 0.01},
        {"name": "pgd-floor", "metric": "robust_accuracy", "attack": "pgd",
         "min": pgd["robust_accuracy"]},
        {"name": "asr-ceiling", "metric": "attack_success_rate", "max": 0.999},
        {"name": "asr-too-low", "metric": "attack_success_rate", "attack": "pgd",
         "max": pgd["attack_success_rate"] - 0.01},
    ]
    run = _copy_run(baseline_run["run"], tmp_path / "run", rules)
    report = G.gate(run)
    by = {r.name: r for r in report.rules}
    assert by["worst-floor"].metric.table == "worst_case" and by["worst-floor"].passed
    assert sorted(c.value for c in by["worst-floor"].checks) == sorted(
        r["robust_accuracy"] for r in worst_rows)
    # just above the lowest row: exactly the rows below the floor fail
    too_high = by["worst-floor-too-high"]
    assert not too_high.passed
    assert {c.value for c in too_high.checks if not c.passed} == {
        r["robust_accuracy"] for r in worst_rows if r["robust_accuracy"] < worst + 0.01}
    assert not by["worst-too-high"].passed and len(by["worst-too-high"].checks) == 1
    assert by["pgd-floor"].metric.table == "results" and by["pgd-floor"].passed
    assert len(by["asr-ceiling"].checks) == 3  # one per attack: the rule covers every row
    assert not by["asr-too-low"].passed and by["asr-too-low"].checks[0].n == pgd["n_attacked"]
    assert not report.passed and len(report.failed) == 3


# ---------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("rule,message", [
    ({"metric": "robust_acc", "min": 0.1},
     "gates[0].metric: unknown metric 'robust_acc'; did you mean 'robust_accuracy'?"),
    ({"metric": "robust_accuracy", "attack": "pgd"},
     "gates[0]: needs at least one of min, max or max_drop"),
    ({"metric": "clean_accuracy", "min": 1.5}, "gates[0].min: rates are in [0, 1] (got 1.5)"),
    ({"metric": "clean_accuracy", "min": 0.9, "max": 0.5},
     "gates[0]: min 0.9 is above max 0.5; no value can pass"),
    ({"metric": "clean_accuracy", "attack": "pgd", "min": 0.5},
     "gates[0].attack: clean_accuracy (clean) cannot be selected by 'attack'"),
    ({"metric": "robust_accuracy", "min": 0.1, "threshold": 10},
     "gates[0].threshold: unknown field 'threshold' (allowed: name, metric, defense,"),
    ({"metric": "robust_accuracy", "attack": "cw", "min": 0.1},
     "rule 'gates[0] robust_accuracy (attack=cw)': the scorecard has no results row"),
    ({"metric": "robust_accuracy", "attack": "pgd", "eps": "8/255", "min": 0.1},
     "the scorecard has no results row for robust_accuracy with attack=pgd, eps=8/255"),
    ({"metric": "clean_accuracy", "defense": "jpeg", "min": 0.1},
     "the scorecard has no clean row for clean_accuracy with defense=jpeg"),
])
def test_malformed_rules_and_missing_rows_exit_2(
        baseline_run: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
        rule: dict[str, Any], message: str) -> None:
    run = _copy_run(baseline_run["run"], tmp_path / "run", [rule])
    code, _, err = _gate([str(run)], capsys)
    assert code == 2
    assert message in err and str(run / "scorecard.json") in err
    assert "Traceback" not in err and err.count("\n") == 1


def test_gate_needs_rules_and_a_baseline_for_max_drop(
        baseline_run: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _gate([str(baseline_run["run"])], capsys)
    assert code == 2 and "has max_drop, which needs a baseline: pass --baseline FILE" in err
    run = _copy_run(baseline_run["run"], tmp_path / "run", [])
    code, _, err = _gate([str(run)], capsys)
    assert code == 2 and "the scenario has no gates: rules" in err
    code, _, err = _gate([str(tmp_path / "nope.json")], capsys)
    assert code == 2 and "no such scorecard" in err


def _tamper(doc: dict[str, Any]) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    text = doc["outcomes"]["clean"][0]["clean_accuracy"]
    doc["outcomes"]["clean"][0]["clean_accuracy"] = ("0" if text[0] == "1" else "1") + text[1:]
    return doc


@pytest.mark.parametrize("make,message", [
    (lambda d: "{not json", "the baseline is damaged (not valid JSON at line 1"),
    (lambda d: [1, 2], "not a baseline"),
    (lambda d: {**d, "arange_baseline": 7}, "baseline format 7 is not supported"),
    (lambda d: {**d, "scorecard": {"x": 1}}, "scorecard: not an arange scorecard"),
    (lambda d: {**d, "outcomes": {"clean": []}}, "outcomes.clean: must list one entry per row"),
    (lambda d: {**d, "outcomes": {**d["outcomes"], "clean": [{"clean_accuracy": "1x0"}]}},
     "outcomes.clean[0].clean_accuracy: must be a string of 1, 0 and -"),
    (_tamper, "the outcomes do not belong to this scorecard"),
    (lambda d: {**d, "scorecard": {**d["scorecard"], "name": "other"}},
     "the baseline is for scenario 'other'"),
    (lambda d: {**d, "scorecard": {**d["scorecard"], "provenance": {
        **d["scorecard"]["provenance"], "dataset": "cifar10"}}},
     "the baseline is for dataset 'cifar10'"),
])
def test_malformed_or_mismatched_baselines_exit_2(
        baseline_run: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
        make: Any, message: str) -> None:
    doc = json.loads(baseline_run["baseline"].read_text())
    bad = make(doc)
    path = tmp_path / "bad.json"
    path.write_text(bad if isinstance(bad, str) else json.dumps(bad))
    code, _, err = _gate([str(baseline_run["run"]), "--baseline", str(path)], capsys)
    assert code == 2, err
    assert message in err and str(path) in err and "Traceback" not in err


def test_mismatched_scorecards_exit_2(baseline_run: dict[str, Path], tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    run = _copy_run(baseline_run["run"], tmp_path / "v99")
    card = json.loads((run / "scorecard.json").read_text())
    (run / "scorecard.json").write_text(json.dumps({**card, "schema_version": 99}))
    code, _, err = _gate([str(run)], capsys)
    assert code == 2 and "uses a newer schema (schema_version 99)" in err
    # a samples file from another run: the gate refuses rather than test the wrong outcomes
    stale = _copy_run(baseline_run["run"], tmp_path / "stale", CLEAN_DROP)
    samples = json.loads((stale / "samples.json").read_text())
    samples["clean_pred"]["none"] = samples["labels"]
    (stale / "samples.json").write_text(json.dumps(samples))
    code, _, err = _gate([str(stale), "--baseline", str(baseline_run["baseline"])], capsys)
    assert code == 2 and "per-sample outcomes of clean_accuracy (none) give 96/96" in err
    assert err.startswith(f"arange: error: {stale / 'samples.json'}: ")


def test_failed_validity_checks_fail_the_gate(baseline_run: dict[str, Path], tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """Numbers from an evaluation that failed its own validity checks may overstate robustness:
    every rule can pass and the gate still fails, unless explicitly allowed."""
    rules = [{"name": "clean-floor", "metric": "clean_accuracy", "min": 0.5}]
    run = _copy_run(baseline_run["run"], tmp_path / "run", rules)
    card = json.loads((run / "scorecard.json").read_text())
    assert all(c["status"] != "fail" for c in card["checks"])
    code, out, _ = _gate([str(run)], capsys)
    assert code == 0 and "[pass] evaluation-validity" in out
    card["checks"][0].update(status="fail", message="2 samples outside the eps-ball")
    (run / "scorecard.json").write_text(json.dumps(card))
    junit = tmp_path / "gate.xml"
    code, out, _ = _gate([str(run), "--junit", str(junit)], capsys)
    assert code == 1 and "1 of 1 rules passed; evaluation-validity checks failed" in out
    assert f"{card['checks'][0]['name']}: 2 samples outside the eps-ball" in out
    failures = [c.get("name") for c in ET.parse(junit).getroot().iter("testcase")
                if c.find("failure") is not None]
    assert failures == ["evaluation-validity"]
    code, out, _ = _gate([str(run), "--allow-failed-checks"], capsys)
    assert code == 0 and "allowed by --allow-failed-checks" in out


def _expected(path: Path) -> str:
    lines = [ln[len("# error: "):] for ln in path.read_text().splitlines()
             if ln.startswith("# error: ")]
    assert lines, f"{path} has no '# error:' header"
    return "\n".join(lines).replace("{file}", str(path))


@pytest.mark.parametrize("path", GATE_SCENARIOS, ids=[p.stem for p in GATE_SCENARIOS])
def test_run_gate_rejects_bad_rules_before_any_compute(
        path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    code = main(["run", str(path), "--out", str(out), "-q", "--gate"])
    err = capsys.readouterr().err
    assert code == 2
    assert err == f"arange: error: {_expected(path)}\n"
    assert not out.exists()


def test_gate_options_need_gate_flag(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", str(ROOT / "scenarios" / "ci_smoke.yaml"), "--junit", "x.xml"]) == 2
    assert "--junit only apply with --gate" in capsys.readouterr().err


def test_run_gate_refuses_another_scenarios_baseline(
        baseline_run: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    code = main(["run", str(ROOT / "scenarios" / "ci_smoke.yaml"), "--out", str(out), "-q",
                 "--gate", "--baseline", str(baseline_run["baseline"])])
    assert code == 2 and not out.exists()
    assert "the baseline is for scenario 'gated'" in capsys.readouterr().err


# ---------------------------------------------------------------------------- baseline file

def test_baseline_is_small_diffable_and_checked(baseline_run: dict[str, Path],
                                                capsys: pytest.CaptureFixture[str]) -> None:
    text = baseline_run["baseline"].read_text()
    assert len(text) < 20_000 and text.count("\n") > 100  # one field per line: diffs read well
    doc = json.loads(text)
    card = json.loads((baseline_run["run"] / "scorecard.json").read_text())
    assert doc["scorecard"]["results"] == card["results"]
    clean = doc["outcomes"]["clean"][0]["clean_accuracy"]
    assert len(clean) == 96 and clean.count("1") == round(card["clean"][0]["accuracy"] * 96)
    assert main(["baseline", "show", str(baseline_run["baseline"])]) == 0
    out = capsys.readouterr().out
    assert "baseline of scenario 'gated'" in out and "none / pgd / linf 4/255" in out
    # a baseline compared with the scorecard it came from passes every regression exactly
    report = G.gate(baseline_run["run"], baseline_run["baseline"])
    assert report.passed
    assert all(c.p_value == 1.0 for r in report.rules for c in r.checks if c.kind == "max_drop")


def test_baseline_save_needs_a_path_when_the_scenario_file_is_unknown(
        baseline_run: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _copy_run(baseline_run["run"], tmp_path / "run", scenario_path=None)
    assert main(["baseline", "save", str(run)]) == 2
    assert "give the baseline path with --out" in capsys.readouterr().err
    assert main(["baseline", "save", str(run), "--out", str(tmp_path / "b.json")]) == 0


# ---------------------------------------------------------------------------- reports

def test_junit_report_parses_with_a_junit_parser(baseline_run: dict[str, Path],
                                                 tmp_path: Path) -> None:
    from junitparser import Failure, JUnitXml
    run = _copy_run(baseline_run["run"], tmp_path / "run", [
        *NO_ASR, {"name": "impossible <floor> & \"quotes\"", "metric": "clean_accuracy",
                 "min": 1.0}], lose=8)
    path = tmp_path / "gate.xml"
    assert main(["gate", str(run), "--baseline", str(baseline_run["baseline"]),
                 "--junit", str(path)]) == 1
    xml = JUnitXml.fromfile(str(path))
    suites = list(xml)
    assert len(suites) == 1
    cases = list(suites[0])
    assert [c.name for c in cases] == ["evaluation-validity"] + [g["name"] for g in NO_ASR] + [
        "impossible <floor> & \"quotes\""]
    failed = {c.name for c in cases if any(isinstance(r, Failure) for r in c.result)}
    assert failed == {"clean-regression", "impossible <floor> & \"quotes\""}
    assert suites[0].tests == len(cases) and suites[0].failures == 2 and suites[0].errors == 0
    # What the common (Jenkins/Surefire) schema requires: required attributes and time format.
    root = ET.parse(path).getroot()
    assert root.tag == "testsuites"
    for suite in root.iter("testsuite"):
        assert {"name", "tests", "failures", "errors"} <= set(suite.attrib)
        assert re.fullmatch(r"\d+(\.\d{1,3})?", suite.get("time", "0"))
    for case in root.iter("testcase"):
        assert case.get("name") and case.get("classname")
        for fail in case.iter("failure"):
            assert fail.get("message") and fail.get("type") and fail.text


def test_markdown_summary_renders_as_a_table(baseline_run: dict[str, Path],
                                             tmp_path: Path) -> None:
    from markdown_it import MarkdownIt
    rules = [*NO_ASR, {"name": "a|b", "metric": "clean_accuracy", "min": 0.1}]
    run = _copy_run(baseline_run["run"], tmp_path / "run", rules, lose=8)
    path = tmp_path / "gate.md"
    assert main(["gate", str(run), "--baseline", str(baseline_run["baseline"]),
                 "--markdown", str(path)]) == 1
    text = path.read_text()
    assert "http" not in text  # nothing external
    html = MarkdownIt("commonmark").enable("table").render(text)
    assert html.count("<table>") == 1
    header = re.findall(r"<th[^>]*>(.*?)</th>", html)
    assert header == ["Status", "Rule", "Metric", "Row", "Value", "Bound", "Baseline", "Change",
                      "Test", "p"]
    body = html.split("<tbody>")[1].split("</tbody>")[0]
    rows = re.findall(r"<tr>(.*?)</tr>", body, re.DOTALL)
    report = G.gate(run, baseline_run["baseline"])
    assert len(rows) == sum(len(r.checks) for r in report.rules)
    cells = [re.findall(r"<td[^>]*>(.*?)</td>", r, re.DOTALL) for r in rows]
    assert all(len(c) == 10 for c in cells)
    assert ["a|b"] == [c[1] for c in cells if c[1].startswith("a")]  # the pipe stays in its cell
    assert [c[1] for c in cells if c[0].startswith("❌")] == ["clean-regression"]
    assert "What failed" in html and "clean-regression" in html.split("What failed")[1]


# ---------------------------------------------------------------------------- other tasks

@pytest.fixture(scope="module")
def toy_runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """A range written as a plugin (tests/plugin_range.py) run by the real driver: the recorded
    run, the same target with another seed, and a degraded (biased) target."""
    from arange.core.task import TASKS

    from . import plugin_range

    plugin_range.register()
    root = tmp_path_factory.mktemp("toy")
    scenario = {"name": "toy", "task": plugin_range.TASK, "target": {"samples": 400},
                "attacks": [{"name": "pgd", "eps": ["8/255"], "params": {"steps": 5}}],
                "gates": [{"name": "evasion", "metric": "evasion_rate", "attack": "pgd",
                           "max": 0.3, "max_drop": 0.02},
                          {"name": "margin", "metric": "mean_margin", "max_drop": 0.5}]}
    runs = {}
    for label, change in (("base", {}), ("reseeded", {"seed": 1}),
                          ("degraded", {"target": {"samples": 400, "bias": 0.1}})):
        arange.run({**scenario, **change}, out=root / label, progress=False)
        runs[label] = root / label
    runs["baseline"] = save_baseline(runs["base"] / "scorecard.json", root / "baseline.json")
    try:
        yield runs
    finally:
        TASKS.remove(plugin_range.TASK)
        del G.METRICS[plugin_range.TASK]
        G.RULE_MODELS.pop(plugin_range.TASK, None)


def test_a_plugin_range_gates_through_the_core(toy_runs: dict[str, Path]) -> None:
    """A task registered from outside arange names its table, fields and selectors; its rate is
    tested pairwise on the per-sample outcomes of its samples file, its average by a bootstrap
    over samples, and a degraded target fails while another seed passes."""
    base = json.loads((toy_runs["base"] / "scorecard.json").read_text())
    degraded = json.loads((toy_runs["degraded"] / "scorecard.json").read_text())
    assert degraded["results"][0]["evasion_rate"] > base["results"][0]["evasion_rate"] + 0.03

    report = G.gate(toy_runs["degraded"], toy_runs["baseline"])
    evasion, margin = report.rules
    ceiling, regression = evasion.checks
    assert ceiling.passed and ceiling.value == degraded["results"][0]["evasion_rate"]
    assert regression.test == G.MCNEMAR and not regression.passed
    assert regression.p_value is not None and regression.p_value < 1e-3
    (bootstrap,) = margin.checks
    assert bootstrap.test is not None and bootstrap.test.startswith("bootstrap over images")
    assert not report.passed

    again = G.gate(toy_runs["reseeded"], toy_runs["baseline"])
    assert again.passed, G.render_text(again)


def test_plugin_rules_are_checked_against_the_plugins_metrics(toy_runs: dict[str, Path]
                                                              ) -> None:
    with pytest.raises(G.GateError, match="is not a rate and has no regression test"):
        G.rules_from_list([{"metric": "max_margin", "max_drop": 0.01}], "toy_linear",
                          "s.yaml: gates")
    with pytest.raises(G.GateError, match="threshold"):
        G.rules_from_list([{"metric": "evasion_rate", "threshold": 3, "max": 0.1}],
                          "toy_linear", "s.yaml: gates")
    G.rules_from_list([{"metric": "max_margin", "min": 0.5}], "toy_linear", "s.yaml: gates")


def test_ci_smoke_scenario_is_gated() -> None:
    from arange.core.scenario import load_scenario
    s = load_scenario(ROOT / "scenarios" / "ci_smoke.yaml")
    rules = G.rules_from_list([g.model_dump() for g in s.gates], s.task, "ci_smoke")
    assert any(r.max_drop is not None for r in rules) and any(r.min is not None for r in rules)
    base = load_baseline(ROOT / "scenarios" / "baselines" / "ci_smoke.json")
    assert base.name == s.name


@pytest.mark.slow
def test_ci_smoke_passes_its_gate(tmp_path: Path) -> None:
    """What .ci/run does: run the smoke scenario and gate it against the committed baseline."""
    code = main(["run", str(ROOT / "scenarios" / "ci_smoke.yaml"), "--out", str(tmp_path / "r"),
                 "-q", "--gate", "--baseline",
                 str(ROOT / "scenarios" / "baselines" / "ci_smoke.json")])
    assert code == 0


# ---------------------------------------------------------------------------- other tasks

HASH_GATED = """\
name: hash_gate
task: hash_matching
seed: {seed}
device: cpu
target:
  hash: phash
  hash_params: {{hash_size: {size}}}
  thresholds: [4]
  dataset: {{name: embedded, options: {{image_size: 64, limit: 24}}}}
  batch_size: 24
attacks:
  - {{name: nes, eps: 16/255, params: {{max_queries: 100}}}}
evaluation: {{transfer: {{phash: 4}}}}
gates:
  - {{name: evasion-regression, metric: evasion_rate, attack: nes, threshold: 4,
     max_drop: 0.1}}
"""

FORENSICS_GATED = """\
name: forensics_gate
task: forgery_localization
seed: {seed}
device: cpu
target:
  dataset: {{name: embedded, options: {{image_size: 64, limit: 24}}}}
  crop: 32
  test_images: 24
  train_patches: 400
  examples: 0
inpainters:
  - {{name: telea}}
train_inpainters: [telea]
detectors:
  - {{label: residual, params: {{width: 8}}, training: {{epochs: {epochs}, batch_size: 32}}}}
gates:
  # another seed draws other test photographs and trains another detector: the allowance
  # covers that variation, not a detector trained for a sixth of the epochs
  - {{name: auc-regression, metric: pixel_auc, detector: residual, inpainter: telea,
     max_drop: 0.15}}
  - {{name: f1-regression, metric: f1, detector: residual, inpainter: telea, max_drop: 0.15}}
"""


@pytest.mark.parametrize("task", ["hash_matching", "forgery_localization"])
def test_regression_gates_on_the_other_ranges(task: str, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """A degraded target fails the regression gate against a recorded baseline; the same
    target re-run with another seed passes. Hash: a 256-bit pHash matched at 4 bits (easy to
    evade) against the 64-bit one (paired McNemar on the verified per-image outcomes).
    Forensics: a detector trained for 1 epoch instead of 6 (bootstrap over images, paired;
    unpaired for the re-seeded run, which scores other images)."""
    if task == "hash_matching":
        healthy, degraded, reseeded = ({"seed": 0, "size": 8}, {"seed": 0, "size": 16},
                                       {"seed": 1, "size": 8})
        text = HASH_GATED
    else:
        healthy, degraded, reseeded = ({"seed": 0, "epochs": 6}, {"seed": 0, "epochs": 1},
                                       {"seed": 1, "epochs": 6})
        text = FORENSICS_GATED
    runs = {}
    for name, values in (("healthy", healthy), ("degraded", degraded),
                         ("reseeded", reseeded)):
        path = tmp_path / f"{name}.yaml"
        path.write_text(text.format(**values))
        assert main(["validate", str(path)]) == 0  # the rules validate as the gate reads them
        runs[name] = (path, tmp_path / name)
    path, out = runs["healthy"]
    assert main(["run", str(path), "--out", str(out), "-q"]) == 0
    base = tmp_path / "baseline.json"
    assert main(["baseline", "save", str(out), "--out", str(base)]) == 0
    doc = json.loads(base.read_text())
    if task == "forgery_localization":  # the per-image data the bootstrap resamples
        assert set(doc["per_image"]["results"][0]) == {"pixel_auc", "f1", "iou", "image_auc"}
    capsys.readouterr()
    for name, expected in (("degraded", 1), ("reseeded", 0)):
        path, out = runs[name]
        code = main(["run", str(path), "--out", str(out), "-q", "--gate", "--baseline",
                     str(base)])
        text_out = capsys.readouterr().out
        assert code == expected, text_out
        report = G.gate(out, base)
        checks = [c for r in report.rules for c in r.checks if c.kind == "max_drop"]
        assert checks and all(c.p_value is not None for c in checks)
        if task == "hash_matching":
            assert all(c.test == G.MCNEMAR for c in checks)
        else:
            kind = "paired" if name == "degraded" else "unpaired"
            assert all(c.test.startswith(f"bootstrap over images ({kind}") for c in checks)
        if name == "degraded":
            assert all(not c.passed and c.worse_by is not None and c.worse_by > c.threshold
                       for c in checks)


def test_validate_uses_the_gates_own_rule_validator(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """One rule validator: a rule `arange gate` would refuse is refused by `arange validate`
    with the same message (here min above max, which only the gate's validator checks)."""
    bad = HASH_GATED.format(seed=0, size=8).replace("max_drop: 0.1}", "min: 0.9, max: 0.5}")
    path = tmp_path / "bad.yaml"
    path.write_text(bad)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}: gates[0]: min 0.9 is above max 0.5; no value can pass" in err
    assert err.count("\n") == 1 and "Traceback" not in err
