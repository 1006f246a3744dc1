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

from arange.errors import RegistryError
from arange.registry import suggest
from arange.scenario import Device, Name, _fail, _Strict, load_task_scenario, number_list

TASK = "forgery_localization"
PERTURBATIONS = {
    # name: (what a strength is, lower bound, upper bound, integer)
    "jpeg": ("JPEG quality", 1.0, 100.0, True),
    "resize": ("scale factor of a down-and-up resize", 0.1, 0.99, False),
    "noise": ("standard deviation of Gaussian noise in pixel units of [0, 1]", 1e-6, 0.5,
              False),
}


class ForgeryDataset(_Strict):
    name: str = "embedded"
    options: dict[str, Any] = Field(default_factory=lambda: {"image_size": 128})


class MaskSpec(_Strict):
    kinds: list[Literal["brush", "box"]] = Field(default_factory=lambda: ["brush", "box"],
                                                 min_length=1)
    min_area: float = Field(0.05, gt=0, lt=1)
    max_area: float = Field(0.40, gt=0, lt=1)


class ForgeryTarget(_Strict):
    detector: str | None = None            # label of the attacked detector (default: first)
    dataset: ForgeryDataset = Field(default_factory=ForgeryDataset)
    crop: int = Field(64, ge=16, le=1024)
    test_fraction: float = Field(0.25, gt=0, lt=1)   # of the source photographs
    test_images: int | None = Field(96, ge=4)        # at most this many test tiles
    masks: MaskSpec = Field(default_factory=MaskSpec)
    train_patches: int = Field(1600, ge=8)           # forged training set size
    real_fraction: float = Field(0.25, ge=0, lt=1)   # untouched share of the training set
    batch_size: int = Field(64, ge=1, le=65536)      # evaluation batch size
    examples: int = Field(8, ge=0, le=256)           # images kept per row for the gallery


class ComponentSpec(_Strict):
    name: str
    params: dict[str, Any] = Field(default_factory=dict)


class DetectorTraining(_Strict):
    epochs: int = Field(5, ge=1, le=10_000)
    batch_size: int = Field(32, ge=1, le=4096)
    lr: float = Field(3e-3, gt=0, le=1)
    weight_decay: float = Field(1e-4, ge=0, le=1)


class DetectorSpec(_Strict):
    label: Name
    name: str = "noise_residual"
    params: dict[str, Any] = Field(default_factory=dict)
    training: DetectorTraining = Field(default_factory=DetectorTraining)


class PerturbationSpec(_Strict):
    perturbation: str
    strengths: list[float]

    @field_validator("strengths", mode="before")
    @classmethod
    def _parse(cls, v: Any) -> list[float]:
        return number_list(v, "[95, 75, 50]")


class AttackSpec(_Strict):
    name: Literal["pgd"] = "pgd"
    eps: list[float]
    params: dict[str, Any] = Field(default_factory=dict)   # arange's PGD parameters
    samples: int | None = Field(48, ge=1)       # forged test images attacked (all inpainters)
    jpeg_quality: int | None = Field(75, ge=1, le=100)     # re-scored after this JPEG too
    transfer: bool = True    # also craft on a copy of the detector trained with seed + 1

    @field_validator("eps", mode="before")
    @classmethod
    def _parse_eps(cls, v: Any) -> list[float]:
        return number_list(v, "[2/255, 8/255]")


class ForensicsGate(_Strict):
    name: str | None = None
    metric: str
    detector: str | None = None
    inpainter: str | None = None
    min: float | None = None
    max: float | None = None
    max_drop: float | None = None


class ForensicsScenario(_Strict):
    name: Name
    task: Literal["forgery_localization"] = TASK
    description: str = ""
    seed: int = Field(0, ge=0, le=2**31 - 1)
    device: Device = "auto"
    target: ForgeryTarget = Field(default_factory=ForgeryTarget)
    inpainters: list[ComponentSpec] = Field(min_length=1)
    train_inpainters: list[str] = Field(min_length=1)
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
    return load_task_scenario(ForensicsScenario, raw, source, base_dir,
                              validate_forensics_scenario)


def validate_forensics_scenario(s: ForensicsScenario, source: str = "<scenario>") -> None:
    from arange.attacks.pgd import PGD
    from arange.hashing.data import HASH_DATASETS
    from arange.scenario import _check_component, build_component, check_gate_rule

    from .detector import DETECTORS
    from .inpainters import INPAINTERS

    t = s.target
    try:
        factory = HASH_DATASETS.get(t.dataset.name)
    except RegistryError as e:
        raise _fail(source, "target.dataset.name", str(e)) from e
    build_component(factory, t.dataset.options, f"dataset {t.dataset.name!r}", source,
                    "target.dataset.options")
    size = t.dataset.options.get("image_size", 128)
    if isinstance(size, int) and size < t.crop:
        raise _fail(source, "target.crop", f"must be <= target.dataset.options.image_size "
                    f"({size}) (got {t.crop})")
    if t.masks.min_area >= t.masks.max_area:
        raise _fail(source, "target.masks.min_area", f"must be < max_area ({t.masks.max_area:g})"
                    f" (got {t.masks.min_area:g})")
    names: list[str] = []
    for i, inp in enumerate(s.inpainters):
        _check_component(INPAINTERS, inp.name, inp.params, source, f"inpainters[{i}].name",
                         f"inpainters[{i}].params")
        if inp.name in names:
            raise _fail(source, f"inpainters[{i}].name", f"{inp.name!r} is listed twice")
        names.append(inp.name)
    for i, n in enumerate(s.train_inpainters):
        if n not in names:
            raise _fail(source, f"train_inpainters[{i}]", f"{n!r} is not one of inpainters"
                        f"{suggest(n, names)} (inpainters: {', '.join(names)}); add it to "
                        "inpainters or remove it here")
    labels: list[str] = []
    for i, d in enumerate(s.detectors):
        _check_component(DETECTORS, d.name, d.params, source, f"detectors[{i}].name",
                         f"detectors[{i}].params")
        if d.label in labels:
            raise _fail(source, f"detectors[{i}].label", f"{d.label!r} is already used; give "
                        "each detector a distinct label")
        labels.append(d.label)
    if t.detector is not None and t.detector not in labels:
        raise _fail(source, "target.detector", f"no detector labelled {t.detector!r}"
                    f"{suggest(t.detector, labels)} (detectors: {', '.join(labels)})")
    for i, p in enumerate(s.robustness):
        spec = PERTURBATIONS.get(p.perturbation)
        if spec is None:
            raise _fail(source, f"robustness[{i}].perturbation", f"unknown perturbation "
                        f"{p.perturbation!r}{suggest(p.perturbation, list(PERTURBATIONS))} "
                        f"(available: {', '.join(PERTURBATIONS)})")
        what, lo, hi, integer = spec
        for j, v in enumerate(p.strengths):
            if not lo <= v <= hi or (integer and v != int(v)):
                raise _fail(source, f"robustness[{i}].strengths[{j}]",
                            f"{p.perturbation} takes the {what}: "
                            f"{'an integer ' if integer else ''}in [{lo:g}, {hi:g}] "
                            f"(got {v:g})")
    for i, a in enumerate(s.attacks):
        build_component(PGD, a.params, "attack 'pgd'", source, f"attacks[{i}].params")
        for j, eps in enumerate(a.eps):
            if not 0 < eps <= 1:
                raise _fail(source, f"attacks[{i}].eps[{j}]", f"must be > 0 and <= 1 for linf "
                            f"(got {eps:g})")
    for i, g in enumerate(s.gates):
        check_gate_rule(g, GATE_METRICS, source, f"gates[{i}]")
        if g.min is None and g.max is None and g.max_drop is None:
            raise _fail(source, f"gates[{i}]", "needs min, max or max_drop")
        if g.metric == "image_fpr" and g.inpainter is not None:
            raise _fail(source, f"gates[{i}].inpainter", "image_fpr is measured on untouched "
                        "images; remove inpainter")
        if g.detector is not None and g.detector not in labels:
            raise _fail(source, f"gates[{i}].detector", f"no detector labelled {g.detector!r}"
                        f"{suggest(g.detector, labels)} (detectors: {', '.join(labels)})")
        if g.inpainter is not None and g.inpainter not in names:
            raise _fail(source, f"gates[{i}].inpainter", f"no inpainter {g.inpainter!r}"
                        f"{suggest(g.inpainter, names)} (inpainters: {', '.join(names)})")
