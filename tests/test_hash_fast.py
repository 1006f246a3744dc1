"""The torch hashes against the reference libraries (imagehash, pdqhash), bit for bit."""

from __future__ import annotations

import shutil
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from arange.hashing.data import load_images
from arange.hashing.fast import (
    HashSurrogate,
    fast_hash,
    fast_hashes,
    lanczos_weights,
    pillow_gray,
    pillow_resize,
    split_weights,
)
from arange.hashing.reference import reference_bits_batch


@pytest.fixture(scope="module")
def embedded() -> tuple[np.ndarray, torch.Tensor]:
    data = load_images("embedded")
    return np.asarray(data.images), data.tensor()


@pytest.mark.parametrize("name", ["average_hash", "dhash", "phash"])
def test_imagehash_bits_agree_on_embedded_images(name: str,
                                                 embedded: tuple[np.ndarray, torch.Tensor]
                                                 ) -> None:
    images, x = embedded
    ref = reference_bits_batch(name, images)
    ours = fast_hash(name, x).numpy()
    exact = (ref == ours).all(axis=1).mean()
    assert len(images) >= 100
    assert exact >= 0.99, f"{name}: only {exact:.1%} of images agree bit for bit"


def test_pdq_bits_agree_on_embedded_images(embedded: tuple[np.ndarray, torch.Tensor]) -> None:
    images, x = embedded
    ref = reference_bits_batch("pdq", images)
    ours = fast_hash("pdq", x).numpy()
    # PDQ's reference accumulates in float32 with running sums; reported, not required exact
    assert (ref == ours).all(axis=1).mean() >= 0.95
    assert (ref == ours).mean() >= 0.999


def test_uint8_and_float_inputs_give_the_same_bits(embedded: tuple[np.ndarray, torch.Tensor]
                                                   ) -> None:
    images, x = embedded
    u = torch.from_numpy(images[:8].copy()).permute(0, 3, 1, 2).contiguous()
    for name in ("phash", "pdq"):
        assert torch.equal(fast_hash(name, u), fast_hash(name, x[:8]))
        assert torch.equal(fast_hash(name, x[:8], chunk=3), fast_hash(name, x[:8]))


@pytest.mark.parametrize("shape,size", [((37, 53), (32, 32)), ((64, 40), (9, 8)),
                                        ((200, 150), (8, 8)), ((31, 31), (64, 64)),
                                        ((33, 17), (8, 8)), ((9, 8), (9, 8))])
def test_pillow_gray_and_lanczos_resize_are_exact(shape: tuple[int, int],
                                                  size: tuple[int, int]) -> None:
    rng = np.random.default_rng(sum(shape))
    arr = rng.integers(0, 256, size=(3, *shape, 3), dtype=np.uint8)
    arr[0] = np.clip(np.cumsum(arr[0], axis=1) // 8, 0, 255)  # smooth ramps, not only noise
    q = torch.from_numpy(arr).permute(0, 3, 1, 2).float()
    gray = pillow_gray(q)
    ref_gray = np.stack([np.asarray(Image.fromarray(a, "RGB").convert("L")) for a in arr])
    assert np.array_equal(gray.numpy(), ref_gray)
    resized = pillow_resize(gray, *size).numpy()
    ref = np.stack([np.asarray(Image.fromarray(g, "L").resize(size, Image.Resampling.LANCZOS))
                    for g in ref_gray])
    assert np.array_equal(resized, ref)


def test_lanczos_weights_sum_to_one_in_fixed_point() -> None:
    k = lanczos_weights(128, 32)
    assert k.shape == (32, 128)
    assert np.all(np.abs(k.sum(axis=1) - (1 << 22)) <= 32)


def test_hash_size_parameter(embedded: tuple[np.ndarray, torch.Tensor]) -> None:
    images, x = embedded
    ref = reference_bits_batch("phash", images[:6], {"hash_size": 16})
    ours = fast_hash("phash", x[:6], hash_size=16).numpy()
    assert ours.shape == (6, 256)
    assert (ref == ours).all(axis=1).mean() >= 5 / 6


@pytest.mark.parametrize("name", ["average_hash", "dhash", "phash", "pdq"])
def test_surrogate_signs_match_bits_and_carry_gradients(
        name: str, embedded: tuple[np.ndarray, torch.Tensor]) -> None:
    _, x = embedded
    xs = x[:6].clone().requires_grad_(True)
    soft = HashSurrogate(name)(xs)
    bits = fast_hash(name, x[:6])
    assert soft.shape == bits.shape
    assert ((soft > 0) == bits).float().mean() >= 0.95
    soft.abs().sum().backward()
    assert xs.grad is not None and float(xs.grad.abs().sum()) > 0


def test_unknown_hash_is_refused() -> None:
    with pytest.raises(ValueError, match="no torch implementation of 'whash'"):
        fast_hash("whash", torch.zeros(1, 3, 16, 16))


def test_split_weights_add_up_and_wide_images_fall_back_to_float64() -> None:
    k = lanczos_weights(128, 32)
    split = split_weights(128, 32)
    assert split is not None and split.dtype == np.float32 and split.shape == (64, 128)
    assert np.array_equal((split[:32].astype(np.float64) + split[32:]) * (1 << 22), k)
    assert split_weights(4000, 8) is None  # too many taps for an exact float32 split
    rng = np.random.default_rng(7)
    gray = rng.integers(0, 256, size=(2, 5, 4000), dtype=np.uint8)
    ours = pillow_resize(torch.from_numpy(gray).float(), 8, 3).numpy()
    ref = np.stack([np.asarray(Image.fromarray(g, "L").resize((8, 3), Image.Resampling.LANCZOS))
                    for g in gray])
    assert np.array_equal(ours, ref)


def test_several_hashes_in_one_call_match_one_by_one(embedded: tuple[np.ndarray, torch.Tensor]
                                                      ) -> None:
    _, x = embedded
    names = ("phash", "average_hash", "pdq", "dhash")
    together = fast_hashes(names, x[:7], chunk=3)
    assert list(together) == list(names)
    for name in names:
        assert torch.equal(together[name], fast_hash(name, x[:7]))
    assert fast_hashes(names, x[:0])["dhash"].shape == (0, 64)


@pytest.mark.parametrize("backend", ["torch", "native"])
def test_tall_images_hash_like_the_reference(backend: str, monkeypatch: pytest.MonkeyPatch
                                             ) -> None:
    # tall images: recent Pillow resizes them vertical pass first, and both paths follow it
    monkeypatch.setenv("ARANGE_FAST_HASH", backend)
    rng = np.random.default_rng(11)
    arr = rng.integers(0, 256, size=(4, 300, 40, 3), dtype=np.uint8)
    arr[:2] = np.clip(np.cumsum(arr[:2], axis=1) // 16, 0, 255)
    x = torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()
    bits = fast_hashes(("average_hash", "dhash", "phash"), x)
    for name, ours in bits.items():
        assert np.array_equal(ours.numpy(), reference_bits_batch(name, arr)), name


def test_native_kernel_is_built_where_a_compiler_is() -> None:
    # the extension is optional so that installs without a C compiler work; where there is one
    # (and Python's headers), a failed build would silently leave the slower torch code
    from arange.hashing import fast

    headers = Path(sysconfig.get_paths()["include"], "Python.h").exists()
    if not (headers and (shutil.which("cc") or shutil.which("gcc"))):
        pytest.skip("no C compiler or Python headers: the native kernel is optional")
    assert fast._native is not None, "arange/hashing/_pillow.c did not build; see pip's log"
