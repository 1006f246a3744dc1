"""APGD-k speed: arange's native torch APGD vs ART's AutoProjectedGradientDescent vs
torchattacks' APGD vs the forward+input-backward floor, in one process.

Same model, same inputs, same settings (L-inf, eps 8/255, k iterations, cross-entropy loss, one
run, initial step 2*eps); labels are the model's own predictions so every sample starts unbroken.
arange and ART stop working on a sample once it is broken (arange at its checkpoints);
torchattacks runs every iteration on the whole batch. So the numbers depend on how quickly the
(untrained) model breaks, and arange can beat the floor. The floor is k x (one forward + one
backward w.r.t. the input only) of the same model and batch. Methods take turns within each
repeat so background load hits all alike. Prints images/s and ratios; on CUDA also TFLOP/s of
the floor's work against the measured matmul peak (see pgd_speed.py).

    OMP_NUM_THREADS=1 python bench/apgd_speed.py --batch-sizes 32 128 --steps 20
    python bench/apgd_speed.py --device cuda --model resnet18 --channels 3 --batch-sizes 256
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import numpy as np
import torch
from pgd_speed import (
    EPS,
    art_classifier,
    floor_fn,
    matmul_peak,
    report,
    step_flops,
    timeit_all,
)

from arange.attacks import APGD, Misclassification
from arange.models import build_model
from arange.speed import place_batch, place_model
from arange.threat import Norm, ThreatModel

PEERS = ("art", "torchattacks")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--channels", type=int, default=1)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 128])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip", nargs="*", default=[], choices=PEERS)
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    c = args.channels
    model = build_model(args.model, in_channels=c, num_classes=10, image_size=args.size,
                        mean=(0.5,) * c, std=(0.25,) * c)
    model = place_model(model, device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    k = args.steps
    cuda = device.type == "cuda"
    peak = matmul_peak(device) if cuda else None
    name = torch.cuda.get_device_name(device) if cuda else "cpu"
    print(f"# APGD-{k} (CE) L-inf eps=8/255, {args.model} on {c}x{args.size}x{args.size}, "
          f"device={name}, torch {torch.__version__}, threads={torch.get_num_threads()}")
    if peak is not None:
        print(f"# measured fp32 matmul peak {peak / 1e12:.1f} TFLOP/s")
    head = f"{'batch':>5} {'method':<12} {'img/s':>9} {'x floor':>8} {'arange speed-up':>16}"
    print(head + (f" {'TFLOP/s':>8} {'% peak':>7}" if cuda else ""))
    for bs in args.batch_sizes:
        x = place_batch(torch.rand(bs, c, args.size, args.size), device)
        with torch.no_grad():  # labels = predictions, so every sample starts unbroken
            y = model(x).argmax(1)
        flops = k * step_flops(model, x, y) if cuda else 0
        times = timeit_all(methods(model, x, y, k, device, args.skip), device, args.repeats)
        report(bs, times, flops, peak)

def methods(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, k: int,
            device: torch.device, skip: list[str]) -> dict[str, Callable[[], object]]:
    """The floor, arange's APGD and the peers' on one batch."""
    bs = x.shape[0]
    floor = floor_fn(model, x, y, k)
    apgd = APGD(steps=k, restarts=1, loss="ce")
    threat = ThreatModel(Norm.linf, EPS)
    obj = Misclassification()
    gen = torch.Generator(device=device).manual_seed(0)
    fns: dict[str, Callable[[], object]] = {
        "floor": floor, "arange": lambda: apgd.run(model, x, y, threat, obj, gen)}
    if "art" not in skip:
        from art.attacks.evasion import AutoProjectedGradientDescent
        clf = art_classifier(model, x, device)
        art_apgd = AutoProjectedGradientDescent(clf, norm=np.inf, eps=EPS, eps_step=2 * EPS,
                                                max_iter=k, nb_random_init=1, batch_size=bs,
                                                loss_type="cross_entropy", verbose=False)
        xn, yn = x.cpu().numpy(), y.cpu().numpy()
        fns["ART"] = lambda: art_apgd.generate(xn, yn)
    if "torchattacks" not in skip:
        try:
            import torchattacks
        except ImportError:
            print('# torchattacks not installed (pip install "arange[bench]"): skipped')
        else:
            ta = torchattacks.APGD(model, norm="Linf", eps=EPS, steps=k, n_restarts=1, seed=0,
                                   loss="ce")
            fns["torchattacks"] = lambda: ta(x, y)
    return fns


if __name__ == "__main__":
    main()
