"""Bringing your own forgery detector: the range's detector exported as TorchScript, torch.export
and ONNX by ``arange export`` and loaded back as a user's detector scores exactly like the
original; ONNX is scored by onnxruntime with the twin's agreement reported; bad detector
entries exit 2 naming the field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from arange.cli import main

from .test_forensics import TINY

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnx2torch")

METRICS = ("auc", "f1", "iou", "f1_best", "image_auc", "detection_rate", "mask_score")


def _base() -> dict[str, Any]:
    raw = yaml.safe_load(TINY)
    raw["detectors"] = raw["detectors"][:1]     # residual, width 4
    raw["attacks"] = [{"name": "pgd", "eps": ["4/255"], "params": {"steps": 2}, "samples": 4,
                       "transfer": False}]
    raw["gates"] = []
    return raw


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    folder = tmp_path_factory.mktemp("exported")
    path = folder / "inrange.yaml"
    path.write_text(yaml.safe_dump(_base()))
    for fmt, name in (("torchscript", "det.ts"), ("onnx", "det.onnx"), ("export", "det.pt2")):
        assert main(["export", str(path), "--format", fmt, "--out", str(folder / name)]) == 0
    raw = _base()
    raw["detectors"] += [
        {"label": "ts", "model": "torchscript:det.ts"},
        {"label": "pt2", "model": "export:det.pt2"},
        {"label": "onnx", "model": "onnx:det.onnx"}]
    scen = folder / "brought.yaml"
    scen.write_text(yaml.safe_dump(raw))
    out = folder / "run"
    assert main(["run", str(scen), "--out", str(out), "-q"]) == 0
    return out, json.loads((out / "scorecard.json").read_text())


def test_exported_detectors_score_like_the_original(exported: tuple[Path, dict[str, Any]]
                                                    ) -> None:
    _, card = exported
    rows = {(r["detector"], r["inpainter"]): r for r in card["results"]}
    inpainters = {r["inpainter"] for r in card["results"]}
    for inp in inpainters:
        base = rows[("residual", inp)]
        for det in ("ts", "pt2"):  # the same float computation: identical metrics
            for m in METRICS:
                assert rows[(det, inp)][m] == base[m], (det, inp, m)
        for m in METRICS:  # onnxruntime: equal up to float rounding of the maps
            assert rows[("onnx", inp)][m] == pytest.approx(base[m], abs=0.01), (inp, m)
    untouched = {r["detector"]: r for r in card["untouched"]}
    assert untouched["ts"]["image_fpr"] == untouched["residual"]["image_fpr"]


def test_onnx_detector_reports_deployed_agreement(exported: tuple[Path, dict[str, Any]]
                                                  ) -> None:
    _, card = exported
    infos = {d["label"]: d for d in card["detectors"]}
    onnx = infos["onnx"]
    assert onnx["source"].startswith("onnx:") and onnx["name"] == "onnx"
    assert onnx["deployed_agreement"] >= 0.99
    assert infos["ts"]["deployed_agreement"] is None   # no separate runtime
    check = next(c for c in card["checks"] if c["name"] == "deployed_runtime (onnx)")
    assert check["status"] == "pass" and "onnxruntime" in check["message"]


def test_brought_target_under_attack_with_a_surrogate(exported: tuple[Path, dict[str, Any]],
                                                      tmp_path: Path) -> None:
    out, _ = exported
    folder = out.parent
    raw = _base()
    raw["detectors"] += [{"label": "onnx", "model": f"onnx:{folder / 'det.onnx'}"}]
    raw["target"]["detector"] = "onnx"
    raw["attacks"][0].update({"transfer": True, "surrogate": "residual"})
    scen = tmp_path / "attack.yaml"
    scen.write_text(yaml.safe_dump(raw))
    assert main(["run", str(scen), "--out", str(tmp_path / "run"), "-q"]) == 0
    card = json.loads((tmp_path / "run" / "scorecard.json").read_text())
    rows = [r for r in card["robustness"] if r["kind"] != "benign" and r["strength"] > 0]
    kinds = {(r["kind"], r["source"]) for r in rows}
    assert ("white-box", "onnx") in kinds and ("transfer", "residual") in kinds
    assert all(r["detector"] == "onnx" for r in rows)
    assert all(r["budget_violations"] == 0 for r in rows)


@pytest.mark.parametrize(("entry", "words"), [
    ({"label": "x", "model": "onnx:missing.onnx"}, ["detectors[1].model", "does not exist"]),
    ({"label": "x", "model": "torchvision:resnet18"}, ["detectors[1].model", "is a file"]),
    ({"label": "x", "model": "torchscript:det.ts", "training": {"epochs": 2}},
     ["detectors[1].training", "not trained"]),
    ({"label": "x", "model": "python:net.py:Net"}, ["detectors[1].weights", "weights file"]),
    ({"label": "x", "output": "probabilities"}, ["detectors[1].output", "bring"]),
])
def test_bad_detector_entries(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                              entry: dict[str, Any], words: list[str]) -> None:
    (tmp_path / "det.ts").write_bytes(b"not really")
    (tmp_path / "net.py").write_text("class Net: pass\n")
    raw = _base()
    raw["detectors"].append(entry)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["run", str(path), "--out", str(tmp_path / "run"), "--trust-code"]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and all(w in err for w in words), err
    assert not (tmp_path / "run").exists()


def test_brought_target_needs_a_surrogate_for_transfer(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    (tmp_path / "det.ts").write_bytes(b"x")
    raw = _base()
    raw["detectors"].append({"label": "mine", "model": "torchscript:det.ts"})
    raw["target"]["detector"] = "mine"
    raw["attacks"][0]["transfer"] = True
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["run", str(path), "--out", str(tmp_path / "run")]) == 2
    assert "attacks[0].surrogate" in capsys.readouterr().err


NET_PY = '''
import torch
from torch import nn


class TinyDetector(nn.Module):
    """A user's detector: probabilities at half resolution (an output stride of 2)."""

    def __init__(self, width=4):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(width, 1, 3, stride=2, padding=1))

    def forward(self, x):
        return torch.sigmoid(self.body(x))
'''


def test_python_class_detector_needs_trust_and_runs_with_it(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]
                                                           ) -> None:
    import importlib.util

    import torch
    from safetensors.torch import save_file

    (tmp_path / "net.py").write_text(NET_PY)
    spec = importlib.util.spec_from_file_location("user_net", tmp_path / "net.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    torch.manual_seed(0)
    save_file(mod.TinyDetector(width=4).state_dict(), str(tmp_path / "net.safetensors"))
    raw = _base()
    raw["detectors"].append({"label": "mine", "model": "python:net.py:TinyDetector",
                             "weights": "net.safetensors", "params": {"width": 4},
                             "output": "probabilities", "image_score": "max",
                             "preprocessing": {"mean": [0.5], "std": [0.25]}})
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(raw))
    out = tmp_path / "run"
    assert main(["run", str(path), "--out", str(out), "-q"]) == 2
    assert "--trust-code" in capsys.readouterr().err and not out.exists()
    assert main(["run", str(path), "--out", str(out), "-q", "--trust-code"]) == 0
    card = json.loads((out / "scorecard.json").read_text())
    mine = [r for r in card["results"] if r["detector"] == "mine"]
    assert mine and all(0 <= r["auc"] <= 1 for r in mine)
    info = next(d for d in card["detectors"] if d["label"] == "mine")
    assert info["name"] == "python" and info["source"].startswith("python:")
