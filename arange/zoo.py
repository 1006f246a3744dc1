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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

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
    folder = cache_dir() / "zoo"
    path = folder / f"{model}-{dataset}-{key}.safetensors"
    meta_path = path.with_suffix(".json")
    if path.is_file() and meta_path.is_file():
        info = json.loads(meta_path.read_text())
        if info.get("sha256") == weights_sha256(path):
            return ZooModel(path, info["sha256"], info)
        log.warning("cached weights %s do not match their record; retraining", path)
    train = load_dataset(dataset, "train", **dataset_options)
    test = load_dataset(dataset, "test", **dataset_options)
    torch.manual_seed(seed)
    net = build_model(model, in_channels=train.channels, num_classes=train.num_classes,
                      image_size=train.image_size, mean=train.mean, std=train.std,
                      params=model_params)
    t0 = time.perf_counter()
    train_classifier(net, train, recipe, seed, device, progress=progress,
                     checkpoint=folder / f".{path.stem}.partial.pt",
                     desc=f"training {model} on {dataset}")
    seconds = time.perf_counter() - t0
    acc = evaluate_accuracy(net, test, device)
    sha = save_weights(net, path, metadata={"model": model, "dataset": dataset})
    info = {"model": model, "model_params": model_params, "dataset": dataset,
            "dataset_options": dataset_options, "recipe": asdict(recipe), "seed": seed,
            "test_accuracy": acc, "train_seconds": round(seconds, 2), "sha256": sha,
            "device": str(device), "torch": torch.__version__}
    atomic_write_json(meta_path, info)
    log.info("trained %s on %s in %.1fs: test accuracy %.4f", model, dataset, seconds, acc)
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
                     checkpoint: Path | None = None, desc: str = "training") -> None:
    """Train ``model`` in place with ``recipe``; resumable from ``checkpoint`` per epoch."""
    from tqdm.auto import tqdm

    model.to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=0.9,
                          weight_decay=recipe.weight_decay, nesterov=True)
    steps_per_epoch = (len(data) + recipe.batch_size - 1) // recipe.batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe.lr,
                                                total_steps=recipe.epochs * steps_per_epoch)
    start_epoch = 0
    if checkpoint is not None and checkpoint.is_file():
        try:
            state = torch.load(checkpoint, map_location="cpu", weights_only=True)
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["opt"])
            sched.load_state_dict(state["sched"])
            start_epoch = int(state["epoch"])
            log.info("resuming %s from epoch %d", desc, start_epoch)
        except Exception as e:  # a torn checkpoint only costs the work since the last epoch
            log.warning("ignoring unreadable training checkpoint %s: %s", checkpoint, e)
            start_epoch = 0
    x_all, y_all = data.x.to(device), data.y.to(device)
    bar = tqdm(total=recipe.epochs * steps_per_epoch, initial=start_epoch * steps_per_epoch,
               desc=desc, disable=not progress, unit="batch", leave=False)
    for epoch in range(start_epoch, recipe.epochs):
        gen = torch.Generator().manual_seed(seed * 1000 + epoch)
        order = torch.randperm(len(data), generator=gen).to(device)
        for i in range(steps_per_epoch):
            idx = order[i * recipe.batch_size:(i + 1) * recipe.batch_size]
            xb = _shift(x_all[idx], recipe.shift, gen)
            loss = F.cross_entropy(model(xb), y_all[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
        bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}")
        if checkpoint is not None and epoch + 1 < recipe.epochs:
            checkpoint.parent.mkdir(parents=True, exist_ok=True)
            tmp = checkpoint.with_suffix(".tmp")
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(),
                        "sched": sched.state_dict(), "epoch": epoch + 1}, tmp)
            os.replace(tmp, checkpoint)
    bar.close()
    model.eval()
    if checkpoint is not None and checkpoint.is_file():
        checkpoint.unlink()


@torch.inference_mode()
def evaluate_accuracy(model: nn.Module, data: ImageDataset, device: torch.device,
                      batch_size: int = 512) -> float:
    model.to(device).eval()
    correct = 0
    for i in range(0, len(data), batch_size):
        xb = data.x[i:i + batch_size].to(device)
        correct += int((model(xb).argmax(1) == data.y[i:i + batch_size].to(device)).sum())
    return correct / max(1, len(data))
