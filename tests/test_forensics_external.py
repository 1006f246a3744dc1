"""The forensics range on a user's forgery set: CASIA-style folders, IMDL-BenCo JSON lists and
manifests built from the bundled photographs with real inpainting and copy-move forgeries, a
detector the range trained brought back as TorchScript and ONNX files, and metrics equal to
scikit-learn's on the same predictions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image
from sklearn import metrics as skm

from arange.cli import main
from arange.forensics.external import evaluate

from .forgery_sets import build
from .test_forensics import TINY

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnx2torch")


def test_metrics_equal_scikit_learn() -> None:
    rng = np.random.default_rng(0)
    maps, masks, scores, sources = [], [], [], []
    for k in range(12):
        h, w = int(rng.integers(8, 20)), int(rng.integers(8, 20))
        truth = rng.random((h, w)) < 0.3
        truth[0, 0], truth[-1, -1] = True, False  # both classes present
        noise = rng.random((h, w)).astype(np.float32)
        maps.append(np.clip(0.6 * truth + 0.5 * noise, 0, 1).astype(np.float32))
        masks.append(truth if k < 9 else None)
        scores.append(float(rng.random()))
        sources.append("a" if k % 2 else "b")
    got = evaluate(maps, masks, scores, sources)
    tampered = [k for k in range(12) if masks[k] is not None]
    f1 = [skm.f1_score(masks[k].ravel(), (maps[k] >= 0.5).ravel()) for k in tampered]
    iou = [skm.jaccard_score(masks[k].ravel(), (maps[k] >= 0.5).ravel()) for k in tampered]
    auc = [skm.roc_auc_score(masks[k].ravel(), maps[k].ravel()) for k in tampered]
    labels = np.array([m is not None for m in masks])
    s = np.array(scores)
    assert got["pixel_f1"] == pytest.approx(np.mean(f1), abs=1e-5)
    assert got["iou"] == pytest.approx(np.mean(iou), abs=1e-5)
    assert got["pixel_auc"] == pytest.approx(np.mean(auc), abs=1e-5)
    assert got["image_auc"] == pytest.approx(skm.roc_auc_score(labels, s), abs=1e-5)
    assert got["image_f1"] == pytest.approx(skm.f1_score(labels, s >= 0.5), abs=1e-5)
    assert got["image_accuracy"] == pytest.approx(skm.accuracy_score(labels, s >= 0.5),
                                                  abs=1e-5)
    best = max(np.mean([skm.f1_score(masks[k].ravel(), (maps[k] >= t).ravel())
                        for k in tampered]) for t in np.linspace(0.02, 0.98, 49))
    assert got["pixel_f1_best"] == pytest.approx(best, abs=1e-5)
    for src in ("a", "b"):
        idx = [i for i, k in enumerate(tampered) if sources[k] == src]
        assert got["per_source"][src]["pixel_f1"] == pytest.approx(
            np.mean([f1[i] for i in idx]), abs=1e-5)


@pytest.fixture(scope="module")
def detectors(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The range's tiny detector, written out by ``arange export`` as TorchScript and ONNX."""
    folder = tmp_path_factory.mktemp("detectors")
    raw = yaml.safe_load(TINY)
    raw["detectors"] = raw["detectors"][:1]
    raw["gates"] = []
    path = folder / "inrange.yaml"
    path.write_text(yaml.safe_dump(raw))
    for fmt, name in (("torchscript", "det.ts"), ("onnx", "det.onnx")):
        assert main(["export", str(path), "--format", fmt, "--out", str(folder / name)]) == 0
    return folder


def _scenario(dataset: dict[str, Any], detectors: Path, target: str = "ts",
              **extra: Any) -> dict[str, Any]:
    return {
        "name": "external", "task": "forgery_localization", "seed": 0, "device": "cpu",
        "target": {"detector": target, "dataset": dataset, "window": 64},
        "detectors": [{"label": "ts", "model": f"torchscript:{detectors / 'det.ts'}"},
                      {"label": "onnx", "model": f"onnx:{detectors / 'det.onnx'}"}],
        "robustness": [{"perturbation": "jpeg", "strengths": [75]},
                       {"perturbation": "blur", "strengths": [5]},
                       {"perturbation": "noise", "strengths": ["4/255"]},
                       {"perturbation": "resize", "strengths": [0.5]}],
        "attacks": [{"name": "pgd", "eps": ["4/255"], "params": {"steps": 3}, "samples": 3,
                     "surrogate": "onnx" if target == "ts" else "ts"}],
        **extra}


def test_casia_folder_end_to_end(detectors: Path, tmp_path: Path) -> None:
    entries = build(tmp_path / "casia")
    raw = _scenario({"name": "casia", "options": {"root": "casia"}}, detectors)
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(raw))
    out = tmp_path / "run"
    assert main(["run", str(path), "--out", str(out), "-q"]) == 0
    card = json.loads((out / "scorecard.json").read_text())
    rows = {(r["detector"], r["condition"]): r for r in card["external"]}
    conditions = {c for d, c in rows if d == "ts"}
    assert {"clean", "jpeg-75", "blur-5", "noise-4/255", "resize-0.5", "pgd-4/255",
            "pgd-4/255+jpeg75", "pgd-4/255+bpda-jpeg75", "transfer_pgd-4/255",
            "transfer_pgd-4/255+jpeg75", "transfer_pgd-4/255+bpda-jpeg75"} <= conditions
    clean = rows[("ts", "clean")]
    assert clean["n_tampered"] == 6 and clean["n_authentic"] == 3
    assert set(clean["per_source"]) == {"copy-move", "splicing"}  # CASIA's Tp_S / Tp_D
    # the row's numbers are the per-image values the side file keeps
    samples = json.loads((out / "samples.json").read_text())
    per = samples["jobs"][clean["job_id"]]
    assert clean["pixel_f1"] == pytest.approx(np.mean(per["pixel_f1"]), abs=1e-4)
    assert len(per["score"]) == 9 and sum(samples["tampered"]) == 6
    # attacks: inside the budget, on the 8-bit grid, crafted where the row says
    white = rows[("ts", "pgd-4/255")]
    transfer = rows[("ts", "transfer_pgd-4/255")]
    assert white["source"] == "ts" and transfer["source"] == "onnx"
    bpda = rows[("ts", "pgd-4/255+bpda-jpeg75")]
    for r in (white, transfer, bpda):
        assert r["perturbation_max"] <= 4 / 255 + 1e-6 and r["off_grid"] == 0
    checks = {c["name"]: c["status"] for c in card["checks"]}
    assert checks["budget"] == "pass" and checks["masks"] == "pass"
    assert checks["deployed_runtime (onnx)"] == "pass"
    assert len(entries) == 9


def test_imdl_json_and_manifest_give_the_same_clean_rows(detectors: Path,
                                                         tmp_path: Path) -> None:
    build(tmp_path / "set")
    cards = {}
    for name, opts in (("imdl_json", {"path": "set/test.json"}),
                       ("forgery_manifest", {"path": "set/manifest.csv"})):
        raw = _scenario({"name": name, "options": opts}, detectors, target="onnx",
                        robustness=[], attacks=[])
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(raw))
        out = tmp_path / name
        assert main(["run", str(path), "--out", str(out), "-q"]) == 0
        cards[name] = json.loads((out / "scorecard.json").read_text())
    a = {r["condition"] + r["detector"]: r for r in cards["imdl_json"]["external"]}
    b = {r["condition"] + r["detector"]: r for r in cards["forgery_manifest"]["external"]}
    for k in a:
        for m in ("pixel_f1", "pixel_auc", "iou", "image_auc", "image_f1", "image_accuracy"):
            assert a[k][m] == b[k][m], (k, m)
    # the manifest names sources; the JSON list knows only tampered vs authentic
    assert set(b["cleanonnx"]["per_source"]) == {"inpainting", "copy-move"}
    assert set(a["cleanonnx"]["per_source"]) == {"tampered"}


def test_mask_size_mismatch_is_named_or_resized(detectors: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    build(tmp_path / "casia", tampered=2, authentic=1)
    gt = min((tmp_path / "casia" / "Gt").iterdir())
    Image.open(gt).resize((50, 40)).save(gt)
    raw = _scenario({"name": "casia", "options": {"root": "casia"}}, detectors,
                    robustness=[], attacks=[])
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["run", str(path), "--out", str(tmp_path / "run"), "-q"]) == 2
    err = capsys.readouterr().err
    assert gt.name in err and "resize_masks" in err
    raw["target"]["dataset"]["options"]["resize_masks"] = True
    path.write_text(yaml.safe_dump(raw))
    assert main(["run", str(path), "--out", str(tmp_path / "run"), "-q"]) == 0


@pytest.mark.parametrize(("change", "words"), [
    ({"target": {"dataset": {"name": "casia", "options": {"root": "nowhere"}}}},
     ["target.dataset.options.root", "does not exist"]),
    ({"detectors": [{"label": "residual"}]}, ["detectors[0].model", "arange export"]),
    ({"inpainters": [{"name": "telea"}]}, ["inpainters", "remove"]),
    ({"robustness": [{"perturbation": "blur", "strengths": [4]}]},
     ["robustness[0].strengths[0]", "odd"]),
])
def test_bad_external_scenarios(detectors: Path, tmp_path: Path,
                                capsys: pytest.CaptureFixture[str], change: dict[str, Any],
                                words: list[str]) -> None:
    build(tmp_path / "casia", tampered=2, authentic=1)
    raw = _scenario({"name": "casia", "options": {"root": "casia"}}, detectors,
                    robustness=[], attacks=[])
    for k, v in change.items():
        raw[k] = {**raw[k], **v} if k == "target" else v
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["run", str(path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and all(w in err for w in words), err
    assert not (tmp_path / "run").exists()
