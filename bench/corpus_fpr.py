"""False-positive rates at corpus scale: hash a folder of N benign images and count every pair.

    python bench/corpus_fpr.py --images 100000                     # local, then on Ray
    python bench/corpus_fpr.py --images 2000 --executors local     # a quick look

Generates N variations of the embedded photographs (random crops, flips, brightness and
contrast, sensor noise; 64x64 PNG) into a folder once, then runs ``arange run`` on a hash
scenario whose ``evaluation.corpus`` points at it, once per executor (``local``: this process;
``ray``: a local Ray runtime with its default workers, one per core). Prints wall time, the
time spent hashing (summed over shards) and counting, pairs per second, and peak memory (the
driver; with Ray also the workers, sampled), and checks that every executor gives the same
curve.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent


def _make(args: tuple[int, int, str]) -> None:
    start, stop, folder = args
    from PIL import Image

    from arange.hashing.data import load_images

    base = load_images("embedded", image_size=128).images
    for i in range(start, stop):
        rng = np.random.default_rng(i)
        im = base[i % len(base)].astype(np.float32)
        side = int(128 * rng.uniform(0.6, 1.0))
        y, x = rng.integers(0, 128 - side + 1, 2)
        crop = im[y:y + side, x:x + side]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        crop = crop * rng.uniform(0.8, 1.2) + rng.uniform(-20, 20)
        crop = crop + rng.normal(0, rng.uniform(0, 4), crop.shape)
        out = Image.fromarray(np.clip(crop, 0, 255).astype(np.uint8)).resize((64, 64))
        sub = Path(folder) / f"{i // 1000:03d}"
        sub.mkdir(exist_ok=True)
        out.save(sub / f"{i:06d}.png", compress_level=1)


def generate(n: int, folder: Path) -> float:
    """The folder of n images (made once; a marker file records n)."""
    marker = folder / ".complete"
    if marker.is_file() and marker.read_text() == str(n):
        return 0.0
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    step = 2000
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        list(pool.map(_make, [(a, min(a + step, n), str(folder)) for a in range(0, n, step)]))
    marker.write_text(str(n))
    return time.perf_counter() - t0


def _ray_rss() -> int:
    """Summed RSS of the Ray worker processes now (bytes), from /proc (0 elsewhere)."""
    total = 0
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if b"ray::" not in (proc / "cmdline").read_bytes():
                continue
            for line in (proc / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


def run(scenario: Path, out: Path, executor: str) -> dict[str, object]:
    peak = [0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.5):
            peak[0] = max(peak[0], _ray_rss())

    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "arange", "run", str(scenario), "--out",
                           str(out), "-q", "--fresh", "--executor", executor],
                          capture_output=True, text=True, check=False,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    wall = time.perf_counter() - t0
    stop.set()
    watcher.join()
    if proc.returncode != 0:
        sys.exit(f"arange run failed ({executor}):\n{proc.stderr[-3000:]}")
    driver = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    card = json.loads((out / "scorecard.json").read_text())
    c = card["corpus"]
    return {"executor": executor, "wall": wall, "corpus": c,
            "driver_mb": max(driver, before) / 1024, "workers_mb": peak[0] / 2**20}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=100_000)
    ap.add_argument("--hash", default="phash")
    ap.add_argument("--folder", help="where the images go (default: a folder under /tmp)")
    ap.add_argument("--executors", nargs="*", default=["local", "ray"])
    ap.add_argument("--shard-size", type=int, default=5000)
    args = ap.parse_args()
    folder = Path(args.folder or f"{tempfile.gettempdir()}/arange-corpus-{args.images}")
    made = generate(args.images, folder)
    if made:
        print(f"# generated {args.images:,} images in {made:.0f}s under {folder}")
    work = Path(tempfile.mkdtemp(prefix="arange-corpus-bench-"))
    scen = {"name": "corpus_bench", "task": "hash_matching", "seed": 0, "device": "cpu",
            "target": {"hash": args.hash, "thresholds": [4, 10, 20] if args.hash != "pdq"
                       else [31, 60, 80],
                       "dataset": {"name": "embedded", "options": {"image_size": 64,
                                                                   "limit": 2}}},
            "attacks": [{"name": "nes", "eps": "8/255", "params": {"max_queries": 10}}],
            "evaluation": {"transfer": {args.hash: 10 if args.hash != "pdq" else 31},
                           "corpus": {"root": str(folder), "shard_size": args.shard_size}}}
    path = work / "corpus.yaml"
    path.write_text(yaml.safe_dump(scen))
    import torch
    print(f"# {args.images:,} images, {args.hash}, {os.cpu_count()} CPUs, torch "
          f"{torch.__version__}, numpy {np.__version__}")
    print(f"{'executor':<9} {'wall s':>7} {'hash s':>7} {'count s':>8} {'pairs':>15} "
          f"{'pairs/s':>13} {'driver MB':>9} {'workers MB':>10}")
    results = []
    for ex in args.executors:
        r = run(path, work / ex, ex)
        c = r["corpus"]
        results.append(r)
        print(f"{ex:<9} {r['wall']:>7.1f} {c['seconds']['hashing']:>7.1f} "
              f"{c['seconds']['counting']:>8.1f} {c['n_pairs']:>15,} "
              f"{c['n_pairs'] / max(c['seconds']['counting'], 1e-9):>13,.0f} "
              f"{r['driver_mb']:>9.0f} {r['workers_mb'] if ex == 'ray' else 0:>10.0f}")
    c = results[0]["corpus"]
    for t in scen["target"]["thresholds"]:
        p = c["points"][t]
        print(f"# FPR at {t}: {p['fpr']:.3g} ({p['false_positives']:,} of {c['n_pairs']:,} pairs)")
    same = all(r["corpus"]["points"] == c["points"] for r in results)
    print(f"# every executor gives the same curve: {same}")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
