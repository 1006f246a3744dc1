"""Memory and files read when a scenario scores a sample of a large image folder.

    python bench/data_scale.py --files 50000 --samples 1000     # the folder is generated once

Generates FILES JPEGs at 256 px in 100 class folders (kept in --folder for later runs), then, in
a fresh process each, loads the evaluation data the way ``arange run`` does for a model at 224 px
(``resize: 256, crop: 224``), once choosing the samples before decoding (now) and once decoding
the whole folder first (before; run on --before-files images, since the whole folder does not
fit in memory), and prints peak RSS and the number of files decoded.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import subprocess
import sys
import time
from pathlib import Path


def generate(folder: Path, files: int, size: int = 256) -> None:
    import numpy as np
    from PIL import Image

    marker = folder / f".complete-{files}"
    if marker.exists():
        return
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size]
    for i in range(files):
        c = i % 100
        d = folder / f"class{c:03d}"
        d.mkdir(parents=True, exist_ok=True)
        base = np.stack([(xx + c * 7) % 256, (yy + i) % 256, (xx + yy) // 2 % 256], axis=-1)
        noise = rng.integers(0, 24, (size // 8, size // 8, 3)).repeat(8, 0).repeat(8, 1)
        Image.fromarray((base + noise).clip(0, 255).astype(np.uint8)).save(
            d / f"{i:06d}.jpg", quality=85)
    marker.touch()


def measure(folder: str, samples: int | None) -> dict[str, float]:
    """In this process: load the data as the runner does; return peak RSS and files read."""
    import arange.data as D

    counter = multiprocessing.Value("i", 0)
    original = D._rgb_loader

    def counting(path: str) -> object:
        with counter.get_lock():
            counter.value += 1
        return original(path)

    D._rgb_loader = counting
    t0 = time.perf_counter()
    options = {"root": folder, "resize": 256, "crop": 224}
    if samples is not None:
        options["limit"] = samples  # what the runner passes for target.samples
    data = D.load_dataset("imagefolder", "test", **options)
    if samples is not None:
        data = data.subset(samples)
    return {"images": len(data), "files_read": counter.value,
            "seconds": round(time.perf_counter() - t0, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "worker_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--files", type=int, default=50_000)
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--before-files", type=int, default=3000,
                    help="folder size for the decode-everything measurement")
    ap.add_argument("--folder", default="/tmp/arange-bench-folder")
    ap.add_argument("--measure", nargs=2, metavar=("FOLDER", "SAMPLES"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        folder, samples = args.measure
        print(json.dumps(measure(folder, None if samples == "all" else int(samples))))
        return
    big, small = Path(args.folder) / "big", Path(args.folder) / "small"
    t0 = time.perf_counter()
    generate(big, args.files)
    generate(small, args.before_files)
    print(f"folders ready in {time.perf_counter() - t0:.0f}s: {args.files} and "
          f"{args.before_files} JPEGs at 256 px")
    rows = []
    for label, folder, samples in (("now: choose, then decode", big, str(args.samples)),
                                   ("before: decode all, then choose", small, "all")):
        out = subprocess.run([sys.executable, __file__, "--measure", str(folder), samples],
                             capture_output=True, text=True, check=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
        r = json.loads(out.stdout.strip().splitlines()[-1])
        n_files = args.files if folder == big else args.before_files
        rows.append((label, n_files, r))
    print(f"\n{'loader':<34} {'folder':>7} {'scored':>7} {'files read':>10} {'peak RSS MB':>11} "
          f"{'worker MB':>9} {'s':>6}")
    for label, n, r in rows:
        print(f"{label:<34} {n:>7} {r['images']:>7} {r['files_read']:>10} "
              f"{r['peak_rss_mb']:>11} {r['worker_rss_mb']:>9} {r['seconds']:>6}")
    before = rows[1][2]
    per_image = before["peak_rss_mb"] / max(before["images"], 1)
    print(f"\nbefore, extrapolated to {args.files} files: ~{per_image * args.files / 1024:.0f} GB "
          f"peak RSS and {args.files} files read to score {args.samples}")


if __name__ == "__main__":
    main()
