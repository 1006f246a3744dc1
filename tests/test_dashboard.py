"""The dashboard, page by page, on scorecards from real runs (Streamlit's AppTest), plus one
end-to-end test in a real headless Chromium against ``arange dashboard``.

The store used here holds only what the runners wrote: two real classification runs of the
tiny scenario (the session's ``tiny_run`` and a second run with other attacks and a gate rule),
a real hash-matching run and a real forgery-localisation run (the tiny scenarios of their own
test modules), and copies of real runs made corrupt, old-schema, stripped of their side files or
of their result rows.
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from .conftest import ROOT, tiny_scenario

APP_TIMEOUT = 60
ARTIFACTS = ROOT / "test-artifacts" / "dashboard"


# ---------------------------------------------------------------------------- the store

def _second_run_scenario() -> dict[str, Any]:
    return tiny_scenario(
        name="tiny-b",
        attacks=[{"name": "pgd", "eps": ["4/255", "8/255"], "params": {"steps": 10}},
                 {"name": "noise", "eps": ["4/255"]}],
        gates=[{"name": "pgd-floor", "metric": "robust_accuracy", "attack": "pgd",
                "eps": "4/255", "min": 0.05}],
        # the extra-run validity checks are covered by their own tests; skip their cost here
        evaluation={"checks": {"large_eps": False, "more_steps": False}})


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2))


def _images(n: int, size: int = 16, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 255, size, dtype=np.float64)
    base = (ramp[None, :] + ramp[:, None]) / 2
    imgs = np.stack([np.stack([np.roll(base, i, axis=c % 2) for c in range(3)])
                     for i in range(n)])
    return np.clip(imgs + rng.normal(0, 4, imgs.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def store(tiny_run: tuple[Any, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    import arange

    root = tmp_path_factory.mktemp("dashboard-store")
    _, tiny_dir = tiny_run
    shutil.copytree(tiny_dir, root / "tiny")
    arange.run(_second_run_scenario(), out=root / "tiny-b", progress=False)
    broken = root / "broken"
    shutil.copytree(tiny_dir, broken / "corrupt")
    text = (broken / "corrupt" / "scorecard.json").read_text()
    (broken / "corrupt" / "scorecard.json").write_text(text[: len(text) // 2])
    shutil.copytree(tiny_dir, broken / "old-schema")
    card = json.loads((broken / "old-schema" / "scorecard.json").read_text())
    card["schema_version"] = 0
    _write_json(broken / "old-schema" / "scorecard.json", card)
    shutil.copytree(tiny_dir, broken / "invalid")
    card = json.loads((broken / "invalid" / "scorecard.json").read_text())
    del card["results"][0]["eps"]
    _write_json(broken / "invalid" / "scorecard.json", card)
    shutil.copytree(tiny_dir, root / "damaged-side-files")
    for name in ("samples.json", *(f"examples/{p.name}" for p in
                                   (tiny_dir / "examples").glob("*.npz"))):
        data = (root / "damaged-side-files" / name).read_bytes()
        (root / "damaged-side-files" / name).write_bytes(data[: len(data) // 3])
    shutil.copytree(tiny_dir, root / "no-side-files")
    (root / "no-side-files" / "samples.json").unlink()
    shutil.rmtree(root / "no-side-files" / "examples")
    from .test_forensics import TINY as FORENSICS
    from .test_hash_runner import TINY as HASH

    arange.run(copy.deepcopy(HASH), out=root / "hash", progress=False)
    arange.run(yaml.safe_load(FORENSICS), out=root / "forensics", progress=False)
    _own_forgery_run(root, tmp_path_factory.mktemp("own-forgeries"))
    shutil.copytree(root / "hash", root / "hash-empty")
    card = json.loads((root / "hash-empty" / "scorecard.json").read_text())
    card["results"], card["transfer"], card["sweep"] = [], [], []
    _write_json(root / "hash-empty" / "scorecard.json", card)
    return root


def _own_forgery_run(root: Path, work: Path) -> None:
    """A detector the range trained, exported as ONNX, on a CASIA-style set of real forgeries:
    the forensics page's view of your own data."""
    import arange
    from arange.cli import main

    from .forgery_sets import build
    from .test_forensics import TINY as FORENSICS

    raw = yaml.safe_load(FORENSICS)
    raw["detectors"], raw["gates"] = raw["detectors"][:1], []
    (work / "inrange.yaml").write_text(yaml.safe_dump(raw))
    assert main(["export", str(work / "inrange.yaml"), "--format", "onnx", "--out",
                 str(work / "det.onnx")]) == 0
    build(work / "casia", tampered=4, authentic=2)
    arange.run({"name": "forensics-own", "task": "forgery_localization", "seed": 0,
                "device": "cpu",
                "target": {"dataset": {"name": "casia", "options": {"root": str(work / "casia")}}},
                "detectors": [{"label": "mine", "model": f"onnx:{work / 'det.onnx'}"}],
                "robustness": [{"perturbation": "jpeg", "strengths": [75]}],
                "attacks": [{"name": "pgd", "eps": ["4/255"], "params": {"steps": 2},
                             "samples": 2, "transfer": False}]},
               out=root / "forensics-own", progress=False)


def _card(store: Path, run_id: str) -> dict[str, Any]:
    return json.loads((store / run_id / "scorecard.json").read_text())  # type: ignore[no-any-return]


# ---------------------------------------------------------------------------- AppTest helpers

def _app(runs: Path, monkeypatch: pytest.MonkeyPatch, page: str, **params: str) -> Any:
    from streamlit.testing.v1 import AppTest

    from arange.dashboard import APP_PATH, RUNS_ENV

    monkeypatch.setenv(RUNS_ENV, str(runs))
    at = AppTest.from_file(str(APP_PATH), default_timeout=APP_TIMEOUT)
    at.query_params["page"] = page
    for k, v in params.items():
        at.query_params[k] = v
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _texts(at: Any) -> str:
    parts = []
    for kind in ("title", "markdown", "caption", "info", "warning", "error", "success",
                 "subheader"):
        parts += [str(e.value) for e in getattr(at, kind)]
    return "\n".join(parts)


def _no_crash(at: Any) -> None:
    assert not at.exception
    assert "could not be shown" not in _texts(at)
    assert "Traceback" not in _texts(at)


def _chart_frames(at: Any) -> list[Any]:
    from streamlit.dataframe_util import convert_arrow_bytes_to_pandas_df

    frames = []
    for chart in at.get("vega_lite_chart"):
        for ds in chart.proto.datasets:
            frames.append(convert_arrow_bytes_to_pandas_df(ds.data.data))
    return frames


# ---------------------------------------------------------------------------- runs page

def test_runs_page_lists_real_runs_and_flags_broken_ones(
        store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    at = _app(store, monkeypatch, "runs")
    _no_crash(at)
    df = at.dataframe[0].value
    assert set(df["run"]) >= {"tiny", "tiny-b", "no-side-files", "hash", "forensics"}
    tiny = _card(store, "tiny")
    row = df[df["run"] == "tiny"].iloc[0]
    assert row["clean accuracy"] == pytest.approx(tiny["clean"][0]["accuracy"])
    assert row["lowest robust accuracy"] == pytest.approx(
        min(w["robust_accuracy"] for w in tiny["worst_case"]))
    assert row["task"] == "classification" and row["target"] == "resnet20 on digits"
    assert df[df["run"] == "tiny-b"].iloc[0]["gate"] == "not evaluated"
    assert df[df["run"] == "tiny"].iloc[0]["gate"] == "no gates"
    errors = "\n".join(e.value for e in at.error)
    assert "broken/corrupt" in errors and "damaged (not valid JSON" in errors
    assert "broken/old-schema" in errors and "older schema (schema_version 0)" in errors


def test_runs_page_filters_and_sorts(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    at = _app(store, monkeypatch, "runs")
    at.text_input(key="runs_filter").set_value("tiny-b").run()
    assert list(at.dataframe[0].value["run"]) == ["tiny-b"]
    at.text_input(key="runs_filter").set_value("").run()
    at.multiselect(key="runs_task").set_value(["classification"]).run()
    at.selectbox(key="runs_sort").set_value("lowest robust accuracy").run()
    df = at.dataframe[0].value
    assert set(df["task"]) == {"classification"}
    values = list(df["lowest robust accuracy"])
    assert values == sorted(values)


def test_empty_and_missing_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for runs in (tmp_path / "does-not-exist", tmp_path):
        for page in ("runs", "scorecard", "examples", "compare", "hash", "forensics"):
            at = _app(runs, monkeypatch, page)
            _no_crash(at)
            text = _texts(at)
            assert "Run a scenario first" in text or "no data of this kind" in text, (page, text)
            if runs == tmp_path:
                assert "No runs found" in text or "no data of this kind" in text


# ---------------------------------------------------------------------------- scorecard page

def test_scorecard_page_on_a_real_run(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    at = _app(store, monkeypatch, "scorecard", run="tiny-b")
    _no_crash(at)
    card = _card(store, "tiny-b")
    assert at.title[0].value == "Scorecard: tiny-b"
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Clean accuracy"] == f"{card['clean'][0]['accuracy']:.3f}"
    assert metrics["Gates"] == "not evaluated"
    # the chart holds every result and the worst case, with CI bounds
    frames = _chart_frames(at)
    assert frames
    data = frames[0]
    pgd = card["results"][0]
    got = data[(data["series"] == "pgd")].iloc[0]
    assert got["robust_accuracy"] == pytest.approx(pgd["robust_accuracy"])
    assert got["ci_lo"] == pytest.approx(pgd["robust_accuracy_ci"][0])
    assert got["eps"] == pytest.approx(pgd["eps"] * 255)  # L-inf axis in 1/255 steps
    worst = data[data["series"] == "worst case"]
    assert list(worst["robust_accuracy"]) == pytest.approx(
        [w["robust_accuracy"] for w in card["worst_case"]])
    text = _texts(at)
    for check in card["checks"]:
        assert f"**{check['name']}**: {check['message']}" in text
    assert "Why it matters" in text
    assert "Gates: not evaluated" in text and "arange gate" in text
    gate_table = at.dataframe[-1].value
    assert list(gate_table["name"]) == ["pgd-floor"]
    assert list(gate_table["status"]) == ["not evaluated"]
    assert [b.label for b in at.download_button] == ["Scorecard JSON", "Report (Markdown)",
                                                     "Report (HTML)"]
    # filtering the chart to one attack drops the others
    at.multiselect(key="sc_attacks").set_value(["noise"]).run()
    data = _chart_frames(at)[0]
    assert set(data["series"]) == {"noise", "worst case"}


def test_scorecard_flags_unreliable_rows(store: Path, monkeypatch: pytest.MonkeyPatch,
                                         tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    shutil.copytree(store / "tiny-b", runs / "flagged")
    card = _card(runs, "flagged")
    card["results"][0]["unreliable"] = "the adaptive attack pgd+bpda does better"
    card["results"][-1].update(adaptive=True, adaptive_method="bpda", adapts="pgd")
    _write_json(runs / "flagged" / "scorecard.json", card)
    at = _app(runs, monkeypatch, "scorecard", run="flagged")
    _no_crash(at)
    assert "Rows marked unreliable overstate robustness" in _texts(at)
    table = next(d.value for d in at.dataframe if "unreliable" in d.value.columns)
    assert next(iter(table["unreliable"])).startswith("the adaptive attack")
    assert list(table["adaptive"])[-1] == "bpda"
    # an ordinary scorecard shows no such warning
    plain = _app(store, monkeypatch, "scorecard", run="tiny-b")
    assert "Rows marked unreliable" not in _texts(plain)


def test_scorecard_shows_gate_results_when_evaluated(
        store: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    shutil.copytree(store / "tiny-b", runs / "tiny-b")
    _write_json(runs / "tiny-b" / "gates.json", {
        "passed": False,
        "rules": [{"name": "pgd-floor", "metric": "robust_accuracy", "passed": False,
                   "checks": [{"kind": "min", "value": 0.01, "threshold": 0.05}]}]})
    at = _app(runs, monkeypatch, "scorecard", run="tiny-b")
    _no_crash(at)
    assert {m.label: m.value for m in at.metric}["Gates"] == "fail"
    assert "fails at least one release gate" in _texts(at)
    gate_rows = at.dataframe[-1].value
    assert list(gate_rows["status"]) == ["fail"] and list(gate_rows["gate"]) == ["pgd-floor"]
    assert list(gate_rows["threshold"]) == [0.05]
    (runs / "tiny-b" / "gates.json").write_text("{not json")
    at = _app(runs, monkeypatch, "scorecard", run="tiny-b")
    _no_crash(at)
    assert any("gates.json" in e.value and "damaged" in e.value for e in at.error)


@pytest.mark.parametrize("run_id, expected", [
    ("broken/corrupt", "is damaged (not valid JSON at line"),
    ("broken/old-schema", ("uses an older schema (schema_version 0); this arange reads "
                           "version 1")),
    ("broken/invalid", "invalid scorecard: results.0.eps: Field required"),
])
def test_unreadable_scorecards_show_a_message(store: Path, monkeypatch: pytest.MonkeyPatch,
                                              run_id: str, expected: str) -> None:
    for page in ("scorecard", "examples"):
        at = _app(store, monkeypatch, page, run=run_id)
        _no_crash(at)
        assert any(expected in e.value for e in at.error), [e.value for e in at.error]


def test_missing_side_files_show_a_message(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    at = _app(store, monkeypatch, "scorecard", run="no-side-files")
    _no_crash(at)
    warnings = "\n".join(w.value for w in at.warning)
    assert "samples.json" in warnings and "is missing" in warnings
    assert "no example images" in warnings
    assert at.get("vega_lite_chart")  # the scorecard itself still shows
    at = _app(store, monkeypatch, "examples", run="no-side-files")
    _no_crash(at)
    assert any("examples folder is missing" in w.value for w in at.warning)


def test_damaged_side_files_show_a_message(store: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    at = _app(store, monkeypatch, "scorecard", run="damaged-side-files")
    _no_crash(at)
    assert any("samples.json" in w.value and "is damaged" in w.value for w in at.warning)
    at = _app(store, monkeypatch, "examples", run="damaged-side-files")
    _no_crash(at)
    assert any(".npz" in w.value and "example images file is damaged" in w.value
               for w in at.warning), [w.value for w in at.warning]
    at = _app(store, monkeypatch, "compare", a="damaged-side-files", b="tiny")
    _no_crash(at)
    assert set(at.dataframe[0].value["test"]) == {"Fisher exact (unpaired)"}


# ---------------------------------------------------------------------------- gallery

def test_examples_gallery_on_a_real_run(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    card = _card(store, "tiny")
    job = next(r for r in card["results"] if r["attack"] == "pgd" and r["eps_label"] == "16/255")
    at = _app(store, monkeypatch, "examples", run="tiny", job=job["job_id"])
    _no_crash(at)
    with np.load(store / "tiny" / "examples" / f"{job['job_id']}.npz") as z:
        arrays = {k: z[k] for k in z.files}
    n = len(arrays["index"])
    captions = [c for im in at.image for c in im.captions]
    assert captions.count("adversarial") == n
    assert sum(c.startswith("clean #") for c in captions) == n
    assert any(c.startswith("perturbation x") for c in captions)
    verdicts = [m.value for m in at.markdown if "true label" in m.value]
    assert len(verdicts) == n
    for i, text in enumerate(verdicts):
        assert f"true label **{arrays['label'][i]}**" in text
        assert f"adversarial prediction **{arrays['adv_pred'][i]}**" in text
        conf = arrays["adv_prob"][i][arrays["adv_pred"][i]]
        assert f"**{arrays['adv_pred'][i]}** ({conf:.0%})" in text
        assert ("evaded" in text) == (arrays["adv_pred"][i] != arrays["label"][i])
    # another job through the selector
    other = next(r for r in card["results"] if r["job_id"] != job["job_id"])
    at.selectbox(key="job").set_value(other["job_id"]).run()
    _no_crash(at)
    assert at.query_params["job"] == other["job_id"]


def test_gallery_images_are_the_saved_ones() -> None:
    from arange.dashboard.images import amplified_perturbation, ssim, to_display

    clean = np.zeros((1, 4, 4), dtype=np.uint8) + 100
    adv = clean.copy()
    adv[0, 0, 0] = 104
    adv[0, 1, 1] = 98
    pert, factor = amplified_perturbation(clean, adv)
    assert factor == pytest.approx(127 / 4)
    assert pert[0, 0, 0] == 255 and pert[0, 1, 1] == round(128 - 2 * 127 / 4)
    assert pert[0, 2, 2] == 128
    shown = to_display(clean)
    assert shown.shape == (128, 128) and shown.dtype == np.uint8
    assert ssim(clean, clean) == pytest.approx(1.0)


def test_ssim_matches_scikit_image() -> None:
    skimage = pytest.importorskip("skimage.metrics")
    from arange.dashboard.images import ssim

    a = _images(1, size=32)[0]
    b = np.clip(a.astype(int) + np.random.default_rng(3).integers(-30, 30, a.shape), 0, 255)
    ref = skimage.structural_similarity(a.mean(0), b.astype(np.uint8).mean(0), win_size=7,
                                        data_range=255, use_sample_covariance=False)
    assert ssim(a, b.astype(np.uint8)) == pytest.approx(ref, abs=1e-6)


# ---------------------------------------------------------------------------- compare

def test_compare_two_real_runs(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    at = _app(store, monkeypatch, "compare", a="tiny", b="tiny-b")
    _no_crash(at)
    a, b = _card(store, "tiny"), _card(store, "tiny-b")
    df = at.dataframe[0].value
    clean = df[df["measure"] == "clean"].iloc[0]
    assert clean["A"] == pytest.approx(a["clean"][0]["accuracy"])
    assert clean["change"] == pytest.approx(0.0)
    assert clean["verdict"] == "unchanged"
    row = df[(df["attack"] == "pgd") & (df["eps"] == "4/255")].iloc[0]
    ra = next(r for r in a["results"] if r["attack"] == "pgd" and r["eps_label"] == "4/255")
    rb = next(r for r in b["results"] if r["attack"] == "pgd" and r["eps_label"] == "4/255")
    assert row["A"] == pytest.approx(ra["robust_accuracy"])
    assert row["B"] == pytest.approx(rb["robust_accuracy"])
    assert row["change"] == pytest.approx(rb["robust_accuracy"] - ra["robust_accuracy"])
    # the runs scored the same samples: paired McNemar on the real per-sample outcomes
    sa = json.loads((store / "tiny" / "samples.json").read_text())["jobs"][ra["job_id"]]
    sb = json.loads((store / "tiny-b" / "samples.json").read_text())["jobs"][rb["job_id"]]
    lost = sum(1 for x, y in zip(sa["robust"], sb["robust"], strict=True) if x and not y)
    gained = sum(1 for x, y in zip(sa["robust"], sb["robust"], strict=True) if y and not x)
    assert row["test"] == f"McNemar (paired: {lost} lost, {gained} gained)"
    from arange.dashboard.stats import mcnemar_exact
    assert row["p"] == pytest.approx(mcnemar_exact(lost, gained))
    assert set(df["measure"]) == {"clean", "attack", "worst case"}
    text = _texts(at)
    assert "matched numbers are lower in tiny-b than in tiny" in text
    only_b = next(c.value for c in at.caption if c.value.startswith("Only in B: "))
    assert "noise linf 4/255 [none]" in only_b and "pgd linf 8/255 [none]" in only_b
    assert any(c.value.startswith("Only in A: fgsm linf 4/255") for c in at.caption)
    assert _chart_frames(at)


def test_compare_without_samples_uses_unpaired_test(
        store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    at = _app(store, monkeypatch, "compare", a="no-side-files", b="tiny-b")
    _no_crash(at)
    assert any("unpaired tests" in i.value for i in at.info)
    assert any("samples.json" in i.value and "missing" in i.value for i in at.info)
    assert set(at.dataframe[0].value["test"]) == {"Fisher exact (unpaired)"}


def test_significance_tests_match_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    from arange.dashboard.stats import fisher_exact, holm, mcnemar_exact

    for b, c in ((0, 0), (3, 0), (10, 2), (7, 9), (40, 15)):
        ref = stats.binomtest(min(b, c), b + c, 0.5).pvalue if b + c else 1.0
        assert mcnemar_exact(b, c) == pytest.approx(ref, rel=1e-9)
    for k1, n1, k2, n2 in ((3, 10, 8, 10), (50, 96, 38, 96), (0, 5, 5, 5), (12, 40, 30, 100)):
        ref = stats.fisher_exact([[k1, n1 - k1], [k2, n2 - k2]]).pvalue
        assert fisher_exact(k1, n1, k2, n2) == pytest.approx(ref, rel=1e-7)
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])


# ---------------------------------------------------------------------------- hash, forensics

def test_hash_page_shows_the_scorecards_numbers(store: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    card = _card(store, "hash")
    at = _app(store, monkeypatch, "hash", hash_matching_run="hash")
    _no_crash(at)
    text = _texts(at)
    for heading in ("Results (verified by the reference library)", "Success vs budget",
                    "Success vs queries", "Threshold trade-off"):
        assert heading in text
    assert "no data of this kind" not in text
    table = at.dataframe[0].value
    assert list(table["rate"]) == [r["rate"] for r in card["results"]]
    assert list(table["successes"]) == [r["successes"] for r in card["results"]]
    assert list(table["threshold"]) == [r["threshold"] for r in card["results"]]
    assert list(table["rejected"]) == [r["rejected"] for r in card["results"]]
    fpr = at.dataframe[1].value
    points = {p["threshold"]: p["fpr"] for p in card["fpr"][0]["points"]}
    assert dict(zip(fpr["threshold"], fpr["fpr"], strict=True)) == {
        t: points[t] for t in card["matcher"]["thresholds"]}
    top = max(r["rate"] for r in card["results"])
    assert at.metric[0].value == f"{top:.3f}"
    budget, queries, tradeoff = _chart_frames(at)
    assert sorted(budget["rate"]) == sorted(r["rate"] for r in card["results"])
    assert sorted(queries["rate"]) == sorted(p["rate"] for r in card["results"]
                                             for p in r["by_query"])
    assert sorted(tradeoff["rate"]) == sorted(v for s in card["sweep"]
                                              for v in s["success"].values())
    # a scorecard without results says so instead of failing
    at.selectbox(key="hash_matching_run").set_value("hash-empty").run()
    _no_crash(at)
    assert any("no data of this kind" in i.value for i in at.info)
    # the gallery: the original next to the very PNG the reference library re-hashed
    samples = json.loads((store / "hash" / "samples.json").read_text())
    job = max(card["results"], key=lambda r: r["successes"])["job_id"]
    saved = [i for i, p in enumerate(samples["jobs"][job]["png"]) if p]
    at = _app(store, monkeypatch, "examples", run="hash", job=job)
    _no_crash(at)
    facts = [m.value for m in at.markdown if "SSIM" in m.value]
    assert len(facts) == min(len(saved), 12)
    verified = sum(1 for i in saved if samples["jobs"][job]["success"][i])
    assert sum("verified by the reference library" in f for f in facts) == min(verified, 12)
    first = min(saved, key=lambda i: (not samples["jobs"][job]["success"][i], i))
    assert f"Hamming distance **{samples['jobs'][job]['distance'][first]}**" in facts[0]


def test_forensics_page_shows_your_forgery_set(store: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    card = _card(store, "forensics-own")
    at = _app(store, monkeypatch, "forensics", forgery_localization_run="forensics-own")
    _no_crash(at)
    table = at.dataframe[0].value
    assert list(table["condition"]) == [r["condition"] for r in card["external"]]
    assert {"clean", "benign", "white-box"} <= set(table["kind"])
    for col in ("pixel_f1", "pixel_auc", "image_auc"):
        want = [r[col] for r in card["external"]]
        got = list(table[col])
        assert all((w is None and math.isnan(g)) or g == pytest.approx(w) for w, g in
                   zip(want, got, strict=True)), col
    bars = _chart_frames(at)[0]
    assert sorted(bars["value"]) == sorted(r[m] for r in card["external"]
                                           for m in ("pixel_f1", "pixel_auc")
                                           if r[m] is not None)


def test_forensics_page_shows_the_scorecards_numbers(store: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    card = _card(store, "forensics")
    at = _app(store, monkeypatch, "forensics", forgery_localization_run="forensics")
    _no_crash(at)
    table = at.dataframe[0].value
    assert list(table["auc"]) == [r["auc"] for r in card["results"]]
    assert dict(zip(table["inpainter"], table["seen"], strict=True)) == {
        r["inpainter"]: "seen" if r["seen"] else "unseen" for r in card["results"]}
    bars, curves = _chart_frames(at)
    assert set(bars["seen"]) == {"seen", "unseen"}
    auc = curves[curves["metric"] == "auc"]
    assert sorted(auc["value"]) == sorted(r["auc"] for r in card["robustness"])
    job = card["results"][0]["job_id"]
    at = _app(store, monkeypatch, "examples", run="forensics", job=job)
    _no_crash(at)
    captions = [c for im in at.image for c in im.captions]
    shown = card["provenance"]["scenario"]["target"]["examples"]
    assert captions.count("true mask") == shown
    assert sum("detector map" in c for c in captions) == shown
    # a classification run on a task page: no data of this kind, with the reason
    at = _app(store, monkeypatch, "forensics", run="tiny")
    assert at.title[0].value == "Forgery localisation"


def test_task_views_read_the_runners_model(store: Path) -> None:
    """The hash view reads the scorecard through the hash runner's own model: a file that does
    not fit is one clear error naming the field, never silently empty rows."""
    from arange.dashboard import forensics_view, hash_view
    from arange.dashboard.data import RunDataError

    card = _card(store, "hash")
    broken = copy.deepcopy(card)
    del broken["results"][0]["rate"]
    with pytest.raises(RunDataError, match=r"results\.0\.rate"):
        hash_view.hash_rows(broken)
    assert hash_view.hash_rows(card)[0]["rate"] == card["results"][0]["rate"]
    for bad in ({}, {"results": "nonsense"}, {"results": [{"attack": "x"}, 3, None]}):
        assert forensics_view.inpainter_rows(bad) == []
        assert forensics_view.robustness_rows(bad) == []


# ---------------------------------------------------------------------------- report, safety

def test_report_markdown_and_html(store: Path) -> None:
    from arange.dashboard.data import load_run
    from arange.dashboard.report import to_html, to_markdown

    run = load_run(store, store / "tiny-b")
    card = _card(store, "tiny-b")
    md = to_markdown(run)
    assert md.startswith("# arange report: tiny-b")
    pgd = card["results"][0]
    assert (f"| none | pgd | white-box | linf | {pgd['eps_label']} | "
            f"{pgd['robust_accuracy']:.4g} |") in md
    assert "## Gates (not evaluated)" in md and "pgd-floor" in md
    html = to_html(run)
    assert html.startswith("<!doctype html>") and "<script" not in html
    assert f"<td>{pgd['robust_accuracy']:.4g}</td>" in html
    evil = load_run(store, store / "tiny-b")
    assert evil.card is not None
    evil.card["name"] = "<img src=x onerror=alert(1)>"
    assert "<img src=x" not in to_html(evil) and "&lt;img src=x" in to_html(evil)


def test_dashboard_never_imports_torch(store: Path) -> None:
    code = f"""
import os, sys
os.environ["ARANGE_DASHBOARD_RUNS"] = {str(store)!r}
from streamlit.testing.v1 import AppTest
from arange.dashboard import APP_PATH
pages = [("runs", {{}}), ("scorecard", {{"run": "tiny"}}), ("examples", {{"run": "tiny"}}),
         ("compare", {{"a": "tiny", "b": "tiny-b"}}), ("hash", {{}}), ("forensics", {{}}),
         ("scorecard", {{"run": "hash"}}), ("examples", {{"run": "hash"}}),
         ("scorecard", {{"run": "forensics"}}), ("examples", {{"run": "forensics"}})]
for page, params in pages:
    at = AppTest.from_file(str(APP_PATH), default_timeout=60)
    at.query_params.update(page=page, **params)
    at.run()
    assert not at.exception, (page, [e.value for e in at.exception])
    assert at.title, page
print("torch loaded:", "torch" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "torch loaded: False" in out.stdout


def test_cli_dashboard_arguments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from arange.cli import main
    from arange.dashboard import streamlit_command

    cmd = streamlit_command()
    assert cmd[cmd.index("--server.address") + 1] == "127.0.0.1"
    assert cmd[cmd.index("--browser.gatherUsageStats") + 1] == "false"
    not_a_folder = tmp_path / "file.txt"
    not_a_folder.write_text("x")
    assert main(["dashboard", "--runs", str(not_a_folder)]) == 2
    assert "not a folder" in capsys.readouterr().err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["dashboard", "--runs", str(tmp_path), "--port", str(port)]) == 2
    assert "cannot listen there" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["dashboard", "--port", "70000"])
    assert e.value.code == 2


# ---------------------------------------------------------------------------- end to end

def _chromium() -> tuple[str, str]:
    """Paths of Chromium and chromedriver, installing the Debian packages if missing."""
    def found() -> tuple[str, str] | None:
        chrome = shutil.which("chromium")
        driver = shutil.which("chromedriver") or "/usr/bin/chromedriver"
        return (chrome, driver) if chrome and Path(driver).is_file() else None

    paths = found()
    if paths is None:
        reason = ""
        if shutil.which("apt-get") is None:
            reason = "apt-get is not available"
        else:
            env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
            for cmd in (["apt-get", "update"],
                        ["apt-get", "install", "-y", "chromium", "chromium-driver"]):
                try:
                    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900,
                                          env=env, check=False)
                except (OSError, subprocess.TimeoutExpired) as e:
                    reason = f"{' '.join(cmd)} failed: {e}"
                    break
                if done.returncode != 0:
                    reason = f"{' '.join(cmd)} exited {done.returncode}: {done.stderr[-500:]}"
                    break
        paths = found()
        if paths is None:
            message = ("the end-to-end dashboard test needs Chromium and chromedriver (Debian "
                       f"packages chromium, chromium-driver): {reason or 'not found'}")
            if os.environ.get("CI") == "true":
                pytest.fail(message)
            pytest.skip(message)
    return paths


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _listening_addresses(port: int) -> set[str]:
    """Local addresses (hex, as in /proc/net/tcp*) of sockets listening on ``port``."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            addr, hex_port = fields[1].split(":")
            if int(hex_port, 16) == port and fields[3] == "0A":  # 0A: LISTEN
                found.add(addr)
    return found


def wait_until_serving(url: str, proc: subprocess.Popen[Any], log: Path | None = None) -> None:
    """Wait (90 s at most) for the Streamlit server of ``arange dashboard`` to answer."""
    deadline = time.monotonic() + 90
    while True:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.read().strip() == b"ok":
                    return
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail("the dashboard did not start" +
                        (":\n" + log.read_text()[-3000:] if log is not None else ""))
        time.sleep(0.3)


def headless_chrome(profile: Path, monkeypatch: pytest.MonkeyPatch,
                    window: str = "1400,2200") -> Any:
    """A Selenium driver for Debian's Chromium, headless, offline, with a fresh profile."""
    chrome, driver_path = _chromium()
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium (test extra)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chrome
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", f"--window-size={window}",
                 f"--user-data-dir={profile}"):
        options.add_argument(flag)
    monkeypatch.setenv("SE_OFFLINE", "true")  # never let Selenium Manager download anything
    return webdriver.Chrome(service=Service(driver_path), options=options)


@pytest.fixture
def dashboard_server(store: Path, tmp_path: Path) -> Iterator[str]:
    port = _free_port()
    log = (tmp_path / "server.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "arange.cli", "dashboard", "--runs",
                             str(store), "--port", str(port)], stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(url, proc, tmp_path / "server.log")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    # stopping `arange dashboard` stops the Streamlit server it started (no orphan)
    deadline = time.monotonic() + 20
    while _listening_addresses(port) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _listening_addresses(port)


def test_end_to_end_in_headless_chromium(dashboard_server: str, store: Path, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    port = int(dashboard_server.rsplit(":", 1)[1])
    # bound to the loopback address only (127.0.0.1 is 0100007F in /proc/net/tcp)
    assert _listening_addresses(port) == {"0100007F"}
    driver = headless_chrome(tmp_path / "chrome-profile", monkeypatch)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    # the headline numbers of the real hash and forensics runs, as scorecard.json has them
    hash_top = f"{max(r['rate'] for r in _card(store, 'hash')['results']):.3f}"
    forensics_low = f"{min(r['auc'] for r in _card(store, 'forensics')['results']):.3f}"
    pages = [
        # table cells are drawn on a canvas: wait for text around the table
        ("runs", "", ["Runs", "11 of 11 run(s) shown", "Runs that cannot be shown",
                      "older schema"]),
        ("scorecard", "&run=tiny", ["Scorecard: tiny", "Validity checks", "monotonic_eps",
                                    "Why it matters", "Report (HTML)"]),
        ("examples", "&run=tiny", ["Examples gallery", "adversarial prediction",
                                   "perturbation x"]),
        ("compare", "&a=tiny&b=tiny-b", ["Compare runs", "matched numbers are lower",
                                         "Significantly weaker", "Only in B"]),
        ("hash", "&hash_matching_run=hash", ["Hash matching: hash_tiny", "Success vs budget",
                                             "Threshold trade-off", hash_top]),
        ("forensics", "&forgery_localization_run=forensics",
         ["Per-inpainter AUC", "Robustness curves", forensics_low]),
        ("forensics", "&forgery_localization_run=forensics-own",
         ["Your forgery set (casia: 4 tampered, 2 authentic)", "side by side"]),
    ]
    try:
        for page, params, expected in pages:
            driver.get(f"{dashboard_server}/?page={page}{params}")

            def rendered(d: Any, expected: list[str] = expected) -> bool:
                body = d.find_element(By.TAG_NAME, "body").text
                return all(e in body for e in expected)

            try:
                WebDriverWait(driver, 60, poll_frequency=0.5).until(rendered)
            finally:
                driver.save_screenshot(str(ARTIFACTS / f"{page}.png"))
            body = driver.find_element(By.TAG_NAME, "body").text
            assert "could not be shown" not in body and "Traceback" not in body, page
            if page in ("scorecard", "compare", "hash", "forensics"):
                WebDriverWait(driver, 30).until(
                    lambda d: d.find_elements(By.CSS_SELECTOR, ".vega-embed canvas, "
                                                               ".vega-embed svg"))
                if page in ("scorecard", "hash"):
                    time.sleep(0.5)  # let the charts finish drawing before the screenshot
                    driver.save_screenshot(str(ARTIFACTS / f"{page}.png"))
            if page == "examples":
                WebDriverWait(driver, 30).until(
                    lambda d: len(d.find_elements(By.CSS_SELECTOR, "img")) >= 3)
                driver.save_screenshot(str(ARTIFACTS / f"{page}.png"))
    finally:
        driver.quit()
    assert all((ARTIFACTS / f"{p}.png").stat().st_size > 10_000 for p, _, _ in pages)
