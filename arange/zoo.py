"""Train-on-demand model zoo.

``weights: zoo`` in a scenario means: the standard recipe for this (model, dataset, seed), trained
here on the dataset's train split the first time it is needed and cached under
``$ARANGE_CACHE_DIR`` (default ``~/.cache/arange``). The cache key is a content hash of everything
that determines the weights, so a changed recipe never reuses stale weights. Training is
deterministic given the seed on the same hardware, shows a progress bar and resumes from the last
finished epoch if interrupted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .data import ImageDataset, load_dataset
from .models import build_model, save_weights
from .models.weights import weights_sha256
from .store import atomic_write_json

log = logging.getLogger(__name__)
RECIPE_VERSION = 1


def cache_dir() -> Path:
    return Path(os.environ.get("ARANGE_CACHE_DIR") or Path.home() / ".cache" / "arange")


@dataclass(frozen=True)
class Recipe:
    """Standard supervised training: SGD with momentum, one-cycle schedule, shift augmentation."""

    epochs: int = 12
    batch_size: int = 64
    lr: float = 0.05
    weight_decay: float = 5e-4
    shift: int = 2  # random translation in pixels (zero padding); 0 disables augmentation


# (model, inputs, labels, generator) -> the inputs to train on
Perturb = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor]


@dataclass
class ZooModel:
    path: Path
    sha256: str
    info: dict[str, Any]


def zoo_key(model: str, model_params: dict[str, Any], dataset: str,
            dataset_options: dict[str, Any], recipe: Recipe, seed: int) -> str:
    spec = {"model": model, "model_params": model_params, "dataset": dataset,
            "dataset_options": dataset_options, "recipe": asdict(recipe), "seed": seed,
            "recipe_version": RECIPE_VERSION}
    blob = json.dumps(spec, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def zoo_weights(model: str, model_params: dict[str, Any], dataset: str,
                dataset_options: dict[str, Any], recipe: Recipe, seed: int,
                device: torch.device, progress: bool = True) -> ZooModel:
    """Path and sha256 of the cached weights, training them first if needed."""
    key = zoo_key(model, model_params, dataset, dataset_options, recipe, seed)

    def build(checkpoint: Path) -> tuple[nn.Module, dict[str, Any]]:
        train = load_dataset(dataset, "train", **dataset_options)
        torch.manual_seed(seed)
        net = new_model(model, model_params, train)
        train_classifier(net, train, recipe, seed, device, progress=progress,
                         checkpoint=checkpoint, desc=f"training {model} on {dataset}")
        return net, {}

    return cached_weights(f"{model}-{dataset}-{key}", build, device, {
        "model": model, "model_params": model_params, "dataset": dataset,
        "dataset_options": dataset_options, "recipe": asdict(recipe), "seed": seed},
        evaluate_on=(dataset, dataset_options))


def new_model(model: str, model_params: dict[str, Any], data: ImageDataset) -> nn.Module:
    """A freshly initialised ``model`` shaped for ``data``."""
    return build_model(model, in_channels=data.channels, num_classes=data.num_classes,
                       image_size=data.image_size, mean=data.mean, std=data.std,
                       params=model_params)


def cached_weights(stem: str, build: Callable[[Path], tuple[nn.Module, dict[str, Any]]],
                   device: torch.device, record: dict[str, Any],
                   evaluate_on: tuple[str, dict[str, Any]] | None = None) -> ZooModel:
    """Weights cached as ``<cache>/zoo/<stem>.safetensors`` with a JSON record beside them.

    ``stem`` must end in a content key of everything that determines the weights. On a miss,
    ``build(checkpoint)`` trains the module (resuming from ``checkpoint`` if it exists) and
    returns it with extra record fields; the training time, the test accuracy on
    ``evaluate_on`` (dataset name and options) and the weights' sha256 are added to the record,
    which is returned as ``info`` on every later hit too.
    """
    folder = cache_dir() / "zoo"
    path = folder / f"{stem}.safetensors"
    meta_path = path.with_suffix(".json")
    if path.is_file() and meta_path.is_file():
        info = json.loads(meta_path.read_text())
        if info.get("sha256") == weights_sha256(path):
            return ZooModel(path, info["sha256"], info)
        log.warning("cached weights %s do not match their record; retraining", path)
    t0 = time.perf_counter()
    net, extra = build(folder / f".{stem}.partial.pt")
    seconds = time.perf_counter() - t0
    info = {**record, **extra}
    if evaluate_on is not None:
        test = load_dataset(evaluate_on[0], "test", **evaluate_on[1])
        info["test_accuracy"] = evaluate_accuracy(net, test, device)
    sha = save_weights(net, path, metadata={"stem": stem})
    info.update({"train_seconds": round(seconds, 2), "sha256": sha, "device": str(device),
                 "torch": torch.__version__})
    atomic_write_json(meta_path, info)
    log.info("trained %s in %.1fs (test accuracy %s)", stem, seconds, info.get("test_accuracy"))
    return ZooModel(path, sha, info)


def _shift(x: torch.Tensor, pixels: int, gen: torch.Generator) -> torch.Tensor:
    if pixels <= 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (pixels,) * 4)
    dx = torch.randint(0, 2 * pixels + 1, (n,), generator=gen)
    dy = torch.randint(0, 2 * pixels + 1, (n,), generator=gen)
    rows = (dy.view(n, 1) + torch.arange(h).view(1, h)).to(x.device)
    cols = (dx.view(n, 1) + torch.arange(w).view(1, w)).to(x.device)
    idx_n = torch.arange(n, device=x.device).view(n, 1, 1)
    out = padded.permute(0, 2, 3, 1)[idx_n, rows.view(n, h, 1), cols.view(n, 1, w)]
    # Copy into a fresh NCHW buffer: with one channel, .contiguous() would keep the ambiguous
    # channels-last strides of the permuted view, which some CPU conv kernels mishandle.
    result = torch.empty((n, x.shape[1], h, w), dtype=x.dtype, device=x.device)
    result.copy_(out.permute(0, 3, 1, 2))
    return result


def train_classifier(model: nn.Module, data: ImageDataset, recipe: Recipe, seed: int,
                     device: torch.device, progress: bool = True,
                     checkpoint: Path | None = None, desc: str = "training",
                     perturb: Perturb | None = None, bf16: bool = False) -> None:
    """Train ``model`` in place with ``recipe``; resumable from ``checkpoint`` per epoch.

    ``perturb(model, x, y, generator)``, when given, replaces each (augmented) batch by the
    inputs to train on, e.g. adversarial examples (adversarial training); it is called with the
    model in train mode and must not touch parameter gradients. ``bf16`` runs the weight
    update's forward and backward under bfloat16 autocast on CUDA (the perturbation is computed
    in full precision so the training attack is not weakened); it is ignored on other devices.
    """
    from tqdm.auto import tqdm

    model.to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=0.9,
                          weight_decay=recipe.weight_decay, nesterov=True)
    steps_per_epoch = (len(data) + recipe.batch_size - 1) // recipe.batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe.lr,
                                                total_steps=recipe.epochs * steps_per_epoch)
    parts = {"model": model, "opt": opt, "sched": sched}
    start_epoch = load_checkpoint(checkpoint, parts, desc)
    x_all, y_all = data.x.to(device), data.y.to(device)
    amp = bf16 and device.type == "cuda"
    bar = tqdm(total=recipe.epochs * steps_per_epoch, initial=start_epoch * steps_per_epoch,
               desc=desc, disable=not progress, unit="batch", leave=False)
    for epoch in range(start_epoch, recipe.epochs):
        gen = torch.Generator().manual_seed(seed * 1000 + epoch)
        order = torch.randperm(len(data), generator=gen).to(device)
        for i in range(steps_per_epoch):
            idx = order[i * recipe.batch_size:(i + 1) * recipe.batch_size]
            xb = _shift(x_all[idx], recipe.shift, gen)
            if perturb is not None:
                xb = perturb(model, xb, y_all[idx], gen)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                loss = F.cross_entropy(model(xb), y_all[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
        bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}")
        if epoch + 1 < recipe.epochs:
            save_checkpoint(checkpoint, parts, epoch + 1)
    bar.close()
    model.eval()
    if checkpoint is not None and checkpoint.is_file():
        checkpoint.unlink()


def load_checkpoint(path: Path | None, parts: dict[str, Any], desc: str) -> int:
    """Restore ``parts`` (name -> object with ``load_state_dict``) from a training checkpoint
    (weights-only load); return the epoch to resume from (0 when there is none)."""
    if path is None or not path.is_file():
        return 0
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        for name, part in parts.items():
            part.load_state_dict(state[name])
        epoch = int(state["epoch"])
    except Exception as e:  # noqa: BLE001  (a torn checkpoint costs only the last epoch)
        log.warning("ignoring unreadable training checkpoint %s: %s", path, e)
        return 0
    log.info("resuming %s from epoch %d", desc, epoch)
    return epoch


def save_checkpoint(path: Path | None, parts: dict[str, Any], epoch: int) -> None:
    """Atomically write the state of ``parts`` after ``epoch`` finished epochs."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({**{name: part.state_dict() for name, part in parts.items()}, "epoch": epoch}, tmp)
    os.replace(tmp, path)


@torch.inference_mode()
def evaluate_accuracy(model: nn.Module, data: ImageDataset, device: torch.device,
                      batch_size: int = 512) -> float:
    model.to(device).eval()
    correct = 0
    for i in range(0, len(data), batch_size):
        xb = data.x[i:i + batch_size].to(device)
        correct += int((model(xb).argmax(1) == data.y[i:i + batch_size].to(device)).sum())
    return correct / max(1, len(data))
