"""The hash_matching runner end to end on a few tiny images: verification by the reference
library on the saved PNGs, resume, the scorecard schema, and the datasets."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from PIL import Image

import arange
from arange.attacks.base import Attack, AttackResult
from arange.baseline import describe
from arange.cli import main
from arange.core.scenario import scenario_from_dict
from arange.errors import DataError
from arange.gates import gate, load_reference, task_metrics
from arange.hashing import runner as hash_runner
from arange.hashing.data import load_images
from arange.hashing.fast import fast_hash
from arange.hashing.reference import (
    hamming_matrix,
    pairwise_distances,
    read_png,
    reference_bits,
    reference_bits_batch,
)
from arange.hashing.scenario import HASH_METRICS
from arange.hashing.scorecard import HashScorecard, load_hash_scorecard
from arange.registry import ATTACKS

TINY: dict[str, Any] = {
    "name": "hash_tiny", "task": "hash_matching", "seed": 0, "device": "cpu",
    "target": {"hash": "phash", "thresholds": [4, 8],
               "dataset": {"name": "embedded", "options": {"image_size": 64, "limit": 6}},
               "batch_size": 6},
    "attacks": [
        {"name": "nes", "eps": "32/255", "params": {"max_queries": 150}},
        {"name": "pgd", "eps": "8/255",
         "params": {"steps": 15, "rel_stepsize": 0.125, "random_start": False}},
    ],
    "evaluation": {"transfer": {"phash": 4, "dhash": 10, "pdq": 31},
                   "query_budgets": [50, 150]},
}


@pytest.fixture(scope="module")
def tiny_hash_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[HashScorecard, Path]:
    out = tmp_path_factory.mktemp("hash-run")
    card = arange.run(copy.deepcopy(TINY), out=out, progress=False)
    assert isinstance(card, HashScorecard)
    return card, out


def test_scorecard_schema_and_files(tiny_hash_run: tuple[HashScorecard, Path]) -> None:
    card, out = tiny_hash_run
    loaded = load_hash_scorecard(out / "scorecard.json")
    assert loaded == card
    raw = json.loads((out / "scorecard.json").read_text())
    assert raw["schema_version"] == 1 and raw["task"] == "hash_matching"
    assert set(raw) >= {"schema_version", "task", "name", "provenance", "checks", "files",
                        "matcher", "agreement", "detection", "fpr", "results", "transfer",
                        "sweep"}
    assert card.matcher.bits == 64 and card.matcher.database_size == 6
    assert card.provenance.reference.startswith("imagehash")
    assert [(r.threshold, r.attack) for r in card.results] == [
        (4, "nes"), (4, "pgd"), (8, "nes"), (8, "pgd")]
    assert {c.name for c in card.checks} >= {"clean_detection", "fast_hash_agreement",
                                             "verification", "budget", "query_budget"}
    for name in ("samples", "images", "originals"):
        assert (out / card.files[name]).exists()
    assert all(d.rate == 1.0 for d in card.detection)
    assert card.check("clean_detection").status == "pass"
    from arange.hashing.fast import fast_hash_backend
    agreement = card.check("fast_hash_agreement")
    assert agreement.details["backend"] == fast_hash_backend("cpu")
    assert f"({fast_hash_backend('cpu')})" in agreement.message
    fpr = card.fpr[0]
    assert fpr.hash == "phash" and len(fpr.points) == 65 and fpr.n_pairs == 15
    assert [p.fpr for p in fpr.points] == sorted(p.fpr for p in fpr.points)
    assert {a.hash for a in card.agreement} == {"average_hash", "dhash", "phash", "pdq"}
    assert [s.threshold for s in card.sweep] == [4, 8]


def test_results_are_verified_on_the_saved_pngs(tiny_hash_run: tuple[HashScorecard, Path]
                                                ) -> None:
    card, out = tiny_hash_run
    samples = json.loads((out / "samples.json").read_text())
    data = load_images("embedded", image_size=64, limit=6)
    db = reference_bits_batch("phash", np.asarray(data.images))
    assert sum(r.successes for r in card.results) > 0
    for row in card.results:
        job = samples["jobs"][row.job_id]
        assert sum(job["success"]) == row.successes
        assert row.rejected == 0 and row.successes <= row.n
        lo, hi = row.rate_ci
        assert lo <= row.rate <= hi
        for i, ok in enumerate(job["success"]):
            if not ok:
                continue
            img = read_png(out / job["png"][i])
            d = hamming_matrix(reference_bits("phash", img)[None], db).min()
            assert d > row.threshold  # evasion: no database entry within the threshold
            diff = np.abs(img.astype(int) - np.asarray(data.images[i]).astype(int)).max()
            assert diff <= round(row.eps * 255)
        if row.kind == "black-box":
            assert row.max_queries == 150 and (row.queries_max or 0) <= 150
            assert [q.queries for q in row.by_query] == [50, 150]
            assert row.by_query[-1].successes == row.successes
        else:
            assert row.queries_median is None and not row.by_query
        assert row.distortion["ssim"].n == row.successes
        assert len(job["ssim"]) == row.n and len(job["psnr"]) == row.n
    assert card.transfer and all(t.n_source_success == r.successes
                                 for t, r in zip(card.transfer, card.results, strict=True))


def test_rerun_resumes_finished_jobs(tiny_hash_run: tuple[HashScorecard, Path]) -> None:
    card, out = tiny_hash_run
    again = arange.run(copy.deepcopy(TINY), out=out, progress=False)
    assert again.provenance.jobs_reused == len(card.results)
    assert [r.successes for r in again.results] == [r.successes for r in card.results]


def _gated_copy(out: Path, folder: Path, gates: list[dict[str, Any]]) -> Path:
    """The tiny run's scorecard with ``gates`` in its scenario (validated as a scenario's)."""
    s = scenario_from_dict({**copy.deepcopy(TINY), "gates": gates})
    card = json.loads((out / "scorecard.json").read_text())
    card["provenance"]["scenario"] = s.model_dump(mode="json")
    folder.mkdir(exist_ok=True)
    path = folder / "scorecard.json"
    path.write_text(json.dumps(card))
    return path


def test_gates_read_hash_scorecards(tiny_hash_run: tuple[HashScorecard, Path], tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    card, out = tiny_hash_run
    assert set(task_metrics("hash_matching")) == set(HASH_METRICS)
    nes4 = card.row("nes", 32 / 255, 4)
    fpr4 = card.fpr[0].points[4]
    path = _gated_copy(out, tmp_path / "pass", [
        {"metric": "evasion_rate", "attack": "nes", "eps": "32/255", "threshold": 4,
         "max": nes4.rate},
        {"metric": "evasion_rate", "max": 1.0},
        {"metric": "clean_detection_rate", "min": 1.0},
        {"metric": "false_positive_rate", "threshold": 4, "max": fpr4.fpr}])
    report = gate(path)
    assert report.passed
    checks = [[(c.row, c.value, c.n) for c in r.checks] for r in report.rules]
    assert checks[0] == [("nes / 32/255 / threshold 4", nes4.rate, nes4.n)]
    assert sorted(checks[1]) == sorted((f"{r.attack} / {r.eps_label} / threshold {r.threshold}",
                                        r.rate, r.n) for r in card.results)
    assert checks[2] == [(f"threshold {d.threshold}", d.rate, d.n) for d in card.detection]
    assert checks[3] == [("threshold 4", fpr4.fpr, card.fpr[0].n_pairs)]
    assert main(["gate", str(path)]) == 0
    assert "gate hash_tiny: PASSED (4 of 4 rules passed" in capsys.readouterr().out
    assert "false_positive_rate" in describe(load_reference(path))

    # a ceiling below the measured evasion rate fails the gate (exit 1)
    best = max(card.results, key=lambda r: r.rate)
    assert best.rate > 0
    path = _gated_copy(out, tmp_path / "fail", [
        {"metric": "evasion_rate", "attack": best.attack, "threshold": best.threshold,
         "max": best.rate / 2},
        {"metric": "false_positive_rate", "max": 1.0}])
    assert main(["gate", str(path)]) == 1
    text = capsys.readouterr().out
    assert "gate hash_tiny: FAILED (1 of 2 rules passed" in text
    assert f"[FAIL] gates[0] evasion_rate (attack={best.attack}, threshold={best.threshold})" \
        in text

    # collision_rate reads only collision rows: the tiny run has none, so the rule is an error
    raw = json.loads(path.read_text())
    raw["provenance"]["scenario"]["gates"] = [{"metric": "collision_rate", "max": 0.5}]
    path.write_text(json.dumps(raw))
    assert main(["gate", str(path)]) == 2
    assert "has no results row for collision_rate" in capsys.readouterr().err


class _Unchanged(Attack):
    """Returns the clean images and spends one query: it can never evade anything."""

    kind: ClassVar[str] = "black-box"
    tasks: ClassVar[tuple[str, ...]] = ("hash_matching",)

    def __init__(self, max_queries: int = 1):
        self.max_queries = max_queries

    def run(self, model: Any, x: torch.Tensor, y: torch.Tensor, threat: Any, objective: Any,
            generator: Any = None) -> AttackResult:
        return AttackResult(x.clone(), queries=torch.ones(x.shape[0], dtype=torch.long))


def test_forged_success_rejected_by_reference_is_not_counted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fast path that claims every unmodified image evades: the reference library re-hashes
    the saved PNGs, rejects every claim, and nothing is counted."""
    ATTACKS.add("unchanged", _Unchanged, "test only")
    try:
        def lying(name: str, params: dict[str, Any], x: torch.Tensor) -> torch.Tensor:
            return ~fast_hash(name, x)  # every bit flipped: "evaded"

        monkeypatch.setattr(hash_runner, "fast_bits", lying)
        raw = copy.deepcopy(TINY)
        raw["attacks"] = [{"name": "unchanged", "eps": "8/255"}]
        raw["target"]["thresholds"] = [4]
        card = arange.run(scenario_from_dict(raw), out=tmp_path, progress=False)
    finally:
        ATTACKS.remove("unchanged")
    row = card.results[0]
    assert row.claimed == row.n == 6
    assert row.successes == 0 and row.rate == 0.0 and row.rejected == 6
    assert card.check("verification").status == "warn"
    samples = json.loads((tmp_path / "samples.json").read_text())
    pngs = samples["jobs"][row.job_id]["png"]
    assert all(p is not None and (tmp_path / p).is_file() for p in pngs)  # checked on disk


def test_embedded_images_are_distinct_and_deterministic() -> None:
    data = load_images("embedded")
    assert len(data) >= 100 and len(set(data.ids)) == len(data)
    assert data.images.shape[1:] == (128, 128, 3) and data.images.dtype == np.uint8
    arr = np.asarray(data.images)
    assert pairwise_distances(reference_bits_batch("phash", arr)).min() > 4
    assert pairwise_distances(reference_bits_batch("pdq", arr)).min() > 16
    small = load_images("embedded", image_size=64, limit=5)
    assert len(small) == 5 and small.ids == data.ids[:5]
    assert load_images("embedded", image_size=64, limit=5).fingerprint() == small.fingerprint()


def test_imagefolder(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    (tmp_path / "sub").mkdir()
    for i, (h, w) in enumerate([(40, 60), (50, 50), (70, 30)]):
        folder = tmp_path / "sub" if i == 2 else tmp_path
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    data = load_images("imagefolder", root=str(tmp_path), image_size=32)
    assert data.ids == ["0.png", "1.png", "sub/2.png"]
    assert data.images.shape == (3, 32, 32, 3)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="holds 0 image file"):
        load_images("imagefolder", root=str(empty))


def test_hash_without_fast_path_is_attacked_through_the_reference(tmp_path: Path) -> None:
    raw = copy.deepcopy(TINY)
    raw["target"].update({"hash": "whash", "thresholds": [6]})
    raw["target"]["dataset"]["options"]["limit"] = 3
    raw["attacks"] = [{"name": "nes", "eps": "32/255", "params": {"max_queries": 25,
                                                                 "samples": 3}}]
    raw["evaluation"] = {"transfer": {"whash": 6, "phash": 10}}
    card = arange.run(scenario_from_dict(raw), out=tmp_path, progress=False)
    assert card.matcher.fast_path is False and card.matcher.bits == 64
    assert card.check("fast_hash_agreement").status == "skip"
    row = card.results[0]
    assert row.n == 3 and (row.queries_max or 0) <= 25
    assert row.rejected == 0
