"""Cached, resumable training for the forensics range (the GAN inpainter and the detectors).

The cache follows :mod:`arange.zoo`: ``$ARANGE_CACHE_DIR/forensics/<kind>-<key>.safetensors``
plus a JSON record, where the key is a content hash of everything that determines the weights
(recipe, data fingerprint, seed, and the weights of any model whose output is training data).
Training shows a progress bar, writes an atomic checkpoint after every epoch and resumes from it
after an interruption; finished weights are safetensors (never pickle).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from arange.models.weights import load_weights, save_weights, weights_sha256
from arange.store import atomic_write_json
from arange.zoo import cache_dir, load_checkpoint, save_checkpoint

log = logging.getLogger(__name__)
TRAINING_VERSION = 1


@dataclass
class Trained:
    path: Path
    sha256: str
    info: dict[str, Any]


def cache_key(spec: dict[str, Any]) -> str:
    blob = json.dumps({**spec, "training_version": TRAINING_VERSION}, sort_keys=True,
                      default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


@dataclass
class Trainer:
    """What :func:`train_cached` drives: the model to save, everything whose state must survive
    a resume (optimisers, schedulers, other networks), and one epoch of work."""

    model: nn.Module
    state: dict[str, Any]              # name -> object with state_dict()/load_state_dict()
    epochs: int
    steps_per_epoch: int
    run_epoch: Callable[[int, Any], dict[str, float]]   # (epoch, progress bar) -> logs


def train_cached(kind: str, spec: dict[str, Any], trainer: Trainer, *, progress: bool = True,
                 desc: str = "training") -> Trained:
    """Load the cached weights for ``spec`` into ``trainer.model``, or train and cache them."""
    from tqdm.auto import tqdm

    key = cache_key(spec)
    folder = cache_dir() / "forensics"
    path = folder / f"{kind}-{key}.safetensors"
    meta_path = path.with_suffix(".json")
    if path.is_file() and meta_path.is_file():
        try:
            info = json.loads(meta_path.read_text())
        except (OSError, json.JSONDecodeError):
            info = {}
        if info.get("sha256") == weights_sha256(path):
            load_weights(trainer.model, path)
            trainer.model.eval()
            return Trained(path, info["sha256"], {**info, "cached": True})
        log.warning("cached weights %s do not match their record; retraining", path)
    checkpoint = folder / f".{path.stem}.partial.pt"
    parts = {"model": trainer.model, **trainer.state}
    start = load_checkpoint(checkpoint, parts, desc)
    t0 = time.perf_counter()
    bar = tqdm(total=trainer.epochs * trainer.steps_per_epoch,
               initial=start * trainer.steps_per_epoch, desc=desc, disable=not progress,
               unit="batch", leave=False, dynamic_ncols=True)
    logs: dict[str, float] = {}
    trainer.model.train()
    for epoch in range(start, trainer.epochs):
        logs = trainer.run_epoch(epoch, bar)
        bar.set_postfix({k: f"{v:.3f}" for k, v in logs.items()})
        if epoch + 1 < trainer.epochs:
            save_checkpoint(checkpoint, parts, epoch + 1)
    bar.close()
    trainer.model.eval()
    seconds = time.perf_counter() - t0
    sha = save_weights(trainer.model, path, metadata={"kind": kind, "key": key})
    info = {"kind": kind, "key": key, "spec": spec, "sha256": sha,
            "train_seconds": round(seconds, 2), "resumed_from_epoch": start,
            "final": {k: round(float(v), 5) for k, v in logs.items()},
            "torch": torch.__version__}
    atomic_write_json(meta_path, info)
    if checkpoint.is_file():
        checkpoint.unlink()
    log.info("%s: done in %.1fs (%s)", desc, seconds, path.name)
    return Trained(path, sha, {**info, "cached": False})


def detector_loss(net: nn.Module, x: torch.Tensor, m: torch.Tensor,
                  image_weight: float = 0.5) -> torch.Tensor:
    """Pixel BCE on the map plus the image-level BCE of the score read off the map."""
    import torch.nn.functional as F
    logits = net(x)
    pix = F.binary_cross_entropy_with_logits(logits, m)
    img = F.binary_cross_entropy_with_logits(net.image_logit(logits),  # type: ignore[operator]
                                             (m.flatten(1).amax(dim=1) > 0).float())
    return pix + image_weight * img


def train_detector(net: nn.Module, images: np.ndarray, masks: np.ndarray, *, epochs: int,
                   batch_size: int, lr: float, weight_decay: float, seed: int,
                   device: torch.device, spec: dict[str, Any], progress: bool = True,
                   desc: str = "training detector") -> Trained:
    """Adam with a one-cycle schedule on the forged training set (flips as augmentation)."""
    from .data import to_tensor

    torch.manual_seed(seed)
    net.to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    steps = max(1, len(images) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps,
                                                pct_start=0.2)
    x_all = to_tensor(images)
    m_all = torch.from_numpy(masks)[:, None].float()

    def run_epoch(epoch: int, bar: Any) -> dict[str, float]:
        gen = torch.Generator().manual_seed(seed * 1000 + epoch)
        order = torch.randperm(len(images), generator=gen)
        total = 0.0
        for i in range(steps):
            idx = order[i * batch_size:(i + 1) * batch_size]
            xb, mb = x_all[idx], m_all[idx]
            flip = torch.randint(0, 4, (1,), generator=gen).item()
            if flip & 1:
                xb, mb = xb.flip(-1), mb.flip(-1)
            if flip & 2:
                xb, mb = xb.flip(-2), mb.flip(-2)
            loss = detector_loss(net, xb.to(device), mb.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach())
            bar.update(1)
        return {"loss": total / steps}

    return train_cached("detector", spec, Trainer(net, {"opt": opt, "sched": sched}, epochs,
                                                  steps, run_epoch), progress=progress,
                        desc=desc)
