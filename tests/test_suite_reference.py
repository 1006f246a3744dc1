"""The suite-reference check: arange's ``suite: standard`` re-run against the reference
AutoAttack (pyautoattack) on the same samples, through the real runner and CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from arange.cli import main
from arange.core.scorecard import read_scorecard

from .conftest import tiny_scenario

pytest.importorskip("pyautoattack")

BUDGETS = {"steps": 5, "n_target_classes": 2, "fab_steps": 5, "n_queries": 30}


def _scenario(tmp_path: Path, suite_params: dict[str, Any], eps: str = "8/255",
              **evaluation: Any) -> Path:
    s = tiny_scenario(attacks=[{"suite": "standard", "eps": ["4/255", eps],
                                "params": suite_params}],
                      evaluation={"checks": {"samples": 32, "large_eps": False,
                                             "more_steps": False, **evaluation}})
    s["target"]["samples"] = 32
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(s))
    return path


def _per_sample(out: Path, suite_key: str) -> dict[str, Any]:
    samples = json.loads((out / "samples.json").read_text())
    return next(v for k, v in samples["jobs"].items() if f"__{suite_key}__" in k
                and k.endswith("8_255"))


def test_reference_agrees_with_the_suite_and_resumes(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    path = _scenario(tmp_path, BUDGETS)
    out = tmp_path / "run"
    assert main(["run", str(path), "--out", str(out), "-q", "--suite-reference"]) == 0
    card = read_scorecard(out / "scorecard.json")
    check = card.check("suite_reference")
    assert check.status in ("pass", "warn"), check.message
    d = check.details
    # the check compares on the samples the suite attacked (clean-correct, up to 32)
    attacked = torch.tensor(_per_sample(out, "standard")["attacked"])
    robust = torch.tensor(_per_sample(out, "standard")["robust"])
    n = int(attacked.sum())
    assert d["samples"] == n > 16
    # the eps where the suite broke about half of what it attacked
    assert d["eps"] in (4 / 255, 8 / 255)
    if d["eps"] == 8 / 255:
        assert d["suite_robust_accuracy"] == pytest.approx(int(robust.sum()) / n)
    assert d["params"] == BUDGETS
    assert d["pyautoattack"]
    # the reference ran as an ordinary job whose record the runner kept
    recs = [json.loads(p.read_text()) for p in (out / "jobs").glob("*.json")]
    ref = [r for r in recs if r.get("check") == "suite_reference"]
    assert len(ref) == 1 and ref[0]["params"]["steps"] == BUDGETS["steps"]
    assert sum(ref[0]["attacked"]) == n and sum(ref[0]["violations"]) == 0
    assert sum(ref[0]["robust"]) / n == pytest.approx(d["reference_robust_accuracy"])
    # a second run redoes nothing, the reference job included
    capsys.readouterr()
    assert main(["run", str(path), "--out", str(out), "-q", "--suite-reference"]) == 0
    again = read_scorecard(out / "scorecard.json")
    assert again.provenance.jobs_reused == len(recs)
    assert again.check("suite_reference").details == d


def test_a_weakened_suite_fails_and_its_rows_are_marked(tmp_path: Path) -> None:
    # Square alone with 5 queries is far weaker than AutoAttack at the same budgets
    weak = {**BUDGETS, "n_queries": 5, "components": ["square"]}
    path = _scenario(tmp_path, weak, eps="16/255",
                     suite_reference={"enabled": True, "eps": "16/255"})
    out = tmp_path / "run"
    assert main(["run", str(path), "--out", str(out), "-q", "--strict"]) == 1
    card = read_scorecard(out / "scorecard.json")
    check = card.check("suite_reference")
    assert check.status == "fail", check.message
    assert check.details["only_reference"] > check.details["only_suite"]
    assert check.details["p_value"] < 0.05
    suite_rows = [r for r in card.results if r.attack == "standard" or
                  r.attack.startswith("standard/")]
    assert suite_rows and all(r.unreliable for r in suite_rows)
    assert "reference AutoAttack" in str(suite_rows[0].unreliable)


def test_off_by_default_says_how_to_turn_it_on(tiny_run: Any, tmp_path: Path) -> None:
    # no suite: no entry at all
    card, _ = tiny_run
    assert all(c.name != "suite_reference" for c in card.checks)


@pytest.mark.parametrize(("evaluation", "flag", "words"), [
    ({"suite_reference": {"enabled": True, "suite": "nope"}}, [],
     ["evaluation.checks.suite_reference.suite", "no suite entry 'nope'"]),
    ({"suite_reference": {"enabled": True, "eps": "2/255"}}, [],
     ["evaluation.checks.suite_reference.eps", "not one of the suite's eps"]),
])
def test_bad_suite_reference_settings(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                      evaluation: dict[str, Any], flag: list[str],
                                      words: list[str]) -> None:
    path = _scenario(tmp_path, BUDGETS, **evaluation)
    assert main(["run", str(path), "--out", str(tmp_path / "run"), "-q", *flag]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and all(w in err for w in words), err
    assert not (tmp_path / "run").exists()


def test_suite_reference_needs_a_suite_and_the_package(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    plain = tmp_path / "plain.yaml"
    plain.write_text(yaml.safe_dump(tiny_scenario()))
    assert main(["run", str(plain), "--out", str(tmp_path / "a"), "--suite-reference"]) == 2
    err = capsys.readouterr().err
    assert "evaluation.checks.suite_reference" in err and "no suite entry" in err

    hashing = Path(__file__).resolve().parent.parent / "scenarios" / "hash_evasion_phash.yaml"
    assert main(["run", str(hashing), "--out", str(tmp_path / "b"), "--suite-reference"]) == 2
    assert "classification" in capsys.readouterr().err

    from arange.attacks.adapters import autoattack
    monkeypatch.setattr(autoattack, "installed", lambda: False)
    path = _scenario(tmp_path, BUDGETS)
    assert main(["run", str(path), "--out", str(tmp_path / "c"), "--suite-reference"]) == 2
    err = capsys.readouterr().err
    assert 'pip install "arange[autoattack]"' in err
    assert not any((tmp_path / n).exists() for n in "abc")
