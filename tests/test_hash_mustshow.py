"""The issue's must-show measurements on all embedded images (slow: minutes on 2 CPU cores).

    pytest -m slow tests/test_hash_mustshow.py
"""

from __future__ import annotations

from pathlib import Path

import pytest

import arange
from arange.core.scenario import load_scenario
from arange.hashing.scorecard import HashScorecard

ROOT = Path(__file__).resolve().parent.parent


def _nes_only(path: Path, threshold: int) -> object:
    s = load_scenario(path)
    target = s.target.model_copy(update={"thresholds": [threshold]})
    attacks = [a for a in s.attacks if a.name == "nes"]
    return s.model_copy(update={"target": target, "attacks": attacks})


@pytest.mark.slow
@pytest.mark.parametrize("scenario,threshold", [("hash_evasion_phash", 10),
                                                ("hash_evasion_pdq", 31)])
def test_black_box_evades_on_95_percent_with_high_ssim(scenario: str, threshold: int,
                                                       tmp_path: Path) -> None:
    s = _nes_only(ROOT / "scenarios" / f"{scenario}.yaml", threshold)
    card = arange.run(s, out=tmp_path, progress=False)
    assert isinstance(card, HashScorecard)
    row = card.results[0]
    assert row.n >= 100
    assert row.rate >= 0.95, row
    assert row.rejected == 0 and card.check("verification").status == "pass"
    assert (row.distortion["ssim"].mean or 0) >= 0.95
    assert (row.queries_max or 0) <= (row.max_queries or 0) == 1000
    assert card.check("clean_detection").status == "pass"
    assert card.check("fast_hash_agreement").status == "pass"
