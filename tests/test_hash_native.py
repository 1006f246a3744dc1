"""The compiled grey + LANCZOS kernel (arange/hashing/_pillow.c) against Pillow, byte for byte,
in both of its implementations (portable C everywhere, AVX-512 VNNI where the CPU has it)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from arange.hashing import fast
from arange.hashing.data import load_images
from arange.hashing.fast import fast_hash, fast_hash_backend, native_resize, vertical_first

pytestmark = pytest.mark.skipif(fast._native is None, reason="native hash kernel not built")

IMPLS = [1] + ([2] if fast._native is not None and fast._native.has_vnni() else [])


def _pillow(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Pillow's convert('L').resize(size, LANCZOS) of (N, C, H, W) uint8 images."""
    out = []
    for a in x:
        im = Image.fromarray(a.transpose(1, 2, 0), "RGB") if a.shape[0] == 3 else \
            Image.fromarray(a[0], "L")
        out.append(np.asarray(im.convert("L").resize(size, Image.Resampling.LANCZOS)))
    return np.stack(out)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape", [(128, 128), (70, 150), (37, 53), (33, 17), (9, 8), (5, 3),
                                   (300, 40), (2, 70), (1, 1)])
def test_kernel_matches_pillow_byte_for_byte(impl: int, shape: tuple[int, int]) -> None:
    h, w = shape
    rng = np.random.default_rng(h * 1000 + w)
    # output counts 5-11 leave 1, 2 or 3 outputs in the last block of 4
    calls = [[(8, 8), (9, 8), (32, 32), (w, h)], [(w, 8), (8, h), (5, 13), (6, 7), (11, 10)]]
    for c in (3, 1):
        x = rng.integers(0, 256, size=(4, c, h, w), dtype=np.uint8)
        x[0] = np.clip(np.cumsum(x[0], axis=-1) // 8, 0, 255)  # smooth ramps, not only noise
        for sizes in calls:
            outs = native_resize(torch.from_numpy(x), sizes, impl=impl)
            for size, ours in zip(sizes, outs):
                assert ours.dtype == torch.uint8 and ours.shape == (4, size[1], size[0])
                assert np.array_equal(ours.numpy(), _pillow(x, size)), (shape, c, size, impl)


@pytest.mark.parametrize("impl", IMPLS)
def test_grey_matches_pillow_for_every_colour(impl: int) -> None:
    # all 2**24 RGB triples as one 4096 x 4096 image, kept at its size (no resize pass): the
    # grey conversion alone, against Pillow's convert('L')
    v = np.arange(1 << 24, dtype=np.uint32).reshape(4096, 4096)
    rgb = np.stack([(v >> 16) & 255, (v >> 8) & 255, v & 255]).astype(np.uint8)
    want = np.asarray(Image.fromarray(rgb.transpose(1, 2, 0), "RGB").convert("L"))
    ours = native_resize(torch.from_numpy(rgb)[None], [(4096, 4096)], impl=impl)[0][0]
    assert np.array_equal(ours.numpy(), want)


def test_both_pass_orders_are_exercised() -> None:
    # Pillow runs the vertical pass first when the height shrinks by more than twice as many
    # pixels as the width; the shapes above include both orders where that rule exists
    assert not vertical_first(128, 128, 8, 8)
    assert vertical_first(300, 40, 8, 8) == fast._pillow_has_vertical_first_rule()


@pytest.mark.parametrize("impl", IMPLS)
def test_float_inputs_round_like_torch(impl: int) -> None:
    rng = np.random.default_rng(3)
    u = torch.from_numpy(rng.integers(0, 256, size=(3, 3, 40, 50), dtype=np.uint8))
    unit = u.float() / 255.0
    noisy = unit + torch.from_numpy(rng.uniform(-0.0019, 0.0019, size=unit.shape)).float()
    noisy[0, 0, 0, :4] = torch.tensor([-0.5, 1.5, float("nan"), 0.5 / 255])  # clamp, NaN, tie
    want = native_resize(fast.to_uint8_grid(noisy.nan_to_num(0.0)).to(torch.uint8), [(8, 8)],
                         impl=impl)[0]
    assert torch.equal(native_resize(noisy, [(8, 8)], impl=impl)[0], want)
    levels = native_resize(u.float(), [(8, 8), (32, 32)], levels=True, impl=impl)
    direct = native_resize(u, [(8, 8), (32, 32)], impl=impl)
    assert all(torch.equal(a, b) for a, b in zip(levels, direct))


def test_native_and_torch_hashes_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    x = load_images("embedded").tensor()[:24]
    bits = {}
    for backend in ("native", "torch"):
        monkeypatch.setenv("ARANGE_FAST_HASH", backend)
        assert fast_hash_backend() == backend
        bits[backend] = {name: fast_hash(name, x) for name in ("average_hash", "dhash", "phash")}
    for name in bits["torch"]:
        assert torch.equal(bits["native"][name], bits["torch"][name]), name


def test_bad_arguments_are_refused() -> None:
    x = np.zeros((2, 3, 8, 8), dtype=np.uint8)
    out = np.zeros((2, 4, 4), dtype=np.uint8)
    k = fast._int_weights(8, 4)
    with pytest.raises(ValueError, match="source size"):
        fast._native.resize(x, 0, 3, 3, 8, 8, [(4, 4, k, k, out, False)])
    with pytest.raises(ValueError, match="output buffer"):
        fast._native.resize(x, 0, 2, 3, 8, 8, [(4, 4, k, k, out[:1], False)])
    with pytest.raises(ValueError, match="horizontal weights"):
        fast._native.resize(x, 0, 2, 3, 8, 8, [(4, 4, k[:2], k, out, False)])
    with pytest.raises(ValueError, match="skipped"):
        fast._native.resize(x, 0, 2, 3, 8, 8, [(4, 4, None, k, out, False)])
    bits = np.zeros((2, 16), dtype=bool)
    with pytest.raises(ValueError, match="bits kind"):
        fast._native.resize(x, 0, 2, 3, 8, 8, [(4, 4, k, k, out, False, bits, 3)])
    with pytest.raises(ValueError, match="bits kind"):
        fast._native.resize(x, 0, 2, 3, 8, 8, [(4, 4, k, k, out, False, None, 1)])
    with pytest.raises(ValueError, match="bits buffer"):
        fast._native.resize(x, 0, 2, 3, 8, 8, [(4, 4, k, k, out, False, bits, 2)])


@pytest.mark.parametrize("hash_size", [5, 8, 16])
def test_kernel_bits_match_imagehash(hash_size: int, monkeypatch: pytest.MonkeyPatch) -> None:
    # the kernel computes aHash's and dHash's bits itself: against imagehash on noise, ramps,
    # a flat image (every level equals the mean and its neighbour) and two-level stripes
    import imagehash

    monkeypatch.setenv("ARANGE_FAST_HASH", "native")
    rng = np.random.default_rng(hash_size)
    x = rng.integers(0, 256, size=(6, 3, 70, 90), dtype=np.uint8)
    x[1] = np.clip(np.cumsum(x[1], axis=-1) // 16, 0, 255)
    x[2] = 77
    x[3] = 0
    x[3, :, :, ::8] = 255
    x[4, :, :35] = 200
    pil = [Image.fromarray(a.transpose(1, 2, 0), "RGB") for a in x]
    t = torch.from_numpy(x)
    for name, fn in (("average_hash", imagehash.average_hash), ("dhash", imagehash.dhash)):
        want = np.stack([fn(im, hash_size).hash.ravel() for im in pil])
        assert np.array_equal(fast_hash(name, t, hash_size).numpy(), want), name
