"""Significance tests for comparing two runs; shared with ``arange gate`` (see
:mod:`arange.stats`, which is pure Python and never imports torch)."""

from arange.stats import fisher_exact, mcnemar_exact
from arange.stats import holm_adjust as holm

__all__ = ["fisher_exact", "holm", "mcnemar_exact"]
