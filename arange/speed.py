"""Device-side speed features that never change what is scored.

- :func:`place_model` / :func:`place_batch`: ``channels_last`` memory format on CUDA (faster
  convolutions with cuDNN/tensor cores); a no-op on CPU, where NCHW is the fast path.
- :class:`BatchSize`: ``target.batch_size: auto`` starts large on CUDA and halves when a batch runs
  out of device memory; the batch is retried with the generator state it started with, so the
  outcome equals a run that used the smaller size from that batch on. On CPU ``auto`` is a fixed
  size (there is no device memory to fill).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

log = logging.getLogger(__name__)

AUTO = "auto"
AUTO_START_CUDA = 512  # first try on CUDA; halves on out-of-memory
AUTO_CPU = 128         # CPU: large batches buy nothing once the cores are busy


def place_model(model: nn.Module, device: torch.device) -> nn.Module:
    """Move ``model`` to ``device``; on CUDA also switch 4-D weights to ``channels_last``."""
    model = model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    return model


def place_batch(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Move an NCHW batch to ``device`` (``channels_last`` on CUDA); values are unchanged."""
    x = x.to(device, non_blocking=device.type == "cuda")
    if device.type == "cuda" and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def is_out_of_memory(e: BaseException) -> bool:
    return isinstance(e, torch.cuda.OutOfMemoryError)


@dataclass
class BatchSize:
    """The batch size jobs use; ``auto`` ones shrink on CUDA out-of-memory and remember it."""

    size: int
    auto: bool = False

    @classmethod
    def resolve(cls, spec: int | str, device: torch.device) -> BatchSize:
        if spec != AUTO:
            return cls(int(spec))
        return cls(AUTO_START_CUDA if device.type == "cuda" else AUTO_CPU, auto=True)

    def can_shrink(self, e: BaseException) -> bool:
        return self.auto and self.size > 1 and is_out_of_memory(e)

    def halve(self) -> int:
        self.size = max(1, self.size // 2)
        torch.cuda.empty_cache()
        log.warning("out of device memory: batch size down to %d", self.size)
        return self.size


def rng_state(gen: torch.Generator | None, device: torch.device) -> tuple[object, ...]:
    """The random state a batch starts from: the attack's generator and torch's global ones
    (randomised defenses draw from those)."""
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return (gen.get_state() if gen is not None else None, torch.get_rng_state(), cuda)


def restore_rng(gen: torch.Generator | None, state: tuple[object, ...],
                device: torch.device) -> None:
    g, cpu, cuda = state
    if gen is not None and isinstance(g, torch.Tensor):
        gen.set_state(g)
    if isinstance(cpu, torch.Tensor):
        torch.set_rng_state(cpu)
    if cuda is not None and isinstance(cuda, torch.Tensor):
        torch.cuda.set_rng_state(cuda, device)
