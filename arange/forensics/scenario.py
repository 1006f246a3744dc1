"""The ``forgery_localization`` scenario: inpainting-forgery detectors scored per inpainter, under
benign perturbations and adversarial evasion.

Example (see scenarios/inpainting_forensics.yaml)::

    name: inpainting_forensics
    task: forgery_localization
    target:
      detector: residual          # the detector the attacks aim at (a label below)
      dataset: {name: embedded, options: {image_size: 128}}
      crop: 64                    # images are crop x crop tiles
    inpainters:                   # the forgers; train_inpainters are "seen", the rest "unseen"
      - {name: telea}
      - {name: biharmonic}
    train_inpainters: [telea]
    detectors:
      - {label: residual, name: noise_residual}
      - {label: rgb_only, name: noise_residual, params: {residual_stem: false}}
    robustness:
      - {perturbation: jpeg, strengths: [95, 75, 50]}
    attacks:
      - {name: pgd, eps: [2/255, 8/255], params: {steps: 10}}

The schema is strict like the classification one, and errors name the file, the path inside it
and the fix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from arange.core.scenario import (
    AttackSpecBase,
    Name,
    Normalisation,
    ScenarioBase,
    Strict,
    build_component,
    check_attack,
    check_choice,
    check_component,
    check_gate_rule,
    check_labels,
    fail,
    load_task_scenario,
    number_list,
)
from arange.errors import RegistryError
from arange.registry import suggest

TASK = "forgery_localization"
PERTURBATIONS = {
    # name: (what a strength is, lower bound, upper bound, integer)
    "jpeg": ("JPEG quality", 1.0, 100.0, True),
    "resize": ("scale factor of a down-and-up resize", 0.1, 0.99, False),
    "noise": ("standard deviation of Gaussian noise in pixel units of [0, 1]", 1e-6, 0.5,
              False),
    "blur": ("Gaussian blur kernel size (odd; sigma from the size, as OpenCV's)", 3.0, 51.0,
             True),
}


class ForgeryDataset(Strict):
    name: str = "embedded"
    options: dict[str, Any] = Field(default_factory=lambda: {"image_size": 128})


class MaskSpec(Strict):
    kinds: list[Literal["brush", "box"]] = Field(default_factory=lambda: ["brush", "box"],
                                                 min_length=1)
    min_area: float = Field(0.05, gt=0, lt=1)
    max_area: float = Field(0.40, gt=0, lt=1)


class ForgeryTarget(Strict):
    detector: str | None = None            # label of the attacked detector (default: first)
    dataset: ForgeryDataset = Field(default_factory=ForgeryDataset)
    crop: int = Field(64, ge=16, le=1024)
    test_fraction: float = Field(0.25, gt=0, lt=1)   # of the source photographs
    test_images: int | None = Field(96, ge=4)        # at most this many test tiles
    masks: MaskSpec = Field(default_factory=MaskSpec)
    train_patches: int = Field(1600, ge=8)           # forged training set size
    real_fraction: float = Field(0.25, ge=0, lt=1)   # untouched share of the training set
    batch_size: int = Field(64, ge=1, le=65536)      # evaluation batch size
    # your forgery set: images larger than this are scored in overlapping window x window
    # tiles (memory bounded by the window); None scores every image whole
    window: int | None = Field(None, ge=16, le=8192)
    examples: int = Field(8, ge=0, le=256)           # images kept per row for the gallery


class ComponentSpec(Strict):
    name: str
    params: dict[str, Any] = Field(default_factory=dict)


class DetectorTraining(Strict):
    epochs: int = Field(5, ge=1, le=10_000)
    batch_size: int = Field(32, ge=1, le=4096)
    lr: float = Field(3e-3, gt=0, le=1)
    weight_decay: float = Field(1e-4, ge=0, le=1)


class DetectorSpec(Strict):
    """A detector: one the range trains (``name``, ``params``, ``training``), or yours
    (``model``: ``torchscript:``, ``export:``, ``onnx:`` or ``python:FILE:CLASS`` with
    ``weights``), which maps a batch of images to one map per pixel (``output``: logits or
    probabilities; a smaller map is upsampled), with an image score pooled from the map
    (``image_score``)."""

    label: Name
    name: str = "noise_residual"
    params: dict[str, Any] = Field(default_factory=dict)
    training: DetectorTraining = Field(default_factory=DetectorTraining)
    model: str | None = None
    weights: str | None = None               # python: detectors' state dict
    output: Literal["logits", "probabilities"] = "logits"
    preprocessing: Normalisation | None = None
    image_score: Literal["topk", "max", "mean"] = "topk"
    topk: float = Field(0.02, gt=0, le=1)    # image_score topk: the share of pixels averaged

    @property
    def key(self) -> str:
        return self.label

    @property
    def brought(self) -> bool:
        return self.model is not None


class PerturbationSpec(Strict):
    perturbation: str
    strengths: list[float]

    @field_validator("strengths", mode="before")
    @classmethod
    def _parse(cls, v: Any) -> list[float]:
        return number_list(v, "[95, 75, 50]")


class AttackSpec(AttackSpecBase):
    """A white-box attack on the target detector that hides the forged region (the attacker
    knows the mask), re-scored after a JPEG trip and crafted on a surrogate for transfer."""

    EPS_EXAMPLE = "[2/255, 8/255]"

    name: Literal["pgd"] = "pgd"
    samples: int | None = Field(48, ge=1)       # forged test images attacked (all inpainters)
    jpeg_quality: int | None = Field(75, ge=1, le=100)     # re-scored after this JPEG too
    # with jpeg_quality: also attack through the JPEG (BPDA: the JPEG in the forward pass, the
    # identity in the backward pass), scored after it - an attacker who knows about the JPEG
    bpda: bool = True
    # also craft on a surrogate and score on the target: the detector labelled ``surrogate``,
    # or by default a copy of the (range-trained) target trained with seed + 1
    transfer: bool = True
    surrogate: str | None = None


class ForensicsGate(Strict):
    name: str | None = None
    metric: str
    detector: str | None = None
    inpainter: str | None = None
    min: float | None = None
    max: float | None = None
    max_drop: float | None = None


class ForensicsScenario(ScenarioBase):
    task: Literal["forgery_localization"] = TASK
    target: ForgeryTarget = Field(default_factory=ForgeryTarget)
    # the range's own forgeries (embedded mode); not used with your forgery set
    inpainters: list[ComponentSpec] = Field(default_factory=list)
    train_inpainters: list[str] = Field(default_factory=list)
    detectors: list[DetectorSpec] = Field(min_length=1)
    robustness: list[PerturbationSpec] = Field(default_factory=list)
    attacks: list[AttackSpec] = Field(default_factory=list, max_length=1)  # one PGD sweep
    gates: list[ForensicsGate] = Field(default_factory=list)

    @property
    def target_detector(self) -> str:
        return self.target.detector or self.detectors[0].label


GATE_METRICS = ("pixel_auc", "f1", "iou", "image_auc", "image_fpr")


def load_forensics_scenario(raw: dict[str, Any], source: str, base_dir: Path | None
                            ) -> ForensicsScenario:
    """Validate a ``task: forgery_localization`` mapping (the :class:`arange.core.task.Task`
    loader)."""
    return load_task_scenario(ForensicsScenario, _detector_paths(raw, base_dir, source),
                              source, base_dir, validate_forensics_scenario)


def _detector_paths(raw: Any, base_dir: Path | None, source: str) -> Any:
    """Brought detectors' model and weights files relative to the scenario file."""
    from arange.models.sources import ModelSourceError, parse_model_source

    dets = raw.get("detectors") if isinstance(raw, dict) else None
    if not isinstance(dets, list):
        return raw
    fixed = []
    for i, d in enumerate(dets):
        if isinstance(d, dict) and isinstance(d.get("model"), str):
            d = dict(d)
            try:
                src = parse_model_source(d["model"], base_dir)
            except ModelSourceError as e:
                raise fail(source, f"detectors[{i}].model", str(e)) from e
            if src.registry or src.kind in ("torchvision", "timm"):
                raise fail(source, f"detectors[{i}].model", "a detector you bring is a file: "
                           "torchscript:FILE, export:FILE, onnx:FILE or python:FILE:CLASS "
                           "(for one the range trains, give name: instead)")
            d["model"] = src.spelling()
            w = d.get("weights")
            if isinstance(w, str) and base_dir is not None and \
                    not Path(w).expanduser().is_absolute():
                d["weights"] = str((base_dir / w).resolve())
        fixed.append(d)
    return {**raw, "detectors": fixed}


def _validate_external(s: ForensicsScenario, source: str) -> None:
    """Your forgery set: your detectors only (the range's own are trained on its embedded
    forgeries: export them with arange export and bring them back), no inpainters."""
    from .external import LOADERS

    t = s.target
    for key in ("inpainters", "train_inpainters"):
        if getattr(s, key):
            raise fail(source, key, f"the range forges nothing with your forgery set "
                       f"({t.dataset.name}); remove {key}")
    build_component(LOADERS[t.dataset.name], t.dataset.options, f"dataset {t.dataset.name!r}",
                    source, "target.dataset.options")
    opts = t.dataset.options
    where = opts.get("root") or opts.get("path")
    if isinstance(where, str) and not Path(where).exists():
        key = "root" if "root" in opts else "path"
        raise fail(source, f"target.dataset.options.{key}", f"{where} does not exist; give a "
                   "path relative to the scenario file")
    for i, d in enumerate(s.detectors):
        if not d.brought:
            raise fail(source, f"detectors[{i}].model", "with your forgery set every detector "
                       "is a file you bring (model:); to use one the range trains, write it "
                       "out with 'arange export' and bring it back")
        _validate_brought(d, i, source)
    labels = check_labels(s.detectors, "detectors", source)
    if t.detector is not None and t.detector not in labels:
        raise fail(source, "target.detector", f"no detector labelled {t.detector!r}"
                    f"{suggest(t.detector, labels)} (detectors: {', '.join(labels)})")
    _validate_common(s, source, [], labels)


def _validate_brought(d: DetectorSpec, i: int, source: str) -> None:
    from arange.models.sources import ModelSourceError, check_model_source, parse_model_source

    path = f"detectors[{i}]"
    for key in ("name", "training"):
        if key in d.model_fields_set:
            raise fail(source, f"{path}.{key}", "a detector you bring (model:) is not trained "
                       f"by the range; remove {key}")
    src = parse_model_source(str(d.model))
    try:
        check_model_source(src)
    except ModelSourceError as e:
        raise fail(source, f"{path}.model", str(e)) from e
    if src.weights_inside and d.weights is not None:
        raise fail(source, f"{path}.weights", f"{d.model} holds its weights; remove weights")
    if not src.weights_inside:
        if d.weights is None:
            raise fail(source, f"{path}.weights", f"{d.model} needs a weights file (a "
                       ".safetensors, .pt or .pth state dict)")
        if not Path(d.weights).is_file():
            raise fail(source, f"{path}.weights", f"file {d.weights} does not exist; give a "
                       "path relative to the scenario file")
    elif d.params:
        raise fail(source, f"{path}.params", f"{d.model} is built already; remove params")


def validate_forensics_scenario(s: ForensicsScenario, source: str = "<scenario>") -> None:
    from arange.hashing.data import HASH_DATASETS

    from .detector import DETECTORS
    from .inpainters import INPAINTERS

    t = s.target
    from .external import EXTERNAL_DATASETS
    if t.dataset.name in EXTERNAL_DATASETS:
        _validate_external(s, source)
        return
    if not s.inpainters or not s.train_inpainters:
        raise fail(source, "inpainters" if not s.inpainters else "train_inpainters",
                   "the range forges its test images from the embedded photographs with these "
                   "inpainters; list at least one (or give your own forgeries: "
                   "target.dataset.name casia, imdl_json or forgery_manifest)")
    try:
        factory = HASH_DATASETS.get(t.dataset.name)
    except RegistryError as e:
        raise fail(source, "target.dataset.name", str(e)) from e
    build_component(factory, t.dataset.options, f"dataset {t.dataset.name!r}", source,
                    "target.dataset.options")
    size = t.dataset.options.get("image_size", 128)
    if isinstance(size, int) and size < t.crop:
        raise fail(source, "target.crop", f"must be <= target.dataset.options.image_size "
                    f"({size}) (got {t.crop})")
    if t.masks.min_area >= t.masks.max_area:
        raise fail(source, "target.masks.min_area", f"must be < max_area ({t.masks.max_area:g})"
                    f" (got {t.masks.min_area:g})")
    names: list[str] = []
    for i, inp in enumerate(s.inpainters):
        check_component(INPAINTERS, inp.name, inp.params, source, f"inpainters[{i}].name",
                         f"inpainters[{i}].params")
        if inp.name in names:
            raise fail(source, f"inpainters[{i}].name", f"{inp.name!r} is listed twice")
        names.append(inp.name)
    for i, n in enumerate(s.train_inpainters):
        if n not in names:
            raise fail(source, f"train_inpainters[{i}]", f"{n!r} is not one of inpainters"
                        f"{suggest(n, names)} (inpainters: {', '.join(names)}); add it to "
                        "inpainters or remove it here")
    for i, d in enumerate(s.detectors):
        if d.brought:
            _validate_brought(d, i, source)
            continue
        for key in ("output", "preprocessing", "weights", "image_score", "topk"):
            if key in d.model_fields_set:
                raise fail(source, f"detectors[{i}].{key}", "applies to a detector you bring "
                           "(model:); the range's own detectors fix it themselves")
        check_component(DETECTORS, d.name, d.params, source, f"detectors[{i}].name",
                        f"detectors[{i}].params")
    labels = check_labels(s.detectors, "detectors", source)
    if t.detector is not None and t.detector not in labels:
        raise fail(source, "target.detector", f"no detector labelled {t.detector!r}"
                    f"{suggest(t.detector, labels)} (detectors: {', '.join(labels)})")
    _validate_common(s, source, names, labels)


def _validate_common(s: ForensicsScenario, source: str, names: list[str],
                     labels: list[str]) -> None:
    """Perturbations, attacks and gates: the same in both modes."""
    by_label = {d.label: d for d in s.detectors}
    for i, p in enumerate(s.robustness):
        spec = PERTURBATIONS.get(p.perturbation)
        if spec is None:
            raise fail(source, f"robustness[{i}].perturbation", f"unknown perturbation "
                        f"{p.perturbation!r}{suggest(p.perturbation, list(PERTURBATIONS))} "
                        f"(available: {', '.join(PERTURBATIONS)})")
        what, lo, hi, integer = spec
        for j, v in enumerate(p.strengths):
            if not lo <= v <= hi or (integer and v != int(v)) or \
                    (p.perturbation == "blur" and int(v) % 2 == 0):
                raise fail(source, f"robustness[{i}].strengths[{j}]",
                            f"{p.perturbation} takes the {what}: "
                            f"{'an integer ' if integer else ''}in [{lo:g}, {hi:g}] "
                            f"(got {v:g})")
    for i, a in enumerate(s.attacks):
        check_attack(a, TASK, source, f"attacks[{i}]")
        if a.surrogate is not None:
            if a.surrogate not in labels:
                raise fail(source, f"attacks[{i}].surrogate", f"no detector labelled "
                           f"{a.surrogate!r}{suggest(a.surrogate, labels)} (detectors: "
                           f"{', '.join(labels)})")
            if a.surrogate == s.target_detector:
                raise fail(source, f"attacks[{i}].surrogate", "is the target itself; name "
                           "another detector (a transfer attack is crafted on a different one)")
        elif a.transfer and by_label[s.target_detector].brought:
            raise fail(source, f"attacks[{i}].surrogate", f"the target {s.target_detector!r} "
                       "is your own detector, which the range cannot retrain; name another "
                       "detector as the transfer surrogate, or set transfer: false")
    check_labels(s.attacks, "attacks", source)
    for i, g in enumerate(s.gates):
        check_gate_rule(g, GATE_METRICS, source, f"gates[{i}]")
        if g.metric == "image_fpr" and g.inpainter is not None:
            raise fail(source, f"gates[{i}].inpainter", "image_fpr is measured on untouched "
                        "images; remove inpainter")
        check_choice(g.detector, labels, "detector", source, f"gates[{i}].detector")
        check_choice(g.inpainter, names, "inpainter", source, f"gates[{i}].inpainter")
