"""The ``hash_matching`` scenario: a perceptual-hash matcher under detection-avoidance and
collision attacks.

Example (see scenarios/hash_evasion_phash.yaml)::

    name: hash_evasion_phash
    task: hash_matching
    target:
      hash: phash                 # average_hash | dhash | phash | whash | colorhash | pdq
                                  # | neuralhash | learned (your ONNX hash, see hash_params)
      thresholds: [10, 20, 28]    # a match is a Hamming distance <= threshold
      dataset: {name: embedded}   # or {name: imagefolder, options: {root: my_images}}
    attacks:
      - name: nes                 # black-box; or pgd (white-box through a surrogate)
        goal: evasion             # or collision
        norm: linf
        eps: [32/255]
        params: {max_queries: 1000}

The schema is strict like the classification one, and errors name the file, the path inside it
and the fix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from arange.core.scenario import (
    AttackSpecBase,
    OptionalNumber,
    ScenarioBase,
    Strict,
    check_attack,
    check_choice,
    check_component,
    check_gate_rule,
    check_labels,
    check_rule_eps,
    fail,
    load_task_scenario,
    relative_root,
)
from arange.errors import ArangeError, ParamError, RegistryError

TASK = "hash_matching"
# Metrics a hash gate may name (validated here; evaluated by ``arange gate``).
HASH_METRICS = ("evasion_rate", "collision_rate", "clean_detection_rate", "false_positive_rate",
                "corpus_false_positive_rate")
UNATTACKED_METRICS = ("clean_detection_rate", "false_positive_rate",
                      "corpus_false_positive_rate")  # no attack, no eps


class HashDataset(Strict):
    name: str = "embedded"
    options: dict[str, Any] = Field(default_factory=dict)


class HashTarget(Strict):
    """The matcher: a hash, its thresholds and the database (the dataset's images)."""

    hash: str
    hash_params: dict[str, Any] = Field(default_factory=dict)
    thresholds: list[int] = Field(min_length=1)
    dataset: HashDataset = Field(default_factory=HashDataset)
    samples: int | None = Field(None, ge=2)   # first N images (default: all)
    batch_size: int = Field(64, ge=1, le=65536)

    @field_validator("thresholds", mode="before")
    @classmethod
    def _thresholds(cls, v: Any) -> Any:
        return v if isinstance(v, list) else [v]


class HashAttackSpec(AttackSpecBase):
    """An evasion or collision attack on the matcher (``goal``), aiming ``margin`` bits beyond
    the threshold, run at some or all of the target's thresholds."""

    EPS_EXAMPLE = "[8/255, 16/255]"

    name: str
    goal: Literal["evasion", "collision"] = "evasion"
    margin: int = Field(0, ge=0, le=256)  # bits beyond the threshold the attack aims for
    thresholds: list[int] | None = None   # run at these of target.thresholds (default: all)

    @property
    def key(self) -> str:
        return self.label or (self.name if self.goal == "evasion" else f"{self.name}-collision")


class CorpusConfig(Strict):
    """False-positive rates over the pairs of a folder of benign images (see
    :mod:`arange.hashing.corpus`)."""

    root: str                                        # relative to the scenario file
    pairs: int | None = Field(None, ge=1)            # default every pair; N: a uniform sample
    shard_size: int = Field(2048, ge=1, le=1_000_000)  # files hashed per job


class HashEvaluation(Strict):
    # hashes (and their thresholds) every evading image is also checked against; default: all
    # registered hashes at their common thresholds
    transfer: dict[str, int] | None = None
    # query budgets at which the black-box evasion rate is reported (default: a few fractions
    # of each attack's max_queries)
    query_budgets: list[int] | None = None
    corpus: CorpusConfig | None = None

    @field_validator("query_budgets")
    @classmethod
    def _budgets(cls, v: list[int] | None) -> list[int] | None:
        if v is not None:
            if not v or any(b < 1 for b in v):
                raise ValueError(f"needs positive integers, e.g. [100, 500, 1000] (got {v})")
            return sorted(set(v))
        return v


class HashGate(Strict):
    name: str | None = None
    metric: str
    attack: str | None = None
    eps: OptionalNumber = None
    threshold: int | None = None
    min: OptionalNumber = None
    max: OptionalNumber = None
    max_drop: OptionalNumber = None


class HashScenario(ScenarioBase):
    task: Literal["hash_matching"] = TASK
    target: HashTarget
    attacks: list[HashAttackSpec] = Field(min_length=1)
    evaluation: HashEvaluation = Field(default_factory=HashEvaluation)
    gates: list[HashGate] = Field(default_factory=list)


def load_hash_scenario(raw: dict[str, Any], source: str, base_dir: Path | None) -> HashScenario:
    """Validate a ``task: hash_matching`` mapping (the :class:`arange.core.task.Task` loader)."""
    return load_task_scenario(HashScenario, _resolve_paths(raw, base_dir), source, base_dir,
                              validate_hash_scenario)


def _resolve_paths(raw: Any, base_dir: Path | None) -> Any:
    """Files the scenario names relative to itself: a learned hash's model and projection, the
    corpus folder."""
    if not isinstance(raw, dict):
        return raw
    target = raw.get("target")
    params = target.get("hash_params") if isinstance(target, dict) else None
    if isinstance(target, dict) and target.get("hash") == "learned" and \
            isinstance(params, dict):
        fixed = relative_root(params, base_dir, ("model", "projection"))
        if fixed is not None:
            raw = {**raw, "target": {**target, "hash_params": fixed}}
    ev = raw.get("evaluation")
    corpus = ev.get("corpus") if isinstance(ev, dict) else None
    if isinstance(corpus, dict):
        fixed = relative_root(corpus, base_dir, ("root",))
        if fixed is not None:
            raw = {**raw, "evaluation": {**ev, "corpus": fixed}}
    return raw


def validate_hash_scenario(s: HashScenario, source: str = "<scenario>") -> None:
    """Semantic checks: registered names, parameters, ranges, references."""

    from .data import HASH_DATASETS
    from .reference import HASHES

    t = s.target
    try:
        spec = HASHES.get(t.hash)
    except RegistryError as e:
        raise fail(source, "target.hash", str(e)) from e
    try:
        bits = spec.bits(t.hash_params)
    except ParamError as e:
        raise fail(source, f"target.hash_params.{e.param}", e.message) from e
    except ArangeError as e:  # a learned hash whose package or file cannot be used
        raise fail(source, "target.hash", str(e)) from e
    for i, thr in enumerate(t.thresholds):
        if not 0 <= thr < bits:
            raise fail(source, f"target.thresholds[{i}]", f"must be in [0, {bits - 1}] for "
                        f"{t.hash} ({bits} bits) (got {thr})")
    if len(set(t.thresholds)) != len(t.thresholds):
        raise fail(source, "target.thresholds", "lists the same value twice")
    check_component(HASH_DATASETS, t.dataset.name, t.dataset.options, source,
                     "target.dataset.name", "target.dataset.options")
    root = t.dataset.options.get("root")
    if isinstance(root, str) and not Path(root).expanduser().is_dir():
        raise fail(source, "target.dataset.options.root", f"folder {root} does not exist; give "
                    "a path relative to the scenario file (or an absolute one)")

    for i, a in enumerate(s.attacks):
        path = f"attacks[{i}]"
        attack = check_attack(a, TASK, source, path)
        if getattr(attack, "kind", "") == "white-box" and not spec.surrogate:
            raise fail(source, f"{path}.name", f"{a.name} is white-box and needs a "
                       f"differentiable surrogate, which {t.hash} does not have (surrogates: "
                       f"{', '.join(n for n in HASHES.names() if HASHES.get(n).surrogate)}); "
                       "use the black-box attack nes")
        if a.margin >= bits:
            raise fail(source, f"{path}.margin", f"must be < {bits} (got {a.margin})")
        for j, thr in enumerate(a.thresholds or []):
            if thr not in t.thresholds:
                raise fail(source, f"{path}.thresholds[{j}]", f"not one of target.thresholds "
                            f"({', '.join(map(str, t.thresholds))}) (got {thr})")
        if a.thresholds is not None and not a.thresholds:
            raise fail(source, f"{path}.thresholds", "needs at least one threshold, or leave "
                        "it out to run at all of target.thresholds")

    check_labels(s.attacks, "attacks", source)

    transfer = s.evaluation.transfer
    if transfer is not None:
        for h, thr in transfer.items():
            try:
                hs = HASHES.get(h)
            except RegistryError as e:
                raise fail(source, f"evaluation.transfer.{h}", str(e)) from e
            if h == "learned" and t.hash != "learned":
                raise fail(source, f"evaluation.transfer.{h}", "a learned hash needs its "
                           "hash_params; only the target can be one")
            try:
                nb = hs.bits(t.hash_params if h == t.hash else {})
            except ArangeError as e:
                raise fail(source, f"evaluation.transfer.{h}", str(e)) from e
            if not isinstance(thr, int) or not 0 <= thr < nb:
                raise fail(source, f"evaluation.transfer.{h}", f"threshold must be an integer "
                            f"in [0, {nb - 1}] (got {thr!r})")

    corpus = s.evaluation.corpus
    if corpus is not None and not Path(corpus.root).expanduser().is_dir():
        raise fail(source, "evaluation.corpus.root", f"folder {corpus.root} does not exist; give "
                   "a folder of benign images relative to the scenario file")

    keys = [a.key for a in s.attacks]
    goals = {a.key: a.goal for a in s.attacks}
    for i, g in enumerate(s.gates):
        path = f"gates[{i}]"
        check_gate_rule(g, HASH_METRICS, source, path)
        check_choice(g.attack, keys, "attack", source, f"{path}.attack")
        if g.metric in UNATTACKED_METRICS:
            for key in ("attack", "eps"):
                if getattr(g, key) is not None:
                    raise fail(source, f"{path}.{key}", f"{g.metric} is measured on "
                                f"unmodified images; remove {key}")
        else:
            goal = g.metric.removesuffix("_rate")
            if g.attack is not None and goals[g.attack] != goal:
                raise fail(source, f"{path}.metric", f"attack {g.attack!r} aims at "
                            f"{goals[g.attack]}; gate it with {goals[g.attack]}_rate")
            if goal not in goals.values():
                raise fail(source, f"{path}.metric", f"no {goal} attack in this scenario "
                            f"(attacks: {', '.join(f'{k} ({v})' for k, v in goals.items())})")
        check_rule_eps(g.eps, s.attacks, source, f"{path}.eps")
        if g.metric == "corpus_false_positive_rate" and corpus is None:
            raise fail(source, f"{path}.metric", "needs evaluation.corpus (a folder of benign "
                       "images whose pairs are counted)")
        if g.threshold is not None and g.threshold not in t.thresholds:
            raise fail(source, f"{path}.threshold", f"not one of target.thresholds "
                        f"({', '.join(map(str, t.thresholds))}) (got {g.threshold})")

