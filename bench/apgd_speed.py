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

from collections.abc import Callable

import numpy as np
import torch
from pgd_speed import (
    EPS,
    art_classifier,
    floor_fn,
    run_bench,
)

from arange.attacks import APGD, Misclassification
from arange.threat import Norm, ThreatModel

PEERS = ("art", "torchattacks")


def main() -> None:
    run_bench(__doc__, "APGD-{k} (CE)", methods, steps=20, repeats=3, peers=PEERS,
              labels="predicted")


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
