"""Evidence: a scorecard or a baseline, and the per-sample outcomes and per-image data
its rows' regression tests use, read with the bounds of :mod:`arange.core.safeio`."""


from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..stats import (
    newcombe_interval,  # noqa: F401  (re-exported for callers of the gate API)
    )

log = logging.getLogger(__name__)
from .metrics import GateError, Metric, Outcomes, Row, row_label

# ---------------------------------------------------------------------------- evidence

@dataclass
class Evidence:
    """A scorecard (as JSON) plus a way to get per-sample outcomes of its rows."""

    source: str
    card: dict[str, Any]
    samples_path: Path | None = None
    stored: dict[str, Any] | None = None      # outcomes saved in a baseline file
    kind: Literal["scorecard", "baseline"] = "scorecard"
    stored_per_image: dict[str, Any] | None = None  # per-image data saved in a baseline file
    _samples: Any = None
    _cache: dict[tuple[str, str, int], Outcomes | None] = field(default_factory=dict)

    @property
    def task(self) -> str:
        return str(self.card.get("task", "classification"))

    @property
    def name(self) -> str:
        return str(self.card.get("name"))

    def prov(self, key: str) -> Any:
        prov = self.card.get("provenance")
        return prov.get(key) if isinstance(prov, Mapping) else None

    def table(self, name: str) -> list[dict[str, Any]]:
        rows = self.card.get(name)
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise GateError(f"{self.source}: has no table {name!r} (a list of rows)")
        return rows

    def rows(self, metric: Metric) -> list[dict[str, Any]]:
        """The rows ``metric`` reads (its table, or the rows it derives from the scorecard);
        those of other metrics sharing the table are included (see :meth:`Metric.holds`)."""
        if metric.rows is None:
            return self.table(metric.table)
        try:
            return metric.rows(self.card)
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as e:
            raise GateError(f"{self.source}: cannot read the {metric.table} rows of "
                            f"{metric.name} ({e!r}); the scorecard is malformed") from e

    def outcomes(self, metric: Metric, index: int) -> Outcomes | None:
        """Per-sample outcomes of ``metric`` on row ``index`` of its table, checked against the
        row's own value; None where the run kept no per-sample outcomes."""
        key = (metric.name, metric.table, index)
        if key not in self._cache:
            self._cache[key] = self._outcomes(metric, index)
        return self._cache[key]

    def per_image(self, metric: Metric, index: int) -> dict[str, Any] | None:
        """The per-image data of ``metric`` on row ``index`` (for its bootstrap test), checked
        against the row's own value; None where the run or baseline kept none."""
        if metric.per_image is None or metric.statistic is None:
            return None
        row = self.table(metric.table)[index]
        label = row_label(metric, row)
        if self.kind == "baseline":
            try:
                data = (self.stored_per_image or {})[metric.table][index][metric.name]
            except (KeyError, IndexError, TypeError):
                return None
            where = f"{self.source}: per_image.{metric.table}[{index}].{metric.name}"
        else:
            samples = self._load_samples()
            if samples is None:
                return None
            where = str(self.samples_path)
            try:
                data = metric.per_image(row, self.card, samples)
            except (KeyError, IndexError, TypeError, ValueError) as e:
                raise GateError(f"{where}: per-image data for {metric.name} ({label}) are "
                                f"missing or malformed ({e}); re-run the scenario") from e
        import numpy as np

        try:
            arrays = {k: np.asarray(v, dtype=np.float64) for k, v in dict(data).items()}
            n = {len(a) for a in arrays.values()}
            value = metric.statistic(arrays, np.arange(n.pop())) if len(n) == 1 else None
        except (TypeError, ValueError) as e:
            raise GateError(f"{where}: per-image data for {metric.name} ({label}) are not "
                            f"numeric arrays of one length ({e})") from e
        expected = row.get(metric.field)
        if value is None or not isinstance(expected, (int, float)) or not math.isfinite(value) \
                or (metric.per_image_tolerance is not None
                    and abs(value - expected) > metric.per_image_tolerance):
            raise GateError(f"{where}: per-image data of {metric.name} ({label}) give {value} "
                            f"but the scorecard row says {expected}; they do not belong to "
                            "this scorecard")
        return arrays

    def _outcomes(self, metric: Metric, index: int) -> Outcomes | None:
        if not metric.rate or metric.rows is not None:
            return None  # per-sample outcomes describe rates; other metrics bring their own test
        row = self.table(metric.table)[index]
        label = row_label(metric, row)
        if self.stored is not None:
            try:
                text = self.stored[metric.table][index][metric.name]
            except (KeyError, IndexError, TypeError):
                return None
            vec = decode_outcomes(text, f"{self.source}: outcomes.{metric.table}[{index}]."
                                  f"{metric.name}")
        else:
            samples = self._load_samples()
            if samples is None or metric.outcomes is None:
                return None
            try:
                vec = metric.outcomes(row, self.card, samples)
            except (KeyError, IndexError, TypeError, ValueError) as e:
                raise GateError(f"{self.samples_path}: per-sample outcomes for {metric.name} "
                                f"({label}) are missing or malformed ({e}); the side file does "
                                "not belong to this scorecard - re-run the scenario") from e
        where = self.source if self.stored is not None else str(self.samples_path)
        _verify(vec, row, metric, label, where)
        return vec

    def _load_samples(self) -> Any:
        if self._samples is None:
            if self.samples_path is None or not self.samples_path.is_file():
                self._samples = False
                log.info("%s: no per-sample outcomes (%s); regression tests will be unpaired",
                         self.source, self.samples_path)
            else:
                self._samples = read_json(self.samples_path, "samples file")
                if not isinstance(self._samples, dict):
                    raise GateError(f"{self.samples_path}: not a samples file (expected a "
                                    "mapping)")
        return self._samples or None


def _verify(vec: Outcomes, row: Row, metric: Metric, label: str, source: str) -> None:
    counted = [v for v in vec if v is not None]
    n, k = len(counted), sum(1 for v in counted if v)
    value, expected_n = row.get(metric.field), row.get(metric.count_field)
    rate = k / n if n else 0.0
    if expected_n != n or not isinstance(value, (int, float)) or abs(rate - value) > 1e-9:
        raise GateError(f"{source}: per-sample outcomes of {metric.name} ({label}) give "
                        f"{k}/{n} = {rate:.4f} but the scorecard row says {value} over "
                        f"{expected_n} samples; the outcomes do not belong to this scorecard")


def encode_outcomes(vec: Outcomes) -> str:
    """One character per sample: ``1`` true, ``0`` false, ``-`` not counted."""
    return "".join("-" if v is None else ("1" if v else "0") for v in vec)


def decode_outcomes(text: Any, where: str) -> Outcomes:
    if not isinstance(text, str) or set(text) - set("10-"):
        raise GateError(f"{where}: must be a string of 1, 0 and - (one per sample)")
    return [None if c == "-" else c == "1" for c in text]


def read_json(path: Path, what: str) -> Any:
    """A JSON file arange wrote, read with the bounds of :mod:`arange.core.safeio`."""
    from ..core.safeio import load_json

    if path.is_dir():
        raise GateError(f"{path}: is a folder without scorecard.json")
    if not path.exists() and not path.is_symlink():
        raise GateError(f"{path}: no such {what}")
    return load_json(path, what, error=GateError)


def scorecard_path(path: str | Path) -> Path:
    """Accept a scorecard file or a run folder holding ``scorecard.json``."""
    p = Path(path)
    return p / "scorecard.json" if p.is_dir() else p


def check_card(raw: Any, source: str) -> dict[str, Any]:
    """Validate a scorecard's JSON as its task's typed scorecard (the one reader,
    :func:`arange.core.scorecard.check_scorecard`) and return it as a dict."""
    from ..core.scorecard import ScorecardError, check_scorecard
    try:
        return check_scorecard(raw, source).model_dump(mode="json")
    except ScorecardError as e:
        raise GateError(str(e)) from e


def load_scorecard_evidence(path: str | Path) -> Evidence:
    p = scorecard_path(path)
    card = check_card(read_json(p, "scorecard"), str(p))
    files = card.get("files") or {}
    samples = files.get("samples") if isinstance(files, dict) else None
    samples_path = p.parent / samples if isinstance(samples, str) and samples else None
    return Evidence(str(p), card, samples_path)


BASELINE_FORMAT = 1  # of the files 'arange baseline save' writes


def evidence_from_baseline(raw: dict[str, Any], source: str) -> Evidence:
    """Check a parsed baseline document and wrap it for the gate."""
    if raw.get("arange_baseline") != BASELINE_FORMAT:
        raise GateError(f"{source}: baseline format {raw.get('arange_baseline')!r} is not "
                        f"supported (this arange reads {BASELINE_FORMAT}); save it again with "
                        "'arange baseline save'")
    card = check_card(raw.get("scorecard"), f"{source}: scorecard")
    outcomes = raw.get("outcomes", {})
    if not isinstance(outcomes, dict):
        raise GateError(f"{source}: outcomes: must be a mapping of table -> rows")
    for table, rows in outcomes.items():
        card_rows = card.get(table)
        if not isinstance(rows, list) or not isinstance(card_rows, list) \
                or len(rows) != len(card_rows):
            raise GateError(f"{source}: outcomes.{table}: must list one entry per row of the "
                            f"scorecard's {table!r} table")
        for i, entry in enumerate(rows):
            if not isinstance(entry, dict):
                raise GateError(f"{source}: outcomes.{table}[{i}]: must be a mapping of "
                                "metric -> outcome string")
            for metric, text in entry.items():
                decode_outcomes(text, f"{source}: outcomes.{table}[{i}].{metric}")
    per_image = raw.get("per_image", {})
    if not isinstance(per_image, dict):
        raise GateError(f"{source}: per_image: must be a mapping of table -> rows")
    return Evidence(source, card, None, stored=outcomes, kind="baseline",
                    stored_per_image=per_image)


def load_reference(path: str | Path) -> Evidence:
    """A baseline: a file written by ``arange baseline save``, a scorecard or a run folder."""
    p = scorecard_path(path)
    raw = read_json(p, "baseline")
    if isinstance(raw, dict) and "arange_baseline" in raw:
        return evidence_from_baseline(raw, str(p))
    if isinstance(raw, dict) and "schema_version" in raw:
        return load_scorecard_evidence(p)
    raise GateError(f"{p}: not a baseline (write one with 'arange baseline save SCORECARD') "
                    "nor a scorecard")


