"""PGD-k speed: arange vs the forward+input-backward floor vs ART vs foolbox, in one process.

Same model, same inputs, same settings (L-inf, eps 8/255, k steps, step 0.25*eps, random start).
The floor is k x (one forward + one backward w.r.t. the input only) of the same model and batch:
no attack can do less work. Prints images/s and ratios.

    python bench/pgd_speed.py [--device cpu|cuda] [--batch-sizes 32 128] [--steps 10]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from arange.attacks import PGD, Misclassification
from arange.models import build_model
from arange.threat import Norm, ThreatModel

EPS = 8 / 255


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timeit_all(fns: dict[str, Callable[[], object]], device: torch.device,
               repeats: int) -> dict[str, float]:
    """Median seconds per method; the methods take turns so background load hits all alike."""
    for fn in fns.values():
        fn()  # warm-up
    _sync(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--channels", type=int, default=1)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 128])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--skip", nargs="*", default=[], choices=["art", "foolbox"])
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    c = args.channels
    model = build_model(args.model, in_channels=c, num_classes=10, image_size=args.size,
                        mean=(0.5,) * c, std=(0.25,) * c).to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    k = args.steps
    print(f"# PGD-{k} L-inf eps=8/255, {args.model} on {c}x{args.size}x{args.size}, "
          f"device={device}, torch {torch.__version__}, threads={torch.get_num_threads()}")
    print(f"{'batch':>5} {'method':<10} {'img/s':>9} {'x floor':>8} {'arange speedup':>15}")
    for bs in args.batch_sizes:
        x = torch.rand(bs, c, args.size, args.size, device=device)
        y = torch.randint(0, 10, (bs,), device=device)

        def floor() -> None:
            for _ in range(k):
                xi = x.clone().requires_grad_(True)
                loss = F.cross_entropy(model(xi), y, reduction="sum")
                torch.autograd.grad(loss, xi)

        pgd = PGD(steps=k, rel_stepsize=0.25, random_start=True)
        threat = ThreatModel(Norm.linf, EPS)
        obj = Misclassification()

        def ours() -> None:
            pgd.run(model, x, y, threat, obj, None)

        fns: dict[str, Callable[[], object]] = {"floor": floor, "arange": ours}
        if "art" not in args.skip:
            from art.attacks.evasion import ProjectedGradientDescent
            from art.estimators.classification import PyTorchClassifier
            clf = PyTorchClassifier(model, loss=torch.nn.CrossEntropyLoss(),
                                    input_shape=(c, args.size, args.size), nb_classes=10,
                                    clip_values=(0.0, 1.0), device_type=device.type)
            art_pgd = ProjectedGradientDescent(clf, norm=np.inf, eps=EPS, eps_step=0.25 * EPS,
                                               max_iter=k, num_random_init=1, batch_size=bs,
                                               verbose=False)
            xn, yn = x.cpu().numpy(), y.cpu().numpy()
            fns["ART"] = lambda: art_pgd.generate(xn, yn)
        if "foolbox" not in args.skip:
            import foolbox as fb
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fmodel = fb.PyTorchModel(model, bounds=(0, 1), device=device)
            fb_pgd = fb.attacks.LinfPGD(rel_stepsize=0.25, steps=k, random_start=True)
            fns["foolbox"] = lambda: fb_pgd(fmodel, x, y, epsilons=EPS)
        results = timeit_all(fns, device, args.repeats)
        base = results["floor"]
        for name, t in results.items():
            speed = "" if name in ("floor", "arange") else f"{t / results['arange']:.2f}x"
            print(f"{bs:>5} {name:<10} {bs / t:>9.1f} {t / base:>8.3f} {speed:>15}")


if __name__ == "__main__":
    main()
