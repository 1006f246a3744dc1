"""PGD-k speed: arange vs the forward+input-backward floor vs ART, foolbox and torchattacks, in
one process.

Same model, same inputs, same settings (L-inf, eps 8/255, k steps, step 0.25*eps, random start).
The floor is k x (one forward + one backward w.r.t. the input only) of the same model and batch:
no attack can do less work. Methods take turns within each repeat so background load hits all
alike; ratios are medians of per-repeat ratios. Prints images/s, the ratio to the floor and
arange's speed-up over each peer (peer time / arange time); on CUDA also
the achieved TFLOP/s (the floor's FLOPs, counted by torch's FlopCounterMode, over each method's
time) against the device's measured dense-matmul peak at the same precision.

    # CPU (the recorded numbers in bench/README.md):
    OMP_NUM_THREADS=1 python bench/pgd_speed.py --batch-sizes 32 128
    # GPU: CIFAR-size ResNet-18 (3x32x32), batch 256, channels_last as the runner uses it:
    python bench/pgd_speed.py --device cuda --model resnet18 --channels 3 --batch-sizes 64 256

torchattacks is a benchmark-only dependency (pip install "arange[bench]"); missing peers are
skipped with a note.
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
from arange.speed import place_batch, place_model
from arange.threat import Norm, ThreatModel

EPS = 8 / 255
PEERS = ("art", "foolbox", "torchattacks")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timeit_all(fns: dict[str, Callable[[], object]], device: torch.device,
               repeats: int) -> dict[str, list[float]]:
    """Seconds per method and repeat; the methods take turns within each repeat (in a rotating
    order) so background load hits all alike."""
    for fn in fns.values():
        fn()  # warm-up (cuDNN autotuning, allocator, lazy imports)
    _sync(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:  # rotate the order
            t0 = time.perf_counter()
            fns[name]()
            _sync(device)
            times[name].append(time.perf_counter() - t0)
    return times


def report(bs: int, times: dict[str, list[float]], flops: float, peak: float | None) -> None:
    """One line per method: images/s (median time), the median over repeats of the time ratio
    to the floor and of each peer's time over arange's in the same repeat (paired, so load that
    drifts between repeats cancels out)."""
    def ratio(a: str, b: str) -> float:
        return statistics.median(x / y for x, y in zip(times[a], times[b], strict=True))

    for method, ts in times.items():
        t = statistics.median(ts)
        speed = "" if method in ("floor", "arange") else f"{ratio(method, 'arange'):.2f}x"
        line = f"{bs:>5} {method:<12} {bs / t:>9.1f} {ratio(method, 'floor'):>8.3f} {speed:>16}"
        if peak is not None:
            line += f" {flops / t / 1e12:>8.2f} {100 * flops / t / peak:>6.1f}%"
        print(line, flush=True)


def step_flops(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    """FLOPs of one forward + one backward w.r.t. the input (what every PGD step must do)."""
    from torch.utils.flop_counter import FlopCounterMode

    xi = x.clone().requires_grad_(True)
    with FlopCounterMode(display=False) as counter:
        loss = F.cross_entropy(model(xi), y, reduction="sum")
        loss.backward(inputs=[xi])  # autograd.grad trips the counter's module hooks
    return int(counter.get_total_flops())


def matmul_peak(device: torch.device, dtype: torch.dtype = torch.float32, n: int = 8192,
                reps: int = 20) -> float:
    """Measured dense-matmul FLOP/s on ``device`` at ``dtype`` (the precision the attacks use,
    with the current TF32 setting)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    _sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def floor_fn(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
             k: int) -> Callable[[], None]:
    """k x (one forward + one backward w.r.t. the input): the work no k-step attack avoids."""
    def floor() -> None:
        for _ in range(k):
            xi = x.clone().requires_grad_(True)
            loss = F.cross_entropy(model(xi), y, reduction="sum")
            torch.autograd.grad(loss, xi)
    return floor


def art_classifier(model: torch.nn.Module, x: torch.Tensor, device: torch.device) -> object:
    """ART's wrapper around the same model object."""
    from art.estimators.classification import PyTorchClassifier
    return PyTorchClassifier(model, loss=torch.nn.CrossEntropyLoss(),
                             input_shape=tuple(x.shape[1:]), nb_classes=10,
                             clip_values=(0.0, 1.0),
                             device_type="gpu" if device.type == "cuda" else "cpu")


def methods(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, k: int,
            device: torch.device, skip: list[str]) -> dict[str, Callable[[], object]]:
    """The floor, arange's PGD and the peers' at the same settings, each peer called the way its
    documentation shows."""
    bs = x.shape[0]
    floor = floor_fn(model, x, y, k)
    pgd = PGD(steps=k, rel_stepsize=0.25, random_start=True)
    threat = ThreatModel(Norm.linf, EPS)
    obj = Misclassification()
    fns: dict[str, Callable[[], object]] = {
        "floor": floor, "arange": lambda: pgd.run(model, x, y, threat, obj, None)}
    if "art" not in skip:
        from art.attacks.evasion import ProjectedGradientDescent
        clf = art_classifier(model, x, device)
        art_pgd = ProjectedGradientDescent(clf, norm=np.inf, eps=EPS, eps_step=0.25 * EPS,
                                           max_iter=k, num_random_init=1, batch_size=bs,
                                           verbose=False)
        xn, yn = x.cpu().numpy(), y.cpu().numpy()
        fns["ART"] = lambda: art_pgd.generate(xn, yn)
    if "foolbox" not in skip:
        import foolbox as fb
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fmodel = fb.PyTorchModel(model, bounds=(0, 1), device=device)
        fb_pgd = fb.attacks.LinfPGD(rel_stepsize=0.25, steps=k, random_start=True)
        fns["foolbox"] = lambda: fb_pgd(fmodel, x, y, epsilons=EPS)
    if "torchattacks" not in skip:
        try:
            import torchattacks
        except ImportError:
            print('# torchattacks not installed (pip install "arange[bench]"): skipped')
        else:
            ta_pgd = torchattacks.PGD(model, eps=EPS, alpha=0.25 * EPS, steps=k,
                                      random_start=True)
            fns["torchattacks"] = lambda: ta_pgd(x, y)
    return fns


Methods = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor, int, torch.device, list[str]],
                  dict[str, Callable[[], object]]]


def run_bench(doc: str | None, title: str, methods_fn: Methods, steps: int, repeats: int,
              peers: tuple[str, ...], labels: str = "random") -> None:
    """The shared driver of the attack benchmarks: parse the options, build the model, time
    ``methods_fn``'s methods at each batch size and print the table. ``title`` is formatted
    with ``k`` (the steps); ``labels="predicted"`` uses the model's own predictions as labels,
    so every sample starts unbroken."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--channels", type=int, default=1)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 128])
    ap.add_argument("--steps", type=int, default=steps)
    ap.add_argument("--repeats", type=int, default=repeats)
    ap.add_argument("--skip", nargs="*", default=[], choices=peers)
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    c = args.channels
    model = build_model(args.model, in_channels=c, num_classes=10, image_size=args.size,
                        mean=(0.5,) * c, std=(0.25,) * c)
    model = place_model(model, device).eval()  # channels_last on CUDA, as the runner does
    for p in model.parameters():
        p.requires_grad_(False)
    k = args.steps
    cuda = device.type == "cuda"
    peak = matmul_peak(device) if cuda else None
    name = torch.cuda.get_device_name(device) if cuda else "cpu"
    print(f"# {title.format(k=k)} L-inf eps=8/255, {args.model} on {c}x{args.size}x{args.size}, "
          f"device={name}, torch {torch.__version__}, threads={torch.get_num_threads()}")
    if peak is not None:
        print(f"# measured fp32 matmul peak {peak / 1e12:.1f} TFLOP/s "
              f"(TF32 {'on' if torch.backends.cuda.matmul.allow_tf32 else 'off'})")
    head = f"{'batch':>5} {'method':<12} {'img/s':>9} {'x floor':>8} {'arange speed-up':>16}"
    print(head + (f" {'TFLOP/s':>8} {'% peak':>7}" if cuda else ""))
    for bs in args.batch_sizes:
        x = place_batch(torch.rand(bs, c, args.size, args.size), device)
        if labels == "predicted":
            with torch.no_grad():
                y = model(x).argmax(1)
        else:
            y = torch.randint(0, 10, (bs,)).to(device)
        flops = k * step_flops(model, x, y) if cuda else 0
        times = timeit_all(methods_fn(model, x, y, k, device, args.skip), device, args.repeats)
        report(bs, times, flops, peak)


def main() -> None:
    run_bench(__doc__, "PGD-{k}", methods, steps=10, repeats=5, peers=PEERS)


if __name__ == "__main__":
    main()
