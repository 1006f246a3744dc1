"""Reading and writing checkpoints without pickle.

safetensors files are preferred; ``.pt``/``.pth`` files are read with
``torch.load(weights_only=True)``, which refuses arbitrary pickled objects.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import torch
from torch import nn

from ..errors import WeightsError


def weights_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        try:
            return load_file(str(path))
        except Exception as e:
            raise WeightsError(f"cannot read safetensors file {path}: {e}") from e
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise WeightsError(
            f"cannot read {path} as a weights-only checkpoint ({e}); save a state_dict with "
            "torch.save(model.state_dict(), path) or use safetensors") from e
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path} does not hold a state_dict of tensors")
    return obj


def load_weights(model: nn.Module, path: str | Path) -> str:
    """Load ``path`` into ``model`` (strictly) and return the file's sha256.

    The state dict may be the wrapper's (keys ``backbone.*``, ``mean``, ``std``) or the bare
    backbone's; a ``module.`` prefix from DataParallel is stripped.
    """
    path = Path(path)
    state = _read_state_dict(path)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    target: nn.Module = model
    if hasattr(model, "backbone") and not any(k.startswith("backbone.") for k in state):
        target = model.backbone  # bare backbone checkpoint; keep the wrapper's normalisation
    try:
        target.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0:3]
        raise WeightsError(f"{path} does not fit the model: {' '.join(first)}") from e
    return weights_sha256(path)


# Prefixes that training wrappers put in front of a network's keys: DataParallel / DDP,
# torch.compile, Lightning-style modules, arange's own normalising wrapper.
WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.", "net.", "backbone.")


def map_state_keys(state: dict[str, torch.Tensor], expected: list[str]
                   ) -> tuple[dict[str, torch.Tensor], str | None]:
    """``state`` with its keys renamed to ``expected`` by removing wrapper prefixes (any
    number of :data:`WRAPPER_PREFIXES`, or one prefix all keys share) and/or adding the one
    prefix all expected keys share; (state, description of the renaming or None)."""
    want = set(expected)
    if set(state) == want:
        return state, None

    def strips(keys: list[str]) -> list[str]:
        out = [""]
        prefix = ""
        while True:
            heads = {k[len(prefix):].split(".", 1)[0] for k in keys}
            if len(heads) != 1 or not all("." in k[len(prefix):] for k in keys):
                break
            prefix += heads.pop() + "."
            out.append(prefix)
        return out

    adds = [p for p in strips(expected) if p]
    for cut in strips(list(state)):
        for add in ["", *adds]:
            renamed = {add + k[len(cut):]: v for k, v in state.items()}
            if set(renamed) == want:
                what = [f"removed prefix {cut!r}" if cut else "", f"added prefix {add!r}"
                        if add else ""]
                return renamed, f"{len(state)} keys: " + ", ".join(w for w in what if w)
    return state, None


def load_state_mapped(model: nn.Module, path: str | Path) -> tuple[str, str | None]:
    """Load a state-dict file into ``model`` strictly, renaming wrapper prefixes when that makes
    the keys fit; returns (sha256 of the file, the renaming done or None). Keys that do not fit
    are named in the error."""
    path = Path(path)
    state = _read_state_dict(path)
    expected = list(model.state_dict())
    state, renamed = map_state_keys(state, expected)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in set(expected)]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:4])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:4])})")
        raise WeightsError(f"{path} does not fit the model: keys {'; '.join(parts)}; check "
                           "target.model and target.model_params (e.g. num_classes)")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = " ".join(str(e).strip().splitlines()[0:3])
        raise WeightsError(f"{path} does not fit the model: {first[:400]}") from e
    return weights_sha256(path), renamed


def save_weights(model: nn.Module, path: str | Path, metadata: dict[str, str] | None = None) -> str:
    """Atomically write ``model``'s state dict as safetensors; return its sha256."""
    from safetensors.torch import save_file
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(state, tmp, metadata=metadata)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return weights_sha256(path)
