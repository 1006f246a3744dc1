"""The scenario schema: every broken file under tests/scenarios/broken/ must fail with exactly
the message in its ``# error:`` header, through the CLI, with exit status 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from arange.cli import main
from arange.core.scenario import load_scenario, scenario_from_dict
from arange.errors import ScenarioError
from arange.expr import format_eps, parse_number

from .conftest import ROOT, tiny_scenario

BROKEN = sorted((Path(__file__).parent / "scenarios" / "broken").glob("*.yaml"))


def _expected(path: Path) -> str:
    lines = [ln[len("# error: "):] for ln in path.read_text().splitlines()
             if ln.startswith("# error: ")]
    assert lines, f"{path} has no '# error:' header"
    return "\n".join(lines).replace("{file}", str(path))


@pytest.mark.parametrize("path", BROKEN, ids=[p.stem for p in BROKEN])
def test_broken_scenario_message(path: Path, capsys: pytest.CaptureFixture[str],
                                 tmp_path: Path) -> None:
    out = tmp_path / "run"
    code = main(["run", str(path), "--out", str(out), "-q"])
    err = capsys.readouterr().err
    assert code == 2
    assert err == f"arange: error: {_expected(path)}\n"
    assert "Traceback" not in err
    assert not out.exists(), "bad input must not leave a half-written run folder"


def test_there_are_enough_broken_examples() -> None:
    assert len(BROKEN) >= 15


@pytest.mark.parametrize("path", sorted((ROOT / "scenarios").glob("*.yaml")),
                         ids=lambda p: p.stem)
def test_shipped_scenarios_validate(path: Path) -> None:
    assert main(["validate", str(path)]) == 0


def test_defaults_and_expressions() -> None:
    s = scenario_from_dict(tiny_scenario())
    assert s.defenses[0].name == "none"
    assert s.attacks[0].eps == [4 / 255, 16 / 255]
    assert s.evaluation.cascade is False
    assert s.target.weights == "zoo"


@pytest.mark.parametrize("text,value", [("8/255", 8 / 255), ("2*4/255", 8 / 255), ("0.5", 0.5),
                                        ("-(1/2)", -0.5), (3, 3.0), ("1e-3", 1e-3)])
def test_parse_number(text: object, value: float) -> None:
    assert parse_number(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["os.system('x')", "2**10", "abs(-1)", "[1]", "1/0", "nan",
                                  "inf", True, None, "", "8 // 255", "x"])
def test_parse_number_rejects(text: object) -> None:
    with pytest.raises(ValueError):
        parse_number(text)


def test_format_eps() -> None:
    assert format_eps(8 / 255) == "8/255"
    assert format_eps(0.3) == "0.3"


def test_relative_paths_resolve_against_the_scenario_file(tmp_path: Path) -> None:
    from PIL import Image

    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "m.safetensors").write_bytes(b"")
    (tmp_path / "imgs" / "cls").mkdir(parents=True)  # the folder is checked at load time
    Image.new("RGB", (8, 8)).save(tmp_path / "imgs" / "cls" / "a.png")
    text = (
        "name: t\ntarget:\n  model: resnet20\n  weights: w/m.safetensors\n"
        "  dataset: {name: imagefolder, options: {root: imgs}}\n"
        "attacks: [{name: pgd, eps: 8/255}]\n")
    f = tmp_path / "s.yaml"
    f.write_text(text)
    s = load_scenario(f)
    assert s.target.weights == str((tmp_path / "w" / "m.safetensors").resolve())
    assert s.target.dataset.options["root"] == str((tmp_path / "imgs").resolve())


def test_scenario_errors_are_arange_errors() -> None:
    with pytest.raises(ScenarioError, match=r"<scenario>: attacks: list should have at least"):
        scenario_from_dict({**tiny_scenario(), "attacks": []})
