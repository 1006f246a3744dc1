"""False-positive rates over every pair of a benign image folder (evaluation.corpus): the
blocked popcount count against brute force, the corpus run end to end against imagehash on the
files, resume, Ray, and bad settings."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import imagehash
import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from arange.cli import main
from arange.hashing.corpus import pack, pair_histogram, sampled_histogram
from arange.hashing.data import load_images
from arange.hashing.reference import pairwise_distances

from .test_resume import _scrub


@settings(max_examples=25, deadline=None)
@given(n=st.integers(2, 90), nbits=st.sampled_from([1, 14, 63, 64, 65, 96, 256]),
       block=st.integers(1, 40), chunk=st.integers(1, 50), seed=st.integers(0, 2**16))
def test_pair_histogram_is_every_pair(n: int, nbits: int, block: int, chunk: int,
                                      seed: int) -> None:
    rng = np.random.default_rng(seed)
    bits = rng.random((n, nbits)) < rng.random()
    if n > 3:
        bits[1] = bits[0]  # a duplicate: distance 0
    hist = pair_histogram(pack(bits), nbits, threads=2, block=block, chunk=chunk)
    want = np.bincount(pairwise_distances(bits), minlength=nbits + 1)
    assert np.array_equal(hist, want)


def test_sampled_pairs_estimate_the_distribution() -> None:
    rng = np.random.default_rng(0)
    bits = rng.random((400, 64)) < 0.5
    bits[:40] = bits[0]  # a cluster of near-copies: 780 of the 79,800 pairs at distance 0
    exact = np.bincount(pairwise_distances(bits), minlength=65)
    sample = sampled_histogram(pack(bits), 64, 200_000, seed=1)
    assert sample.sum() == 200_000
    p_exact = exact[0] / exact.sum()
    p_sample = sample[0] / sample.sum()
    assert abs(p_sample - p_exact) < 5 * np.sqrt(p_exact * (1 - p_exact) / 200_000)


# ---------------------------------------------------------------------------- end to end

def _corpus(folder: Path) -> list[Path]:
    """40 PNGs of the embedded photographs in two sub-folders, one exact copy, one JPEG, and a
    file that is not an image."""
    images = load_images("embedded", image_size=48).images[:38]
    files = []
    for i, im in enumerate(images):
        sub = folder / ("a" if i % 2 else "b")
        sub.mkdir(parents=True, exist_ok=True)
        files.append(sub / f"{i:03d}.png")
        Image.fromarray(im).save(files[-1])
    files.append(folder / "a" / "copy.png")
    Image.fromarray(images[5]).save(files[-1])
    files.append(folder / "b" / "photo.jpg")
    Image.fromarray(images[7]).resize((96, 80)).save(files[-1], quality=90)
    (folder / "b" / "broken.png").write_bytes(b"\x89PNG not really")
    return files


SCENARIO: dict[str, Any] = {
    "name": "corpus", "task": "hash_matching", "seed": 0, "device": "cpu",
    "target": {"hash": "phash", "thresholds": [4, 10],
               "dataset": {"name": "embedded", "options": {"image_size": 48, "limit": 3}}},
    "attacks": [{"name": "nes", "eps": "8/255", "params": {"max_queries": 10}}],
    "evaluation": {"transfer": {"phash": 10}, "corpus": {"root": "benign", "shard_size": 16}},
    "gates": [{"metric": "corpus_false_positive_rate", "threshold": 10, "max": 0.5}],
}


@pytest.fixture
def corpus_scenario(tmp_path: Path) -> tuple[Path, list[Path]]:
    files = _corpus(tmp_path / "benign")
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(SCENARIO))
    return path, files


def test_corpus_fpr_is_imagehash_on_every_pair(corpus_scenario: tuple[Path, list[Path]],
                                               tmp_path: Path) -> None:
    path, files = corpus_scenario
    out = tmp_path / "run"
    assert main(["run", str(path), "--out", str(out), "-q", "--gate"]) == 0
    card = json.loads((out / "scorecard.json").read_text())
    c = card["corpus"]
    # the reference, computed here from the files as they are on disk
    hashes = [imagehash.phash(Image.open(f).convert("RGB")) for f in files]
    dists = np.array([hashes[i] - hashes[j] for i in range(len(hashes))
                      for j in range(i + 1, len(hashes))])
    assert c["n_files"] == 41 and c["n_images"] == 40 and c["unreadable"] == 1
    assert c["unreadable_files"] == [os.path.join("b", "broken.png")]
    assert c["exhaustive"] and c["n_pairs"] == 40 * 39 // 2 == len(dists)
    for p in c["points"]:
        assert p["false_positives"] == int((dists <= p["threshold"]).sum())
    assert c["points"][0]["false_positives"] >= 1  # the exact copy
    assert c["min_distance"] == 0
    check = next(ch for ch in card["checks"] if ch["name"] == "corpus")
    assert check["status"] == "warn" and "broken.png" in check["message"]
    assert sorted(p.name for p in (out / "corpus").iterdir()) == \
        ["00000.npy", "00001.npy", "00002.npy"]

    # a second run hashes nothing again; a changed file re-hashes (its shard's key changes)
    assert main(["run", str(path), "--out", str(out), "-q"]) == 0
    again = json.loads((out / "scorecard.json").read_text())
    assert again["provenance"]["jobs_reused"] == len(list((out / "jobs").glob("*.json")))
    assert _scrub(again)["corpus"] == _scrub(card)["corpus"]
    Image.fromarray(np.zeros((48, 48, 3), np.uint8)).save(files[0])
    assert main(["run", str(path), "--out", str(out), "-q"]) == 0
    changed = json.loads((out / "scorecard.json").read_text())
    assert changed["corpus"]["fingerprint"] != c["fingerprint"]
    assert changed["provenance"]["jobs_reused"] == 2  # the two attack jobs, not the shards


def test_sampled_corpus_states_its_pairs(corpus_scenario: tuple[Path, list[Path]],
                                         tmp_path: Path) -> None:
    path, _ = corpus_scenario
    raw = copy.deepcopy(SCENARIO)
    raw["evaluation"]["corpus"]["pairs"] = 500
    path.write_text(yaml.safe_dump(raw))
    out = tmp_path / "run"
    assert main(["run", str(path), "--out", str(out), "-q"]) == 0
    c = json.loads((out / "scorecard.json").read_text())["corpus"]
    assert not c["exhaustive"] and c["n_pairs"] == 500
    lo, hi = c["points"][10]["fpr_ci"]
    assert lo <= c["points"][10]["fpr"] <= hi and hi > 0


def test_corpus_on_ray_equals_local(corpus_scenario: tuple[Path, list[Path]],
                                    tmp_path: Path) -> None:
    pytest.importorskip("ray")
    path, _ = corpus_scenario
    cards = {}
    for executor in ("local", "ray"):
        out = tmp_path / executor
        assert main(["run", str(path), "--out", str(out), "-q", "--executor", executor]) == 0
        cards[executor] = json.loads((out / "scorecard.json").read_text())
    assert _scrub(cards["ray"])["corpus"] == _scrub(cards["local"])["corpus"]
    for name in ("00000.npy", "00001.npy", "00002.npy"):
        assert (tmp_path / "ray" / "corpus" / name).read_bytes() == \
            (tmp_path / "local" / "corpus" / name).read_bytes()


@pytest.mark.parametrize(("change", "words"), [
    ({"evaluation": {"corpus": {"root": "nowhere"}}},
     ["evaluation.corpus.root", "does not exist"]),
    ({"evaluation": {"corpus": {"root": "benign", "pairs": 0}}},
     ["evaluation.corpus.pairs"]),
    ({"evaluation": {"transfer": {"phash": 10}}},
     ["gates[0].metric", "needs evaluation.corpus"]),
])
def test_bad_corpus_settings(corpus_scenario: tuple[Path, list[Path]], tmp_path: Path,
                             capsys: pytest.CaptureFixture[str], change: dict[str, Any],
                             words: list[str]) -> None:
    path, _ = corpus_scenario
    raw = {**copy.deepcopy(SCENARIO), **change}
    path.write_text(yaml.safe_dump(raw))
    assert main(["run", str(path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and all(w in err for w in words), err
    assert not (tmp_path / "run").exists()
