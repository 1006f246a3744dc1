"""Datasets through the real torchvision loaders on small files made here, checkpoints without
pickle, and the zoo's cache."""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from arange.data import load_dataset
from arange.errors import DataError, WeightsError
from arange.models import build_model, load_weights, save_weights


def test_digits_split_is_fixed_and_disjoint() -> None:
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    assert train.x.shape[1:] == (1, 32, 32) and test.x.shape[1:] == (1, 32, 32)
    assert len(train) + len(test) == 1797
    assert float(train.x.min()) >= 0 and float(train.x.max()) <= 1
    again = load_dataset("digits", "test")
    assert test.fingerprint() == again.fingerprint()
    assert torch.equal(test.y, again.y)
    assert set(test.y.tolist()) == set(range(10))
    flat_train = {hashlib.sha1(r.numpy().tobytes()).hexdigest() for r in train.x}
    overlap = sum(hashlib.sha1(r.numpy().tobytes()).hexdigest() in flat_train for r in test.x)
    assert overlap <= 2  # digits has a couple of exact duplicate images; nothing more


def _write_cifar(root: Path, n: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """A miniature CIFAR-10 in the real python-pickle format, with its md5s registered."""
    import torchvision.datasets as tvd

    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    rng = np.random.default_rng(0)
    md5 = {}
    names = ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5",
             "test_batch"]
    for name in names:
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=n)]
        with open(base / name, "wb") as f:
            pickle.dump({"data": data, "labels": labels}, f)
        md5[name] = hashlib.md5((base / name).read_bytes()).hexdigest()
    with open(base / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, f)
    monkeypatch.setattr(tvd.CIFAR10, "train_list", [[k, md5[k]] for k in names[:5]])
    monkeypatch.setattr(tvd.CIFAR10, "test_list", [["test_batch", md5["test_batch"]]])
    monkeypatch.setitem(tvd.CIFAR10.meta, "md5",
                        hashlib.md5((base / "batches.meta").read_bytes()).hexdigest())


def test_cifar10_local_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_cifar(tmp_path, 12, monkeypatch)
    test = load_dataset("cifar10", "test", root=str(tmp_path))
    train = load_dataset("cifar10", "train", root=str(tmp_path))
    assert test.x.shape == (12, 3, 32, 32) and len(train) == 60
    assert test.class_names[0] == "class0" and test.num_classes == 10
    assert float(test.x.max()) <= 1


def test_cifar10_missing_root_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no valid CIFAR-10 data under"):
        load_dataset("cifar10", "test", root=str(tmp_path / "nothing"))


def _write_folder(root: Path, classes: list[str], per_class: int, size: int = 20) -> None:
    rng = np.random.default_rng(1)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            arr = rng.integers(0, 256, size=(size, size + 4, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / c / f"{i}.png")


def test_imagefolder(tmp_path: Path) -> None:
    _write_folder(tmp_path / "train", ["cat", "dog"], 3)
    _write_folder(tmp_path / "test", ["cat", "dog"], 2)
    test = load_dataset("imagefolder", "test", root=str(tmp_path), image_size=16)
    assert test.x.shape == (4, 3, 16, 16)
    assert test.class_names == ["cat", "dog"] and sorted(test.y.tolist()) == [0, 0, 1, 1]
    gray = load_dataset("imagefolder", "train", root=str(tmp_path), image_size=16, channels=1)
    assert gray.x.shape == (6, 1, 16, 16)


def test_imagefolder_errors(tmp_path: Path) -> None:
    """A missing or empty folder is refused when the dataset is set up (so at validate time),
    as a parameter error on root."""
    from arange.errors import ParamError

    with pytest.raises(ParamError, match="is not a folder"):
        load_dataset("imagefolder", "test", root=str(tmp_path / "missing"))
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(ParamError, match="holds no image files"):
        load_dataset("imagefolder", "test", root=str(tmp_path / "empty"))


def _model() -> Any:
    return build_model("resnet20", in_channels=1, num_classes=10, image_size=32, mean=(0.5,),
                       std=(0.5,), params={"width": 4})


def test_safetensors_roundtrip(tmp_path: Path) -> None:
    a, b = _model(), _model()
    sha = save_weights(a, tmp_path / "m.safetensors")
    assert load_weights(b, tmp_path / "m.safetensors") == sha
    for pa, pb in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb)


def test_pt_state_dict_of_backbone_loads(tmp_path: Path) -> None:
    a, b = _model(), _model()
    torch.save({"state_dict": {f"module.{k}": v for k, v in a.backbone.state_dict().items()}},
               tmp_path / "m.pt")
    load_weights(b, tmp_path / "m.pt")
    assert torch.equal(a.backbone.fc.weight, b.backbone.fc.weight)


class _Payload:
    def __reduce__(self) -> Any:
        return (print, ("pickle payload executed",))


def test_pickled_objects_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.save({"x": _Payload()}, tmp_path / "evil.pt")
    with pytest.raises(WeightsError, match="weights-only"):
        load_weights(_model(), tmp_path / "evil.pt")
    assert "pickle payload executed" not in capsys.readouterr().out


def test_wrong_architecture_is_a_clear_error(tmp_path: Path) -> None:
    save_weights(_model(), tmp_path / "m.safetensors")
    other = build_model("resnet20", in_channels=3, num_classes=10, image_size=32,
                        mean=(0.5,) * 3, std=(0.5,) * 3, params={"width": 4})
    with pytest.raises(WeightsError, match="does not fit the model"):
        load_weights(other, tmp_path / "m.safetensors")


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "resnet20"])
def test_models_adapt_to_the_data(name: str) -> None:
    m = build_model(name, in_channels=1, num_classes=7, image_size=32, mean=(0.5,), std=(0.5,))
    out = m.eval()(torch.rand(2, 1, 32, 32))
    assert out.shape == (2, 7)


def test_zoo_caches_and_is_deterministic(tiny_model: Any) -> None:
    """The tiny model was trained once this session; loading it again is a cache hit with the
    same bytes, and its accuracy is real."""
    from arange.classification.runner import prepare_target
    from arange.core.scenario import scenario_from_dict

    from .conftest import tiny_scenario

    model, _, _ = tiny_model
    again = prepare_target(scenario_from_dict(tiny_scenario()), torch.device("cpu"), False)
    assert again.model_info["test_accuracy"] >= 0.8
    for pa, pb in zip(model.state_dict().values(), again.model.state_dict().values(),
                      strict=True):
        assert torch.equal(pa, pb)
