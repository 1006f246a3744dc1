"""The forensics range: masks, inpainters, detector shapes, metrics on hand-computed cases, and a
tiny end-to-end run through the CLI (scorecard, dashboard reader, resume)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from arange.cli import main
from arange.forensics import metrics as M
from arange.forensics.data import load_split
from arange.forensics.detector import NoiseResidualNet
from arange.forensics.inpainters import INPAINTERS, PrepareContext, inpaint
from arange.forensics.masks import box_mask, brush_mask, make_masks

# ---------------------------------------------------------------------------- masks


def test_mask_area_statistics() -> None:
    rng = np.random.default_rng(0)
    masks, kinds = make_masks(300, 64, 64, rng)
    area = masks.mean(axis=(1, 2))
    assert area.min() >= 0.05 and area.max() <= 0.40
    assert kinds[:4] == ["brush", "box", "brush", "box"]
    for kind in ("brush", "box"):
        a = area[[k == kind for k in kinds]]
        # targets are uniform on [0.05, 0.40]: the mean sits near the middle, the spread is wide
        assert 0.17 < a.mean() < 0.30, (kind, a.mean())
        assert a.std() > 0.06, (kind, a.std())
    # boxes are rectangles; brush strokes are not
    def bbox_fill(m: np.ndarray) -> float:
        ys, xs = np.nonzero(m)
        return m.sum() / ((ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1))
    fills = np.array([bbox_fill(m) for m in masks])
    box = np.array([k == "box" for k in kinds])
    assert np.all(fills[box] == 1.0)
    assert np.mean(fills[~box] < 0.95) > 0.9


def test_masks_are_deterministic_and_respect_other_ranges() -> None:
    a = brush_mask(48, 48, np.random.default_rng(3), 0.1, 0.2)
    b = brush_mask(48, 48, np.random.default_rng(3), 0.1, 0.2)
    assert np.array_equal(a, b)
    assert 0.1 <= a.mean() <= 0.2
    c = box_mask(32, 40, np.random.default_rng(1), 0.3, 0.35)
    assert 0.3 <= c.mean() <= 0.35


# ---------------------------------------------------------------------------- inpainters


@pytest.fixture(scope="module")
def split() -> Any:
    return load_split("embedded", {"image_size": 64, "limit": 16}, 32, 0.25, 8, 0)


def test_split_keeps_sources_apart(split: Any) -> None:
    train_src = {i.split(":")[0] for i in split.train_ids}
    test_src = {i.split(":")[0] for i in split.test_ids}
    assert train_src and test_src and not train_src & test_src
    assert split.test.shape == (8, 32, 32, 3) and split.test.dtype == np.uint8


@pytest.mark.parametrize("name", ["telea", "navier_stokes", "biharmonic", "gan"])
def test_inpainter_changes_only_inside_the_mask(name: str, split: Any) -> None:
    params = {"width": 4, "epochs": 1, "steps_per_epoch": 2, "batch_size": 4} \
        if name == "gan" else {}
    inp = INPAINTERS.create(name, **params)
    inp.prepare(PrepareContext(split.train, split.fingerprint(), 32, ("brush", "box"), 0.05,
                               0.4, 0, torch.device("cpu"), progress=False))
    masks, _ = make_masks(len(split.test), 32, 32, np.random.default_rng(1))
    forged = inpaint(inp, split.test, masks)
    assert forged.shape == split.test.shape and forged.dtype == np.uint8
    assert np.array_equal(forged[~masks], split.test[~masks])
    changed = (forged != split.test).any(axis=-1)
    assert changed[masks].mean() > 0.2, "the fill should replace most masked pixels"


# ---------------------------------------------------------------------------- detector


@pytest.mark.parametrize("residual_stem", [True, False])
@pytest.mark.parametrize("size", [32, 48])
def test_detector_output_shapes(residual_stem: bool, size: int) -> None:
    net = NoiseResidualNet(width=4, residual_stem=residual_stem).eval()
    x = torch.rand(3, 3, size, size)
    logits = net(x)
    assert logits.shape == (3, 1, size, size)
    assert net.image_logit(logits).shape == (3,)
    assert hasattr(net, "srm") is residual_stem and hasattr(net, "bayar") is residual_stem


def test_residual_stem_constraints() -> None:
    net = NoiseResidualNet(width=4)
    w = net.bayar.constrained()
    assert torch.allclose(w[:, :, 2, 2], torch.full_like(w[:, :, 2, 2], -1.0))
    assert torch.allclose(w.sum(dim=(2, 3)), torch.zeros(w.shape[:2]), atol=1e-5)
    # SRM filters are fixed (a buffer, not trained) and blind to flat images
    assert "srm.weight" not in dict(net.named_parameters())
    assert torch.allclose(net.srm(torch.full((1, 3, 16, 16), 0.5))[..., 2:-2, 2:-2],
                          torch.zeros(1, 9, 12, 12), atol=1e-4)


# ---------------------------------------------------------------------------- metrics


def test_auc_hand_computed() -> None:
    # positives 0.35, 0.8; negatives 0.1, 0.4: pairs won 3 of 4
    assert M.roc_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == 0.75
    # a tie between a positive and a negative counts one half
    assert M.roc_auc(np.array([0.5, 0.5, 0.9]), np.array([0, 1, 1])) == 0.75
    assert M.roc_auc(np.array([0.3, 0.2]), np.array([1, 1])) is None
    assert M.image_auc(np.array([0.9, 0.2]), np.array([0.1, 0.5])) == 0.75


def test_f1_iou_hand_computed() -> None:
    truth = np.zeros((4, 4), bool)
    truth[:2, :2] = True                      # 4 pixels
    pred = np.zeros((4, 4), bool)
    pred[:2, 1:3] = True                      # 4 pixels, 2 of them right
    assert M.f1_score(pred, truth) == 0.5     # 2*2 / (4 + 4)
    assert M.iou_score(pred, truth) == pytest.approx(2 / 6)
    assert M.f1_score(np.zeros((2, 2)), np.zeros((2, 2))) == 1.0
    maps = np.stack([pred * 0.9, truth * 0.7]).astype(float)
    per = M.per_image(maps, np.stack([truth, truth]), 0.5)
    assert per["f1"].tolist() == [0.5, 1.0]
    thr, f1 = M.best_threshold_f1(maps, np.stack([truth, truth]))
    # any threshold up to 0.7 keeps both images' predictions; above it image 2 goes blank
    assert f1 == 0.75 and thr <= 0.7


def test_boundary_excluded_f1_hand_computed() -> None:
    truth = np.zeros((8, 8), bool)
    truth[2:6, 2:6] = True
    band = M.boundary_band(truth, 1)
    # the ring just inside and just outside the square's edge: 6x6 - 2x2 = 32 pixels
    assert band.sum() == 32 and not band[3:5, 3:5].any() and not band[0].any()
    # a prediction that misses only the edge pixels is perfect once the edge is excluded
    pred = np.zeros((8, 8), bool)
    pred[3:5, 3:5] = True
    assert M.f1_score(pred, truth) == pytest.approx(2 * 4 / (4 + 16))
    assert M.boundary_excluded_f1(pred, truth, 1) == 1.0


def test_auc_interval_brackets_the_estimate() -> None:
    rng = np.random.default_rng(0)
    masks = rng.random((30, 16, 16)) < 0.3
    maps = np.clip(0.35 * masks + rng.random((30, 16, 16)) * 0.65, 0, 1)
    auc = M.roc_auc(maps, masks)
    lo, hi = M.pixel_auc_ci(maps, masks)
    assert auc is not None and lo <= auc <= hi and hi - lo < 0.1


# ---------------------------------------------------------------------------- end to end

TINY = """\
name: forensics_tiny
task: forgery_localization
seed: 0
device: cpu
target:
  dataset: {name: embedded, options: {image_size: 64, limit: 16}}
  crop: 32
  test_images: 8
  train_patches: 32
  examples: 2
inpainters:
  - {name: telea}
  - {name: biharmonic}
  - {name: gan, params: {width: 4, epochs: 2, steps_per_epoch: 2, batch_size: 4}}
train_inpainters: [telea, gan]
detectors:
  - {label: residual, params: {width: 4}, training: {epochs: 2, batch_size: 16}}
  - {label: rgb_only, params: {width: 4, residual_stem: false}, training: {epochs: 1}}
robustness:
  - {perturbation: jpeg, strengths: [75]}
  - {perturbation: noise, strengths: [2/255]}
attacks:
  - {name: pgd, eps: [4/255], params: {steps: 2}, samples: 4}
gates:
  - {metric: pixel_auc, detector: residual, inpainter: telea, min: 0.0}
  - {metric: image_fpr, detector: rgb_only, max: 1.0}
"""


def test_tiny_end_to_end_through_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                         ) -> None:
    from dashboard import forensics_view
    from dashboard.data import load_store
    from dashboard.images import load_npz

    scenario = tmp_path / "tiny.yaml"
    scenario.write_text(TINY)
    out = tmp_path / "run"
    assert main(["run", str(scenario), "--out", str(out), "-q", "--gate"]) == 0
    text = capsys.readouterr().out
    assert "gate forensics_tiny: PASSED (2 of 2 rules passed" in text
    assert "residual" in text and "biharmonic" in text and "unseen" in text
    card = json.loads((out / "scorecard.json").read_text())
    assert card["task"] == "forgery_localization" and card["schema_version"] == 1
    pairs = {(r["detector"], r["inpainter"], r["seen"]) for r in card["results"]}
    assert pairs == {(d, i, i != "biharmonic") for d in ("residual", "rgb_only")
                     for i in ("telea", "biharmonic", "gan")}
    for r in card["results"]:
        assert 0 <= r["auc"] <= 1 and r["auc_ci"][0] <= r["auc"] <= r["auc_ci"][1]
        assert r["n"] == 8
    rob = {(r["detector"], r["perturbation"], r["eps_label"]) for r in card["robustness"]}
    assert ("residual", "jpeg", "75") in rob and ("rgb_only", "noise", "2/255") in rob
    for pert in ("pgd", "pgd+jpeg75", "transfer_pgd", "transfer_pgd+jpeg75"):
        assert ("residual", pert, "4/255") in rob and ("residual", pert, "0") in rob
    attacked = [r for r in card["robustness"] if r["kind"] != "benign" and r["strength"] > 0]
    assert all(r["linf_max"] <= 4 / 255 + 1e-6 and r["off_grid"] == 0 for r in attacked)
    assert {c["name"]: c["status"] for c in card["checks"]}["paste_inside_mask"] == "pass"
    assert {c["name"]: c["status"] for c in card["checks"]}["budget"] == "pass"
    roles = {d["label"]: d["role"] for d in card["detectors"]}
    assert roles == {"residual": "detector", "rgb_only": "detector",
                     "residual@seed1": "transfer_source"}

    # the dashboard reads it unchanged: rows, curves and the example gallery
    store = load_store(tmp_path)
    run = store.runs[0]
    assert run.ok and run.task == forensics_view.TASK
    rows = forensics_view.inpainter_rows(run.card)
    assert len(rows) == 6 and {r["seen"] for r in rows} == {"seen", "unseen"}
    assert forensics_view.robustness_rows(run.card)
    assert forensics_view.forensics_headline(run.card)["lowest AUC"] is not None
    ex = forensics_view.forensics_examples(load_npz(out / "examples" / "residual__gan.npz"),
                                           "x")
    assert len(ex) == 2 and ex[0]["image"].shape == (3, 32, 32)
    assert ex[0]["score"].shape == ex[0]["mask"].shape == (32, 32)

    # a re-run reuses every job and the cached training
    assert main(["run", str(scenario), "--out", str(out), "-q"]) == 0
    again = json.loads((out / "scorecard.json").read_text())
    assert again["provenance"]["jobs_reused"] > 0
    assert all(d["cached"] for d in again["detectors"])
    assert again["results"] == card["results"]
