"""The command line end to end, as a user runs it (a real subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import arange

from .conftest import tiny_scenario


def _arange(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "arange", *args], capture_output=True,
                          text=True, cwd=cwd, env=os.environ.copy(), timeout=900, check=False)


def test_run_end_to_end(tmp_path: Path) -> None:
    scenario = tmp_path / "tiny.yaml"
    scenario.write_text(yaml.safe_dump(tiny_scenario(
        attacks=[{"name": "pgd", "eps": ["8/255"], "params": {"steps": 10}}])))
    res = _arange("run", str(scenario), "-q", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "robust acc" in res.stdout and "worst case" in res.stdout
    card = json.loads((tmp_path / "runs" / "tiny" / "scorecard.json").read_text())
    assert card["provenance"]["scenario_path"] == str(scenario)
    assert card["results"][0]["attack"] == "pgd"
    # --strict passes on a healthy evaluation
    res = _arange("run", str(scenario), "-q", "--strict", "--out", str(tmp_path / "o2"))
    assert res.returncode == 0, res.stderr


def test_list_validate_version(tmp_path: Path) -> None:
    res = _arange("list", "attacks")
    assert res.returncode == 0
    assert any(line.startswith("pgd ") for line in res.stdout.splitlines())
    assert _arange("list", "models").stdout.count("resnet") >= 3
    assert "digits" in _arange("list", "datasets").stdout
    assert _arange("--version").stdout.strip() == f"arange {arange.__version__}"
    bad = _arange("list", "widgets")
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


def test_train_command_builds_and_reports_trained_defenses(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from arange.cli import main

    path = tmp_path / "d.yaml"
    path.write_text(yaml.safe_dump(tiny_scenario(defenses=["none", "jpeg"])))
    assert main(["train", str(path), "-q"]) == 0
    assert "no defense trains a model" in capsys.readouterr().out
    assert main(["train", str(path), "--defense", "pgd_at", "-q"]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "--defense 'pgd_at'" in err and "none, jpeg" in err
    path.write_text(yaml.safe_dump(tiny_scenario(defenses=[
        "none", {"name": "fast_at", "label": "hardened", "params": {"epochs": 1}}])))
    assert main(["train", str(path), "--defense", "hardened", "-q"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("hardened "))
    assert "fast_at" in row and row.rstrip().endswith(".safetensors")
    assert Path(row.split()[-1]).is_file()


def test_list_task_components(capsys: pytest.CaptureFixture[str]) -> None:
    from arange.cli import main
    assert main(["list", "hashes"]) == 0
    lines = capsys.readouterr().out.splitlines()
    names = [line.split()[0] for line in lines]
    assert names == sorted(names) and {"phash", "pdq", "whash", "colorhash"} <= set(names)
    assert any(line.startswith("pdq ") and "torch fast path" in line for line in lines)
    assert main(["list", "inpainters"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("telea ") and "[classical]" in line for line in lines)
    assert any(line.startswith("gan ") and "[learned]" in line for line in lines)
    assert main(["list", "detectors"]) == 0
    assert capsys.readouterr().out.startswith("noise_residual ")


def test_bad_input_exit_code_and_no_traceback(tmp_path: Path) -> None:
    res = _arange("run", str(tmp_path / "missing.yaml"))
    assert res.returncode == 2
    assert res.stderr == f"arange: error: {tmp_path / 'missing.yaml'}: no such file\n"
    res = _arange("validate", str(tmp_path / "missing.yaml"))
    assert res.returncode == 2 and "Traceback" not in res.stderr
