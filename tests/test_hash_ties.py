"""The batched hashes on images the project does not ship: flat, gradients, checkerboards,
near-constant, tiny and non-square, other photographs. Where a DCT coefficient ties with the
median the fast path hands the image to the reference library, so its bits are the reference's
on every one of them (torch and native backends); the scorecard says how many were handed over
and reports PDQ's quality."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from arange.cli import main
from arange.hashing import fast
from arange.hashing.data import load_images
from arange.hashing.fast import fast_hashes
from arange.hashing.reference import reference_bits

HASHES = ("phash", "pdq", "average_hash", "dhash")
BACKENDS = ["torch"] + (["native"] if fast._native is not None else [])


def _generated() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    out: dict[str, np.ndarray] = {}
    for s in (8, 9, 12, 16, 31, 33, 64):
        for level in (0, 128, 255):
            out[f"flat{level}-{s}"] = np.full((s, s, 3), level, np.uint8)
        ramp = np.linspace(0, 255, s).astype(np.uint8)
        out[f"gradx{s}"] = np.repeat(np.tile(ramp[None, :], (s, 1))[:, :, None], 3, 2)
        out[f"grady{s}"] = out[f"gradx{s}"].transpose(1, 0, 2).copy()
        diag = ((np.add.outer(np.arange(s), np.arange(s)) * 255) // (2 * s - 2)).astype(np.uint8)
        out[f"diag{s}"] = np.repeat(diag[:, :, None], 3, 2)
        for block in (1, 2, 4):
            cb = (((np.indices((s, s)) // block).sum(0) % 2) * 255).astype(np.uint8)
            out[f"checker{block}-{s}"] = np.repeat(cb[:, :, None], 3, 2)
        near = np.full((s, s, 3), 100, np.uint8)
        near[0, 0] = 101
        out[f"nearconst{s}"] = near
    for h, w in [(8, 20), (20, 8), (17, 50), (50, 17), (100, 37), (9, 128), (128, 11)]:
        out[f"noise{h}x{w}"] = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        ramp = np.linspace(0, 255, w).astype(np.uint8)
        out[f"ramp{h}x{w}"] = np.repeat(np.tile(ramp[None, :], (h, 1))[:, :, None], 3, 2)
    from skimage import data
    for name in ("astronaut", "camera", "coffee", "chelsea", "rocket", "coins", "moon", "page",
                 "text", "horse", "checkerboard", "clock", "grass", "gravel", "brick"):
        a = getattr(data, name)()  # bundled with scikit-image (no download)
        a = (a * 255).astype(np.uint8) if a.dtype == bool else a.astype(np.uint8)
        a = np.repeat(a[:, :, None], 3, 2) if a.ndim == 2 else a[:, :, :3]
        out[name] = np.ascontiguousarray(a)
        out[f"{name}-crop"] = np.ascontiguousarray(a[10:60, 20:97])
        out[f"{name}-tiny"] = np.asarray(Image.fromarray(a).resize((13, 9)))
    return out


GENERATED = _generated()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("ARANGE_FAST_HASH", request.param)
    return str(request.param)


def _fast(name: str, image: np.ndarray) -> np.ndarray:
    x = torch.from_numpy(image).permute(2, 0, 1)[None].contiguous()
    return fast_hashes((name,), x)[name][0].numpy()


@pytest.mark.parametrize("name", HASHES)
def test_fast_path_is_the_reference_on_unshipped_images(name: str, backend: str) -> None:
    wrong = {k: int((_fast(name, im) != reference_bits(name, im)).sum())
             for k, im in GENERATED.items()
             if not np.array_equal(_fast(name, im), reference_bits(name, im))}
    assert not wrong, f"{name} ({backend}) differs from the reference on {wrong}"


@settings(max_examples=40, deadline=None)
@given(h=st.integers(8, 40), w=st.integers(8, 40), seed=st.integers(0, 2**16),
       kind=st.sampled_from(["blocks", "stripes", "levels"]))
def test_structured_random_images(h: int, w: int, seed: int, kind: str) -> None:
    """Images made of few distinct values (where ties come from) at random sizes."""
    rng = np.random.default_rng(seed)
    if kind == "blocks":
        small = rng.integers(0, 256, (max(1, h // 8), max(1, w // 8), 3), dtype=np.uint8)
        im = np.asarray(Image.fromarray(small).resize((w, h), Image.Resampling.NEAREST))
    elif kind == "stripes":
        row = rng.integers(0, 2, w).astype(np.uint8) * 255
        im = np.repeat(np.tile(row[None, :], (h, 1))[:, :, None], 3, 2)
    else:
        im = rng.choice(np.array([0, 64, 255], np.uint8), (h, w, 1)).repeat(3, 2)
    im = np.ascontiguousarray(im)
    for name in HASHES:
        assert np.array_equal(_fast(name, im), reference_bits(name, im)), (name, h, w, kind)


def test_natural_images_rarely_need_the_reference() -> None:
    images = load_images("embedded").images
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()
    deferred: dict[str, torch.Tensor] = {}
    bits = fast_hashes(("phash", "pdq"), x, deferred=deferred)
    for name in ("phash", "pdq"):
        ref = np.stack([reference_bits(name, im) for im in images])
        assert np.array_equal(bits[name].numpy(), ref)
        assert int(deferred[name].sum()) <= 0.1 * len(images)  # the fast path stays fast


def test_scorecard_reports_ties_and_pdq_quality(tmp_path: Path) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    photos = load_images("embedded", image_size=64).images[:4]
    for i, im in enumerate(photos):
        Image.fromarray(im).save(folder / f"photo{i}.png")
    for name in ("flat128-64", "gradx64", "checker4-64"):
        Image.fromarray(GENERATED[name]).save(folder / f"{name}.png")
    raw: dict[str, Any] = {
        "name": "ties", "task": "hash_matching", "seed": 0, "device": "cpu",
        "target": {"hash": "pdq", "thresholds": [31],
                   "dataset": {"name": "imagefolder",
                               "options": {"root": str(folder), "image_size": 64}}},
        "attacks": [{"name": "nes", "eps": "8/255", "params": {"max_queries": 10}}],
        "evaluation": {"transfer": {"pdq": 31, "phash": 10}},
    }
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(raw))
    out = tmp_path / "run"
    assert main(["run", str(path), "--out", str(out), "-q"]) == 0
    card = json.loads((out / "scorecard.json").read_text())
    ag = {a["hash"]: a for a in card["agreement"]}
    for name in ("pdq", "phash"):
        assert ag[name]["exact"] == ag[name]["n"] == 7
        assert ag[name]["deferred"] >= 2  # the flat and the gradient image at least
    quality = card["matcher"]["quality"]
    assert len(quality) == 7 and min(quality) < 50 <= max(quality)
    check = next(c for c in card["checks"] if c["name"] == "pdq_quality")
    assert check["status"] == "warn" and "flat128-64" in json.dumps(check)
