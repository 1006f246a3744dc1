"""The classification target: the evaluation data and the model, from arange's registry and zoo
or brought by the reviewer (:mod:`arange.models.sources`), with its preprocessing and the map
from the dataset's classes to the model's outputs, all checked before any attack runs."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from arange.core.safeio import load_json, short
from arange.core.scenario import code_trusted
from arange.data import ImageDataset, load_dataset, resize_crop
from arange.errors import WeightsError
from arange.models import ImageClassifier, build_model, load_weights
from arange.models.sources import (
    ModelSource,
    ModelSourceError,
    load_model_source,
    parse_model_source,
)
from arange.registry import DATASETS, accepted_params
from arange.speed import place_model
from arange.zoo import Recipe, zoo_weights

from .scenario import Preprocessing, Scenario


@dataclass
class PreparedTarget:
    model: nn.Module
    data: ImageDataset
    weights_source: str
    weights_sha256: str
    model_info: dict[str, Any] = field(default_factory=dict)
    # The deployed artifact that scores (an ONNX file on onnxruntime), when it is not the model
    # the attacks differentiate (its converted twin).
    runtime: nn.Module | None = None
    # Where the model came from (``target.model`` parsed): the registry, or a format it ships in.
    source: ModelSource = field(default_factory=lambda: ModelSource("registry", ""))


def prepare_target(s: Scenario, device: torch.device, progress: bool = True) -> PreparedTarget:
    """Load the evaluation data and the model (training it in the zoo if needed)."""
    t = s.target
    src = parse_model_source(t.model)
    if not src.registry:
        return _prepare_brought_model(s, src, device)
    data = load_dataset(t.dataset.name, t.dataset.split, **selected(t, t.dataset.options)
                        ).subset(t.samples)
    torch.manual_seed(s.seed)
    model = build_model(t.model, in_channels=data.channels, num_classes=data.num_classes,
                        image_size=data.image_size, mean=data.mean, std=data.std,
                        params=t.model_params)
    info: dict[str, Any] = {}
    if t.weights == "zoo":
        recipe = Recipe(**t.training.model_dump())
        zm = zoo_weights(t.model, t.model_params, t.dataset.name, t.dataset.options, recipe,
                         s.seed, device, progress=progress)
        sha = load_weights(model, zm.path)
        source, info = f"zoo:{zm.path.name}", zm.info
    elif t.weights == "random":
        sha, source = hashlib.sha256(b"random-init").hexdigest(), "random"
        info = {"note": "randomly initialised; for plumbing tests only"}
    else:
        sha = load_weights(model, t.weights)
        source = t.weights
    place_model(model, device).eval()  # channels_last on CUDA
    return PreparedTarget(model, map_labels(t, data, model, device), source, sha, info,
                          source=src)


def _prepare_brought_model(s: Scenario, src: ModelSource, device: torch.device
                           ) -> PreparedTarget:
    """A model the reviewer brings (torchvision, timm, a file, their class): loaded as it
    ships, wrapped with its declared preprocessing; data resized and cropped to its input."""
    t = s.target
    torch.manual_seed(s.seed)
    weights = None if t.weights == "zoo" else t.weights
    try:
        loaded = load_model_source(src, t.model_params, weights, trust_code=code_trusted(s))
    except WeightsError as e:
        raise ModelSourceError(f"target.weights: {e}") from e
    prep = t.preprocessing or pretrained_size(loaded.info)
    data = load_target_data(t, prep)
    mean, std, origin = normalisation(prep, loaded.info, data.channels)

    def wrap(net: nn.Module) -> ImageClassifier:
        return ImageClassifier(net, mean, std, prep.scale, prep.channels == "bgr")

    model = place_model(wrap(loaded.net), device).eval()
    runtime = wrap(loaded.runtime).to(device).eval() if loaded.runtime is not None else None
    info = {**loaded.info, "preprocessing": {
        "resize": prep.resize, "crop": prep.crop, "input_size": data.image_size,
        "mean": list(mean), "std": list(std), "normalisation_from": origin,
        "scale": prep.scale, "channels": prep.channels}}
    data = map_labels(t, data, runtime or model, device, info)
    source = weights if weights is not None else src.spelling()
    return PreparedTarget(model, data, source, loaded.sha256, info, runtime, src)


def pretrained_size(info: dict[str, Any]) -> Preprocessing:
    """For a scenario that declares no preprocessing: the input size of timm's pretrained
    config (resize to ``crop / crop_pct``, centre crop to its input size), else none."""
    cfg = info.get("pretrained_cfg", {})
    size = cfg.get("input_size")
    if not (isinstance(size, (list, tuple)) and size and isinstance(size[-1], int)):
        return Preprocessing()
    crop = int(size[-1])
    pct = cfg.get("crop_pct")
    resize = round(crop / pct) if isinstance(pct, float) and 0 < pct <= 1 else crop
    return Preprocessing(resize=resize, crop=crop)


def load_target_data(t: Any, prep: Preprocessing) -> ImageDataset:
    """The evaluation data, resized (shorter side) and centre-cropped as ``prep`` says: by the
    dataset's own decoder when it takes ``resize`` / ``crop`` (imagefolder: from the files),
    else on the decoded tensors."""
    opts = dict(t.dataset.options)
    resample = prep.resize is not None or prep.crop is not None
    if resample and {"resize", "crop"} <= set(accepted_params(DATASETS.get(t.dataset.name))):
        opts.setdefault("resize", prep.resize)
        opts.setdefault("crop", prep.crop)
        resample = False
    data = load_dataset(t.dataset.name, t.dataset.split, **selected(t, opts)).subset(t.samples)
    if resample:
        data = resize_crop(data, prep.resize, prep.crop)
    return data


def selected(t: Any, options: dict[str, Any]) -> dict[str, Any]:
    """Dataset options that decode only the ``samples`` the run scores, for datasets that take
    a ``limit`` (the files are chosen in a fixed order first, then only those are read)."""
    if t.samples is None or "limit" not in accepted_params(DATASETS.get(t.dataset.name)):
        return options
    limit = options.get("limit")
    return {**options, "limit": t.samples if limit is None else min(limit, t.samples)}


def normalisation(prep: Preprocessing, info: dict[str, Any], channels: int
                  ) -> tuple[tuple[float, ...], tuple[float, ...], str]:
    """(mean, std, where they come from): the scenario's, else timm's pretrained config,
    else none (the model takes the [0, 1] image scaled by ``prep.scale``)."""
    if prep.mean is not None and prep.std is not None:
        mean, std, origin = tuple(prep.mean), tuple(prep.std), "scenario"
    elif "mean" in info.get("pretrained_cfg", {}):
        cfg = info["pretrained_cfg"]
        mean, std, origin = tuple(cfg["mean"]), tuple(cfg["std"]), "timm pretrained_cfg"
    else:
        mean, std, origin = (0.0,), (1.0,), "none"
    if len(mean) == 1:
        mean, std = mean * channels, std * channels
    if len(mean) != channels:
        raise ModelSourceError(f"target.preprocessing: {len(mean)} mean/std values for "
                               f"{channels}-channel images")
    return mean, std, origin


def map_labels(t: Any, data: ImageDataset, model: nn.Module, device: torch.device,
               info: dict[str, Any] | None = None) -> ImageDataset:
    """The data with labels as the model's output indices: checked against the model's
    number of outputs (one forward pass on one image) before any attack runs."""
    with torch.inference_mode():
        outputs = int(model(data.x[:1].to(device)).shape[1]) if len(data) else data.num_classes
    if t.labels is None:
        if outputs != data.num_classes:
            raise ModelSourceError(
                f"target.model has {outputs} outputs but the dataset has {data.num_classes} "
                "classes; map the dataset's classes to the model's outputs with target.labels")
        return data
    mapping = read_label_map(t.labels)
    names = data.class_names or [str(i) for i in range(data.num_classes)]
    missing = [n for n in names if n not in mapping]
    if missing:
        raise ModelSourceError(f"target.labels: no output index for dataset class(es) "
                               f"{', '.join(repr(m) for m in missing[:5])}"
                               f"{' ...' if len(missing) > 5 else ''}")
    index = [mapping[n] for n in names]
    bad = [f"{n} -> {i}" for n, i in zip(names, index, strict=True) if not 0 <= i < outputs]
    if bad:
        raise ModelSourceError(f"target.labels: indices outside the model's {outputs} outputs:"
                               f" {', '.join(bad[:5])}")
    if info is not None:
        info["labels"] = dict(zip(names, index, strict=True))
    return replace(data, y=torch.tensor(index, dtype=torch.long)[data.y])


def read_label_map(labels: dict[str, int] | str) -> dict[str, int]:
    """A label map from the scenario, or from a JSON file: ``{name: index}`` or ImageNet's
    ``{"index": [wnid, name]}`` (both the wnid and the name then map to the index)."""
    if isinstance(labels, dict):
        return dict(labels)
    raw = load_json(labels, "label map", error=ModelSourceError)
    out: dict[str, int] = {}
    if isinstance(raw, dict):
        for k, v in raw.items():
            if isinstance(v, int) and not isinstance(v, bool):
                out[str(k)] = v
            elif isinstance(v, list) and str(k).isdigit() and all(isinstance(n, str) for n in v):
                out.update({n: int(k) for n in v})
            else:
                raise ModelSourceError(f"{labels}: entry {short(k, 40)} is neither name: index "
                                       "nor \"index\": [wnid, name]")
        return out
    raise ModelSourceError(f"{labels}: a label map is a JSON object ({{name: index}})")




def describe_target(s: Scenario) -> list[str]:
    """What ``arange run`` will load for the target, without loading it (``arange
    validate``): the format and file, the weights, the preprocessing and the label map."""
    from arange.models.sources import FORMATS, file_sha256

    t = s.target
    src = parse_model_source(t.model)
    if src.registry:
        weights = "trained in the zoo (cached)" if t.weights == "zoo" else t.weights
        return [f"model: registry {t.model} {t.model_params or ''}".rstrip(),
                f"weights: {weights}"]
    what, inside = FORMATS[src.kind]
    lines = [f"model: {what}: {src.path or src.name}"]
    if src.path is not None:
        lines[-1] += f" (sha256 {file_sha256(src.path)[:16]})"
    if src.kind == "onnx":
        lines.append("scoring: onnxruntime on this file; attacks differentiate a torch twin "
                     "converted from it (onnx2torch), checked against it")
    if src.runs_code:
        lines.append("runs your code: this file is imported only with 'arange run "
                     "--trust-code'")
    if t.model_params:
        lines.append(f"model_params: {t.model_params}")
    if inside:
        lines.append("weights: inside the file")
    else:
        lines.append(f"weights: {t.weights}" + ("" if t.weights == "random" else
                                                 f" (sha256 {file_sha256(t.weights)[:16]})"))
    prep = t.preprocessing or Preprocessing()
    norm = f"mean {prep.mean}, std {prep.std}" if prep.mean is not None else (
        "mean/std from timm's pretrained config" if src.kind == "timm" else "no mean/std")
    size = f"resize {prep.resize}, crop {prep.crop or prep.resize}, " \
        if prep.resize or prep.crop else ""
    lines.append(f"preprocessing: {size}{norm}, value range x{prep.scale:g}, {prep.channels}")
    if t.labels is not None:
        mapping = read_label_map(t.labels)
        where = t.labels if isinstance(t.labels, str) else "the scenario"
        lines.append(f"labels: {len(mapping)} names mapped to model outputs (from {where})")
    return lines
