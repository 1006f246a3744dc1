"""A security tool must not be the way in: hostile scenarios, files and scorecards.

Every case ends in exit status 2, one clear message naming the file (and field), no traceback,
nothing written outside ``--out`` and no half-written run folder. The scenario files under
``tests/scenarios/hostile/`` carry their exact message in a ``# error:`` header; the other cases
(generated files, folders, scorecards, broken models) are built here.
"""

from __future__ import annotations

import copy
import json
import struct
import time
import zlib
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from arange.cli import main

from .conftest import tiny_scenario

HOSTILE = sorted((Path(__file__).parent / "scenarios" / "hostile").glob("*.yaml"))


def _expected(path: Path) -> str:
    header = path.read_text().splitlines()[0]
    assert header.startswith("# error: "), f"{path} has no '# error:' header"
    return header[len("# error: "):].replace("{file}", str(path)).replace(
        "{dir}", str(path.parent.resolve()))


def _fails_cleanly(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("arange: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err and len(err) < 1000
    return err


@pytest.mark.parametrize("path", HOSTILE, ids=[p.stem for p in HOSTILE])
def test_hostile_scenario(path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
                          ) -> None:
    deep = tmp_path / "a" / "b" / "out"  # a traversal out of here would land in tmp_path
    t0 = time.monotonic()
    err = _fails_cleanly(["run", str(path), "--out", str(deep), "-q"], capsys)
    assert time.monotonic() - t0 < 30
    assert err == f"arange: error: {_expected(path)}\n"
    assert sorted(p.name for p in tmp_path.rglob("*")) == []  # nothing written anywhere
    assert _fails_cleanly(["validate", str(path)], capsys) == err  # validate says the same


def test_generated_yaml_bombs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    deep = tmp_path / "deep.yaml"
    deep.write_text("name: x\nsteps: " + "[" * 20000 + "]" * 20000 + "\n")
    assert "nested deeper than 64 levels" in _fails_cleanly(["validate", str(deep)], capsys)
    huge = tmp_path / "huge.yaml"
    huge.write_text("name: x\ndescription: " + "A" * 10_000_000 + "\n")
    err = _fails_cleanly(["validate", str(huge)], capsys)
    assert "is more than a scenario may hold (1 MiB)" in err
    value = tmp_path / "value.yaml"  # a long value in an error is quoted by its prefix only
    s = tiny_scenario(name="A" * 900_000)
    s["target"]["weights"] = "random"
    value.write_text(yaml.safe_dump(s, width=10**7))
    assert "(900002 characters)" in _fails_cleanly(["validate", str(value)], capsys)


@pytest.mark.parametrize("command", ["validate", "gate"])
def test_special_files_are_refused(command: str, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    err = _fails_cleanly([command, "/dev/zero"], capsys)
    assert "/dev/zero: not a regular file" in err
    loop = tmp_path / "loop.yaml"
    loop.symlink_to(loop)
    assert str(loop) in _fails_cleanly([command, str(loop)], capsys)


def test_deeply_nested_scorecard(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    card = tmp_path / "scorecard.json"
    card.write_text("[" * 200_000 + "]" * 200_000)
    assert "nested too deeply" in _fails_cleanly(["gate", str(card)], capsys)


@pytest.mark.parametrize("value", ["NaN", "Infinity", "7.5", "-0.5"])
def test_gate_on_a_scorecard_with_impossible_numbers(
        value: str, tiny_run: tuple[Any, Path], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    _, out = tiny_run
    card = json.loads((out / "scorecard.json").read_text())
    card["provenance"]["scenario"]["gates"] = [
        {"metric": "robust_accuracy", "attack": "pgd", "eps": 4 / 255, "min": 0.0}]
    text = json.dumps(card).replace('"robust_accuracy": ' +
                                    json.dumps(card["results"][2]["robust_accuracy"]),
                                    f'"robust_accuracy": {value}', 1)
    path = tmp_path / "scorecard.json"
    path.write_text(text)
    err = _fails_cleanly(["gate", str(path)], capsys)
    assert str(path) in err
    if value in ("NaN", "Infinity"):
        assert f"{value} is not a number arange writes" in err
    else:  # refused by the scorecard model (classification) or the gate's own range check
        assert "robust_accuracy" in err and ("which no run writes" in err or
                                             "than or equal to" in err)


# ---------------------------------------------------------------------------- files, folders

def _png(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width`` x ``height`` (with one tiny data chunk)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data +
                struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) +
            chunk(b"IDAT", zlib.compress(b"\x00" * 4)) + chunk(b"IEND", b""))


def _folder_scenario(tmp_path: Path, root: Path, task: str) -> Path:
    if task == "classification":
        s: dict[str, Any] = {"name": "hostile", "device": "cpu", "target": {
            "model": "resnet20", "model_params": {"width": 4}, "weights": "random",
            "dataset": {"name": "imagefolder", "options": {"root": str(root),
                                                           "image_size": 16}}},
            "attacks": [{"name": "fgsm", "eps": ["8/255"]}]}
    else:
        s = {"name": "hostile", "task": "hash_matching", "device": "cpu",
             "target": {"hash": "phash", "thresholds": [4], "dataset": {
                 "name": "imagefolder", "options": {"root": str(root), "image_size": 32}}},
             "attacks": [{"name": "nes", "eps": "8/255", "params": {"max_queries": 20}}]}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(s))
    return path


@pytest.mark.parametrize("task", ["classification", "hash_matching"])
@pytest.mark.parametrize("bad", ["corrupt", "bomb"])
def test_undecodable_images_name_the_file(task: str, bad: str, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    from PIL import Image

    root = tmp_path / "images" / "cls"
    root.mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (20, 20), (i * 40, 0, 0)).save(root / f"ok{i}.png")
    victim = root / "zz_bad.png"
    victim.write_bytes(b"\x89PNG\r\n\x1a\nnot an image" if bad == "corrupt"
                       else _png(40000, 40000))
    scenario = _folder_scenario(tmp_path, tmp_path / "images", task)
    out = tmp_path / "run"
    err = _fails_cleanly(["run", str(scenario), "--out", str(out), "-q"], capsys)
    assert f"cannot read {victim}" in err
    assert not (out / "scorecard.json").exists()


@pytest.mark.parametrize("task", ["classification", "hash_matching"])
def test_image_root_that_is_a_symlink_loop(task: str, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "images"
    root.symlink_to(root)
    scenario = _folder_scenario(tmp_path, root, task)
    err = _fails_cleanly(["validate", str(scenario)], capsys)
    assert str(root) in err and ("not a folder" in err or "does not exist" in err)


def test_weights_file_that_is_a_symlink_loop(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    weights = tmp_path / "w.safetensors"
    weights.symlink_to(weights)
    s = tiny_scenario()
    s["target"]["weights"] = str(weights)
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(s))
    assert str(weights) in _fails_cleanly(["validate", str(path)], capsys)


def test_out_that_is_a_file_or_under_one(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "s.yaml"
    s = tiny_scenario()
    s["target"]["weights"] = "random"
    path.write_text(yaml.safe_dump(s))
    afile = tmp_path / "file.txt"
    afile.write_text("x")
    for out in (afile, afile / "sub" / "run"):
        err = _fails_cleanly(["run", str(path), "--out", str(out), "-q"], capsys)
        assert "exists and is not a folder" in err
    assert afile.read_text() == "x"


def test_writes_stay_inside_the_run_folder(tmp_path: Path) -> None:
    """The driver refuses a record or file path that would leave the run folder, whatever a
    task hands it."""
    from arange.core.driver import JobStore
    from arange.errors import ArangeError

    store = JobStore(tmp_path / "run")

    class J:
        key, job_id = "k", "../../escaped"

    with pytest.raises(ArangeError, match="outside the run folder"):
        store.save(J(), {"x": 1})
    with pytest.raises(ArangeError, match="outside the run folder"):
        J.job_id = "ok"
        store.save(J(), {"_files": {"../x.png": b"x"}})
    assert not (tmp_path / "escaped.json").exists() and not (tmp_path / "x.png").exists()


# ---------------------------------------------------------------------------- broken models

def test_checks_stay_truthful_on_nan_weights(tiny_model: Any, tmp_path: Path) -> None:
    import arange
    from arange.models import save_weights

    model = copy.deepcopy(tiny_model[0])
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    weights = tmp_path / "nan.safetensors"
    save_weights(model, weights)
    s = tiny_scenario(attacks=[{"name": "fgsm", "eps": ["4/255"]},
                               {"name": "pgd", "eps": ["4/255"], "params": {"steps": 2}}],
                      evaluation={"checks": {"large_eps": False, "more_steps": False}})
    s["target"].update(weights=str(weights), samples=32, batch_size=32)
    card = arange.run(s, out=tmp_path / "run", progress=False)
    checks = {c.name: c for c in card.checks}
    assert checks["outputs"].status == "fail" and "NaN or Inf on 32 of 32" in \
        checks["outputs"].message
    assert checks["randomness"].status == "pass"  # NaN == NaN here: not "random"
    assert all(r.unreliable and "NaN" in r.unreliable for r in card.results)


def test_saturated_logits_discredit_the_gradient_rows(tiny_model: Any, tmp_path: Path) -> None:
    """Logits scaled by 1e6: cross-entropy saturates, input gradients vanish; the gradients
    check fails, the white-box rows say they cannot be trusted, and more_steps does not claim
    convergence from two runs that broke nothing."""
    import arange
    from arange.models import save_weights

    model = copy.deepcopy(tiny_model[0])
    last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        last.weight.mul_(1e6)
        last.bias.mul_(1e6)
    weights = tmp_path / "saturated.safetensors"
    save_weights(model, weights)
    s = tiny_scenario(attacks=[{"name": "pgd", "eps": ["2/255"], "params": {"steps": 3}}],
                      evaluation={"checks": {"large_eps": False}})
    s["target"].update(weights=str(weights), samples=32, batch_size=32)
    card = arange.run(s, out=tmp_path / "run", progress=False)
    checks = {c.name: c for c in card.checks}
    assert checks["gradients"].status == "fail"
    pgd = card.row("pgd", 2 / 255)
    assert pgd.unreliable is not None and "gradients check failed" in pgd.unreliable
    more = checks["more_steps"]
    if more.details.get("base_success") == more.details.get("more_success") == 0:
        assert more.status == "warn" and "says nothing about convergence" in more.message
    assert "unreliable: input gradients are masked" in __import__(
        "arange.classification.scorecard", fromlist=["format_summary"]).format_summary(card)
