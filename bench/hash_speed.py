"""Torch batched perceptual hashes vs the reference libraries, per image, side by side.

For each hash with a torch fast path (aHash, dHash, pHash: imagehash; PDQ: pdqhash) this hashes
the same batch of embedded images (default 256, cycling through the 117 embedded images) with
the reference library one image at a time and with the torch implementation in one call, checks
that the bits agree, and prints microseconds per image and the speed ratio. The reference gets
ready-made Pillow images (imagehash) or uint8 arrays (pdqhash); torch gets the uint8 batch as a
tensor. The header names what computed the imagehash hashes' grey conversion and resize:
``native`` (the compiled kernel, on CPUs with AVX-512 VNNI) or ``torch``; ``ARANGE_FAST_HASH=torch``
times the torch code on such a CPU.

Each timing is the best of several repeats, and the two sides' repeats are interleaved so a busy
machine hurts both alike. Two timings of ours: **steady**, right after another call of ours (as in
an attack's loop, where the batch was just written), and **cold**, right after the reference's
run over the batch, which has evicted our batch from the caches: the 12.6 MB of a 256-image batch
then comes from memory, which on a single core of a small VM bounds the native kernel. Both ratios
divide the reference's steady time. A last row times the three imagehash hashes in one
``fast_hashes`` call (shared grey conversion and horizontal resize) against the sum of the three
reference calls.

    python bench/hash_speed.py [--batch 256] [--size 128] [--threads N] [--device cpu]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable

import numpy as np
import torch


def best_of(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    import imagehash
    import pdqhash
    from PIL import Image

    from arange.hashing.data import load_images
    from arange.hashing.fast import fast_hash, fast_hash_backend, fast_hashes
    from arange.hashing.reference import library_version

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--size", type=int, default=128, help="embedded image size (pixels)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    data = load_images("embedded", image_size=args.size)
    idx = np.arange(args.batch) % len(data)
    arrays = [np.ascontiguousarray(data.images[i]) for i in idx]
    pil = [Image.fromarray(a, "RGB") for a in arrays]
    batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous().to(args.device)

    print(f"batch {args.batch} images of {args.size}x{args.size} RGB, device {args.device}, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads), imagehash "
          f"{library_version('imagehash')}, pdqhash {library_version('pdqhash')}, "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"load {os.getloadavg()[0]:.2f}, grey+resize backend {fast_hash_backend(batch.device)}")
    print(f"{'hash':<13} {'reference us/img':>17} {'ours (steady)':>14} {'ratio':>7} "
          f"{'ours (cold)':>12} {'ratio':>7} {'bits agree':>11}")
    reference: dict[str, Callable[[], list[np.ndarray]]] = {
        "average_hash": lambda: [imagehash.average_hash(im).hash.ravel() for im in pil],
        "dhash": lambda: [imagehash.dhash(im).hash.ravel() for im in pil],
        "phash": lambda: [imagehash.phash(im).hash.ravel() for im in pil],
        "pdq": lambda: [np.asarray(pdqhash.compute(a)[0], dtype=bool) for a in arrays],
    }
    sync = (lambda: torch.cuda.synchronize()) if batch.is_cuda else (lambda: None)
    ref_us: dict[str, float] = {}
    worst = 1.0  # the lowest share of images whose bits equal the reference's
    for name, ref in reference.items():
        ref_bits = np.stack(ref())

        def ours(name: str = name) -> torch.Tensor:
            out = fast_hash(name, batch)
            sync()
            return out

        ours_bits = ours().cpu().numpy()  # warm-up (weights, caches)
        t_ref, t_cold, t_steady = [], [], []
        for _ in range(args.repeats):  # interleaved so load changes hit both
            ref()
            t_ref.append(best_of(ref, 1))      # the reference right after itself
            t_cold.append(best_of(ours, 1))    # ours right after the reference
            t_steady.append(best_of(ours, 1))  # ours right after itself
        r = min(t_ref) / args.batch * 1e6
        o = min(t_steady) / args.batch * 1e6
        c = min(t_cold) / args.batch * 1e6
        agree = float((ref_bits == ours_bits).all(axis=1).mean())
        worst = min(worst, agree)
        ref_us[name] = r
        print(f"{name:<13} {r:>17.1f} {o:>14.1f} {r / o:>6.1f}x {c:>12.1f} {r / c:>6.1f}x "
              f"{agree:>10.1%}")

    # The three imagehash hashes of the same batch in one call (one grey conversion and one
    # horizontal resize product shared), against the sum of the reference's three calls.
    trio = ("average_hash", "dhash", "phash")
    t_trio = []
    for _ in range(args.repeats + 1):
        t = time.perf_counter()
        fast_hashes(trio, batch)
        sync()
        t_trio.append(time.perf_counter() - t)
    r = sum(ref_us[n] for n in trio)
    o = min(t_trio[1:]) / args.batch * 1e6
    print(f"{'a+d+pHash':<13} {r:>17.1f} {o:>14.1f} {r / o:>6.1f}x {'':>12} {'':>7} "
          f"{'(sum of 3)':>11}")
    print(f"load after: {os.getloadavg()[0]:.2f}")
    if worst < 1.0:
        print(f"bits differ from the reference on {1 - worst:.1%} of the images", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
