"""APGD-k speed: arange's native torch APGD vs ART's AutoProjectedGradientDescent vs the
forward+input-backward floor, in one process.

Same model, same inputs, same settings (L-inf, eps 8/255, k iterations, cross-entropy loss, one
run, initial step 2*eps); labels are the model's own predictions so every sample starts unbroken.
Both implementations stop working on a sample once it is broken (arange at its checkpoints), so
the numbers depend on how quickly the (untrained) model breaks. The floor is k x (one forward + one backward w.r.t. the input only) of
the same model and batch: no attack can do less work. ART converts to numpy and back around every
step; arange's loop stays on the device. Prints images/s and ratios.

    python bench/apgd_speed.py [--device cpu|cuda] [--batch-sizes 32 128] [--steps 20]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from arange.attacks import APGD, Misclassification
from arange.models import build_model
from arange.threat import Norm, ThreatModel

EPS = 8 / 255


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timeit(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    fn()  # warm-up
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--channels", type=int, default=1)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 128])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    c = args.channels
    model = build_model(args.model, in_channels=c, num_classes=10, image_size=args.size,
                        mean=(0.5,) * c, std=(0.25,) * c).to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    k = args.steps
    print(f"# APGD-{k} (CE) L-inf eps=8/255, {args.model} on {c}x{args.size}x{args.size}, "
          f"device={device}, torch {torch.__version__}, threads={torch.get_num_threads()}")
    print(f"{'batch':>5} {'method':<8} {'img/s':>9} {'x floor':>8} {'arange speedup':>15}")
    for bs in args.batch_sizes:
        results = bench_batch(model, device, bs, c, args.size, k, args.repeats)
        base = results["floor"]
        for name, t in results.items():
            speed = "" if name in ("floor", "arange") else f"{t / results['arange']:.2f}x"
            print(f"{bs:>5} {name:<8} {bs / t:>9.1f} {t / base:>8.3f} {speed:>15}")


def bench_batch(model: torch.nn.Module, device: torch.device, bs: int, c: int, size: int, k: int,
                repeats: int) -> dict[str, float]:
    """Median seconds of the floor, arange's APGD and ART's APGD on one batch."""
    from art.attacks.evasion import AutoProjectedGradientDescent
    from art.estimators.classification import PyTorchClassifier

    x = torch.rand(bs, c, size, size, device=device)
    with torch.no_grad():  # labels = predictions, so every sample starts unbroken
        y = model(x).argmax(1)

    def floor() -> None:
        for _ in range(k):
            xi = x.clone().requires_grad_(True)
            loss = F.cross_entropy(model(xi), y, reduction="sum")
            torch.autograd.grad(loss, xi)

    apgd = APGD(steps=k, restarts=1, loss="ce")
    threat = ThreatModel(Norm.linf, EPS)
    obj = Misclassification()
    gen = torch.Generator(device=device).manual_seed(0)

    def ours() -> None:
        apgd.run(model, x, y, threat, obj, gen)

    clf = PyTorchClassifier(model, loss=torch.nn.CrossEntropyLoss(),
                            input_shape=(c, size, size), nb_classes=10, clip_values=(0.0, 1.0),
                            device_type="gpu" if device.type == "cuda" else "cpu")
    art_apgd = AutoProjectedGradientDescent(clf, norm=np.inf, eps=EPS, eps_step=2 * EPS,
                                            max_iter=k, nb_random_init=1, batch_size=bs,
                                            loss_type="cross_entropy", verbose=False)
    xn, yn = x.cpu().numpy(), y.cpu().numpy()

    def theirs() -> None:
        art_apgd.generate(xn, yn)

    return {"floor": timeit(floor, device, repeats), "arange": timeit(ours, device, repeats),
            "ART": timeit(theirs, device, repeats)}


if __name__ == "__main__":
    main()
