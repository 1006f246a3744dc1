"""Data as it lies on disk: only the images a run scores are decoded, and a manifest of
``path,label`` rows reads the same images as the folder layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import arange
import arange.data as D
from arange.core.scenario import scenario_from_dict
from arange.errors import ArangeError

from .conftest import tiny_scenario


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 small photos-like PNGs (smooth gradients plus noise) in 3 class folders, of varying
    sizes and aspect ratios."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for c, name in enumerate(("cat", "dog", "eel")):
        (root / name).mkdir()
        for i in range(20):
            h, w = int(rng.integers(40, 80)), int(rng.integers(40, 80))
            yy, xx = np.mgrid[0:h, 0:w]
            img = np.stack([(xx * (c + 1) * 3) % 256, (yy * 2 + i * 9) % 256,
                            np.full_like(xx, 80 * c)], axis=-1)
            img = np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / name / f"{i:03d}.png")
    return root


def count_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    read: list[str] = []
    original = D._rgb_loader

    def counting(path: str) -> object:
        read.append(path)
        return original(path)

    monkeypatch.setattr(D, "_rgb_loader", counting)
    return read


def test_only_the_scored_samples_are_decoded(folder: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """samples: 12 of 60 images reads 12 files, and they are the first 12 of the same fixed
    order a full read would score."""
    from arange.classification.target import prepare_target

    read = count_reads(monkeypatch)
    raw = tiny_scenario()
    raw["target"].update(dataset={"name": "imagefolder", "options": {
        "root": str(folder), "image_size": 32, "channels": 1}}, samples=12, weights="random")
    target = prepare_target(scenario_from_dict(raw), torch.device("cpu"), progress=False)
    assert len(read) == 12 and len(set(read)) == 12
    full = D.load_dataset("imagefolder", "test", root=str(folder), image_size=32, channels=1)
    assert torch.equal(target.data.x, full.x[:12]) and torch.equal(target.data.y, full.y[:12])


def test_a_manifest_reads_the_images_of_the_folder(folder: Path, tmp_path: Path) -> None:
    files = sorted(p.relative_to(folder) for p in folder.rglob("*.png"))
    csv = folder / "val.csv"
    csv.write_text("path,label\n" + "".join(f"{p},{p.parent}\n" for p in files))
    js = folder / "val.json"
    js.write_text(json.dumps([{"path": str(p), "label": str(p.parent)} for p in files]))
    ref = D.load_dataset("imagefolder", "test", root=str(folder), resize=48, crop=40)
    for manifest in (csv, js):
        data = D.load_dataset("manifest", "test", path=str(manifest), resize=48, crop=40)
        assert data.class_names == ref.class_names == ["cat", "dog", "eel"]
        assert torch.equal(data.x, ref.x) and torch.equal(data.y, ref.y)
        assert data.x.shape[1:] == (3, 40, 40)


def test_a_brought_model_on_a_manifest_with_preprocessing(folder: Path, tmp_path: Path
                                                         ) -> None:
    """A TorchScript model at 40 px on a manifest resized to 48 and cropped to 40: the data are
    decoded at the model's input size and the scorecard echoes the preprocessing."""
    (folder / "rel.csv").write_text("".join(
        f"{p.relative_to(folder)},{p.parent.name}\n" for p in sorted(folder.rglob("*.png"))))
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, stride=2), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                              torch.nn.Linear(4, 3)).eval()
    torch.jit.trace(net, torch.rand(2, 3, 40, 40)).save(str(tmp_path / "m.ts"))
    raw = tiny_scenario(attacks=[{"name": "fgsm", "eps": ["8/255"]}],
                        evaluation={"checks": {"large_eps": False, "more_steps": False}})
    raw["target"] = {"model": "torchscript:m.ts", "samples": 30, "batch_size": 30,
                     "preprocessing": {"resize": 48, "crop": 40, "mean": [0.5], "std": [0.5]},
                     "dataset": {"name": "manifest", "options": {"path": str(folder /
                                                                             "rel.csv")}}}
    card = arange.run(scenario_from_dict(raw, "s.yaml", tmp_path), out=tmp_path / "run",
                      progress=False)
    prep = card.provenance.model_info["preprocessing"]
    assert prep["input_size"] == 40 and prep["resize"] == 48 and prep["crop"] == 40
    assert card.clean[0].n == 30


@pytest.mark.parametrize("text, message", [
    ("path,label\n../outside.png,cat\n", "row 1: paths are relative to the manifest's folder"),
    ("path,label\na.png\n", "row 1 is not path,label"),
    ("path,label\n", "lists no images"),
])
def test_bad_manifests_name_the_file_and_row(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "m.csv").write_text(text)
    raw = tiny_scenario()
    raw["target"].update(dataset={"name": "manifest", "options": {"path": "m.csv"}},
                         weights="random")
    with pytest.raises(ArangeError, match=message):
        scenario_from_dict(raw, str(tmp_path / "s.yaml"), tmp_path)


def test_stratified_samples_take_each_class_in_turn(folder: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    read = count_reads(monkeypatch)
    data = D.load_dataset("imagefolder", "test", root=str(folder), limit=12, stratify=True)
    assert len(read) == 12
    assert torch.bincount(data.y).tolist() == [4, 4, 4]
    again = D.load_dataset("imagefolder", "test", root=str(folder), limit=12, stratify=True)
    assert torch.equal(again.x, data.x)  # deterministic
